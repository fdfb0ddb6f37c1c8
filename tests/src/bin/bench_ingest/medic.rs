//! Simulated agents' side of the Medic stream. Batches are encoded straight into bytes from
//! pre-encoded per-series parts, so the load generator spends little of the machine's two cores;
//! what goes on the wire is exactly what `medic.v1.AgentMessage{batch}` encodes to.

use crate::series::{Generator, SeriesDef};
use bytes::{BufMut, Bytes, BytesMut};
use medic_proto::v1::{ControllerMessage, Label, MetricKind, Sample, Series};
use prost::Message;
use prost::encoding::{encode_varint, encoded_len_varint};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// How batches go on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Wire {
    /// Protocol version 2: each series once per batch with its points (what agentd sends).
    Series,
    /// Protocol version 1: one `Sample` per point, name and labels repeated.
    Samples,
}

/// Each series' fields that never change (metric, labels, kind), already encoded as a `Sample`
/// (v1) or a `Series` (v2) message body. Points are appended per batch; protobuf accepts fields
/// in any order.
pub fn prefixes(series: &[SeriesDef], wire: Wire) -> Vec<Vec<u8>> {
    series
        .iter()
        .map(|d| {
            let labels: Vec<Label> = d.labels.iter().map(|(n, v)| Label::new(n, v)).collect();
            let kind = if d.counter { MetricKind::Counter } else { MetricKind::Gauge } as i32;
            match wire {
                Wire::Samples => {
                    Sample { metric: d.metric.clone(), labels, timestamp_ms: 0, value: 0.0, kind }.encode_to_vec()
                }
                Wire::Series => Series { metric: d.metric.clone(), labels, kind, ..Default::default() }.encode_to_vec(),
            }
        })
        .collect()
}

#[derive(Default)]
pub struct BatchEncoder {
    body: BytesMut,
    /// v2: the points of each series in this batch, and the order series first appeared in.
    points: Vec<Vec<(i64, f64)>>,
    order: Vec<usize>,
}

impl BatchEncoder {
    /// An encoded `AgentMessage{batch: Batch{seq, created_unix_ms, samples|series}}` with the
    /// next `n` samples of `generator`.
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &mut self,
        wire: Wire,
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
        match wire {
            Wire::Samples => generator.next_samples(series, n, |i, ts, v| {
                let p = &prefixes[i];
                let len = p.len() + 1 + encoded_len_varint(ts as u64) + 1 + 8;
                body.put_u8(0x1a); // Batch.samples = 3, length-delimited
                encode_varint(len as u64, body);
                body.put_slice(p);
                body.put_u8(0x18); // Sample.timestamp_ms = 3, varint
                encode_varint(ts as u64, body);
                body.put_u8(0x21); // Sample.value = 4, fixed64
                body.put_f64_le(v);
            }),
            Wire::Series => {
                if self.points.len() < series.len() {
                    self.points.resize_with(series.len(), Vec::new);
                }
                let (points, order) = (&mut self.points, &mut self.order);
                generator.next_samples(series, n, |i, ts, v| {
                    if points[i].is_empty() {
                        order.push(i);
                    }
                    points[i].push((ts, v));
                });
                for &i in order.iter() {
                    let pts = &mut points[i];
                    let p = &prefixes[i];
                    let ts_len: usize = pts.iter().map(|(t, _)| encoded_len_varint(*t as u64)).sum();
                    let vs_len = 8 * pts.len();
                    let len = p.len()
                        + 1
                        + encoded_len_varint(ts_len as u64)
                        + ts_len
                        + 1
                        + encoded_len_varint(vs_len as u64)
                        + vs_len;
                    body.put_u8(0x2a); // Batch.series = 5, length-delimited
                    encode_varint(len as u64, body);
                    body.put_slice(p);
                    body.put_u8(0x22); // Series.timestamps_ms = 4, packed
                    encode_varint(ts_len as u64, body);
                    for (t, _) in pts.iter() {
                        encode_varint(*t as u64, body);
                    }
                    body.put_u8(0x2a); // Series.values = 5, packed
                    encode_varint(vs_len as u64, body);
                    for (_, v) in pts.iter() {
                        body.put_f64_le(*v);
                    }
                    pts.clear();
                }
                order.clear();
            }
        }
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

    /// (metric, labels, kind, timestamp, value)
    type Point = (String, Vec<(String, String)>, i32, i64, f64);

    #[test]
    fn hand_encoded_batches_are_what_prost_decodes_in_both_wire_forms() {
        let series = node_series(250);
        for wire in [Wire::Series, Wire::Samples] {
            let prefixes = prefixes(&series, wire);
            // Far ahead of the clock so both generators stamp the same timestamps.
            let ts0 = crate::series::now_ms() + 86_400_000;
            let mut g_ref = Generator::starting_at(series.len(), 3, ts0);
            let mut g = Generator::starting_at(series.len(), 3, ts0);
            let mut enc = BatchEncoder::default();
            for seq in 1..4 {
                let bytes = enc.encode(wire, &prefixes, &series, &mut g, seq, 1_790_000_000_000, 500);
                let msg = AgentMessage::decode(bytes).expect("decodes");
                let Some(agent_message::Msg::Batch(batch)) = msg.msg else { panic!("not a batch: {msg:?}") };
                assert_eq!(batch.seq, seq);
                assert_eq!(batch.created_unix_ms, 1_790_000_000_000);
                assert_eq!(batch.sample_count(), 500);
                match wire {
                    Wire::Series => assert_eq!((batch.samples.len(), batch.series.len()), (0, 250), "2 rounds"),
                    Wire::Samples => assert_eq!((batch.samples.len(), batch.series.len()), (500, 0)),
                }
                // Every generated sample is in the batch, in its series.
                let mut got: Vec<Point> = batch
                    .series_refs()
                    .flat_map(|s| {
                        let labels: Vec<(String, String)> =
                            s.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect();
                        s.points().map(move |(t, v)| (s.metric.to_string(), labels.clone(), s.kind, t, v))
                    })
                    .collect();
                let mut want = Vec::new();
                g_ref.next_samples(&series, 500, |si, ts, v| {
                    let d = &series[si];
                    want.push((d.metric.clone(), d.labels.clone(), if d.counter { 2 } else { 1 }, ts, v));
                });
                let key = |x: &Point| (x.0.clone(), x.1.clone(), x.3);
                got.sort_by_key(key);
                want.sort_by_key(key);
                assert_eq!(got, want);
            }
        }
    }
}
