//! agentd's own metrics, plus the latest host and ClickHouse samples, served on /metrics in OpenMetrics format
//! so that Prometheus can scrape a node directly, as it would node_exporter.

use medic_proto::v1::{MetricKind, Sample};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use std::sync::{Arc, RwLock};

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct CollectorLabels {
    pub collector: String,
}

pub struct AgentMetrics {
    pub registry: Registry,
    pub batches_sent: Counter,
    pub batches_acked: Counter,
    pub spool_bytes: Gauge,
    pub spool_last_seq: Gauge,
    pub spool_acked_seq: Gauge,
    pub spool_batches: Gauge,
    pub spool_dropped_batches: Counter,
    pub spool_corrupt_records: Counter,
    pub spool_append_errors: Counter,
    pub connected: Gauge,
    pub reconnects: Counter,
    pub collector_errors: Family<CollectorLabels, Counter>,
    pub samples_collected: Counter,
    pub log_records_read: Counter,
    pub latest: Arc<LatestSamples>,
    /// The last ClickHouse collection round, exposed the same way (agentd doubles as the
    /// node's ClickHouse exporter for Prometheus).
    pub latest_clickhouse: Arc<LatestSamples>,
}

impl AgentMetrics {
    pub fn new() -> Self {
        let latest = Arc::new(LatestSamples::default());
        let latest_clickhouse = Arc::new(LatestSamples::default());
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("medic_agent");
        let m = Self {
            registry: Registry::default(),
            batches_sent: Counter::default(),
            batches_acked: Counter::default(),
            spool_bytes: Gauge::default(),
            spool_last_seq: Gauge::default(),
            spool_acked_seq: Gauge::default(),
            spool_batches: Gauge::default(),
            spool_dropped_batches: Counter::default(),
            spool_corrupt_records: Counter::default(),
            spool_append_errors: Counter::default(),
            connected: Gauge::default(),
            reconnects: Counter::default(),
            collector_errors: Family::default(),
            samples_collected: Counter::default(),
            log_records_read: Counter::default(),
            latest: latest.clone(),
            latest_clickhouse: latest_clickhouse.clone(),
        };
        r.register("batches_sent", "Batches sent to the controller (replays included)", m.batches_sent.clone());
        r.register("batches_acked", "Batches the controller acked as durably stored", m.batches_acked.clone());
        r.register("spool_bytes", "Bytes in the disk spool", m.spool_bytes.clone());
        r.register("spool_last_seq", "Highest batch sequence number assigned by the spool", m.spool_last_seq.clone());
        r.register("spool_acked_seq", "Highest batch sequence number the controller acked", m.spool_acked_seq.clone());
        r.register("spool_batches", "Batches in the spool not yet acked", m.spool_batches.clone());
        r.register(
            "spool_dropped_batches",
            "Unacked batches dropped because the spool reached its size cap",
            m.spool_dropped_batches.clone(),
        );
        r.register(
            "spool_corrupt_records",
            "Torn or corrupt spool records skipped at recovery",
            m.spool_corrupt_records.clone(),
        );
        r.register("spool_append_errors", "Failed spool appends (disk full, I/O error)", m.spool_append_errors.clone());
        r.register("connected", "1 while a stream to the controller is open", m.connected.clone());
        r.register("reconnects", "Connection attempts after the first", m.reconnects.clone());
        r.register("collector_errors", "Collection rounds a collector failed", m.collector_errors.clone());
        r.register("samples_collected", "Samples produced by the collectors", m.samples_collected.clone());
        r.register("log_records_read", "Log records read by the tailer", m.log_records_read.clone());
        root.register_collector(Box::new(latest));
        root.register_collector(Box::new(latest_clickhouse));
        Self { registry: root, ..m }
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The host samples of the last collection round, re-exposed as-is on /metrics.
#[derive(Debug, Default)]
pub struct LatestSamples {
    samples: RwLock<Vec<Sample>>,
}

impl LatestSamples {
    pub fn replace(&self, mut samples: Vec<Sample>) {
        // Families must be contiguous in the exposition; sort once here, not per scrape.
        samples.sort_by(|a, b| a.metric.cmp(&b.metric));
        if let Ok(mut g) = self.samples.write() {
            *g = samples;
        }
    }
}

struct Labels<'a>(&'a [medic_proto::v1::Label]);

impl prometheus_client::encoding::EncodeLabelSet for Labels<'_> {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        for l in self.0 {
            (l.name.as_str(), l.value.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

impl Collector for LatestSamples {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(samples) = self.samples.read() else { return Ok(()) };
        let mut i = 0;
        while i < samples.len() {
            let name = &samples[i].metric;
            let end = samples[i..].iter().position(|s| &s.metric != name).map_or(samples.len(), |p| i + p);
            let counter = samples[i].kind == MetricKind::Counter as i32;
            let (family, ty) = match name.strip_suffix("_total") {
                Some(base) if counter => (base, MetricType::Counter),
                _ => (name.as_str(), MetricType::Gauge),
            };
            let mut fam = encoder.encode_descriptor(family, "collected by agentd", None, ty)?;
            // An unlabelled metric is written `name value`, not `name{} value`.
            if end == i + 1 && samples[i].labels.is_empty() {
                let s = &samples[i];
                if counter {
                    ConstCounter::new(s.value.max(0.0)).encode(fam)?;
                } else {
                    ConstGauge::new(s.value).encode(fam)?;
                }
                i = end;
                continue;
            }
            for s in &samples[i..end] {
                let labels = Labels(&s.labels);
                let me = fam.encode_family(&labels)?;
                if counter {
                    ConstCounter::new(s.value.max(0.0)).encode(me)?;
                } else {
                    ConstGauge::new(s.value).encode(me)?;
                }
            }
            i = end;
        }
        Ok(())
    }
}
