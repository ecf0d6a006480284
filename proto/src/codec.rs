//! The codec of every generated service: prost, with a small initial encode buffer.
//!
//! tonic's default keeps an 8 KiB encode buffer per open response stream; a device
//! stream is idle most of the time and its messages are small, so 512 bytes (grown on
//! demand) saves most of that per stream. Only settable through a codec, hence this one.
use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
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
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }
}
