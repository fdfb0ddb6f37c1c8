//! Telemetry storage behind one small trait, with two real implementations:
//! `embedded` (fjall, the default, under `--data-dir`) and ClickHouse (production).
//!
//! The one property every store must give the ingest path: a [`WriteSet`] — the batches *and* the
//! per-node delivery state that says they were stored — is applied atomically and durably, so a
//! crash can never leave batches stored without their sequence numbers (which would store a
//! replay twice) or sequence numbers without their batches (which would lose data).

pub mod clickhouse;
pub mod embedded;
pub mod events;

use async_trait::async_trait;
use medic_proto::v1::{Batch, LogRecord};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O: {0}")]
    Io(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("bad query: {0}")]
    BadQuery(String),
}

/// Delivery bookkeeping for one node, stored with its batches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    /// The agent's spool incarnation; sequence numbers are unique only within it.
    pub spool_id: String,
    /// Highest sequence number stored for `spool_id`.
    pub last_seq: u64,
    /// Distinct batches stored (over all spool incarnations).
    pub batches: u64,
    /// Sequence numbers never received (dropped by a full agent spool, or lost before it).
    pub seq_gaps: u64,
    /// Replayed batches recognised and not stored again.
    pub duplicates: u64,
    pub samples: u64,
    pub log_records: u64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub labels: Vec<(String, String)>,
    pub agent_version: String,
}

/// Batches accepted for storage, each with the node it came from.
#[derive(Debug, Default, Clone)]
pub struct WriteSet {
    pub batches: Vec<(String, Arc<Batch>)>,
    /// Final state of every node touched by `batches` (and nodes whose hello changed them).
    pub nodes: Vec<NodeRecord>,
}

#[derive(Debug, Clone)]
pub struct SeriesQuery {
    pub node: String,
    pub metric: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Upper bound on points returned, so a careless query cannot exhaust memory.
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub metric: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub timestamp_ms: i64,
    pub value: f64,
}

#[derive(Debug, Clone)]
pub struct LogQuery {
    pub node: String,
    /// Minimum level (inclusive); `None` returns all levels.
    pub min_level: Option<i32>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredLog {
    pub node: String,
    pub seq: u64,
    pub record: LogRecord,
}

/// What detection and remediation record: the audit log of actions, anomalies (including fleet
/// outliers and changepoints) and forecasts. `body` is the full record as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Action,
    Anomaly,
    Outlier,
    Changepoint,
    Forecast,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Action => "action",
            EventKind::Anomaly => "anomaly",
            EventKind::Outlier => "outlier",
            EventKind::Changepoint => "changepoint",
            EventKind::Forecast => "forecast",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [EventKind::Action, EventKind::Anomaly, EventKind::Outlier, EventKind::Changepoint, EventKind::Forecast]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub kind: EventKind,
    pub ts_ms: i64,
    pub node: String,
    pub body: serde_json::Value,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short name for logs and /healthz ("embedded", "clickhouse").
    fn kind(&self) -> &'static str;
    /// Delivery state of every node seen so far; the ingest path starts from it.
    async fn load_nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// The stored state of `nodes` as it is now, for a node that says hello: another controller
    /// sharing the store may have written it since this one last did. Also removes that node's
    /// rows of a write that never committed, before the agent replays them. Stores only one
    /// controller writes return nothing: its own view is current.
    async fn refresh_nodes(&self, _nodes: &[String]) -> Result<Vec<NodeRecord>, StoreError> {
        Ok(Vec::new())
    }
    /// Atomically and durably stores the batches and node records. When this returns Ok the
    /// controller may ack the batches.
    async fn write(&self, set: WriteSet) -> Result<(), StoreError>;
    /// Distinct metric names stored for a node.
    async fn metric_names(&self, node: &str) -> Result<Vec<String>, StoreError>;
    /// Points of every series of `metric` on `node` in [from, to], ordered by series then time.
    async fn series(&self, q: &SeriesQuery) -> Result<Vec<Point>, StoreError>;
    /// Newest-first log records.
    async fn logs(&self, q: &LogQuery) -> Result<Vec<StoredLog>, StoreError>;
    /// Drops telemetry older than `cutoff_ms`. Returns how many partitions/rows went.
    async fn enforce_retention(&self, cutoff_ms: i64) -> Result<u64, StoreError>;
    /// Cheap liveness probe for /healthz.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Durably records detection and remediation events.
    async fn write_events(&self, events: Vec<EventRecord>) -> Result<(), StoreError>;
    /// The newest events of a kind, newest first.
    async fn events(&self, kind: EventKind, limit: usize) -> Result<Vec<EventRecord>, StoreError>;
}
