//! Fleet peer-group outliers: nodes that share a role (e.g. all ClickHouse replicas) should look
//! alike, so a node whose recent window of a metric sits apart from its peers is suspicious
//! even when no absolute threshold is crossed.
//!
//! Per metric, each node's last `window` is resampled onto a common grid and handed to two
//! augurs detectors: DBSCAN (is the node outside the majority cluster?) and MAD (is it many
//! robust deviations from the fleet median?). A node is reported with every metric in which it
//! stayed apart for most of the window; short blips are left to the anomaly detector.
//!
//! Counters should be fed as rates: peers with different uptimes have incomparable totals.

use crate::detect::changepoint::median;
use augurs::outlier::{DbscanDetector, MADDetector, OutlierDetector};
use std::collections::{BTreeMap, HashMap, VecDeque};

#[derive(Debug, thiserror::Error)]
pub enum OutlierError {
    /// augurs' own error type is neither Send nor Sync, so only its message travels.
    #[error("{detector} failed: {message}")]
    Detector { detector: &'static str, message: String },
}

#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// How much recent history is compared.
    pub window_ms: i64,
    /// Grid step the window is resampled to.
    pub step_ms: i64,
    /// Samples kept per node × metric (bounded memory whatever the agents' rate).
    pub max_samples: usize,
    /// Groups smaller than this are not compared: with two nodes nobody is "the odd one".
    pub min_group: usize,
    /// MAD score above which a point is outlying (in robust standard deviations).
    pub mad_threshold: f64,
    /// DBSCAN neighbourhood as a fraction of the peers' typical magnitude...
    pub dbscan_rel_epsilon: f64,
    /// ...but never below this many robust spreads of the peers' values, so noisy metrics
    /// do not split the cluster.
    pub dbscan_spread_epsilon: f64,
    /// Fraction of the window a node must be outlying for a metric to count.
    pub min_outlying_fraction: f64,
    /// A flagged difference must also matter in practice: at least this fraction of the
    /// peer median (or `min_abs_difference`, whichever is larger).
    pub min_rel_difference: f64,
    pub min_abs_difference: f64,
    /// A node needs data in at least this fraction of grid cells to take part.
    pub min_coverage: f64,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            window_ms: 15 * 60_000,
            step_ms: 30_000,
            max_samples: 512,
            min_group: 3,
            mad_threshold: 4.0,
            dbscan_rel_epsilon: 0.25,
            dbscan_spread_epsilon: 3.0,
            min_outlying_fraction: 0.6,
            min_rel_difference: 0.2,
            min_abs_difference: 1e-9,
            min_coverage: 0.5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flagger {
    Dbscan,
    Mad,
}

/// Why a node was flagged in one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricEvidence {
    pub metric: String,
    /// The node's median over the window.
    pub value: f64,
    /// Median over the window of the other nodes' medians.
    pub peer_median: f64,
    /// Fraction of grid cells in which the node was outlying.
    pub outlying_fraction: f64,
    pub flagged_by: Vec<Flagger>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierFinding {
    pub node: String,
    pub role: String,
    pub metrics: Vec<MetricEvidence>,
}

#[derive(Debug, Default)]
struct NodeState {
    role: String,
    metrics: HashMap<String, VecDeque<(i64, f64)>>,
}

/// Recent metric windows per node, grouped by role.
#[derive(Debug)]
pub struct PeerGroups {
    cfg: PeerConfig,
    nodes: HashMap<String, NodeState>,
}

impl PeerGroups {
    pub fn new(cfg: PeerConfig) -> Self {
        Self { cfg, nodes: HashMap::new() }
    }

    pub fn observe(&mut self, node: &str, role: &str, metric: &str, ts_ms: i64, value: f64) {
        if !value.is_finite() {
            return;
        }
        let st = self.nodes.entry(node.to_owned()).or_default();
        // A node that changes role joins its new group with the history it has.
        if st.role != role {
            st.role = role.to_owned();
        }
        let ring = st.metrics.entry(metric.to_owned()).or_default();
        ring.push_back((ts_ms, value));
        while ring.len() > self.cfg.max_samples {
            ring.pop_front();
        }
    }

    /// Drops samples older than the window and nodes with nothing left.
    pub fn prune(&mut self, now_ms: i64) {
        let start = now_ms - self.cfg.window_ms;
        for st in self.nodes.values_mut() {
            for ring in st.metrics.values_mut() {
                while ring.front().is_some_and(|&(t, _)| t < start) {
                    ring.pop_front();
                }
            }
            st.metrics.retain(|_, r| !r.is_empty());
        }
        self.nodes.retain(|_, st| !st.metrics.is_empty());
    }

