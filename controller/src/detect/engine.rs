//! The detection runtime: every batch the writer has durably stored is fed here, off the ingest
//! path, and the detectors run on it — exhaustion forecasts, fleet peer-group outliers and
//! changepoints on key per-node signals — on their own schedules. Results are kept as data:
//! served by the API, exposed on /metrics, and (through [`DetectionSink`]) stored.
//!
//! It runs on its own OS thread behind a bounded queue: the model fits are CPU work that must
//! never slow down acks. If it falls behind, batches are skipped for detection (counted) — they
//! are stored all the same.

use super::changepoint::{ChangepointConfig, ChangepointEvent, ChangepointTracker};
use super::forecast::{ExhaustionForecaster, Forecast, ForecastConfig, Limit};
use super::outlier::{OutlierFinding, PeerConfig, PeerGroups};
use medic_proto::v1::{Batch, MetricKind, Sample};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// What the engine is handed for each stored batch.
pub struct StoredBatch {
    pub node: String,
    pub labels: Vec<(String, String)>,
    pub batch: Arc<Batch>,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub forecast: ForecastConfig,
    pub peers: PeerConfig,
    pub changepoints: ChangepointConfig,
    /// The node label that defines peer groups.
    pub role_label: String,
    /// Parts per partition counted as exhaustion (ClickHouse's parts_to_throw_insert).
    pub max_parts_per_partition: f64,
    /// How often outliers are evaluated.
    pub outlier_every: Duration,
    /// Batches that may wait for the engine before it skips some.
    pub queue: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            forecast: ForecastConfig::default(),
            peers: PeerConfig::default(),
            changepoints: ChangepointConfig::default(),
            role_label: "role".into(),
            max_parts_per_partition: 3000.0,
            outlier_every: Duration::from_secs(60),
            queue: 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ForecastView {
    pub node: String,
    pub resource: String,
    pub exhaustion_seconds: Option<f64>,
    pub pessimistic_seconds: Option<f64>,
    pub model: String,
    pub explanation: String,
    pub computed_at: String,
    pub computed_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct OutlierView {
    pub node: String,
    pub role: String,
    pub metrics: Vec<OutlierMetricView>,
    pub detected_at: String,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct OutlierMetricView {
    pub metric: String,
    pub value: f64,
    pub peer_median: f64,
    pub outlying_fraction: f64,
    pub flagged_by: Vec<String>,
}

/// A sample the anomaly detector scored at or above the alert threshold, with why.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AnomalyView {
    pub node: String,
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub at: String,
    pub at_ms: i64,
    pub score: f64,
    pub observed: f64,
    pub baseline: f64,
    /// The evidence that fired: spike, levelshift, distribution, flatline, novelty.
    pub signals: Vec<String>,
}

/// The current score of a series that is, or recently was, above the noise floor.
#[derive(Debug, Clone, Serialize)]
pub struct CurrentScore {
    pub node: String,
    pub metric: String,
    pub labels: String,
    pub score: f64,
    pub at_ms: i64,
}

/// An anomaly episode: from the sample that scored as an anomaly until the series is back within
/// half of that deviation from the baseline it had then. Scores are transient by design (the
/// detector re-learns the level, and reports one alert per novelty), while "is it still wrong?"
/// is what rule conditions with a `for` and the unhandled-anomaly page need to know.
#[derive(Debug, Clone, Serialize)]
pub struct EpisodeView {
    pub node: String,
    pub metric: String,
    pub labels: String,
    /// The score of the sample that opened the episode.
    pub score: f64,
    pub since_ms: i64,
    pub last_ms: i64,
    pub baseline: f64,
    /// The value that opened the episode (for counters: the rate).
    pub observed: f64,
    /// The latest value (for counters: the rate).
    pub latest: f64,
}

/// An episode that lasts this long is the series' new normal, not an anomaly any more.
pub const MAX_EPISODE_MS: i64 = 6 * 3_600_000;
/// Bound on open episodes; beyond it new ones are not tracked (the anomaly itself still is).
const MAX_EPISODES: usize = 10_000;

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ChangepointView {
    pub node: String,
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub at: String,
    pub at_ms: i64,
    pub before_mean: f64,
    pub after_mean: f64,
}

/// Everything the detectors currently say, for the API and /metrics.
#[derive(Debug, Default)]
pub struct DetectionState {
    pub anomalies: VecDeque<AnomalyView>,
    /// Series whose latest score is at least [`SCORE_FLOOR`], by series hash.
    pub scores: HashMap<u64, CurrentScore>,
    /// Open anomaly episodes by series hash.
    pub episodes: HashMap<u64, EpisodeView>,
    pub forecasts: BTreeMap<(String, String), ForecastView>,
    pub outliers: Vec<OutlierView>,
    pub changepoints: VecDeque<ChangepointView>,
    pub batches_seen: AtomicU64,
    pub batches_skipped: AtomicU64,
    pub errors: AtomicU64,
}

impl DetectionState {
    /// Puts back what an earlier run stored, so the API's history survives a restart: anomalies
    /// and changepoints (oldest first), and forecasts younger than `fresh_ms` (an older one
    /// would be acted on as if current; the forecaster recomputes on its schedule).
    pub fn restore(
        &mut self,
        anomalies: Vec<AnomalyView>,
        changepoints: Vec<ChangepointView>,
        forecasts: Vec<ForecastView>,
        now_ms: i64,
        fresh_ms: i64,
    ) {
        let mut a: Vec<_> = anomalies.into_iter().chain(self.anomalies.drain(..)).collect();
        a.sort_by_key(|x| x.at_ms);
        let skip = a.len().saturating_sub(MAX_ANOMALIES);
        self.anomalies = a.into_iter().skip(skip).collect();
        let mut c: Vec<_> = changepoints.into_iter().chain(self.changepoints.drain(..)).collect();
        c.sort_by_key(|x| x.at_ms);
        let skip = c.len().saturating_sub(MAX_CHANGEPOINTS);
        self.changepoints = c.into_iter().skip(skip).collect();
        for f in forecasts.into_iter().filter(|f| now_ms - f.computed_at_ms <= fresh_ms) {
            let key = (f.node.clone(), f.resource.clone());
            let newer = self.forecasts.get(&key).is_none_or(|cur| cur.computed_at_ms < f.computed_at_ms);
            if newer {
                self.forecasts.insert(key, f);
            }
        }
    }

    /// Forgets what the detectors found (a replica that stopped leading; its results go stale).
    pub fn clear_results(&mut self) {
        self.anomalies.clear();
        self.scores.clear();
        self.episodes.clear();
        self.forecasts.clear();
        self.outliers.clear();
        self.changepoints.clear();
    }
}

const MAX_CHANGEPOINTS: usize = 1000;
const MAX_ANOMALIES: usize = 10_000;
/// Scores below this are noise: not kept as "current", so the map stays small.
pub const SCORE_FLOOR: f64 = 0.2;
/// The detector's calibrated alert threshold.
pub const ALERT_SCORE: f64 = 0.5;

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|d| d.to_rfc3339()).unwrap_or_default()
}

