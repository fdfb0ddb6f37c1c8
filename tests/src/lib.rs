//! Helpers shared by the end-to-end tests and benchmarks: free ports, the real `agentd` and
//! `controller` binaries started as processes on loopback, and their HTTP APIs.
//!
//! The binaries are taken from the workspace's target directory (`cargo build --workspace
//! --bins` first; `.ci/run` does). Set `MEDIC_BIN_DIR` to use others.

use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("MEDIC_BIN_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    target.join(profile)
}

pub fn bin(name: &str) -> Result<PathBuf> {
    let p = bin_dir().join(name);
    if !p.exists() {
        bail!("{} not found: run `cargo build --workspace --bins` first (or set MEDIC_BIN_DIR)", p.display());
    }
    Ok(p)
}

/// A port that was free a moment ago. Tests run in parallel, so each asks for its own.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the loopback interface must allow binding an ephemeral port")
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A child process that is killed when dropped, so a failing test leaves nothing running.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        Ok(Self { child, name: name.to_string() })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL: the process gets no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> Result<()> {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("{} exited with {status}", self.name);
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        bail!("{} did not stop within 10 s of SIGTERM", self.name)
    }

    pub fn stop_signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.pid(), sig) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

pub struct ControllerProc {
    pub proc: Proc,
    pub grpc: u16,
    pub http: u16,
    pub data_dir: PathBuf,
}

impl ControllerProc {
    pub async fn start(data_dir: &Path, grpc: u16, http: u16, extra: &[&str]) -> Result<Self> {
        Self::start_with_env(data_dir, grpc, http, extra, &[]).await
    }

    /// With extra environment variables (POD_NAME, KUBECONFIG…).
    pub async fn start_with_env(
        data_dir: &Path,
        grpc: u16,
        http: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::spawn(data_dir, grpc, http, extra, env, "/healthz").await
    }

    async fn spawn(
        data_dir: &Path,
        grpc: u16,
        http: u16,
        extra: &[&str],
        env: &[(&str, &str)],
        ready_path: &str,
    ) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let mut cmd = Command::new(bin("controller")?);
        cmd.arg("--grpc-listen")
            .arg(addr(grpc).to_string())
            .arg("--http-listen")
            .arg(addr(http).to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied());
        let proc = Proc::spawn("controller", &mut cmd, &data_dir.join("controller.out"))?;
        let c = Self { proc, grpc, http, data_dir: data_dir.to_path_buf() };
        wait_http_ok(&c.url(ready_path), Duration::from_secs(20)).await?;
        Ok(c)
    }

    /// Started and serving HTTP, healthy or not (e.g. while its store is not up yet).
    pub async fn start_unhealthy(data_dir: &Path, grpc: u16, http: u16, extra: &[&str]) -> Result<Self> {
        Self::spawn(data_dir, grpc, http, extra, &[], "/metrics").await
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.http, path)
    }

    pub async fn nodes(&self) -> Result<HashMap<String, serde_json::Value>> {
        let v: Vec<serde_json::Value> = get_json(&self.url("/api/v1/nodes")).await?;
        Ok(v.into_iter().filter_map(|n| Some((n["node"].as_str()?.to_string(), n))).collect())
    }
}

pub struct AgentProc {
    pub proc: Proc,
    pub http: u16,
    pub node: String,
    pub spool_dir: PathBuf,
}

impl AgentProc {
    pub async fn start(controller: &str, node: &str, spool_dir: &Path, http: u16, extra: &[&str]) -> Result<Self> {
        std::fs::create_dir_all(spool_dir)?;
        let mut cmd = Command::new(bin("agentd")?);
        cmd.arg("--controller")
            .arg(controller)
            .arg("--node")
            .arg(node)
            .arg("--spool-dir")
            .arg(spool_dir)
            .arg("--http-listen")
            .arg(addr(http).to_string())
            .args(extra)
            .env("RUST_LOG", "info");
        let log = spool_dir.parent().unwrap_or(spool_dir).join(format!("{node}.out"));
        let proc = Proc::spawn(&format!("agentd {node}"), &mut cmd, &log)?;
        let a = Self { proc, http, node: node.to_string(), spool_dir: spool_dir.to_path_buf() };
        wait_http_ok(&a.url("/healthz"), Duration::from_secs(20)).await?;
        Ok(a)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.http, path)
    }

    /// The agent's /metrics as name{labels} → value.
    pub async fn metrics(&self) -> Result<HashMap<String, f64>> {
        scrape(&self.url("/metrics")).await
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("building an HTTP client")
}