    /// Mean per grid cell over `[now - window, now)`, gaps filled from the nearest cell so that
    /// a late or missed scrape does not look like an excursion.
    fn resample(&self, ring: &VecDeque<(i64, f64)>, now_ms: i64) -> Option<Vec<f64>> {
        let step = self.cfg.step_ms.max(1);
        let cells = (self.cfg.window_ms / step).max(1) as usize;
        let start = now_ms - cells as i64 * step;
        let mut sum = vec![0.0; cells];
        let mut n = vec![0usize; cells];
        for &(t, v) in ring {
            if t < start || t >= now_ms {
                continue;
            }
            let i = ((t - start) / step) as usize;
            if i < cells {
                sum[i] += v;
                n[i] += 1;
            }
        }
        let filled = n.iter().filter(|&&c| c > 0).count();
        if (filled as f64) < self.cfg.min_coverage * cells as f64 || filled == 0 {
            return None;
        }
        let mut out: Vec<Option<f64>> = sum.iter().zip(&n).map(|(s, &c)| (c > 0).then(|| s / c as f64)).collect();
        let mut last = None;
        for v in out.iter_mut() {
            match v {
                Some(x) => last = Some(*x),
                None => *v = last,
            }
        }
        let mut next = None;
        for v in out.iter_mut().rev() {
            match v {
                Some(x) => next = Some(*x),
                None => *v = next,
            }
        }
        out.into_iter().collect()
    }

    /// Compares every role group of at least `min_group` nodes, metric by metric.
    pub fn evaluate(&self, now_ms: i64) -> Result<Vec<OutlierFinding>, OutlierError> {
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (node, st) in &self.nodes {
            groups.entry(st.role.as_str()).or_default().push(node.as_str());
        }
        let mut findings = Vec::new();
        for (role, mut members) in groups {
            if members.len() < self.cfg.min_group {
                continue;
            }
            members.sort_unstable();
            let mut metrics: Vec<&str> =
                members.iter().flat_map(|n| self.nodes[*n].metrics.keys().map(String::as_str)).collect();
            metrics.sort_unstable();
            metrics.dedup();
            let mut per_node: BTreeMap<&str, Vec<MetricEvidence>> = BTreeMap::new();
            for metric in metrics {
                let mut names = Vec::new();
                let mut rows = Vec::new();
                for &node in &members {
                    if let Some(row) = self.nodes[node].metrics.get(metric).and_then(|r| self.resample(r, now_ms)) {
                        names.push(node);
                        rows.push(row);
                    }
                }
                for (i, ev) in self.compare(metric, &rows)? {
                    per_node.entry(names[i]).or_default().push(ev);
                }
            }
            for (node, metrics) in per_node {
                findings.push(OutlierFinding { node: node.to_owned(), role: role.to_owned(), metrics });
            }
        }
        Ok(findings)
    }

    /// Evidence per outlying row index for one metric's aligned rows.
    fn compare(&self, metric: &str, rows: &[Vec<f64>]) -> Result<Vec<(usize, MetricEvidence)>, OutlierError> {
        if rows.len() < self.cfg.min_group.max(3) {
            return Ok(Vec::new());
        }
        let cells = rows[0].len();
        let views: Vec<&[f64]> = rows.iter().map(Vec::as_slice).collect();
        let node_medians: Vec<f64> = rows.iter().map(|r| median(&mut r.clone()).unwrap_or(f64::NAN)).collect();
        let mut all = node_medians.clone();
        let level = median(&mut all).unwrap_or(0.0).abs();
        // Spread of each node around its own median, pooled: the "noise" of this metric.
        let mut dev: Vec<f64> =
            rows.iter().zip(&node_medians).flat_map(|(r, m)| r.iter().map(move |v| (v - m).abs())).collect();
        let noise = 1.4826 * median(&mut dev).unwrap_or(0.0);
        let epsilon = (self.cfg.dbscan_rel_epsilon * level)
            .max(self.cfg.dbscan_spread_epsilon * noise)
            .max(self.cfg.min_abs_difference);

        let mut fractions: Vec<BTreeMap<Flagger, f64>> = vec![BTreeMap::new(); rows.len()];
        let det = DbscanDetector::with_epsilon(epsilon);
        let out = det
            .preprocess(&views)
            .and_then(|d| det.detect(&d))
            .map_err(|e| OutlierError::Detector { detector: "dbscan", message: e.to_string() })?;
        for (i, s) in out.series_results.iter().enumerate() {
            let hits = s.scores.iter().filter(|&&x| x > 0.0).count();
            fractions[i].insert(Flagger::Dbscan, hits as f64 / cells as f64);
        }
        let mad = MADDetector::with_threshold(self.cfg.mad_threshold);
        // MAD cannot scale data whose peers are exactly identical (zero deviation); DBSCAN
        // still covers that case, so that failure is not an error for the caller.
        if let Ok(out) = mad.preprocess(&views).and_then(|d| mad.detect(&d)) {
            for (i, s) in out.series_results.iter().enumerate() {
                let hits = s.scores.iter().filter(|&&x| x > self.cfg.mad_threshold).count();
                fractions[i].insert(Flagger::Mad, hits as f64 / cells as f64);
            }
        }

        let mut found = Vec::new();
        for (i, fr) in fractions.iter().enumerate() {
            let flagged_by: Vec<Flagger> =
                fr.iter().filter(|(_, f)| **f >= self.cfg.min_outlying_fraction).map(|(k, _)| *k).collect();
            if flagged_by.is_empty() {
                continue;
            }
            let mut peers: Vec<f64> =
                node_medians.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, v)| *v).collect();
            let peer_median = median(&mut peers).unwrap_or(f64::NAN);
            let value = node_medians[i];
            let needed = (self.cfg.min_rel_difference * peer_median.abs()).max(self.cfg.min_abs_difference);
            if (value - peer_median).abs() < needed {
                continue;
            }
            let outlying_fraction = fr.values().copied().fold(0.0, f64::max);
            found.push((
                i,
                MetricEvidence { metric: metric.to_owned(), value, peer_median, outlying_fraction, flagged_by },
            ));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::changepoint::tests::Rng;