/// Where results go besides memory (the store); called on the engine thread.
pub trait DetectionSink: Send + 'static {
    fn anomalies(&mut self, _a: &[AnomalyView]) {}
    fn forecasts(&mut self, _f: &[ForecastView]) {}
    fn changepoints(&mut self, _c: &[ChangepointView]) {}
    fn outliers(&mut self, _o: &[OutlierView]) {}
}

impl DetectionSink for () {}

/// Hands batches to the engine without ever blocking the writer.
/// What the engine thread is fed.
enum Input {
    /// Just stored: everything is detected on it.
    Stored(StoredBatch),
    /// Stored by an earlier run, read back at start: it only rebuilds the forecasters' history,
    /// so exhaustion forecasts do not need days of fresh data after a restart.
    History(StoredBatch),
}

#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<Input>,
    /// Sees every batch first and keeps it for this engine (Some) or takes it elsewhere (None):
    /// of several replicas only the leader detects, followers relay to it.
    divert: Option<Arc<dyn Fn(StoredBatch) -> Option<StoredBatch> + Send + Sync>>,
    pub state: Arc<RwLock<DetectionState>>,
    /// Per-node latest values, kept on the same feed for the rules.
    pub facts: Arc<RwLock<crate::decide::facts::Facts>>,
}

impl EngineHandle {
    /// Every batch goes through `divert` first, which keeps it for this engine or takes it.
    pub fn divert(mut self, divert: impl Fn(StoredBatch) -> Option<StoredBatch> + Send + Sync + 'static) -> Self {
        self.divert = Some(Arc::new(divert));
        self
    }

    /// Feeds history to the forecasters, waiting for room (call off the async runtime).
    pub fn warm(&self, b: StoredBatch) {
        let _ = self.tx.send(Input::History(b));
    }