pub async fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> Result<T> {
    let resp = client().get(url).send().await.with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp.text().await?;
    if !status.is_success() {
        bail!("GET {url}: {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {url}: not the JSON expected: {body}"))
}

pub async fn wait_http_ok(url: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = client().get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} did not answer 200 within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Parses Prometheus/OpenMetrics text into `name{labels}` → value.
pub async fn scrape(url: &str) -> Result<HashMap<String, f64>> {
    let text = client().get(url).send().await?.error_for_status()?.text().await?;
    Ok(parse_exposition(&text))
}

pub fn parse_exposition(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Polls `check` until it returns Ok(Some(v)), or fails with the last reason after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("condition never checked");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("condition not met within {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the agent has nothing unacked and the controller's last stored seq equals the
/// agent's last assigned seq, read on both sides of the controller read so it is consistent.
pub async fn drained(agent: &AgentProc, controller: &ControllerProc) -> Result<serde_json::Value> {
    eventually(Duration::from_secs(30), || async {
        let before = agent.metrics().await?;
        let nodes = controller.nodes().await?;
        let after = agent.metrics().await?;
        let last = before.get("medic_agent_spool_last_seq").copied().unwrap_or(-1.0);
        let acked = after.get("medic_agent_spool_acked_seq").copied().unwrap_or(-2.0);
        let last_after = after.get("medic_agent_spool_last_seq").copied().unwrap_or(-3.0);
        let Some(node) = nodes.get(&agent.node) else { bail!("controller does not know {}", agent.node) };
        let stored = node["last_seq"].as_f64().unwrap_or(-4.0);
        if last == last_after && last == acked && last == stored {
            Ok(Some(node.clone()))
        } else {
            bail!(
                "{}: agent last={last} acked={acked} (then last={last_after}), controller last_seq={stored}",
                agent.node
            )
        }
    })
    .await
}

/// The real ClickHouse 26.9 engine (PyPI chdb-core) behind its HTTP interface
/// (`tests/clickhouse/server.py`), started on a free port over a data directory that survives
/// restarts. `tests/clickhouse/install` (run by `tests/run`) provides the Python that has it;
/// `MEDIC_CHDB_PYTHON` overrides the interpreter.
pub struct ClickHouseProc {
    pub proc: Proc,
    pub port: u16,
    pub data_dir: PathBuf,
}

pub fn chdb_python() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("MEDIC_CHDB_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let venv = std::env::var("MEDIC_CHDB_VENV").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/medic/chdb-venv")
    });
    let py = venv.join("bin/python");
    if !py.exists() {
        bail!(
            "{} not found: run tests/clickhouse/install (tests/run does) to install the ClickHouse engine",
            py.display()
        );
    }
    Ok(py)
}

impl ClickHouseProc {
    pub async fn start(data_dir: &Path) -> Result<Self> {
        Self::start_on(data_dir, 0).await
    }

    /// With a second disk "cold" and a storage policy "tiered" over both, the default disk
    /// looking nearly full (for partition-move tests); also a disk "warm" with half of cold's room
    /// and a policy "three_tier" of volumes v_hot (default), v_warm (warm), v_cold (cold).
    pub async fn start_tiered(data_dir: &Path) -> Result<Self> {
        Self::start_with(data_dir, 0, &["--tiered-disks"]).await
    }

    /// With ClickHouse's in-memory test Keeper: replicated tables can be created and are listed
    /// in system.replicas, read-only (the embedded engine cannot replicate).
    pub async fn start_with_test_keeper(data_dir: &Path) -> Result<Self> {
        Self::start_with(data_dir, 0, &["--test-keeper"]).await
    }

    /// Starts on `port` (0 = any free one); restarting on the same port and dir resumes the data.
    pub async fn start_on(data_dir: &Path, port: u16) -> Result<Self> {
        Self::start_with(data_dir, port, &[]).await
    }

