//! The codec of every generated service: prost, with a small initial encode buffer.
//!
//! tonic's default keeps an 8 KiB encode buffer per open response stream; a device
//! stream is idle most of the time and its messages are small, so 512 bytes (grown on
//! demand) saves most of that per stream. Only settable through a codec, hence this one.
//!
//! It also answers a request that is not valid protobuf for its type (wrong wire types,
//! truncated fields, invalid UTF-8 in a string) with INVALID_ARGUMENT: the caller sent
//! bad input. tonic's own decoder calls that INTERNAL.
use std::marker::PhantomData;

use tonic::{
    Code, Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial encode/decode buffer; grows as needed.
const BUFFER: usize = 512;
/// Bytes buffered before a stream yields to the transport (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct PushCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for PushCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for PushCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder(ProstDecoder::new(BufferSettings::new(BUFFER, YIELD_THRESHOLD)))
    }
}

/// prost's decoder, with undecodable input reported as INVALID_ARGUMENT.
#[derive(Debug)]
pub struct CheckedDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| match s.code() {
            Code::Internal => Status::invalid_argument(format!(
                "the message is not a valid {}: {}",
                std::any::type_name::<U>().rsplit("::").next().unwrap_or("message"),
                s.message()
            )),
            _ => s,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
