//! Collectors: each turns one source (a /proc file, a log file, a ClickHouse system table) into
//! samples or log records. Collectors never block each other: a failing one reports its error and
//! the rest keep going.

pub mod agent;
pub mod clickhouse;
pub mod host;
pub mod logs;

use medic_proto::v1::{Label, MetricKind, Sample};

/// Why a collector could not produce its samples this round.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Parse { path: String, message: String },
}

impl CollectError {
    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
    pub fn parse(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Parse { path: path.into(), message: message.into() }
    }
}

/// One source of samples, polled once per collection interval.
pub trait Collector: Send {
    /// Short name used in logs and in `medic_agent_collector_errors_total{collector}`.
    fn name(&self) -> &'static str;
    /// Appends this round's samples to `out`, all stamped with `now_ms`.
    fn collect(&mut self, now_ms: i64, out: &mut Vec<Sample>) -> Result<(), CollectError>;
}

/// Builds samples with sorted labels, so equal label sets always encode identically.
pub fn sample(metric: &str, labels: &[(&str, &str)], now_ms: i64, value: f64, kind: MetricKind) -> Sample {
    let mut labels: Vec<Label> = labels.iter().map(|(n, v)| Label::new(*n, *v)).collect();
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    Sample { metric: metric.to_string(), labels, timestamp_ms: now_ms, value, kind: kind as i32 }
}

pub fn gauge(metric: &str, labels: &[(&str, &str)], now_ms: i64, value: f64) -> Sample {
    sample(metric, labels, now_ms, value, MetricKind::Gauge)
}

/// Counter names end in `_total` (Prometheus convention); values are cumulative since boot/start.
pub fn counter(metric: &str, labels: &[(&str, &str)], now_ms: i64, value: f64) -> Sample {
    debug_assert!(metric.ends_with("_total"), "counter {metric} must end in _total");
    sample(metric, labels, now_ms, value, MetricKind::Counter)
}