    async fn start_with(data_dir: &Path, port: u16, extra: &[&str]) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let ready = data_dir.join(format!("ready-{}", std::process::id()));
        let _ = std::fs::remove_file(&ready);
        let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("clickhouse/server.py");
        let mut cmd = Command::new(chdb_python()?);
        cmd.arg(server)
            .arg("--port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--ready-file")
            .arg(&ready)
            .args(extra);
        let proc = Proc::spawn("clickhouse", &mut cmd, &data_dir.join("server.out"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&ready).ok().and_then(|s| s.trim().parse::<u16>().ok()) {
                break p;
            }
            if Instant::now() > deadline {
                let out = std::fs::read_to_string(data_dir.join("server.out")).unwrap_or_default();
                bail!("the ClickHouse test server did not start within 60 s:\n{out}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let c = Self { proc, port, data_dir: data_dir.to_path_buf() };
        wait_http_ok(&c.url(), Duration::from_secs(30)).await?;
        Ok(c)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Freezes the server (SIGSTOP): it keeps its port, connections are accepted by the kernel,
    /// and nothing answers — a hung ClickHouse.
    pub fn pause(&self) {
        self.proc.stop_signal(libc::SIGSTOP);
    }

    /// Thaws a paused server (SIGCONT): it goes on with whatever was sent to it meanwhile.
    pub fn resume(&self) {
        self.proc.stop_signal(libc::SIGCONT);
    }

    pub fn client(&self) -> clickhouse::Client {
        clickhouse::Client::default().with_url(self.url())
    }

    /// Runs a statement and returns its TabSeparated output.
    pub async fn query(&self, sql: &str) -> Result<String> {
        let resp = client().post(self.url()).body(sql.to_string()).send().await?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!("ClickHouse: {sql}: {body}");
        }
        Ok(body)
    }
}
pub mod bench;
pub mod kube_api;

/// Debian's Prometheus, on a free loopback port, with the given config and rule files.
/// A Prometheus config scraping one agent (`job="medic-agent"`) and one controller
/// (`job="medic-controller"`) every second, as the shipped rules and dashboards expect.
pub fn fleet_scrape_config(agent_http: u16, controller_http: u16) -> String {
    format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: medic-agent\n    static_configs:\n      - targets: ['127.0.0.1:{agent_http}']\n  \
         - job_name: medic-controller\n    static_configs:\n      - targets: ['127.0.0.1:{controller_http}']\n"
    )
}

pub struct PrometheusProc {
    pub proc: Proc,
    pub port: u16,
}

impl PrometheusProc {
    pub async fn start(dir: &Path, config_yaml: &str) -> Result<Self> {
        std::fs::create_dir_all(dir.join("tsdb"))?;
        std::fs::write(dir.join("prometheus.yml"), config_yaml)?;
        let port = free_port();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--rules.alert.resend-delay=1s")
            .arg("--web.enable-remote-write-receiver");
        let proc = Proc::spawn("prometheus", &mut cmd, &dir.join("prometheus.out"))
            .context("starting prometheus (tests/run installs Debian's prometheus)")?;
        let p = Self { proc, port };
        wait_http_ok(&p.url("/-/ready"), Duration::from_secs(30)).await?;
        Ok(p)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Runs an instant PromQL query and returns the result vector.
    pub async fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>> {
        let resp = client().get(self.url("/api/v1/query")).query(&[("query", promql)]).send().await?;
        let v: serde_json::Value = resp.json().await?;
        if v["status"] != "success" {
            bail!("query {promql}: {v}");
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

/// Debian's Alertmanager on a free loopback port (cluster mode off).
pub struct AlertmanagerProc {
    pub proc: Proc,
    pub port: u16,
}

impl AlertmanagerProc {
    pub async fn start(dir: &Path, config_yaml: &str) -> Result<Self> {
        std::fs::create_dir_all(dir.join("data"))?;
        std::fs::write(dir.join("alertmanager.yml"), config_yaml)?;
        let port = free_port();
        let mut cmd = Command::new("prometheus-alertmanager");
        cmd.arg(format!("--config.file={}", dir.join("alertmanager.yml").display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=");
        let proc = Proc::spawn("alertmanager", &mut cmd, &dir.join("alertmanager.out"))
            .context("starting prometheus-alertmanager (tests/run installs it)")?;
        let a = Self { proc, port };
        wait_http_ok(&a.url("/-/ready"), Duration::from_secs(30)).await?;
        Ok(a)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }
}

/// A local stand-in for PagerDuty's Events API v2: records every event posted to /v2/enqueue.
pub struct FakePagerDuty {
    pub port: u16,
    pub events: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakePagerDuty {
    pub async fn start() -> Result<Self> {
        use axum::{Json, Router, extract::State, routing::post};
        type Events = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;
        async fn enqueue(
            State(events): State<Events>,
            Json(v): Json<serde_json::Value>,
        ) -> (axum::http::StatusCode, Json<serde_json::Value>) {
            let key = v["dedup_key"].clone();
            events.lock().unwrap_or_else(|p| p.into_inner()).push(v);
            (
                axum::http::StatusCode::ACCEPTED,
                Json(serde_json::json!({"status": "success", "message": "Event processed", "dedup_key": key})),
            )
        }
        let events: Events = Default::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let app = Router::new().route("/v2/enqueue", post(enqueue)).with_state(events.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { port, events, task })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v2/enqueue", self.port)
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for FakePagerDuty {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The shipped rule files, with every `for:` shortened so a test need not wait minutes. The
/// expressions, labels and annotations are exactly the shipped ones.
pub fn rules_for_tests(out_dir: &Path, for_: &str) -> Result<Vec<PathBuf>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let mut out = Vec::new();
    for name in ["medic-rules.yaml", "clickhouse-rules.yaml"] {
        let text = std::fs::read_to_string(src.join(name))?;
        let shortened: String = text
            .lines()
            .map(|l| match l.trim_start().strip_prefix("for: ") {
                Some(_) => format!("{}for: {for_}", &l[..l.len() - l.trim_start().len()]),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let p = out_dir.join(name);
        std::fs::write(&p, shortened)?;
        out.push(p);
    }
    Ok(out)
}

/// The shipped Alertmanager config, pointed at a local PagerDuty and with test-speed timings.
pub fn alertmanager_for_tests(pagerduty_url: &str, routing_key: &str) -> Result<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/alertmanager/alertmanager.yaml");
    let text = std::fs::read_to_string(src)?;
    Ok(text
        .replace("PAGERDUTY_ROUTING_KEY", routing_key)
        .replace("https://events.pagerduty.com/v2/enqueue", pagerduty_url)
        .replace("group_wait: 30s", "group_wait: 1s")
        .replace("group_interval: 5m", "group_interval: 1s")
        .replace("resolve_timeout: 5m", "resolve_timeout: 10s"))
}

/// `(metric, labels, timestamp_ms, value)` of one gauge sample.
pub type GaugeSample<'a> = (&'a str, &'a [(&'a str, &'a str)], i64, f64);

/// A scripted agent over the real gRPC protocol: it says hello and sends the batches a test
/// writes, so a test can feed the controller series with a known shape (history included, with
/// past timestamps) that no real host would produce on cue.
pub struct SyntheticAgent {
    tx: tokio::sync::mpsc::Sender<medic_proto::v1::AgentMessage>,
    seq: u64,
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    _inbound: tokio::task::JoinHandle<()>,
}

impl SyntheticAgent {
    pub async fn connect(controller: &str, node: &str, labels: &[(&str, &str)]) -> Result<Self> {
        use medic_proto::v1::{AgentMessage, Hello, Label, agent_message, telemetry_client::TelemetryClient};
        let mut client = TelemetryClient::connect(controller.to_string()).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<AgentMessage>(64);
        let hello = Hello {
            node: node.into(),
            labels: labels.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
            agent_version: "synthetic".into(),
            protocol_version: medic_proto::PROTOCOL_VERSION,
            capabilities: vec![],
            // A fresh spool each time: sequence numbers start at 1.
            spool_id: format!("synthetic-{}-{}", std::process::id(), free_port()),
        };
        tx.send(AgentMessage { msg: Some(agent_message::Msg::Hello(hello)) }).await?;
        let mut inbound = client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let a = acked.clone();
        let task = tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(medic_proto::v1::controller_message::Msg::Ack(ack)) = m.msg {
                    a.store(ack.seq, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        Ok(Self { tx, seq: 0, acked, _inbound: task })
    }

    /// Sends one batch of gauges `(metric, labels, timestamp_ms, value)` and waits until the
    /// controller acked it (stored, so detection has seen it).
    pub async fn send(&mut self, samples: &[GaugeSample<'_>]) -> Result<()> {
        use medic_proto::v1::{AgentMessage, Batch, Label, Sample, agent_message};
        self.seq += 1;
        let batch = Batch {
            seq: self.seq,
            created_unix_ms: chrono::Utc::now().timestamp_millis(),
            samples: samples
                .iter()
                .map(|(m, l, ts, v)| Sample {
                    metric: m.to_string(),
                    labels: l.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
                    timestamp_ms: *ts,
                    value: *v,
                    kind: 1,
                })
                .collect(),
            logs: vec![],
            series: vec![],
        };
        self.tx.send(AgentMessage { msg: Some(agent_message::Msg::Batch(batch)) }).await?;
        let seq = self.seq;
        let acked = self.acked.clone();
        eventually(Duration::from_secs(20), || {
            let acked = acked.clone();
            async move { Ok((acked.load(std::sync::atomic::Ordering::Relaxed) >= seq).then_some(())) }
        })
        .await
        .with_context(|| format!("the controller did not ack batch {seq}"))
    }
}
