//! The fault gauntlet: real faults injected into a fleet running on this machine, and how well
//! Medic detects and heals them.
//!
//! For each fault a fresh fleet starts — a controller with the shipped rules (`rules/`), three
//! agentd nodes (`--interval 1s`), each with its own real ClickHouse engine (the chdb test
//! server) that its agent can restart (`--service-restart clickhouse-server=…`), a real
//! Alertmanager routing to a local PagerDuty stand-in — runs healthy for a warm-up, and then one
//! fault is injected on node `ch-1`. The gauntlet polls the controller's API and measures:
//!
//! - detection: injection → the first evidence the controller records about ch-1 (an anomaly on
//!   a metric the fault touches, a forecast, a rule decision in the audit log, or the node seen
//!   disconnected), as observed through the API;
//! - remediation: injection → the action's `verified` outcome in `/api/v1/actions`;
//! - resolved: verified and the fault really gone (checked by the gauntlet itself), no human;
//! - actions taken, false actions (any action on a healthy node or during the soak) and the
//!   escalations Alertmanager delivered to PagerDuty.
//!
//! A fresh fleet per fault keeps faults independent: guards (cooldowns, rate limits) are part of
//! the shipped rules and would otherwise let one fault's action block the next fault's.
//!
//! Run through `tests/gauntlet/run` (installs what is needed and builds first).

use anyhow::{Context, Result, bail};
use clap::Parser;
use medic_tests::*;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Inject real faults into a local Medic fleet and measure detection and healing")]
struct Args {
    /// Fewer faults and a shorter soak (for the test suite): crash, hang, controller crash,
    /// network loss, soak.
    #[arg(long)]
    short: bool,
    /// Only these faults (comma separated; see --list).
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// List the faults and exit.
    #[arg(long)]
    list: bool,
    /// Length of the no-fault soak (default 120s, 30s with --short).
    #[arg(long, value_parser = humantime::parse_duration)]
    soak: Option<Duration>,
    /// Healthy time before a fault is injected.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Collection interval of every agent.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Where each fleet's files go (kept afterwards); default: a temporary directory, removed.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The shipped rules directory.
    #[arg(long)]
    rules_dir: Option<PathBuf>,
}

const NODES: [&str; 3] = ["ch-1", "ch-2", "ch-3"];
const FAULTY: &str = "ch-1";
const PD_KEY: &str = "0123456789abcdef0123456789abcdef";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Crash,
    Hang,
    DiskFill,
    TooManyParts,
    RetentionBudget,
    MemoryHog,
    ErrorLogStorm,
    ControllerCrash,
    NetworkLoss,
    Soak,
}

impl Fault {
    const ALL: [Fault; 10] = [
        Fault::Crash,
        Fault::Hang,
        Fault::DiskFill,
        Fault::TooManyParts,
        Fault::RetentionBudget,
        Fault::MemoryHog,
        Fault::ErrorLogStorm,
        Fault::ControllerCrash,
        Fault::NetworkLoss,
        Fault::Soak,
    ];
    const SHORT: [Fault; 5] = [Fault::Crash, Fault::Hang, Fault::ControllerCrash, Fault::NetworkLoss, Fault::Soak];

    fn name(self) -> &'static str {
        match self {
            Fault::Crash => "crash",
            Fault::Hang => "hang",
            Fault::DiskFill => "disk-fill",
            Fault::TooManyParts => "too-many-parts",
            Fault::RetentionBudget => "retention-budget",
            Fault::MemoryHog => "memory-hog",
            Fault::ErrorLogStorm => "error-log-storm",
            Fault::ControllerCrash => "controller-crash",
            Fault::NetworkLoss => "network-loss",
            Fault::Soak => "soak",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Fault::Crash => "ch-1's ClickHouse killed (SIGKILL)",
            Fault::Hang => "ch-1's ClickHouse frozen (SIGSTOP)",
            Fault::DiskFill => "ch-1's ClickHouse disk (a small filesystem) filled with data toward full",
            Fault::TooManyParts => "merges stopped on a table of ch-1 while a client inserts one row at a time",
            Fault::RetentionBudget => "a table of ch-1 grows far past its retention budget",
            Fault::MemoryHog => "a process on the host takes a large share of the memory",
            Fault::ErrorLogStorm => "ch-1's server log floods with errors",
            Fault::ControllerCrash => "ch-1's ClickHouse killed; the controller is killed while it restarts it",
            Fault::NetworkLoss => "the network between ch-1's agent and the controller is cut",
            Fault::Soak => "no fault: the healthy fleet runs",
        }
    }

    /// The shipped rules expected to handle it; empty when none covers it.
    fn rules(self) -> &'static [&'static str] {
        match self {
            Fault::Crash | Fault::Hang | Fault::ControllerCrash => &["clickhouse-down"],
            Fault::DiskFill => &["clickhouse-disk-nearly-full", "clickhouse-disk-will-fill"],
            Fault::TooManyParts => &["clickhouse-too-many-parts"],
            _ => &[],
        }
    }

    /// Healed by design without a rule (the agent's spool and reconnects).
    fn self_healing(self) -> bool {
        self == Fault::NetworkLoss
    }

    /// Metric name prefixes whose anomalies count as detecting this fault.
    fn evidence_metrics(self) -> &'static [&'static str] {
        match self {
            Fault::Crash | Fault::Hang | Fault::ControllerCrash => &["clickhouse_"],
            Fault::DiskFill => &["clickhouse_disk_", "node_filesystem_", "clickhouse_table_"],
            Fault::TooManyParts => &["clickhouse_table_", "clickhouse_errors_total", "clickhouse_failed_queries"],
            Fault::RetentionBudget => &["clickhouse_table_", "clickhouse_disk_"],
            Fault::MemoryHog => &["node_memory_"],
            Fault::ErrorLogStorm => &["medic_agent_log_records"],
            Fault::NetworkLoss | Fault::Soak => &[],
        }
    }

    /// Host-wide faults are seen by every node (they share this machine).
    fn host_wide(self) -> bool {
        self == Fault::MemoryHog
    }
}

