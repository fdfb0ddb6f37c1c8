//! Log tailing: follows the files matching a set of globs and turns their lines into
//! `LogRecord`s, without losing or repeating a line across rotations and agent restarts.
//!
//! Files are identified by (dev, inode) and read through their own fd. A file renamed or deleted
//! away from its path keeps being read to EOF (the writer may still hold it open for a while)
//! and is closed once idle for [`TailerTuning::rotate_wait`]; its successor at the path is read
//! from offset 0. A file that shrinks below our offset was truncated (copytruncate) and is
//! re-read from 0.
//!
//! [`Tailer::cursor`] is always a set of line boundaries just after the last record handed out,
//! so persisting it together with those records makes a restart resume exactly there.
//!
//! `poll` does blocking file I/O (bounded per call by `max_records` and a byte budget); callers
//! that share a runtime thread with latency-sensitive work may want `spawn_blocking`.
//!
//! Known limits, inherent to following files by path:
//! - A file that is created and renamed out of the globs (or deleted) before any scan saw it at
//!   a matching path — within about one `rescan_interval`, or faster than notify delivers the
//!   create event — is never read.
//! - Lines written to a rotated-away file after it has been idle for `rotate_wait` are lost (we
//!   closed it); so are lines a copytruncate copies but writes after its copy, before truncating.
//! - On restart, a cursor's (dev, inode) may have been reused by an unrelated file if the old one
//!   was deleted while the agent was down; we then resume at the saved offset when it fits.
//! - Truncation is detected by size and by the last bytes before our offset; a file rewritten
//!   in place to exactly its old size with the same tail bytes goes unnoticed.
//! - A line longer than `max_line_bytes` whose head was flushed unfinished (writer idle) and
//!   whose tail arrives after an agent restart has the tail returned as a separate record.
//! - Continuation lines are folded into their entry within one poll, or as a `continued=true`
//!   follow-up record when they arrive later; after a restart they become plain records.

mod clickhouse;
mod file;
mod record;
pub mod signatures;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use medic_proto::v1::LogRecord;
use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use file::{CHUNK_BYTES, FileId, FileTail, PollCtx, Stop};
use record::{CONTINUATION_FACTOR, Limits};

#[derive(Debug, Clone)]
pub struct TailerOptions {
    pub globs: Vec<String>,
    /// Longer lines are cut to this many bytes and get the field `truncated=true`. 0 means the
    /// default, 64 KiB.
    pub max_line_bytes: usize,
    pub read_from: ReadFrom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    Beginning,
    /// Only for files present when the agent starts for the first time (no cursor): older lines
    /// are history the operator did not ask for. Files appearing later are always read whole.
    #[default]
    End,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TailCursor {
    pub files: Vec<FileCursor>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileCursor {
    pub path: String,
    pub dev: u64,
    pub inode: u64,
    pub offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("invalid log glob {glob:?}: {message}")]
    Glob { glob: String, message: String },
    #[error("watching log files: {0}")]
    Watch(String),
}

/// Timing knobs; the defaults suit production, tests shorten them.
#[derive(Debug, Clone)]
pub struct TailerTuning {
    /// `changed()` returns after this long even without a filesystem event, because notify can
    /// miss events (network filesystems, overflowing queues, unwatchable directories).
    pub fallback_poll: Duration,
    /// How often the globs are re-expanded even without a create/rename event.
    pub rescan_interval: Duration,
    /// An unfinished line whose file has not grown for this long is handed out as it is: the
    /// writer may never finish it (crash, missing final newline).
    pub partial_flush_after: Duration,
    /// How long a rotated-away or deleted file stays open after it stopped growing; writers often
    /// keep writing to the old fd until they are told to reopen.
    pub rotate_wait: Duration,
}

impl Default for TailerTuning {
    fn default() -> Self {
        Self {
            fallback_poll: Duration::from_secs(1),
            rescan_interval: Duration::from_secs(1),
            partial_flush_after: Duration::from_secs(5),
            rotate_wait: Duration::from_secs(5),
        }
    }
}

const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024;

/// Bytes read per `poll`, so one poll over a huge backlog (or a gigantic skipped line) can't
/// stall the caller for long; the rest is picked up by the next poll, which `changed()` then
/// doesn't delay.
const POLL_BYTE_BUDGET: u64 = 32 * 1024 * 1024;

pub struct Tailer {
    globs: Vec<String>,
    patterns: Vec<glob::Pattern>,
    max_line_bytes: usize,
    read_from: ReadFrom,
    tuning: TailerTuning,
    /// Oldest first within a path, so a rotated file is finished before its successor.
    files: Vec<FileTail>,
    had_cursor: bool,
    scanned_once: bool,
    next_rescan: Instant,
    /// Set by the watcher on create/remove/rename events: the file set may have changed.
    rescan_requested: Arc<AtomicBool>,
    events: mpsc::Receiver<()>,
    /// Keeps `events` open when there is no watcher, so `changed()` waits instead of spinning.
    _events_tx: mpsc::Sender<()>,
    watcher: Option<RecommendedWatcher>,
    /// Watched directories with their (dev, inode): a directory deleted and re-created needs a
    /// new watch.
    watched: HashMap<PathBuf, FileId>,
    warned: HashSet<PathBuf>,
    /// The last poll stopped at its budget; the next one must not wait for an event.
    more_pending: bool,
    round_robin: usize,
    chunk: Vec<u8>,
}

impl Tailer {
    pub fn new(opts: TailerOptions, cursor: Option<TailCursor>) -> Result<Self, TailError> {
        Self::with_tuning(opts, cursor, TailerTuning::default())
    }

