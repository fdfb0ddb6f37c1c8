//! Ingest throughput and ack latency of a real controller under a simulated fleet, and the same
//! load sent to a real Prometheus through remote write, for scale.
//!
//! Phase 1 (Medic): a release controller on a fresh data dir; `--agents` simulated agents in this
//! process, each with its own HTTP/2 connection and stream, node name and spool_id, keep up to
//! `--window` unacked batches of `--batch-samples` node_exporter-like samples in flight.
//! Phase 2 (Prometheus): the controller is stopped first (2 cores), then the same series, batch
//! size and number of senders (each with its own keep-alive connection, one request at a time,
//! as Prometheus's own remote-write shards do) go to `POST /api/v1/write`.
//!
//! Both phases run `--warmup` then measure for `--duration`. Run via `tests/bench/run`.

mod medic;
mod remote_write;
mod series;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::Parser;
use medic_proto::v1::controller_message::Msg;
use medic_proto::v1::{AgentMessage, Hello, agent_message};
use medic_tests::bench::{bounded, cpu_seconds, loadavg, percentile, report, self_cpu_seconds, stop, sum_metric, tail};
use medic_tests::{ControllerProc, Proc, free_port, scrape, wait_http_ok};
use prost::Message;
use series::{Generator, SeriesDef};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::sleep_until;
use tonic::codegen::http::uri::PathAndQuery;

#[derive(Parser, Debug, Clone)]
#[command(about = "Medic controller ingest benchmark, with Prometheus remote write as reference")]
struct Args {
    /// Measured time per phase.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured load before each measurement.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Simulated agents (Medic) and remote-write senders (Prometheus), one connection each.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Distinct series per node.
    #[arg(long, default_value_t = 250)]
    series: usize,
    /// Samples per batch (Medic) and per request (Prometheus).
    #[arg(long, default_value_t = 500)]
    batch_samples: usize,
    /// Unacked batches each agent keeps in flight.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Prometheus binary.
    #[arg(long, default_value = "prometheus")]
    prometheus: PathBuf,
    /// Only run the Medic phase.
    #[arg(long)]
    skip_prometheus: bool,
    /// How the simulated agents encode batches: `series` (protocol 2, what agentd sends: each
    /// series once per batch, like remote write's TimeSeries) or `samples` (protocol 1).
    #[arg(long, value_enum, default_value = "series")]
    wire: medic::Wire,
    /// Medic phase: stamp samples this far in the past (e.g. `1d`), so they land in time
    /// buckets the embedded store considers closed, ready for compaction.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    backdate: Duration,
    /// Medic phase: copy the controller's store here when it stopped (to seed a later run).
    #[arg(long)]
    keep_store: Option<PathBuf>,
    /// Medic phase: start the controller on a copy of this store (one kept by `--keep-store`).
    /// With a store of backdated, uncompacted samples, the embedded store's background
    /// compaction works through them during the measurement: ingest while compacting.
    #[arg(long)]
    seed_store: Option<PathBuf>,
}

/// What one phase measured.
#[derive(Debug, Default)]
struct Phase {
    samples_per_sec: f64,
    server_samples_per_sec: Option<f64>,
    batches_per_sec: f64,
    latencies_ms: Vec<f64>,
    server_cpu_pct: f64,
    generator_cpu_pct: f64,
    errors: u64,
}

impl Phase {
    fn latency(&self, p: f64) -> f64 {
        percentile(&self.latencies_ms, p)
    }
    fn max_latency(&self) -> f64 {
        self.latencies_ms.last().copied().unwrap_or(0.0)
    }
}

/// When a phase's measurement starts and ends.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn after_warmup(args: &Args) -> Self {
        let start = Instant::now() + args.warmup;
        Self { start, end: start + args.duration }
    }
    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

/// Server-side counters and CPU at the window's edges.
struct Edge {
    counter: Option<f64>,
    server_cpu: f64,
    self_cpu: f64,
    at: Instant,
}

async fn edge(metrics_url: &str, counter: &str, pid: i32) -> Result<Edge> {
    let at = Instant::now();
    let server_cpu = cpu_seconds(pid)?;
    let self_cpu = self_cpu_seconds()?;
    let counter = sum_metric(&scrape(metrics_url).await.with_context(|| format!("scraping {metrics_url}"))?, counter);
    Ok(Edge { counter, server_cpu, self_cpu, at })
}