/// One fault's measurements.
#[derive(Debug, Default)]
struct Outcome {
    fault: String,
    covered: String,
    detect_s: Option<f64>,
    detected_by: String,
    remediate_s: Option<f64>,
    resolved: Option<bool>,
    actions: Vec<String>,
    false_actions: Vec<String>,
    escalations: usize,
    note: String,
}

// ---------------------------------------------------------------------------------------------
// The fleet

struct Node {
    name: String,
    dir: PathBuf,
    port: u16,
    agent: Option<AgentProc>,
    proxy: Proxy,
}

impl Node {
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("pid")).ok()?.trim().parse().ok()
    }
    fn restarts(&self) -> usize {
        std::fs::read_to_string(self.dir.join("restarts")).map(|s| s.lines().count()).unwrap_or(0)
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    async fn query(&self, sql: &str) -> Result<String> {
        let resp = client().post(self.url()).body(sql.to_string()).send().await?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!("{}: {sql}: {body}", self.name);
        }
        Ok(body)
    }
    async fn ping(&self) -> bool {
        let c = reqwest::Client::builder().timeout(Duration::from_millis(1500)).build();
        match c {
            Ok(c) => c.get(format!("{}/ping", self.url())).send().await.is_ok_and(|r| r.status().is_success()),
            Err(_) => false,
        }
    }
    /// Stops the node's ClickHouse (whatever its state) and its agent.
    fn stop(&mut self) {
        if let Some(pid) = self.pid() {
            // SAFETY: signalling the server process this gauntlet started (its pid file).
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGKILL);
            }
        }
        if let Some(mut a) = self.agent.take() {
            let _ = a.proc.terminate();
        }
        self.proxy.stop();
    }
}

/// The script that (re)starts a node's ClickHouse on the same port and data dir: what the
/// node's agent runs for `restart clickhouse-server`, and what the gauntlet itself runs first.
fn restart_script(dir: &Path, port: u16, cold: Option<&Path>) -> Result<PathBuf> {
    let py = chdb_python()?;
    let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("clickhouse/server.py");
    let cold = cold.map(|c| format!("--cold-disk {}", c.display())).unwrap_or_default();
    let d = dir.display();
    let script = format!(
        r#"#!/bin/sh
# Restarts this node's ClickHouse test engine on port {port} over {d}/data.
# "initial" (the gauntlet's first start) is not counted as a restart.
D={d}
[ "$1" = initial ] || date +%s%N >> $D/restarts
if [ -s $D/pid ]; then
  P=$(cat $D/pid)
  kill -CONT $P 2>/dev/null; kill -KILL $P 2>/dev/null
  i=0
  while [ -e /proc/$P ] && ! grep -q ') Z' /proc/$P/stat 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
fi
rm -f $D/ready
setsid {py} {server} --port {port} --data-dir $D/data --ready-file $D/ready --log-file $D/clickhouse-server.log {cold} >> $D/server.out 2>&1 < /dev/null &
echo $! > $D/pid
i=0
while [ ! -s $D/ready ]; do
  sleep 0.1; i=$((i+1))
  if [ $i -gt 600 ]; then echo "ClickHouse did not start within 60 s" >&2; exit 1; fi
done
"#,
        py = py.display(),
        server = server.display(),
    );
    let path = dir.join("restart-clickhouse.sh");
    std::fs::write(&path, script)?;
    Ok(path)
}

/// A TCP relay between an agent and the controller that can be cut (every connection closed,
/// new ones refused) and restored: the network between them, under the gauntlet's control.
#[derive(Clone)]
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: u16) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let p =
            Proxy { port, cut: Arc::new(AtomicBool::new(false)), conns: Default::default(), task: Default::default() };
        let q = p.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if q.cut.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                if let Ok(mut c) = q.conns.lock() {
                    c.retain(|h| !h.is_finished());
                    c.push(h.abort_handle());
                }
            }
        });
        if let Ok(mut t) = p.task.lock() {
            *t = Some(task);
        }
        Ok(p)
    }
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Ok(mut c) = self.conns.lock() {
            for h in c.drain(..) {
                h.abort();
            }
        }
    }
    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
    fn stop(&self) {
        self.cut();
        if let Ok(mut t) = self.task.lock()
            && let Some(t) = t.take()
        {
            t.abort();
        }
    }
}

struct Fleet {
    dir: PathBuf,
    controller: Option<ControllerProc>,
    grpc: u16,
    http: u16,
    controller_args: Vec<String>,
    nodes: Vec<Node>,
    /// The tmpfs mounted for ch-1's ClickHouse disks, unmounted at the end.
    mounts: Vec<PathBuf>,
}

struct Shared {
    args: Args,
    rules_dir: PathBuf,
    alertmanager: String,
    pagerduty: FakePagerDuty,
    root: bool,
}

