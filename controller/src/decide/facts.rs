//! The controller's current view of each node, kept from stored batches: the latest value of
//! every series, when each metric was last seen, recent log signatures, and the node's labels.

use medic_proto::v1::Batch;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Latest value of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Latest {
    pub labels: BTreeMap<String, String>,
    pub ts_ms: i64,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct NodeFacts {
    pub labels: BTreeMap<String, String>,
    /// metric → series (by [`labels_key`]) → latest value.
    pub series: HashMap<String, HashMap<u64, Latest>>,
    /// metric → last time any series of it arrived.
    pub last_seen: HashMap<String, i64>,
    /// signature → times it was logged (bounded).
    pub signatures: HashMap<String, VecDeque<i64>>,
    pub last_batch_ms: i64,
    pub first_batch_ms: i64,
}

/// A series' identity within a metric: a hash of its label pairs, unambiguous (lengths are
/// hashed too) and seeded per process.
pub fn labels_key(labels: &[medic_proto::v1::Label]) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    static STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    let mut h = STATE.get_or_init(Default::default).build_hasher();
    for l in labels {
        l.name.hash(&mut h);
        l.value.hash(&mut h);
    }
    h.finish()
}

#[derive(Debug, Default)]
pub struct Facts {
    pub nodes: BTreeMap<String, NodeFacts>,
}

/// Enough for any sane `count` within a `window`; older entries fall off.
const MAX_SIGNATURES: usize = 10_000;

impl Facts {
    pub fn observe(&mut self, node: &str, labels: &[(String, String)], batch: &Batch) {
        let nf = self.nodes.entry(node.to_string()).or_default();
        nf.labels = labels.iter().cloned().collect();
        if nf.first_batch_ms == 0 {
            nf.first_batch_ms = batch.created_unix_ms;
        }
        nf.last_batch_ms = nf.last_batch_ms.max(batch.created_unix_ms);
        for s in batch.series_refs() {
            // The engine thread sees every sample: no allocation unless the series is new.
            let Some((ts, value)) = s.points().max_by_key(|(t, _)| *t) else { continue };
            let key = labels_key(s.labels);
            let per_metric = match nf.series.get_mut(s.metric) {
                Some(m) => m,
                None => nf.series.entry(s.metric.to_string()).or_default(),
            };
            match per_metric.get_mut(&key) {
                Some(l) => {
                    if l.ts_ms <= ts {
                        l.ts_ms = ts;
                        l.value = value;
                    }
                }
                None => {
                    let labels = s.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect();
                    per_metric.insert(key, Latest { labels, ts_ms: ts, value });
                }
            }
            match nf.last_seen.get_mut(s.metric) {
                Some(seen) => *seen = (*seen).max(ts),
                None => {
                    nf.last_seen.insert(s.metric.to_string(), ts);
                }
            }
        }
        for l in &batch.logs {
            if let Some(sig) = l.fields.iter().find(|f| f.name == "signature") {
                let q = nf.signatures.entry(sig.value.clone()).or_default();
                // When the agent read it, not the time written in the line: server logs carry local
                // time without a zone, and a window must not shift with the server's timezone.
                q.push_back(batch.created_unix_ms);
                while q.len() > MAX_SIGNATURES {
                    q.pop_front();
                }
            }
        }
    }

    /// Nodes whose labels include every pair of `selector`.
    pub fn selected<'a>(
        &'a self,
        selector: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = (&'a String, &'a NodeFacts)> {
        self.nodes.iter().filter(move |(_, n)| selector.iter().all(|(k, v)| n.labels.get(k) == Some(v)))
    }
}