    pub fn with_tuning(
        opts: TailerOptions,
        cursor: Option<TailCursor>,
        tuning: TailerTuning,
    ) -> Result<Self, TailError> {
        let mut patterns = Vec::new();
        let mut name_patterns = Vec::new();
        for g in &opts.globs {
            patterns
                .push(glob::Pattern::new(g).map_err(|e| TailError::Glob { glob: g.clone(), message: e.to_string() })?);
            let name = Path::new(g).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name_patterns.push(
                glob::Pattern::new(&name).map_err(|e| TailError::Glob { glob: g.clone(), message: e.to_string() })?,
            );
        }
        // Coalescing channel: one stored wake-up is as good as a thousand, and a burst of events
        // can't grow memory.
        let (tx, rx) = mpsc::channel(1);
        let rescan_requested = Arc::new(AtomicBool::new(false));
        let watcher = match new_watcher(tx.clone(), rescan_requested.clone(), name_patterns) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch log directories; polling every {:?}", tuning.fallback_poll);
                None
            }
        };
        let now = Instant::now();
        let mut tailer = Self {
            globs: opts.globs,
            patterns,
            max_line_bytes: if opts.max_line_bytes == 0 { DEFAULT_MAX_LINE_BYTES } else { opts.max_line_bytes },
            read_from: opts.read_from,
            tuning,
            files: Vec::new(),
            had_cursor: cursor.is_some(),
            scanned_once: false,
            next_rescan: now,
            rescan_requested,
            events: rx,
            _events_tx: tx,
            watcher,
            watched: HashMap::new(),
            warned: HashSet::new(),
            more_pending: false,
            round_robin: 0,
            chunk: vec![0; CHUNK_BYTES],
        };
        if let Some(cursor) = cursor {
            tailer.restore(cursor, now);
        }
        // Scan right away: with `ReadFrom::End`, "the end" must be where the files are when the
        // agent starts, not wherever they are by the first poll.
        tailer.rescan(now);
        Ok(tailer)
    }

    /// Up to `max_records` new records, oldest first per file.
    pub fn poll(&mut self, max_records: usize) -> Vec<LogRecord> {
        let now = Instant::now();
        if self.rescan_requested.swap(false, Ordering::Relaxed) || now >= self.next_rescan {
            self.rescan(now);
        }
        self.more_pending = false;
        if max_records == 0 {
            return Vec::new();
        }
        let now_ms = i64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis(),
        )
        .unwrap_or(i64::MAX);
        let mut ctx = PollCtx {
            out: Vec::new(),
            limits: Limits {
                max_records,
                max_line_bytes: self.max_line_bytes,
                max_message_bytes: self.max_line_bytes.saturating_mul(CONTINUATION_FACTOR),
            },
            bytes_left: POLL_BYTE_BUDGET,
            now,
            now_ms,
            partial_flush_after: self.tuning.partial_flush_after,
            rotate_wait: self.tuning.rotate_wait,
            chunk: &mut self.chunk,
        };
        // Group by path so a rotated file is always read (to EOF) before its successor, and start
        // with a different path each poll so one busy file can't starve the others.
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, f) in self.files.iter().enumerate() {
            match groups.iter_mut().find(|(s, _)| *s == f.source) {
                Some((_, g)) => g.push(i),
                None => groups.push((&f.source, vec![i])),
            }
        }
        let groups: Vec<Vec<usize>> = groups.into_iter().map(|(_, g)| g).collect();
        let start = if groups.is_empty() { 0 } else { self.round_robin % groups.len() };
        self.round_robin = self.round_robin.wrapping_add(1);
        'groups: for g in groups[start..].iter().chain(&groups[..start]) {
            for &i in g {
                if let Stop::Full = self.files[i].poll(&mut ctx) {
                    self.more_pending = true;
                    break 'groups;
                }
            }
        }
        let out = ctx.out;
        self.files.retain(|f| !f.closed);
        out
    }

    /// Position just after the last record returned by `poll`, for every open file.
    pub fn cursor(&self) -> TailCursor {
        TailCursor {
            files: self
                .files
                .iter()
                .map(|f| FileCursor { path: f.source.clone(), dev: f.id.0, inode: f.id.1, offset: f.commit })
                .collect(),
        }
    }

    /// Waits until there may be something new to poll: a filesystem event, the fallback
    /// interval, or immediately when the last poll left records behind.
    pub async fn changed(&mut self) {
        if self.more_pending {
            tokio::task::yield_now().await;
            return;
        }
        let _ = tokio::time::timeout(self.tuning.fallback_poll, self.events.recv()).await;
    }

    /// Reopens the files of a previous run by (dev, inode). A file that was rotated while we were
    /// down is found among its directory's files and finished before its successor.
    fn restore(&mut self, cursor: TailCursor, now: Instant) {
        for fc in cursor.files {
            let path = PathBuf::from(&fc.path);
            let id = (fc.dev, fc.inode);
            if !self.matches(&path) || self.files.iter().any(|f| f.id == id) {
                continue;
            }
            let found =
                file::open(&path).ok().filter(|(_, meta)| file::file_id(meta) == id).or_else(|| find_in_dir(&path, id));
            let Some((fd, meta)) = found else {
                tracing::warn!(path = %fc.path, offset = fc.offset, "log file read last run is gone; lines written to it after the saved offset were not collected");
                continue;
            };
            let mut offset = fc.offset;
            if offset > meta.len() {
                tracing::info!(path = %fc.path, offset, size = meta.len(), "log file truncated while the agent was down; reading from the start");
                offset = 0;
            }
            self.files.push(FileTail::new(fc.path, fd, id, offset, now));
        }
    }

    fn matches(&self, path: &Path) -> bool {
        self.patterns.iter().any(|p| p.matches_path(path))
    }

    fn rescan(&mut self, now: Instant) {
        self.next_rescan = now + self.tuning.rescan_interval;
        let mut dirs: Vec<PathBuf> = self.globs.iter().map(|g| literal_dir(g)).collect();
        let mut paths: Vec<PathBuf> = Vec::new();
        for g in &self.globs {
            // Unreadable entries are skipped: one bad directory must not hide the others.
            if let Ok(found) = glob::glob(g) {
                paths.extend(found.flatten());
            }
        }
        let mut seen: HashSet<FileId> = HashSet::new();
        let mut by_path: HashSet<PathBuf> = HashSet::new();
        for path in paths {
            if !by_path.insert(path.clone()) {
                continue;
            }
            if let Some(parent) = path.parent() {
                let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
                if !dirs.iter().any(|d| d == parent) {
                    dirs.push(parent.to_path_buf());
                }
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            if let Some(f) = self.files.iter_mut().find(|f| f.id == file::file_id(&meta)) {
                f.rotated = false;
                seen.insert(f.id);
                continue;
            }
            let (fd, meta) = match file::open(&path) {
                Ok(x) => {
                    self.warned.remove(&path);
                    x
                }
                Err(e) => {
                    if self.warned.insert(path.clone()) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot open log file; will retry");
                    }
                    continue;
                }
            };
            let id = file::file_id(&meta);
            seen.insert(id);
            if self.files.iter().any(|f| f.id == id) {
                // Renamed between the glob and the open: already tracked under its old name.
                continue;
            }
            let offset = if !self.scanned_once && !self.had_cursor && self.read_from == ReadFrom::End {
                file::end_offset(&fd, meta.len())
            } else {
                0
            };
            tracing::info!(path = %path.display(), offset, "tailing log file");
            self.files.push(FileTail::new(path.to_string_lossy().into_owned(), fd, id, offset, now));
        }
        for f in &mut self.files {
            if !seen.contains(&f.id) && !f.rotated {
                tracing::debug!(path = %f.source, "log file rotated away or deleted; reading it to the end");
                f.rotated = true;
            }
        }
        self.scanned_once = true;
        self.update_watches(dirs);
    }

    fn update_watches(&mut self, dirs: Vec<PathBuf>) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        for dir in dirs {
            let id = match std::fs::metadata(&dir) {
                Ok(m) if m.is_dir() => (m.dev(), m.ino()),
                _ => continue,
            };
            if self.watched.get(&dir) == Some(&id) {
                continue;
            }
            if self.watched.remove(&dir).is_some() {
                let _ = watcher.unwatch(&dir);
            }
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.warned.remove(&dir);
                    self.watched.insert(dir, id);
                }
                Err(e) => {
                    if self.warned.insert(dir.clone()) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch log directory; polling it");
                    }
                }
            }
        }
    }

    #[cfg(test)]
    fn open_files(&self) -> usize {
        self.files.iter().filter(|f| f.is_open()).count()
    }
}