impl Fleet {
    async fn start(s: &Shared, dir: &Path, fault: Fault) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (grpc, http) = (free_port(), free_port());
        let interval = humantime::format_duration(s.args.interval).to_string();
        let controller_args: Vec<String> = vec![
            "--rules-dir".into(),
            s.rules_dir.display().to_string(),
            "--remediation-interval".into(),
            "1s".into(),
            "--alertmanager-url".into(),
            s.alertmanager.clone(),
            "--clickhouse-node-url".into(),
            "http://127.0.0.1:{label:clickhouse_port}".into(),
            // What no rule handles pages once it has lasted this long: the default 5 min at a
            // 10 s interval is 30 samples, 30 s here.
            "--unhandled-anomaly-for".into(),
            "30s".into(),
        ];
        let a: Vec<&str> = controller_args.iter().map(String::as_str).collect();
        let controller = ControllerProc::start(&dir.join("controller"), grpc, http, &a).await?;
        let mut fleet = Fleet {
            dir: dir.to_path_buf(),
            controller: Some(controller),
            grpc,
            http,
            controller_args,
            nodes: Vec::new(),
            mounts: Vec::new(),
        };
        let mut starts = Vec::new();
        for name in NODES {
            let ndir = dir.join(name);
            std::fs::create_dir_all(ndir.join("data"))?;
            let mut cold = None;
            if fault == Fault::DiskFill && name == FAULTY {
                // ch-1's default disk is a small filesystem of its own; the cold disk is roomy.
                let c = ndir.join("cold");
                std::fs::create_dir_all(&c)?;
                cold = Some(c);
                if s.root {
                    // Both disks on filesystems of the gauntlet's own, so how full the machine's
                    // disk is changes nothing (tmpfs takes memory only for what is written).
                    let mount = |size: &str, at: &Path| {
                        std::process::Command::new("mount")
                            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "gauntlet", &at.display().to_string()])
                            .status()
                            .is_ok_and(|st| st.success())
                    };
                    if mount("192m", &ndir.join("data")) {
                        fleet.mounts.push(ndir.join("data"));
                        if mount("1g", &ndir.join("cold")) {
                            fleet.mounts.push(ndir.join("cold"));
                        }
                    }
                }
            }
            let port = free_port();
            let script = restart_script(&ndir, port, cold.as_deref())?;
            starts.push(tokio::process::Command::new("sh").arg(&script).arg("initial").status());
            fleet.nodes.push(Node {
                name: name.into(),
                dir: ndir,
                port,
                agent: None,
                proxy: Proxy::start(grpc).await?,
            });
        }
        for st in futures::future::join_all(starts).await {
            if !st?.success() {
                bail!("a ClickHouse engine did not start (see {}/*/server.out)", dir.display());
            }
        }
        for n in &mut fleet.nodes {
            wait_http_ok(&format!("{}/ping", n.url()), Duration::from_secs(30)).await?;
            // The engine creates system.query_log at its first flush; until then every agent round
            // logs an error (the agent reads query_log), which is start-up noise, not a fault.
            n.query("SYSTEM FLUSH LOGS").await?;
            let ch = n.url();
            let log = n.dir.join("clickhouse-server.log").display().to_string();
            let restart = format!("clickhouse-server=sh {}", n.dir.join("restart-clickhouse.sh").display());
            let port_label = format!("clickhouse_port={}", n.port);
            let agent = AgentProc::start(
                &format!("http://127.0.0.1:{}", n.proxy.port),
                &n.name,
                &n.dir.join("spool"),
                free_port(),
                &[
                    "--interval",
                    &interval,
                    "--clickhouse-url",
                    &ch,
                    // Half the interval: a server that hangs is reported down within the round
                    // that found it, so detection stays within two intervals.
                    "--clickhouse-timeout",
                    "500ms",
                    "--log-file",
                    &log,
                    "--label",
                    "role=clickhouse",
                    "--label",
                    &port_label,
                    "--service-restart",
                    &restart,
                ],
            )
            .await?;
            n.agent = Some(agent);
        }
        Ok(fleet)
    }

    fn controller(&self) -> Result<&ControllerProc> {
        self.controller.as_ref().context("the controller is not running")
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).expect("a node of the fleet")
    }

    async fn actions(&self) -> Result<Vec<Value>> {
        get_json(&self.controller()?.url("/api/v1/actions?limit=10000")).await
    }

    /// Waits until every node streams and reports a live ClickHouse.
    async fn healthy(&self) -> Result<()> {
        let c = self.controller()?;
        eventually(Duration::from_secs(60), || async {
            for n in NODES {
                let pts: Vec<Value> =
                    get_json(&c.url(&format!("/api/v1/series?node={n}&metric=clickhouse_up&limit=100000"))).await?;
                if pts.last().and_then(|p| p["value"].as_f64()) != Some(1.0) {
                    bail!("{n} does not report clickhouse_up 1 yet");
                }
            }
            Ok(Some(()))
        })
        .await
    }

    async fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            c.proc.kill9();
        }
    }

    async fn restart_controller(&mut self) -> Result<()> {
        let a: Vec<&str> = self.controller_args.iter().map(String::as_str).collect();
        self.controller = Some(ControllerProc::start(&self.dir.join("controller"), self.grpc, self.http, &a).await?);
        Ok(())
    }

    fn stop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
        if let Some(mut c) = self.controller.take() {
            let _ = c.proc.terminate();
        }
        for m in std::mem::take(&mut self.mounts) {
            // The server was killed; give the kernel a moment to drop its open files.
            for _ in 0..50 {
                let ok = std::process::Command::new("umount").arg(&m).status().is_ok_and(|s| s.success());
                if ok {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Observation

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What the controller has recorded since the injection, polled until the fault is settled.
struct Watch {
    t0_ms: i64,
    t0: Instant,
    fault: Fault,
    detected: Option<(f64, String)>,
    verified: Option<f64>,
}

impl Watch {
    fn new(fault: Fault) -> Self {
        Self { t0_ms: now_ms(), t0: Instant::now(), fault, detected: None, verified: None }
    }

    fn elapsed(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn on_faulty_node(&self, node: &str) -> bool {
        self.fault.host_wide() || node == FAULTY
    }

    /// Keeps the earliest evidence: `ts_ms` is when the controller recorded it.
    fn evidence(&mut self, ts_ms: i64, what: String) {
        if ts_ms < self.t0_ms {
            return;
        }
        let t = (ts_ms - self.t0_ms) as f64 / 1000.0;
        if self.detected.as_ref().is_none_or(|(d, _)| t < *d) {
            self.detected = Some((t, what));
        }
    }

    /// One look at the API; records the earliest detection and the first verification.
    async fn poll(&mut self, fleet: &Fleet) -> Result<()> {
        let Ok(c) = fleet.controller() else { return Ok(()) };
        if self.fault == Fault::Soak {
            return Ok(());
        }
        if let Ok(conds) = get_json::<Vec<Value>>(&c.url("/api/v1/conditions")).await {
            for k in &conds {
                let node = k["node"].as_str().unwrap_or("");
                if self.on_faulty_node(node) {
                    let what = format!(
                        "rule {} {} on {node}",
                        k["rule"].as_str().unwrap_or(""),
                        k["state"].as_str().unwrap_or("")
                    );
                    self.evidence(k["since_ms"].as_i64().unwrap_or(0), what);
                }
            }
        }
        if let Ok(anoms) = get_json::<Vec<Value>>(&c.url("/api/v1/anomalies?limit=1000")).await {
            for a in &anoms {
                let (node, metric) = (a["node"].as_str().unwrap_or(""), a["metric"].as_str().unwrap_or(""));
                if self.on_faulty_node(node) && self.fault.evidence_metrics().iter().any(|p| metric.starts_with(p)) {
                    self.evidence(a["at_ms"].as_i64().unwrap_or(0), format!("anomaly {metric} on {node}"));
                }
            }
        }
        if let Ok(fc) = get_json::<Vec<Value>>(&c.url("/api/v1/forecasts")).await {
            for f in &fc {
                let node = f["node"].as_str().unwrap_or("");
                let soon = f["pessimistic_seconds"].as_f64().or(f["exhaustion_seconds"].as_f64());
                if self.on_faulty_node(node) && soon.is_some_and(|s| s < 86_400.0) {
                    let what = format!("forecast {} on {node}", f["resource"].as_str().unwrap_or(""));
                    self.evidence(f["computed_at_ms"].as_i64().unwrap_or(0), what);
                }
            }
        }
        if let Ok(acts) = fleet.actions().await {
            for e in acts.iter().rev() {
                let node = e["node"].as_str().unwrap_or("");
                if self.on_faulty_node(node) {
                    let what =
                        format!("rule {} ({})", e["rule"].as_str().unwrap_or(""), e["outcome"].as_str().unwrap_or(""));
                    self.evidence(e["at_ms"].as_i64().unwrap_or(0), what);
                }
                if self.verified.is_none()
                    && e["at_ms"].as_i64().unwrap_or(0) >= self.t0_ms
                    && node == FAULTY
                    && e["outcome"] == "verified"
                    && self.fault.rules().contains(&e["rule"].as_str().unwrap_or(""))
                {
                    let at = e["at_ms"].as_i64().unwrap_or(0);
                    self.verified = Some((at - self.t0_ms) as f64 / 1000.0);
                }
            }
        }
        if self.fault == Fault::NetworkLoss
            && self.detected.is_none()
            && let Ok(nodes) = c.nodes().await
            && nodes.get(FAULTY).is_some_and(|n| n["connected"] == false)
        {
            self.detected = Some((self.elapsed(), "node seen disconnected".into()));
        }
        Ok(())
    }
}

/// Actions in the audit log that ran (one per action id): (when it started, node, "rule:action→last
/// outcome"). A dry run or a request for approval changes nothing: an approved one counts from its
/// start.
fn actions_taken(actions: &[Value]) -> Vec<(i64, String, String)> {
    let mut by_id: Vec<(String, i64, String, String, String)> = Vec::new();
    for e in actions.iter().rev() {
        let id = e["action_id"].as_str().unwrap_or("").to_string();
        let outcome = e["outcome"].as_str().unwrap_or("").to_string();
        if let Some(a) = by_id.iter_mut().find(|a| a.0 == id) {
            a.4 = outcome;
        } else if matches!(outcome.as_str(), "started" | "acted") {
            let what = format!("{}:{}", e["rule"].as_str().unwrap_or(""), e["action"].as_str().unwrap_or(""));
            let at = e["at_ms"].as_i64().unwrap_or(0);
            by_id.push((id, at, e["node"].as_str().unwrap_or("").to_string(), what, outcome));
        }
    }
    by_id.into_iter().map(|(_, at, node, what, last)| (at, node, format!("{what}→{last}"))).collect()
}

/// Distinct incidents Alertmanager delivered to PagerDuty among the events after `from`.
fn escalations_since(pd: &FakePagerDuty, from: usize) -> Vec<String> {
    let mut seen = std::collections::BTreeMap::new();
    for e in pd.events().iter().skip(from).filter(|e| e["event_action"] == "trigger") {
        let key = e["dedup_key"].as_str().unwrap_or("").to_string();
        // The summary is empty when the grouped alerts differ; the firing list names them all.
        let firing = e["payload"]["custom_details"]["firing"].as_str().unwrap_or("");
        let what = if firing.is_empty() { e["payload"]["summary"].as_str().unwrap_or("") } else { firing };
        seen.entry(key).or_insert_with(|| what.to_string());
    }
    seen.into_values().collect()
}

/// The alerts Alertmanager received since `since_ms`, as `alertname{node,metric|rule}`, distinct.
async fn alerts_since(alertmanager: &str, since_ms: i64) -> Vec<String> {
    let Ok(alerts) = get_json::<Vec<Value>>(&format!("{}/api/v2/alerts", alertmanager.trim_end_matches('/'))).await
    else {
        return Vec::new();
    };
    let mut out = std::collections::BTreeSet::new();
    for a in &alerts {
        let starts = a["startsAt"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
            .unwrap_or(0);
        if starts < since_ms {
            continue;
        }
        let l = &a["labels"];
        let what = l["metric"].as_str().or(l["rule"].as_str()).or(l["resource"].as_str()).unwrap_or("");
        out.insert(format!(
            "{}{{{},{what}}}",
            l["alertname"].as_str().unwrap_or("?"),
            l["node"].as_str().unwrap_or("")
        ));
    }
    out.into_iter().collect()
}

// ---------------------------------------------------------------------------------------------
// Faults

/// Runs one fault on a fresh fleet and measures it.
async fn run_fault(s: &Shared, base: &Path, fault: Fault) -> Result<Outcome> {
    let dir = base.join(fault.name());
    let mut fleet =
        Fleet::start(s, &dir, fault).await.with_context(|| format!("starting the fleet for {}", fault.name()))?;
    let mut out = Outcome {
        fault: fault.name().into(),
        covered: if fault.rules().is_empty() {
            if fault.self_healing() { "(by design)".into() } else { "-".into() }
        } else {
            fault.rules()[0].to_string()
        },
        ..Default::default()
    };
    fleet.healthy().await.context("the fleet never became healthy")?;
    if fault == Fault::DiskFill {
        prepare_disk_fill(&fleet, s, &mut out).await?;
    }
    if fault == Fault::TooManyParts {
        fleet
            .node(FAULTY)
            .query(
                "CREATE TABLE default.tiny (ts DateTime DEFAULT now(), x UInt64) ENGINE = MergeTree ORDER BY x
                 SETTINGS parts_to_delay_insert = 40, parts_to_throw_insert = 40",
            )
            .await?;
    }
    if fault == Fault::RetentionBudget {
        fleet
            .node(FAULTY)
            .query(
                "CREATE TABLE default.events (ts DateTime, payload String) ENGINE = MergeTree
                 PARTITION BY toYYYYMMDD(ts) ORDER BY ts TTL ts + INTERVAL 30 DAY",
            )
            .await?;
    }
    // The anomaly detector scores a series after 50 samples: faults that only it can see, and
    // the soak, start once it does.
    let warmup = if fault.rules().is_empty() && !fault.self_healing() {
        s.args.warmup.max(s.args.interval * 60)
    } else {
        s.args.warmup
    };
    tokio::time::sleep(warmup).await;
    // Pages counted from here: what the warm-up raised (the detector learning) is not the fault's.
    let pd_before = s.pagerduty.events().len();
    let healthy_since_ms = now_ms();
    let healthy_actions = fleet.actions().await?;
    if !healthy_actions.is_empty() {
        out.note.push_str(&format!("{} audit entries before the fault; ", healthy_actions.len()));
    }

    let mut w = Watch::new(fault);
    let budget = Duration::from_secs(if fault.rules().is_empty() && !fault.self_healing() { 60 } else { 90 });
    match fault {
        Fault::Crash => {
            let pid = fleet.node(FAULTY).pid().context("ch-1 has no server pid")?;
            // SAFETY: the server process this gauntlet started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            settle(&mut fleet, &mut w, budget, fault).await?;
            out.resolved = Some(w.verified.is_some() && fleet.node(FAULTY).ping().await);
        }
        Fault::Hang => {
            let pid = fleet.node(FAULTY).pid().context("ch-1 has no server pid")?;
            // SAFETY: the server process this gauntlet started.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            settle(&mut fleet, &mut w, budget, fault).await?;
            let new_pid = fleet.node(FAULTY).pid();
            out.resolved = Some(w.verified.is_some() && fleet.node(FAULTY).ping().await && new_pid != Some(pid));
        }
        Fault::ControllerCrash => controller_crash(&mut fleet, &mut w, &mut out, budget).await?,
        Fault::NetworkLoss => network_loss(&mut fleet, &mut w, &mut out, s.args.short).await?,
        Fault::DiskFill => {
            // The fault exists from the moment the disk is under 10 % free, not from the first insert.
            let (t0_ms, t0) = disk_fill(&fleet, &mut out).await?;
            w.t0_ms = t0_ms;
            w.t0 = t0;
            settle(&mut fleet, &mut w, budget, fault).await?;
            let ratio = disk_free_ratio(fleet.node(FAULTY)).await.unwrap_or(0.0);
            out.note.push_str(&format!("default disk {:.0} % free at the end; ", ratio * 100.0));
            out.resolved = Some(w.verified.is_some() && ratio >= 0.1);
        }
        Fault::TooManyParts => {
            let stop = Arc::new(AtomicBool::new(false));
            let first_rejected = Arc::new(std::sync::atomic::AtomicI64::new(0));
            fleet.node(FAULTY).query("SYSTEM STOP MERGES default.tiny").await?;
            let inserter = tiny_inserts(fleet.node(FAULTY).url(), stop.clone(), first_rejected.clone());
            // The fault shows once inserts are rejected (~4 s of single-row inserts); measured from there.
            let end = Instant::now() + Duration::from_secs(30);
            while first_rejected.load(Ordering::SeqCst) == 0 && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let at = first_rejected.load(Ordering::SeqCst);
            if at > 0 {
                w.t0 = Instant::now() - Duration::from_millis((now_ms() - at).max(0) as u64);
                w.t0_ms = at;
            }
            settle(&mut fleet, &mut w, budget, fault).await?;
            stop.store(true, Ordering::SeqCst);
            let (ok, rejected) = inserter.await.unwrap_or((0, 0));
            let parts = fleet
                .node(FAULTY)
                .query("SELECT count() FROM system.parts WHERE database = 'default' AND table = 'tiny' AND active")
                .await
                .unwrap_or_default();
            out.note
                .push_str(&format!("{ok} inserts ok, {rejected} rejected; {} active parts at the end; ", parts.trim()));
            out.resolved = Some(w.verified.is_some() && parts.trim().parse::<u64>().is_ok_and(|p| p < 40));
        }
        Fault::RetentionBudget => {
            // ~60 MB of new data in about 20 s into a table meant to stay small.
            let n = fleet.node(FAULTY);
            for _ in 0..20 {
                n.query(
                    "INSERT INTO default.events SELECT now() - toIntervalSecond(number % 86400), randomPrintableASCII(3000)
                     FROM numbers(20000)",
                )
                .await?;
                w.poll(&fleet).await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            settle(&mut fleet, &mut w, budget, fault).await?;
        }
        Fault::MemoryHog => {
            let avail = mem_available_bytes().unwrap_or(4 << 30);
            let take = (avail / 3).min(6 << 30);
            out.note.push_str(&format!("hog took {} MiB of {} MiB available; ", take >> 20, avail >> 20));
            let mut hog = spawn_memory_hog(take)?;
            let r = settle(&mut fleet, &mut w, budget, fault).await;
            let _ = hog.kill();
            let _ = hog.wait();
            r?;
        }
        Fault::ErrorLogStorm => {
            let log = fleet.node(FAULTY).dir.join("clickhouse-server.log");
            let stop = Arc::new(AtomicBool::new(false));
            let storm = error_storm(log, stop.clone());
            let r = settle(&mut fleet, &mut w, budget, fault).await;
            stop.store(true, Ordering::SeqCst);
            let lines = storm.await.unwrap_or(0);
            out.note.push_str(&format!("{lines} error lines written; "));
            r?;
        }
        Fault::Soak => {
            let d =
                s.args.soak.unwrap_or(if s.args.short { Duration::from_secs(30) } else { Duration::from_secs(120) });
            let end = Instant::now() + d;
            while Instant::now() < end {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            out.note.push_str(&format!("{} s healthy; ", d.as_secs()));
        }
    }
    if fault.rules().is_empty() && !fault.self_healing() {
        out.resolved = None;
    }
    if fault == Fault::Soak {
        w.detected = None;
    }
    out.detect_s = w.detected.as_ref().map(|d| d.0);
    out.detected_by = w.detected.map(|d| d.1).unwrap_or_default();
    out.remediate_s = w.verified;

    // A short look after the fault for late actions and pages (Alertmanager waits 1 s), then the record.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let actions = if fleet.controller.is_some() { fleet.actions().await? } else { Vec::new() };
    for (at_ms, node, a) in actions_taken(&actions) {
        // Before the injection the fleet was healthy: anything done then is a false action.
        let is_fault_action = fault != Fault::Soak
            && at_ms >= w.t0_ms
            && (node == FAULTY || fault.host_wide())
            && a.split(':').next().is_some_and(|r| fault.rules().contains(&r) || fault.rules().is_empty());
        if is_fault_action {
            out.actions.push(format!("{node} {a}"));
        } else {
            out.false_actions.push(format!("{node} {a}"));
        }
    }
    if let Ok(c) = fleet.controller()
        && let Ok(m) = scrape(&c.url("/metrics")).await
    {
        let skipped = m.get("medic_detect_batches_skipped_total").copied().unwrap_or(0.0);
        if skipped > 0.0 {
            out.note.push_str(&format!("detection skipped {skipped} batches (behind); "));
        }
    }
    let pages = escalations_since(&s.pagerduty, pd_before);
    out.escalations = pages.len();
    if !pages.is_empty() {
        let shown = pages.iter().take(4).cloned().collect::<Vec<_>>().join(" / ");
        out.note.push_str(&format!("pages: {shown}; "));
    }
    let alerts = alerts_since(&s.alertmanager, w.t0_ms.min(healthy_since_ms)).await;
    if !alerts.is_empty() {
        let shown = alerts.iter().take(6).cloned().collect::<Vec<_>>().join(", ");
        let more = if alerts.len() > 6 { format!(" and {} more", alerts.len() - 6) } else { String::new() };
        out.note.push_str(&format!("{} alerts: {shown}{more}; ", alerts.len()));
    }
    fleet.stop();
    Ok(out)
}

/// Polls until the fault is remediated (verified) or the budget is spent, and the fleet is
/// back to health where the fault allows it.
async fn settle(fleet: &mut Fleet, w: &mut Watch, budget: Duration, fault: Fault) -> Result<()> {
    let end = Instant::now() + budget;
    while Instant::now() < end {
        w.poll(fleet).await?;
        let covered = !fault.rules().is_empty();
        if covered && w.verified.is_some() {
            break;
        }
        if !covered && w.detected.as_ref().is_some_and(|(d, _)| w.elapsed() > d + 40.0) {
            // Uncovered: long enough after detection for an unhandled anomaly to page.
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

async fn controller_crash(fleet: &mut Fleet, w: &mut Watch, out: &mut Outcome, budget: Duration) -> Result<()> {
    let node = fleet.node(FAULTY);
    let pid = node.pid().context("ch-1 has no server pid")?;
    let before = node.restarts();
    // SAFETY: the server process this gauntlet started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // Wait for the agent to begin the restart the controller ordered, then kill the controller.
    let end = Instant::now() + budget;
    let mut killed_at = None;
    while Instant::now() < end {
        w.poll(fleet).await?;
        if fleet.node(FAULTY).restarts() > before {
            fleet.kill_controller().await;
            killed_at = Some(w.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Some(killed_at) = killed_at else {
        out.note.push_str("the controller never started a restart; ");
        out.resolved = Some(false);
        return Ok(());
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.restart_controller().await?;
    out.note.push_str(&format!("controller killed at {killed_at:.1} s mid-restart and restarted on its data dir; "));
    let left = budget.saturating_sub(w.t0.elapsed());
    settle(fleet, w, left, Fault::ControllerCrash).await?;
    // Long enough after verification for a duplicate to show.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restarts = fleet.node(FAULTY).restarts() - before;
    let actions = fleet.actions().await?;
    // Decisions the guards held back ("skipped": in progress) are not actions.
    let ran = |e: &&Value| e["rule"] == "clickhouse-down" && e["node"] == FAULTY && e["outcome"] != "skipped";
    let ids: std::collections::BTreeSet<&str> =
        actions.iter().filter(ran).filter_map(|e| e["action_id"].as_str()).collect();
    let outcomes: Vec<String> =
        actions.iter().rev().filter(ran).map(|e| e["outcome"].as_str().unwrap_or("").to_string()).collect();
    out.note.push_str(&format!(
        "restart ran {restarts}×; clickhouse-down actions recorded {} ({}); ",
        ids.len(),
        outcomes.join("→")
    ));
    let lost = w.verified.is_none();
    out.resolved = Some(!lost && restarts == 1 && ids.len() == 1 && fleet.node(FAULTY).ping().await);
    Ok(())
}

async fn network_loss(fleet: &mut Fleet, w: &mut Watch, out: &mut Outcome, short: bool) -> Result<()> {
    let cut_for = Duration::from_secs(if short { 10 } else { 30 });
    let node = fleet.node(FAULTY);
    node.proxy.cut();
    let end = Instant::now() + cut_for;
    while Instant::now() < end {
        w.poll(fleet).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fleet.node(FAULTY).proxy.restore();
    // Healed when the agent's backlog is stored with no gap.
    let c = fleet.controller()?;
    let agent = fleet.node(FAULTY).agent.as_ref().context("ch-1's agent")?;
    let r = drained(agent, c).await;
    let healed_at = w.elapsed();
    let nodes = c.nodes().await?;
    let gaps = nodes.get(FAULTY).and_then(|n| n["seq_gaps"].as_u64()).unwrap_or(u64::MAX);
    let connected = nodes.get(FAULTY).is_some_and(|n| n["connected"] == true);
    out.note.push_str(&format!("cut {} s; backlog stored, seq_gaps={gaps}; ", cut_for.as_secs()));
    let ok = r.is_ok() && gaps == 0 && connected;
    out.resolved = Some(ok);
    if ok {
        w.verified = Some(healed_at);
    }
    Ok(())
}

async fn disk_free_ratio(n: &Node) -> Result<f64> {
    let r = n.query("SELECT free_space / total_space FROM system.disks WHERE name = 'default'").await?;
    Ok(r.trim().parse()?)
}

async fn prepare_disk_fill(fleet: &Fleet, s: &Shared, out: &mut Outcome) -> Result<()> {
    if !fleet.mounts.is_empty() {
        out.note.push_str("ch-1's default disk is a 192 MiB tmpfs, its cold disk a 1 GiB one; ");
    } else {
        out.note.push_str(if s.root {
            "mounting a tmpfs failed: ch-1's default disk is the machine's filesystem, which this fault cannot fill honestly; "
        } else {
            "not root: no filesystem of its own for ch-1's disk, which this fault cannot fill honestly; "
        });
    }
    fleet
        .node(FAULTY)
        .query(
            "CREATE TABLE default.history (ts DateTime, payload String) ENGINE = MergeTree
             PARTITION BY toYYYYMMDD(ts) ORDER BY ts SETTINGS storage_policy = 'tiered'",
        )
        .await?;
    Ok(())
}

/// Loads old days of incompressible data until the default disk is under 5 % free; returns when
/// it went under 10 %.
async fn disk_fill(fleet: &Fleet, out: &mut Outcome) -> Result<(i64, Instant)> {
    let n = fleet.node(FAULTY);
    if fleet.mounts.is_empty() {
        bail!("disk-fill needs a filesystem of its own (see the note)");
    }
    let mut day = 0;
    let mut crossed = None;
    loop {
        let ratio = disk_free_ratio(n).await?;
        if ratio < 0.1 && crossed.is_none() {
            crossed = Some((now_ms(), Instant::now()));
        }
        if ratio < 0.05 || day >= 60 {
            break;
        }
        let r = n
            .query(&format!(
                "INSERT INTO default.history SELECT toDateTime('2026-09-01 00:00:00') + toIntervalDay({day}) + toIntervalSecond(number),
                 randomString(1000) FROM numbers(8000)"
            ))
            .await;
        if let Err(e) = r {
            out.note
                .push_str(&format!("an insert failed while filling: {}; ", e.to_string().lines().next().unwrap_or("")));
            break;
        }
        day += 1;
    }
    out.note.push_str(&format!("{day} daily partitions loaded; "));
    Ok(crossed.unwrap_or((now_ms(), Instant::now())))
}

/// A client that inserts one row at a time, as fast as the server takes it.
fn tiny_inserts(
    url: String,
    stop: Arc<AtomicBool>,
    first_rejected: Arc<std::sync::atomic::AtomicI64>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let (mut ok, mut rejected) = (0, 0);
        while !stop.load(Ordering::SeqCst) {
            let r = client().post(&url).body("INSERT INTO default.tiny (x) VALUES (1)").send().await;
            match r {
                Ok(r) if r.status().is_success() => ok += 1,
                _ => {
                    rejected += 1;
                    let _ = first_rejected.compare_exchange(0, now_ms(), Ordering::SeqCst, Ordering::SeqCst);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (ok, rejected)
    })
}

fn error_storm(log: PathBuf, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::task::spawn_blocking(move || {
        let mut n = 0u64;
        let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&log) else { return 0 };
        while !stop.load(Ordering::SeqCst) {
            let t = chrono::Local::now().format("%Y.%m.%d %H:%M:%S%.6f");
            for i in 0..200 {
                let _ = writeln!(
                    f,
                    "{t} [ 42 ] {{}} <Error> TCPHandler: Code: 210. DB::Exception: Connection reset by peer, while reading from socket (peer {i}). (NETWORK_ERROR) (version 26.9.2.1)"
                );
                n += 1;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        n
    })
}

fn mem_available_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = s.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A separate process that allocates and touches `bytes` and holds them.
fn spawn_memory_hog(bytes: u64) -> Result<std::process::Child> {
    let py = "import sys, time\nb = bytearray(int(sys.argv[1]))\nfor i in range(0, len(b), 4096): b[i] = 1\nwhile True: time.sleep(1)\n";
    std::process::Command::new("python3")
        .arg("-c")
        .arg(py)
        .arg(bytes.to_string())
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("starting the memory hog (python3)")
}

// ---------------------------------------------------------------------------------------------
// Report

fn p50(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

fn secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.1}")).unwrap_or_else(|| "-".into())
}

fn report(outcomes: &[Outcome], interval: Duration) -> (String, bool) {
    let mut t = String::new();
    let head = format!(
        "{:<17} {:<28} {:>8} {:>11} {:>9} {:>6} {:>4}  {}",
        "fault", "covered by", "detect_s", "remediate_s", "resolved", "false", "esc", "actions / evidence / notes"
    );
    t.push_str(&head);
    t.push('\n');
    t.push_str(&"-".repeat(head.len() + 20));
    t.push('\n');
    for o in outcomes {
        let resolved = match o.resolved {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "n/a",
        };
        let mut detail = Vec::new();
        if !o.actions.is_empty() {
            detail.push(format!("actions: {}", o.actions.join(", ")));
        }
        if !o.false_actions.is_empty() {
            detail.push(format!("FALSE: {}", o.false_actions.join(", ")));
        }
        if !o.detected_by.is_empty() {
            detail.push(format!("detected by {}", o.detected_by));
        }
        if !o.note.is_empty() {
            detail.push(o.note.trim_end_matches("; ").to_string());
        }
        t.push_str(&format!(
            "{:<17} {:<28} {:>8} {:>11} {:>9} {:>6} {:>4}  {}\n",
            o.fault,
            o.covered,
            secs(o.detect_s),
            secs(o.remediate_s),
            resolved,
            o.false_actions.len(),
            o.escalations,
            detail.join(" | ")
        ));
    }
    let expected: Vec<&Outcome> = outcomes.iter().filter(|o| o.resolved.is_some()).collect();
    let k = expected.iter().filter(|o| o.resolved == Some(true)).count();
    let f: usize = outcomes.iter().map(|o| o.false_actions.len()).sum();
    let soak_pages: usize = outcomes.iter().filter(|o| o.fault == "soak").map(|o| o.escalations).sum();
    let mttd = p50(outcomes.iter().filter_map(|o| o.detect_s).collect());
    let mttr = p50(outcomes.iter().filter(|o| o.resolved == Some(true)).filter_map(|o| o.remediate_s).collect());
    let iv = interval.as_secs_f64();
    let slow_detect: Vec<&str> =
        outcomes.iter().filter(|o| o.detect_s.is_some_and(|d| d > 2.0 * iv)).map(|o| o.fault.as_str()).collect();
    let slow_fix: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.resolved == Some(true) && o.remediate_s.is_some_and(|r| r > 60.0))
        .map(|o| o.fault.as_str())
        .collect();
    let undetected: Vec<&str> =
        outcomes.iter().filter(|o| o.fault != "soak" && o.detect_s.is_none()).map(|o| o.fault.as_str()).collect();
    t.push('\n');
    t.push_str(&format!(
        "targets: covered faults resolved {k}/{} {}; false actions {f} {}; pages during the soak {soak_pages}; detection within 2 intervals ({:.0} s): {}; remediation within 60 s: {}\n",
        expected.len(),
        if k == expected.len() { "ok" } else { "MISSED" },
        if f == 0 { "ok" } else { "MISSED" },
        2.0 * iv,
        if slow_detect.is_empty() && undetected.is_empty() {
            "ok".to_string()
        } else {
            format!("missed by {}", [slow_detect.clone(), undetected.clone()].concat().join(", "))
        },
        if slow_fix.is_empty() { "ok".to_string() } else { format!("missed by {}", slow_fix.join(", ")) },
    ));
    t.push_str(&format!(
        "gauntlet resolved={k}/{} false_actions={f} mttd_p50={}s mttr_p50={}s\n",
        expected.len(),
        secs(mttd),
        secs(mttr)
    ));
    (t, k == expected.len() && f == 0)
}

// ---------------------------------------------------------------------------------------------

fn main() -> Result<()> {
    let args = Args::parse();
    // The controller and agentd built with this binary sit beside it.
    if std::env::var_os("MEDIC_BIN_DIR").is_none()
        && let Some(dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf))
    {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("MEDIC_BIN_DIR", dir) };
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(async {
        // Interrupted: the fleet is dropped, which stops every process it started and unmounts.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            _ = term.recv() => bail!("terminated"),
        }
    })
}

async fn run(args: Args) -> Result<()> {
    if args.list {
        for f in Fault::ALL {
            println!("{:<17} {}", f.name(), f.what());
        }
        return Ok(());
    }
    let faults: Vec<Fault> = if !args.faults.is_empty() {
        args.faults
            .iter()
            .map(|n| {
                Fault::ALL.into_iter().find(|f| f.name() == n).with_context(|| format!("no fault {n:?} (see --list)"))
            })
            .collect::<Result<_>>()?
    } else if args.short {
        Fault::SHORT.to_vec()
    } else {
        Fault::ALL.to_vec()
    };
    let rules_dir = args
        .rules_dir
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules"))
        .canonicalize()
        .context("the rules directory")?;
    let tmp = tempfile::tempdir()?;
    let base = args.work_dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&base)?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;

    let pagerduty = FakePagerDuty::start().await?;
    let am = AlertmanagerProc::start(&base.join("alertmanager"), &alertmanager_for_tests(&pagerduty.url(), PD_KEY)?)
        .await
        .context("Alertmanager (tests/gauntlet/run installs it)")?;
    let shared = Shared { alertmanager: am.url(""), args, rules_dir, pagerduty, root };
    println!(
        "gauntlet: {} faults, shipped rules from {}, agents every {}, {}",
        faults.len(),
        shared.rules_dir.display(),
        humantime::format_duration(shared.args.interval),
        if root { "root (tmpfs mounts possible)" } else { "not root (no mounts)" }
    );
    let mut outcomes = Vec::new();
    for f in faults {
        let t = Instant::now();
        print!("{:<17} {} … ", f.name(), f.what());
        let _ = std::io::stdout().flush();
        let o = match run_fault(&shared, &base, f).await {
            Ok(o) => o,
            Err(e) => Outcome {
                fault: f.name().into(),
                covered: f.rules().first().copied().unwrap_or("-").into(),
                resolved: (!f.rules().is_empty() || f.self_healing()).then_some(false),
                note: format!("gauntlet error: {e:#}"),
                ..Default::default()
            },
        };
        println!("{:.0} s", t.elapsed().as_secs_f64());
        outcomes.push(o);
    }
    let (text, ok) = report(&outcomes, shared.args.interval);
    println!();
    print!("{text}");
    drop(am);
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
