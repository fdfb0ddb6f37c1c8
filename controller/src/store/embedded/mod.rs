//! The embedded store: fjall (an LSM key-value engine) under `--data-dir`.
//!
//! Layout — one keyspace per concern, and one per day for telemetry so that retention drops
//! whole keyspaces instead of deleting billions of keys:
//! - `nodes`: node name → JSON [`NodeRecord`] (delivery state, written with every batch);
//! - `series`: series id (u64 BE) → JSON [`SeriesDesc`]; ids are allocated here, in the same
//!   atomic write as the first sample that uses them;
//! - `meta`: `next_block` → u64 BE, the next sample block number (see below);
//! - `samples_YYYYMMDD`: node \0 bucket start (8, order-preserving) + block number (8) → a
//!   [`block`] of the samples one batch had in that 10-minute bucket. Block numbers are
//!   store-wide and increasing, so later writes sort after earlier ones within a bucket and a
//!   query can let the last write of a (series, timestamp) win, as a per-sample key would;
//! - `chunks_YYYYMMDD`: node \0 bucket start (8) → the [`chunk`]s of every series of the node in
//!   that bucket, written by [`compact`]ion once the bucket closed, in the same atomic batch that
//!   removes the blocks it merged. A query applies a bucket's chunks, then the blocks still
//!   beside them (all written later);
//! - `logs_YYYYMMDD`: node \0 timestamp (8) + seq (8) + index in batch (4) → protobuf LogRecord.
//!
//! Every [`WriteSet`] is one fjall write batch committed with `SyncAll`, so it is atomic and on
//! disk before the controller acks.

mod block;
mod chunk;
mod compact;
mod series_index;

pub use compact::{COMPACT_LAG_MS, CompactionStats};

use super::{EventKind, EventRecord, LogQuery, NodeRecord, Point, SeriesQuery, Store, StoreError, StoredLog, WriteSet};
use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use medic_proto::v1::Batch;
use medic_proto::v1::LogRecord;
use prost::Message;
use series_index::{SeriesDesc, SeriesIndex};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const DAY_MS: i64 = 86_400_000;
/// Width of a sample block's time bucket. Small enough that a short query reads little beyond
/// what it asked for, large enough that a batch (one or two collection rounds) is one block.
const BUCKET_MS: i64 = 600_000;
const NEXT_BLOCK_KEY: &[u8] = b"next_block";

fn ts_bytes(ts_ms: i64) -> [u8; 8] {
    ((ts_ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// node \0 bucket start (8) + block number (8): a node's blocks sort by time bucket, then by
/// write order.
fn block_key(node: &str, bucket_ms: i64, block: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(node.len() + 17);
    k.extend_from_slice(node.as_bytes());
    k.push(0);
    k.extend_from_slice(&ts_bytes(bucket_ms));
    k.extend_from_slice(&block.to_be_bytes());
    k
}

/// node \0 bucket start (8) + part (2): a node's compacted buckets sort by time. A bucket is
/// one part unless it holds more points than one value should (see `compact`).
fn chunk_key(node: &str, bucket_ms: i64, part: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(node.len() + 11);
    k.extend_from_slice(node.as_bytes());
    k.push(0);
    k.extend_from_slice(&ts_bytes(bucket_ms));
    k.extend_from_slice(&part.to_be_bytes());
    k
}

/// The bucket start of a [`chunk_key`].
fn chunk_bucket(key: &[u8]) -> Option<i64> {
    let at = key.len().checked_sub(10)?;
    ts_from(&key[at..at + 8])
}

/// The block number of a [`block_key`].
fn block_number(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(key.len().checked_sub(8)?..)?.try_into().ok()?))
}

/// (node, bucket start, block number) of a [`block_key`].
fn parse_block_key(key: &[u8]) -> Option<(&str, i64, u64)> {
    let node_end = key.len().checked_sub(17)?;
    if key[node_end] != 0 {
        return None;
    }
    let node = std::str::from_utf8(&key[..node_end]).ok()?;
    Some((node, ts_from(&key[node_end + 1..node_end + 9])?, block_number(key)?))
}

fn ts_from(bytes: &[u8]) -> Option<i64> {
    let arr: [u8; 8] = bytes.try_into().ok()?;
    Some((u64::from_be_bytes(arr) ^ (1 << 63)) as i64)
}

fn day_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(DAY_MS)
}

fn day_name(prefix: &str, day: i64) -> String {
    let date = chrono::DateTime::from_timestamp_millis(day * DAY_MS)
        .map(|d| d.format("%Y%m%d").to_string())
        .unwrap_or_else(|| format!("d{day}"));
    format!("{prefix}_{date}")
}

fn day_from_name(name: &str) -> Option<(String, i64)> {
    let (prefix, date) = name.rsplit_once('_')?;
    let d = chrono::NaiveDate::parse_from_str(date, "%Y%m%d").ok()?;
    let ms = d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis();
    Some((prefix.to_string(), day_of(ms)))
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// Below this many samples a write is prepared on the calling thread: spawning costs more.
const PARALLEL_MIN_SAMPLES: usize = 20_000;

fn write_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4)
}

fn node_hash(node: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(node)
}

/// One thread's share of a write: the encoded sample blocks of its batches (by batch index)
/// and the series first seen in them, with the ids they were given.
/// Encoded sample blocks of one batch: (bucket start, bytes).
type EncodedBlocks = Vec<(i64, Vec<u8>)>;

struct Prepared {
    blocks: Vec<(usize, EncodedBlocks)>,
    new_series: Vec<(u64, SeriesDesc)>,
}

fn prepare(
    index: &SeriesIndex,
    batches: &[(String, Arc<Batch>)],
    mine: &[usize],
    next_id: &AtomicU64,
) -> Result<Prepared, StoreError> {
    let mut pending = SeriesIndex::default();
    let mut out = Prepared { blocks: Vec::with_capacity(mine.len()), new_series: Vec::new() };
    // One batch's samples usually share one bucket; a short list beats a map here.
    let mut writers: Vec<block::BlockWriter> = Vec::new();
    for &i in mine {
        let (node, batch) = &batches[i];
        writers.clear();
        for s in batch.series_refs() {
            // One lookup per series, however many points it brings.
            let id = match index.find(node, s.metric, s.labels).or_else(|| pending.find(node, s.metric, s.labels)) {
                Some(id) => id,
                None => {
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let desc = SeriesDesc {
                        node: node.clone(),
                        metric: s.metric.to_string(),
                        labels: s.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect(),
                        kind: s.kind,
                    };
                    pending.insert(id, desc.clone());
                    out.new_series.push((id, desc));
                    id
                }
            };
            for (ts, value) in s.points() {
                let bucket = ts.div_euclid(BUCKET_MS) * BUCKET_MS;
                let w = match writers.iter_mut().position(|b| b.start() == bucket) {
                    Some(i) => &mut writers[i],
                    None => {
                        writers.push(block::BlockWriter::new(bucket));
                        writers.last_mut().ok_or_else(|| io("block list empty after push"))?
                    }
                };
                w.push(id, ts, value);
            }
        }
        out.blocks.push((i, writers.drain(..).map(|w| (w.start(), w.finish())).collect()));
    }
    Ok(out)
}

