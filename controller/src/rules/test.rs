//! `controller rules test FILE...`: rule unit tests, like promtool's for alerts. A test file
//! feeds series, log signatures, forecasts, anomaly episodes and fleet outliers to the real
//! condition and guard code on a simulated clock, and states, at given times, what the
//! controller decides: which actions run, are dry runs or wait for approval — with the
//! arguments of their steps — and which guards block the rest.
//!
//! ```yaml
//! rule_files: [clickhouse.yaml]          # relative to this file
//! global_rate_limit: { max: 10, per: 10m }   # the controller-wide limit (this is the default)
//! tests:
//!   - name: a read-only replica is restarted once
//!     interval: 30s                       # one input value per interval, one evaluation round per interval
//!     global_rate_limit: { max: 1, per: 1h }  # per test, overrides the file's
//!     nodes: { ch-1: { role: clickhouse, shard: s1 } }
//!     series:
//!       - { node: ch-1, metric: clickhouse_replica_is_readonly, labels: { database: db, table: t }, values: "0 1 1 1 1 1" }
//!       - { node: ch-1, metric: clickhouse_up, values: "1x3 _x2 0+0x4" }  # promtool's notation: 1 1 1 1 _ _ 0 0 0 0 0
//!     logs:
//!       - { node: ch-1, signature: too_many_parts, at: [1m, 1m10s] }
//!       - { node: ch-1, signature: too_many_simultaneous_queries, every: 10s, from: 2m, until: 20m }
//!     forecasts:                           # `until` (optional): the forecast no longer says so
//!       - { node: ch-1, resource: "clickhouse_disk:default", from: 2m, until: 1h, exhaustion: 20h, pessimistic: 10h }
//!     anomalies:                           # anomaly episodes: open from `from` until `until` with this score,
//!                                          # the series up (default) or down from its baseline
//!       - { node: ch-1, metric: clickhouse_failed_queries_total, labels: {}, score: 0.97, direction: up, from: 1m, until: 20m }
//!     outliers:                            # the node differs from the peers of its role
//!       - { node: ch-1, from: 1m, metrics: [ { metric: clickhouse_query_p99_seconds, value: 4.2, peer_median: 0.3 } ] }
//!     approvals:                           # someone approves an action waiting for approval
//!       - { at: 5m, rule: events-ttl, node: ch-1 }
//!     offline:                             # the node's agent sends nothing at all
//!       - { node: ch-2, from: 1m, until: 3m }
//!     reenable:                            # a person re-enables a rule a failed verification stopped
//!       - { at: 1h, rule: readonly-replica }
//!     expect:
//!       - at: 2m30s
//!         actions:
//!           - rule: readonly-replica
//!             node: ch-1
//!             target: "database=db,table=t"
//!             outcome: acted               # acted (default), dry_run or awaiting_approval
//!             steps:                       # as in the rule's `do`; listed arguments must match
//!               - restart: { how: replica }
//!         blocked: [ { rule: other, node: ch-1, guard: cooldown } ]
//! ```
//!
//! At each `at`, `actions` lists every decision of that evaluation round that is not a guard's
//! refusal (none when omitted) and `blocked` every refusal. `steps` is optional; when given it
//! lists every step of the action in order, each written as in the rule file, and the arguments
//! given must equal the action's (after the rule's defaults are filled in); those left out are not
//! compared. `action: sql+notify` compares only the kinds. The decisions follow the controller's
//! remediation loop, with steps that take no time and succeed: an action counts for the guards as
//! soon as it is decided, and is verified once its condition no longer holds on what the node
//! reported since (it fails if it still holds after the rule's `verify.clears_within`, which
//! stops the rule until `reenable`); a dry run is decided again every round the rule fires (the
//! audit log records it once); an action waiting for approval holds its target until approved
//! (`approvals`: it runs as soon as the other guards allow, shown as `blocked` until then),
//! expired (then it is decided again) or its condition cleared (`blocked` by `resolved`).

use super::load::{LoadedRule, load_files};
use super::model::{
    MoveTo, NotifyStep, PartitionOrder, RebalanceStep, RestartHow, RestartStep, ScaleStep, SqlStep, Step, TtlStep,
};
use crate::decide::conditions::{ConditionTracker, Firing, Signals};
use crate::decide::facts::Facts;
use crate::decide::guards::{Decision, Fleet, GlobalLimit, GuardState};
use crate::detect::engine::{ForecastView, OutlierMetricView, OutlierView};
use medic_proto::v1::{Batch, Label, LogRecord, Sample};
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    rule_files: Vec<PathBuf>,
    /// The controller-wide rate limit for every test of the file; default the controller's.
    #[serde(default)]
    global_rate_limit: Option<LimitInput>,
    tests: Vec<TestCase>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitInput {
    max: u32,
    #[serde(deserialize_with = "dur")]
    per: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    #[serde(default = "thirty_seconds", deserialize_with = "dur")]
    interval: Duration,
    #[serde(default)]
    global_rate_limit: Option<LimitInput>,
    #[serde(default)]
    nodes: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    series: Vec<SeriesInput>,
    #[serde(default)]
    logs: Vec<LogInput>,
    #[serde(default)]
    forecasts: Vec<ForecastInput>,
    #[serde(default)]
    anomalies: Vec<AnomalyInput>,
    #[serde(default)]
    outliers: Vec<OutlierInput>,
    #[serde(default)]
    approvals: Vec<ApprovalInput>,
    #[serde(default)]
    offline: Vec<OfflineInput>,
    #[serde(default)]
    reenable: Vec<ReenableInput>,
    expect: Vec<Expectation>,
}

/// A person re-enables a rule that a failed verification stopped (`controller actions reenable`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReenableInput {
    #[serde(deserialize_with = "dur")]
    at: Duration,
    rule: String,
}

/// The node's agent sends nothing at all (its series' values are dropped meanwhile).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OfflineInput {
    node: String,
    #[serde(default, deserialize_with = "dur")]
    from: Duration,
    #[serde(default, deserialize_with = "opt_dur")]
    until: Option<Duration>,
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
    /// One record at each of these times…
    #[serde(default, deserialize_with = "durs")]
    at: Vec<Duration>,
    /// …and/or one every `every` from `from` until (not including) `until`.
    #[serde(default, deserialize_with = "opt_dur")]
    every: Option<Duration>,
    #[serde(default, deserialize_with = "dur")]
    from: Duration,
    #[serde(default, deserialize_with = "opt_dur")]
    until: Option<Duration>,
}

