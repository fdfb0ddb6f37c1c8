//! Sample blocks: the samples one batch contributed to one time bucket of one node, encoded as
//! one value.
//!
//! Why blocks instead of one key per sample: an LSM insert costs a memtable skiplist insert, key
//! comparisons and later flush/compaction work per key. At hundreds of thousands of samples per
//! second that per-key cost dominated the controller's CPU. A block turns ~500 inserts into one,
//! and keeps the durable write per group small (the batches themselves, compactly encoded).
//!
//! Encoding (all varints are LEB128): `count`, then per sample `series id`, `timestamp - bucket
//! start` (never negative: samples are placed in the bucket containing them) and the value as
//! f64 little-endian bits, so NaN payloads and ±inf round-trip exactly.

use prost::encoding::{decode_varint, encode_varint};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BlockError {
    #[error("sample block is truncated")]
    Truncated,
    #[error("sample block has {0} trailing bytes")]
    Trailing(usize),
    #[error("sample block timestamp offset {0} overflows")]
    Overflow(u64),
}

/// Builds one block. Samples must lie in `[start, start + BUCKET_MS)`.
pub struct BlockWriter {
    start: i64,
    count: u64,
    body: Vec<u8>,
}

impl BlockWriter {
    pub fn new(start: i64) -> Self {
        Self { start, count: 0, body: Vec::with_capacity(4096) }
    }

    pub fn start(&self) -> i64 {
        self.start
    }

    pub fn push(&mut self, series: u64, ts_ms: i64, value: f64) {
        debug_assert!(ts_ms >= self.start, "sample before its bucket");
        encode_varint(series, &mut self.body);
        encode_varint(ts_ms.wrapping_sub(self.start) as u64, &mut self.body);
        self.body.extend_from_slice(&value.to_bits().to_le_bytes());
        self.count += 1;
    }

    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 10);
        encode_varint(self.count, &mut out);
        out.extend_from_slice(&self.body);
        out
    }
}

/// Calls `f(series, timestamp_ms, value)` for every sample of an encoded block.
pub fn decode(start: i64, mut buf: &[u8], mut f: impl FnMut(u64, i64, f64)) -> Result<(), BlockError> {
    let count = decode_varint(&mut buf).map_err(|_| BlockError::Truncated)?;
    for _ in 0..count {
        let series = decode_varint(&mut buf).map_err(|_| BlockError::Truncated)?;
        let offset = decode_varint(&mut buf).map_err(|_| BlockError::Truncated)?;
        let offset_i = i64::try_from(offset).map_err(|_| BlockError::Overflow(offset))?;
        let ts = start.checked_add(offset_i).ok_or(BlockError::Overflow(offset))?;
        let (bits, rest) = buf.split_first_chunk::<8>().ok_or(BlockError::Truncated)?;
        buf = rest;
        f(series, ts, f64::from_bits(u64::from_le_bytes(*bits)));
    }
    if !buf.is_empty() {
        return Err(BlockError::Trailing(buf.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(start: i64, samples: &[(u64, i64, f64)]) -> Vec<(u64, i64, u64)> {
        let mut w = BlockWriter::new(start);
        for &(s, t, v) in samples {
            w.push(s, t, v);
        }
        let bytes = w.finish();
        let mut out = Vec::new();
        decode(start, &bytes, |s, t, v| out.push((s, t, v.to_bits()))).unwrap();
        out
    }

    #[test]
    fn samples_round_trip_bit_exactly_including_special_floats() {
        let start = 1_763_942_400_000;
        let weird_nan = f64::from_bits(0x7ff8_dead_beef_0001);
        let samples = [
            (1, start, 0.0),
            (u64::MAX, start + 599_999, -0.0),
            (7, start + 1, f64::NAN),
            (7, start + 2, weird_nan),
            (8, start + 3, f64::INFINITY),
            (9, start + 4, f64::NEG_INFINITY),
            (10, start + 5, f64::MAX),
            (11, start + 6, f64::MIN_POSITIVE / 2.0),
        ];
        let want: Vec<(u64, i64, u64)> = samples.iter().map(|&(s, t, v)| (s, t, v.to_bits())).collect();
        assert_eq!(round_trip(start, &samples), want);
    }

    #[test]
    fn huge_offsets_and_negative_starts_round_trip() {
        let start = -86_400_000 * 365;
        let samples = [(1, start, 1.0), (2, start + (1 << 40), 2.0), (3, start + 17, 3.0)];
        let want: Vec<(u64, i64, u64)> = samples.iter().map(|&(s, t, v)| (s, t, f64::to_bits(v))).collect();
        assert_eq!(round_trip(start, &samples), want);
    }

    #[test]
    fn an_empty_block_decodes_to_nothing() {
        assert!(round_trip(0, &[]).is_empty());
    }

    #[test]
    fn corrupt_blocks_are_errors_not_panics() {
        let mut w = BlockWriter::new(0);
        w.push(1, 5, 1.5);
        w.push(2, 6, 2.5);
        let bytes = w.finish();
        for cut in 0..bytes.len() {
            assert!(decode(0, &bytes[..cut], |_, _, _| {}).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(decode(0, &extra, |_, _, _| {}), Err(BlockError::Trailing(1)));
        // An offset that would overflow the timestamp.
        let mut bad = Vec::new();
        encode_varint(1, &mut bad);
        encode_varint(1, &mut bad);
        encode_varint(u64::MAX, &mut bad);
        bad.extend_from_slice(&[0; 8]);
        assert!(decode(i64::MAX - 1, &bad, |_, _, _| {}).is_err());
    }
}