fn new_watcher(
    tx: mpsc::Sender<()>,
    rescan: Arc<AtomicBool>,
    name_patterns: Vec<glob::Pattern>,
) -> notify::Result<RecommendedWatcher> {
    notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let wake = match res {
            Ok(ev) => match ev.kind {
                // Our own opens and reads show up as access events: waking on them would spin.
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => relevant(&ev, &name_patterns),
                EventKind::Access(_) => false,
                EventKind::Modify(ModifyKind::Name(_))
                | EventKind::Create(_)
                | EventKind::Remove(_)
                | EventKind::Any
                | EventKind::Other => {
                    rescan.store(true, Ordering::Relaxed);
                    true
                }
                EventKind::Modify(_) => {
                    if ev.need_rescan() {
                        rescan.store(true, Ordering::Relaxed);
                    }
                    relevant(&ev, &name_patterns)
                }
            },
            // The watcher is unreliable right now: look at everything instead.
            Err(_) => {
                rescan.store(true, Ordering::Relaxed);
                true
            }
        };
        if wake {
            let _ = tx.try_send(());
        }
    })
}

/// Writes to other files in a watched directory (think /var/log) are not worth a poll. Matching
/// on the file name keeps this independent of how notify spells the directory.
fn relevant(ev: &notify::Event, name_patterns: &[glob::Pattern]) -> bool {
    ev.need_rescan()
        || ev.paths.is_empty()
        || ev
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| name_patterns.iter().any(|pat| pat.matches(&n.to_string_lossy()))))
}

/// The directory part of a glob before its first wildcard: the deepest directory that surely
/// exists for every match, watched so new matches (or new subdirectories) are noticed.
fn literal_dir(glob: &str) -> PathBuf {
    let comps: Vec<_> = Path::new(glob).components().collect();
    let mut dir = PathBuf::new();
    for (i, c) in comps.iter().enumerate() {
        if i + 1 == comps.len() || c.as_os_str().to_string_lossy().contains(['*', '?', '[']) {
            break;
        }
        dir.push(c);
    }
    if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir }
}

/// A file with identity `id` in the directory of `path`: where a rotated file ends up
/// (`x.log.1`, `x.log-20240115`) while the agent was down.
fn find_in_dir(path: &Path, id: FileId) -> Option<(std::fs::File, std::fs::Metadata)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() && file::file_id(&meta) == id {
            let found = file::open(&entry.path()).ok().filter(|(_, m)| file::file_id(m) == id);
            if found.is_some() {
                tracing::info!(path = %path.display(), now_at = %entry.path().display(), "log file was rotated while the agent was down; finishing it first");
                return found;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
