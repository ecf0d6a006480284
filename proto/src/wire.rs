//! `push.v1.SubscribeResponse`, written by hand so the gateway can encode a message
//! **once** and hand the same bytes to every stream that receives it.
//!
//! On the wire it is exactly the generated message (`repeated Message messages = 1`):
//! a sequence of field-1 entries. A server fills [`SubscribeResponse::encoded`] with
//! entries made once by [`SubscribeResponse::entry`] (tag, length and the encoded
//! `Message`), which are written verbatim; a client decodes into `messages`.
//! `tests::matches_the_generated_shape` pins the equivalence.
use prost::{
    DecodeError,
    bytes::{Buf, BufMut, Bytes, BytesMut},
    encoding::{self, DecodeContext, WireType},
};

use crate::push::v1::Message;

#[derive(Clone, Default, PartialEq, Debug)]
pub struct SubscribeResponse {
    /// Decoded messages (what a client reads); also encoded, after `encoded`.
    pub messages: Vec<Message>,
    /// Pre-encoded field-1 entries, written as they are.
    pub encoded: Vec<Bytes>,
}

impl SubscribeResponse {
    /// Encodes `m` as one field-1 entry of a SubscribeResponse.
    pub fn entry(m: &Message) -> Bytes {
        let mut b = BytesMut::with_capacity(encoding::message::encoded_len(1, m));
        encoding::message::encode(1, m, &mut b);
        b.freeze()
    }
}

impl prost::Message for SubscribeResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for e in &self.encoded {
            buf.put_slice(e);
        }
        encoding::message::encode_repeated(1, &self.messages, buf);
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
        } else {
            encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        self.encoded.iter().map(Bytes::len).sum::<usize>() + encoding::message::encoded_len_repeated(1, &self.messages)
    }

    fn clear(&mut self) {
        self.messages.clear();
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
        let r = SubscribeResponse {
            messages: vec![msg("c")],
            encoded: vec![SubscribeResponse::entry(&msg("a")), SubscribeResponse::entry(&msg("b"))],
        };
        let bytes = r.encode_to_vec();
        assert_eq!(bytes.len(), r.encoded_len());
        let back = SubscribeResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.messages, vec![msg("a"), msg("b"), msg("c")]);
        assert!(back.encoded.is_empty());
        // A repeated field of entries is the same bytes as the messages encoded together.
        let plain = SubscribeResponse { messages: vec![msg("a"), msg("b"), msg("c")], encoded: vec![] };
        assert_eq!(plain.encode_to_vec(), bytes);
    }
}
