//! The controller's own alerts about what no rule takes care of, so a human hears of it:
//!
//! - `MedicAnomalyUnhandled`: a series has been in an anomaly episode (scored as an anomaly and
//!   not back near its baseline since) for `anomaly_for` and no active rule's condition covers it (an `anomaly` condition selecting that metric at that score, or a
//!   `threshold` on that metric that holds on that node right now).
//! - `MedicExhaustionUnhandled`: a resource is forecast to run out within `exhaustion_within`
//!   and no active rule has a `forecast` condition selecting that resource on that node, so
//!   nothing will act before it runs out.
//!
//! Both resolve when their cause is gone or a rule comes to cover it (a rule file is added or
//! fixed). Alerts are per (node, metric) and per (node, resource), never per series, so one sick
//! node with fifty odd series pages once.

use crate::decide::conditions::{Signals, evaluate};
use crate::decide::facts::Facts;
use crate::detect::engine::{ALERT_SCORE, DetectionState};
use crate::publish::alertmanager::{Alert, Alerts};
use crate::rules::model::{Condition, Rule};
use crate::rules::watch::ActiveRules;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A score older than this no longer says anything about the series (it stopped reporting).
const FRESH_MS: i64 = 5 * 60_000;

#[derive(Debug, Clone)]
pub struct UnhandledConfig {
    /// How long a series must stay anomalous before it pages. Default 5m: a single odd sample is
    /// the dashboards' business, not a page.
    pub anomaly_for: Duration,
    /// Forecast exhaustions closer than this page when no rule would act on them. Default 72h.
    pub exhaustion_within: Duration,
    /// Pessimistic exhaustion closer than this is critical, otherwise warning. Default 24h.
    pub critical_within: Duration,
    pub every: Duration,
    /// Which anomalies are worth a page: a metric matching one of these, moving in its harmful
    /// direction. The first matching entry decides. Default [`HEALTH_SIGNALS`].
    pub anomaly_metrics: Vec<HealthSignal>,
}

/// Which way a health signal goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Harmful {
    Up,
    Down,
    Any,
}

/// A metric (glob, case-insensitive) whose anomalies may page, and the direction that harms.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSignal {
    pub pattern: String,
    pub harmful: Harmful,
}

impl std::str::FromStr for HealthSignal {
    type Err = String;
    /// `GLOB`, `GLOB:up`, `GLOB:down` or `GLOB:any` (the default).
    fn from_str(s: &str) -> Result<Self, String> {
        let (pattern, dir) = match s.rsplit_once(':') {
            Some((p, d)) if matches!(d, "up" | "down" | "any") => (p, d),
            _ => (s, "any"),
        };
        glob::Pattern::new(pattern).map_err(|e| format!("{pattern}: not a glob pattern: {e}"))?;
        let harmful = match dir {
            "up" => Harmful::Up,
            "down" => Harmful::Down,
            _ => Harmful::Any,
        };
        Ok(Self { pattern: pattern.to_string(), harmful })
    }
}

