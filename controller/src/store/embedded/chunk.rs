//! Compacted sample chunks: everything one node stored in one closed time bucket, rewritten by
//! series so that it compresses across time (see the module docs of `compact`).
//!
//! A bucket's value (see [`BucketWriter`] for the byte layout) holds an index up front, so that
//! a query decodes only its metric's series, then per series:
//! - timestamps, as offsets from the bucket start: an integer sequence (below). Collection is
//!   periodic, so the deltas are nearly constant and take 0–3 bits each; and a node's series are
//!   collected together, so each distinct sequence is stored once and shared;
//! - values: when every value of the chunk is a decimal `m / 10^e` with the same `e` (counters of
//!   ticks, bytes, pages, two-decimal gauges: almost all host and ClickHouse metrics) the integer
//!   sequence of the mantissas `m`, as VictoriaMetrics does; otherwise Gorilla's XOR encoding of
//!   the float bits, which keeps anything (NaN payloads, ±inf, -0.0) bit-exactly.
//!
//! An integer sequence is its first value, then its deltas as frame-of-reference bit-packing:
//! the smallest delta, the deltas' common divisor (4096-byte pages step by 4096) and a width in
//! bits — or, when that is shorter, one bit per delta saying whether it is zero followed by the
//! non-zero deltas packed that way (gauges that often stay put). General-purpose codecs lose
//! here: a chunk is one series' ten minutes (60 values at 10 s), too short to amortise an
//! entropy coder's tables, while these shapes are simple and cheap to detect.
//!
//! Decoding never trusts the bytes: every length, count and width is checked against what is
//! left, and arithmetic that would overflow is an error.

use prost::encoding::{decode_varint, encode_varint};
use std::collections::HashMap;

pub const FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChunkError {
    #[error("compacted chunk is truncated")]
    Truncated,
    #[error("compacted chunk has unknown format {0}")]
    Format(u8),
    #[error("compacted chunk is malformed: {0}")]
    Malformed(&'static str),
}

type Result<T> = std::result::Result<T, ChunkError>;

fn varint(buf: &mut &[u8]) -> Result<u64> {
    decode_varint(buf).map_err(|_| ChunkError::Truncated)
}

fn byte(buf: &mut &[u8]) -> Result<u8> {
    let (&b, rest) = buf.split_first().ok_or(ChunkError::Truncated)?;
    *buf = rest;
    Ok(b)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Bits needed for `v` (0 for 0).
fn width_of(v: u64) -> u32 {
    64 - v.leading_zeros()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// LSB-first bit packing into bytes.
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u128,
    bits: u32,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out, acc: 0, bits: 0 }
    }

    fn write(&mut self, value: u64, width: u32) {
        if width == 0 {
            return;
        }
        let v = if width == 64 { value } else { value & ((1u64 << width) - 1) };
        self.acc |= (v as u128) << self.bits;
        self.bits += width;
        while self.bits >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.bits -= 8;
        }
    }

    fn finish(self) {
        if self.bits > 0 {
            self.out.push(self.acc as u8);
        }
    }
}

struct BitReader<'a> {
    buf: &'a [u8],
    /// Next bit to read.
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn read(&mut self, width: u32) -> Result<u64> {
        if width == 0 {
            return Ok(0);
        }
        let end = self.pos.checked_add(width as usize).ok_or(ChunkError::Truncated)?;
        if end > self.buf.len() * 8 {
            return Err(ChunkError::Truncated);
        }
        let (first, shift) = (self.pos / 8, self.pos % 8);
        let last = (end - 1) / 8;
        let mut acc: u128 = 0;
        for (i, &b) in self.buf[first..=last].iter().enumerate() {
            acc |= (b as u128) << (8 * i);
        }
        acc >>= shift;
        self.pos = end;
        Ok(if width == 64 { acc as u64 } else { (acc as u64) & ((1u64 << width) - 1) })
    }

    fn bit(&mut self) -> Result<bool> {
        Ok(self.read(1)? == 1)
    }

    /// Bytes consumed, rounded up to whole bytes.
    fn bytes_used(&self) -> usize {
        self.pos.div_ceil(8)
    }
}