struct Inner {
    db: Database,
    nodes: Keyspace,
    series: Keyspace,
    meta: Keyspace,
    /// Detection and remediation events: kind (1) + timestamp (8) + random (8) → JSON.
    events: Keyspace,
    index: Mutex<SeriesIndex>,
    /// Next sample block number; advanced only after the write that used it committed, under
    /// the `index` lock (which serialises writes).
    next_block: Mutex<u64>,
    /// Open day keyspaces. Held while a keyspace is created or dropped, and while a query
    /// resolves its keyspaces and takes its snapshot, so that a query sees either the blocks or
    /// the chunks compaction made of them.
    days: Mutex<HashMap<String, Keyspace>>,
    /// (bucket start, node) of every bucket holding sample blocks not yet compacted → when a
    /// block was last written to it (wall clock, ms; 0 when found at startup).
    uncompacted: Mutex<BTreeMap<(i64, String), i64>>,
    /// Whether `uncompacted` holds what earlier runs left (found by the first compaction).
    scanned: AtomicBool,
    /// Serialises compaction and retention.
    maintenance: Mutex<()>,
}

/// Sample blocks and log records are large values written once and never updated: stored apart
/// from the keys (key-value separation), compactions move only the keys instead of rewriting
/// every block again and again.
fn day_keyspace_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().with_kv_separation(Some(fjall::KvSeparationOptions::default()))
}

impl Inner {
    fn day_keyspace(&self, name: &str) -> Result<Keyspace, StoreError> {
        let mut days = self.days.lock().map_err(|_| io("day keyspace lock poisoned"))?;
        if let Some(ks) = days.get(name) {
            return Ok(ks.clone());
        }
        let ks = self.db.keyspace(name, day_keyspace_options).map_err(io)?;
        days.insert(name.to_string(), ks.clone());
        Ok(ks)
    }

    /// The keyspace `name` if it exists; never creates it.
    fn find_keyspace(&self, name: &str) -> Result<Option<Keyspace>, StoreError> {
        let days = self.days.lock().map_err(|_| io("day keyspace lock poisoned"))?;
        self.find_keyspace_locked(&days, name)
    }

    fn find_keyspace_locked(
        &self,
        days: &HashMap<String, Keyspace>,
        name: &str,
    ) -> Result<Option<Keyspace>, StoreError> {
        if let Some(ks) = days.get(name) {
            return Ok(Some(ks.clone()));
        }
        if !self.db.keyspace_exists(name) {
            return Ok(None);
        }
        self.db.keyspace(name, day_keyspace_options).map(Some).map_err(io)
    }

    /// Existing day keyspaces with this prefix overlapping [from, to], oldest first.
    fn existing_days(&self, prefix: &str, from_ms: i64, to_ms: i64) -> Vec<String> {
        let (from, to) = (day_of(from_ms), day_of(to_ms));
        let mut out: Vec<(i64, String)> = self
            .db
            .list_keyspace_names()
            .into_iter()
            .filter_map(|n| {
                let name = n.to_string();
                let (p, d) = day_from_name(&name)?;
                (p == prefix && d >= from && d <= to).then_some((d, name))
            })
            .collect();
        out.sort();
        out.into_iter().map(|(_, n)| n).collect()
    }

    fn write(&self, set: WriteSet) -> Result<(), StoreError> {
        let mut index = self.index.lock().map_err(|_| io("series index lock poisoned"))?;
        let mut wb = self.db.batch().durability(Some(PersistMode::SyncAll));
        let mut day_ks: HashMap<String, Keyspace> = HashMap::new();

        let mut next_block_guard = self.next_block.lock().map_err(|_| io("block counter lock poisoned"))?;
        let mut next_block = *next_block_guard;

        // Series lookups and block encoding are most of a write's CPU; they run on several
        // threads, split by node (a series belongs to one node, so two threads never create the
        // same series). Only the fjall inserts and the commit stay serial.
        let next_id = AtomicU64::new(index.next_id);
        let samples: usize = set.batches.iter().map(|(_, b)| b.sample_count()).sum();
        let threads = if samples < PARALLEL_MIN_SAMPLES { 1 } else { write_threads() };
        let mut share: Vec<Vec<usize>> = vec![Vec::new(); threads];
        for (i, (node, _)) in set.batches.iter().enumerate() {
            share[(node_hash(node) % threads as u64) as usize].push(i);
        }
        let shared_index: &SeriesIndex = &index;
        let prepared: Vec<Result<Prepared, StoreError>> = if threads == 1 {
            vec![prepare(shared_index, &set.batches, &share[0], &next_id)]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = share
                    .iter()
                    .map(|mine| scope.spawn(|| prepare(shared_index, &set.batches, mine, &next_id)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(io("a write preparation thread panicked"))))
                    .collect()
            })
        };
        // Blocks per batch, in batch order, so block numbers keep "a later write wins".
        let mut blocks_of: Vec<EncodedBlocks> = vec![Vec::new(); set.batches.len()];
        let mut pending = SeriesIndex::default();
        for p in prepared {
            let p = p?;
            for (id, desc) in p.new_series {
                let json = serde_json::to_vec(&desc).map_err(io)?;
                wb.insert(&self.series, id.to_be_bytes(), json);
                pending.insert(id, desc);
            }
            for (i, blocks) in p.blocks {
                blocks_of[i] = blocks;
            }
        }

        let mut touched: Vec<(i64, &str)> = Vec::new();
        for ((node, batch), blocks) in set.batches.iter().zip(blocks_of) {
            for (start, bytes) in blocks {
                if touched.last() != Some(&(start, node.as_str())) {
                    touched.push((start, node));
                }
                let name = day_name("samples", day_of(start));
                let ks = match day_ks.get(&name) {
                    Some(ks) => ks,
                    None => {
                        let ks = self.day_keyspace(&name)?;
                        day_ks.entry(name).or_insert(ks)
                    }
                };
                let k = block_key(node, start, next_block);
                next_block += 1;
                wb.insert(ks, k, bytes);
            }
            for (i, rec) in batch.logs.iter().enumerate() {
                let name = day_name("logs", day_of(rec.timestamp_ms));
                let ks = match day_ks.get(&name) {
                    Some(ks) => ks,
                    None => {
                        let ks = self.day_keyspace(&name)?;
                        day_ks.entry(name).or_insert(ks)
                    }
                };
                let mut k = Vec::with_capacity(node.len() + 21);
                k.extend_from_slice(node.as_bytes());
                k.push(0);
                k.extend_from_slice(&ts_bytes(rec.timestamp_ms));
                k.extend_from_slice(&batch.seq.to_be_bytes());
                k.extend_from_slice(&(i as u32).to_be_bytes());
                wb.insert(ks, k, rec.encode_to_vec());
            }
        }
        for n in &set.nodes {
            wb.insert(&self.nodes, n.node.as_bytes(), serde_json::to_vec(n).map_err(io)?);
        }
        wb.insert(&self.meta, NEXT_BLOCK_KEY, next_block.to_be_bytes());
        wb.commit().map_err(io)?;
        *next_block_guard = next_block;
        // Before the write lock goes: compaction decides that a day holds no blocks under it.
        {
            let mut uncompacted = self.uncompacted.lock().map_err(|_| io("compaction lock poisoned"))?;
            let now = chrono::Utc::now().timestamp_millis();
            for (start, node) in touched {
                uncompacted.insert((start, node.to_string()), now);
            }
        }
        // Only now that the series are durable may later writes refer to them.
        index.absorb(pending);
        Ok(())
    }
}