fn finish(phase: &mut Phase, a: &Edge, b: &Edge) {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    phase.server_samples_per_sec = match (a.counter, b.counter) {
        (Some(x), Some(y)) => Some((y - x) / secs),
        _ => None,
    };
    phase.server_cpu_pct = (b.server_cpu - a.server_cpu) / secs * 100.0;
    phase.generator_cpu_pct = (b.self_cpu - a.self_cpu) / secs * 100.0;
    phase.latencies_ms.sort_by(f64::total_cmp);
}

// ------------------------------------------------------------------------------------ Medic

/// One simulated agent's delivery state, shared by its sender and its ack reader.
#[derive(Default)]
struct AgentState {
    /// (seq, sent at, samples) of unacked batches, oldest first.
    inflight: VecDeque<(u64, Instant, usize)>,
    latencies_ms: Vec<f64>,
    batches: u64,
    samples: u64,
    error: Option<String>,
}

struct AgentConn {
    tx: mpsc::Sender<Bytes>,
    inbound: tonic::Streaming<medic_proto::v1::ControllerMessage>,
    last_stored_seq: u64,
}

async fn connect_agent(url: &str, node: &str, spool_id: &str, window: usize) -> Result<AgentConn> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("{node}: connecting to {url}"))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.with_context(|| format!("{node}: channel not ready"))?;
    let (tx, rx) = mpsc::channel::<Bytes>(window + 2);
    let hello = AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            node: node.into(),
            labels: vec![medic_proto::v1::Label::new("role", "bench")],
            agent_version: "bench_ingest".into(),
            protocol_version: medic_proto::PROTOCOL_VERSION,
            capabilities: vec!["host".into()],
            spool_id: spool_id.into(),
        })),
    };
    tx.send(Bytes::from(hello.encode_to_vec())).await.map_err(|_| anyhow!("{node}: request stream closed"))?;
    let path = PathAndQuery::from_static("/medic.v1.Telemetry/Stream");
    let mut inbound = grpc
        .streaming(tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)), path, medic::AgentCodec)
        .await
        .map_err(|s| anyhow!("{node}: stream refused: {s}"))?
        .into_inner();
    let last_stored_seq = loop {
        match inbound.message().await.map_err(|s| anyhow!("{node}: no welcome: {s}"))? {
            Some(m) => match m.msg {
                Some(Msg::Welcome(w)) => break w.last_stored_seq,
                _ => continue,
            },
            None => bail!("{node}: stream closed before the welcome"),
        }
    };
    Ok(AgentConn { tx, inbound, last_stored_seq })
}

