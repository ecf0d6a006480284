//! `push.v1.SubscribeResponse`, written by hand so the gateway can encode a message
//! **once** and hand the same bytes to every stream that receives it.
//!
//! On the wire it is exactly the generated message (`repeated Message messages = 1;
//! repeated HistoryState states = 2`): a sequence of field entries. A server fills
//! [`SubscribeResponse::encoded`] with entries made once (tag, length and the encoded
//! message: [`SubscribeResponse::entry`], [`SubscribeResponse::message_entry`],
//! [`SubscribeResponse::state_entry`]), which are written verbatim; a client decodes
//! into `messages` and `states`.
//! `tests::matches_the_generated_shape` pins the equivalence.
use prost::{
    DecodeError,
    bytes::{Buf, BufMut, Bytes, BytesMut},
    encoding::{self, DecodeContext, WireType},
};

use crate::push::v1::{HistoryState, Message};

#[derive(Clone, Default, PartialEq, Debug)]
pub struct SubscribeResponse {
    /// Decoded messages (what a client reads); also encoded, after `encoded`.
    pub messages: Vec<Message>,
    /// Decoded history states (what a client reads); also encoded, after `messages`.
    pub states: Vec<HistoryState>,
    /// Pre-encoded entries (of either field), written as they are.
    pub encoded: Vec<Bytes>,
}

impl SubscribeResponse {
    /// Encodes `m` as one field-1 entry of a SubscribeResponse.
    pub fn entry(m: &Message) -> Bytes {
        let mut b = BytesMut::with_capacity(encoding::message::encoded_len(1, m));
        encoding::message::encode(1, m, &mut b);
        b.freeze()
    }

    /// Wraps an already encoded `Message` as one field-1 entry.
    pub fn message_entry(encoded_message: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(encoded_message.len() + 6);
        encoding::encode_key(1, WireType::LengthDelimited, &mut b);
        encoding::encode_varint(encoded_message.len() as u64, &mut b);
        b.put_slice(encoded_message);
        b.freeze()
    }

    /// Encodes `s` as one field-2 entry.
    pub fn state_entry(s: &HistoryState) -> Bytes {
        let mut b = BytesMut::with_capacity(encoding::message::encoded_len(2, s));
        encoding::message::encode(2, s, &mut b);
        b.freeze()
    }
}

impl prost::Message for SubscribeResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for e in &self.encoded {
            buf.put_slice(e);
        }
        encoding::message::encode_repeated(1, &self.messages, buf);
        encoding::message::encode_repeated(2, &self.states, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == 1 {
            encoding::message::merge_repeated(wire_type, &mut self.messages, buf, ctx)
        } else if tag == 2 {
            encoding::message::merge_repeated(wire_type, &mut self.states, buf, ctx)
        } else {
            encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        self.encoded.iter().map(Bytes::len).sum::<usize>()
            + encoding::message::encoded_len_repeated(1, &self.messages)
            + encoding::message::encoded_len_repeated(2, &self.states)
    }

    fn clear(&mut self) {
        self.messages.clear();
        self.states.clear();
        self.encoded.clear();
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::push::v1::Audience;

    fn msg(id: &str) -> Message {
        Message {
            id: id.into(),
            topic: "t".into(),
            payload: vec![1, 2, 3].into(),
            audience: Audience::Group as i32,
            group_id: "g".into(),
            ..Default::default()
        }
    }

    /// Pre-encoded entries decode as the messages they were made from, and mixing both
    /// forms keeps the order: encoded first, then messages.
    #[test]
    fn matches_the_generated_shape() {
        let state = HistoryState { continuity: 3, ..Default::default() };
        let raw_b = msg("b").encode_to_vec();
        let r = SubscribeResponse {
            messages: vec![msg("c")],
            states: vec![],
            encoded: vec![
                SubscribeResponse::entry(&msg("a")),
                SubscribeResponse::state_entry(&state),
                SubscribeResponse::message_entry(&raw_b),
            ],
        };
        let bytes = r.encode_to_vec();
        assert_eq!(bytes.len(), r.encoded_len());
        let back = SubscribeResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.messages, vec![msg("a"), msg("b"), msg("c")]);
        assert_eq!(back.states, vec![state.clone()]);
        assert!(back.encoded.is_empty());
        // A repeated field of entries is the same bytes as the messages encoded together.
        let plain = SubscribeResponse { messages: vec![msg("a"), msg("b")], states: vec![], encoded: vec![] };
        let both = [SubscribeResponse::entry(&msg("a")), SubscribeResponse::entry(&msg("b"))].concat();
        assert_eq!(plain.encode_to_vec(), both);
    }
}
