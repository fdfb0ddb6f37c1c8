//! One tailed file, identified by (dev, inode) and read through its own open fd, so that renames,
//! deletes and re-creations of its path never make us lose our place in it.

use std::fs::{File, Metadata};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use medic_proto::v1::LogRecord;

use super::record::{Limits, Pending, accept_line};

/// Read size; also the only per-file buffer besides the current line's first `max_line_bytes`.
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;

/// Bytes remembered just before the read position. If they change, the file was truncated and
/// rewritten past our offset between two polls (copytruncate plus a burst of writes), which the
/// size check alone cannot see.
const SIG_BYTES: usize = 16;

/// How long after an entry a non-timestamped line still counts as its continuation. Writers emit
/// an entry and its stack trace together; a stray line much later belongs to something else.
const CARRY_FOR: Duration = Duration::from_secs(5);

pub(crate) type FileId = (u64, u64);

pub(crate) fn file_id(meta: &Metadata) -> FileId {
    (meta.dev(), meta.ino())
}

/// Opens `path` and identifies it by the fd, not by a separate stat of the path, so a rename
/// between the two can't pair one file's identity with another's content.
pub(crate) fn open(path: &Path) -> io::Result<(File, Metadata)> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok((file, meta))
}

/// Where to start in a file when only new lines are wanted: after the last '\n' near the end, so
/// a line being written right now is read whole instead of as a fragment.
pub(crate) fn end_offset(file: &File, size: u64) -> u64 {
    let len = size.min(CHUNK_BYTES as u64);
    let mut buf = vec![0u8; len as usize];
    match file.read_exact_at(&mut buf, size - len) {
        Ok(()) => match buf.iter().rposition(|&b| b == b'\n') {
            Some(i) => size - len + i as u64 + 1,
            // No newline near the end: either one giant line or a file with a single partial
            // line; starting at the end is the only bounded choice.
            None if len == size => 0,
            None => size,
        },
        Err(_) => size,
    }
}

pub(crate) enum Stop {
    /// Read to EOF (or gave up on an I/O error until the next poll).
    Drained,
    /// The poll's record or byte budget is used up; more may be waiting.
    Full,
}

pub(crate) struct PollCtx<'a> {
    pub out: Vec<LogRecord>,
    pub limits: Limits,
    pub bytes_left: u64,
    pub now: Instant,
    pub now_ms: i64,
    pub partial_flush_after: Duration,
    pub rotate_wait: Duration,
    pub chunk: &'a mut [u8],
}

pub(crate) struct FileTail {
    /// The path the file was found at; reported as the records' source and saved in the cursor.
    pub source: String,
    pub id: FileId,
    file: Option<File>,
    /// Next byte to read.
    read_pos: u64,
    /// Just after the last line handed out: the cursor offset. Bytes between `commit` and
    /// `read_pos` are the current unfinished line.
    pub commit: u64,
    /// First `max_line_bytes` of the unfinished line.
    line: Vec<u8>,
    /// The unfinished line is longer than `max_line_bytes`; its excess is not kept.
    overflow: bool,
    /// The head of the current line was already flushed (idle partial line that was too long):
    /// skip up to its newline.
    discard: bool,
    sig: Vec<u8>,
    sig_end: u64,
    last_size: u64,
    last_growth: Instant,
    /// No longer at any path matching the globs (renamed away or deleted): read to EOF, then
    /// close once the writer has left it alone for `rotate_wait`.
    pub rotated: bool,
    pub closed: bool,
    io_warned: bool,
    /// The entry the last poll ended with, for continuation lines that arrive a poll late.
    carry: Option<(LogRecord, Instant)>,
}

impl FileTail {
    pub fn new(source: String, file: File, id: FileId, offset: u64, now: Instant) -> Self {
        Self {
            source,
            id,
            file: Some(file),
            read_pos: offset,
            commit: offset,
            line: Vec::new(),
            overflow: false,
            discard: false,
            sig: Vec::new(),
            sig_end: 0,
            last_size: offset,
            last_growth: now,
            rotated: false,
            closed: false,
            io_warned: false,
            carry: None,
        }
    }

