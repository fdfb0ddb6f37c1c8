//! The gRPC codec for `medic.v1`: tonic-prost's, except that messages are decoded from one
//! contiguous byte slice.
//!
//! Why: tonic hands the decoder a `DecodeBuf` (a length-limited view of a `BytesMut`). Decoding
//! through that `Buf` costs a bounds-checked `advance` on the `BytesMut` for every field, and a
//! batch has thousands of small fields; in the controller's ingest profile that was ~10% of all
//! CPU. The frame is already contiguous in memory, so decoding from the slice gives the same
//! message with plain slice reads. Encoding is tonic-prost's unchanged.

use prost::Message;
use prost::bytes::Buf;
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

#[derive(Debug, Clone)]
pub struct SliceProstCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for SliceProstCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for SliceProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SliceProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceProstDecoder { _pd: PhantomData }
    }
}

#[derive(Debug, Clone)]
pub struct SliceProstDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for SliceProstDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let len = buf.remaining();
        // Same mapping as tonic-prost: a protobuf parse error is INTERNAL.
        let item = if buf.chunk().len() >= len {
            let item = U::decode(&buf.chunk()[..len]);
            buf.advance(len);
            item
        } else {
            // Not contiguous (tonic does not do this today): decode through the Buf.
            U::decode(&mut *buf)
        };
        item.map(Some).map_err(|e| Status::internal(e.to_string()))
    }
}
