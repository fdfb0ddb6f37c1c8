//! Record format, per-segment index and recovery scanning.
//!
//! A record is `magic u32 | crc u32 | len u32 | seq u64 | payload[len]`, little endian.
//! The crc32 covers `len`, `seq` and the payload, so a damaged length or sequence number is
//! caught like a damaged payload. The magic lets recovery resynchronise after a damaged
//! region by searching for the next plausible record start.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Chosen to be unlike zeroed blocks, 0xFF-filled flash and ASCII text.
pub(crate) const MAGIC: [u8; 4] = [0xC7, 0x5E, 0xA1, 0x3D];
pub(crate) const HEADER_LEN: usize = 20;

/// Marks a sequence number inside a segment's range that has no readable record (it was lost
/// to mid-segment corruption); keeps the index dense without a side table.
const MISSING: u32 = u32::MAX;

/// Scan and read window: large enough to amortise syscalls, small enough to keep recovery
/// memory bounded regardless of spool size.
const WINDOW: usize = 256 << 10;

pub(crate) fn encode(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    buf.clear();
    buf.reserve(HEADER_LEN + payload.len());
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf[8..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub crc: u32,
    pub len: u32,
    pub seq: u64,
}

pub(crate) fn parse_header(b: &[u8]) -> Option<Header> {
    let b: &[u8; HEADER_LEN] = b.get(..HEADER_LEN)?.try_into().ok()?;
    if b[0..4] != MAGIC {
        return None;
    }
    Some(Header {
        crc: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        seq: u64::from_le_bytes([b[12], b[13], b[14], b[15], b[16], b[17], b[18], b[19]]),
    })
}

/// Validates a whole record held in memory (header at `b[0]`) and returns its payload.
pub(crate) fn decode(b: &[u8]) -> Option<(u64, &[u8])> {
    let h = parse_header(b)?;
    let payload = b.get(HEADER_LEN..HEADER_LEN.checked_add(h.len as usize)?)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&b[8..HEADER_LEN]);
    hasher.update(payload);
    (hasher.finalize() == h.crc).then_some((h.seq, payload))
}

/// Dense seq → offset map for one segment. Within a segment sequence numbers only grow and
/// gaps are rare (corruption), so a `Vec<u32>` indexed by `seq - first` costs 4 bytes per record.
#[derive(Debug, Default, Clone)]
pub(crate) struct SegIndex {
    first: u64,
    offsets: Vec<u32>,
    present: usize,
}

impl SegIndex {
    pub fn push(&mut self, seq: u64, off: u32) {
        if self.offsets.is_empty() {
            self.first = seq;
        } else {
            let next = self.first + self.offsets.len() as u64;
            // Callers guarantee strictly increasing seqs with bounded gaps.
            for _ in next..seq {
                self.offsets.push(MISSING);
            }
        }
        self.offsets.push(off);
        self.present += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.present == 0
    }

    pub fn last_seq(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.first + self.offsets.len() as u64 - 1)
    }

    /// Present records with seq > `seq`.
    pub fn count_above(&self, seq: u64) -> u64 {
        if self.offsets.is_empty() {
            return 0;
        }
        if seq < self.first {
            return self.present as u64;
        }
        let from = (seq - self.first + 1).min(self.offsets.len() as u64) as usize;
        self.offsets[from..].iter().filter(|&&o| o != MISSING).count() as u64
    }

    /// Present records with seq >= `seq`, in order, as (seq, offset).
    pub fn iter_from(&self, seq: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let start = if self.offsets.is_empty() || seq <= self.first {
            0
        } else {
            (seq - self.first).min(self.offsets.len() as u64) as usize
        };
        let first = self.first;
        self.offsets[start..]
            .iter()
            .enumerate()
            .filter(|(_, o)| **o != MISSING)
            .map(move |(i, o)| (first + (start + i) as u64, *o as u64))
    }

    /// Present records in reverse order, as (seq, offset).
    pub fn iter_rev(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let first = self.first;
        self.offsets
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, o)| **o != MISSING)
            .map(move |(i, o)| (first + i as u64, *o as u64))
    }

    /// Offset of the first present record after `seq`, i.e. where the record `seq` ends
    /// when nothing (or only garbage) lies between them.
    pub fn next_offset_after(&self, seq: u64) -> Option<u64> {
        let i = seq.checked_sub(self.first)? as usize + 1;
        self.offsets.get(i..)?.iter().find(|&&o| o != MISSING).map(|&o| o as u64)
    }
}