    pub fn submit(&self, b: StoredBatch) {
        let b = match &self.divert {
            Some(d) => match d(b) {
                Some(b) => b,
                None => return,
            },
            None => b,
        };
        match self.tx.try_send(Input::Stored(b)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                if let Ok(s) = self.state.read() {
                    s.batches_skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Starts the engine thread.
pub fn start(cfg: EngineConfig, sink: impl DetectionSink) -> EngineHandle {
    let (tx, rx) = std::sync::mpsc::sync_channel(cfg.queue.max(1));
    let state = Arc::new(RwLock::new(DetectionState::default()));
    let facts = Arc::new(RwLock::new(crate::decide::facts::Facts::default()));
    let mut engine = Engine::new(cfg, state.clone());
    engine.facts = Some(facts.clone());
    let spawned = std::thread::Builder::new().name("medic-detect".into()).spawn(move || {
        lower_priority();
        engine.run(rx, sink)
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the detection thread; detection is off");
    }
    EngineHandle { tx, divert: None, state, facts }
}

/// Detection must never slow down ingest: when the CPU is short, the scheduler should give it to
/// the ingest path first, and the engine sheds batches (counted) instead. Nice 10 on this thread
/// does that (Linux applies setpriority to a single thread when given its tid).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority only read/adjust this thread's own scheduling attributes.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, 10) != 0 {
            tracing::debug!("could not lower the detection thread's priority");
        }
    }
}

/// Per-node derived signals the fleet comparison and changepoints look at: few, meaningful,
/// comparable across nodes of one role.
const SIGNALS: &[&str] = &[
    "load1",
    "cpu_busy_cores",
    "memory_available_bytes",
    "disk_io_busy_ratio",
    "network_receive_bytes_per_second",
    "network_transmit_bytes_per_second",
    "clickhouse_queries_running",
    "clickhouse_query_p99_seconds",
];

struct Engine {
    cfg: EngineConfig,
    anomaly: super::anomaly::Detector,
    state: Arc<RwLock<DetectionState>>,
    forecasters: HashMap<String, ExhaustionForecaster>,
    peers: PeerGroups,
    changepoints: ChangepointTracker,
    /// Previous counter values per (node, series) for rates.
    last_counter: HashMap<(String, String), (i64, f64)>,
    last_outlier_run_ms: i64,
    facts: Option<Arc<RwLock<crate::decide::facts::Facts>>>,
    /// Anomaly alerts not yet handed to the sink.
    new_anomalies: Vec<AnomalyView>,
}

/// One point of a series, whichever form the batch carried it in.
#[derive(Clone, Copy)]
struct Point<'a> {
    metric: &'a str,
    labels: &'a [medic_proto::v1::Label],
    kind: i32,
    ts: i64,
    value: f64,
}

impl<'a> From<&'a Sample> for Point<'a> {
    fn from(s: &'a Sample) -> Self {
        Self { metric: &s.metric, labels: &s.labels, kind: s.kind, ts: s.timestamp_ms, value: s.value }
    }
}

fn points(batch: &Batch) -> impl Iterator<Item = Point<'_>> {
    batch.series_refs().flat_map(|s| {
        s.points().map(move |(ts, value)| Point { metric: s.metric, labels: s.labels, kind: s.kind, ts, value })
    })
}

/// The metrics forecast for exhaustion: the resource each point belongs to and its limit.
pub const EXHAUSTION_METRICS: &[&str] = &[
    "node_filesystem_avail_bytes",
    "clickhouse_disk_free_bytes",
    "clickhouse_table_max_parts_per_partition",
    "node_memory_MemAvailable_bytes",
];

fn exhaustion_resource(s: &Point<'_>, max_parts: f64) -> Option<(String, Limit)> {
    match s.metric {
        "node_filesystem_avail_bytes" => Some((format!("filesystem:{}", label(s, "mountpoint")?), Limit::Below(0.0))),
        "clickhouse_disk_free_bytes" => Some((format!("clickhouse_disk:{}", label(s, "disk")?), Limit::Below(0.0))),
        "clickhouse_table_max_parts_per_partition" => {
            let (db, t) = (label(s, "database")?, label(s, "table")?);
            (db != "system").then(|| (format!("parts:{db}.{t}"), Limit::Above(max_parts)))
        }
        "node_memory_MemAvailable_bytes" => Some(("memory".to_string(), Limit::Below(0.0))),
        _ => None,
    }
}

fn label<'a>(s: &Point<'a>, name: &str) -> Option<&'a str> {
    s.labels.iter().find(|l| l.name == name).map(|l| l.value.as_str())
}

fn series_id(s: &Point<'_>) -> String {
    let mut k = s.metric.to_string();
    for l in s.labels {
        k.push('\u{1f}');
        k.push_str(&l.name);
        k.push('=');
        k.push_str(&l.value);
    }
    k
}