impl LogInput {
    /// Records logged in (lo, hi], in ms of the simulated clock.
    fn count_in(&self, lo: i64, hi: i64) -> usize {
        let listed = self.at.iter().map(|a| a.as_millis() as i64).filter(|a| *a > lo && *a <= hi).count();
        let Some(every) = self.every.map(|e| e.as_millis() as i64).filter(|e| *e > 0) else { return listed };
        let (from, until) = (self.from.as_millis() as i64, self.until.map(|u| u.as_millis() as i64));
        let mut k = ((lo + 1 - from).max(0) + every - 1) / every;
        let mut n = 0;
        while from + k * every <= hi && until.is_none_or(|u| from + k * every < u) {
            n += 1;
            k += 1;
        }
        listed + n
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForecastInput {
    node: String,
    resource: String,
    #[serde(default, deserialize_with = "dur")]
    from: Duration,
    #[serde(default, deserialize_with = "opt_dur")]
    until: Option<Duration>,
    #[serde(default, deserialize_with = "opt_dur")]
    exhaustion: Option<Duration>,
    #[serde(default, deserialize_with = "opt_dur")]
    pessimistic: Option<Duration>,
}

/// An open anomaly episode, as detection reports it to rule conditions: the series and the
/// score of the sample that opened it, from its start until it closes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnomalyInput {
    node: String,
    metric: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    score: f64,
    /// Which way the series moved from its baseline: `up` (default) or `down`.
    #[serde(default = "up")]
    direction: crate::rules::model::Direction,
    #[serde(default, deserialize_with = "dur")]
    from: Duration,
    #[serde(default, deserialize_with = "opt_dur")]
    until: Option<Duration>,
}

fn up() -> crate::rules::model::Direction {
    crate::rules::model::Direction::Up
}

/// A node found to differ from the peers of its role, in these metrics.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutlierInput {
    node: String,
    /// Default: the node's `role` label.
    #[serde(default)]
    role: Option<String>,
    metrics: Vec<OutlierMetricInput>,
    #[serde(default, deserialize_with = "dur")]
    from: Duration,
    #[serde(default, deserialize_with = "opt_dur")]
    until: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutlierMetricInput {
    metric: String,
    #[serde(default)]
    value: f64,
    #[serde(default)]
    peer_median: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalInput {
    #[serde(deserialize_with = "dur")]
    at: Duration,
    rule: String,
    node: String,
    /// Default: whichever target of the rule on the node waits.
    #[serde(default)]
    target: Option<String>,
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

/// What became of a firing rule that no guard refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    /// The steps ran (right away, or once approved).
    #[default]
    Acted,
    /// Recorded what would have run; nothing ran.
    DryRun,
    /// Waits for a human's approval.
    AwaitingApproval,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Acted => "acted",
            Outcome::DryRun => "dry_run",
            Outcome::AwaitingApproval => "awaiting_approval",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedAction {
    rule: String,
    node: String,
    #[serde(default)]
    target: String,
    /// The step kinds joined by `+` (e.g. `sql+notify`), without their arguments.
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    outcome: Outcome,
    #[serde(default)]
    steps: Option<Vec<ExpectedStep>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedBlock {
    rule: String,
    node: String,
    guard: String,
}

/// One step of an expected action, written as in a rule's `do`: `ttl: { table: events, min: 3d }`.
#[derive(Debug, Clone)]
struct ExpectedStep {
    kind: &'static str,
    args: Vec<(&'static str, Arg)>,
}

/// A step argument, compared by meaning: `3d` equals `72h`, `0.20` equals `0.2`.
#[derive(Debug, Clone)]
enum Arg {
    Text(String),
    Number(f64),
    Duration(Duration),
}

#[derive(Debug, Clone, Copy)]
enum ArgType {
    Text,
    Number,
    Duration,
}

/// Every step kind and its arguments, in the order of the rule file reference.
const STEP_ARGS: &[(&str, &[(&str, ArgType)])] = &[
    ("restart", &[("how", ArgType::Text), ("service", ArgType::Text)]),
    (
        "rebalance",
        &[
            ("to", ArgType::Text),
            ("order", ArgType::Text),
            ("target_free", ArgType::Number),
            ("max_partitions", ArgType::Number),
        ],
    ),
    (
        "scale",
        &[
            ("statefulset", ArgType::Text),
            ("namespace", ArgType::Text),
            ("step", ArgType::Number),
            ("min", ArgType::Number),
            ("max", ArgType::Number),
        ],
    ),
    (
        "ttl",
        &[
            ("database", ArgType::Text),
            ("table", ArgType::Text),
            ("column", ArgType::Text),
            ("min", ArgType::Duration),
            ("max", ArgType::Duration),
            ("factor", ArgType::Number),
            ("restore_after", ArgType::Duration),
        ],
    ),
    ("notify", &[("severity", ArgType::Text), ("summary", ArgType::Text)]),
    ("sql", &[("statement", ArgType::Text)]),
];

impl<'de> Deserialize<'de> for ExpectedStep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let kinds = || STEP_ARGS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ");
        let map = BTreeMap::<String, Option<BTreeMap<String, serde_norway::Value>>>::deserialize(d)?;
        let mut entries = map.into_iter();
        let (Some((kind, args)), None) = (entries.next(), entries.next()) else {
            return Err(D::Error::custom(format!(
                "a step is one kind with its arguments, e.g. `- ttl: {{ table: events, min: 3d }}` (kinds: {})",
                kinds()
            )));
        };
        let Some((kind, known)) = STEP_ARGS.iter().find(|(k, _)| *k == kind) else {
            return Err(D::Error::custom(format!("unknown step kind `{kind}`; expected one of {}", kinds())));
        };
        let mut out = Vec::new();
        for (name, value) in args.unwrap_or_default() {
            let Some((name, ty)) = known.iter().find(|(n, _)| *n == name) else {
                return Err(D::Error::custom(format!(
                    "`{kind}` has no argument `{name}`; its arguments are {}",
                    known.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                )));
            };
            let arg =
                arg_of(*ty, &value).map_err(|why| D::Error::custom(format!("`{kind}` argument `{name}`: {why}")))?;
            out.push((*name, arg));
        }
        out.sort_by_key(|(n, _)| known.iter().position(|(k, _)| k == n));
        Ok(ExpectedStep { kind, args: out })
    }
}

fn arg_of(ty: ArgType, v: &serde_norway::Value) -> Result<Arg, String> {
    use serde_norway::Value;
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => return Err(format!("expected a single value, got {other:?}")),
    };
    match ty {
        ArgType::Text => Ok(Arg::Text(text)),
        ArgType::Number => match v {
            Value::Number(n) => n.as_f64().map(Arg::Number).ok_or_else(|| format!("{n} is not a number")),
            _ => text.trim().parse().map(Arg::Number).map_err(|_| format!("{text:?} is not a number")),
        },
        ArgType::Duration => humantime::parse_duration(&text)
            .map(Arg::Duration)
            .map_err(|e| format!("{text:?} is not a duration ({e}); write it like 30s, 10m, 1h, 7d")),
    }
}

impl PartialEq for Arg {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Arg::Text(a), Arg::Text(b)) => a == b,
            (Arg::Number(a), Arg::Number(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
            (Arg::Duration(a), Arg::Duration(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for Arg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arg::Text(s) => {
                let plain = !s.is_empty()
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./*=:".contains(c))
                    && !s.ends_with(':');
                if plain { f.write_str(s) } else { write!(f, "{s:?}") }
            }
            Arg::Number(n) => write!(f, "{n}"),
            Arg::Duration(d) => f.write_str(&fmt_dur(*d)),
        }
    }
}

/// `3d`, `1h30m`, `45s`, `500ms`: how durations are written in rule files.
fn fmt_dur(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut s = String::new();
    let mut rest = ms;
    for (unit, len) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)] {
        if rest >= len {
            s.push_str(&format!("{}{unit}", rest / len));
            rest %= len;
        }
    }
    s
}

/// A step's kind and all its arguments, defaults filled in, as a rule file would write them.
fn step_args(step: &Step) -> (&'static str, Vec<(&'static str, Arg)>) {
    let text = |s: &str| Arg::Text(s.to_string());
    let num = |n: f64| Arg::Number(n);
    // Destructured in full, so a new step argument does not compile until it is listed here.
    match step {
        Step::Restart(RestartStep { how, service }) => {
            let how = match how {
                RestartHow::Auto => "auto",
                RestartHow::Pod => "pod",
                RestartHow::Service => "service",
                RestartHow::Replica => "replica",
            };
            ("restart", vec![("how", text(how)), ("service", text(service))])
        }
        Step::Rebalance(RebalanceStep { to, order, target_free, max_partitions }) => (
            "rebalance",
            vec![
                ("to", text(if *to == MoveTo::Disk { "disk" } else { "volume" })),
                ("order", text(if *order == PartitionOrder::Age { "age" } else { "size" })),
                ("target_free", num(*target_free)),
                ("max_partitions", num(f64::from(*max_partitions))),
            ],
        ),
        Step::Scale(ScaleStep { statefulset, namespace, step, min, max }) => (
            "scale",
            vec![
                ("statefulset", text(statefulset)),
                ("namespace", text(namespace)),
                ("step", num(f64::from(*step))),
                ("min", num(f64::from(*min))),
                ("max", num(f64::from(*max))),
            ],
        ),
        Step::Ttl(TtlStep { database, table, column, min, max, factor, restore_after }) => (
            "ttl",
            vec![
                ("database", text(database)),
                ("table", text(table)),
                ("column", text(column)),
                ("min", Arg::Duration(*min)),
                ("max", Arg::Duration(*max)),
                ("factor", num(*factor)),
                ("restore_after", Arg::Duration(*restore_after)),
            ],
        ),
        Step::Notify(NotifyStep { severity, summary }) => {
            ("notify", vec![("severity", text(severity)), ("summary", text(summary))])
        }
        Step::Sql(SqlStep { statement }) => ("sql", vec![("statement", text(statement))]),
    }
}

fn fmt_args<'a>(kind: &str, args: impl Iterator<Item = (&'a str, &'a Arg)>) -> String {
    let args: Vec<String> = args.map(|(n, a)| format!("{n}: {a}")).collect();
    if args.is_empty() { kind.to_string() } else { format!("{kind} {{ {} }}", args.join(", ")) }
}

fn fmt_step(step: &Step) -> String {
    let (kind, args) = step_args(step);
    fmt_args(kind, args.iter().map(|(n, a)| (*n, a)))
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

/// What the tests of one file exercise of one rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Some test expects the rule to act (or dry-run, or wait for approval) and states its
    /// steps' arguments.
    pub fires_with_arguments: bool,
    /// Some test expects a guard to block it.
    pub blocked: bool,
}

/// The result of one test file.
#[derive(Debug, Default)]
pub struct FileReport {
    pub tests: usize,
    pub failed: usize,
    /// One message per failed test: what differed, at which time.
    pub failures: Vec<String>,
    /// Every rule of the file's `rule_files`, and what its tests exercise.
    pub coverage: BTreeMap<String, Coverage>,
}

/// Runs every test in `file`; returns the number of tests, of failed tests, and one message per
/// failed test.
pub fn run_file(file: &Path) -> Result<(usize, usize, Vec<String>), String> {
    run(file).map(|r| (r.tests, r.failed, r.failures))
}

/// Runs every test in `file`.
pub fn run(file: &Path) -> Result<FileReport, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let tf: TestFile = serde_norway::from_str(&text).map_err(|e| {
        let (l, c) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
        format!("{}:{l}:{c}: {e}", file.display())
    })?;
    let base = file.parent().unwrap_or(Path::new("."));
    let paths: Vec<PathBuf> = tf.rule_files.iter().map(|p| base.join(p)).collect();
    let rules = load_files(&paths).map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))?;
    let mut report = FileReport {
        tests: tf.tests.len(),
        coverage: rules.rules.iter().map(|r| (r.rule.name.clone(), Coverage::default())).collect(),
        ..Default::default()
    };
    for t in &tf.tests {
        let limit = t.global_rate_limit.as_ref().or(tf.global_rate_limit.as_ref());
        let global = limit.map(|l| GlobalLimit { max: l.max, per: l.per }).unwrap_or_default();
        let f = run_case(t, &rules.rules, global);
        if !f.is_empty() {
            report.failed += 1;
            report.failures.push(format!("{}: {:?}:\n{}", file.display(), t.name, f.join("\n")));
        }
        for e in &t.expect {
            for a in &e.actions {
                if let Some(c) = report.coverage.get_mut(&a.rule) {
                    c.fires_with_arguments |= a.steps.as_ref().is_some_and(|s| !s.is_empty());
                }
            }
            for b in &e.blocked {
                if let Some(c) = report.coverage.get_mut(&b.rule) {
                    c.blocked = true;
                }
            }
        }
    }
    Ok(report)
}

fn action_of(steps: &[Step]) -> String {
    steps.iter().map(|s| step_args(s).0).collect::<Vec<_>>().join("+")
}

type Key = (String, String, String);

/// A decision of one round that no guard refused.
#[derive(Debug, Clone)]
struct Decided {
    round: i64,
    rule: String,
    node: String,
    target: String,
    outcome: Outcome,
    steps: Vec<Step>,
}

impl fmt::Display for Decided {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps: Vec<String> = self.steps.iter().map(fmt_step).collect();
        write!(f, "{}: {} [{}]", where_(&self.rule, &self.node, &self.target), self.outcome, steps.join(", "))
    }
}

fn where_(rule: &str, node: &str, target: &str) -> String {
    if target.is_empty() { format!("{rule} on {node}") } else { format!("{rule} on {node}, target {target:?}") }
}

impl fmt::Display for ExpectedAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", where_(&self.rule, &self.node, &self.target), self.outcome)?;
        match (&self.steps, &self.action) {
            (Some(steps), _) => {
                let steps: Vec<String> =
                    steps.iter().map(|s| fmt_args(s.kind, s.args.iter().map(|(n, a)| (*n, a)))).collect();
                write!(f, " [{}]", steps.join(", "))
            }
            (None, Some(a)) => write!(f, " {a}"),
            (None, None) => Ok(()),
        }
    }
}

/// How `got` differs from `want` (same rule and node); empty when it is what was expected.
fn differences(want: &ExpectedAction, got: &Decided) -> Vec<String> {
    let mut d = Vec::new();
    if want.target != got.target {
        d.push(format!("target: expected {:?}, got {:?}", want.target, got.target));
    }
    if want.outcome != got.outcome {
        d.push(format!("outcome: expected {}, got {}", want.outcome, got.outcome));
    }
    if let Some(a) = &want.action
        && *a != action_of(&got.steps)
    {
        d.push(format!("action: expected {a}, got {}", action_of(&got.steps)));
    }
    if let Some(steps) = &want.steps {
        let got_kinds: Vec<&str> = got.steps.iter().map(|s| step_args(s).0).collect();
        let want_kinds: Vec<&str> = steps.iter().map(|s| s.kind).collect();
        if got_kinds != want_kinds {
            d.push(format!("steps: expected [{}], got [{}]", want_kinds.join(", "), got_kinds.join(", ")));
        } else {
            for (w, g) in steps.iter().zip(&got.steps) {
                let (kind, actual) = step_args(g);
                for (name, arg) in &w.args {
                    match actual.iter().find(|(n, _)| n == name) {
                        Some((_, a)) if a == arg => {}
                        Some((_, a)) => d.push(format!("{kind}.{name}: expected {arg}, got {a}")),
                        None => d.push(format!("{kind}.{name}: expected {arg}, the step has no such argument")),
                    }
                }
            }
        }
    }
    d
}

struct Verifying {
    id: String,
    key: Key,
    since_ms: i64,
    deadline_ms: i64,
}

struct Waiting {
    firing: Firing,
    expires_ms: i64,
    approved: bool,
}

fn key_of(f: &Firing) -> Key {
    (f.rule.clone(), f.node.clone(), f.target.clone())
}

fn active(from: Duration, until: Option<Duration>, now_ms: i64) -> bool {
    from.as_millis() as i64 <= now_ms && until.is_none_or(|u| now_ms < u.as_millis() as i64)
}

/// A series' `values`, one per interval, in promtool's notation: `1 2 _ 4`, where `_` is a missing
/// sample, `_x3` three of them, `a+bxn` the n+1 values a, a+b, …, a+n·b (`a-bxn` going down) and
/// `axn` a repeated n+1 times.
fn expand_values(text: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for tok in text.split_whitespace() {
        let bad = || format!("{tok:?} is not a number, `_`, `_xN` or `a+bxN`");
        if tok == "_" {
            out.push(None);
        } else if let Some(n) = tok.strip_prefix("_x") {
            out.extend(std::iter::repeat_n(None, n.parse::<usize>().map_err(|_| bad())?));
        } else if let Ok(v) = tok.parse::<f64>() {
            out.push(Some(v));
        } else {
            let (head, n) = tok.rsplit_once('x').ok_or_else(bad)?;
            let n: usize = n.parse().map_err(|_| bad())?;
            // The sign of the step, not of the start or of an exponent.
            let split = head
                .char_indices()
                .skip(1)
                .filter(|(i, c)| matches!(c, '+' | '-') && !head[..*i].ends_with(['e', 'E']))
                .map(|(i, _)| i)
                .last();
            let (a, b) = match split {
                Some(i) => (head[..i].parse::<f64>(), head[i..].trim_start_matches('+').parse::<f64>()),
                None => (head.parse::<f64>(), Ok(0.0)),
            };
            let (a, b) = (a.map_err(|_| bad())?, b.map_err(|_| bad())?);
            out.extend((0..=n).map(|i| Some(a + b * i as f64)));
        }
    }
    Ok(out)
}

fn labels_text(l: &BTreeMap<String, String>) -> String {
    l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Inputs that cannot mean what the author meant, before anything runs.
fn check_case(t: &TestCase, rules: &[LoadedRule]) -> Vec<String> {
    let known: HashSet<&str> = rules.iter().map(|r| r.rule.name.as_str()).collect();
    let mut bad = Vec::new();
    let mut unknown = |rule: &str, place: String| {
        if !known.contains(rule) {
            bad.push(format!("  {place}: no rule named {rule:?} in rule_files"));
        }
    };
    for e in &t.expect {
        for a in &e.actions {
            unknown(&a.rule, format!("expect at {}", fmt_dur(e.at)));
        }
        for b in &e.blocked {
            unknown(&b.rule, format!("expect at {}", fmt_dur(e.at)));
        }
    }
    for a in &t.approvals {
        unknown(&a.rule, format!("approval at {}", fmt_dur(a.at)));
    }
    for r in &t.reenable {
        unknown(&r.rule, format!("reenable at {}", fmt_dur(r.at)));
    }
    for a in &t.anomalies {
        if !(0.0..=1.0).contains(&a.score) {
            bad.push(format!("  anomaly on {} {}: score {} must be in [0, 1]", a.node, a.metric, a.score));
        }
    }
    for s in &t.series {
        if let Err(e) = expand_values(&s.values) {
            bad.push(format!("  series {} on {}: {e}", s.metric, s.node));
        }
    }
    for l in &t.logs {
        if l.every.is_some_and(|e| e.is_zero()) {
            bad.push(format!("  logs {} on {}: `every` must be more than 0", l.signature, l.node));
        }
    }
    for o in &t.outliers {
        if o.metrics.is_empty() {
            bad.push(format!("  outlier on {}: list the metrics it differs in", o.node));
        }
    }
    bad
}

fn run_case(t: &TestCase, rules: &[LoadedRule], global: GlobalLimit) -> Vec<String> {
    let mut failures = check_case(t, rules);
    if !failures.is_empty() {
        return failures;
    }
    let step_ms = t.interval.as_millis().max(1) as i64;
    let end_ms = t
        .expect
        .iter()
        .map(|e| e.at.as_millis() as i64)
        .chain(t.approvals.iter().map(|a| a.at.as_millis() as i64))
        .chain(t.reenable.iter().map(|a| a.at.as_millis() as i64))
        .max()
        .unwrap_or(0);
    // Every node an input mentions reports every round (an empty batch when it has nothing),
    // unless it is offline.
    let nodes: BTreeSet<String> = t
        .nodes
        .keys()
        .cloned()
        .chain(t.series.iter().map(|s| s.node.clone()))
        .chain(t.logs.iter().map(|s| s.node.clone()))
        .chain(t.forecasts.iter().map(|s| s.node.clone()))
        .chain(t.anomalies.iter().map(|s| s.node.clone()))
        .chain(t.outliers.iter().map(|s| s.node.clone()))
        .collect();
    let fleet: Fleet = nodes.iter().map(|n| (n.clone(), t.nodes.get(n).cloned().unwrap_or_default())).collect();
    let by_name: HashMap<&str, &LoadedRule> = rules.iter().map(|r| (r.rule.name.as_str(), r)).collect();
    let mut facts = Facts::default();
    let mut tracker = ConditionTracker::default();
    let mut guards = GuardState::new(global);
    let mut verifying: Vec<Verifying> = Vec::new();
    let mut waiting: Vec<Waiting> = Vec::new();
    let mut decided: Vec<Decided> = Vec::new();
    let mut blocked: Vec<(i64, ExpectedBlock, String)> = Vec::new();
    let parsed: Vec<Vec<Option<f64>>> = t.series.iter().map(|s| expand_values(&s.values).unwrap_or_default()).collect();
    let mut ids = 0u64;
    let mut n = 0usize;
    let mut now = 0i64;
    while now <= end_ms {
        let ts = T0 + now;
        let in_round = |at: Duration| {
            let at = at.as_millis() as i64;
            at > now - step_ms && at <= now
        };
        let mut per_node: BTreeMap<&str, Batch> = nodes
            .iter()
            .filter(|n| !t.offline.iter().any(|o| o.node == **n && active(o.from, o.until, now)))
            .map(|n| (n.as_str(), Batch { seq: 1, created_unix_ms: ts, ..Default::default() }))
            .collect();
        for (s, vals) in t.series.iter().zip(&parsed) {
            if let (Some(Some(v)), Some(b)) = (vals.get(n), per_node.get_mut(s.node.as_str())) {
                let labels: Vec<Label> = s.labels.iter().map(|(k, v)| Label::new(k.clone(), v.clone())).collect();
                b.samples.push(Sample { metric: s.metric.clone(), labels, timestamp_ms: ts, value: *v, kind: 1 });
            }
        }
        for l in &t.logs {
            if let Some(b) = per_node.get_mut(l.node.as_str()) {
                for _ in 0..l.count_in(now - step_ms, now) {
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
                fleet.get(*node).map(|l| l.clone().into_iter().collect()).unwrap_or_default();
            facts.observe(node, &labels, b);
        }
        let mut signals = Signals {
            forecasts: t
                .forecasts
                .iter()
                .filter(|f| active(f.from, f.until, now))
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
            outliers: t
                .outliers
                .iter()
                .filter(|o| active(o.from, o.until, now))
                .map(|o| OutlierView {
                    node: o.node.clone(),
                    role: o
                        .role
                        .clone()
                        .or_else(|| fleet.get(&o.node).and_then(|l| l.get("role").cloned()))
                        .unwrap_or_default(),
                    metrics: o
                        .metrics
                        .iter()
                        .map(|m| OutlierMetricView {
                            metric: m.metric.clone(),
                            value: m.value,
                            peer_median: m.peer_median,
                            outlying_fraction: 1.0,
                            flagged_by: vec!["test".into()],
                        })
                        .collect(),
                    detected_at: String::new(),
                })
                .collect(),
            ..Default::default()
        };
        for a in t.anomalies.iter().filter(|a| active(a.from, a.until, now)) {
            let (baseline, observed) = match a.direction {
                crate::rules::model::Direction::Down => (1.0, 0.0),
                _ => (0.0, 1.0),
            };
            signals.anomalies.entry(a.node.clone()).or_default().push(crate::decide::conditions::AnomalySignal {
                metric: a.metric.clone(),
                labels: labels_text(&a.labels),
                score: a.score,
                baseline,
                observed,
            });
        }
        let round = tracker.round(rules.iter().map(|r| &r.rule), &facts, &signals, ts);

        let resolved: HashSet<Key> = round.resolved.into_iter().collect();
        let holding: HashSet<Key> =
            round.holding.iter().map(|f| (f.rule.clone(), f.node.clone(), f.target.clone())).collect();
        let block =
            |f: &Firing, guard: &str| ExpectedBlock { rule: f.rule.clone(), node: f.node.clone(), guard: guard.into() };

        // What waits for approval for a problem that is gone is dropped: an approval must not run it.
        waiting.retain(|w| {
            let gone = resolved.contains(&key_of(&w.firing));
            if gone {
                let why = "the condition cleared before the action ran; nothing was done".to_string();
                blocked.push((now, block(&w.firing, "resolved"), why));
            }
            !gone
        });

        // Verification, as the controller does it: the condition no longer holds on what the node
        // reported since the action, or the window ended (which stops the rule).
        verifying.retain(|v| {
            let cond = by_name.get(v.key.0.as_str()).and_then(|r| r.rule.when.condition());
            let observed = facts.nodes.get(&v.key.1).is_some_and(|nf| {
                cond.as_ref().is_some_and(|c| crate::decide::conditions::observed_since(c, nf, v.since_ms))
            });
            if !holding.contains(&v.key) && observed {
                guards.finished(&v.id, true);
                false
            } else if ts >= v.deadline_ms {
                // As live: a page that outlasts its window does not stop its rule.
                let pages = by_name.get(v.key.0.as_str()).is_some_and(|r| notify_only(&r.rule));
                guards.finished(&v.id, pages);
                false
            } else {
                true
            }
        });
        let mut start = |guards: &mut GuardState, verifying: &mut Vec<Verifying>, f: &Firing, lr: &LoadedRule| {
            ids += 1;
            let id = format!("test-{ids}");
            guards.started(&id, f, ts);
            if notify_only(&lr.rule) {
                guards.pages_only(&id);
            }
            verifying.push(Verifying {
                id,
                key: key_of(f),
                // The steps take no time here: judged on what the node reports from the next round.
                since_ms: ts + 1,
                deadline_ms: ts + lr.rule.verify.clears_within.as_millis() as i64,
            });
        };

        // A person re-enables a rule that a failed verification stopped.
        for r in t.reenable.iter().filter(|r| in_round(r.at)) {
            if guards.failing_rules().any(|x| *x == r.rule) {
                guards.reenable(&r.rule);
            } else {
                failures.push(format!("  reenable at {}: rule {} is not stopped then", fmt_dur(r.at), r.rule));
            }
        }

        // Approvals given now; an approved action runs once the guards allow it (approval and
        // dry-run aside), or expires.
        for a in t.approvals.iter().filter(|a| in_round(a.at)) {
            let w = waiting.iter_mut().find(|w| {
                w.firing.rule == a.rule
                    && w.firing.node == a.node
                    && a.target.as_ref().is_none_or(|t| *t == w.firing.target)
                    && !w.approved
            });
            match w {
                Some(w) => w.approved = true,
                None => failures.push(format!(
                    "  approval at {}: nothing of {} waits for approval then",
                    fmt_dur(a.at),
                    where_(&a.rule, &a.node, a.target.as_deref().unwrap_or(""))
                )),
            }
        }
        let mut still = Vec::new();
        for w in std::mem::take(&mut waiting) {
            let Some(lr) = by_name.get(w.firing.rule.as_str()) else { continue };
            if w.approved {
                match guards.decide_approved(&w.firing, &lr.rule.guards, &fleet, ts) {
                    Decision::Act => {
                        start(&mut guards, &mut verifying, &w.firing, lr);
                        decided.push(Decided {
                            round: now,
                            rule: w.firing.rule.clone(),
                            node: w.firing.node.clone(),
                            target: w.firing.target.clone(),
                            outcome: Outcome::Acted,
                            steps: lr.rule.steps.clone(),
                        });
                        continue;
                    }
                    Decision::Skip { guard, reason } if ts < w.expires_ms => {
                        blocked.push((now, block(&w.firing, guard), format!("approved; waits: {reason}")));
                        still.push(w);
                        continue;
                    }
                    _ => {}
                }
            }
            if ts < w.expires_ms {
                still.push(w);
            }
        }
        waiting = still;

        // New decisions on what fires and is not already being acted on or waiting.
        let mut busy: HashSet<Key> =
            verifying.iter().map(|v| v.key.clone()).chain(waiting.iter().map(|w| key_of(&w.firing))).collect();
        for f in round.firing {
            let key = (f.rule.clone(), f.node.clone(), f.target.clone());
            if busy.contains(&key) {
                continue;
            }
            let Some(lr) = by_name.get(f.rule.as_str()) else { continue };
            let mut record = |outcome| {
                decided.push(Decided {
                    round: now,
                    rule: f.rule.clone(),
                    node: f.node.clone(),
                    target: f.target.clone(),
                    outcome,
                    steps: lr.rule.steps.clone(),
                })
            };
            match guards.decide(&f, &lr.rule.guards, &fleet, ts) {
                Decision::Act => {
                    record(Outcome::Acted);
                    // Started at once: later firings of this round see it (blast radius, limits).
                    start(&mut guards, &mut verifying, &f, lr);
                    busy.insert(key);
                }
                Decision::DryRun => record(Outcome::DryRun),
                Decision::AwaitApproval => {
                    record(Outcome::AwaitingApproval);
                    let expires =
                        lr.rule.guards.approval.as_ref().map(|a| a.expires_after).unwrap_or(Duration::from_secs(3600));
                    waiting.push(Waiting { firing: f, expires_ms: ts + expires.as_millis() as i64, approved: false });
                    busy.insert(key);
                }
                Decision::Skip { guard, reason } => {
                    blocked.push((now, ExpectedBlock { rule: f.rule, node: f.node, guard: guard.to_string() }, reason))
                }
            }
        }
        n += 1;
        now += step_ms;
    }
    for e in &t.expect {
        // An expectation covers the evaluation round at its time (the last one not after it).
        let round = (e.at.as_millis() as i64 / step_ms) * step_ms;
        let mut lines = Vec::new();
        let mut got: Vec<&Decided> = decided.iter().filter(|d| d.round == round).collect();
        let mut unmatched: Vec<&ExpectedAction> = Vec::new();
        for want in &e.actions {
            match got.iter().position(|g| g.rule == want.rule && g.node == want.node && differences(want, g).is_empty())
            {
                Some(i) => {
                    got.remove(i);
                }
                None => unmatched.push(want),
            }
        }
        for want in unmatched {
            // The closest decision for the same rule and node, to say what differs.
            let near = got
                .iter()
                .enumerate()
                .filter(|(_, g)| g.rule == want.rule && g.node == want.node)
                .min_by_key(|(_, g)| (g.target != want.target, differences(want, g).len()))
                .map(|(i, _)| i);
            match near {
                Some(i) => {
                    let g = got.remove(i);
                    lines.push(format!("    - expected: {want}"));
                    lines.push(format!("      got:      {g}"));
                    lines.push(format!("      differs:  {}", differences(want, g).join("; ")));
                }
                None => lines.push(format!("    - expected: {want}\n      got:      nothing for this rule and node")),
            }
        }
        for g in got {
            lines.push(format!("    - unexpected: {g}"));
        }
        let mut got_blocked: Vec<(&ExpectedBlock, &str)> =
            blocked.iter().filter(|(w, _, _)| *w == round).map(|(_, b, r)| (b, r.as_str())).collect();
        got_blocked.sort();
        got_blocked.dedup_by(|a, b| a.0 == b.0);
        let mut want_blocked: Vec<&ExpectedBlock> = e.blocked.iter().collect();
        want_blocked.sort();
        want_blocked.dedup();
        for w in &want_blocked {
            if !got_blocked.iter().any(|(g, _)| g == w) {
                let other: Vec<String> = got_blocked
                    .iter()
                    .filter(|(g, _)| g.rule == w.rule && g.node == w.node)
                    .map(|(g, r)| format!("{} ({r})", g.guard))
                    .collect();
                let got = if other.is_empty() { "not blocked".to_string() } else { other.join(", ") };
                lines.push(format!(
                    "    - expected blocked: {} by {}; got: {got}",
                    where_(&w.rule, &w.node, ""),
                    w.guard
                ));
            }
        }
        for (g, reason) in &got_blocked {
            if !want_blocked.contains(g) {
                lines.push(format!(
                    "    - unexpected blocked: {} by {} ({reason})",
                    where_(&g.rule, &g.node, ""),
                    g.guard
                ));
            }
        }
        if !lines.is_empty() {
            failures.push(format!("  at {}:\n{}", fmt_dur(e.at), lines.join("\n")));
        }
    }
    failures
}

/// As the live loop: a rule whose steps only page.
fn notify_only(rule: &crate::rules::model::Rule) -> bool {
    rule.steps.iter().all(|s| matches!(s, crate::rules::model::Step::Notify(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const RULES: &str = r#"
rules:
  - name: events-ttl
    when:
      forecast: { resource: "clickhouse_disk:*", within: 24h }
      for: 10m
    do:
      - ttl: { database: analytics, table: events, min: 3d, max: 30d }
    guards:
      approval: { expires_after: 30m }
  - name: scale-up
    when:
      threshold: { metric: queue, op: ">", value: 10 }
    do:
      - scale: { statefulset: clickhouse, namespace: ch, min: 2, max: 4 }
    guards:
      dry_run: true
  - name: restart
    when:
      threshold: { metric: clickhouse_up, op: "==", value: 0 }
    do:
      - restart: { how: auto }
      - notify: { severity: critical, summary: "restarted" }
    guards:
      cooldown: 1h
    verify: { clears_within: 5m }
"#;

    fn run_text(test: &str) -> FileReport {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "r.yaml", RULES);
        let f = write(dir.path(), "r-test.yaml", test);
        run(&f).unwrap()
    }

    #[test]
    fn arguments_as_written_in_the_rule_file_are_compared_after_defaults_and_by_meaning() {
        let r = run_text(
            r#"
rule_files: [r.yaml]
tests:
  - name: restart
    interval: 1m
    series: [ { node: n, metric: clickhouse_up, values: "0 1" } ]
    expect:
      - at: 0s
        actions:
          - rule: restart
            node: n
            steps:
              - restart: { how: auto, service: clickhouse-server }
              - notify: { severity: critical }
  - name: ttl
    interval: 5m
    forecasts: [ { node: n, resource: "clickhouse_disk:default", exhaustion: 10h } ]
    expect:
      - at: 10m
        actions:
          - rule: events-ttl
            node: n
            target: "clickhouse_disk:default"
            outcome: awaiting_approval
            steps: [ { ttl: { table: events, min: 72h, max: 30d, factor: 0.80, restore_after: 6h } } ]
"#,
        );
        assert_eq!((r.tests, r.failed), (2, 0), "{}", r.failures.join("\n"));
        assert_eq!(
            r.coverage["restart"],
            Coverage { fires_with_arguments: true, blocked: false },
            "steps asserted, no guard blocking"
        );
    }

    #[test]
    fn a_wrong_argument_or_outcome_fails_with_a_readable_diff() {
        let r = run_text(
            r#"
rule_files: [r.yaml]
tests:
  - name: ttl
    interval: 5m
    forecasts: [ { node: n, resource: "clickhouse_disk:default", exhaustion: 10h } ]
    expect:
      - at: 10m
        actions:
          - rule: events-ttl
            node: n
            target: "clickhouse_disk:default"
            steps: [ { ttl: { table: logs, min: 2d } } ]
"#,
        );
        assert_eq!(r.failed, 1);
        let msg = &r.failures[0];
        assert!(msg.contains("at 10m:"), "{msg}");
        assert!(msg.contains("outcome: expected acted, got awaiting_approval"), "{msg}");
        assert!(msg.contains("ttl.table: expected logs, got events"), "{msg}");
        assert!(msg.contains("ttl.min: expected 2d, got 3d"), "{msg}");
        assert!(msg.contains("got:      events-ttl on n, target \"clickhouse_disk:default\": awaiting_approval [ttl { database: analytics, table: events, column: ts, min: 3d, max: 30d, factor: 0.8, restore_after: 6h }]"), "{msg}");
    }

    #[test]
    fn dry_runs_are_decided_every_round_and_never_start_anything() {
        let r = run_text(
            r#"
rule_files: [r.yaml]
tests:
  - name: dry
    interval: 1m
    series: [ { node: n, metric: queue, values: "20 20 5" } ]
    expect:
      - at: 0s
        actions: [ { rule: scale-up, node: n, outcome: dry_run, steps: [ { scale: { statefulset: clickhouse, step: 1, max: 4 } } ] } ]
      - at: 1m
        actions: [ { rule: scale-up, node: n, outcome: dry_run } ]
      - at: 2m
        actions: []
"#,
        );
        assert_eq!(r.failed, 0, "{}", r.failures.join("\n"));
        let r = run_text(
            r#"
rule_files: [r.yaml]
tests:
  - name: dry is not acted
    series: [ { node: n, metric: queue, values: "20" } ]
    expect:
      - at: 0s
        actions: [ { rule: scale-up, node: n } ]
"#,
        );
        assert!(r.failures[0].contains("outcome: expected acted, got dry_run"), "{}", r.failures[0]);
    }

    #[test]
    fn an_approved_action_runs_when_approved_and_an_unapproved_one_expires_and_asks_again() {
        let r = run_text(
            r#"
rule_files: [r.yaml]
tests:
  - name: approval
    interval: 5m
    nodes: { a: {}, b: {} }
    forecasts:
      - { node: a, resource: "clickhouse_disk:default", exhaustion: 10h, until: 25m }
      - { node: b, resource: "clickhouse_disk:default", exhaustion: 10h }
    approvals: [ { at: 20m, rule: events-ttl, node: a } ]
    expect:
      - at: 10m
        actions:
          - { rule: events-ttl, node: a, target: "clickhouse_disk:default", outcome: awaiting_approval }
          - { rule: events-ttl, node: b, target: "clickhouse_disk:default", outcome: awaiting_approval }
      - at: 15m
        actions: []
      - at: 20m
        actions: [ { rule: events-ttl, node: a, target: "clickhouse_disk:default", outcome: acted } ]
      - at: 40m
        actions: [ { rule: events-ttl, node: b, target: "clickhouse_disk:default", outcome: awaiting_approval } ]
"#,
        );
        assert_eq!(r.failed, 0, "{}", r.failures.join("\n"));
        let r = run_text(
            r#"
rule_files: [r.yaml]
tests:
  - name: nothing to approve
    approvals: [ { at: 1m, rule: events-ttl, node: a } ]
    expect: []
"#,
        );
        assert!(
            r.failures[0].contains("approval at 1m: nothing of events-ttl on a waits for approval"),
            "{:?}",
            r.failures
        );
    }

    #[test]
    fn an_approved_action_waits_for_the_other_guards_and_one_whose_condition_cleared_is_dropped() {
        let r = run_text(
            r#"
rule_files: [r.yaml]
tests:
  - name: approval and guards
    interval: 1m
    nodes: { a: { shard: s1 }, b: { shard: s1 }, c: { shard: s2 } }
    series: [ { node: b, metric: clickhouse_up, values: "1x11 0x4 1x10" } ]
    forecasts:
      - { node: a, resource: "clickhouse_disk:default", exhaustion: 10h }
      - { node: c, resource: "clickhouse_disk:default", exhaustion: 10h, until: 15m }
    approvals: [ { at: 14m, rule: events-ttl, node: a } ]
    expect:
      - at: 10m
        actions:
          - { rule: events-ttl, node: a, target: "clickhouse_disk:default", outcome: awaiting_approval }
          - { rule: events-ttl, node: c, target: "clickhouse_disk:default", outcome: awaiting_approval }
      - at: 12m
        actions: [ { rule: restart, node: b } ]
      - at: 14m
        blocked: [ { rule: events-ttl, node: a, guard: shard } ]
      - at: 15m
        blocked: [ { rule: events-ttl, node: a, guard: shard }, { rule: events-ttl, node: c, guard: resolved } ]
      - at: 16m
        blocked: [ { rule: events-ttl, node: a, guard: shard } ]
      - at: 17m
        actions: [ { rule: events-ttl, node: a, target: "clickhouse_disk:default", outcome: acted } ]
"#,
        );
        assert_eq!(r.failed, 0, "{}", r.failures.join("\n"));
    }

    #[test]
    fn a_rule_stopped_by_a_failed_verification_acts_again_once_re_enabled() {
        let r = run_text(
            r#"
rule_files: [r.yaml]
tests:
  - name: reenable
    interval: 1m
    nodes: { m: {}, n: {} }
    series:
      - { node: n, metric: clickhouse_up, values: "0x12" }
      - { node: m, metric: clickhouse_up, values: "1x7 0x5" }
    reenable: [ { at: 10m, rule: restart } ]
    expect:
      - at: 0s
        actions: [ { rule: restart, node: n } ]
      - at: 5m
        blocked: [ { rule: restart, node: n, guard: rule_failing } ]
      - at: 9m
        blocked: [ { rule: restart, node: m, guard: rule_failing }, { rule: restart, node: n, guard: rule_failing } ]
      - at: 10m
        actions: [ { rule: restart, node: m } ]
        blocked: [ { rule: restart, node: n, guard: cooldown } ]
"#,
        );
        assert_eq!(r.failed, 0, "{}", r.failures.join("\n"));
        let r = run_text(
            "rule_files: [r.yaml]\ntests:\n  - name: x\n    reenable: [ { at: 1m, rule: restart } ]\n    expect: []\n",
        );
        assert!(r.failures[0].contains("reenable at 1m: rule restart is not stopped then"), "{:?}", r.failures);
    }

    #[test]
    fn the_controller_wide_rate_limit_defaults_to_the_controllers_and_can_be_set_per_file_and_per_test() {
        let acted = |file_limit: &str, test_limit: &str| {
            let dir = tempfile::tempdir().unwrap();
            write(
                dir.path(),
                "r.yaml",
                "rules:\n  - name: wide\n    when: { threshold: { metric: m, op: \">\", value: 0 } }\n    do: [ { notify: {} } ]\n    guards: { blast_radius: { max_nodes: 100, max_percent: 100 } }\n",
            );
            let series: String =
                (0..12).map(|i| format!("      - {{ node: n{i:02}, metric: m, values: \"1\" }}\n")).collect();
            let f = write(
                dir.path(),
                "r-test.yaml",
                &format!(
                    "rule_files: [r.yaml]\n{file_limit}\ntests:\n  - name: all at once\n{test_limit}\n    series:\n{series}    expect:\n      - at: 0s\n"
                ),
            );
            let r = run(&f).unwrap();
            let text = r.failures.join("\n");
            let acted = text.matches("unexpected: wide on").count();
            let limited = text.matches("by global_rate_limit").count();
            assert_eq!(acted + limited, 12, "{text}");
            acted
        };
        assert_eq!(acted("", ""), 10, "GlobalLimit::default(): 10 per 10 minutes");
        assert_eq!(acted("global_rate_limit: { max: 3, per: 1h }", ""), 3);
        assert_eq!(acted("global_rate_limit: { max: 3, per: 1h }", "    global_rate_limit: { max: 5, per: 1h }"), 5);
    }

    #[test]
    fn an_action_whose_condition_never_clears_fails_and_stops_the_rule() {
        let r = run_text(
            r#"
rule_files: [r.yaml]
tests:
  - name: still down
    interval: 1m
    nodes: { a: {}, b: {} }
    series:
      - { node: a, metric: clickhouse_up, values: "0 0 0 0 0 0 0" }
      - { node: b, metric: clickhouse_up, values: "1 1 1 1 1 1 0" }
    expect:
      - at: 0s
        actions: [ { rule: restart, node: a, action: restart+notify } ]
      - at: 6m
        blocked: [ { rule: restart, node: a, guard: rule_failing }, { rule: restart, node: b, guard: rule_failing } ]
"#,
        );
        assert_eq!(r.failed, 0, "{}", r.failures.join("\n"));
        assert!(r.coverage["restart"].blocked && !r.coverage["restart"].fires_with_arguments);
    }

    #[test]
    fn anomaly_episodes_and_outliers_are_inputs_through_the_real_conditions() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "r.yaml",
            r#"
rules:
  - name: failing-queries
    when:
      anomaly: { metric: "clickhouse_failed_*", min_score: 0.9 }
      nodes: { role: clickhouse }
      for: 5m
    do: [ { notify: { summary: failing } } ]
  - name: slow-node
    when:
      outlier: { metric: clickhouse_query_p99_seconds }
      for: 10m
    do: [ { notify: { summary: slow } } ]
"#,
        );
        let f = write(
            dir.path(),
            "r-test.yaml",
            r#"
rule_files: [r.yaml]
tests:
  - name: detections
    interval: 5m
    nodes: { ch-1: { role: clickhouse }, web: { role: web } }
    anomalies:
      - { node: ch-1, metric: clickhouse_failed_queries_total, score: 0.95, from: 5m, until: 20m }
      - { node: ch-1, metric: clickhouse_failed_inserts_total, labels: { table: t }, score: 0.5 }
      - { node: web, metric: clickhouse_failed_queries_total, score: 0.99 }
    outliers:
      - { node: ch-1, from: 0s, metrics: [ { metric: load1 }, { metric: clickhouse_query_p99_seconds, value: 3, peer_median: 0.2 } ] }
      - { node: web, metrics: [ { metric: load1, value: 9, peer_median: 1 } ] }
    expect:
      - at: 5m
        actions: []
      - at: 10m
        actions:
          - { rule: failing-queries, node: ch-1, target: "clickhouse_failed_queries_total{}", steps: [ { notify: { summary: failing } } ] }
          - { rule: slow-node, node: ch-1, steps: [ { notify: { summary: slow, severity: warning } } ] }
"#,
        );
        let r = run(&f).unwrap();
        assert_eq!(r.failed, 0, "{}", r.failures.join("\n"));
    }

    #[test]
    fn an_offline_node_sends_nothing_so_absence_is_judged_only_while_it_reports() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "r.yaml",
            "rules:\n  - name: no-ch\n    when: { absent: { metric: clickhouse_up }, for: 3m }\n    do: [ { notify: {} } ]\n    guards: { blast_radius: { max_nodes: 5, max_percent: 100 } }\n",
        );
        let f = write(
            dir.path(),
            "r-test.yaml",
            r#"
rule_files: [r.yaml]
tests:
  - name: absent
    interval: 1m
    series:
      - { node: a, metric: clickhouse_up, values: "1 1 _ _ _ _ _ _" }
      - { node: b, metric: clickhouse_up, values: "1 1 _ _ _ _ _ _" }
    offline: [ { node: b, from: 2m } ]
    expect:
      - at: 3m
        actions: []
      - at: 4m
        actions: [ { rule: no-ch, node: a, steps: [ { notify: {} } ] } ]
      - at: 7m
        actions: []
"#,
        );
        let r = run(&f).unwrap();
        assert_eq!(r.failed, 0, "{}", r.failures.join("\n"));
    }

    #[test]
    fn unknown_step_kinds_arguments_and_rules_are_errors_that_say_where() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "r.yaml", RULES);
        let bad = |text: &str| {
            let f = write(dir.path(), "r-test.yaml", text);
            run(&f).map(|r| r.failures.join("\n")).unwrap_or_else(|e| e)
        };
        let head = "rule_files: [r.yaml]\ntests:\n  - name: x\n    expect:\n      - at: 1m\n        actions:\n";
        let e = bad(&format!("{head}          - {{ rule: restart, node: n, steps: [ {{ ttl: {{ tabel: x }} }} ] }}\n"));
        assert!(
            e.contains("r-test.yaml:7:")
                && e.contains("`ttl` has no argument `tabel`; its arguments are database, table"),
            "{e}"
        );
        let e = bad(&format!("{head}          - {{ rule: restart, node: n, steps: [ {{ reboot: {{}} }} ] }}\n"));
        assert!(e.contains("unknown step kind `reboot`"), "{e}");
        let e =
            bad(&format!("{head}          - {{ rule: restart, node: n, steps: [ {{ ttl: {{ min: soon }} }} ] }}\n"));
        assert!(e.contains("`ttl` argument `min`: \"soon\" is not a duration"), "{e}");
        let e = bad(&format!("{head}          - {{ rule: restart, node: n, outcome: done }}\n"));
        assert!(e.contains("unknown variant `done`"), "{e}");
        let e = bad(&format!("{head}          - {{ rule: restrat, node: n }}\n"));
        assert!(e.contains("no rule named \"restrat\""), "{e}");
    }

    #[test]
    fn values_use_promtools_expanding_notation_and_a_typo_is_an_error() {
        let v = |s: &str| {
            expand_values(s)
                .map(|v| v.iter().map(|x| x.map_or("_".into(), |x| x.to_string())).collect::<Vec<_>>().join(" "))
        };
        assert_eq!(v("1 _ 2.5").unwrap(), "1 _ 2.5");
        assert_eq!(v("1x3 _x2").unwrap(), "1 1 1 1 _ _");
        assert_eq!(v("0+10x3 -1-1x2 1e-3x1").unwrap(), "0 10 20 30 -1 -2 -3 0.001 0.001");
        assert!(v("1 one").unwrap_err().contains("\"one\" is not a number"));
        assert!(v("1xx").is_err() && v("_xa").is_err());
        let l = LogInput {
            node: "n".into(),
            signature: "s".into(),
            at: vec![Duration::from_secs(5)],
            every: Some(Duration::from_secs(10)),
            from: Duration::from_secs(20),
            until: Some(Duration::from_secs(60)),
        };
        let counts: Vec<usize> = (0..8).map(|i| l.count_in(i * 10_000 - 10_000, i * 10_000)).collect();
        assert_eq!(counts, [0, 1, 1, 1, 1, 1, 0, 0], "5s, then 20s, 30s, 40s, 50s; 60s is `until`");
    }

    #[test]
    fn every_step_kind_lists_the_arguments_it_renders() {
        let steps: Vec<Step> = serde_norway::from_str::<super::super::model::RuleFile>(
            r#"
rules:
  - name: all
    when: { absent: { metric: m } }
    do:
      - restart: {}
      - rebalance: {}
      - scale: { statefulset: s, min: 1, max: 2 }
      - ttl: { database: d, table: t, min: 1d, max: 2d }
      - notify: {}
      - sql: { statement: SYSTEM FLUSH LOGS }
"#,
        )
        .unwrap()
        .rules
        .remove(0)
        .steps;
        assert_eq!(steps.len(), STEP_ARGS.len());
        for (s, (kind, args)) in steps.iter().zip(STEP_ARGS) {
            let (k, rendered) = step_args(s);
            assert_eq!(k, *kind);
            assert_eq!(
                rendered.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
                args.iter().map(|(n, _)| *n).collect::<Vec<_>>()
            );
        }
        assert_eq!(fmt_dur(Duration::from_secs(5400)), "1h30m");
        assert_eq!(fmt_dur(Duration::from_millis(1500)), "1s500ms");
    }
}
