//! The controller's own metrics, served on /metrics in OpenMetrics format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

pub struct Metrics {
    pub registry: Registry,
    /// Collectors that render their own full metric names (detection results), added after
    /// start-up by the components that own the state.
    collectors: std::sync::Mutex<Registry>,
    pub batches_stored: Counter,
    pub samples_stored: Counter,
    pub log_records_stored: Counter,
    pub duplicate_batches: Counter,
    pub seq_gaps: Counter,
    pub samples_rejected: Family<ReasonLabels, Counter>,
    pub streams_rejected: Family<ReasonLabels, Counter>,
    pub streams_opened: Counter,
    pub agents_connected: Gauge,
    pub store_up: Gauge,
    pub store_write_errors: Counter,
    pub store_write_seconds: Histogram,
    pub ingest_queue_batches: Gauge,
    pub ack_latency_seconds: Histogram,
    pub retention_dropped_partitions: Counter,
    pub build_info: Family<BuildLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub store: String,
}

impl Metrics {
    pub fn new(store_kind: &str) -> Self {
        let mut registry = Registry::with_prefix("medic");
        let m = Self {
            batches_stored: Counter::default(),
            samples_stored: Counter::default(),
            log_records_stored: Counter::default(),
            duplicate_batches: Counter::default(),
            seq_gaps: Counter::default(),
            samples_rejected: Family::default(),
            streams_rejected: Family::default(),
            streams_opened: Counter::default(),
            agents_connected: Gauge::default(),
            store_up: Gauge::default(),
            store_write_errors: Counter::default(),
            store_write_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            ingest_queue_batches: Gauge::default(),
            ack_latency_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            retention_dropped_partitions: Counter::default(),
            build_info: Family::default(),
            registry: Registry::default(),
            collectors: std::sync::Mutex::new(Registry::default()),
        };
        registry.register("ingest_batches_stored", "Distinct agent batches durably stored", m.batches_stored.clone());
        registry.register("ingest_samples_stored", "Samples durably stored", m.samples_stored.clone());
        registry.register("ingest_log_records_stored", "Log records durably stored", m.log_records_stored.clone());
        registry.register(
            "ingest_duplicate_batches",
            "Replayed batches recognised by (node, spool, seq) and not stored again",
            m.duplicate_batches.clone(),
        );
        registry.register("ingest_seq_gaps", "Batch sequence numbers never received", m.seq_gaps.clone());
        registry.register(
            "ingest_samples_rejected",
            "Samples or log records dropped at ingest, by reason",
            m.samples_rejected.clone(),
        );
        registry.register(
            "ingest_streams_rejected",
            "Agent streams refused or ended by an error, by reason",
            m.streams_rejected.clone(),
        );
        registry.register("ingest_streams_opened", "Agent streams accepted", m.streams_opened.clone());
        registry.register("agents_connected", "Agents with an open stream", m.agents_connected.clone());
        registry.register("store_up", "1 when the telemetry store accepts writes", m.store_up.clone());
        registry.register("store_write_errors", "Failed store writes (retried)", m.store_write_errors.clone());
        registry.register_with_unit(
            "store_write_duration",
            "Time to durably write one group of batches",
            prometheus_client::registry::Unit::Seconds,
            m.store_write_seconds.clone(),
        );
        registry.register(
            "ingest_queue_batches",
            "Batches waiting for the store writer",
            m.ingest_queue_batches.clone(),
        );
        registry.register_with_unit(
            "ingest_ack_latency",
            "From a batch's arrival to its ack being queued",
            prometheus_client::registry::Unit::Seconds,
            m.ack_latency_seconds.clone(),
        );
        registry.register(
            "store_retention_dropped_partitions",
            "Day partitions dropped by retention",
            m.retention_dropped_partitions.clone(),
        );
        registry.register("controller_build_info", "Controller version and store kind", m.build_info.clone());
        m.build_info
            .get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").into(), store: store_kind.into() })
            .set(1);
        Self { registry, ..m }
    }

    pub fn reject(&self, family: &Family<ReasonLabels, Counter>, reason: &str) {
        family.get_or_create(&ReasonLabels { reason: reason.to_string() }).inc();
    }

    /// Registers metrics that carry their full `medic_…` names themselves.
    pub fn register_unprefixed(&self, f: impl FnOnce(&mut Registry)) {
        if let Ok(mut r) = self.collectors.lock() {
            f(&mut r);
        }
    }

    pub fn register_collector(&self, c: impl prometheus_client::collector::Collector) {
        if let Ok(mut r) = self.collectors.lock() {
            r.register_collector(Box::new(c));
        }
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        use prometheus_client::encoding::text;
        let mut out = String::new();
        text::encode_registry(&mut out, &self.registry)?;
        if let Ok(r) = self.collectors.lock() {
            text::encode_registry(&mut out, &r)?;
        }
        text::encode_eof(&mut out)?;
        Ok(out)
    }
}