impl Inner {
    /// Reads every block of the node in the buckets overlapping [from, to] and keeps the
    /// metric's points. Ordered by series (labels) then time; for a (series, timestamp) written
    /// twice the later write wins. At most `limit` points are held at any time.
    fn series(&self, q: &SeriesQuery) -> Result<Vec<Point>, StoreError> {
        let mut descs: Vec<(u64, Arc<SeriesDesc>)> = {
            let index = self.index.lock().map_err(|_| io("series index lock poisoned"))?;
            let ids = index.by_node.get(&q.node).and_then(|m| m.get(&q.metric)).cloned().unwrap_or_default();
            ids.into_iter().filter_map(|id| index.descs.get(&id).map(|d| (id, d.clone()))).collect()
        };
        if descs.is_empty() || q.limit == 0 || q.from_ms > q.to_ms {
            return Ok(Vec::new());
        }
        descs.sort_by(|a, b| a.1.labels.cmp(&b.1.labels));
        // series id → its position in the output order.
        let rank: foldhash::HashMap<u64, usize> = descs.iter().enumerate().map(|(i, (id, _))| (*id, i)).collect();
        let mut points: BTreeMap<(usize, i64), f64> = BTreeMap::new();
        let mut keep = |r: usize, ts: i64, value: f64| {
            if ts < q.from_ms || ts > q.to_ms {
                return;
            }
            points.insert((r, ts), value);
            if points.len() > q.limit {
                points.pop_last();
            }
        };
        let first_bucket = q.from_ms.div_euclid(BUCKET_MS) * BUCKET_MS;
        let last_bucket = q.to_ms.div_euclid(BUCKET_MS) * BUCKET_MS;
        // Keyspaces and snapshot are taken together under the day lock: compaction creates a
        // `chunks_` keyspace before it moves blocks into it, and drops a `samples_` keyspace only
        // after the last of its blocks moved.
        let (snapshot, days) = {
            let days = self.days.lock().map_err(|_| io("day keyspace lock poisoned"))?;
            let (from, to) = (day_of(first_bucket), day_of(q.to_ms));
            let mut found: BTreeMap<i64, (Option<Keyspace>, Option<Keyspace>)> = BTreeMap::new();
            for name in self.db.list_keyspace_names() {
                let Some((prefix, day)) = day_from_name(&name) else { continue };
                if day < from || day > to || !matches!(prefix.as_str(), "chunks" | "samples") {
                    continue;
                }
                let ks = self.find_keyspace_locked(&days, &name)?;
                let entry = found.entry(day).or_default();
                if prefix == "chunks" { entry.0 = ks } else { entry.1 = ks }
            }
            (self.db.snapshot(), found)
        };
        let corrupt = |what: &str, keyspace: &str, day: i64, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("{what} of node {:?} in {}: {e}", q.node, day_name(keyspace, day)))
        };
        for (day, (chunks, blocks)) in days {
            // bucket → the last block its chunks hold.
            let mut through: HashMap<i64, u64> = HashMap::new();
            if let Some(ks) = chunks {
                let range = chunk_key(&q.node, first_bucket, 0)..=chunk_key(&q.node, last_bucket, u16::MAX);
                for item in snapshot.range(&ks, range) {
                    let (k, v) = item.into_inner().map_err(io)?;
                    let start = chunk_bucket(&k).ok_or_else(|| corrupt("chunk key", "chunks", day, &"too short"))?;
                    through.insert(start, chunk::through_block(&v).map_err(|e| corrupt("chunk", "chunks", day, &e))?);
                    chunk::decode(
                        start,
                        &v,
                        |id| rank.contains_key(&id),
                        |id, ts, value| {
                            if let Some(&r) = rank.get(&id) {
                                keep(r, ts, value);
                            }
                        },
                    )
                    .map_err(|e| corrupt("chunk", "chunks", day, &e))?;
                }
            }
            if let Some(ks) = blocks {
                let range = block_key(&q.node, first_bucket, 0)..=block_key(&q.node, last_bucket, u64::MAX);
                for item in snapshot.range(&ks, range) {
                    let (k, v) = item.into_inner().map_err(io)?;
                    let (_, start, n) =
                        parse_block_key(&k).ok_or_else(|| corrupt("sample block key", "samples", day, &"malformed"))?;
                    if through.get(&start).is_some_and(|&t| n <= t) {
                        continue;
                    }
                    block::decode(start, &v, |id, ts, value| {
                        if let Some(&r) = rank.get(&id) {
                            keep(r, ts, value);
                        }
                    })
                    .map_err(|e| corrupt("sample block", "samples", day, &e))?;
                }
            }
        }
        let labels: Vec<BTreeMap<String, String>> =
            descs.iter().map(|(_, d)| d.labels.iter().cloned().collect()).collect();
        Ok(points
            .into_iter()
            .map(|((r, ts), value)| Point {
                metric: descs[r].1.metric.clone(),
                labels: labels[r].clone(),
                timestamp_ms: ts,
                value,
            })
            .collect())
    }
}

/// How the embedded store is opened.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Compact closed buckets on a background thread. Default: on. Benchmarks and tests that
    /// want to say when compaction happens turn it off and call [`EmbeddedStore::compact`].
    pub background_compaction: bool,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self { background_compaction: true }
    }
}

