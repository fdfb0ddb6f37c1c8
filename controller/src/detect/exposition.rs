//! Detection results on /metrics, rendered from the engine's current state at each scrape (so a
//! forecast that no longer applies disappears instead of lingering as a stale series).

use super::engine::DetectionState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

const MAX_SCORED: usize = 200;

#[derive(Debug)]
pub struct DetectionCollector(pub Arc<RwLock<DetectionState>>);

impl Collector for DetectionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(st) = self.0.read() else { return Ok(()) };
        // The highest-scoring series per (node, metric), at most MAX_SCORED of them: enough to
        // see what is odd without one series per sample of the fleet.
        let mut best: BTreeMap<(&str, &str), f64> = BTreeMap::new();
        for c in st.scores.values() {
            let e = best.entry((c.node.as_str(), c.metric.as_str())).or_insert(0.0);
            *e = e.max(c.score);
        }
        let mut top: Vec<((&str, &str), f64)> = best.into_iter().collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        top.truncate(MAX_SCORED);
        let mut e = encoder.encode_descriptor(
            "medic_anomaly_score",
            "Current anomaly score (0..1, alert at 0.5) of the highest-scoring series per node and metric",
            None,
            MetricType::Gauge,
        )?;
        for ((node, metric), score) in top {
            ConstGauge::new(score).encode(e.encode_family(&[("node", node), ("metric", metric)])?)?;
        }
        let e = encoder.encode_descriptor(
            "medic_anomalies_recent",
            "Anomaly alerts kept in memory",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(st.anomalies.len() as i64).encode(e)?;
        let mut e = encoder.encode_descriptor(
            "medic_forecast_exhaustion_seconds",
            "Forecast time until the resource runs out (point forecast); absent when it does not within the horizon",
            None,
            MetricType::Gauge,
        )?;
        for ((node, resource), f) in &st.forecasts {
            if let Some(s) = f.exhaustion_seconds {
                let labels = [("node", node.as_str()), ("resource", resource.as_str())];
                ConstGauge::new(s).encode(e.encode_family(&labels)?)?;
            }
        }
        let mut e = encoder.encode_descriptor(
            "medic_forecast_exhaustion_pessimistic_seconds",
            "Forecast time until the resource runs out, on the pessimistic side of the prediction interval",
            None,
            MetricType::Gauge,
        )?;
        for ((node, resource), f) in &st.forecasts {
            if let Some(s) = f.pessimistic_seconds {
                let labels = [("node", node.as_str()), ("resource", resource.as_str())];
                ConstGauge::new(s).encode(e.encode_family(&labels)?)?;
            }
        }
        let mut e = encoder.encode_descriptor(
            "medic_outlier_metrics",
            "Metrics in which a node currently differs from the peers of its role",
            None,
            MetricType::Gauge,
        )?;
        for o in &st.outliers {
            let labels = [("node", o.node.as_str()), ("role", o.role.as_str())];
            ConstGauge::new(o.metrics.len() as i64).encode(e.encode_family(&labels)?)?;
        }
        for (name, help, v) in [
            ("medic_detect_batches", "Stored batches the detectors looked at", st.batches_seen.load(Ordering::Relaxed)),
            (
                "medic_detect_batches_skipped",
                "Stored batches the detectors skipped because they were behind",
                st.batches_skipped.load(Ordering::Relaxed),
            ),
            ("medic_detect_errors", "Model fits that failed", st.errors.load(Ordering::Relaxed)),
            (
                "medic_changepoints_recent",
                "Changepoints in the recent history kept in memory",
                st.changepoints.len() as u64,
            ),
        ] {
            if name == "medic_changepoints_recent" {
                let e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(v as i64).encode(e)?;
            } else {
                let e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                ConstCounter::new(v).encode(e)?;
            }
        }
        Ok(())
    }
}