    fn fleet(cpu: &[f64], seed: u64) -> PeerGroups {
        let mut g = PeerGroups::new(PeerConfig::default());
        let mut rng = Rng::new(seed);
        for step in 0..90i64 {
            let ts = step * 10_000;
            for (i, &c) in cpu.iter().enumerate() {
                let node = format!("ch-{i}");
                g.observe(&node, "clickhouse", "cpu_percent", ts, c + 2.0 * rng.normal());
                g.observe(&node, "clickhouse", "mem_used_bytes", ts, 8e9 + 1e8 * rng.normal());
            }
            g.observe("web-0", "web", "cpu_percent", ts, 99.0);
        }
        g
    }

    #[test]
    fn odd_node_is_flagged_with_the_metric_named() {
        for seed in 0..10 {
            let g = fleet(&[20.0, 20.0, 90.0, 20.0, 20.0], seed);
            let f = g.evaluate(900_000).expect("evaluate");
            assert_eq!(f.len(), 1, "seed {seed}: {f:?}");
            assert_eq!(f[0].node, "ch-2");
            assert_eq!(f[0].role, "clickhouse");
            assert_eq!(f[0].metrics.len(), 1, "{f:?}");
            let ev = &f[0].metrics[0];
            assert_eq!(ev.metric, "cpu_percent");
            assert!((ev.value - 90.0).abs() < 2.0 && (ev.peer_median - 20.0).abs() < 2.0, "{ev:?}");
            assert!(!ev.flagged_by.is_empty());
        }
    }

    #[test]
    fn alike_nodes_give_nothing() {
        for seed in 0..10 {
            let g = fleet(&[20.0; 5], 50 + seed);
            assert!(g.evaluate(900_000).expect("evaluate").is_empty(), "seed {seed}");
        }
    }

    #[test]
    fn identical_peers_still_expose_the_odd_one() {
        let mut g = PeerGroups::new(PeerConfig::default());
        for step in 0..90i64 {
            for (i, c) in [20.0, 20.0, 20.0, 90.0].iter().enumerate() {
                g.observe(&format!("n{i}"), "r", "cpu", step * 10_000, *c);
            }
        }
        let f = g.evaluate(900_000).expect("evaluate");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].node, "n3");
        assert_eq!(f[0].metrics[0].flagged_by, vec![Flagger::Dbscan]);
    }

    #[test]
    fn groups_too_small_say_nothing() {
        let g = fleet(&[20.0, 90.0], 3);
        assert!(g.evaluate(900_000).expect("evaluate").is_empty());
    }

    #[test]
    fn memory_is_bounded() {
        let mut g = PeerGroups::new(PeerConfig { max_samples: 16, ..PeerConfig::default() });
        for t in 0..10_000 {
            g.observe("a", "r", "m", t, 1.0);
        }
        assert_eq!(g.nodes["a"].metrics["m"].len(), 16);
        g.prune(10_000_000);
        assert!(g.nodes.is_empty());
    }
}
