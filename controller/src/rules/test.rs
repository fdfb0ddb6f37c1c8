//! `controller rules test FILE...`: rule unit tests, like promtool's for alerts. A test file
//! feeds series, log signatures and forecasts to the real condition and guard code on a
//! simulated clock and states, at given times, which actions fire (rule, node, target, action)
//! and which guards block the rest.
//!
//! ```yaml
//! rule_files: [clickhouse.yaml]          # relative to this file
//! tests:
//!   - name: a read-only replica is restarted once
//!     interval: 30s                       # one input value per interval
//!     nodes: { ch-1: { role: clickhouse, shard: s1 } }
//!     series:
//!       - { node: ch-1, metric: clickhouse_replica_is_readonly, labels: { database: db, table: t }, values: "0 1 1 1 1 1" }
//!     logs:
//!       - { node: ch-1, signature: too_many_parts, at: [1m, 1m10s] }
//!     forecasts:
//!       - { node: ch-1, resource: "clickhouse_disk:default", from: 2m, exhaustion: 20h, pessimistic: 10h }
//!     expect:
//!       - at: 2m30s
//!         actions: [ { rule: readonly-replica, node: ch-1, target: "database=db,table=t", action: restart } ]
//!         blocked: [ { rule: other, node: ch-1, guard: cooldown } ]
//! ```
//! Actions fired in the test count as verified when their condition clears (an action that
//! never clears stays in progress), so cooldowns, rate limits and blast radius behave as live.

use super::load::{LoadedRule, load_files};
use crate::decide::conditions::{ConditionTracker, Signals};
use crate::decide::facts::Facts;
use crate::decide::guards::{Decision, Fleet, GlobalLimit, GuardState};
use crate::detect::engine::ForecastView;
use medic_proto::v1::{Batch, Label, LogRecord, Sample};
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    rule_files: Vec<PathBuf>,
    tests: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    #[serde(default = "thirty_seconds", deserialize_with = "dur")]
    interval: Duration,
    #[serde(default)]
    nodes: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    series: Vec<SeriesInput>,
    #[serde(default)]
    logs: Vec<LogInput>,
    #[serde(default)]
    forecasts: Vec<ForecastInput>,
    expect: Vec<Expectation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesInput {
    node: String,
    metric: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Space-separated values, one per interval from t=0; `_` for a missing sample.
    values: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogInput {
    node: String,
    signature: String,
    #[serde(deserialize_with = "durs")]
    at: Vec<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForecastInput {
    node: String,
    resource: String,
    #[serde(default, deserialize_with = "dur")]
    from: Duration,
    #[serde(default, deserialize_with = "opt_dur")]
    exhaustion: Option<Duration>,
    #[serde(default, deserialize_with = "opt_dur")]
    pessimistic: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    #[serde(deserialize_with = "dur")]
    at: Duration,
    #[serde(default)]
    actions: Vec<ExpectedAction>,
    #[serde(default)]
    blocked: Vec<ExpectedBlock>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedAction {
    rule: String,
    node: String,
    #[serde(default)]
    target: String,
    action: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedBlock {
    rule: String,
    node: String,
    guard: String,
}

fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}

fn parse_dur<E: serde::de::Error>(s: &str) -> Result<Duration, E> {
    humantime::parse_duration(s).map_err(|e| E::custom(format!("{s:?} is not a duration ({e})")))
}

fn dur<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_dur(&String::deserialize(d)?)
}

fn opt_dur<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?.map(|s| parse_dur(&s)).transpose()
}

fn durs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?.iter().map(|s| parse_dur(s)).collect()
}

/// Epoch of the simulated clock: far from 0 so "never seen" and "at 0" differ.
const T0: i64 = 1_700_000_000_000;

/// Runs every test in `file`; returns the number of tests, of failed tests, and one line per
/// failed expectation.
pub fn run_file(file: &Path) -> Result<(usize, usize, Vec<String>), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let tf: TestFile = serde_norway::from_str(&text).map_err(|e| {
        let (l, c) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
        format!("{}:{l}:{c}: {e}", file.display())
    })?;
    let base = file.parent().unwrap_or(Path::new("."));
    let paths: Vec<PathBuf> = tf.rule_files.iter().map(|p| base.join(p)).collect();
    let rules = load_files(&paths).map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))?;
    let mut failures = Vec::new();
    let mut failed = 0;
    for t in &tf.tests {
        let f = run_case(t, &rules.rules);
        failed += usize::from(!f.is_empty());
        failures.extend(f.into_iter().map(|f| format!("{}: {:?}: {f}", file.display(), t.name)));
    }
    Ok((tf.tests.len(), failed, failures))
}

fn action_of(r: &LoadedRule) -> String {
    r.rule
        .steps
        .iter()
        .map(|s| format!("{s:?}").split('(').next().unwrap_or("").to_lowercase())
        .collect::<Vec<_>>()
        .join("+")
}