/// Integer sequences stay within ±2^61, so their deltas fit an i64 and a delta's distance from
/// the smallest delta fits a u64.
const INT_LIMIT: i64 = 1 << 61;

/// Most points one series can have in a bucket: one per millisecond of a 10-minute bucket, with
/// room to spare. A larger count is corruption, not a reason to allocate.
const MAX_POINTS: u64 = 1 << 21;

const MODE_DENSE: u8 = 0;
const MODE_SPARSE: u8 = 1;

/// How to pack a list of deltas: frame of reference `min`, divisor `g`, `width` bits each.
struct Frame {
    min: i64,
    g: u64,
    width: u32,
}

impl Frame {
    fn of(deltas: impl Iterator<Item = i64> + Clone) -> Self {
        let Some(min) = deltas.clone().min() else { return Frame { min: 0, g: 1, width: 0 } };
        let mut g = 0;
        let mut max = 0;
        for d in deltas {
            let x = d.abs_diff(min);
            g = gcd(g, x);
            max = max.max(x);
        }
        let g = g.max(1);
        Frame { min, g, width: width_of(max / g) }
    }

    fn header_bytes(&self) -> usize {
        varint_len(zigzag(self.min)) + varint_len(self.g) + 1
    }

    fn write_header(&self, out: &mut Vec<u8>) {
        encode_varint(zigzag(self.min), out);
        encode_varint(self.g, out);
        out.push(self.width as u8);
    }

    fn read_header(buf: &mut &[u8]) -> Result<Self> {
        let min = unzigzag(varint(buf)?);
        let g = varint(buf)?;
        let width = byte(buf)? as u32;
        if g == 0 || width > 64 {
            return Err(ChunkError::Malformed("bad frame"));
        }
        Ok(Frame { min, g, width })
    }

    fn pack(&self, w: &mut BitWriter, d: i64) {
        w.write(d.abs_diff(self.min) / self.g, self.width);
    }

    fn unpack(&self, r: &mut BitReader) -> Result<i64> {
        let x = r.read(self.width)?;
        let step = x.checked_mul(self.g).ok_or(ChunkError::Malformed("delta overflows"))?;
        // min + step, where step may exceed i64::MAX while the sum does not.
        let sum = self.min as i128 + step as i128;
        i64::try_from(sum).map_err(|_| ChunkError::Malformed("delta overflows"))
    }
}

fn varint_len(v: u64) -> usize {
    prost::encoding::encoded_len_varint(v)
}

/// Appends an integer sequence. Every value must lie within ±[`INT_LIMIT`].
fn encode_ints(values: &[i64], out: &mut Vec<u8>) {
    debug_assert!(values.iter().all(|v| v.unsigned_abs() <= INT_LIMIT as u64));
    let Some((&first, _)) = values.split_first() else { return };
    encode_varint(zigzag(first), out);
    if values.len() < 2 {
        return;
    }
    let deltas = values.windows(2).map(|w| w[1] - w[0]);
    let n = values.len() - 1;
    let dense = Frame::of(deltas.clone());
    let nonzero = deltas.clone().filter(|&d| d != 0);
    let sparse = Frame::of(nonzero.clone());
    let k = nonzero.clone().count();
    let dense_bytes = dense.header_bytes() + (n * dense.width as usize).div_ceil(8);
    let sparse_bytes = n.div_ceil(8) + sparse.header_bytes() + (k * sparse.width as usize).div_ceil(8);
    if sparse_bytes < dense_bytes {
        out.push(MODE_SPARSE);
        let mut w = BitWriter::new(out);
        for d in deltas {
            w.write((d != 0) as u64, 1);
        }
        w.finish();
        sparse.write_header(out);
        let mut w = BitWriter::new(out);
        for d in nonzero {
            sparse.pack(&mut w, d);
        }
        w.finish();
    } else {
        out.push(MODE_DENSE);
        dense.write_header(out);
        let mut w = BitWriter::new(out);
        for d in deltas {
            dense.pack(&mut w, d);
        }
        w.finish();
    }
}

