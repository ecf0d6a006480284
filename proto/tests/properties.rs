//! Property tests: decoding arbitrary bytes as the hand-written SubscribeResponse never
//! panics, and whatever decodes encodes back to the same messages.
use proptest::prelude::*;
use prost::Message;
use push_proto::wire::SubscribeResponse;

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(r) = SubscribeResponse::decode(bytes.as_slice()) {
            let again = SubscribeResponse::decode(r.encode_to_vec().as_slice()).unwrap();
            prop_assert_eq!(again.messages, r.messages);
            prop_assert_eq!(again.states, r.states);
        }
    }
}