fn run_case(t: &TestCase, rules: &[LoadedRule]) -> Vec<String> {
    let step_ms = t.interval.as_millis().max(1) as i64;
    let end_ms = t.expect.iter().map(|e| e.at.as_millis() as i64).max().unwrap_or(0);
    let mut facts = Facts::default();
    let mut tracker = ConditionTracker::default();
    let mut guards = GuardState::new(GlobalLimit { max: u32::MAX, per: Duration::from_secs(1) });
    let fleet: Fleet = t.nodes.clone();
    let mut active: HashMap<(String, String, String), String> = HashMap::new();
    let mut failures = Vec::new();
    let parsed: Vec<Vec<Option<f64>>> = t
        .series
        .iter()
        .map(|s| s.values.split_whitespace().map(|v| if v == "_" { None } else { v.parse().ok() }).collect())
        .collect();
    let mut n = 0usize;
    let mut now = 0i64;
    let mut fired_at: Vec<(i64, ExpectedAction)> = Vec::new();
    let mut blocked_at: Vec<(i64, ExpectedBlock)> = Vec::new();
    while now <= end_ms {
        let ts = T0 + now;
        let mut per_node: BTreeMap<String, Batch> = BTreeMap::new();
        for node in t.nodes.keys() {
            per_node.insert(node.clone(), Batch { seq: 1, created_unix_ms: ts, ..Default::default() });
        }
        for (s, vals) in t.series.iter().zip(&parsed) {
            if let Some(Some(v)) = vals.get(n) {
                let b = per_node.entry(s.node.clone()).or_insert_with(|| Batch {
                    seq: 1,
                    created_unix_ms: ts,
                    ..Default::default()
                });
                let mut labels: Vec<Label> = s.labels.iter().map(|(k, v)| Label::new(k.clone(), v.clone())).collect();
                labels.sort_by(|a, b| a.name.cmp(&b.name));
                b.samples.push(Sample { metric: s.metric.clone(), labels, timestamp_ms: ts, value: *v, kind: 1 });
            }
        }
        for l in &t.logs {
            for at in &l.at {
                let at = at.as_millis() as i64;
                if at > now - step_ms && at <= now {
                    let b = per_node.entry(l.node.clone()).or_insert_with(|| Batch {
                        seq: 1,
                        created_unix_ms: ts,
                        ..Default::default()
                    });
                    b.logs.push(LogRecord {
                        timestamp_ms: ts,
                        fields: vec![Label::new("signature", l.signature.clone())],
                        ..Default::default()
                    });
                }
            }
        }
        for (node, b) in &per_node {
            let labels: Vec<(String, String)> =
                t.nodes.get(node).map(|l| l.clone().into_iter().collect()).unwrap_or_default();
            facts.observe(node, &labels, b);
        }
        let signals = Signals {
            forecasts: t
                .forecasts
                .iter()
                .filter(|f| f.from.as_millis() as i64 <= now)
                .map(|f| ForecastView {
                    node: f.node.clone(),
                    resource: f.resource.clone(),
                    exhaustion_seconds: f.exhaustion.map(|d| d.as_secs_f64()),
                    pessimistic_seconds: f.pessimistic.map(|d| d.as_secs_f64()),
                    model: "test".into(),
                    explanation: "from the test file".into(),
                    computed_at: String::new(),
                    computed_at_ms: ts,
                })
                .collect(),
            ..Default::default()
        };
        let round = tracker.round(rules.iter().map(|r| &r.rule), &facts, &signals, ts);
        for key in round.resolved {
            if let Some(id) = active.remove(&key) {
                guards.finished(&id, true);
            }
        }
        for f in round.firing {
            let key = (f.rule.clone(), f.node.clone(), f.target.clone());
            if active.contains_key(&key) {
                continue;
            }
            let Some(lr) = rules.iter().find(|r| r.rule.name == f.rule) else { continue };
            match guards.decide(&f, &lr.rule.guards, &fleet, ts) {
                Decision::Act | Decision::DryRun | Decision::AwaitApproval => {
                    let id = format!("{}-{}", f.rule, now);
                    guards.started(&id, &f, ts);
                    active.insert(key, id);
                    fired_at.push((
                        now,
                        ExpectedAction { rule: f.rule, node: f.node, target: f.target, action: action_of(lr) },
                    ));
                }
                Decision::Skip { guard, .. } => {
                    blocked_at.push((now, ExpectedBlock { rule: f.rule, node: f.node, guard: guard.to_string() }))
                }
            }
        }
        n += 1;
        now += step_ms;
    }
    for e in &t.expect {
        let at = e.at.as_millis() as i64;
        // An expectation covers the evaluation round at its time (the last one not after it).
        let round = (at / step_ms) * step_ms;
        let mut got: Vec<ExpectedAction> =
            fired_at.iter().filter(|(w, _)| *w == round).map(|(_, a)| a.clone()).collect();
        let mut want = e.actions.clone();
        got.sort();
        want.sort();
        if got != want {
            failures.push(format!("at {:?}: actions {:?}, expected {:?}", e.at, got, want));
        }
        let mut got: Vec<ExpectedBlock> =
            blocked_at.iter().filter(|(w, _)| *w == round).map(|(_, b)| b.clone()).collect();
        let mut want = e.blocked.clone();
        got.sort();
        got.dedup();
        want.sort();
        if got != want {
            failures.push(format!("at {:?}: blocked {:?}, expected {:?}", e.at, got, want));
        }
    }
    failures
}