/// Reads an integer sequence of `n` values into `out` (cleared first).
fn decode_ints(buf: &mut &[u8], n: usize, out: &mut Vec<i64>) -> Result<()> {
    out.clear();
    if n == 0 {
        return Ok(());
    }
    let mut v = unzigzag(varint(buf)?);
    out.push(v);
    if n == 1 {
        return Ok(());
    }
    let deltas = n - 1;
    let step = |v: i64, d: i64| v.checked_add(d).ok_or(ChunkError::Malformed("value overflows"));
    match byte(buf)? {
        MODE_DENSE => {
            let frame = Frame::read_header(buf)?;
            check_bits(buf, deltas, frame.width)?;
            let mut r = BitReader::new(buf);
            for _ in 0..deltas {
                v = step(v, frame.unpack(&mut r)?)?;
                out.push(v);
            }
            *buf = &buf[r.bytes_used()..];
        }
        MODE_SPARSE => {
            check_bits(buf, deltas, 1)?;
            let flags = &buf[..deltas.div_ceil(8)];
            *buf = &buf[flags.len()..];
            let k = flags.iter().map(|b| b.count_ones() as usize).sum::<usize>();
            let frame = Frame::read_header(buf)?;
            check_bits(buf, k, frame.width)?;
            let mut f = BitReader::new(flags);
            let mut r = BitReader::new(buf);
            for _ in 0..deltas {
                if f.bit()? {
                    v = step(v, frame.unpack(&mut r)?)?;
                }
                out.push(v);
            }
            if f.read(((8 - deltas % 8) % 8) as u32)? != 0 {
                return Err(ChunkError::Malformed("stray flag bits"));
            }
            *buf = &buf[r.bytes_used()..];
        }
        _ => return Err(ChunkError::Malformed("unknown integer mode")),
    }
    Ok(())
}

/// Fails unless `buf` holds `n` values of `width` bits.
fn check_bits(buf: &[u8], n: usize, width: u32) -> Result<()> {
    let bits = n.checked_mul(width as usize).ok_or(ChunkError::Truncated)?;
    if bits.div_ceil(8) > buf.len() { Err(ChunkError::Truncated) } else { Ok(()) }
}

/// 10^0 ..= 10^MAX_EXP, all exact in an f64.
const POW10: [f64; 16] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];
const MAX_EXP: usize = POW10.len() - 1;

fn from_decimal(m: i64, e: usize) -> f64 {
    // An integer below 2^53 and a power of ten are exact, so the division is correctly rounded:
    // `m / 10^e` is the f64 nearest to the decimal, the same one parsing "m·10^-e" gives.
    if e == 0 { m as f64 } else { m as f64 / POW10[e] }
}

/// Largest mantissa kept: integers up to 2^53 are exact in an f64.
const MANTISSA_LIMIT: f64 = (1u64 << 53) as f64;

fn to_decimal(v: f64, e: usize) -> Option<i64> {
    let scaled = (v * POW10[e]).round();
    // NaN and infinities fail this too.
    if scaled.is_nan() || scaled.abs() >= MANTISSA_LIMIT {
        return None;
    }
    let m = scaled as i64;
    (from_decimal(m, e).to_bits() == v.to_bits()).then_some(m)
}

/// The mantissas of `values` at one common exponent, when they all are such decimals.
fn decimals(values: &[f64], mantissas: &mut Vec<i64>) -> Option<usize> {
    let mut e = 0;
    for &v in values {
        while to_decimal(v, e).is_none() {
            e += 1;
            if e > MAX_EXP {
                return None;
            }
        }
    }
    mantissas.clear();
    for &v in values {
        // A value exact at a smaller exponent is exact at a larger one too (the same real number),
        // unless the mantissa outgrows 2^53.
        mantissas.push(to_decimal(v, e)?);
    }
    Some(e)
}

