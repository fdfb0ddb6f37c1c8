//! Simulated agents' side of the Medic stream. Batches are encoded straight into bytes from
//! pre-encoded per-series parts, so the load generator spends little of the machine's two cores;
//! what goes on the wire is exactly what `medic.v1.AgentMessage{batch}` encodes to.

use crate::series::{Generator, SeriesDef};
use bytes::{BufMut, Bytes, BytesMut};
use medic_proto::v1::{ControllerMessage, Label, MetricKind, Sample};
use prost::Message;
use prost::encoding::{encode_varint, encoded_len_varint};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Each series' `Sample` fields that never change (metric, labels, kind), already encoded.
/// Timestamp and value are appended per sample; protobuf accepts fields in any order.
pub fn sample_prefixes(series: &[SeriesDef]) -> Vec<Vec<u8>> {
    series
        .iter()
        .map(|d| {
            Sample {
                metric: d.metric.clone(),
                labels: d.labels.iter().map(|(n, v)| Label::new(n, v)).collect(),
                timestamp_ms: 0,
                value: 0.0,
                kind: if d.counter { MetricKind::Counter } else { MetricKind::Gauge } as i32,
            }
            .encode_to_vec()
        })
        .collect()
}

#[derive(Default)]
pub struct BatchEncoder {
    body: BytesMut,
}

impl BatchEncoder {
    /// An encoded `AgentMessage{batch: Batch{seq, created_unix_ms, samples}}` with the next `n`
    /// samples of `generator`.
    pub fn encode(
        &mut self,
        prefixes: &[Vec<u8>],
        series: &[SeriesDef],
        generator: &mut Generator,
        seq: u64,
        created_ms: i64,
        n: usize,
    ) -> Bytes {
        let body = &mut self.body;
        body.clear();
        body.put_u8(0x08); // Batch.seq = 1, varint
        encode_varint(seq, body);
        body.put_u8(0x10); // Batch.created_unix_ms = 2, varint
        encode_varint(created_ms as u64, body);
        generator.next_samples(series, n, |i, ts, v| {
            let p = &prefixes[i];
            let len = p.len() + 1 + encoded_len_varint(ts as u64) + 1 + 8;
            body.put_u8(0x1a); // Batch.samples = 3, length-delimited
            encode_varint(len as u64, body);
            body.put_slice(p);
            body.put_u8(0x18); // Sample.timestamp_ms = 3, varint
            encode_varint(ts as u64, body);
            body.put_u8(0x21); // Sample.value = 4, fixed64
            body.put_f64_le(v);
        });
        let mut out = BytesMut::with_capacity(body.len() + 6);
        out.put_u8(0x12); // AgentMessage.batch = 2, length-delimited
        encode_varint(body.len() as u64, &mut out);
        out.put_slice(body);
        out.freeze()
    }
}

/// Sends pre-encoded `AgentMessage` bytes; decodes `ControllerMessage`s.
#[derive(Default, Clone)]
pub struct AgentCodec;

impl Codec for AgentCodec {
    type Encode = Bytes;
    type Decode = ControllerMessage;
    type Encoder = AgentCodec;
    type Decoder = AgentCodec;
    fn encoder(&mut self) -> Self::Encoder {
        AgentCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        AgentCodec
    }
}

impl Encoder for AgentCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for AgentCodec {
    type Item = ControllerMessage;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ControllerMessage>, Status> {
        ControllerMessage::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("undecodable ControllerMessage: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::node_series;
    use medic_proto::v1::{AgentMessage, agent_message};

    #[test]
    fn hand_encoded_batch_is_what_prost_decodes() {
        let series = node_series(250);
        let prefixes = sample_prefixes(&series);
        // Far ahead of the clock so both generators stamp the same timestamps.
        let ts0 = crate::series::now_ms() + 86_400_000;
        let mut g_ref = Generator::starting_at(series.len(), 3, ts0);
        let mut g = Generator::starting_at(series.len(), 3, ts0);
        let mut enc = BatchEncoder::default();
        for seq in 1..4 {
            let bytes = enc.encode(&prefixes, &series, &mut g, seq, 1_790_000_000_000, 500);
            let msg = AgentMessage::decode(bytes).expect("decodes");
            let Some(agent_message::Msg::Batch(batch)) = msg.msg else { panic!("not a batch: {msg:?}") };
            assert_eq!(batch.seq, seq);
            assert_eq!(batch.created_unix_ms, 1_790_000_000_000);
            assert_eq!(batch.samples.len(), 500);
            let mut i = 0;
            g_ref.next_samples(&series, 500, |si, ts, v| {
                let s = &batch.samples[i];
                let d = &series[si];
                assert_eq!(s.metric, d.metric);
                assert_eq!(s.labels.len(), d.labels.len());
                for (l, (n, val)) in s.labels.iter().zip(&d.labels) {
                    assert_eq!((&l.name, &l.value), (n, val));
                }
                assert_eq!(s.timestamp_ms, ts);
                assert_eq!(s.value, v);
                assert_eq!(s.kind, if d.counter { 2 } else { 1 });
                i += 1;
            });
        }
    }
}
