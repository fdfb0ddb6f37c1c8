//! Background compaction: rewrites the sample blocks of a node's closed time bucket into one
//! value of per-series chunks ([`chunk`]), so that a sample takes ~1 byte instead of ~13.
//!
//! Why this shape:
//! - **Blocks stay the write path.** Ingest keeps writing one block per (node, batch, bucket): it
//!   is what made ingest fast (see `block`), and a block holds one point per series, so nothing
//!   in it compresses across time. Compaction happens later, off the write path, on one thread.
//! - **When.** A bucket is compacted once it ended [`COMPACT_LAG_MS`] ago by the wall clock (by
//!   then the agents have delivered it) and nothing was written to it for
//!   [`COMPACT_QUIET_MS`]. A batch that arrives later (an agent replaying its spool after an
//!   outage) is stored as a block as usual and merged with the bucket's chunks on a later pass:
//!   a compacted bucket is never closed to writes.
//! - **Atomic.** The new chunks and the removal of the blocks they merged are one fjall batch, so
//!   a crash leaves either the blocks or the chunks, never both or neither, and a crash before
//!   the batch only means the work is redone. The batch is not fsynced: losing it loses no point
//!   (the blocks are still there), and the next ingest write syncs the journal anyway — except
//!   before a `samples_` keyspace is dropped, which is durable at once.
//! - **Later writes win.** Block numbers grow with every write, and a write commits in number
//!   order. A chunk records the highest block it merged (`through`); every block still stored
//!   beside it is later, so a read applies the chunks first and the blocks after them, and a
//!   compaction merges them in the same order. A query takes one snapshot across keyspaces, so
//!   it sees a bucket either before a compaction or after it, never half of it.
//! - **Space.** Removed blocks leave tombstones that the LSM purges in its own compactions; once
//!   a whole day is compacted and closed, its `samples_` keyspace (blocks and tombstones) holds
//!   no data and is dropped whole, like retention drops days, and what no longer changes is
//!   flushed so that fjall can delete its journal files (see [`Inner::flush_settled`]).
//! - **Per bucket, not longer.** One value per (node, 10-minute bucket): a query for the last
//!   minutes reads little, and a late batch rewrites ten minutes, not a day. A chunk of 60 points
//!   at 10 s pays its headers (~10 bytes per series) over 60 points: a fraction of a byte each.
//!   A bucket too large for one value is split by series into parts (see [`PartLimits`]).
//! - **Cost.** ~16 M points/s on one core for host metrics (`bench_storage`), ~5 M/s for the
//!   random floats of `bench_ingest` while ingest competes for the same two cores: a fleet
//!   sending 100 k samples/s costs compaction about 1% of a core.

use super::chunk::{self, BucketWriter};
use super::{
    BUCKET_MS, DAY_MS, Inner, StoreError, block, block_key, block_number, chunk_key, day_name, day_of, io,
    parse_block_key,
};
use fjall::{Keyspace, PersistMode, Readable};
use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How long after a bucket ends it is compacted: agents deliver a bucket within seconds, and a
/// bucket compacted too early only costs a second compaction when its late batches arrive.
pub const COMPACT_LAG_MS: i64 = 2 * BUCKET_MS;
/// And how long after its last write. A bucket still being written (an agent whose clock lags
/// the controller's by more than the lag, a spool replay in progress) would otherwise be
/// compacted again on every pass, rewriting what it already holds each time.
pub const COMPACT_QUIET_MS: i64 = 2 * 60_000;
/// How often the background thread looks for closed buckets.
const COMPACT_EVERY: Duration = Duration::from_secs(60);
/// The first look after opening, to catch up on what an earlier run left.
const FIRST_PASS_AFTER: Duration = Duration::from_secs(5);
/// A bucket whose blocks and chunks take less than `single_part_bytes` is compacted into one
/// value; a larger one (an agent at a 100 ms interval with thousands of series) is split by
/// series into parts of about `points_per_part` points, so that compaction's memory and a
/// value's size stay bounded.
#[derive(Debug, Clone, Copy)]
pub(super) struct PartLimits {
    pub single_part_bytes: u64,
    pub points_per_part: u64,
}

pub(super) const PART_LIMITS: PartLimits = PartLimits { single_part_bytes: 8 << 20, points_per_part: 500_000 };

/// A point's key within its series: offset in its bucket (24 bits) | write order (40).
const OFFSET_BITS: u32 = 24;
const ORDER_BITS: u32 = 40;
const _: () = assert!(BUCKET_MS < 1 << OFFSET_BITS);