const VALUES_DECIMAL: u8 = 0;
const VALUES_XOR: u8 = 1;

/// Gorilla's XOR encoding: a repeated value costs one bit; a changed one the bits that changed,
/// reusing the previous window of meaningful bits when they fit in it.
fn encode_xor(values: &[f64], out: &mut Vec<u8>) {
    let mut w = BitWriter::new(out);
    let Some((first, rest)) = values.split_first() else { return };
    let mut prev = first.to_bits();
    w.write(prev, 64);
    let (mut lead, mut trail) = (u32::MAX, 0);
    for v in rest {
        let bits = v.to_bits();
        let x = bits ^ prev;
        prev = bits;
        if x == 0 {
            w.write(0, 1);
            continue;
        }
        w.write(1, 1);
        let (l, t) = (x.leading_zeros().min(31), x.trailing_zeros());
        if lead != u32::MAX && l >= lead && t >= trail {
            w.write(0, 1);
            w.write(x >> trail, 64 - lead - trail);
        } else {
            let sig = 64 - l - t;
            w.write(1, 1);
            w.write(l as u64, 5);
            w.write((sig - 1) as u64, 6);
            w.write(x >> t, sig);
            (lead, trail) = (l, t);
        }
    }
    w.finish();
}

fn decode_xor(buf: &mut &[u8], n: usize, out: &mut Vec<f64>) -> Result<()> {
    out.clear();
    if n == 0 {
        return Ok(());
    }
    let mut r = BitReader::new(buf);
    let mut prev = r.read(64)?;
    out.push(f64::from_bits(prev));
    let (mut lead, mut trail) = (u32::MAX, 0);
    for _ in 1..n {
        if r.bit()? {
            if r.bit()? {
                lead = r.read(5)? as u32;
                let sig = r.read(6)? as u32 + 1;
                if lead + sig > 64 {
                    return Err(ChunkError::Malformed("xor window exceeds 64 bits"));
                }
                trail = 64 - lead - sig;
            } else if lead == u32::MAX {
                return Err(ChunkError::Malformed("xor window reused before set"));
            }
            let x = r.read(64 - lead - trail)? << trail;
            prev ^= x;
        }
        out.push(f64::from_bits(prev));
    }
    *buf = &buf[r.bytes_used()..];
    Ok(())
}

/// Reusable buffers for encoding and decoding series.
#[derive(Default)]
pub struct Scratch {
    mantissas: Vec<i64>,
    floats: Vec<f64>,
}

/// Appends the values of one series.
fn encode_values(values: &[f64], scratch: &mut Scratch, out: &mut Vec<u8>) {
    let fits = |m: &Vec<i64>| m.iter().all(|v| v.unsigned_abs() <= INT_LIMIT as u64);
    match decimals(values, &mut scratch.mantissas) {
        Some(e) if fits(&scratch.mantissas) => {
            out.push(VALUES_DECIMAL);
            out.push(e as u8);
            encode_ints(&scratch.mantissas, out);
        }
        _ => {
            out.push(VALUES_XOR);
            encode_xor(values, out);
        }
    }
}

/// Calls `f(timestamp, value)` for a series body, given its timestamps (offsets from `start`).
fn decode_values(
    start: i64,
    ts: &[i64],
    mut buf: &[u8],
    scratch: &mut Scratch,
    mut f: impl FnMut(i64, f64),
) -> Result<()> {
    let n = ts.len();
    let at = |t: i64| start.checked_add(t).ok_or(ChunkError::Malformed("timestamp overflows"));
    match byte(&mut buf)? {
        VALUES_DECIMAL => {
            let e = byte(&mut buf)? as usize;
            if e > MAX_EXP {
                return Err(ChunkError::Malformed("decimal exponent"));
            }
            let mut m = std::mem::take(&mut scratch.mantissas);
            decode_ints(&mut buf, n, &mut m)?;
            for (&t, &m) in ts.iter().zip(&m) {
                if m.unsigned_abs() > INT_LIMIT as u64 {
                    return Err(ChunkError::Malformed("decimal mantissa"));
                }
                f(at(t)?, from_decimal(m, e));
            }
            scratch.mantissas = m;
        }
        VALUES_XOR => {
            let mut vals = std::mem::take(&mut scratch.floats);
            decode_xor(&mut buf, n, &mut vals)?;
            for (&t, &v) in ts.iter().zip(&vals) {
                f(at(t)?, v);
            }
            scratch.floats = vals;
        }
        _ => return Err(ChunkError::Malformed("unknown value encoding")),
    }
    if !buf.is_empty() {
        return Err(ChunkError::Malformed("trailing bytes in series"));
    }
    Ok(())
}

