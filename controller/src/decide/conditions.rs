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
    /// node → the series in an anomaly episode.
    pub anomalies: HashMap<String, Vec<AnomalySignal>>,
}

/// A series in an anomaly episode, as conditions see it.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalySignal {
    pub metric: String,
    pub labels: String,
    pub score: f64,
    /// What the detector expected, and the value that opened the episode (counters: rates).
    pub baseline: f64,
    pub observed: f64,
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
                // The metrics the rule is about, not every way the node differs.
                evidence: v
                    .metrics
                    .iter()
                    .filter(|x| o.metric.as_ref().is_none_or(|m| glob_match(m, &x.metric)))
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
            .filter(|s| {
                glob_match(&a.metric, &s.metric) && s.score >= a.min_score && a.direction.holds(s.baseline, s.observed)
            })
            .map(|s| Match {
                target: format!("{}{{{}}}", s.metric, s.labels),
                evidence: format!(
                    "anomaly score {:.2} on {}{{{}}} ({} where {} was expected)",
                    s.score, s.metric, s.labels, s.observed, s.baseline
                ),
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
            // It must also have kept reporting for the whole silence: a node that just died is not
            // stale yet, but it is not missing the metric either.
            let alive = now_ms - nf.last_batch_ms <= STALE_MS;
            let silent_since = last.unwrap_or(nf.first_batch_ms);
            if alive && nf.last_batch_ms - silent_since >= hold_ms {
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
    fn a_node_that_stops_reporting_altogether_is_not_missing_a_metric_even_before_it_is_stale() {
        let rs = rules(
            "rules:\n  - name: no-ch\n    when: { absent: { metric: clickhouse_up }, for: 1m }\n    do: [ { notify: {} } ]\n",
        );
        let mut facts = Facts::default();
        let mut t = ConditionTracker::default();
        for ts in [0, 10_000, 20_000] {
            facts.observe("dead", &[], &batch(ts, vec![("clickhouse_up", &[], 1.0)], &[]));
            facts.observe("alive", &[], &batch(ts, vec![("clickhouse_up", &[], 1.0)], &[]));
        }
        // From 30 s on only `alive` reports, without clickhouse_up.
        for ts in (30_000..=90_000).step_by(10_000) {
            facts.observe("alive", &[], &batch(ts, vec![("node_load1", &[], 1.0)], &[]));
        }
        let r = t.round(rs.iter(), &facts, &Signals::default(), 90_000);
        assert_eq!(names(&r.firing), [("no-ch", "alive", "")], "dead sent nothing for 70 s, less than STALE_MS");
        assert!(r.firing[0].evidence.contains("no clickhouse_up for 70 s"), "{}", r.firing[0].evidence);
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

    fn names(fs: &[Firing]) -> Vec<(&str, &str, &str)> {
        let mut v: Vec<_> = fs.iter().map(|f| (f.rule.as_str(), f.node.as_str(), f.target.as_str())).collect();
        v.sort();
        v
    }

    fn fleet(nodes: &[(&str, &str)], ts: i64) -> Facts {
        let mut facts = Facts::default();
        for (node, role) in nodes {
            facts.observe(node, &[("role".to_string(), role.to_string())], &batch(ts, vec![], &[]));
        }
        facts
    }

    /// Anomalies that went up, from 1 to 2.
    fn anomalies(scored: &[(&str, &str, &str, f64)]) -> Signals {
        let mut s = Signals::default();
        for (node, metric, labels, score) in scored {
            s.anomalies.entry(node.to_string()).or_default().push(AnomalySignal {
                metric: metric.to_string(),
                labels: labels.to_string(),
                score: *score,
                baseline: 1.0,
                observed: 2.0,
            });
        }
        s
    }

    #[test]
    fn an_anomaly_condition_can_ask_for_a_direction() {
        let up = rules(
            "rules:
  - name: r
    when:
      anomaly: { metric: 'errors', direction: up }
    do: [ { notify: { severity: warning } } ]
",
        );
        let Some(cond) = up[0].when.condition() else { panic!("a condition") };
        let nf = NodeFacts::default();
        let mut s = anomalies(&[("n", "errors", "", 0.95)]);
        assert_eq!(evaluate(&cond, "n", &nf, &s, 0, 0).len(), 1, "up from 1 to 2");
        if let Some(v) = s.anomalies.get_mut("n") {
            v[0].observed = 0.5;
        }
        assert!(evaluate(&cond, "n", &nf, &s, 0, 0).is_empty(), "a drop is not what the rule is about");
    }

    #[test]
    fn an_anomaly_fires_per_series_whose_metric_matches_at_or_above_min_score_on_selected_nodes_after_for() {
        let rs = rules(
            "rules:
  - name: slow-queries
    when:
      anomaly: { metric: 'clickhouse_query*', min_score: 0.8 }
      nodes: { role: clickhouse }
      for: 2m
    do: [ { notify: {} } ]
",
        );
        let facts = fleet(&[("ch-1", "clickhouse"), ("web-1", "web")], 0);
        let open = anomalies(&[
            ("ch-1", "clickhouse_query_duration_seconds", "quantile=0.99", 0.95),
            ("ch-1", "clickhouse_query_duration_seconds", "quantile=0.9", 0.8),
            ("ch-1", "clickhouse_query_duration_seconds", "quantile=0.5", 0.79),
            ("ch-1", "node_load1", "", 0.99),
            ("web-1", "clickhouse_query_duration_seconds", "quantile=0.99", 0.99),
        ]);
        let p99 = "clickhouse_query_duration_seconds{quantile=0.99}";
        let p90 = "clickhouse_query_duration_seconds{quantile=0.9}";
        let mut t = ConditionTracker::default();
        let r = t.round(rs.iter(), &facts, &open, 0);
        assert!(r.firing.is_empty(), "not yet held for 2m");
        assert_eq!(
            names(&r.holding),
            [("slow-queries", "ch-1", p99), ("slow-queries", "ch-1", p90)],
            "a score equal to min_score counts, one below does not; other metrics and unselected nodes never"
        );
        assert!(t.round(rs.iter(), &facts, &open, 119_999).firing.is_empty());
        let r = t.round(rs.iter(), &facts, &open, 120_000);
        assert_eq!(names(&r.firing), [("slow-queries", "ch-1", p99), ("slow-queries", "ch-1", p90)]);
        let e = &r.firing.iter().find(|f| f.target == p99).unwrap().evidence;
        assert!(e.contains("anomaly score 0.95") && e.contains(p99), "{e}");
        assert_eq!(r.firing[0].since_ms, 0);

        // The p99 episode closes: that series resolves, the other keeps firing.
        let later = anomalies(&[("ch-1", "clickhouse_query_duration_seconds", "quantile=0.9", 0.8)]);
        let r = t.round(rs.iter(), &facts, &later, 180_000);
        assert_eq!(names(&r.firing), [("slow-queries", "ch-1", p90)]);
        assert_eq!(r.resolved, vec![("slow-queries".to_string(), "ch-1".to_string(), p99.to_string())]);
        // A new episode on the same series starts its `for` again.
        let r = t.round(rs.iter(), &facts, &open, 240_000);
        assert_eq!(names(&r.firing), [("slow-queries", "ch-1", p90)], "p99 held again only since 4m");
        assert_eq!(names(&t.round(rs.iter(), &facts, &open, 360_000).firing).len(), 2);
    }

    #[test]
    fn an_anomaly_on_a_node_that_never_reported_is_not_evaluated() {
        let rs = rules("rules:\n  - name: any\n    when: { anomaly: { metric: '*' } }\n    do: [ { notify: {} } ]\n");
        let facts = fleet(&[("ch-1", "clickhouse")], 0);
        let open = anomalies(&[("ghost", "node_load1", "", 1.0), ("ch-1", "node_load1", "", 0.89)]);
        let r = ConditionTracker::default().round(rs.iter(), &facts, &open, 0);
        assert!(r.holding.is_empty(), "the default min_score is 0.9; ghost has no facts: {:?}", r.holding);
    }

    fn outlier(node: &str, role: &str, metrics: &[&str]) -> OutlierView {
        OutlierView {
            node: node.into(),
            role: role.into(),
            metrics: metrics
                .iter()
                .map(|m| crate::detect::engine::OutlierMetricView {
                    metric: m.to_string(),
                    value: 4.0,
                    peer_median: 0.5,
                    outlying_fraction: 0.9,
                    flagged_by: vec!["mad".into()],
                })
                .collect(),
            detected_at: String::new(),
        }
    }

    #[test]
    fn an_outlier_fires_for_the_node_that_differs_in_a_matching_metric_after_for_and_resolves_when_it_rejoins() {
        let rs = rules(
            "rules:
  - name: slow-node
    when:
      outlier: { metric: 'clickhouse_query_p99_*' }
      nodes: { role: clickhouse }
      for: 5m
    do: [ { notify: {} } ]
  - name: odd-node
    when:
      outlier: {}
    do: [ { notify: {} } ]
",
        );
        let facts = fleet(&[("ch-1", "clickhouse"), ("ch-2", "clickhouse"), ("web-1", "web")], 0);
        let signals = Signals {
            outliers: vec![
                outlier("ch-1", "clickhouse", &["load1", "clickhouse_query_p99_seconds"]),
                outlier("ch-2", "clickhouse", &["load1"]),
                outlier("web-1", "web", &["clickhouse_query_p99_seconds"]),
            ],
            ..Default::default()
        };
        let mut t = ConditionTracker::default();
        let r = t.round(rs.iter(), &facts, &signals, 0);
        assert_eq!(
            names(&r.firing),
            [("odd-node", "ch-1", ""), ("odd-node", "ch-2", ""), ("odd-node", "web-1", "")],
            "without a metric any outlier counts, on any node"
        );
        assert_eq!(
            names(&r.holding).iter().filter(|h| h.0 == "slow-node").collect::<Vec<_>>(),
            [&("slow-node", "ch-1", "")]
        );
        let r = t.round(rs.iter(), &facts, &signals, 299_000);
        assert!(r.firing.iter().all(|f| f.rule != "slow-node"), "not yet held for 5m");
        let r = t.round(rs.iter(), &facts, &signals, 300_000);
        let slow: Vec<&Firing> = r.firing.iter().filter(|f| f.rule == "slow-node").collect();
        assert_eq!(slow.len(), 1);
        assert_eq!(slow[0].node, "ch-1");
        assert!(
            slow[0].evidence.contains("clickhouse_query_p99_seconds = 4.000 vs peers 0.500")
                && !slow[0].evidence.contains("load1"),
            "the evidence names the metric the rule is about: {}",
            slow[0].evidence
        );

        // ch-1 is back with its peers.
        let signals = Signals { outliers: vec![outlier("ch-2", "clickhouse", &["load1"])], ..Default::default() };
        let r = t.round(rs.iter(), &facts, &signals, 360_000);
        assert_eq!(names(&r.firing), [("odd-node", "ch-2", "")]);
        let mut resolved = r.resolved.clone();
        resolved.sort();
        assert_eq!(
            resolved,
            vec![
                ("odd-node".to_string(), "ch-1".to_string(), String::new()),
                ("odd-node".to_string(), "web-1".to_string(), String::new()),
                ("slow-node".to_string(), "ch-1".to_string(), String::new()),
            ]
        );
    }
}