/// The anomalies that page by default: signals of harm — errors and failures rising, latency and
/// backlogs growing, memory pressure, something running out or going down. An anomaly on a
/// volume metric (rows, bytes, parts, query counts, CPU seconds, network bytes, uptime) is real
/// but mostly the workload changing: it stays on the dashboards and in /api/v1/anomalies, and a
/// rule with an `anomaly` condition can still act on it or notify. Each entry `GLOB:direction`.
/// Counts that matter only near a known limit (parts per partition, for which ClickHouse itself
/// rejects inserts at 300) are left to threshold rules: background inserts move them well
/// outside their usual range every day.
pub const HEALTH_SIGNALS: &[&str] = &[
    // Running out, or going away.
    "clickhouse_up:down",
    "clickhouse_disk_free_*:down",
    "clickhouse_disk_unreserved_bytes:down",
    "node_filesystem_avail_bytes:down",
    "node_filesystem_free_bytes:down",
    "node_filesystem_files_free:down",
    "node_filesystem_readonly:up",
    "node_filesystem_device_error:up",
    "clickhouse_replica_active_replicas:down",
    // Errors and failures (counters: their rate).
    "*error*:up",
    "*errs*:up",
    "*fail*:up",
    "*exception*:up",
    "*_drop_total:up",
    "medic_agent_log_records_total:up",
    // Latency and backlogs.
    "clickhouse_query_duration_seconds:up",
    "clickhouse_scrape_duration_seconds:up",
    "clickhouse_replica_absolute_delay_seconds:up",
    "clickhouse_replica_log_delay:up",
    "clickhouse_replica_queue_size:up",
    "clickhouse_replica_inserts_in_queue:up",
    "clickhouse_replica_is_readonly:up",
    "clickhouse_replica_is_session_expired:up",
    "clickhouse_replica_lost_part_count:up",
    "clickhouse_mutations_stuck:up",
    "clickhouse_detached_parts:up",
    "node_procs_blocked:up",
    // Memory pressure.
    "clickhouse_metrics_MemoryTracking:up",
    "node_memory_MemAvailable_bytes:down",
    "node_memory_SwapFree_bytes:down",
    "node_memory_AnonPages_bytes:up",
    "node_memory_Committed_AS_bytes:up",
    "node_pressure_*:up",
    "node_vmstat_oom_kill_total:up",
    "node_vmstat_pswp*:up",
    "node_vmstat_pgmajfault_total:up",
];

pub fn default_health_signals() -> Vec<HealthSignal> {
    HEALTH_SIGNALS.iter().filter_map(|s| s.parse().ok()).collect()
}

/// Whether this anomaly moves a health signal the harmful way.
pub fn harmful(signals: &[HealthSignal], s: &Scored) -> bool {
    let opts = glob::MatchOptions { case_sensitive: false, ..Default::default() };
    let Some(sig) =
        signals.iter().find(|h| glob::Pattern::new(&h.pattern).is_ok_and(|p| p.matches_with(&s.metric, opts)))
    else {
        return false;
    };
    match sig.harmful {
        Harmful::Any => true,
        Harmful::Up => s.observed > s.baseline,
        Harmful::Down => s.observed < s.baseline,
    }
}

impl Default for UnhandledConfig {
    fn default() -> Self {
        Self {
            anomaly_for: Duration::from_secs(300),
            exhaustion_within: Duration::from_secs(72 * 3600),
            critical_within: Duration::from_secs(24 * 3600),
            every: Duration::from_secs(10),
            anomaly_metrics: default_health_signals(),
        }
    }
}

/// Counts of what currently pages, on /metrics (`medic_unhandled_anomalies`,
/// `medic_unhandled_exhaustions`).
#[derive(Clone, Default)]
pub struct UnhandledMetrics {
    anomalies: Gauge,
    exhaustions: Gauge,
}

impl UnhandledMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "medic_unhandled_anomalies",
            "(node, metric) pairs anomalous for longer than --unhandled-anomaly-for that no rule covers",
            self.anomalies.clone(),
        );
        r.register(
            "medic_unhandled_exhaustions",
            "(node, resource) pairs forecast to run out within --unhandled-exhaustion-within that no rule covers",
            self.exhaustions.clone(),
        );
    }
}

/// One anomalous series as detection reports it.
#[derive(Debug, Clone)]
pub struct Scored {
    pub node: String,
    pub metric: String,
    pub labels: String,
    pub score: f64,
    /// What the detector expected, and the value that opened the episode (for counters: rates).
    pub baseline: f64,
    pub observed: f64,
    /// Baseline, anomalous and latest value, for people.
    pub detail: String,
}

/// One forecast as detection reports it.
#[derive(Debug, Clone)]
pub struct Exhaustion {
    pub node: String,
    pub resource: String,
    pub seconds: f64,
    pub pessimistic_seconds: f64,
    pub explanation: String,
}