#[allow(clippy::too_many_arguments)]
async fn run_agent(
    index: usize,
    conn: AgentConn,
    series: Arc<Vec<SeriesDef>>,
    prefixes: Arc<Vec<Vec<u8>>>,
    wire: medic::Wire,
    batch_samples: usize,
    window_size: usize,
    window: Window,
    backdate_ms: i64,
) -> AgentState {
    let AgentConn { tx, mut inbound, last_stored_seq } = conn;
    let state = Arc::new(Mutex::new(AgentState::default()));
    let permits = Arc::new(Semaphore::new(window_size));

    let reader = {
        let (state, permits) = (state.clone(), permits.clone());
        tokio::spawn(async move {
            loop {
                let end = match inbound.message().await {
                    Ok(Some(m)) => match m.msg {
                        Some(Msg::Ack(ack)) => {
                            let now = Instant::now();
                            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                            let mut freed = 0;
                            while let Some(&(seq, sent, n)) = st.inflight.front() {
                                if seq > ack.seq {
                                    break;
                                }
                                st.inflight.pop_front();
                                freed += 1;
                                if window.contains(now) {
                                    st.latencies_ms.push(now.duration_since(sent).as_secs_f64() * 1e3);
                                    st.batches += 1;
                                    st.samples += n as u64;
                                }
                            }
                            drop(st);
                            permits.add_permits(freed);
                            None
                        }
                        _ => None,
                    },
                    Ok(None) => Some(None),
                    Err(status) => Some(Some(format!("stream ended: {status}"))),
                };
                if let Some(err) = end {
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    if err.is_some() && st.error.is_none() {
                        st.error = err;
                    }
                    // Let the sender notice instead of waiting for acks that will not come.
                    permits.close();
                    return;
                }
            }
        })
    };

    let mut generator = Generator::new(series.len(), index).backdated(backdate_ms);
    let mut encoder = medic::BatchEncoder::default();
    let mut seq = last_stored_seq + 1;
    loop {
        let permit = tokio::select! {
            p = permits.acquire() => match p { Ok(p) => p, Err(_) => break },
            _ = sleep_until(window.end.into()) => break,
        };
        if Instant::now() >= window.end {
            break;
        }
        permit.forget();
        let bytes = encoder.encode(wire, &prefixes, &series, &mut generator, seq, series::now_ms(), batch_samples);
        state.lock().unwrap_or_else(|p| p.into_inner()).inflight.push_back((seq, Instant::now(), batch_samples));
        if tx.send(bytes).await.is_err() {
            break;
        }
        seq += 1;
    }
    // Let what is in flight be acked (not counted: after the window), then close the stream.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !reader.is_finished() {
        if state.lock().unwrap_or_else(|p| p.into_inner()).inflight.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(tx);
    if tokio::time::timeout(Duration::from_secs(2), async {
        while !reader.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_err()
    {
        reader.abort();
    }
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut *st)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

async fn medic_phase(args: &Args, series: Arc<Vec<SeriesDef>>, dir: &Path) -> Result<Phase> {
    if let Some(seed) = &args.seed_store {
        copy_dir(seed, &dir.join("controller").join("store")).context("copying --seed-store")?;
    }
    let mut controller = ControllerProc::start(&dir.join("controller"), free_port(), free_port(), &[])
        .await
        .context("starting the controller")?;
    let pid = controller.proc.pid();
    let metrics_url = controller.url("/metrics");
    let prefixes = Arc::new(medic::prefixes(&series, args.wire));
    let run = uuid_ish();

    let mut conns = Vec::with_capacity(args.agents);
    for i in 0..args.agents {
        let node = format!("bench-node-{i:03}");
        conns.push(connect_agent(&controller.grpc_url(), &node, &format!("bench-{run}-{i}"), args.window).await?);
    }
    println!("medic: {} agents connected; {:?} warm-up, then {:?} measured", args.agents, args.warmup, args.duration);

    let window = Window::after_warmup(args);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            tokio::spawn(run_agent(
                i,
                conn,
                series.clone(),
                prefixes.clone(),
                args.wire,
                args.batch_samples,
                args.window,
                window,
                args.backdate.as_millis() as i64,
            ))
        })
        .collect();

    sleep_until(window.start.into()).await;
    let a = edge(&metrics_url, "medic_ingest_samples_stored_total", pid).await?;
    sleep_until(window.end.into()).await;
    let b = edge(&metrics_url, "medic_ingest_samples_stored_total", pid).await?;

    let mut phase = Phase::default();
    let mut errors = Vec::new();
    for t in tasks {
        let st = t.await.context("an agent task panicked")?;
        phase.latencies_ms.extend(st.latencies_ms);
        phase.samples_per_sec += st.samples as f64;
        phase.batches_per_sec += st.batches as f64;
        if let Some(e) = st.error {
            errors.push(e);
        }
    }
    let secs = args.duration.as_secs_f64();
    phase.samples_per_sec /= secs;
    phase.batches_per_sec /= secs;
    phase.errors = errors.len() as u64;
    finish(&mut phase, &a, &b);

    let end_metrics = scrape(&metrics_url).await?;
    let rejected = sum_metric(&end_metrics, "medic_ingest_samples_rejected_total").unwrap_or(0.0);
    let dups = sum_metric(&end_metrics, "medic_ingest_duplicate_batches_total").unwrap_or(0.0);
    if let Err(e) = controller.proc.terminate() {
        eprintln!("warning: {e:#}");
    }
    if let Some(keep) = &args.keep_store {
        copy_dir(&dir.join("controller").join("store"), keep).context("copying the store to --keep-store")?;
    }
    if !errors.is_empty() {
        bail!(
            "{} of {} agent streams ended with an error, e.g. {}; controller log:\n{}",
            errors.len(),
            args.agents,
            errors[0],
            tail(&controller.data_dir.join("controller.out"), 20)
        );
    }
    if rejected > 0.0 || dups > 0.0 {
        bail!(
            "the controller rejected {rejected} samples and saw {dups} duplicate batches: the load is not what was meant"
        );
    }
    Ok(phase)
}

