//! From a rule's `when` to firing matches: evaluates the condition on every selected node and
//! keeps, per (rule, node, target), since when it has held, so `for` is honoured and a condition
//! that cleared is reported as resolved — a rule acts on a firing condition only.

use super::facts::{Facts, NodeFacts};
use crate::detect::engine::{ForecastView, OutlierView};
use crate::rules::model::{Condition, Rule};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A sample older than this does not count as the current value (Prometheus's lookback).
pub const STALE_MS: i64 = 5 * 60_000;

/// What detection currently says, as conditions need it.
#[derive(Debug, Default, Clone)]
pub struct Signals {
    pub forecasts: Vec<ForecastView>,
    pub outliers: Vec<OutlierView>,
    /// node → (metric, labels, score) of scored series.
    pub anomalies: HashMap<String, Vec<(String, String, f64)>>,
}

/// One thing a condition holds for: a node and, within it, a target (a table, a disk, a
/// resource…; empty for the node as a whole), with the evidence that made it true.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub target: String,
    pub evidence: String,
}

/// A match that has held for the rule's `for`.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub rule: String,
    pub node: String,
    pub target: String,
    pub evidence: String,
    pub since_ms: i64,
}

fn glob_match(pattern: &str, s: &str) -> bool {
    glob::Pattern::new(pattern).map(|p| p.matches(s)).unwrap_or(pattern == s)
}

fn labels_text(l: &BTreeMap<String, String>) -> String {
    l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// The condition's matches on one node now. `hold_ms` is the rule's `for`, which for `absent`
/// is part of the condition itself (the silence must last that long).
pub fn evaluate(
    cond: &Condition,
    node: &str,
    nf: &NodeFacts,
    signals: &Signals,
    hold_ms: i64,
    now_ms: i64,
) -> Vec<Match> {
    match cond {
        Condition::Threshold(t) => nf
            .series
            .get(&t.metric)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|l| now_ms - l.ts_ms <= STALE_MS)
            .filter(|l| t.labels.iter().all(|(k, v)| l.labels.get(k).is_some_and(|x| glob_match(v, x))))
            .filter(|l| t.op.holds(l.value, t.value))
            .map(|l| Match {
                target: labels_text(&l.labels),
                evidence: format!("{}{{{}}} = {} ({:?} {})", t.metric, labels_text(&l.labels), l.value, t.op, t.value),
            })
            .collect(),
        Condition::Forecast(f) => signals
            .forecasts
            .iter()
            .filter(|v| v.node == node && glob_match(&f.resource, &v.resource))
            .filter_map(|v| {
                let secs =
                    if f.pessimistic { v.pessimistic_seconds.or(v.exhaustion_seconds) } else { v.exhaustion_seconds }?;
                (secs <= f.within.as_secs_f64()).then(|| Match {
                    target: v.resource.clone(),
                    evidence: format!(
                        "{} forecast to run out in {:.1} h ({})",
                        v.resource,
                        secs / 3600.0,
                        v.explanation
                    ),
                })
            })
            .collect(),
        Condition::Outlier(o) => signals
            .outliers
            .iter()
            .filter(|v| v.node == node)
            .filter(|v| o.metric.as_ref().is_none_or(|m| v.metrics.iter().any(|x| glob_match(m, &x.metric))))
            .map(|v| Match {
                target: String::new(),
                evidence: v
                    .metrics
                    .iter()
                    .map(|m| format!("{} = {:.3} vs peers {:.3}", m.metric, m.value, m.peer_median))
                    .collect::<Vec<_>>()
                    .join("; "),
            })
            .collect(),
        Condition::Anomaly(a) => signals
            .anomalies
            .get(node)
            .into_iter()
            .flatten()
            .filter(|(metric, _, score)| glob_match(&a.metric, metric) && *score >= a.min_score)
            .map(|(metric, labels, score)| Match {
                target: format!("{metric}{{{labels}}}"),
                evidence: format!("anomaly score {score:.2} on {metric}{{{labels}}}"),
            })
            .collect(),
        Condition::Log(l) => {
            let since = now_ms - l.window.as_millis() as i64;
            let n = nf.signatures.get(&l.signature).map(|q| q.iter().filter(|t| **t >= since).count()).unwrap_or(0);
            if n >= l.count as usize {
                vec![Match {
                    target: String::new(),
                    evidence: format!("{n} × {} in the last {:?}", l.signature, l.window),
                }]
            } else {
                Vec::new()
            }
        }
        Condition::Absent(a) => {
            let last = nf.last_seen.get(&a.metric).copied();
            // Judged against the node's own stream: a node that sends nothing at all is a
            // different problem (agent down), not this metric's absence.
            let alive = now_ms - nf.last_batch_ms <= STALE_MS;
            let silent_since = last.unwrap_or(nf.first_batch_ms);
            if alive && now_ms - silent_since >= hold_ms {
                vec![Match {
                    target: String::new(),
                    evidence: match last {
                        Some(t) => format!("no {} for {} s", a.metric, (now_ms - t) / 1000),
                        None => format!("no {} since the node was first seen", a.metric),
                    },
                }]
            } else {
                Vec::new()
            }
        }
    }
}

