//! Crash-safe disk spool: every telemetry batch is appended here before it is sent and deleted
//! only once the controller has acked it.
//!
//! Layout of the spool directory:
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: segment files named by the first seq assigned in them
//!   (zero-padded so lexical order is seq order). Records: see [`segment`].
//! - `state`: checkpoint of the acked watermark, the next seq and the counters; atomically
//!   replaced, checksummed, and optional (recovery falls back to the segments).
//! - `spool.id`: the random id of this spool incarnation.
//! - `lock`: held with `flock` so two agents cannot write the same spool.
//!
//! Invariants that recovery relies on:
//! - every seq in segment `b` lies in `[b, next segment's base)`, and the last segment's base is
//!   never above `next_seq`, so seqs stay monotonic even when all acked records are gone;
//! - the last segment is the only one appended to and is never deleted by ack or size cap.

mod segment;
mod state;
#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use segment::{HEADER_LEN, SegIndex};
use state::State;

#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub fsync: bool,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        Self { max_bytes: 256 << 20, segment_bytes: 8 << 20, fsync: true }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    pub bytes: u64,
    pub batches: u64,
    pub acked_seq: u64,
    pub next_seq: u64,
    pub dropped_batches_total: u64,
    pub corrupt_records_total: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "spool payload of {len} bytes is too large: with {HEADER_LEN} bytes of framing it exceeds the spool cap of {max} bytes"
    )]
    TooLarge { len: usize, max: u64 },
    #[error("spool directory {path} is locked by another process")]
    Locked { path: String },
    #[error("spool sequence numbers exhausted in {path}")]
    SeqExhausted { path: String },
}

impl SpoolError {
    /// Disk full is worth telling apart: it is transient and the spool recovers by itself once
    /// space frees up.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, SpoolError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.display().to_string(), source }
}

const SEG_SUFFIX: &str = ".seg";
const LOCK_FILE: &str = "lock";
/// Record offsets are indexed as u32; rotation keeps every record start below this.
const MAX_SEGMENT_BYTES: u64 = 1 << 30;

fn seg_name(base: u64) -> String {
    format!("{base:020}{SEG_SUFFIX}")
}

fn parse_seg_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEG_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[derive(Debug)]
struct Segment {
    base: u64,
    path: PathBuf,
    index: SegIndex,
    /// Bytes of intact data; appends go here.
    end: u64,
}

#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    /// Write this many bytes of the record, then fail with ENOSPC.
    ShortWrite(usize),
    /// Like `ShortWrite`, and the truncate-back also "fails" (is skipped).
    ShortWriteNoTruncate(usize),
    /// Write the whole record, then fail the fdatasync with EIO.
    SyncFail,
}

pub struct Spool {
    dir: PathBuf,
    opts: SpoolOptions,
    id: String,
    /// Ordered by base; never empty; the back is the active segment.
    segments: VecDeque<Segment>,
    active: File,
    /// A write or sync failed and the file could not be proven clean: the next append starts a
    /// fresh file descriptor/segment rather than trusting this one (a failed fsync may have
    /// dropped dirty pages that a later fsync would not report).
    poisoned: bool,
    acked: u64,
    next_seq: u64,
    bytes: u64,
    dropped_total: u64,
    /// Cells because reads (`&self`) can discover bit rot too.
    corrupt_total: Cell<u64>,
    /// Seqs found unreadable after open, so repeated reads count each only once.
    read_bad: RefCell<Vec<u64>>,
    scratch: Vec<u8>,
    _lock: File,
    #[cfg(test)]
    pub(crate) fault: Option<Fault>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("dir", &self.dir).field("id", &self.id).field("stats", &self.stats()).finish()
    }
}