    #[cfg(test)]
    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }

    pub fn poll(&mut self, ctx: &mut PollCtx<'_>) -> Stop {
        if ctx.out.len() >= ctx.limits.max_records {
            return Stop::Full;
        }
        let Some(file) = self.file.as_ref() else {
            return Stop::Drained;
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                self.warn_io("stat", &e);
                return Stop::Drained;
            }
        };
        if meta.nlink() == 0 {
            self.rotated = true;
        }
        let mut pending = None;
        let stop = self.poll_inner(ctx, &mut pending, meta.len());
        if let Some(p) = pending {
            self.carry = p.carry().map(|entry| (entry, ctx.now));
            ctx.out.push(p.into_record());
        }
        stop
    }

    fn poll_inner(&mut self, ctx: &mut PollCtx<'_>, pending: &mut Option<Pending>, size: u64) -> Stop {
        if size < self.read_pos || (size > self.read_pos && !self.sig_matches()) {
            // copytruncate (or an editor rewriting the file): whatever follows the truncation is
            // new content starting at 0. The unfinished line we hold existed before the
            // truncation and would otherwise vanish, so it goes out as-is first.
            if !self.flush_partial(ctx, pending) {
                return Stop::Full;
            }
            tracing::info!(path = %self.source, old_offset = self.read_pos, size, "log file truncated; reading from the start");
            self.restart_at_zero();
        }
        let stop = self.read_available(ctx, pending);
        let seen = size.max(self.read_pos);
        if seen != self.last_size {
            self.last_size = seen;
            self.last_growth = ctx.now;
        }
        if let Stop::Full = stop {
            return Stop::Full;
        }
        let idle = ctx.now.saturating_duration_since(self.last_growth);
        let gone = self.rotated && idle >= ctx.rotate_wait;
        if self.read_pos > self.commit && (idle >= ctx.partial_flush_after || gone) && !self.flush_partial(ctx, pending)
        {
            return Stop::Full;
        }
        if gone {
            // The writer had `rotate_wait` to finish with the old fd; keeping it longer would
            // leak fds on every rotation.
            tracing::debug!(path = %self.source, offset = self.commit, "rotated log file fully read; closing");
            self.file = None;
            self.closed = true;
        }
        Stop::Drained
    }

    fn restart_at_zero(&mut self) {
        self.read_pos = 0;
        self.commit = 0;
        self.line.clear();
        self.overflow = false;
        self.discard = false;
        self.sig.clear();
        self.sig_end = 0;
        self.carry = None;
    }

    fn live_carry(&self, now: Instant) -> Option<&LogRecord> {
        match &self.carry {
            Some((entry, at)) if now.saturating_duration_since(*at) < CARRY_FOR => Some(entry),
            _ => None,
        }
    }

    /// Hands out the unfinished line as it is. False (nothing changed) when the record budget is
    /// used up.
    fn flush_partial(&mut self, ctx: &mut PollCtx<'_>, pending: &mut Option<Pending>) -> bool {
        if self.read_pos <= self.commit {
            return true;
        }
        if !accept_line(
            &mut ctx.out,
            pending,
            self.live_carry(ctx.now),
            &ctx.limits,
            &self.source,
            &self.line,
            self.overflow,
            ctx.now_ms,
        ) {
            return false;
        }
        self.discard = self.overflow;
        self.line.clear();
        self.overflow = false;
        self.commit = self.read_pos;
        true
    }

    fn read_available(&mut self, ctx: &mut PollCtx<'_>, pending: &mut Option<Pending>) -> Stop {
        let max_line = ctx.limits.max_line_bytes;
        loop {
            let Some(file) = self.file.as_ref() else {
                return Stop::Drained;
            };
            if ctx.bytes_left == 0 {
                return Stop::Full;
            }
            let want = ctx.chunk.len().min(usize::try_from(ctx.bytes_left).unwrap_or(usize::MAX));
            let n = match file.read_at(&mut ctx.chunk[..want], self.read_pos) {
                Ok(0) => return Stop::Drained,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.warn_io("read", &e);
                    return Stop::Drained;
                }
            };
            self.io_warned = false;
            ctx.bytes_left = ctx.bytes_left.saturating_sub(n as u64);
            let data = &ctx.chunk[..n];
            let base = self.read_pos;
            let mut i = 0;
            while i < n {
                let Some(j) = data[i..].iter().position(|&b| b == b'\n') else {
                    // Unfinished line: keep only what could be handed out.
                    if self.discard {
                        self.commit = base + n as u64;
                    } else {
                        append_capped(&mut self.line, &mut self.overflow, &data[i..], max_line);
                    }
                    break;
                };
                let seg = &data[i..i + j];
                let end = base + (i + j + 1) as u64;
                i += j + 1;
                if self.discard {
                    self.discard = false;
                    self.commit = end;
                    continue;
                }
                let accepted = if self.line.is_empty() && !self.overflow {
                    // Common case, the whole line is in this chunk: no copy.
                    let keep = seg.len().min(max_line);
                    accept_line(
                        &mut ctx.out,
                        pending,
                        self.live_carry(ctx.now),
                        &ctx.limits,
                        &self.source,
                        &seg[..keep],
                        keep < seg.len(),
                        ctx.now_ms,
                    )
                } else {
                    append_capped(&mut self.line, &mut self.overflow, seg, max_line);
                    accept_line(
                        &mut ctx.out,
                        pending,
                        self.live_carry(ctx.now),
                        &ctx.limits,
                        &self.source,
                        &self.line,
                        self.overflow,
                        ctx.now_ms,
                    )
                };
                self.line.clear();
                self.overflow = false;
                if !accepted {
                    // Record budget used up: the next poll starts over at this line (the file
                    // still holds it), which keeps `commit` an exact line boundary.
                    self.read_pos = self.commit;
                    return Stop::Full;
                }
                self.commit = end;
            }
            self.remember_tail(data, base);
            self.read_pos = base + n as u64;
        }
    }

    fn remember_tail(&mut self, data: &[u8], base: u64) {
        if data.len() >= SIG_BYTES || self.sig_end != base {
            self.sig.clear();
        }
        self.sig.extend_from_slice(&data[data.len().saturating_sub(SIG_BYTES)..]);
        let excess = self.sig.len().saturating_sub(SIG_BYTES);
        self.sig.drain(..excess);
        self.sig_end = base + data.len() as u64;
    }

    fn sig_matches(&self) -> bool {
        let (Some(file), false) = (self.file.as_ref(), self.sig.is_empty()) else {
            return true;
        };
        let mut buf = [0u8; SIG_BYTES];
        let n = self.sig.len().min(SIG_BYTES);
        let Some(start) = self.sig_end.checked_sub(n as u64) else {
            return true;
        };
        match file.read_exact_at(&mut buf[..n], start) {
            Ok(()) => buf[..n] == self.sig[..n],
            // Shorter than what we read before: it was truncated.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => false,
            // A transient error is no evidence of truncation; re-reading from 0 would duplicate.
            Err(_) => true,
        }
    }

    fn warn_io(&mut self, op: &str, e: &io::Error) {
        if !self.io_warned {
            self.io_warned = true;
            tracing::warn!(path = %self.source, error = %e, "{op} of log file failed; will retry");
        }
    }
}

fn append_capped(line: &mut Vec<u8>, overflow: &mut bool, seg: &[u8], max: usize) {
    let room = max.saturating_sub(line.len());
    if seg.len() > room {
        *overflow = true;
    }
    line.extend_from_slice(&seg[..seg.len().min(room)]);
}