/// Builds one bucket's value from its points, which must come sorted by (series, timestamp)
/// with one point per (series, timestamp).
///
/// The series of a node are collected together, so most share their timestamps: each distinct
/// timestamp sequence is stored once, in a table the series refer to. The value is
/// `format | through block | table count | per table: length | series count | per series: id
/// delta, table, body length | tables | bodies`, a table being `point count | integer sequence
/// of offsets from the bucket start` and a body the series' values.
pub struct BucketWriter {
    start: i64,
    through_block: u64,
    /// Encoded timestamp tables, and the table of each distinct sequence of offsets.
    tables: Vec<Vec<u8>>,
    table_of: HashMap<Vec<i64>, u32>,
    /// (series, table, body length).
    index: Vec<(u64, u32, usize)>,
    bodies: Vec<u8>,
    ts: Vec<i64>,
    values: Vec<f64>,
    current: Option<u64>,
    scratch: Scratch,
}

impl BucketWriter {
    pub fn new(start: i64, through_block: u64) -> Self {
        Self {
            start,
            through_block,
            tables: Vec::new(),
            table_of: HashMap::new(),
            index: Vec::new(),
            bodies: Vec::new(),
            ts: Vec::new(),
            values: Vec::new(),
            current: None,
            scratch: Scratch::default(),
        }
    }

    pub fn push(&mut self, series: u64, ts: i64, value: f64) {
        if self.current != Some(series) {
            self.flush_series();
            self.current = Some(series);
        }
        debug_assert!(self.ts.last().is_none_or(|&t| t < ts - self.start), "points out of order");
        self.ts.push(ts - self.start);
        self.values.push(value);
    }

    fn flush_series(&mut self) {
        let Some(series) = self.current.take() else { return };
        let table = match self.table_of.get(&self.ts) {
            Some(&t) => t,
            None => {
                let t = self.tables.len() as u32;
                let mut enc = Vec::new();
                encode_varint(self.ts.len() as u64, &mut enc);
                encode_ints(&self.ts, &mut enc);
                self.tables.push(enc);
                self.table_of.insert(self.ts.clone(), t);
                t
            }
        };
        let before = self.bodies.len();
        encode_values(&self.values, &mut self.scratch, &mut self.bodies);
        self.index.push((series, table, self.bodies.len() - before));
        self.ts.clear();
        self.values.clear();
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.flush_series();
        let tables: usize = self.tables.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(tables + self.bodies.len() + 5 * self.index.len() + 16);
        out.push(FORMAT);
        encode_varint(self.through_block, &mut out);
        encode_varint(self.tables.len() as u64, &mut out);
        for t in &self.tables {
            encode_varint(t.len() as u64, &mut out);
        }
        encode_varint(self.index.len() as u64, &mut out);
        let mut prev = 0;
        for &(series, table, len) in &self.index {
            encode_varint(series - prev, &mut out);
            encode_varint(table as u64, &mut out);
            encode_varint(len as u64, &mut out);
            prev = series;
        }
        for t in &self.tables {
            out.extend_from_slice(t);
        }
        out.extend_from_slice(&self.bodies);
        out
    }
}

/// The highest sample block number merged into an encoded bucket.
pub fn through_block(mut buf: &[u8]) -> Result<u64> {
    let format = byte(&mut buf)?;
    if format != FORMAT {
        return Err(ChunkError::Format(format));
    }
    varint(&mut buf)
}