impl Spool {
    pub fn open(dir: &Path, opts: SpoolOptions) -> Result<Self, SpoolError> {
        let mut opts = opts;
        opts.segment_bytes = opts.segment_bytes.clamp(1, MAX_SEGMENT_BYTES);
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = acquire_lock(dir)?;
        let id = state::load_or_create_id(dir).map_err(io_err(&dir.join(state::ID_FILE)))?;
        let saved = State::load(dir);
        let found = list_segments(dir)?;

        let mut segments = VecDeque::with_capacity(found.len());
        let mut last_file = None;
        let mut corrupt_found = 0u64;
        for (i, (base, path)) in found.iter().enumerate() {
            let upper = found.get(i + 1).map_or(u64::MAX, |n| n.0);
            let is_last = i + 1 == found.len();
            let file = OpenOptions::new().read(true).write(true).open(path).map_err(io_err(path))?;
            let scan = segment::scan(&file, *base, upper).map_err(io_err(path))?;
            corrupt_found += repair(&file, path, &scan).map_err(io_err(path))?;
            if scan.index.is_empty() && !is_last {
                fs::remove_file(path).map_err(io_err(path))?;
                continue;
            }
            segments.push_back(Segment { base: *base, path: path.clone(), index: scan.index, end: scan.valid_end });
            if is_last {
                last_file = Some(file);
            }
        }

        let last_valid = segments.iter().rev().find_map(|s| s.index.last_seq()).unwrap_or(0);
        let mut next_seq = last_valid.saturating_add(1);
        if let Some(s) = segments.back() {
            next_seq = next_seq.max(s.base);
        }
        if let Some(st) = saved {
            next_seq = next_seq.max(st.next_seq).max(st.acked.saturating_add(1));
        }
        let acked = saved.map_or(0, |s| s.acked).min(next_seq - 1);

        // Appending to the last segment is only valid if it continues exactly at next_seq;
        // otherwise (state is ahead, e.g. segments were lost) start a segment named after it.
        let reuse = segments.back().is_some_and(|s| s.index.last_seq().map_or(s.base, |l| l + 1) == next_seq);
        let active = match (reuse, last_file) {
            (true, Some(f)) => f,
            _ => {
                if let Some(s) = segments.back()
                    && s.index.is_empty()
                {
                    fs::remove_file(&s.path).map_err(io_err(&s.path))?;
                    segments.pop_back();
                }
                let (seg, file) = create_segment(dir, next_seq)?;
                segments.push_back(seg);
                file
            }
        };

        let bytes = segments.iter().map(|s| s.end).sum();
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            opts,
            id,
            segments,
            active,
            poisoned: false,
            acked,
            next_seq,
            bytes,
            dropped_total: saved.map_or(0, |s| s.dropped_total),
            corrupt_total: Cell::new(saved.map_or(0, |s| s.corrupt_total).saturating_add(corrupt_found)),
            read_bad: RefCell::new(Vec::new()),
            scratch: Vec::new(),
            _lock: lock,
            #[cfg(test)]
            fault: None,
        };
        spool.delete_acked_segments()?;
        if let Err(e) = spool.state().store(dir, true) {
            // The state file only speeds up and refines recovery; the segments are the truth.
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write spool state file");
        }
        if corrupt_found > 0 {
            tracing::warn!(dir = %dir.display(), corrupt_found, "spool recovered from corrupt or torn records");
        }
        Ok(spool)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn append(&mut self, payload: &[u8]) -> Result<u64, SpoolError> {
        let rec_len = (HEADER_LEN as u64).saturating_add(payload.len() as u64);
        if payload.len() > u32::MAX as usize || rec_len > self.opts.max_bytes {
            return Err(SpoolError::TooLarge { len: payload.len(), max: self.opts.max_bytes });
        }
        if self.next_seq == u64::MAX {
            return Err(SpoolError::SeqExhausted { path: self.dir.display().to_string() });
        }
        let active_end = self.active_seg().end;
        if self.poisoned || (active_end > 0 && active_end + rec_len > self.opts.segment_bytes) {
            self.rotate()?;
        }
        self.make_room(rec_len)?;

        let seq = self.next_seq;
        let off = self.active_seg().end;
        segment::encode(&mut self.scratch, seq, payload);
        if let Err((e, synced)) = self.write_scratch(off) {
            self.undo_write(off, synced);
            return Err(io_err(&self.active_seg().path)(e));
        }
        let seg = self.active_seg_mut();
        // Rotation keeps `off` below MAX_SEGMENT_BYTES, so it fits the u32 index.
        seg.index.push(seq, off as u32);
        seg.end = off + rec_len;
        self.bytes += rec_len;
        self.next_seq = seq + 1;
        Ok(seq)
    }

    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        let seq = seq.min(self.next_seq - 1);
        if seq <= self.acked {
            return Ok(());
        }
        // The watermark applies in memory even if persisting it fails: a lost watermark only
        // causes a harmless replay.
        self.acked = seq;
        self.read_bad.get_mut().retain(|&s| s > seq);
        // Checkpoint before deleting so the state never lags behind what is gone from disk.
        // No fsync: the active segment alone keeps seqs monotonic, and losing the watermark
        // only replays batches the controller dedups.
        let stored = self.state().store(&self.dir, false);
        self.delete_acked_segments()?;
        stored.map_err(io_err(&self.dir.join(state::STATE_FILE)))
    }

    pub fn read_after(
        &self,
        after_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        let from = after_seq.max(self.acked).saturating_add(1);
        let mut out = Vec::new();
        if max_records == 0 || from >= self.next_seq {
            return Ok(out);
        }
        let start = self.segments.partition_point(|s| s.base <= from).saturating_sub(1);
        let mut count = 0usize;
        let mut bytes = 0usize;
        for (i, seg) in self.segments.iter().enumerate().skip(start) {
            let mut wanted = Vec::new();
            let mut full = false;
            for (seq, off) in seg.index.iter_from(from) {
                let end = seg.index.next_offset_after(seq).unwrap_or(seg.end);
                // Exact unless a pad sits between the two records; good enough for a budget.
                let est = end.saturating_sub(off + HEADER_LEN as u64) as usize;
                if count >= max_records || (count > 0 && bytes.saturating_add(est) > max_bytes) {
                    full = true;
                    break;
                }
                wanted.push((seq, off, end));
                count += 1;
                bytes = bytes.saturating_add(est);
            }
            if let (Some(first), Some(last)) = (wanted.first(), wanted.last()) {
                let span_start = first.1;
                let buf = self.read_span(i, span_start, last.2)?;
                for &(seq, off, _) in &wanted {
                    let rel = (off - span_start) as usize;
                    match buf.get(rel..).and_then(segment::decode) {
                        Some((s, payload)) if s == seq => out.push((seq, payload.to_vec())),
                        _ => self.note_bad(seq, &seg.path),
                    }
                }
            }
            if full {
                break;
            }
        }
        Ok(out)
    }

    pub fn last_record(&self) -> Result<Option<(u64, Vec<u8>)>, SpoolError> {
        for (i, seg) in self.segments.iter().enumerate().rev() {
            for (seq, off) in seg.index.iter_rev() {
                let end = seg.index.next_offset_after(seq).unwrap_or(seg.end);
                let buf = self.read_span(i, off, end)?;
                match segment::decode(&buf) {
                    Some((s, payload)) if s == seq => return Ok(Some((seq, payload.to_vec()))),
                    _ => self.note_bad(seq, &seg.path),
                }
            }
        }
        Ok(None)
    }

    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            bytes: self.bytes,
            batches: self.segments.iter().map(|s| s.index.count_above(self.acked)).sum(),
            acked_seq: self.acked,
            next_seq: self.next_seq,
            dropped_batches_total: self.dropped_total,
            corrupt_records_total: self.corrupt_total.get(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn active_seg(&self) -> &Segment {
        // `segments` is never empty after open; this only guards the invariant without panicking.
        self.segments.back().unwrap_or_else(|| unreachable!("spool has no active segment"))
    }

    fn active_seg_mut(&mut self) -> &mut Segment {
        self.segments.back_mut().unwrap_or_else(|| unreachable!("spool has no active segment"))
    }

    fn state(&self) -> State {
        State {
            acked: self.acked,
            next_seq: self.next_seq,
            dropped_total: self.dropped_total,
            corrupt_total: self.corrupt_total.get(),
        }
    }

    /// Writes `scratch` at `off`; on error also says whether the data may be partially durable
    /// (fsync attempted), which decides whether the fd can still be trusted.
    fn write_scratch(&mut self, off: u64) -> Result<(), (io::Error, bool)> {
        #[cfg(test)]
        if let Some(fault) = self.fault.take() {
            let enospc = || io::Error::from_raw_os_error(libc::ENOSPC);
            match fault {
                Fault::ShortWrite(n) | Fault::ShortWriteNoTruncate(n) => {
                    let n = n.min(self.scratch.len());
                    self.active.write_all_at(&self.scratch[..n], off).map_err(|e| (e, false))?;
                    if matches!(fault, Fault::ShortWriteNoTruncate(_)) {
                        self.fault = Some(fault);
                    }
                    return Err((enospc(), false));
                }
                Fault::SyncFail => {
                    self.active.write_all_at(&self.scratch, off).map_err(|e| (e, false))?;
                    return Err((io::Error::from_raw_os_error(libc::EIO), true));
                }
            }
        }
        self.active.write_all_at(&self.scratch, off).map_err(|e| (e, false))?;
        if self.opts.fsync {
            self.active.sync_data().map_err(|e| (e, true))?;
        }
        Ok(())
    }

    /// Cuts a failed append back off so the file ends with an intact record again.
    fn undo_write(&mut self, off: u64, synced: bool) {
        #[cfg(test)]
        let skip = matches!(self.fault.take(), Some(Fault::ShortWriteNoTruncate(_)));
        #[cfg(not(test))]
        let skip = false;
        let truncated = if skip { Err(io::Error::other("injected")) } else { self.active.set_len(off) };
        if let Err(e) = &truncated {
            // Leftover bytes past `end` are harmless: the next append overwrites them or, on
            // reopen, recovery treats them as a torn tail. Their seq is reused in a new segment,
            // which the per-segment seq range makes recovery reject in the old one.
            tracing::warn!(path = %self.active_seg().path.display(), error = %e, "cannot truncate failed spool append");
        }
        if synced || truncated.is_err() {
            self.poisoned = true;
        }
    }

    /// Starts a new active segment at `next_seq`, or, if the active one holds no record,
    /// restarts it in place (its name already is `next_seq`).
    fn rotate(&mut self) -> Result<(), SpoolError> {
        if self.active_seg().index.is_empty() {
            let path = self.active_seg().path.clone();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err(&path))?;
            file.set_len(0).map_err(io_err(&path))?;
            self.bytes -= self.active_seg().end;
            self.active_seg_mut().end = 0;
            self.active = file;
            self.poisoned = false;
            return Ok(());
        }
        let (seg, file) = create_segment(&self.dir, self.next_seq)?;
        self.segments.push_back(seg);
        self.active = file;
        self.poisoned = false;
        if let Err(e) = self.delete_acked_segments() {
            tracing::warn!(error = %e, "cannot delete acked spool segment after rotation");
        }
        Ok(())
    }

    /// Drop-oldest until a record of `rec_len` bytes fits under `max_bytes`.
    fn make_room(&mut self, rec_len: u64) -> Result<(), SpoolError> {
        while self.bytes + rec_len > self.opts.max_bytes {
            if self.segments.len() > 1 {
                self.drop_oldest()?;
            } else if self.active_seg().end > 0 {
                self.rotate()?;
            } else {
                // Unreachable while rec_len <= max_bytes; never loop forever on a bug.
                break;
            }
        }
        Ok(())
    }

    fn drop_oldest(&mut self) -> Result<(), SpoolError> {
        let Some(seg) = self.segments.front() else {
            return Ok(());
        };
        let lost = seg.index.count_above(self.acked);
        let path = seg.path.clone();
        let end = seg.end;
        // Count before deleting so a crash in between cannot lose the count.
        self.dropped_total += lost;
        if let Err(e) = self.state().store(&self.dir, false) {
            tracing::warn!(error = %e, "cannot write spool state file");
        }
        if let Err(e) = remove_if_exists(&path) {
            self.dropped_total -= lost;
            return Err(io_err(&path)(e));
        }
        if lost > 0 {
            tracing::warn!(path = %path.display(), lost, "spool full: dropped oldest unacked batches");
        }
        self.bytes -= end;
        self.segments.pop_front();
        Ok(())
    }

    /// Deletes non-active segments whose records are all acked.
    fn delete_acked_segments(&mut self) -> Result<(), SpoolError> {
        while self.segments.len() > 1 {
            let Some(seg) = self.segments.front() else {
                break;
            };
            if seg.index.last_seq().is_some_and(|l| l > self.acked) {
                break;
            }
            remove_if_exists(&seg.path).map_err(io_err(&seg.path))?;
            self.bytes -= seg.end;
            self.segments.pop_front();
        }
        Ok(())
    }

    /// Reads `[start, end)` of segment `i`.
    fn read_span(&self, i: usize, start: u64, end: u64) -> Result<Vec<u8>, SpoolError> {
        let Some(seg) = self.segments.get(i) else {
            return Ok(Vec::new());
        };
        let len = end.saturating_sub(start) as usize;
        let res = if i + 1 == self.segments.len() {
            segment::read_exact_at(&self.active, start, len)
        } else {
            File::open(&seg.path).and_then(|f| segment::read_exact_at(&f, start, len))
        };
        res.map_err(io_err(&seg.path))
    }

    fn note_bad(&self, seq: u64, path: &Path) {
        let mut bad = self.read_bad.borrow_mut();
        if !bad.contains(&seq) {
            bad.push(seq);
            self.corrupt_total.set(self.corrupt_total.get() + 1);
            tracing::warn!(path = %path.display(), seq, "spool record damaged since open; skipping it");
        }
    }
}