/// Buffered positional reader so that scanning costs one syscall per window, not per record.
struct Window<'a> {
    file: &'a File,
    file_len: u64,
    buf: Vec<u8>,
    start: u64,
}

impl<'a> Window<'a> {
    fn new(file: &'a File, file_len: u64) -> Self {
        Self { file, file_len, buf: Vec::new(), start: 0 }
    }

    /// Up to `n` (≤ WINDOW) bytes at `off`; shorter only at end of file.
    fn get(&mut self, off: u64, n: usize) -> io::Result<&[u8]> {
        debug_assert!(n <= WINDOW);
        let want_end = off.saturating_add(n as u64).min(self.file_len);
        let have_end = self.start + self.buf.len() as u64;
        if off < self.start || want_end > have_end {
            let len = (self.file_len.saturating_sub(off)).min(WINDOW as u64) as usize;
            self.buf.resize(len, 0);
            let mut filled = 0;
            while filled < len {
                match self.file.read_at(&mut self.buf[filled..], off + filled as u64) {
                    Ok(0) => break,
                    Ok(k) => filled += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if filled < len {
                // The file is shorter than its metadata claimed; treat the rest as absent.
                self.buf.truncate(filled);
                self.file_len = off + filled as u64;
            }
            self.start = off;
        }
        let rel = (off - self.start) as usize;
        let end = (rel + n).min(self.buf.len());
        Ok(&self.buf[rel.min(end)..end])
    }

    fn find_magic(&mut self, from: u64) -> io::Result<Option<u64>> {
        let mut pos = from;
        while pos.saturating_add(MAGIC.len() as u64) <= self.file_len {
            let chunk = self.get(pos, WINDOW)?;
            if chunk.len() < MAGIC.len() {
                break;
            }
            if let Some(i) = chunk.windows(MAGIC.len()).position(|w| w == MAGIC) {
                return Ok(Some(pos + i as u64));
            }
            pos += (chunk.len() - (MAGIC.len() - 1)) as u64;
        }
        Ok(None)
    }

    /// Checks the record at `off` end to end; returns its header if intact.
    fn check_record(&mut self, off: u64) -> io::Result<Option<Header>> {
        let Some(h) = parse_header(self.get(off, HEADER_LEN)?) else {
            return Ok(None);
        };
        let payload_start = off + HEADER_LEN as u64;
        if payload_start + h.len as u64 > self.file_len {
            return Ok(None);
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&self.get(off, HEADER_LEN)?[8..]);
        let mut pos = payload_start;
        let end = payload_start + h.len as u64;
        while pos < end {
            let n = (end - pos).min(WINDOW as u64) as usize;
            let chunk = self.get(pos, n)?;
            if chunk.is_empty() {
                return Ok(None);
            }
            hasher.update(chunk);
            pos += chunk.len() as u64;
        }
        Ok((hasher.finalize() == h.crc).then_some(h))
    }
}

/// What recovery learned about one segment file.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub index: SegIndex,
    /// End of the last intact record; anything after it is a torn or corrupt tail.
    pub valid_end: u64,
    pub file_len: u64,
    /// Damaged regions followed by an intact record, as (start, end, records lost).
    pub bad_regions: Vec<(u64, u64, u64)>,
}

impl Scan {
    pub fn torn_tail(&self) -> bool {
        self.valid_end < self.file_len
    }
}

/// Scans a segment whose records must have seqs in `[base, upper)`.
///
/// Besides the checksum, a record is only accepted if its seq is plausible: strictly increasing,
/// inside the segment's range, and not further from `base` than the number of minimum-size
/// records that fit before its offset. That rejects stale leftovers of failed appends (whose
/// seq was later reassigned in a newer segment) and keeps a checksum false positive from
/// blowing up the dense index. Pad records (seq 0) cover damage already counted by an earlier
/// open and are skipped silently.
pub(crate) fn scan(file: &File, base: u64, upper: u64) -> io::Result<Scan> {
    let file_len = file.metadata()?.len();
    let mut w = Window::new(file, file_len);
    let mut out = Scan { file_len, ..Scan::default() };
    let mut off = 0u64;
    let mut expected = base;
    let mut bad_start: Option<u64> = None;
    loop {
        if off + HEADER_LEN as u64 > w.file_len {
            break;
        }
        let accepted = match w.check_record(off)? {
            Some(h) if h.seq == PAD_SEQ => Some(h),
            Some(h)
                if h.seq >= expected
                    && h.seq < upper
                    && (h.seq - base).saturating_mul(HEADER_LEN as u64) <= off
                    && off < MISSING as u64 =>
            {
                Some(h)
            }
            _ => None,
        };
        match accepted {
            Some(h) => {
                if let Some(start) = bad_start.take() {
                    let lost = if h.seq == PAD_SEQ { 1 } else { (h.seq - expected).max(1) };
                    out.bad_regions.push((start, off, lost));
                }
                if h.seq != PAD_SEQ {
                    out.index.push(h.seq, off as u32);
                    expected = h.seq + 1;
                }
                off += HEADER_LEN as u64 + h.len as u64;
                out.valid_end = off;
            }
            None => {
                bad_start.get_or_insert(off);
                match w.find_magic(off + 1)? {
                    Some(next) => off = next,
                    None => break,
                }
            }
        }
    }
    Ok(out)
}

/// Seq of pad records, which overwrite damaged regions in place; real seqs start at 1.
pub(crate) const PAD_SEQ: u64 = 0;

/// Turns the damaged region `[start, end)` into one pad record so later opens skip it without
/// counting it again. Only the header is written; the checksum covers the garbage as found.
pub(crate) fn pad_region(file: &File, start: u64, end: u64) -> io::Result<bool> {
    let len = end.saturating_sub(start);
    if len < HEADER_LEN as u64 || len - HEADER_LEN as u64 > u32::MAX as u64 {
        return Ok(false);
    }
    let payload_len = (len - HEADER_LEN as u64) as u32;
    let mut hdr = [0u8; HEADER_LEN];
    hdr[0..4].copy_from_slice(&MAGIC);
    hdr[8..12].copy_from_slice(&payload_len.to_le_bytes());
    hdr[12..20].copy_from_slice(&PAD_SEQ.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&hdr[8..]);
    let mut w = Window::new(file, end);
    let mut pos = start + HEADER_LEN as u64;
    while pos < end {
        let chunk = w.get(pos, (end - pos).min(WINDOW as u64) as usize)?;
        if chunk.is_empty() {
            return Ok(false);
        }
        hasher.update(chunk);
        pos += chunk.len() as u64;
    }
    hdr[4..8].copy_from_slice(&hasher.finalize().to_le_bytes());
    file.write_all_at(&hdr, start)?;
    Ok(true)
}

/// Reads `len` bytes at `off`, failing on a short file.
pub(crate) fn read_exact_at(file: &File, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, off)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_record_roundtrip_and_damage() {
        let mut buf = Vec::new();
        encode(&mut buf, 42, b"hello");
        assert_eq!(decode(&buf), Some((42, &b"hello"[..])));
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x10;
            assert_eq!(decode(&b), None, "flip at {i} undetected");
        }
        assert_eq!(decode(&buf[..buf.len() - 1]), None);
        assert_eq!(decode(&[]), None);
    }

    #[test]
    fn spool_index_gaps() {
        let mut ix = SegIndex::default();
        ix.push(10, 0);
        ix.push(11, 30);
        ix.push(14, 90);
        assert_eq!(ix.last_seq(), Some(14));
        assert_eq!(ix.count_above(0), 3);
        assert_eq!(ix.count_above(10), 2);
        assert_eq!(ix.count_above(11), 1);
        assert_eq!(ix.count_above(14), 0);
        assert_eq!(ix.count_above(99), 0);
        let v: Vec<_> = ix.iter_from(12).collect();
        assert_eq!(v, vec![(14, 90)]);
        assert_eq!(ix.next_offset_after(11), Some(90));
        assert_eq!(ix.next_offset_after(14), None);
        let r: Vec<_> = ix.iter_rev().map(|(s, _)| s).collect();
        assert_eq!(r, vec![14, 11, 10]);
    }
}