/// An encoded bucket, its parts located but not decoded.
struct Index<'a> {
    tables: Vec<&'a [u8]>,
    /// (series, table, body), in id order.
    series: Vec<(u64, usize, &'a [u8])>,
}

/// Splits `n` consecutive byte strings of the given lengths off `buf`.
fn split_lengths<'a>(buf: &mut &'a [u8], lens: impl Iterator<Item = usize>) -> Result<Vec<&'a [u8]>> {
    lens.map(|len| {
        if len > buf.len() {
            return Err(ChunkError::Truncated);
        }
        let (part, rest) = buf.split_at(len);
        *buf = rest;
        Ok(part)
    })
    .collect()
}

fn index(mut buf: &[u8]) -> Result<Index<'_>> {
    let format = byte(&mut buf)?;
    if format != FORMAT {
        return Err(ChunkError::Format(format));
    }
    let _through = varint(&mut buf)?;
    let n_tables = varint(&mut buf)?;
    if n_tables > buf.len() as u64 {
        return Err(ChunkError::Malformed("bad table count"));
    }
    let mut table_lens = Vec::with_capacity(n_tables as usize);
    for _ in 0..n_tables {
        table_lens.push(usize::try_from(varint(&mut buf)?).map_err(|_| ChunkError::Truncated)?);
    }
    let n = varint(&mut buf)?;
    if n > buf.len() as u64 / 3 {
        return Err(ChunkError::Malformed("bad series count"));
    }
    let mut entries = Vec::with_capacity(n as usize);
    let mut series = 0u64;
    for i in 0..n {
        let delta = varint(&mut buf)?;
        if i > 0 && delta == 0 {
            return Err(ChunkError::Malformed("series repeated"));
        }
        series = series.checked_add(delta).ok_or(ChunkError::Malformed("series id overflows"))?;
        let table = varint(&mut buf)?;
        if table >= n_tables {
            return Err(ChunkError::Malformed("unknown timestamp table"));
        }
        let len = usize::try_from(varint(&mut buf)?).map_err(|_| ChunkError::Truncated)?;
        entries.push((series, table as usize, len));
    }
    let tables = split_lengths(&mut buf, table_lens.into_iter())?;
    let bodies = split_lengths(&mut buf, entries.iter().map(|e| e.2))?;
    if !buf.is_empty() {
        return Err(ChunkError::Malformed("trailing bytes"));
    }
    let series = entries.iter().zip(bodies).map(|(&(s, t, _), body)| (s, t, body)).collect();
    Ok(Index { tables, series })
}

/// The point count of a timestamp table.
fn table_len(mut table: &[u8]) -> Result<u64> {
    let n = varint(&mut table)?;
    if n == 0 || n > MAX_POINTS {
        return Err(ChunkError::Malformed("bad point count"));
    }
    Ok(n)
}

fn decode_table(mut table: &[u8], out: &mut Vec<i64>) -> Result<()> {
    let n = table_len(table)?;
    let _ = varint(&mut table)?;
    decode_ints(&mut table, n as usize, out)?;
    if !table.is_empty() {
        return Err(ChunkError::Malformed("trailing bytes in timestamps"));
    }
    Ok(())
}

/// (series, point count) of every series of an encoded bucket, without decoding the points.
pub fn series_counts(buf: &[u8]) -> Result<Vec<(u64, u64)>> {
    let index = index(buf)?;
    let counts = index.tables.iter().map(|t| table_len(t)).collect::<Result<Vec<u64>>>()?;
    Ok(index.series.iter().map(|&(s, t, _)| (s, counts[t])).collect())
}

