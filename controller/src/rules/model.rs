//! What a rule file says, as types. Unknown keys, wrong types and bad durations are rejected by
//! deserialisation itself, so those errors carry the file's line and column.

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::time::Duration;

/// One rule file: `rules: [...]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Steps are written `- ttl: {...}`, not as YAML tags (`!ttl`), hence the singleton maps.
    #[serde(with = "serde_norway::with::singleton_map_recursive")]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique across all files; names actions, metrics and audit entries.
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub when: When,
    /// Ordered steps; each runs only if the previous one succeeded.
    #[serde(rename = "do")]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub guards: Guards,
    #[serde(default)]
    pub verify: Verify,
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// The condition: exactly one kind of match (checked at load), narrowed by node labels, held
/// for `for`. Written as optional fields rather than a flattened enum so that errors inside a
/// match keep their line and column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    #[serde(default)]
    pub threshold: Option<Threshold>,
    #[serde(default)]
    pub anomaly: Option<AnomalyMatch>,
    #[serde(default)]
    pub outlier: Option<OutlierMatch>,
    #[serde(default)]
    pub forecast: Option<ForecastMatch>,
    #[serde(default)]
    pub log: Option<LogMatch>,
    #[serde(default)]
    pub absent: Option<AbsentMatch>,
    /// Node label selector (all must match), e.g. `{role: clickhouse}`.
    #[serde(default)]
    pub nodes: BTreeMap<String, String>,
    /// How long the condition must hold before the rule fires.
    #[serde(default, rename = "for", deserialize_with = "duration_or_zero")]
    pub hold: Duration,
}

impl When {
    /// The one condition; `None` when zero or several are given (a load error).
    pub fn condition(&self) -> Option<Condition> {
        let all = [
            self.threshold.clone().map(Condition::Threshold),
            self.anomaly.clone().map(Condition::Anomaly),
            self.outlier.clone().map(Condition::Outlier),
            self.forecast.clone().map(Condition::Forecast),
            self.log.clone().map(Condition::Log),
            self.absent.clone().map(Condition::Absent),
        ];
        let mut given = all.into_iter().flatten();
        let first = given.next()?;
        given.next().is_none().then_some(first)
    }
}