/// The default store: no external service, survives kill -9.
#[derive(Clone)]
pub struct EmbeddedStore {
    /// First, so that dropping the last handle stops the thread before the database closes.
    _compactor: Option<Arc<compact::Compactor>>,
    inner: Arc<Inner>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, recovering from the journal after a crash.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, EmbeddedOptions::default())
    }

    pub fn open_with(dir: &Path, options: EmbeddedOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("creating data dir {}: {e}", dir.display())))?;
        let db = Database::builder(dir.join("store"))
            // Journal entries are mostly sample blocks (varints and float bits) that LZ4 barely
            // shrinks; compressing them cost ~4% of the controller's CPU at full ingest. Tables
            // written from the memtables are still compressed.
            .journal_compression(fjall::CompressionType::None)
            .open()
            .map_err(|e| StoreError::Io(format!("opening store in {}: {e}", dir.display())))?;
        let nodes = db.keyspace("nodes", KeyspaceCreateOptions::default).map_err(io)?;
        let series = db.keyspace("series", KeyspaceCreateOptions::default).map_err(io)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default).map_err(io)?;
        let events = db.keyspace("events", KeyspaceCreateOptions::default).map_err(io)?;
        let next_block = match meta.get(NEXT_BLOCK_KEY).map_err(io)? {
            Some(v) => u64::from_be_bytes(
                v.as_ref().try_into().map_err(|_| StoreError::Corrupt("next_block is not 8 bytes".into()))?,
            ),
            None => 0,
        };
        let mut index = SeriesIndex::default();
        index.next_id = 1;
        for item in series.iter() {
            let (k, v) = item.into_inner().map_err(io)?;
            let id = u64::from_be_bytes(
                k.as_ref().try_into().map_err(|_| StoreError::Corrupt("series key is not 8 bytes".into()))?,
            );
            let desc: SeriesDesc =
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(format!("series {id}: {e}")))?;
            index.insert(id, desc);
        }
        let inner = Arc::new(Inner {
            db,
            nodes,
            series,
            meta,
            events,
            index: Mutex::new(index),
            next_block: Mutex::new(next_block),
            days: Mutex::new(HashMap::new()),
            uncompacted: Mutex::new(BTreeMap::new()),
            scanned: AtomicBool::new(false),
            maintenance: Mutex::new(()),
        });
        let compactor = match options.background_compaction {
            true => Some(Arc::new(compact::start(&inner)?)),
            false => None,
        };
        Ok(Self { _compactor: compactor, inner })
    }

    /// Compacts, now and on the calling thread, every bucket that ended at or before
    /// `closed_before_ms` (the background thread does the same every minute for buckets closed
    /// [`COMPACT_LAG_MS`] ago and not written to for a while). For benchmarks, tests and tools;
    /// blocking.
    pub fn compact(&self, closed_before_ms: i64) -> Result<CompactionStats, StoreError> {
        self.inner.compact_closed(closed_before_ms, i64::MAX, &|| false)
    }

    /// Writes every keyspace's in-memory writes out to its tables and waits, so that the files
    /// say what the data takes at rest (the journal keeps what it holds until it rotates). For
    /// benchmarks; the store does not need it.
    pub fn flush(&self) -> Result<(), StoreError> {
        for name in self.inner.db.list_keyspace_names() {
            let ks = self.inner.db.keyspace(&name, KeyspaceCreateOptions::default).map_err(io)?;
            ks.rotate_memtable_and_wait().map_err(io)?;
        }
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Io(format!("store task failed: {e}")))?
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn load_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.blocking(|inner| {
            let mut out = Vec::new();
            for item in inner.nodes.iter() {
                let (k, v) = item.into_inner().map_err(io)?;
                let rec: NodeRecord = serde_json::from_slice(&v)
                    .map_err(|e| StoreError::Corrupt(format!("node record {:?}: {e}", String::from_utf8_lossy(&k))))?;
                out.push(rec);
            }
            Ok(out)
        })
        .await
    }

    async fn write(&self, set: WriteSet) -> Result<(), StoreError> {
        self.blocking(move |inner| inner.write(set)).await
    }

    async fn metric_names(&self, node: &str) -> Result<Vec<String>, StoreError> {
        let index = self.inner.index.lock().map_err(|_| io("series index lock poisoned"))?;
        Ok(index.by_node.get(node).map(|m| m.keys().cloned().collect()).unwrap_or_default())
    }

    async fn series(&self, q: &SeriesQuery) -> Result<Vec<Point>, StoreError> {
        let q = q.clone();
        self.blocking(move |inner| inner.series(&q)).await
    }

    async fn logs(&self, q: &LogQuery) -> Result<Vec<StoredLog>, StoreError> {
        let q = q.clone();
        self.blocking(move |inner| {
            let mut out = Vec::new();
            let mut lo = q.node.as_bytes().to_vec();
            lo.push(0);
            let mut hi = lo.clone();
            lo.extend_from_slice(&ts_bytes(q.from_ms));
            hi.extend_from_slice(&ts_bytes(q.to_ms));
            hi.extend_from_slice(&[0xff; 12]);
            let days = inner.existing_days("logs", q.from_ms, q.to_ms);
            for day in days.iter().rev() {
                let ks = inner.day_keyspace(day)?;
                for item in ks.range(lo.clone()..=hi.clone()).rev() {
                    let (k, v) = item.into_inner().map_err(io)?;
                    let record =
                        LogRecord::decode(v.as_ref()).map_err(|e| StoreError::Corrupt(format!("log record: {e}")))?;
                    if q.min_level.is_some_and(|min| record.level < min) {
                        continue;
                    }
                    let seq_at = k.len().saturating_sub(12);
                    let seq =
                        k.get(seq_at..seq_at + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
                    out.push(StoredLog { node: q.node.clone(), seq, record });
                    if out.len() >= q.limit {
                        return Ok(out);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn enforce_retention(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        self.blocking(move |inner| {
            let _maintenance = inner.maintenance.lock().map_err(|_| io("maintenance lock poisoned"))?;
            let cutoff_day = day_of(cutoff_ms);
            let mut dropped = 0;
            let names: BTreeSet<String> = inner.db.list_keyspace_names().into_iter().map(|n| n.to_string()).collect();
            for name in names {
                let Some((prefix, day)) = day_from_name(&name) else { continue };
                // A day keyspace holds data up to the end of its day: drop it only when all of it
                // is older than the cutoff.
                if matches!(prefix.as_str(), "samples" | "chunks" | "logs") && day < cutoff_day {
                    let mut days = inner.days.lock().map_err(|_| io("day keyspace lock poisoned"))?;
                    let ks = match days.remove(&name) {
                        Some(ks) => ks,
                        None => inner.db.keyspace(&name, KeyspaceCreateOptions::default).map_err(io)?,
                    };
                    inner.db.delete_keyspace(ks).map_err(io)?;
                    dropped += 1;
                }
            }
            Ok(dropped)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn write_events(&self, events: Vec<EventRecord>) -> Result<(), StoreError> {
        self.blocking(move |inner| {
            let mut wb = inner.db.batch().durability(Some(fjall::PersistMode::SyncAll));
            for e in &events {
                let mut k = Vec::with_capacity(17);
                k.push(event_kind_byte(e.kind));
                k.extend_from_slice(&ts_bytes(e.ts_ms));
                k.extend_from_slice(&rand_suffix().to_be_bytes());
                wb.insert(&inner.events, k, serde_json::to_vec(e).map_err(io)?);
            }
            wb.commit().map_err(io)
        })
        .await
    }

    async fn events(&self, kind: EventKind, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        self.blocking(move |inner| {
            let mut out = Vec::new();
            for item in inner.events.prefix([event_kind_byte(kind)]).rev() {
                let (_, v) = item.into_inner().map_err(io)?;
                out.push(serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(format!("event: {e}")))?);
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }
}

fn event_kind_byte(k: EventKind) -> u8 {
    match k {
        EventKind::Action => 1,
        EventKind::Anomaly => 2,
        EventKind::Outlier => 3,
        EventKind::Changepoint => 4,
        EventKind::Forecast => 5,
    }
}

/// Keeps two events with the same kind and millisecond apart.
fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use medic_proto::v1::{Batch, Label, LogLevel, MetricKind, Sample};

    fn sample(metric: &str, cpu: &str, ts: i64, v: f64) -> Sample {
        Sample {
            metric: metric.into(),
            labels: vec![Label::new("cpu", cpu)],
            timestamp_ms: ts,
            value: v,
            kind: MetricKind::Counter as i32,
        }
    }

    fn log(ts: i64, level: LogLevel, msg: &str) -> LogRecord {
        LogRecord {
            timestamp_ms: ts,
            source: "/var/log/x.log".into(),
            level: level as i32,
            message: msg.into(),
            fields: vec![],
        }
    }

    fn set(node: &str, seq: u64, samples: Vec<Sample>, logs: Vec<LogRecord>) -> WriteSet {
        WriteSet {
            batches: vec![(node.into(), Arc::new(Batch { seq, created_unix_ms: 0, samples, logs, series: vec![] }))],
            nodes: vec![NodeRecord {
                node: node.into(),
                spool_id: "s".into(),
                last_seq: seq,
                batches: seq,
                ..Default::default()
            }],
        }
    }

    const T0: i64 = 1_763_942_400_000; // 2025-11-24T00:00:00Z

    #[tokio::test]
    async fn what_was_written_is_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store
                .write(set(
                    "n1",
                    1,
                    vec![sample("cpu_total", "0", T0, 1.0), sample("cpu_total", "1", T0, 2.0)],
                    vec![log(T0, LogLevel::Error, "boom")],
                ))
                .await
                .unwrap();
            store.write(set("n1", 2, vec![sample("cpu_total", "0", T0 + 10_000, 3.0)], vec![])).await.unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let nodes = store.load_nodes().await.unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!((nodes[0].node.as_str(), nodes[0].last_seq), ("n1", 2));
        assert_eq!(store.metric_names("n1").await.unwrap(), ["cpu_total"]);
        let q = SeriesQuery {
            node: "n1".into(),
            metric: "cpu_total".into(),
            from_ms: T0 - 1,
            to_ms: T0 + 60_000,
            limit: 100,
        };
        let points = store.series(&q).await.unwrap();
        let got: Vec<(&str, i64, f64)> =
            points.iter().map(|p| (p.labels["cpu"].as_str(), p.timestamp_ms, p.value)).collect();
        assert_eq!(got, [("0", T0, 1.0), ("0", T0 + 10_000, 3.0), ("1", T0, 2.0)]);
        // New series after reopening get fresh ids, not ones already used.
        store.write(set("n1", 3, vec![sample("cpu_total", "2", T0, 9.0)], vec![])).await.unwrap();
        assert_eq!(store.series(&q).await.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn series_queries_respect_the_time_range_across_days() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let day = DAY_MS;
        store
            .write(set("n", 1, (0..5).map(|d| sample("m_total", "0", T0 + d * day, d as f64)).collect(), vec![]))
            .await
            .unwrap();
        let q = SeriesQuery {
            node: "n".into(),
            metric: "m_total".into(),
            from_ms: T0 + day,
            to_ms: T0 + 3 * day,
            limit: 100,
        };
        let values: Vec<f64> = store.series(&q).await.unwrap().iter().map(|p| p.value).collect();
        assert_eq!(values, [1.0, 2.0, 3.0]);
        let limited = store.series(&SeriesQuery { limit: 2, ..q }).await.unwrap();
        assert_eq!(limited.len(), 2);
    }

    fn query(node: &str, metric: &str, from_ms: i64, to_ms: i64, limit: usize) -> SeriesQuery {
        SeriesQuery { node: node.into(), metric: metric.into(), from_ms, to_ms, limit }
    }

    #[tokio::test]
    async fn a_sample_written_twice_reads_back_once_with_the_later_value() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.write(set("n", 1, vec![sample("m_total", "0", T0, 1.0)], vec![])).await.unwrap();
        store.write(set("n", 2, vec![sample("m_total", "0", T0, 2.0)], vec![])).await.unwrap();
        drop(store);
        // The block counter survives a restart, so the rewrite after it still sorts last.
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.write(set("n", 3, vec![sample("m_total", "0", T0, 3.0)], vec![])).await.unwrap();
        let got = store.series(&query("n", "m_total", T0, T0, 10)).await.unwrap();
        assert_eq!(got.iter().map(|p| (p.timestamp_ms, p.value)).collect::<Vec<_>>(), [(T0, 3.0)]);
    }

    #[tokio::test]
    async fn one_batch_spanning_buckets_and_days_reads_back_in_series_then_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let end_of_day = T0 + DAY_MS - 1;
        let samples = vec![
            sample("m_total", "1", end_of_day + 1, 5.0),
            sample("m_total", "0", end_of_day, 2.0),
            sample("m_total", "0", T0 + BUCKET_MS, 1.5),
            sample("m_total", "0", T0, 1.0),
            sample("other", "0", T0, 9.0),
            sample("m_total", "1", T0 + BUCKET_MS - 1, 4.0),
            sample("m_total", "0", end_of_day + 1, 3.0),
        ];
        store.write(set("n", 1, samples, vec![])).await.unwrap();
        let got: Vec<(String, i64, f64)> = store
            .series(&query("n", "m_total", T0, T0 + 2 * DAY_MS, 100))
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.labels["cpu"].clone(), p.timestamp_ms, p.value))
            .collect();
        let want = [
            ("0", T0, 1.0),
            ("0", T0 + BUCKET_MS, 1.5),
            ("0", end_of_day, 2.0),
            ("0", end_of_day + 1, 3.0),
            ("1", T0 + BUCKET_MS - 1, 4.0),
            ("1", end_of_day + 1, 5.0),
        ];
        assert_eq!(got, want.map(|(c, t, v)| (c.to_string(), t, v)));
        // The limit keeps the first points in that order; the range is inclusive at both ends
        // and cuts inside buckets.
        let limited = store.series(&query("n", "m_total", T0, T0 + 2 * DAY_MS, 3)).await.unwrap();
        assert_eq!(limited.iter().map(|p| p.value).collect::<Vec<_>>(), [1.0, 1.5, 2.0]);
        let inner = store.series(&query("n", "m_total", T0 + 1, end_of_day, 100)).await.unwrap();
        assert_eq!(inner.iter().map(|p| p.value).collect::<Vec<_>>(), [1.5, 2.0, 4.0]);
        assert!(store.series(&query("n", "m_total", T0, T0 + DAY_MS, 0)).await.unwrap().is_empty());
        assert!(store.series(&query("other-node", "m_total", T0, T0 + DAY_MS, 9)).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn logs_come_newest_first_filtered_by_minimum_level() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let logs = vec![
            log(T0, LogLevel::Info, "a"),
            log(T0 + 1, LogLevel::Error, "b"),
            log(T0 + 2, LogLevel::Warning, "c"),
            log(T0 + 3, LogLevel::Fatal, "d"),
        ];
        store.write(set("n", 7, vec![], logs)).await.unwrap();
        let q = LogQuery {
            node: "n".into(),
            min_level: Some(LogLevel::Warning as i32),
            from_ms: 0,
            to_ms: T0 + day_ms(),
            limit: 10,
        };
        let got: Vec<String> = store.logs(&q).await.unwrap().into_iter().map(|l| l.record.message).collect();
        assert_eq!(got, ["d", "c", "b"]);
        let all = store.logs(&LogQuery { min_level: None, limit: 2, ..q }).await.unwrap();
        assert_eq!(all.iter().map(|l| (l.record.message.as_str(), l.seq)).collect::<Vec<_>>(), [("d", 7), ("c", 7)]);
        assert!(
            store
                .logs(&LogQuery { node: "other".into(), min_level: None, from_ms: 0, to_ms: i64::MAX / 2, limit: 10 })
                .await
                .unwrap()
                .is_empty()
        );
    }

    fn day_ms() -> i64 {
        DAY_MS
    }

    #[tokio::test]
    async fn retention_drops_whole_days_older_than_the_cutoff_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store
            .write(set(
                "n",
                1,
                (0..3).map(|d| sample("m_total", "0", T0 + d * DAY_MS, d as f64)).collect(),
                vec![log(T0, LogLevel::Info, "old")],
            ))
            .await
            .unwrap();
        // Cutoff in the middle of day 1: day 0 goes, day 1 (partly younger) stays.
        let dropped = store.enforce_retention(T0 + DAY_MS + DAY_MS / 2).await.unwrap();
        assert_eq!(dropped, 2, "samples and logs of day 0");
        let q =
            SeriesQuery { node: "n".into(), metric: "m_total".into(), from_ms: 0, to_ms: T0 + 10 * DAY_MS, limit: 100 };
        let values: Vec<f64> = store.series(&q).await.unwrap().iter().map(|p| p.value).collect();
        assert_eq!(values, [1.0, 2.0]);
    }

    // ---- Compaction: the chunks must say exactly what the blocks said. ----

    fn manual(dir: &Path) -> EmbeddedStore {
        EmbeddedStore::open_with(dir, EmbeddedOptions { background_compaction: false }).unwrap()
    }

    /// Every point of `metric` on `node`, as (cpu label, timestamp, value bits).
    async fn all_points(store: &EmbeddedStore, node: &str, metric: &str) -> Vec<(String, i64, u64)> {
        store
            .series(&query(node, metric, i64::MIN / 2, i64::MAX / 2, usize::MAX))
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.labels["cpu"].clone(), p.timestamp_ms, p.value.to_bits()))
            .collect()
    }

    fn keyspaces(store: &EmbeddedStore, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = store
            .inner
            .db
            .list_keyspace_names()
            .into_iter()
            .map(|n| n.to_string())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        names
    }

    /// Values that must survive bit for bit, however they are encoded.
    fn awkward_values() -> Vec<f64> {
        vec![
            0.0,
            -0.0,
            f64::NAN,
            f64::from_bits(0x7ff8_dead_beef_0001),
            f64::from_bits(0xfff0_0000_0000_0001),
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE / 3.0,
            f64::MAX,
            0.1 + 0.2,
            123.45,
            1e15 + 0.5,
        ]
    }

    /// Batches over two days and several buckets: decimal counters, awkward values, a point
    /// written twice in one batch, and points rewritten by later batches.
    async fn write_history(store: &EmbeddedStore, node: &str) {
        let awkward = awkward_values();
        let mut seq = 0;
        for round in 0..40i64 {
            let ts = T0 + DAY_MS - 100_000 + round * 10_000;
            let mut samples = vec![
                sample("m_total", "0", ts, 1_000.0 + round as f64 * 0.37),
                sample("m_total", "1", ts, awkward[round as usize % awkward.len()]),
                sample("m_total", "2", ts + 1, (round * 4096) as f64),
            ];
            if round % 7 == 3 {
                // Twice in one batch: the later one counts.
                samples.push(sample("m_total", "2", ts + 1, -1.0));
                samples.push(sample("m_total", "2", ts + 1, -2.0));
            }
            seq += 1;
            store.write(set(node, seq, samples, vec![])).await.unwrap();
        }
        // A later batch rewriting points of several buckets (a replay with new values).
        let rewrite = (0..40i64).step_by(9).map(|r| sample("m_total", "0", T0 + DAY_MS - 100_000 + r * 10_000, 7.5));
        store.write(set(node, seq + 1, rewrite.collect(), vec![])).await.unwrap();
    }

    #[tokio::test]
    async fn compaction_keeps_every_point_bit_exactly_and_later_writes_still_win() {
        let dir = tempfile::tempdir().unwrap();
        let store = manual(dir.path());
        write_history(&store, "n").await;
        write_history(&store, "other").await;
        let before = all_points(&store, "n", "m_total").await;
        assert_eq!(before.len(), 120);
        let twice = before.iter().find(|p| p.0 == "2" && p.1 == T0 + DAY_MS - 100_000 + 3 * 10_000 + 1).unwrap();
        assert_eq!(f64::from_bits(twice.2), -2.0);
        assert_eq!(before.iter().filter(|p| p.0 == "0" && f64::from_bits(p.2) == 7.5).count(), 5);

        let stats = store.compact(i64::MAX).unwrap();
        assert_eq!(stats.points, 240, "{stats:?}");
        assert!(stats.buckets == 4 && stats.bytes_out < stats.bytes_in / 2, "{stats:?}");
        assert_eq!(all_points(&store, "n", "m_total").await, before);
        // Nothing is left to compact, and the blocks' day keyspaces went.
        assert_eq!(store.compact(i64::MAX).unwrap().buckets, 0);
        assert!(keyspaces(&store, "samples_").is_empty(), "{:?}", keyspaces(&store, "samples_"));
        drop(store);
        let store = manual(dir.path());
        assert_eq!(all_points(&store, "n", "m_total").await, before);
        assert_eq!(all_points(&store, "other", "m_total").await.len(), 120);
    }

    #[tokio::test]
    async fn the_background_thread_compacts_what_an_earlier_run_left_and_stops_with_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = manual(dir.path());
        write_history(&store, "n").await;
        let want = all_points(&store, "n", "m_total").await;
        drop(store);
        // Blocks found at startup have no recent write: the first pass (5 s after opening)
        // compacts them.
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !keyspaces(&store, "samples_").is_empty() {
            assert!(std::time::Instant::now() < deadline, "nothing compacted: {:?}", keyspaces(&store, "samples_"));
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(keyspaces(&store, "chunks_").len(), 2);
        assert_eq!(all_points(&store, "n", "m_total").await, want);
        // Closing does not wait for the next pass, and leaves the directory free to open again.
        let closing = std::time::Instant::now();
        drop(store);
        assert!(closing.elapsed() < std::time::Duration::from_secs(5), "{:?}", closing.elapsed());
        let store = manual(dir.path());
        assert_eq!(all_points(&store, "n", "m_total").await, want);
    }

    #[tokio::test]
    async fn a_batch_replayed_after_compaction_wins_before_and_after_the_next_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = manual(dir.path());
        store
            .write(set("n", 1, vec![sample("m_total", "0", T0, 1.0), sample("m_total", "0", T0 + 10_000, 2.0)], vec![]))
            .await
            .unwrap();
        store.compact(i64::MAX).unwrap();
        // A replay of the first point with another value, and a new point, in the compacted
        // bucket.
        store
            .write(set("n", 2, vec![sample("m_total", "0", T0, 10.0), sample("m_total", "0", T0 + 5_000, 5.0)], vec![]))
            .await
            .unwrap();
        let values = |p: Vec<(String, i64, u64)>| -> Vec<(i64, f64)> {
            p.into_iter().map(|(_, t, v)| (t - T0, f64::from_bits(v))).collect()
        };
        let want: Vec<(i64, f64)> = vec![(0, 10.0), (5_000, 5.0), (10_000, 2.0)];
        assert_eq!(values(all_points(&store, "n", "m_total").await), want);
        assert_eq!(store.compact(i64::MAX).unwrap().blocks, 1);
        assert_eq!(values(all_points(&store, "n", "m_total").await), want);
        // And once more over the merged chunk, across a restart.
        store.write(set("n", 3, vec![sample("m_total", "0", T0 + 10_000, -0.0)], vec![])).await.unwrap();
        drop(store);
        let store = manual(dir.path());
        let got: Vec<(i64, u64)> =
            all_points(&store, "n", "m_total").await.into_iter().map(|(_, t, v)| (t - T0, v)).collect();
        assert_eq!(got, [(0, 10f64.to_bits()), (5_000, 5f64.to_bits()), (10_000, (-0.0f64).to_bits())]);
        store.compact(i64::MAX).unwrap();
        let again: Vec<(i64, u64)> =
            all_points(&store, "n", "m_total").await.into_iter().map(|(_, t, v)| (t - T0, v)).collect();
        assert_eq!(again, got);
    }

    #[tokio::test]
    async fn only_buckets_closed_before_the_cutoff_are_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let store = manual(dir.path());
        let samples = (0..3).map(|b| sample("m_total", "0", T0 + b * BUCKET_MS, b as f64)).collect();
        store.write(set("n", 1, samples, vec![])).await.unwrap();
        // The second bucket ends at T0 + 2 buckets: closed at that instant, not a millisecond before.
        assert_eq!(store.compact(T0 + 2 * BUCKET_MS - 1).unwrap().buckets, 1);
        assert_eq!(store.compact(T0 + 2 * BUCKET_MS).unwrap().buckets, 1);
        assert_eq!(store.compact(T0 + 2 * BUCKET_MS).unwrap().buckets, 0);
        // The day is not over: its blocks keyspace stays, holding the open bucket.
        assert_eq!(keyspaces(&store, "samples_").len(), 1);
        assert_eq!(all_points(&store, "n", "m_total").await.len(), 3);
    }

    /// How far the journal has been written: fjall preallocates it with zeros.
    fn journal_end(dir: &Path) -> (PathBuf, usize) {
        let mut journals: Vec<PathBuf> = std::fs::read_dir(dir.join("store"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
            .collect();
        journals.sort();
        let path = journals.pop().expect("a journal");
        let bytes = std::fs::read(&path).unwrap();
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        (path, end)
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn a_crash_anywhere_in_a_compaction_loses_and_duplicates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = manual(dir.path());
        write_history(&store, "n").await;
        let want = all_points(&store, "n", "m_total").await;
        let (_, before) = journal_end(dir.path());
        let buckets: Vec<(i64, String)> = store.inner.uncompacted.lock().unwrap().keys().cloned().collect();
        for (bucket, node) in &buckets {
            store.inner.compact_bucket(node, *bucket, compact::PART_LIMITS).unwrap();
        }
        store.inner.db.persist(PersistMode::SyncAll).unwrap();
        // The files as a power cut would leave them, with the compactions' journal entries torn
        // anywhere from their first byte to their last.
        let image = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), image.path());
        drop(store);
        let (journal, after) = journal_end(image.path());
        assert!(after > before + 100, "the compactions wrote to the journal: {before}..{after}");
        let step = ((after - before) / 60).max(1);
        for cut in (before..=after).step_by(step).chain([after]) {
            let crash = tempfile::tempdir().unwrap();
            copy_dir(image.path(), crash.path());
            let jnl = crash.path().join(journal.strip_prefix(image.path()).unwrap());
            let mut bytes = std::fs::read(&jnl).unwrap();
            bytes[cut..after].fill(0);
            std::fs::write(&jnl, bytes).unwrap();
            let store = manual(crash.path());
            assert_eq!(all_points(&store, "n", "m_total").await, want, "journal cut at {cut} of {before}..{after}");
            store.compact(i64::MAX).unwrap();
            assert_eq!(all_points(&store, "n", "m_total").await, want, "compacted again after a cut at {cut}");
        }
    }

    #[tokio::test]
    async fn reads_during_compaction_see_every_point_of_one_write_or_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let store = manual(dir.path());
        // Five series in three buckets, two of them on either side of a day boundary; every
        // write rewrites all fifteen points with its own value.
        let stamps = [T0 + DAY_MS - BUCKET_MS - 1, T0 + DAY_MS - 1, T0 + DAY_MS];
        let batch = |seq: u64| {
            let samples = stamps
                .iter()
                .flat_map(|&t| (0..5).map(move |c| sample("m_total", &c.to_string(), t, seq as f64)))
                .collect();
            set("n", seq, samples, vec![])
        };
        store.write(batch(1)).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let compactor = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut passes = 0;
                while !stop.load(Ordering::Relaxed) {
                    store.compact(i64::MAX).unwrap();
                    passes += 1;
                }
                passes
            })
        };
        let reader = {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) {
                    let got = all_points(&store, "n", "m_total").await;
                    assert_eq!(got.len(), 15, "{got:?}");
                    assert!(got.iter().all(|p| p.2 == got[0].2), "one write's values, not a mix: {got:?}");
                    reads += 1;
                    tokio::task::yield_now().await;
                }
                reads
            })
        };
        for seq in 2..=60 {
            store.write(batch(seq)).await.unwrap();
            let got = all_points(&store, "n", "m_total").await;
            assert!(got.iter().all(|p| f64::from_bits(p.2) == seq as f64), "after write {seq}: {got:?}");
        }
        stop.store(true, Ordering::Relaxed);
        let passes = compactor.join().unwrap();
        let reads = reader.await.unwrap();
        assert!(passes > 0 && reads > 0, "{passes} compactions, {reads} reads");
    }

    #[tokio::test]
    async fn retention_drops_compacted_days_whole_and_a_late_batch_for_a_compacted_day_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = manual(dir.path());
        let days = (0..3).map(|d| sample("m_total", "0", T0 + d * DAY_MS, d as f64)).collect();
        store.write(set("n", 1, days, vec![log(T0, LogLevel::Info, "old")])).await.unwrap();
        let stats = store.compact(i64::MAX).unwrap();
        assert_eq!((stats.buckets, stats.days_dropped), (3, 3));
        assert_eq!(keyspaces(&store, "chunks_").len(), 3);
        // A late batch for the first day lands as a block beside its chunks.
        store.write(set("n", 2, vec![sample("m_total", "0", T0 + 1, 0.5)], vec![])).await.unwrap();
        assert_eq!(keyspaces(&store, "samples_").len(), 1);
        let values = |p: Vec<(String, i64, u64)>| p.into_iter().map(|(_, _, v)| f64::from_bits(v)).collect::<Vec<_>>();
        assert_eq!(values(all_points(&store, "n", "m_total").await), [0.0, 0.5, 1.0, 2.0]);
        store.compact(i64::MAX).unwrap();
        assert_eq!(values(all_points(&store, "n", "m_total").await), [0.0, 0.5, 1.0, 2.0]);
        // Day 0 (its chunks and logs) goes whole; day 1, partly younger than the cutoff, stays.
        let dropped = store.enforce_retention(T0 + DAY_MS + DAY_MS / 2).await.unwrap();
        assert_eq!(dropped, 2);
        assert_eq!(values(all_points(&store, "n", "m_total").await), [1.0, 2.0]);
        assert_eq!(keyspaces(&store, "chunks_").len(), 2);
    }

    #[tokio::test]
    async fn a_corrupt_chunk_is_an_error_for_its_reads_and_compactions_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = manual(dir.path());
        let samples = (0..30).map(|i| sample("m_total", "0", T0 + i * 10_000, i as f64)).collect();
        store.write(set("n", 1, samples, vec![])).await.unwrap();
        store.write(set("n", 2, vec![sample("m_total", "0", T0 + DAY_MS, 1.0)], vec![])).await.unwrap();
        store.compact(i64::MAX).unwrap();
        let ks = store.inner.day_keyspace(&day_name("chunks", day_of(T0))).unwrap();
        let key = chunk_key("n", T0, 0);
        let good = ks.get(&key).unwrap().unwrap().to_vec();
        for bad in [good[..good.len() / 2].to_vec(), vec![chunk::FORMAT, 0xff, 0xff], vec![7; 40], vec![]] {
            ks.insert(&key, bad).unwrap();
            let err = store.series(&query("n", "m_total", T0, T0 + BUCKET_MS, 100)).await.unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
            // Another day still reads.
            assert_eq!(store.series(&query("n", "m_total", T0 + DAY_MS, T0 + DAY_MS, 100)).await.unwrap().len(), 1);
            // A late batch for the bucket cannot be merged with it: an error, and the batch
            // stays readable as a block once the chunk is repaired.
            store.write(set("n", 3, vec![sample("m_total", "0", T0 + 5, 0.5)], vec![])).await.unwrap();
            assert!(store.compact(i64::MAX).is_err());
        }
        ks.insert(&key, good).unwrap();
        let got = store.series(&query("n", "m_total", T0, T0 + BUCKET_MS, 100)).await.unwrap();
        assert_eq!(got.len(), 31);
        assert_eq!(got[1].value, 0.5);
        store.compact(i64::MAX).unwrap();
        assert_eq!(store.series(&query("n", "m_total", T0, T0 + BUCKET_MS, 100)).await.unwrap(), got);
    }

    #[tokio::test]
    async fn a_bucket_too_large_for_one_value_is_split_into_parts_and_merged_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = manual(dir.path());
        let series = |seq: u64, value: f64| {
            let samples = (0..40).flat_map(|c| (0..5).map(move |i| sample("m_total", &c.to_string(), T0 + i, value)));
            set("n", seq, samples.collect(), vec![])
        };
        store.write(series(1, 1.0)).await.unwrap();
        let small = compact::PartLimits { single_part_bytes: 0, points_per_part: 30 };
        store.inner.compact_bucket("n", T0, small).unwrap();
        let ks = store.inner.day_keyspace(&day_name("chunks", day_of(T0))).unwrap();
        let parts = || ks.prefix(&chunk_key("n", T0, 0)[.."n".len() + 9]).count();
        assert_eq!(parts(), 7, "40 series of 5 points, 6 series (30 points) a part");
        let all = all_points(&store, "n", "m_total").await;
        assert_eq!(all.len(), 200);
        // A replay of half the points, merged into parts of another size: the old parts beyond
        // the new split are gone.
        let half = (0..40).step_by(2).map(|c| sample("m_total", &c.to_string(), T0 + 2, 9.0));
        store.write(set("n", 2, half.collect(), vec![])).await.unwrap();
        let larger = compact::PartLimits { single_part_bytes: 0, points_per_part: 150 };
        store.inner.compact_bucket("n", T0, larger).unwrap();
        assert_eq!(parts(), 2);
        let merged = all_points(&store, "n", "m_total").await;
        assert_eq!(merged.len(), 200);
        assert_eq!(merged.iter().filter(|p| f64::from_bits(p.2) == 9.0).count(), 20);
        store.inner.compact_bucket("n", T0, compact::PART_LIMITS).unwrap();
        assert_eq!(all_points(&store, "n", "m_total").await, merged);
    }
}