/// Calls `f(series, timestamp, value)` for every point of the series `want` accepts, in
/// (series, timestamp) order; skips the other series without decoding them.
pub fn decode(
    start: i64,
    buf: &[u8],
    mut want: impl FnMut(u64) -> bool,
    mut f: impl FnMut(u64, i64, f64),
) -> Result<()> {
    let index = index(buf)?;
    let mut tables: Vec<Option<Vec<i64>>> = vec![None; index.tables.len()];
    let mut scratch = Scratch::default();
    for (series, table, body) in index.series {
        if !want(series) {
            continue;
        }
        let ts = match &mut tables[table] {
            Some(ts) => ts,
            slot => {
                let mut ts = Vec::new();
                decode_table(index.tables[table], &mut ts)?;
                slot.insert(ts)
            }
        };
        decode_values(start, ts, body, &mut scratch, |t, v| f(series, t, v))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: i64 = 1_763_942_400_000;

    fn encode(points: &[(u64, i64, f64)]) -> Vec<u8> {
        let mut w = BucketWriter::new(START, 42);
        for &(s, t, v) in points {
            w.push(s, t, v);
        }
        w.finish()
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<(u64, i64, u64)>> {
        let mut out = Vec::new();
        decode(START, bytes, |_| true, |s, t, v| out.push((s, t, v.to_bits())))?;
        Ok(out)
    }

    fn bits(points: &[(u64, i64, f64)]) -> Vec<(u64, i64, u64)> {
        points.iter().map(|&(s, t, v)| (s, t, v.to_bits())).collect()
    }

    fn regular(series: u64, n: i64, value: impl Fn(i64) -> f64) -> Vec<(u64, i64, f64)> {
        (0..n).map(|i| (series, START + 1_234 + i * 10_000, value(i))).collect()
    }

    #[test]
    fn every_float_round_trips_bit_exactly_including_nan_payloads_infinities_and_negative_zero() {
        let weird_nan = f64::from_bits(0x7ff8_dead_beef_0001);
        let specials = [
            0.0,
            -0.0,
            f64::NAN,
            weird_nan,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::MIN_POSITIVE / 2.0,
            f64::EPSILON,
            1.0 / 3.0,
            0.1 + 0.2,
            9_007_199_254_740_993.0,
            -12.5,
        ];
        let mut points = Vec::new();
        for (i, &v) in specials.iter().enumerate() {
            // Alone, next to decimals, and repeated.
            points.push((1, START + i as i64, v));
            points.push((2, START + 2 * i as i64, v));
            points.push((2, START + 2 * i as i64 + 1, i as f64 / 100.0));
            points.push((3 + i as u64, START, v));
            points.push((3 + i as u64, START + 1, v));
        }
        points.sort_by_key(|p| (p.0, p.1));
        assert_eq!(decode_all(&encode(&points)).unwrap(), bits(&points));
    }

    #[test]
    fn typical_host_metrics_take_a_few_bits_per_point() {
        let mut points = regular(1, 60, |i| 1_000_000.0 + i as f64 * 0.07 + (i % 3) as f64 / 100.0); // cpu seconds
        points.extend(regular(2, 60, |i| 8_000_000_000.0 + 4096.0 * ((i * 7919) % 97) as f64)); // memory pages
        points.extend(regular(3, 60, |i| ((i * 37) % 300) as f64 / 100.0)); // load average
        points.extend(regular(4, 60, |_| 1_763_000_000.0)); // boot time
        points.extend(regular(5, 60, |i| (i / 20) as f64)); // error counter
        let bytes = encode(&points);
        assert_eq!(decode_all(&bytes).unwrap(), bits(&points));
        let per_point = bytes.len() as f64 / points.len() as f64;
        assert!(per_point < 1.5, "{per_point} bytes per point");
    }

    #[test]
    fn series_collected_together_store_their_timestamps_once() {
        let shared: Vec<_> = (1..=50).flat_map(|s| regular(s, 60, move |_| s as f64)).collect();
        let bytes = encode(&shared);
        assert_eq!(decode_all(&bytes).unwrap(), bits(&shared));
        // Each would otherwise carry ~9 bytes of timestamps besides its ~10.
        assert!(bytes.len() < 50 * 12, "{} bytes for 50 constant series", bytes.len());
        // One series collected at other times gets its own table.
        let mut mixed = shared.clone();
        mixed.extend((0..60).map(|i| (99, START + 5 + i * 9_999, 1.0)));
        let more = encode(&mixed);
        assert_eq!(decode_all(&more).unwrap(), bits(&mixed));
        assert_eq!(series_counts(&more).unwrap().last(), Some(&(99, 60)));
    }

    #[test]
    fn decimals_pick_the_smallest_exponent_that_holds_every_value() {
        let mut m = Vec::new();
        assert_eq!(decimals(&[1.0, 2.0, 3e15], &mut m), Some(0));
        assert_eq!(decimals(&[0.5, 0.25, 12.0], &mut m), Some(2));
        assert_eq!(m, [50, 25, 1200]);
        assert_eq!(decimals(&[0.1, 0.2, 0.3], &mut m), Some(1));
        assert_eq!(decimals(&[0.1 + 0.2], &mut m), None, "0.30000000000000004 needs 17 digits");
        assert_eq!(decimals(&[-0.0], &mut m), None);
        assert_eq!(decimals(&[f64::NAN], &mut m), None);
        assert_eq!(decimals(&[1e300], &mut m), None);
        assert_eq!(decimals(&[-3.75], &mut m), Some(2));
        assert_eq!(m, [-375]);
    }

    #[test]
    fn extreme_integers_and_timestamps_round_trip() {
        let big = (1i64 << 53) as f64;
        let points = [
            (1, START, big),
            (1, START + 1, -big),
            (1, START + 599_999, big),
            (u64::MAX - 1, START, 0.0),
            (u64::MAX, START + 7, 1.0),
        ];
        assert_eq!(decode_all(&encode(&points)).unwrap(), bits(&points));
        for seq in [vec![INT_LIMIT, -INT_LIMIT, INT_LIMIT, 0], vec![-INT_LIMIT, INT_LIMIT], vec![0, 0, 0, 5, 0, 0]] {
            let mut buf = Vec::new();
            encode_ints(&seq, &mut buf);
            let (mut got, mut slice) = (Vec::new(), &buf[..]);
            decode_ints(&mut slice, seq.len(), &mut got).unwrap();
            assert_eq!((got, slice.len()), (seq, 0));
        }
    }

    #[test]
    fn only_wanted_series_are_decoded() {
        let mut points = regular(3, 5, |i| i as f64);
        points.extend(regular(9, 5, |i| -(i as f64)));
        let bytes = encode(&points);
        let mut seen = Vec::new();
        decode(START, &bytes, |s| s == 9, |s, t, v| seen.push((s, t, v))).unwrap();
        assert_eq!(seen, points[5..]);
        assert_eq!(through_block(&bytes).unwrap(), 42);
        assert_eq!(series_counts(&bytes).unwrap(), [(3, 5), (9, 5)]);
    }

    #[test]
    fn corrupt_chunks_are_errors_not_panics() {
        let mut points = regular(1, 60, |i| i as f64 * 1.5);
        points.extend(regular(2, 60, |i| if i % 7 == 0 { f64::NAN } else { i as f64 / 3.0 }));
        points.extend(regular(3, 60, |i| if i % 2 == 0 { 0.0 } else { 4096.0 * i as f64 }));
        let bytes = encode(&points);
        assert_eq!(decode_all(&bytes).unwrap(), bits(&points));
        for cut in 0..bytes.len() {
            assert!(decode_all(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode_all(&extra).is_err());
        let mut other_format = bytes.clone();
        other_format[0] = 9;
        assert_eq!(decode_all(&other_format), Err(ChunkError::Format(9)));
        // Flipping any byte, or any single bit, gives an error or other points — never a panic.
        for i in 0..bytes.len() {
            for flip in [0xff, 0x01, 0x80, 0x10] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                let _ = decode_all(&b);
            }
        }
        // Pseudo-random garbage.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..400 {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let mut g = garbage.clone();
            if let Some(b) = g.first_mut() {
                *b = FORMAT;
            }
            let _ = decode_all(&g);
        }
    }
}