fn node_selected(rule: &Rule, facts: &Facts, node: &str) -> bool {
    match facts.nodes.get(node) {
        Some(nf) => rule.when.nodes.iter().all(|(k, v)| nf.labels.get(k) == Some(v)),
        // A node detection knows but facts do not yet: only a rule without a selector covers it.
        None => rule.when.nodes.is_empty(),
    }
}

fn glob_match(pattern: &str, s: &str) -> bool {
    glob::Pattern::new(pattern).map(|p| p.matches(s)).unwrap_or(pattern == s)
}

/// Whether some rule covers this anomalous series now.
pub fn anomaly_covered(rules: &[&Rule], facts: &Facts, signals: &Signals, s: &Scored, now_ms: i64) -> bool {
    rules.iter().any(|r| {
        if !node_selected(r, facts, &s.node) {
            return false;
        }
        match r.when.condition() {
            Some(Condition::Anomaly(a)) => {
                glob_match(&a.metric, &s.metric) && s.score >= a.min_score && a.direction.holds(s.baseline, s.observed)
            }
            Some(c @ Condition::Threshold(_)) => {
                let Condition::Threshold(t) = &c else { return false };
                t.metric == s.metric
                    && facts
                        .nodes
                        .get(&s.node)
                        .is_some_and(|nf| !evaluate(&c, &s.node, nf, signals, 0, now_ms).is_empty())
            }
            _ => false,
        }
    })
}

/// Whether some rule would act on this resource's exhaustion.
pub fn exhaustion_covered(rules: &[&Rule], facts: &Facts, e: &Exhaustion) -> bool {
    rules.iter().any(|r| {
        node_selected(r, facts, &e.node)
            && matches!(r.when.condition(), Some(Condition::Forecast(f)) if glob_match(&f.resource, &e.resource))
    })
}

/// The bookkeeping between rounds: since when each (node, metric) has been anomalous.
pub struct Tracker {
    cfg: UnhandledConfig,
    anomalous_since: HashMap<(String, String), i64>,
    firing_anomalies: HashMap<(String, String), ()>,
    firing_exhaustions: HashMap<(String, String), ()>,
}

/// What one round decided.
#[derive(Debug, Default, PartialEq)]
pub struct RoundOut {
    pub fire: Vec<Alert>,
    pub resolve: Vec<BTreeMap<String, String>>,
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn hours(secs: f64) -> String {
    if secs < 3600.0 { format!("{:.0} min", secs / 60.0) } else { format!("{:.1} h", secs / 3600.0) }
}

impl Tracker {
    pub fn new(cfg: UnhandledConfig) -> Self {
        Self {
            cfg,
            anomalous_since: HashMap::new(),
            firing_anomalies: HashMap::new(),
            firing_exhaustions: HashMap::new(),
        }
    }