/// Gathers a bucket's points in write order and hands them out by (series, timestamp), the
/// last write of each winning. Grouping by series is a counting sort (one hash lookup a
/// point); within a series the points nearly always arrive in time order already, so only a
/// series that does not (a replay, a batch out of order) is sorted. A sort of all points was
/// the largest cost of compaction.
#[derive(Default)]
struct Merger {
    rank: foldhash::HashMap<u64, u32>,
    /// Series id by rank (first seen first).
    ids: Vec<u64>,
    /// (rank, offset << ORDER_BITS | write order, value bits).
    points: Vec<(u32, u64, u64)>,
    grouped: Vec<(u64, u64)>,
    /// A point outside the bucket, or more than 2^40 of them: the data is corrupt.
    outside: bool,
}

impl Merger {
    fn clear(&mut self) {
        self.rank.clear();
        self.ids.clear();
        self.points.clear();
        self.outside = false;
    }

    fn push(&mut self, bucket: i64, series: u64, ts: i64, value: f64) {
        let offset = ts.wrapping_sub(bucket) as u64;
        let order = self.points.len() as u64;
        if offset >= 1 << OFFSET_BITS || order >= 1 << ORDER_BITS {
            self.outside = true;
            return;
        }
        let next = self.ids.len() as u32;
        let rank = *self.rank.entry(series).or_insert(next);
        if rank == next {
            self.ids.push(series);
        }
        self.points.push((rank, offset << ORDER_BITS | order, value.to_bits()));
    }

    /// Calls `f(series, timestamp, value)` in (series, timestamp) order, one point per
    /// (series, timestamp); returns how many.
    fn emit(&mut self, bucket: i64, mut f: impl FnMut(u64, i64, f64)) -> u64 {
        let mut by_id: Vec<u32> = (0..self.ids.len() as u32).collect();
        by_id.sort_unstable_by_key(|&r| self.ids[r as usize]);
        // Where each series' points go, series by series in id order.
        let mut at = vec![0usize; self.ids.len()];
        for &(r, _, _) in &self.points {
            at[r as usize] += 1;
        }
        let mut sum = 0;
        let mut ranges = Vec::with_capacity(by_id.len());
        for &r in &by_id {
            let n = at[r as usize];
            at[r as usize] = sum;
            ranges.push((r, sum..sum + n));
            sum += n;
        }
        self.grouped.clear();
        self.grouped.resize(self.points.len(), (0, 0));
        for &(r, key, bits) in &self.points {
            self.grouped[at[r as usize]] = (key, bits);
            at[r as usize] += 1;
        }
        let mut emitted = 0;
        for (r, range) in ranges {
            let series = self.ids[r as usize];
            let g = &mut self.grouped[range];
            if !g.windows(2).all(|w| w[0].0 < w[1].0) {
                g.sort_unstable_by_key(|p| p.0);
            }
            for (i, &(key, bits)) in g.iter().enumerate() {
                let offset = key >> ORDER_BITS;
                if g.get(i + 1).is_some_and(|next| next.0 >> ORDER_BITS == offset) {
                    continue; // superseded by a later write
                }
                f(series, bucket + offset as i64, f64::from_bits(bits));
                emitted += 1;
            }
        }
        emitted
    }
}

/// Consecutive series ranges, each with about `per_part` points (a series is never split).
fn group_series(counts: &BTreeMap<u64, u64>, per_part: u64) -> Vec<(u64, u64)> {
    let mut groups = Vec::new();
    let (mut lo, mut sum) = (None, 0);
    for (&s, &n) in counts {
        let start = *lo.get_or_insert(s);
        sum += n;
        if sum >= per_part {
            groups.push((start, s));
            (lo, sum) = (None, 0);
        }
    }
    if let Some(start) = lo {
        groups.push((start, u64::MAX));
    }
    match groups.last_mut() {
        Some(last) => last.1 = u64::MAX,
        None => groups.push((0, u64::MAX)),
    }
    if let Some(first) = groups.first_mut() {
        first.0 = 0;
    }
    groups
}

/// What one compaction run did.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct CompactionStats {
    /// (node, bucket) values written.
    pub buckets: u64,
    /// Sample blocks merged and removed.
    pub blocks: u64,
    /// Points in the chunks written (after merging).
    pub points: u64,
    /// Bytes of the blocks and older chunks read, and of the chunks written.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Whole `samples_` day keyspaces dropped because everything in them was compacted.
    pub days_dropped: u64,
}