impl Engine {
    fn new(cfg: EngineConfig, state: Arc<RwLock<DetectionState>>) -> Self {
        Self {
            anomaly: super::anomaly::Detector::new(super::anomaly::Config::default()),
            peers: PeerGroups::new(cfg.peers.clone()),
            changepoints: ChangepointTracker::new(cfg.changepoints.clone()),
            cfg,
            state,
            forecasters: HashMap::new(),
            last_counter: HashMap::new(),
            last_outlier_run_ms: 0,
            facts: None,
            new_anomalies: Vec::new(),
        }
    }

    fn run(mut self, rx: Receiver<Input>, mut sink: impl DetectionSink) {
        loop {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Input::Stored(b)) => self.observe(&b),
                Ok(Input::History(b)) => self.warm(&b),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            self.evaluate(chrono::Utc::now().timestamp_millis(), &mut sink);
        }
    }

    fn warm(&mut self, b: &StoredBatch) {
        let max_parts = self.cfg.max_parts_per_partition;
        let fc = self
            .forecasters
            .entry(b.node.clone())
            .or_insert_with(|| ExhaustionForecaster::new(self.cfg.forecast.clone()));
        let mut by_resource: HashMap<String, (Limit, Vec<(i64, f64)>)> = HashMap::new();
        for s in points(&b.batch) {
            if let Some((resource, limit)) = exhaustion_resource(&s, max_parts) {
                by_resource.entry(resource).or_insert_with(|| (limit, Vec::new())).1.push((s.ts, s.value));
            }
        }
        for (resource, (limit, history)) in by_resource {
            fc.prepend(&resource, limit, history);
        }
        fc.refit_soon();
    }

    /// Per-second rate of a counter sample; None on the first sample or a reset.
    fn rate(&mut self, node: &str, s: &Point<'_>) -> Option<f64> {
        let key = (node.to_string(), series_id(s));
        let prev = self.last_counter.insert(key, (s.ts, s.value));
        let (t0, v0) = prev?;
        let dt = (s.ts - t0) as f64 / 1000.0;
        (dt > 0.0 && s.value >= v0).then(|| (s.value - v0) / dt)
    }

    fn observe(&mut self, b: &StoredBatch) {
        if let Ok(s) = self.state.read() {
            s.batches_seen.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(f) = &self.facts
            && let Ok(mut f) = f.write()
        {
            f.observe(&b.node, &b.labels, &b.batch);
        }
        let node = b.node.as_str();
        self.score(node, &b.batch);
        let role = b.labels.iter().find(|(n, _)| *n == self.cfg.role_label).map(|(_, v)| v.clone());
        let mut sums: BTreeMap<&'static str, (i64, f64)> = BTreeMap::new();
        let mut add = |sig: &'static str, ts: i64, v: f64| {
            let e = sums.entry(sig).or_insert((ts, 0.0));
            e.0 = e.0.max(ts);
            e.1 += v;
        };
        let max_parts = self.cfg.max_parts_per_partition;
        let fc = self
            .forecasters
            .entry(node.to_string())
            .or_insert_with(|| ExhaustionForecaster::new(self.cfg.forecast.clone()));
        let mut counters: Vec<Point<'_>> = Vec::new();
        for s in points(&b.batch) {
            let ts = s.ts;
            if let Some((resource, limit)) = exhaustion_resource(&s, max_parts) {
                fc.observe(&resource, limit, ts, s.value);
            }
            match s.metric {
                "node_memory_MemAvailable_bytes" => add("memory_available_bytes", ts, s.value),
                "node_load1" => add("load1", ts, s.value),
                "clickhouse_metrics_Query" => add("clickhouse_queries_running", ts, s.value),
                "clickhouse_query_duration_seconds" if label(&s, "quantile") == Some("0.99") => {
                    add("clickhouse_query_p99_seconds", ts, s.value)
                }
                _ if s.kind == MetricKind::Counter as i32 => counters.push(s),
                _ => {}
            }
        }
        for s in counters {
            let sig = match s.metric {
                "node_cpu_seconds_total"
                    if label(&s, "mode") != Some("idle") && label(&s, "mode") != Some("iowait") =>
                {
                    "cpu_busy_cores"
                }
                "node_disk_io_time_seconds_total" => "disk_io_busy_ratio",
                "node_network_receive_bytes_total" if label(&s, "device") != Some("lo") => {
                    "network_receive_bytes_per_second"
                }
                "node_network_transmit_bytes_total" if label(&s, "device") != Some("lo") => {
                    "network_transmit_bytes_per_second"
                }
                _ => continue,
            };
            if let Some(r) = self.rate(node, &s) {
                add(sig, s.ts, r);
            }
        }
        let empty = BTreeMap::new();
        for (sig, (ts, v)) in sums {
            debug_assert!(SIGNALS.contains(&sig));
            if let Some(role) = &role {
                self.peers.observe(node, role, sig, ts, v);
            }
            self.changepoints.observe(node, sig, &empty, ts, v);
        }
    }

    /// Scores every sample; keeps what rises above the noise floor and records alerts.
    fn score(&mut self, node: &str, batch: &Batch) {
        use std::hash::{Hash, Hasher};
        let mut alerts = Vec::new();
        let mut current = Vec::new();
        // Episodes are updated off the lock (the API reads the state) and put back after.
        let mut episodes = match self.state.write() {
            Ok(mut st) => std::mem::take(&mut st.episodes),
            Err(_) => HashMap::new(),
        };
        let mut open = episodes.len();
        for series in batch.series_refs() {
            // Once per series, however many points it brings.
            let mut h = std::hash::DefaultHasher::new();
            node.hash(&mut h);
            series.metric.hash(&mut h);
            for l in series.labels {
                l.name.hash(&mut h);
                l.value.hash(&mut h);
            }
            let kind = if series.kind == MetricKind::Counter as i32 {
                super::anomaly::Kind::Counter
            } else {
                super::anomaly::Kind::Gauge
            };
            let id = h.finish();
            let labels_text =
                || series.labels.iter().map(|l| format!("{}={}", l.name, l.value)).collect::<Vec<_>>().join(",");
            for (ts, value) in series.points() {
                let s = Point { metric: series.metric, labels: series.labels, kind: series.kind, ts, value };
                let sc = self.anomaly.observe(id, ts, value, kind);
                // Most samples score below the floor: those cost no allocation, only a removal by id.
                if sc.value >= SCORE_FLOOR {
                    current.push((
                        id,
                        Some(CurrentScore {
                            node: node.to_string(),
                            metric: s.metric.to_string(),
                            labels: labels_text(),
                            score: sc.value,
                            at_ms: s.ts,
                        }),
                    ));
                } else {
                    current.push((id, None));
                }
                match episodes.entry(id) {
                    std::collections::hash_map::Entry::Occupied(mut e) => {
                        let ep = e.get_mut();
                        ep.last_ms = s.ts;
                        ep.latest = sc.observed;
                        // Over once the series is back near the detector's current expectation: it
                        // came back, or the detector has learned its new level or trend (a series that
                        // only moved on, like an uptime, is not an anomaly that lasts).
                        let back = (sc.observed - sc.baseline).abs() < 0.5 * (ep.observed - ep.baseline).abs();
                        if back || s.ts - ep.since_ms > MAX_EPISODE_MS {
                            e.remove();
                        }
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        if sc.value >= ALERT_SCORE && sc.observed != sc.baseline && open < MAX_EPISODES {
                            v.insert(EpisodeView {
                                node: node.to_string(),
                                metric: s.metric.to_string(),
                                labels: labels_text(),
                                score: sc.value,
                                since_ms: s.ts,
                                last_ms: s.ts,
                                baseline: sc.baseline,
                                observed: sc.observed,
                                latest: sc.observed,
                            });
                            open += 1;
                        }
                    }
                }
                if sc.value >= ALERT_SCORE {
                    alerts.push(AnomalyView {
                        node: node.to_string(),
                        metric: s.metric.to_string(),
                        labels: s.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect(),
                        at: rfc3339(s.ts),
                        at_ms: s.ts,
                        score: sc.value,
                        observed: sc.observed,
                        baseline: sc.baseline,
                        signals: sc
                            .signals
                            .iter()
                            .filter(|g| {
                                !matches!(g, super::anomaly::Signal::Gap | super::anomaly::Signal::CounterReset)
                            })
                            .map(|g| format!("{g:?}").to_lowercase())
                            .collect(),
                    });
                }
            }
        }
        let Ok(mut st) = self.state.write() else { return };
        st.episodes = episodes;
        for (id, score) in current {
            match score {
                Some(c) => {
                    st.scores.insert(id, c);
                }
                None => {
                    st.scores.remove(&id);
                }
            }
        }
        for a in alerts {
            if self.new_anomalies.len() < 10_000 {
                self.new_anomalies.push(a.clone());
            }
            st.anomalies.push_back(a);
            while st.anomalies.len() > MAX_ANOMALIES {
                st.anomalies.pop_front();
            }
        }
    }

    fn evaluate(&mut self, now_ms: i64, sink: &mut impl DetectionSink) {
        if let Ok(mut st) = self.state.write() {
            // A series that stopped reporting keeps no current score.
            st.scores.retain(|_, c| now_ms - c.at_ms < 600_000);
            // So does an episode whose series went silent.
            st.episodes.retain(|_, e| now_ms - e.last_ms < 600_000);
        }
        if !self.new_anomalies.is_empty() {
            sink.anomalies(&std::mem::take(&mut self.new_anomalies));
        }
        let mut fresh = Vec::new();
        for (node, fc) in self.forecasters.iter_mut() {
            for r in fc.refresh_if_due(now_ms) {
                match r {
                    Ok(f) => fresh.push(view(node, f, now_ms)),
                    Err((resource, e)) => {
                        tracing::debug!(node = %node, resource, error = %e, "forecast failed");
                        if let Ok(s) = self.state.read() {
                            s.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        let new_cps: Vec<ChangepointView> = match self.changepoints.run_if_due(now_ms) {
            Ok(evts) => evts.into_iter().map(cp_view).collect(),
            Err(e) => {
                tracing::debug!(error = %e, "changepoint run failed");
                Vec::new()
            }
        };
        let outliers = if now_ms - self.last_outlier_run_ms >= self.cfg.outlier_every.as_millis() as i64 {
            self.last_outlier_run_ms = now_ms;
            self.peers.prune(now_ms);
            match self.peers.evaluate(now_ms) {
                Ok(f) => Some(f.into_iter().map(|o| outlier_view(o, now_ms)).collect::<Vec<_>>()),
                Err(e) => {
                    tracing::debug!(error = %e, "outlier evaluation failed");
                    None
                }
            }
        } else {
            None
        };
        if fresh.is_empty() && new_cps.is_empty() && outliers.is_none() {
            return;
        }
        if let Ok(mut st) = self.state.write() {
            for f in &fresh {
                st.forecasts.insert((f.node.clone(), f.resource.clone()), f.clone());
            }
            for c in &new_cps {
                st.changepoints.push_back(c.clone());
                while st.changepoints.len() > MAX_CHANGEPOINTS {
                    st.changepoints.pop_front();
                }
            }
            if let Some(o) = &outliers {
                st.outliers = o.clone();
            }
        }
        if !fresh.is_empty() {
            sink.forecasts(&fresh);
        }
        if !new_cps.is_empty() {
            tracing::info!(count = new_cps.len(), "changepoints detected");
            sink.changepoints(&new_cps);
        }
        if let Some(o) = outliers.filter(|o| !o.is_empty()) {
            for f in &o {
                tracing::info!(node = %f.node, role = %f.role, metrics = ?f.metrics.iter().map(|m| &m.metric).collect::<Vec<_>>(), "node differs from its peers");
            }
            sink.outliers(&o);
        }
    }
}

fn view(node: &str, f: Forecast, now_ms: i64) -> ForecastView {
    ForecastView {
        node: node.to_string(),
        resource: f.resource,
        exhaustion_seconds: f.exhaustion_seconds,
        pessimistic_seconds: f.pessimistic_seconds,
        model: f.model,
        explanation: f.explanation,
        computed_at: rfc3339(now_ms),
        computed_at_ms: now_ms,
    }
}

fn cp_view(e: ChangepointEvent) -> ChangepointView {
    ChangepointView {
        at: rfc3339(e.ts_ms),
        node: e.node,
        metric: e.metric,
        labels: e.labels,
        at_ms: e.ts_ms,
        before_mean: e.before_mean,
        after_mean: e.after_mean,
    }
}

fn outlier_view(o: OutlierFinding, now_ms: i64) -> OutlierView {
    OutlierView {
        node: o.node,
        role: o.role,
        detected_at: rfc3339(now_ms),
        metrics: o
            .metrics
            .into_iter()
            .map(|m| OutlierMetricView {
                metric: m.metric,
                value: m.value,
                peer_median: m.peer_median,
                outlying_fraction: m.outlying_fraction,
                flagged_by: m.flagged_by.iter().map(|f| format!("{f:?}").to_lowercase()).collect(),
            })
            .collect(),
    }
}

/// Stores what the detectors find, through the store's event log.
pub struct StoreSink(pub crate::store::events::EventLog);

impl StoreSink {
    fn put<T: Serialize>(&self, kind: crate::store::EventKind, ts_ms: i64, node: &str, v: &T) {
        if let Ok(body) = serde_json::to_value(v) {
            self.0.record(crate::store::EventRecord { kind, ts_ms, node: node.to_string(), body });
        }
    }
}

impl DetectionSink for StoreSink {
    fn anomalies(&mut self, a: &[AnomalyView]) {
        for x in a {
            self.put(crate::store::EventKind::Anomaly, x.at_ms, &x.node, x);
        }
    }
    fn forecasts(&mut self, f: &[ForecastView]) {
        for x in f {
            self.put(crate::store::EventKind::Forecast, x.computed_at_ms, &x.node, x);
        }
    }
    fn changepoints(&mut self, c: &[ChangepointView]) {
        for x in c {
            self.put(crate::store::EventKind::Changepoint, x.at_ms, &x.node, x);
        }
    }
    fn outliers(&mut self, o: &[OutlierView]) {
        let now = chrono::Utc::now().timestamp_millis();
        for x in o {
            self.put(crate::store::EventKind::Outlier, now, &x.node, x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medic_proto::v1::Label;

    fn gauge(metric: &str, labels: &[(&str, &str)], ts: i64, v: f64) -> Sample {
        Sample {
            metric: metric.into(),
            labels: labels.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
            timestamp_ms: ts,
            value: v,
            kind: MetricKind::Gauge as i32,
        }
    }

    #[derive(Default)]
    struct Captured {
        forecasts: Vec<ForecastView>,
        outliers: Vec<OutlierView>,
    }

    impl DetectionSink for Captured {
        fn forecasts(&mut self, f: &[ForecastView]) {
            self.forecasts.extend_from_slice(f);
        }
        fn outliers(&mut self, o: &[OutlierView]) {
            self.outliers.extend_from_slice(o);
        }
    }

    /// Five nodes of one role for three days: their data disks fill at a steady rate, and one
    /// node runs at eight times the load of the others.
    #[test]
    fn stored_batches_yield_forecasts_per_node_and_flag_the_odd_node_of_a_role() {
        let mut engine = Engine::new(EngineConfig::default(), Arc::new(RwLock::new(DetectionState::default())));
        let t0: i64 = 1_795_000_000_000;
        let day = 86_400_000i64;
        let end = t0 + 3 * day;
        let mut ts: Vec<i64> = (0..).map(|i| t0 + i * 300_000).take_while(|t| *t < end - 1_200_000).collect();
        ts.extend((0..40).map(|i| end - 1_200_000 + i * 30_000));
        let total = 1e12;
        // 10 % of the disk per day: empty 10 days after t0, 7 days after the last sample.
        let per_ms = total * 0.1 / day as f64;
        for &t in &ts {
            for n in 0..5 {
                let load = if n == 4 { 8.0 } else { 1.0 } + ((t / 30_000 + n) % 7) as f64 * 0.01;
                let samples = vec![
                    gauge(
                        "node_filesystem_avail_bytes",
                        &[("mountpoint", "/data")],
                        t,
                        total - per_ms * (t - t0) as f64,
                    ),
                    gauge("node_load1", &[], t, load),
                ];
                engine.observe(&StoredBatch {
                    node: format!("ch-{n}"),
                    labels: vec![("role".into(), "clickhouse".into())],
                    batch: Arc::new(Batch { seq: 1, created_unix_ms: t, samples, logs: vec![], series: vec![] }),
                });
            }
        }
        let mut got = Captured::default();
        let now = *ts.last().unwrap();
        engine.evaluate(now, &mut got);

        assert_eq!(got.forecasts.len(), 5, "one forecast per node: {:?}", got.forecasts);
        for f in &got.forecasts {
            assert_eq!(f.resource, "filesystem:/data");
            let days = f.exhaustion_seconds.expect("a filling disk exhausts") / 86_400.0;
            assert!((days - 7.0).abs() < 0.7, "{}: {days:.2} days, explanation: {}", f.node, f.explanation);
            let pessimistic = f.pessimistic_seconds.expect("pessimistic bound") / 86_400.0;
            assert!(pessimistic <= days + 1e-9, "the pessimistic bound comes first");
        }
        assert_eq!(got.outliers.len(), 1, "{:?}", got.outliers);
        assert_eq!(got.outliers[0].node, "ch-4");
        assert_eq!(got.outliers[0].role, "clickhouse");
        assert!(got.outliers[0].metrics.iter().any(|m| m.metric == "load1"));
        let st = engine.state.read().unwrap();
        assert_eq!(st.forecasts.len(), 5);
        assert_eq!(st.outliers.len(), 1);
    }

    #[test]
    fn a_spike_on_a_stored_series_becomes_an_anomaly_with_its_evidence_and_a_current_score() {
        let mut engine = Engine::new(EngineConfig::default(), Arc::new(RwLock::new(DetectionState::default())));
        let t0: i64 = 1_795_000_000_000;
        for i in 0..600i64 {
            let noise = ((i * 7919) % 13) as f64 * 0.01;
            let v = if i == 599 { 50.0 } else { 1.0 + noise };
            let batch = Batch {
                seq: 1,
                created_unix_ms: t0 + i * 10_000,
                samples: vec![gauge("node_load1", &[], t0 + i * 10_000, v)],
                logs: vec![],
                series: vec![],
            };
            engine.observe(&StoredBatch { node: "n1".into(), labels: vec![], batch: Arc::new(batch) });
        }
        let st = engine.state.read().unwrap();
        let last = st.anomalies.back().expect("the spike is an anomaly");
        assert_eq!((last.node.as_str(), last.metric.as_str(), last.observed), ("n1", "node_load1", 50.0));
        assert!(last.score >= ALERT_SCORE && last.baseline < 2.0, "{last:?}");
        assert!(last.signals.contains(&"spike".to_string()), "{:?}", last.signals);
        assert!(st.anomalies.len() <= 3, "a quiet series raised {} alerts before the spike", st.anomalies.len() - 1);
        assert!(st.scores.values().any(|c| c.metric == "node_load1" && c.score >= ALERT_SCORE));
    }

    #[test]
    fn an_episode_lasts_while_the_series_stays_away_and_ends_when_it_is_back_or_its_new_level_is_learned() {
        let t0: i64 = 1_795_000_000_000;
        let engine = |first: f64| {
            let mut e = Engine::new(EngineConfig::default(), Arc::new(RwLock::new(DetectionState::default())));
            for i in 0..600i64 {
                feed(&mut e, t0, i, first + ((i * 7919) % 13) as f64 * 0.1);
            }
            e
        };
        fn feed(engine: &mut Engine, t0: i64, i: i64, v: f64) -> Vec<i64> {
            let batch = Batch {
                seq: 1,
                created_unix_ms: t0 + i * 1000,
                samples: vec![gauge("app_queue_depth", &[], t0 + i * 1000, v)],
                logs: vec![],
                series: vec![],
            };
            engine.observe(&StoredBatch { node: "n1".into(), labels: vec![], batch: Arc::new(batch) });
            engine.state.read().unwrap().episodes.values().map(|e| e.since_ms).collect()
        }

        // A jump that stays: open from the jump until the detector has learned the new level.
        let mut e = engine(10.0);
        assert_eq!(feed(&mut e, t0, 600, 100.0), [t0 + 600_000], "the jump opens an episode");
        let lasted = (601..2000).take_while(|&i| !feed(&mut e, t0, i, 100.0 + (i % 3) as f64).is_empty()).count();
        assert!((20..500).contains(&lasted), "open while the shift is news, over once learned: {lasted} samples");

        // A burst that goes away: over as soon as the series is back.
        let mut e = engine(10.0);
        for i in 600..603 {
            assert_eq!(feed(&mut e, t0, i, 100.0), [t0 + 600_000]);
        }
        assert!(feed(&mut e, t0, 603, 10.5).is_empty(), "back near the baseline: the episode is over");

        // A series that only moves on (an uptime) has no lasting episode.
        let mut e = Engine::new(EngineConfig::default(), Arc::new(RwLock::new(DetectionState::default())));
        let open: usize = (0..3000i64).map(|i| feed(&mut e, t0, i, 1000.0 + i as f64).len()).sum();
        assert!(open < 30, "a steady climb is no anomaly that lasts: open in {open} samples");
    }

    #[test]
    fn counters_become_rates_and_a_reset_is_not_a_negative_rate() {
        let mut engine = Engine::new(EngineConfig::default(), Arc::new(RwLock::new(DetectionState::default())));
        let c = |ts: i64, v: f64| Sample {
            metric: "node_network_receive_bytes_total".into(),
            labels: vec![Label::new("device", "eth0")],
            timestamp_ms: ts,
            value: v,
            kind: MetricKind::Counter as i32,
        };
        assert_eq!(engine.rate("n", &Point::from(&c(0, 100.0))), None, "no rate from one sample");
        assert_eq!(engine.rate("n", &Point::from(&c(10_000, 1100.0))), Some(100.0));
        assert_eq!(engine.rate("n", &Point::from(&c(20_000, 50.0))), None, "a reset");
        assert_eq!(engine.rate("n", &Point::from(&c(30_000, 1050.0))), Some(100.0));
    }
}