#[derive(Debug, Clone)]
pub enum Condition {
    /// A metric crosses a fixed value.
    Threshold(Threshold),
    /// The anomaly detector scores a matching series at least this high.
    Anomaly(AnomalyMatch),
    /// The node differs from the peers of its role (in this metric, if given).
    Outlier(OutlierMatch),
    /// A resource is forecast to run out within `within`.
    Forecast(ForecastMatch),
    /// A log signature appears at least `count` times within `window`.
    Log(LogMatch),
    /// No sample of the metric arrives for `for`.
    Absent(AbsentMatch),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub metric: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub op: Op,
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    pub fn holds(self, observed: f64, value: f64) -> bool {
        match self {
            Op::Gt => observed > value,
            Op::Ge => observed >= value,
            Op::Lt => observed < value,
            Op::Le => observed <= value,
            Op::Eq => observed == value,
            Op::Ne => observed != value,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyMatch {
    /// Metric name; `*` wildcards allowed.
    pub metric: String,
    #[serde(default = "default_min_score")]
    pub min_score: f64,
    /// Which way the series must have moved from its baseline: `up`, `down` or `any` (default):
    /// failed queries rising is a problem, falling is not.
    #[serde(default)]
    pub direction: Direction,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Up,
    Down,
    #[default]
    Any,
}

impl Direction {
    /// Whether a move from `baseline` to `observed` goes this way.
    pub fn holds(self, baseline: f64, observed: f64) -> bool {
        match self {
            Direction::Up => observed > baseline,
            Direction::Down => observed < baseline,
            Direction::Any => true,
        }
    }
}

fn default_min_score() -> f64 {
    0.9
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierMatch {
    #[serde(default)]
    pub metric: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForecastMatch {
    /// Resource name, `*` wildcards allowed: `filesystem:/var/lib/clickhouse`, `clickhouse_disk:*`,
    /// `parts:*`, `memory`.
    pub resource: String,
    #[serde(deserialize_with = "duration")]
    pub within: Duration,
    /// Use the pessimistic side of the prediction interval (the default) or the point forecast.
    #[serde(default = "yes")]
    pub pessimistic: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogMatch {
    /// A ClickHouse log signature (see the README), e.g. `too_many_parts`.
    pub signature: String,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default = "five_minutes", deserialize_with = "duration")]
    pub window: Duration,
}

fn one() -> u32 {
    1
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbsentMatch {
    pub metric: String,
}

/// One playbook step.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Restart ClickHouse (or another service) on the node.
    Restart(RestartStep),
    /// Move partitions off a full disk (the one the firing names, else the fullest) to the disk or
    /// volume of each table's storage policy with the most room.
    Rebalance(RebalanceStep),
    /// Change a StatefulSet's replicas within bounds.
    Scale(ScaleStep),
    /// Shorten a table's TTL within bounds (and restore it when the pressure is gone).
    Ttl(TtlStep),
    /// Only tell people (Alertmanager).
    Notify(NotifyStep),
    /// One ClickHouse statement from the allow-list.
    Sql(SqlStep),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartHow {
    /// Let the executor pick: pod delete on Kubernetes, the agent's service restart elsewhere.
    Auto,
    /// Delete the pod so its controller recreates it.
    Pod,
    /// The agent restarts the service (systemd unit or configured command).
    Service,
    /// `SYSTEM RESTART REPLICA` for the affected table (readonly replicas).
    Replica,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartStep {
    #[serde(default = "auto")]
    pub how: RestartHow,
    /// Service name for `service` (systemd unit), default clickhouse-server.
    #[serde(default = "clickhouse_server")]
    pub service: String,
}

fn auto() -> RestartHow {
    RestartHow::Auto
}

fn clickhouse_server() -> String {
    "clickhouse-server".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveTo {
    /// `MOVE PARTITION … TO DISK`: another disk of the table's storage policy.
    Disk,
    /// `MOVE PARTITION … TO VOLUME`: another volume of the table's storage policy (one that does
    /// not hold the source disk); ClickHouse picks the disk inside it.
    Volume,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionOrder {
    /// Oldest partitions first (cold data moves).
    Age,
    /// Largest partitions first (fewest moves for the space).
    Size,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebalanceStep {
    #[serde(default = "disk")]
    pub to: MoveTo,
    #[serde(default = "age")]
    pub order: PartitionOrder,
    /// Stop once the source has this fraction free.
    #[serde(default = "target_free")]
    pub target_free: f64,
    /// At most this many partitions per action.
    #[serde(default = "max_partitions")]
    pub max_partitions: u32,
}

fn disk() -> MoveTo {
    MoveTo::Disk
}
fn age() -> PartitionOrder {
    PartitionOrder::Age
}
fn target_free() -> f64 {
    0.2
}
fn max_partitions() -> u32 {
    10
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleStep {
    pub statefulset: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Replicas added per action (negative scales down).
    #[serde(default = "one_i32")]
    pub step: i32,
    pub min: u32,
    pub max: u32,
}

fn default_namespace() -> String {
    "default".into()
}
fn one_i32() -> i32 {
    1
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtlStep {
    pub database: String,
    pub table: String,
    /// The DateTime column the TTL is on; used only when the TTL's delete clause has no
    /// `+ INTERVAL` to scale (the clause then becomes `column + INTERVAL …`).
    #[serde(default = "ts_column")]
    pub column: String,
    /// The delete clause is never shortened below this.
    #[serde(deserialize_with = "duration")]
    pub min: Duration,
    /// The normal TTL, restored when the pressure is gone.
    #[serde(deserialize_with = "duration")]
    pub max: Duration,
    /// Each action multiplies the TTL by this (0 < factor < 1).
    #[serde(default = "ttl_factor")]
    pub factor: f64,
    /// Once the condition has stayed clear this long, the previous TTL is put back: the shorter
    /// TTL is for the pressure, not forever.
    #[serde(default = "six_hours", deserialize_with = "duration")]
    pub restore_after: Duration,
}

fn six_hours() -> Duration {
    Duration::from_secs(6 * 3600)
}

fn ts_column() -> String {
    "ts".into()
}
fn ttl_factor() -> f64 {
    0.8
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyStep {
    #[serde(default = "warning")]
    pub severity: String,
    #[serde(default)]
    pub summary: String,
}

fn warning() -> String {
    "warning".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlStep {
    pub statement: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guards {
    /// No second action on the same target within this time.
    #[serde(default, deserialize_with = "duration_or_zero")]
    pub cooldown: Duration,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub blast_radius: BlastRadius,
    /// Decide and record, do nothing.
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub approval: Option<Approval>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub max: u32,
    #[serde(deserialize_with = "duration")]
    pub per: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlastRadius {
    /// At most this many nodes under action at once for this rule.
    #[serde(default = "one")]
    pub max_nodes: u32,
    /// ...and at most this percentage of the nodes of the target's role.
    #[serde(default = "max_percent")]
    pub max_percent: f64,
    /// Never act on two replicas of one shard at the same time (node labels `shard`).
    #[serde(default = "yes")]
    pub one_replica_per_shard: bool,
}

fn max_percent() -> f64 {
    34.0
}

impl Default for BlastRadius {
    fn default() -> Self {
        Self { max_nodes: 1, max_percent: max_percent(), one_replica_per_shard: true }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Unapproved actions expire after this.
    #[serde(default = "one_hour", deserialize_with = "duration")]
    pub expires_after: Duration,
}

fn one_hour() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    /// The triggering condition must clear within this time, or the action failed.
    #[serde(deserialize_with = "duration")]
    pub clears_within: Duration,
}

impl Default for Verify {
    fn default() -> Self {
        Self { clears_within: Duration::from_secs(600) }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnFailure {
    /// Undo what can be undone (TTL, scale).
    #[serde(default = "yes")]
    pub rollback: bool,
    /// Tell people, with the evidence.
    #[serde(default = "yes")]
    pub escalate: bool,
}

impl Default for OnFailure {
    fn default() -> Self {
        Self { rollback: true, escalate: true }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration ({e}); write it like 30s, 10m, 1h, 7d")))
}

fn duration_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    duration(d)
}