impl std::ops::AddAssign for CompactionStats {
    fn add_assign(&mut self, o: Self) {
        self.buckets += o.buckets;
        self.blocks += o.blocks;
        self.points += o.points;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.days_dropped += o.days_dropped;
    }
}

/// The background thread; stopping it (dropping this) waits for the bucket in progress.
pub(super) struct Compactor {
    stop: Option<Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Compactor {
    /// Holds the store weakly: dropping the last `EmbeddedStore` closes the database even while
    /// this thread sleeps.
    pub fn start(inner: Weak<Inner>) -> Result<Self, StoreError> {
        let (stop, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("medic-compact".into())
            .spawn(move || run(inner, rx))
            .map_err(|e| io(format!("starting the compaction thread: {e}")))?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn run(inner: Weak<Inner>, rx: Receiver<()>) {
    let mut wait = FIRST_PASS_AFTER;
    // A bucket that cannot be compacted (a corrupt block) fails every pass: said once.
    let mut last_error = String::new();
    loop {
        match rx.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        wait = COMPACT_EVERY;
        let Some(inner) = inner.upgrade() else { return };
        let stopping = || matches!(rx.try_recv(), Err(TryRecvError::Disconnected));
        let now = now_ms();
        let started = std::time::Instant::now();
        match inner.compact_closed(now - COMPACT_LAG_MS, now - COMPACT_QUIET_MS, &stopping) {
            Ok(s) if s.buckets > 0 || s.days_dropped > 0 => tracing::info!(
                buckets = s.buckets,
                blocks = s.blocks,
                points = s.points,
                bytes_in = s.bytes_in,
                bytes_out = s.bytes_out,
                days_dropped = s.days_dropped,
                seconds = started.elapsed().as_secs_f64(),
                "compacted closed sample buckets"
            ),
            Ok(_) => {}
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    tracing::warn!("sample compaction failed, will retry every minute: {e}");
                }
                last_error = e;
            }
        }
    }
}

impl Inner {
    /// Records every bucket that holds blocks, once per process: the blocks an earlier run
    /// left uncompacted. Reads keys only; false when `stopping` cut it short.
    fn scan_uncompacted(&self, stopping: &dyn Fn() -> bool) -> Result<bool, StoreError> {
        let mut found = BTreeMap::new();
        for name in self.existing_days("samples", i64::MIN / 2, i64::MAX / 2) {
            let Some(ks) = self.find_keyspace(&name)? else { continue };
            for (i, item) in ks.iter().enumerate() {
                if i % 65_536 == 65_535 && stopping() {
                    return Ok(false);
                }
                let k = item.key().map_err(io)?;
                let (node, bucket, _) =
                    parse_block_key(&k).ok_or_else(|| StoreError::Corrupt(format!("sample block key in {name}")))?;
                found.insert((bucket, node.to_string()), 0);
            }
        }
        let mut uncompacted = self.uncompacted.lock().map_err(|_| io("compaction lock poisoned"))?;
        for (k, written) in found {
            uncompacted.entry(k).or_insert(written);
        }
        Ok(true)
    }

    /// Compacts every bucket that ended at or before `closed_before_ms` and was last written
    /// at or before `quiet_since_ms`, then drops the `samples_` keyspaces of closed days that
    /// hold nothing any more. `stopping` is asked between buckets.
    pub(super) fn compact_closed(
        &self,
        closed_before_ms: i64,
        quiet_since_ms: i64,
        stopping: &dyn Fn() -> bool,
    ) -> Result<CompactionStats, StoreError> {
        let mut stats = CompactionStats::default();
        if !self.scanned.load(std::sync::atomic::Ordering::Acquire) {
            if !self.scan_uncompacted(stopping)? {
                return Ok(stats);
            }
            self.scanned.store(true, std::sync::atomic::Ordering::Release);
        }
        let work: Vec<((i64, String), i64)> = {
            let mut set = self.uncompacted.lock().map_err(|_| io("compaction lock poisoned"))?;
            let closed: Vec<(i64, String)> = set
                .iter()
                .take_while(|((bucket, _), _)| bucket.saturating_add(BUCKET_MS) <= closed_before_ms)
                .filter(|(_, written)| **written <= quiet_since_ms)
                .map(|(k, _)| k.clone())
                .collect();
            closed.into_iter().filter_map(|k| set.remove_entry(&k)).collect()
        };
        let mut failed = Vec::new();
        let mut first_error = None;
        for (i, ((bucket, node), written)) in work.iter().enumerate() {
            if stopping() {
                failed.extend_from_slice(&work[i..]);
                break;
            }
            match self.compact_bucket(node, *bucket, PART_LIMITS) {
                Ok(s) => stats += s,
                Err(e) => {
                    failed.push(((*bucket, node.clone()), *written));
                    first_error.get_or_insert_with(|| {
                        StoreError::Corrupt(format!("compacting node {node:?} bucket {bucket}: {e}"))
                    });
                }
            }
        }
        // Retried on the next pass (keeping a write since taken them, if any).
        let mut uncompacted = self.uncompacted.lock().map_err(|_| io("compaction lock poisoned"))?;
        for (k, written) in failed {
            let at = uncompacted.entry(k).or_insert(written);
            *at = (*at).max(written);
        }
        drop(uncompacted);
        if let Some(e) = first_error {
            return Err(e);
        }
        stats.days_dropped = self.drop_compacted_days(closed_before_ms)?;
        if stats.days_dropped > 0 {
            self.flush_settled(closed_before_ms)?;
        }
        Ok(stats)
    }

    /// Once a day is over: writes out the memtables of what no longer changes (the closed
    /// days' chunks and logs) and of the small keyspaces written with every batch (nodes,
    /// series, meta) or now and then (events). fjall deletes a journal only when every keyspace
    /// with writes in it has flushed them, and flushes a keyspace when its memtable reaches
    /// 64 MiB: a small fleet never gets there, so without this its journal would grow to
    /// fjall's 512 MiB cap and its memory would hold every day's chunks.
    fn flush_settled(&self, closed_before_ms: i64) -> Result<(), StoreError> {
        for name in self.db.list_keyspace_names() {
            let settled = match super::day_from_name(&name) {
                Some((_, day)) => (day + 1).saturating_mul(DAY_MS) <= closed_before_ms,
                None => true,
            };
            if settled && let Some(ks) = self.find_keyspace(&name)? {
                ks.rotate_memtable().map_err(io)?;
            }
        }
        Ok(())
    }

    /// Merges a bucket's blocks (and its earlier chunks, if any) into new chunks and removes
    /// the blocks, in one atomic batch.
    pub(super) fn compact_bucket(
        &self,
        node: &str,
        bucket: i64,
        limits: PartLimits,
    ) -> Result<CompactionStats, StoreError> {
        let _maintenance = self.maintenance.lock().map_err(|_| io("maintenance lock poisoned"))?;
        let day = day_of(bucket);
        let (raw, chunks, snapshot) = {
            let days = self.days.lock().map_err(|_| io("day keyspace lock poisoned"))?;
            let Some(raw) = self.find_keyspace_locked(&days, &day_name("samples", day))? else {
                return Ok(CompactionStats::default());
            };
            drop(days);
            let chunks = self.day_keyspace(&day_name("chunks", day))?;
            (raw, chunks, self.db.snapshot())
        };
        let corrupt = |what: String| StoreError::Corrupt(format!("node {node:?} bucket {bucket}: {what}"));
        let mut stats = CompactionStats::default();

        let mut old_parts = Vec::new();
        for item in snapshot.range(&chunks, chunk_key(node, bucket, 0)..=chunk_key(node, bucket, u16::MAX)) {
            old_parts.push(item.into_inner().map_err(io)?);
        }
        let mut through = None;
        for (_, v) in &old_parts {
            stats.bytes_in += v.len() as u64;
            let t = chunk::through_block(v).map_err(|e| corrupt(format!("chunk: {e}")))?;
            through = through.max(Some(t));
        }
        let mut blocks = Vec::new();
        let mut removed = Vec::new();
        for item in snapshot.range(&raw, block_key(node, bucket, 0)..=block_key(node, bucket, u64::MAX)) {
            let (k, v) = item.into_inner().map_err(io)?;
            let n = block_number(&k).ok_or_else(|| corrupt("sample block key".into()))?;
            // Blocks a chunk already holds cannot exist beside it (they go in the same batch);
            // if one did, it is already merged.
            if through.is_none_or(|t| n > t) {
                stats.bytes_in += v.len() as u64;
                blocks.push((n, v));
            }
            removed.push(k);
        }
        if removed.is_empty() {
            return Ok(stats);
        }
        let last_block = blocks.iter().map(|(n, _)| *n).max().max(through).unwrap_or(0);

        // Series ranges whose points make one part each.
        let groups = if stats.bytes_in <= limits.single_part_bytes {
            vec![(0, u64::MAX)]
        } else {
            let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
            for (_, v) in &old_parts {
                for (s, n) in chunk::series_counts(v).map_err(|e| corrupt(format!("chunk: {e}")))? {
                    *counts.entry(s).or_default() += n;
                }
            }
            for (n, v) in &blocks {
                block::decode(bucket, v, |s, _, _| *counts.entry(s).or_default() += 1)
                    .map_err(|e| corrupt(format!("sample block {n}: {e}")))?;
            }
            group_series(&counts, limits.points_per_part)
        };
        if groups.len() > u16::MAX as usize {
            return Err(corrupt(format!("{} parts needed", groups.len())));
        }

        let mut batch = self.db.batch();
        // Points are gathered in write order: earlier chunks, then the blocks by number, each in
        // its own order; the last write of a (series, timestamp) wins.
        let mut merger = Merger::default();
        for (part, &(lo, hi)) in groups.iter().enumerate() {
            merger.clear();
            let mine = |s: u64| s >= lo && s <= hi;
            for (_, v) in &old_parts {
                chunk::decode(bucket, v, mine, |s, t, v| merger.push(bucket, s, t, v))
                    .map_err(|e| corrupt(format!("chunk: {e}")))?;
            }
            for (n, v) in &blocks {
                block::decode(bucket, v, |s, t, val| {
                    if mine(s) {
                        merger.push(bucket, s, t, val)
                    }
                })
                .map_err(|e| corrupt(format!("sample block {n}: {e}")))?;
            }
            if merger.outside {
                return Err(corrupt("a point lies outside its bucket".into()));
            }
            let mut w = BucketWriter::new(bucket, last_block);
            stats.points += merger.emit(bucket, |s, t, v| w.push(s, t, v));
            let value = w.finish();
            stats.bytes_out += value.len() as u64;
            batch.insert(&chunks, chunk_key(node, bucket, part as u16), value);
        }
        // Parts of an earlier, larger split that the new one does not overwrite.
        for (k, _) in old_parts.iter().skip(groups.len()) {
            batch.remove(&chunks, k.clone());
        }
        stats.blocks = removed.len() as u64;
        stats.buckets = 1;
        for k in removed {
            batch.remove(&raw, k);
        }
        batch.commit().map_err(io)?;
        Ok(stats)
    }

    /// Drops the `samples_` keyspace of every day that ended before `closed_before_ms` and has
    /// no uncompacted bucket left: only tombstones remain in it.
    fn drop_compacted_days(&self, closed_before_ms: i64) -> Result<u64, StoreError> {
        let _maintenance = self.maintenance.lock().map_err(|_| io("maintenance lock poisoned"))?;
        let mut dropped = 0;
        for name in self.existing_days("samples", i64::MIN / 2, i64::MAX / 2) {
            let Some((_, day)) = super::day_from_name(&name) else { continue };
            if (day + 1).saturating_mul(DAY_MS) > closed_before_ms {
                continue;
            }
            let Some(ks) = self.find_keyspace(&name)? else { continue };
            // A cheap look without blocking writes first; then, holding the write lock, the
            // uncompacted set: a write since the look would have added its bucket to it.
            if ks.first_key_value().is_some() {
                continue;
            }
            let _writes = self.index.lock().map_err(|_| io("series index lock poisoned"))?;
            let pending = self
                .uncompacted
                .lock()
                .map_err(|_| io("compaction lock poisoned"))?
                .keys()
                .any(|(bucket, _)| day_of(*bucket) == day);
            if pending {
                continue;
            }
            // The batches that moved its blocks into chunks were not synced; they must be on
            // disk before the blocks' keyspace goes (dropping it is durable at once).
            self.db.persist(PersistMode::SyncAll).map_err(io)?;
            let mut days = self.days.lock().map_err(|_| io("day keyspace lock poisoned"))?;
            days.remove(&name);
            let ks: Keyspace = ks;
            self.db.delete_keyspace(ks).map_err(io)?;
            dropped += 1;
        }
        Ok(dropped)
    }
}

/// Opens the compactor for an `Arc<Inner>`.
pub(super) fn start(inner: &Arc<Inner>) -> Result<Compactor, StoreError> {
    Compactor::start(Arc::downgrade(inner))
}