fn uuid_ish() -> String {
    format!("{:x}{:x}", std::process::id(), series::now_ms())
}

// ------------------------------------------------------------------------------- Prometheus

#[derive(Default)]
struct SenderStats {
    latencies_ms: Vec<f64>,
    requests: u64,
    samples: u64,
    errors: u64,
    first_error: Option<String>,
}

async fn run_sender(
    index: usize,
    url: String,
    series: Arc<Vec<SeriesDef>>,
    batch_samples: usize,
    window: Window,
) -> SenderStats {
    let mut st = SenderStats::default();
    let client = match reqwest::Client::builder().pool_max_idle_per_host(1).timeout(Duration::from_secs(10)).build() {
        Ok(c) => c,
        Err(e) => {
            st.errors += 1;
            st.first_error = Some(format!("building an HTTP client: {e}"));
            return st;
        }
    };
    let mut builder = remote_write::RequestBuilder::new(&series, &format!("bench-node-{index:03}"));
    let mut generator = Generator::new(series.len(), index);
    while Instant::now() < window.end {
        let body = match builder.build(&series, &mut generator, batch_samples) {
            Ok(b) => b,
            Err(e) => {
                st.errors += 1;
                st.first_error.get_or_insert(format!("{e:#}"));
                break;
            }
        };
        let sent = Instant::now();
        let result = client
            .post(&url)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body)
            .send()
            .await;
        let outcome = match result {
            Ok(resp) => {
                let status = resp.status();
                // Read the body so the connection is reused.
                let text = resp.text().await.unwrap_or_default();
                if status.is_success() { Ok(()) } else { Err(format!("{status}: {}", text.trim())) }
            }
            Err(e) => Err(format!("{e}")),
        };
        let done = Instant::now();
        match outcome {
            Ok(()) if window.contains(done) => {
                st.latencies_ms.push(done.duration_since(sent).as_secs_f64() * 1e3);
                st.requests += 1;
                st.samples += batch_samples as u64;
            }
            Ok(()) => {}
            Err(e) => {
                st.errors += 1;
                st.first_error.get_or_insert(e);
                // Do not hammer a server that refuses.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    st
}

async fn prometheus_phase(args: &Args, series: Arc<Vec<SeriesDef>>, dir: &Path) -> Result<Phase> {
    let dir = dir.join("prometheus");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1m\nscrape_configs: []\n")?;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut cmd = std::process::Command::new(&args.prometheus);
    cmd.arg("--web.enable-remote-write-receiver")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let log = dir.join("prometheus.out");
    let mut proc = Proc::spawn("prometheus", &mut cmd, &log)
        .with_context(|| format!("starting {} (apt-get install prometheus)", args.prometheus.display()))?;
    if let Err(e) = wait_http_ok(&format!("{base}/-/ready"), Duration::from_secs(30)).await {
        bail!("{e:#}; prometheus log:\n{}", tail(&log, 20));
    }
    let pid = proc.pid();
    let metrics_url = format!("{base}/metrics");
    let write_url = format!("{base}/api/v1/write");
    println!(
        "prometheus: ready; {} senders; {:?} warm-up, then {:?} measured",
        args.agents, args.warmup, args.duration
    );

    let window = Window::after_warmup(args);
    let tasks: Vec<_> = (0..args.agents)
        .map(|i| tokio::spawn(run_sender(i, write_url.clone(), series.clone(), args.batch_samples, window)))
        .collect();
    sleep_until(window.start.into()).await;
    let counter = "prometheus_tsdb_head_samples_appended_total";
    let a = edge(&metrics_url, counter, pid).await?;
    sleep_until(window.end.into()).await;
    let b = edge(&metrics_url, counter, pid).await?;

    let mut phase = Phase::default();
    let mut first_error = None;
    for t in tasks {
        let st = t.await.context("a sender task panicked")?;
        phase.latencies_ms.extend(st.latencies_ms);
        phase.samples_per_sec += st.samples as f64;
        phase.batches_per_sec += st.requests as f64;
        phase.errors += st.errors;
        if first_error.is_none() {
            first_error = st.first_error;
        }
    }
    let secs = args.duration.as_secs_f64();
    phase.samples_per_sec /= secs;
    phase.batches_per_sec /= secs;
    finish(&mut phase, &a, &b);
    stop(&mut proc, Duration::from_secs(15));
    if let Some(e) = first_error {
        eprintln!("prometheus: {} failed requests, e.g. {e}", phase.errors);
    }
    if phase.samples_per_sec == 0.0 {
        bail!("prometheus accepted nothing; its log:\n{}", tail(&log, 20));
    }
    Ok(phase)
}

// ------------------------------------------------------------------------------------- main

fn print_phase(name: &str, what: &str, server_counter: &str, p: &Phase) {
    println!("== {name}");
    println!("  samples/s {what}:{:>14.0}", p.samples_per_sec);
    match p.server_samples_per_sec {
        Some(s) => println!("  samples/s per {server_counter}:{s:>14.0}"),
        None => println!("  samples/s per {server_counter}: (counter not found)"),
    }
    println!("  batches/s:{:>14.0}", p.batches_per_sec);
    println!(
        "  latency ms: p50 {:.2}  p99 {:.2}  max {:.2}  ({} batches)",
        p.latency(50.0),
        p.latency(99.0),
        p.max_latency(),
        p.latencies_ms.len()
    );
    println!(
        "  server CPU {:.0}% of one core; load generator CPU {:.0}%; errors {}",
        p.server_cpu_pct, p.generator_cpu_pct, p.errors
    );
}

async fn run(args: Args) -> Result<()> {
    if args.agents == 0 || args.series == 0 || args.batch_samples == 0 || args.window == 0 {
        bail!("--agents, --series, --batch-samples and --window must be at least 1");
    }
    let series = Arc::new(series::node_series(args.series));
    let dir = tempfile::Builder::new().prefix("medic-bench-ingest-").tempdir()?;
    println!(
        "bench_ingest: {} nodes x {} series, {} samples per batch ({:.1} collection rounds), window {}, wire {:?}",
        args.agents,
        series.len(),
        args.batch_samples,
        args.batch_samples as f64 / series.len() as f64,
        args.window,
        args.wire
    );
    println!(
        "load average before: {} (on {} CPUs)",
        loadavg(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let limit = args.warmup + args.duration + Duration::from_secs(90);
    let medic = bounded("the Medic phase", limit, medic_phase(&args, series.clone(), dir.path())).await?;
    print_phase(
        "Medic controller (gRPC stream, durable group commit)",
        "stored (acked)",
        "medic_ingest_samples_stored_total",
        &medic,
    );
    println!("  (ack latency: batch handed to the stream -> cumulative ack covering it)");
    if args.skip_prometheus {
        println!("ingest_samples_per_sec={:.0}", medic.samples_per_sec);
        println!("ingest_ack_p99_ms={:.2}", medic.latency(99.0));
        return Ok(());
    }
    let prom = bounded("the Prometheus phase", limit, prometheus_phase(&args, series.clone(), dir.path())).await?;
    print_phase(
        "Prometheus remote write (HTTP/1.1, snappy protobuf, one request in flight per sender)",
        "accepted (2xx)",
        "prometheus_tsdb_head_samples_appended_total",
        &prom,
    );
    let ratio = medic.samples_per_sec / prom.samples_per_sec;
    println!("ratio = medic / prometheus = {ratio:.2}");
    println!("ingest_samples_per_sec={:.0}", medic.samples_per_sec);
    println!("ingest_ack_p99_ms={:.2}", medic.latency(99.0));
    println!("prometheus_samples_per_sec={:.0}", prom.samples_per_sec);
    println!("ratio={ratio:.2}");
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    report(run(Args::parse()).await)
}