    pub fn round(
        &mut self,
        rules: &[&Rule],
        facts: &Facts,
        signals: &Signals,
        scored: &[Scored],
        exhaustions: &[Exhaustion],
        now_ms: i64,
    ) -> RoundOut {
        let cfg = self.cfg.clone();
        let mut out = RoundOut::default();

        // Anomalies: the worst uncovered series per (node, metric).
        let mut worst: HashMap<(String, String), (&Scored, usize)> = HashMap::new();
        for s in scored.iter().filter(|s| s.score >= ALERT_SCORE) {
            if !harmful(&cfg.anomaly_metrics, s) || anomaly_covered(rules, facts, signals, s, now_ms) {
                continue;
            }
            let e = worst.entry((s.node.clone(), s.metric.clone())).or_insert((s, 0));
            e.1 += 1;
            if s.score > e.0.score {
                e.0 = s;
            }
        }
        self.anomalous_since.retain(|k, _| worst.contains_key(k));
        for (k, (s, n)) in &worst {
            let since = *self.anomalous_since.entry(k.clone()).or_insert(now_ms);
            if now_ms - since < cfg.anomaly_for.as_millis() as i64 {
                continue;
            }
            self.firing_anomalies.insert(k.clone(), ());
            let mut l = labels(&[
                ("alertname", "MedicAnomalyUnhandled"),
                ("severity", "warning"),
                ("component", "medic"),
                ("node", &s.node),
                ("metric", &s.metric),
            ]);
            l.retain(|_, v| !v.is_empty());
            let series = if *n > 1 { format!(" ({n} series; the worst shown)") } else { String::new() };
            out.fire.push(Alert {
                labels: l,
                annotations: labels(&[
                    ("summary", &format!("{} on {} behaves abnormally and no rule handles it", s.metric, s.node)),
                    (
                        "description",
                        &format!(
                            "{}{{{}}} scored {:.2} as an anomaly and has not come back near its baseline for over {:?} ({}){series}. No rule's condition covers it, so Medic will not act: look at /api/v1/anomalies?node={}&metric={} and write a rule if this should be fixed automatically.",
                            s.metric, s.labels, s.score, cfg.anomaly_for, s.detail, s.node, s.metric
                        ),
                    ),
                    ("runbook_url", "deploy/prometheus/runbooks.md#medicanomalyunhandled"),
                ]),
            });
        }
        let gone: Vec<_> = self.firing_anomalies.keys().filter(|k| !worst.contains_key(*k)).cloned().collect();
        for k in gone {
            self.firing_anomalies.remove(&k);
            out.resolve.push(labels(&[("alertname", "MedicAnomalyUnhandled"), ("node", &k.0), ("metric", &k.1)]));
        }

        // Exhaustions.
        let within = cfg.exhaustion_within.as_secs_f64();
        let mut now_firing = HashMap::new();
        for e in exhaustions.iter().filter(|e| e.pessimistic_seconds.min(e.seconds) <= within) {
            if exhaustion_covered(rules, facts, e) {
                continue;
            }
            let k = (e.node.clone(), e.resource.clone());
            now_firing.insert(k, ());
            let soonest = e.pessimistic_seconds.min(e.seconds);
            let severity = if soonest <= cfg.critical_within.as_secs_f64() { "critical" } else { "warning" };
            out.fire.push(Alert {
                labels: labels(&[
                    ("alertname", "MedicExhaustionUnhandled"),
                    ("severity", severity),
                    ("component", "medic"),
                    ("node", &e.node),
                    ("resource", &e.resource),
                ]),
                annotations: labels(&[
                    (
                        "summary",
                        &format!(
                            "{} on {} runs out in {} (pessimistic) and no rule can fix it",
                            e.resource,
                            e.node,
                            hours(soonest)
                        ),
                    ),
                    (
                        "description",
                        &format!(
                            "Forecast: {} on {} is exhausted in {} (point) / {} (pessimistic). {}. No rule has a forecast condition for this resource on this node, so Medic will not act: free space or add capacity, or write a rule (TTL tuning, rebalance).",
                            e.resource,
                            e.node,
                            hours(e.seconds),
                            hours(e.pessimistic_seconds),
                            e.explanation
                        ),
                    ),
                    ("runbook_url", "deploy/prometheus/runbooks.md#medicexhaustionunhandled"),
                ]),
            });
        }
        let gone: Vec<_> = self.firing_exhaustions.keys().filter(|k| !now_firing.contains_key(*k)).cloned().collect();
        for k in gone {
            out.resolve.push(labels(&[("alertname", "MedicExhaustionUnhandled"), ("node", &k.0), ("resource", &k.1)]));
        }
        self.firing_exhaustions = now_firing;
        out
    }
}

/// The task: every `cfg.every`, compares detection with the active rules and fires or resolves.
pub struct Unhandled {
    pub cfg: UnhandledConfig,
    pub rules: Option<ActiveRules>,
    pub facts: Arc<RwLock<Facts>>,
    pub detection: Arc<RwLock<DetectionState>>,
    pub alerts: Alerts,
    pub metrics: UnhandledMetrics,
}

/// The anomalies that are still going on, as rule conditions see them: open episodes (the
/// series is still away from its baseline) with the score that opened them.
pub fn current_scores(d: &DetectionState, now_ms: i64) -> Vec<Scored> {
    d.episodes
        .values()
        .filter(|e| now_ms - e.last_ms <= FRESH_MS)
        .map(|e| Scored {
            node: e.node.clone(),
            metric: e.metric.clone(),
            labels: e.labels.clone(),
            score: e.score,
            baseline: e.baseline,
            observed: e.observed,
            detail: format!("baseline {:.4}, anomalous value {:.4}, latest {:.4}", e.baseline, e.observed, e.latest),
        })
        .collect()
}

impl Unhandled {
    pub async fn run(self) {
        let mut tracker = Tracker::new(self.cfg.clone());
        let mut tick = tokio::time::interval(self.cfg.every);
        loop {
            tick.tick().await;
            let now = chrono::Utc::now().timestamp_millis();
            let (scored, exhaustions, signals) = match self.detection.read() {
                Ok(d) => {
                    let scored = current_scores(&d, now);
                    let exhaustions: Vec<Exhaustion> = d
                        .forecasts
                        .values()
                        .filter_map(|f| {
                            let point = f.exhaustion_seconds;
                            let pess = f.pessimistic_seconds.or(point)?;
                            Some(Exhaustion {
                                node: f.node.clone(),
                                resource: f.resource.clone(),
                                seconds: point.unwrap_or(f64::INFINITY),
                                pessimistic_seconds: pess,
                                explanation: f.explanation.clone(),
                            })
                        })
                        .collect();
                    let signals = Signals {
                        forecasts: d.forecasts.values().cloned().collect(),
                        outliers: d.outliers.clone(),
                        anomalies: signals_anomalies(&scored),
                    };
                    (scored, exhaustions, signals)
                }
                Err(_) => continue,
            };
            let set = self.rules.as_ref().map(|r| r.get()).unwrap_or_default();
            let rules: Vec<&Rule> = set.rules.iter().map(|r| &r.rule).collect();
            let out = {
                let Ok(facts) = self.facts.read() else { continue };
                tracker.round(&rules, &facts, &signals, &scored, &exhaustions, now)
            };
            self.metrics.anomalies.set(tracker.firing_anomalies.len() as i64);
            self.metrics.exhaustions.set(tracker.firing_exhaustions.len() as i64);
            for a in out.fire {
                self.alerts.fire(a);
            }
            for m in out.resolve {
                self.alerts.resolve(&m);
            }
        }
    }
}

/// Scores grouped by node, the shape rule conditions take.
pub fn signals_anomalies(scored: &[Scored]) -> HashMap<String, Vec<crate::decide::conditions::AnomalySignal>> {
    let mut m: HashMap<String, Vec<crate::decide::conditions::AnomalySignal>> = HashMap::new();
    for s in scored {
        m.entry(s.node.clone()).or_default().push(crate::decide::conditions::AnomalySignal {
            metric: s.metric.clone(),
            labels: s.labels.clone(),
            score: s.score,
            baseline: s.baseline,
            observed: s.observed,
        });
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::load::parse;
    use std::path::Path;

    fn rules(yaml: &str) -> Vec<Rule> {
        parse(Path::new("t.yaml"), yaml).expect("valid rules").into_iter().map(|r| r.rule).collect()
    }

    /// An anomaly that went up, from 1 to 10.
    fn scored(node: &str, metric: &str, score: f64) -> Scored {
        Scored {
            node: node.into(),
            metric: metric.into(),
            labels: "device=sda".into(),
            score,
            baseline: 1.0,
            observed: 10.0,
            detail: String::new(),
        }
    }

    #[test]
    fn only_health_signals_moving_the_harmful_way_page() {
        let mut t = Tracker::new(cfg());
        let facts = Facts::default();
        let down = |metric: &str| Scored { baseline: 10.0, observed: 1.0, ..scored("n1", metric, 0.9) };
        let s = [
            // Harmful: errors up, free space down, latency up (case-insensitive globs).
            scored("n1", "clickhouse_failed_queries_total", 0.9),
            down("node_filesystem_avail_bytes"),
            scored("n1", "clickhouse_events_FailedInsertQuery_total", 0.9),
            // The workload changing: volume metrics, and health signals moving the good way.
            scored("n1", "clickhouse_table_rows", 0.9),
            scored("n1", "clickhouse_metrics_PartsOutdated", 0.9),
            scored("n1", "node_filesystem_avail_bytes", 0.9),
            down("clickhouse_failed_queries_total"),
        ];
        t.round(&[], &facts, &Signals::default(), &s, &[], 0);
        let r = t.round(&[], &facts, &Signals::default(), &s, &[], 61_000);
        let mut paged: Vec<&str> = r.fire.iter().map(|a| a.labels["metric"].as_str()).collect();
        paged.sort();
        assert_eq!(
            paged,
            [
                "clickhouse_events_FailedInsertQuery_total",
                "clickhouse_failed_queries_total",
                "node_filesystem_avail_bytes"
            ]
        );
    }

    #[test]
    fn health_signals_are_written_glob_colon_direction() {
        let h: HealthSignal = "node_memory_*:down".parse().expect("valid");
        assert_eq!(h, HealthSignal { pattern: "node_memory_*".into(), harmful: Harmful::Down });
        let any: HealthSignal = "*".parse().expect("valid");
        assert_eq!(any.harmful, Harmful::Any);
        assert!("[:up".parse::<HealthSignal>().is_err());
        assert_eq!(default_health_signals().len(), HEALTH_SIGNALS.len(), "every default parses");
    }

    fn cfg() -> UnhandledConfig {
        UnhandledConfig { anomaly_for: Duration::from_secs(60), ..Default::default() }
    }

    const ANOMALY_RULE: &str = "rules:
  - name: queries
    when:
      anomaly: { metric: 'clickhouse_query*', min_score: 0.7 }
    do: [ { notify: { severity: warning } } ]
";

    #[test]
    fn an_uncovered_anomaly_pages_only_after_it_lasted_and_resolves_when_it_is_gone() {
        let mut t = Tracker::new(cfg());
        let facts = Facts::default();
        let s = [scored("n1", "node_pressure_io_stalled_seconds_total", 0.9)];
        let r = t.round(&[], &facts, &Signals::default(), &s, &[], 0);
        assert!(r.fire.is_empty(), "not yet: it must last anomaly_for");
        let r = t.round(&[], &facts, &Signals::default(), &s, &[], 61_000);
        assert_eq!(r.fire.len(), 1);
        assert_eq!(r.fire[0].labels["alertname"], "MedicAnomalyUnhandled");
        assert_eq!(r.fire[0].labels["node"], "n1");
        assert_eq!(r.fire[0].labels["metric"], "node_pressure_io_stalled_seconds_total");
        let r = t.round(&[], &facts, &Signals::default(), &[], &[], 71_000);
        assert!(r.fire.is_empty());
        assert_eq!(r.resolve.len(), 1);
        assert_eq!(r.resolve[0]["node"], "n1");
    }

    #[test]
    fn a_blip_that_ends_before_anomaly_for_never_pages() {
        let mut t = Tracker::new(cfg());
        let facts = Facts::default();
        let s = [scored("n1", "clickhouse_errors_total", 0.9)];
        t.round(&[], &facts, &Signals::default(), &s, &[], 0);
        t.round(&[], &facts, &Signals::default(), &[], &[], 30_000);
        let r = t.round(&[], &facts, &Signals::default(), &s, &[], 61_000);
        assert!(r.fire.is_empty(), "the clock restarted when the blip ended");
        assert!(r.resolve.is_empty(), "nothing was paged, nothing to resolve");
    }

    #[test]
    fn an_anomaly_a_rule_selects_does_not_page_but_one_below_its_min_score_does() {
        let rs = rules(ANOMALY_RULE);
        let refs: Vec<&Rule> = rs.iter().collect();
        let facts = Facts::default();
        let mut t = Tracker::new(cfg());
        let covered = [scored("n1", "clickhouse_query_duration_seconds", 0.8)];
        t.round(&refs, &facts, &Signals::default(), &covered, &[], 0);
        assert!(t.round(&refs, &facts, &Signals::default(), &covered, &[], 61_000).fire.is_empty());
        let weak = [scored("n1", "clickhouse_query_duration_seconds", 0.6)];
        t.round(&refs, &facts, &Signals::default(), &weak, &[], 62_000);
        assert_eq!(t.round(&refs, &facts, &Signals::default(), &weak, &[], 130_000).fire.len(), 1);
    }

    #[test]
    fn many_odd_series_of_one_metric_on_one_node_page_once() {
        let mut t = Tracker::new(cfg());
        let facts = Facts::default();
        let s: Vec<Scored> = (0..50)
            .map(|i| Scored { labels: format!("i={i}"), ..scored("n1", "clickhouse_errors_total", 0.6) })
            .collect();
        t.round(&[], &facts, &Signals::default(), &s, &[], 0);
        let r = t.round(&[], &facts, &Signals::default(), &s, &[], 61_000);
        assert_eq!(r.fire.len(), 1);
        assert!(r.fire[0].annotations["description"].contains("50 series"));
    }

    fn exhaustion(node: &str, resource: &str, hours: f64) -> Exhaustion {
        Exhaustion {
            node: node.into(),
            resource: resource.into(),
            seconds: hours * 3600.0 * 1.5,
            pessimistic_seconds: hours * 3600.0,
            explanation: "linear growth".into(),
        }
    }

    const FORECAST_RULE: &str = "rules:
  - name: ch-disk
    when:
      forecast: { resource: 'clickhouse_disk:*', within: 12h }
      nodes: { role: clickhouse }
    do: [ { ttl: { database: db, table: t, column: ts, min: 1d, max: 30d } } ]
";

    #[test]
    fn an_exhaustion_no_rule_selects_pages_critical_when_close_and_resolves_when_it_recedes() {
        let rs = rules(FORECAST_RULE);
        let refs: Vec<&Rule> = rs.iter().collect();
        let mut facts = Facts::default();
        facts.nodes.entry("n1".into()).or_default().labels.insert("role".into(), "clickhouse".into());
        let mut t = Tracker::new(cfg());
        let e = [
            exhaustion("n1", "clickhouse_disk:default", 5.0),
            exhaustion("n1", "filesystem:/var", 5.0),
            exhaustion("n1", "memory", 500.0),
        ];
        let r = t.round(&refs, &facts, &Signals::default(), &[], &e, 0);
        assert_eq!(r.fire.len(), 1, "the ClickHouse disk has a rule; memory is beyond 72h: {:?}", r.fire);
        assert_eq!(r.fire[0].labels["resource"], "filesystem:/var");
        assert_eq!(r.fire[0].labels["severity"], "critical");
        let far = [exhaustion("n1", "filesystem:/var", 48.0)];
        let r = t.round(&refs, &facts, &Signals::default(), &[], &far, 10_000);
        assert_eq!(r.fire[0].labels["severity"], "warning");
        let r = t.round(&refs, &facts, &Signals::default(), &[], &[], 20_000);
        assert!(r.fire.is_empty());
        assert_eq!(r.resolve.len(), 1);
        assert_eq!(r.resolve[0]["resource"], "filesystem:/var");
    }

    #[test]
    fn a_rule_whose_node_selector_excludes_the_node_does_not_cover_it() {
        let rs = rules(FORECAST_RULE);
        let refs: Vec<&Rule> = rs.iter().collect();
        let mut facts = Facts::default();
        facts.nodes.entry("web-1".into()).or_default().labels.insert("role".into(), "web".into());
        let mut t = Tracker::new(cfg());
        let r =
            t.round(&refs, &facts, &Signals::default(), &[], &[exhaustion("web-1", "clickhouse_disk:default", 5.0)], 0);
        assert_eq!(r.fire.len(), 1);
    }
}