/// Whether the node has sent, since `since_ms`, what the condition is judged on — so that "it
/// does not hold" means it was looked at again, not that nothing has arrived yet (a controller
/// that just started knows nothing about the node).
pub fn observed_since(cond: &Condition, nf: &NodeFacts, since_ms: i64) -> bool {
    match cond {
        Condition::Threshold(t) => nf.last_seen.get(&t.metric).is_some_and(|ts| *ts >= since_ms),
        _ => nf.last_batch_ms >= since_ms,
    }
}

/// Since-when bookkeeping across evaluation rounds.
#[derive(Debug, Default)]
pub struct ConditionTracker {
    since: HashMap<(String, String, String), i64>,
}

#[derive(Debug, Default, PartialEq)]
pub struct Round {
    pub firing: Vec<Firing>,
    /// Every match that holds now, whether or not it has held for the rule's `for` yet
    /// (`since_ms` says since when): what Medic has noticed and may act on.
    pub holding: Vec<Firing>,
    /// (rule, node, target) whose condition no longer holds.
    pub resolved: Vec<(String, String, String)>,
}

impl ConditionTracker {
    pub fn round<'a>(
        &mut self,
        rules: impl Iterator<Item = &'a Rule>,
        facts: &Facts,
        signals: &Signals,
        now_ms: i64,
    ) -> Round {
        let mut out = Round::default();
        let mut seen: HashSet<(String, String, String)> = HashSet::new();
        for rule in rules {
            let Some(cond) = rule.when.condition() else { continue };
            let hold_ms = match cond {
                // For `absent`, `for` is the silence itself.
                Condition::Absent(_) => 0,
                _ => rule.when.hold.as_millis() as i64,
            };
            for (node, nf) in facts.selected(&rule.when.nodes) {
                let cond_hold = rule.when.hold.as_millis() as i64;
                for m in evaluate(&cond, node, nf, signals, cond_hold, now_ms) {
                    let key = (rule.name.clone(), node.clone(), m.target.clone());
                    let since = *self.since.entry(key.clone()).or_insert(now_ms);
                    seen.insert(key);
                    out.holding.push(Firing {
                        rule: rule.name.clone(),
                        node: node.clone(),
                        target: m.target.clone(),
                        evidence: m.evidence.clone(),
                        since_ms: since,
                    });
                    if now_ms - since >= hold_ms {
                        out.firing.push(Firing {
                            rule: rule.name.clone(),
                            node: node.clone(),
                            target: m.target,
                            evidence: m.evidence,
                            since_ms: since,
                        });
                    }
                }
            }
        }
        let gone: Vec<_> = self.since.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        for k in gone {
            self.since.remove(&k);
            out.resolved.push(k);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::load::parse;
    use medic_proto::v1::{Batch, Label, LogRecord, Sample};
    use std::path::Path;

    fn rules(yaml: &str) -> Vec<Rule> {
        parse(Path::new("t.yaml"), yaml).unwrap().into_iter().map(|r| r.rule).collect()
    }

    type Samples<'a> = Vec<(&'a str, &'a [(&'a str, &'a str)], f64)>;

    fn batch(ts: i64, samples: Samples<'_>, signatures: &[&str]) -> Batch {
        Batch {
            seq: 1,
            series: vec![],
            created_unix_ms: ts,
            samples: samples
                .into_iter()
                .map(|(m, l, v)| Sample {
                    metric: m.into(),
                    labels: l.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
                    timestamp_ms: ts,
                    value: v,
                    kind: 1,
                })
                .collect(),
            logs: signatures
                .iter()
                .map(|s| LogRecord {
                    timestamp_ms: ts,
                    fields: vec![Label::new("signature", *s)],
                    ..Default::default()
                })
                .collect(),
        }
    }

    const RO: &str = "rules:
  - name: ro
    when:
      threshold: { metric: clickhouse_replica_is_readonly, op: \">\", value: 0 }
      nodes: { role: clickhouse }
      for: 2m
    do: [ { restart: { how: replica } } ]
";

    #[test]
    fn a_threshold_fires_only_after_for_and_resolves_when_it_clears() {
        let rs = rules(RO);
        let mut facts = Facts::default();
        let labels = vec![("role".to_string(), "clickhouse".to_string())];
        let mut t = ConditionTracker::default();
        let ro = |v| vec![("clickhouse_replica_is_readonly", &[("database", "db"), ("table", "t")][..], v)];
        facts.observe("n1", &labels, &batch(0, ro(1.0), &[]));
        assert!(t.round(rs.iter(), &facts, &Signals::default(), 0).firing.is_empty(), "not yet held for 2m");
        facts.observe("n1", &labels, &batch(60_000, ro(1.0), &[]));
        assert!(t.round(rs.iter(), &facts, &Signals::default(), 60_000).firing.is_empty());
        facts.observe("n1", &labels, &batch(120_000, ro(1.0), &[]));
        let r = t.round(rs.iter(), &facts, &Signals::default(), 120_000);
        assert_eq!(r.firing.len(), 1);
        assert_eq!((r.firing[0].node.as_str(), r.firing[0].target.as_str()), ("n1", "database=db,table=t"));
        facts.observe("n1", &labels, &batch(180_000, ro(0.0), &[]));
        let r = t.round(rs.iter(), &facts, &Signals::default(), 180_000);
        assert!(r.firing.is_empty(), "a resolved condition never fires");
        assert_eq!(r.resolved, vec![("ro".to_string(), "n1".to_string(), "database=db,table=t".to_string())]);
        // A node outside the selector is never considered.
        facts.observe("web-1", &[("role".into(), "web".into())], &batch(200_000, ro(1.0), &[]));
        assert!(t.round(rs.iter(), &facts, &Signals::default(), 400_000).firing.iter().all(|f| f.node != "web-1"));
    }

    #[test]
    fn log_signatures_count_within_their_window_and_absence_needs_a_live_node() {
        let rs = rules(
            "rules:
  - name: parts
    when:
      log: { signature: too_many_parts, count: 3, window: 1m }
    do: [ { notify: {} } ]
  - name: no-ch
    when:
      absent: { metric: clickhouse_up }
      for: 2m
    do: [ { notify: {} } ]
",
        );
        let mut facts = Facts::default();
        let mut t = ConditionTracker::default();
        for ts in [0, 10_000, 20_000] {
            facts.observe("n", &[], &batch(ts, vec![("node_load1", &[], 1.0)], &["too_many_parts"]));
        }
        let r = t.round(rs.iter(), &facts, &Signals::default(), 30_000);
        assert_eq!(r.firing.iter().map(|f| f.rule.as_str()).collect::<Vec<_>>(), ["parts"]);
        facts.observe("n", &[], &batch(150_000, vec![("node_load1", &[], 1.0)], &[]));
        let r = t.round(rs.iter(), &facts, &Signals::default(), 150_000);
        assert_eq!(
            r.firing.iter().map(|f| f.rule.as_str()).collect::<Vec<_>>(),
            ["no-ch"],
            "old signatures fall out; clickhouse_up never came"
        );
        // A node that went silent entirely is not "missing clickhouse_up".
        assert!(t.round(rs.iter(), &facts, &Signals::default(), 150_000 + STALE_MS + 1).firing.is_empty());
    }

    #[test]
    fn forecasts_match_by_resource_pattern_on_the_pessimistic_side() {
        let rs = rules(
            "rules:
  - name: disk
    when:
      forecast: { resource: \"clickhouse_disk:*\", within: 24h }
    do: [ { notify: {} } ]
",
        );
        let mut facts = Facts::default();
        facts.observe("n", &[], &batch(0, vec![], &[]));
        let fv = |resource: &str, point: f64, pess: f64| ForecastView {
            node: "n".into(),
            resource: resource.into(),
            exhaustion_seconds: Some(point),
            pessimistic_seconds: Some(pess),
            model: "m".into(),
            explanation: "x".into(),
            computed_at: String::new(),
            computed_at_ms: 0,
        };
        let signals = Signals {
            forecasts: vec![fv("clickhouse_disk:default", 200_000.0, 50_000.0), fv("filesystem:/", 10.0, 10.0)],
            ..Default::default()
        };
        let r = ConditionTracker::default().round(rs.iter(), &facts, &signals, 1);
        assert_eq!(r.firing.len(), 1);
        assert_eq!(r.firing[0].target, "clickhouse_disk:default");
    }
}