/// How long `open` waits for the lock before saying another agent holds it. A previous agent
/// still shutting down, or a process that inherited the descriptor for the instant between fork
/// and exec, releases it within milliseconds; a second live agent never does.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn acquire_lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err(&path))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked { path: dir.display().to_string() }),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
    }
}

/// Segment files sorted by base; also clears temp files left by an interrupted atomic write.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if name.ends_with(state::TMP_SUFFIX) {
            let _ = fs::remove_file(&path);
            continue;
        }
        let Some(base) = parse_seg_name(name) else {
            continue;
        };
        if !entry.file_type().map_err(io_err(&path))?.is_file() {
            tracing::warn!(path = %path.display(), "ignoring non-file in spool directory");
            continue;
        }
        out.push((base, path));
    }
    out.sort_unstable_by_key(|e| e.0);
    Ok(out)
}

/// Fixes what a scan found: truncates a torn tail and pads damaged regions in the middle so
/// the next open neither rereads nor recounts them. Returns the number of records lost.
fn repair(file: &File, path: &Path, scan: &segment::Scan) -> io::Result<u64> {
    let mut lost = 0;
    let mut dirty = false;
    for &(start, end, n) in &scan.bad_regions {
        lost += n;
        tracing::warn!(path = %path.display(), start, end, lost = n, "spool segment damaged mid-file; skipping the damaged region");
        match segment::pad_region(file, start, end) {
            Ok(true) => dirty = true,
            // Too small to pad (or unreadable): it will be skipped, and counted, again next open.
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot pad damaged spool region")
            }
        }
    }
    if scan.torn_tail() {
        lost += 1;
        tracing::warn!(
            path = %path.display(),
            valid_end = scan.valid_end,
            file_len = scan.file_len,
            "spool segment has a torn or corrupt tail; truncating it"
        );
        file.set_len(scan.valid_end)?;
        dirty = true;
    }
    if dirty {
        file.sync_data()?;
    }
    Ok(lost)
}

/// Creates an empty segment durably: its name carries the next seq, which must survive even
/// if every record before it is acked and deleted.
fn create_segment(dir: &Path, base: u64) -> Result<(Segment, File), SpoolError> {
    let path = dir.join(seg_name(base));
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(io_err(&path))?;
    if let Err(e) = state::sync_dir(dir) {
        let _ = fs::remove_file(&path);
        return Err(io_err(dir)(e));
    }
    Ok((Segment { base, path, index: SegIndex::default(), end: 0 }, file))
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
