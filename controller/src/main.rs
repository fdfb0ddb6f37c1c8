use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use controller::config::ControllerConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Medic controller: receives agent streams, stores telemetry, detects problems and fixes them.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a controller on the embedded store plus one agentd watching this machine
    /// (and the controller's own log). Ctrl-C stops both.
    Local(LocalArgs),
    /// Offline benchmarks of the controller's algorithms.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Offline checks of rule files, like promtool's.
    Rules(RulesArgs),
    /// List remediation actions, approve one that waits, or re-enable a stopped rule, on a
    /// running controller.
    Actions(ActionsArgs),
}

#[derive(Args, Debug)]
struct ActionsArgs {
    /// The controller's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:7080", global = true)]
    api: String,
    #[command(subcommand)]
    cmd: ActionsCmd,
}

#[derive(Subcommand, Debug)]
enum ActionsCmd {
    /// The audit log, newest first.
    List {
        #[arg(long)]
        rule: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Release an action that waits for approval.
    Approve { id: String },
    /// Let a rule act again after a failed verification stopped it.
    Reenable { rule: String },
}

#[derive(Args, Debug)]
struct RulesArgs {
    #[command(subcommand)]
    cmd: RulesCmd,
}

#[derive(Subcommand, Debug)]
enum RulesCmd {
    /// Validate every rule file in DIR; exit 1 with file:line:column for each error.
    Check {
        /// Directory of rule files (*.yaml; *test*.yaml files are tests, not rules).
        dir: PathBuf,
    },
    /// Run rule test files: feed series and events, assert which actions fire and which guards
    /// block the rest. Exit 1 on any failure.
    Test {
        /// Test files (conventionally named *test*.yaml).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Time-to-exhaustion accuracy: MSTL+ETS vs a least-squares line (predict_linear).
    Forecast(controller::detect::forecast_bench::ForecastBenchArgs),
    /// Score NAB (Numenta Anomaly Benchmark) CSVs with the production anomaly detector.
    Nab(NabArgs),
    /// Anomaly-detector throughput on synthetic samples across many series, one thread.
    Detect(DetectArgs),
}

#[derive(Args, Debug)]
struct NabArgs {
    /// NAB data directory (holds <category>/<file>.csv).
    #[arg(long)]
    data: PathBuf,
    /// Where to write <category>/<file>.csv with timestamp,anomaly_score.
    #[arg(long)]
    out: PathBuf,
    /// File listing the category/file.csv paths to score [default: every CSV under --data].
    #[arg(long)]
    files: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct DetectArgs {
    #[arg(long, default_value_t = 100_000)]
    series: usize,
    /// Samples per series; the first 50 of each are warm-up (scored 0, still fully processed).
    #[arg(long, default_value_t = 200)]
    samples_per_series: usize,
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// TOML config file; flags given on the command line override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// gRPC address agents connect to [default: 127.0.0.1:7070]
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// HTTP address for /healthz, /metrics and /api/v1 [default: 127.0.0.1:7080]
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Directory of the embedded store [default: ./medic-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How long telemetry is kept, e.g. 7d, 12h [default: 7d]
    #[arg(long, value_parser = humantime::parse_duration)]
    retention: Option<Duration>,
    /// Collection interval pushed to every agent, e.g. 10s [default: agents keep their own]
    #[arg(long, value_parser = humantime::parse_duration)]
    agent_interval: Option<Duration>,
    /// Directory of rule files; reloaded on change and on SIGHUP [default: no rules]
    #[arg(long)]
    rules_dir: Option<PathBuf>,
    /// ClickHouse URL of each node for remediation steps, {node} replaced by the node name and
    /// {label:NAME} by the node's label NAME, e.g. http://{node}:8123
    #[arg(long)]
    clickhouse_node_url: Option<String>,
    /// Alertmanager URL for the controller's own alerts (repeatable), e.g. http://alertmanager:9093
    #[arg(long = "alertmanager-url")]
    alertmanager_urls: Vec<String>,
    /// How often active alerts are re-sent to Alertmanager [default: 1m]
    #[arg(long, value_parser = humantime::parse_duration)]
    alert_resend: Option<Duration>,
    /// How long a series must stay anomalous, with no rule covering it, before MedicAnomalyUnhandled is raised [default: 5m]
    #[arg(long, value_parser = humantime::parse_duration)]
    unhandled_anomaly_for: Option<Duration>,
    /// A metric whose anomalies may raise MedicAnomalyUnhandled, as GLOB:up|down|any (the harmful direction); repeat it. Replaces the built-in health signals (errors, latency, backlogs, memory pressure, space running out) [default: built-in]
    #[arg(long = "unhandled-anomaly-metric")]
    unhandled_anomaly_metrics: Vec<String>,
    /// Forecast exhaustions closer than this, with no rule that would act, raise MedicExhaustionUnhandled [default: 72h]
    #[arg(long, value_parser = humantime::parse_duration)]
    unhandled_exhaustion_within: Option<Duration>,
    /// Controller-wide rate limit: at most this many actions across all rules within --max-actions-window [default: 10]
    #[arg(long)]
    max_actions: Option<u32>,
    /// The window of --max-actions, e.g. 10m [default: 10m]
    #[arg(long, value_parser = humantime::parse_duration)]
    max_actions_window: Option<Duration>,
    /// Use the Kubernetes API (kubeconfig or in-cluster) for pod restarts and scaling [default: on in a cluster]
    #[arg(long)]
    kubernetes: bool,
    /// Label selector of the ClickHouse pods: restarting a node whose agent has the label k8s_node deletes the one matching pod on that Kubernetes node [default: none]
    #[arg(long)]
    kubernetes_pod_selector: Option<String>,
    /// How often rules are evaluated, e.g. 10s [default: 10s]
    #[arg(long, value_parser = humantime::parse_duration)]
    remediation_interval: Option<Duration>,
    /// Store telemetry in ClickHouse at this HTTP URL (e.g. http://clickhouse:8123) instead of
    /// the embedded store. Credentials: MEDIC_CLICKHOUSE_USER / MEDIC_CLICKHOUSE_PASSWORD or
    /// --clickhouse-password-file, never on the command line.
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// ClickHouse database for Medic's tables [default: medic]
    #[arg(long)]
    clickhouse_database: Option<String>,
    /// File holding the ClickHouse password [default: MEDIC_CLICKHOUSE_PASSWORD]
    #[arg(long)]
    clickhouse_password_file: Option<PathBuf>,
    /// ClickHouse user [default: MEDIC_CLICKHOUSE_USER, else the server's default user]
    #[arg(long)]
    clickhouse_user: Option<String>,
    /// Upper bound for one ClickHouse statement, e.g. 30s [default: 30s]
    #[arg(long, value_parser = humantime::parse_duration)]
    clickhouse_timeout: Option<Duration>,
    /// Largest agent message accepted, in bytes [default: 16777216]
    #[arg(long)]
    max_message_bytes: Option<usize>,
    /// Batches that may wait for the store before agents are slowed down [default: 4096]
    #[arg(long)]
    ingest_queue_batches: Option<usize>,
    /// Certificate chain (PEM) for the agents' gRPC port: agents then connect with https:// [default: plain gRPC]
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// CA (PEM) of agent client certificates: an agent must present one whose DNS name (else CN)
    /// is its node name, or a token from --agent-tokens-file [default: no client certificates]
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// Per-agent tokens, one `NODE TOKEN` per line (TOKEN may be sha256:<hex>); a token is valid
    /// only for its node. Re-read on change and SIGHUP [default: no tokens]
    #[arg(long)]
    agent_tokens_file: Option<PathBuf>,
    /// Token(s), one per line, that the mutating HTTP API (approve) requires as `Authorization:
    /// Bearer`; `controller actions approve` sends the first one (or env MEDIC_API_TOKEN)
    /// [default: open API, with a warning]
    #[arg(long, global = true)]
    api_token_file: Option<PathBuf>,
    /// Run as one of several replicas: a Kubernetes Lease elects the one that runs detection and
    /// remediation, every replica ingests. Needs --clickhouse-url (a store all replicas share).
    /// Identity: env POD_NAME, else the hostname [default: off]
    #[arg(long)]
    leader_election: bool,
    /// Name of the Lease [default: medic-controller]
    #[arg(long)]
    lease_name: Option<String>,
    /// Namespace of the Lease [default: env POD_NAMESPACE, else the service account's namespace]
    #[arg(long)]
    lease_namespace: Option<String>,
    /// How long the lease stays valid after its holder's last renewal [default: 15s]
    #[arg(long, value_parser = humantime::parse_duration)]
    lease_duration: Option<Duration>,
    /// How often the leader renews the lease [default: 5s]
    #[arg(long, value_parser = humantime::parse_duration)]
    lease_renew_interval: Option<Duration>,
    /// The leader stops acting when it could not renew for this long (< --lease-duration) [default: 10s]
    #[arg(long, value_parser = humantime::parse_duration)]
    lease_renew_deadline: Option<Duration>,
    /// How often followers try to take the lease, and failed renewals are retried [default: 2s]
    #[arg(long, value_parser = humantime::parse_duration)]
    lease_retry_interval: Option<Duration>,
    /// This replica's HTTP API URL as the other replicas reach it, published while it leads
    /// [default: http://$POD_IP:<http port>, else http://<hostname>:<http port>]
    #[arg(long)]
    advertise_url: Option<String>,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Args, Debug, Clone)]
struct LogArgs {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Log filter, e.g. info or controller=debug,info (RUST_LOG also works).
    #[arg(long, default_value = "info,fjall=warn,lsm_tree=warn", global = true)]
    log_level: String,
    /// Also append logs (JSON lines) to this file.
    #[arg(long, global = true)]
    log_file: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
struct LocalArgs {
    /// The agentd binary [default: agentd next to this executable, then on PATH]
    #[arg(long)]
    agentd: Option<PathBuf>,
    /// Collection interval of the local agent.
    #[arg(long, default_value = "5s")]
    interval: String,
    /// HTTP address of the local agent's /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:7081")]
    agent_http_listen: SocketAddr,
}

fn init_logging(log: &LogArgs) -> anyhow::Result<()> {
    use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&log.log_level))?;
    let stderr = match log.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
    };
    let file = match &log.log_file {
        Some(p) => {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening log file {}", p.display()))?;
            Some(tracing_subscriber::fmt::layer().json().with_writer(std::sync::Mutex::new(f)).boxed())
        }
        None => None,
    };
    tracing_subscriber::registry().with(filter).with(stderr).with(file).init();
    Ok(())
}

fn config(args: &RunArgs) -> anyhow::Result<ControllerConfig> {
    let mut cfg = match &args.config {
        Some(p) => ControllerConfig::from_file(p)?,
        None => ControllerConfig::default(),
    };
    if let Some(v) = args.grpc_listen {
        cfg.grpc_listen = v;
    }
    if let Some(v) = args.http_listen {
        cfg.http_listen = v;
    }
    if let Some(v) = &args.data_dir {
        cfg.data_dir = v.clone();
    }
    if let Some(v) = args.retention {
        cfg.retention = v;
    }
    if let Some(v) = args.agent_interval {
        cfg.agent_interval = Some(v);
    }
    if let Some(v) = &args.rules_dir {
        cfg.rules_dir = Some(v.clone());
    }
    if let Some(v) = &args.clickhouse_node_url {
        cfg.clickhouse_node_url = Some(v.clone());
    }
    cfg.alertmanager_urls.extend(args.alertmanager_urls.iter().cloned());
    if let Some(v) = args.alert_resend {
        cfg.alert_resend = v;
    }
    if let Some(v) = args.unhandled_anomaly_for {
        cfg.unhandled_anomaly_for = v;
    }
    if !args.unhandled_anomaly_metrics.is_empty() {
        cfg.unhandled_anomaly_metrics = args.unhandled_anomaly_metrics.clone();
    }
    if let Some(v) = args.unhandled_exhaustion_within {
        cfg.unhandled_exhaustion_within = v;
    }
    if let Some(v) = args.max_actions {
        cfg.max_actions = v;
    }
    if let Some(v) = args.max_actions_window {
        cfg.max_actions_window = v;
    }
    cfg.kubernetes |= args.kubernetes;
    if let Some(v) = &args.kubernetes_pod_selector {
        cfg.kubernetes_pod_selector = Some(v.clone());
    }
    if let Some(v) = args.remediation_interval {
        cfg.remediation_interval = v;
    }
    if let Some(v) = &args.clickhouse_url {
        cfg.clickhouse_url = Some(v.clone());
    }
    if let Some(v) = &args.clickhouse_database {
        cfg.clickhouse_database = v.clone();
    }
    if let Some(v) = &args.clickhouse_password_file {
        cfg.clickhouse_password_file = Some(v.clone());
    }
    if let Some(v) = &args.clickhouse_user {
        cfg.clickhouse_user = Some(v.clone());
    }
    if let Some(v) = args.clickhouse_timeout {
        cfg.clickhouse_timeout = v;
    }
    if let Some(v) = args.max_message_bytes {
        cfg.max_message_bytes = v;
    }
    if let Some(v) = args.ingest_queue_batches {
        cfg.ingest_queue_batches = v;
    }
    cfg.leader_election |= args.leader_election;
    if let Some(v) = &args.lease_name {
        cfg.lease_name = v.clone();
    }
    for (flag, value) in
        [(&mut cfg.lease_namespace, &args.lease_namespace), (&mut cfg.advertise_url, &args.advertise_url)]
    {
        if value.is_some() {
            *flag = value.clone();
        }
    }
    for (flag, value) in [
        (&mut cfg.lease_duration, args.lease_duration),
        (&mut cfg.lease_renew_interval, args.lease_renew_interval),
        (&mut cfg.lease_renew_deadline, args.lease_renew_deadline),
        (&mut cfg.lease_retry_interval, args.lease_retry_interval),
    ] {
        if let Some(v) = value {
            *flag = v;
        }
    }
    for (flag, value) in [
        (&mut cfg.tls_cert, &args.tls_cert),
        (&mut cfg.tls_key, &args.tls_key),
        (&mut cfg.tls_client_ca, &args.tls_client_ca),
        (&mut cfg.agent_tokens_file, &args.agent_tokens_file),
        (&mut cfg.api_token_file, &args.api_token_file),
    ] {
        if value.is_some() {
            *flag = value.clone();
        }
    }
    Ok(cfg)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

fn find_agentd(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let beside = std::env::current_exe()?.with_file_name("agentd");
    if beside.exists() {
        return Ok(beside);
    }
    Ok(PathBuf::from("agentd"))
}

async fn run_local(mut cfg: ControllerConfig, local: LocalArgs) -> anyhow::Result<()> {
    let agentd = find_agentd(local.agentd)?;
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| controller::ingest::validate_node_name(h).is_ok())
        .unwrap_or_else(|| "localhost".to_string());
    cfg.data_dir = std::path::absolute(&cfg.data_dir)?;
    let controller_log = cfg.data_dir.join("controller.log");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(controller::server::run(cfg.clone(), async move {
        let _ = server_stop.wait_for(|s| *s).await;
    }));
    // Give the listeners a moment so the agent's first connection attempt succeeds.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut child = tokio::process::Command::new(&agentd)
        .arg("--controller")
        .arg(format!("http://{}", cfg.grpc_listen))
        .arg("--node")
        .arg(&node)
        .arg("--spool-dir")
        .arg(cfg.data_dir.join("agent-spool"))
        .arg("--interval")
        .arg(&local.interval)
        .arg("--http-listen")
        .arg(local.agent_http_listen.to_string())
        .arg("--log-file")
        .arg(&controller_log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} (build it with `cargo build --release -p agentd`)", agentd.display()))?;

    let api = format!("http://{}", cfg.http_listen);
    println!("Medic is running locally (node {node}, data in {}).", cfg.data_dir.display());
    println!("  nodes:              {api}/api/v1/nodes");
    println!("  metrics of {node}:  {api}/api/v1/metrics?node={node}");
    println!("  load average:       {api}/api/v1/series?node={node}&metric=node_load1");
    println!("  controller log:     {api}/api/v1/logs?node={node}&limit=20");
    println!("  controller /metrics {api}/metrics");
    println!("  agent /metrics:     http://{}/metrics", local.agent_http_listen);
    println!("Press Ctrl-C to stop.");

    tokio::select! {
        _ = shutdown_signal() => {}
        status = child.wait() => {
            tracing::error!(?status, "the local agent exited; stopping");
        }
    }
    if let Some(pid) = child.id() {
        // SIGTERM lets the agent flush its spool and close the stream cleanly.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    let _ = stop_tx.send(true);
    server.await.context("controller task panicked")??;
    println!("Stopped.");
    Ok(())
}

/// mimalloc: ingest decodes every sample's metric and label strings into fresh allocations and
/// frees them after the group commit, from other threads; glibc malloc spent a third of the
/// controller's CPU on that (malloc, free, chunk consolidation) at full load.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A POST to the controller's mutating API, with the API token when one is configured.
async fn post_api(http: &reqwest::Client, url: &str, cfg: &ControllerConfig) -> anyhow::Result<()> {
    let mut req = http.post(url);
    if let Some(token) = controller::security::api::client_token(cfg.api_token_file.as_deref())? {
        use secrecy::ExposeSecret;
        req = req.bearer_auth(token.expose_secret());
    }
    let resp = req.send().await?;
    let status = resp.status();
    let body = resp.text().await?;
    anyhow::ensure!(status.is_success(), "{status}: {body}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut cfg = config(&cli.run)?;
    match cli.command {
        Some(Command::Actions(a)) => {
            let http = reqwest::Client::new();
            let base = a.api.trim_end_matches('/');
            match a.cmd {
                ActionsCmd::List { rule, limit } => {
                    let mut req = http.get(format!("{base}/api/v1/actions")).query(&[("limit", limit.to_string())]);
                    if let Some(r) = rule {
                        req = req.query(&[("rule", r)]);
                    }
                    let entries: Vec<serde_json::Value> = req.send().await?.error_for_status()?.json().await?;
                    for e in entries {
                        println!(
                            "{}  {:<18} {:<28} {:<12} {:<10} {}",
                            e["at"].as_str().unwrap_or(""),
                            e["outcome"].as_str().unwrap_or(""),
                            e["rule"].as_str().unwrap_or(""),
                            e["node"].as_str().unwrap_or(""),
                            e["action_id"].as_str().unwrap_or("").chars().take(8).collect::<String>(),
                            e["message"].as_str().unwrap_or("")
                        );
                    }
                    Ok(())
                }
                ActionsCmd::Approve { id } => {
                    post_api(&http, &format!("{base}/api/v1/actions/{id}/approve"), &cfg).await?;
                    println!("approved {id}; it runs at the next remediation round");
                    Ok(())
                }
                ActionsCmd::Reenable { rule } => {
                    post_api(&http, &format!("{base}/api/v1/rules/{rule}/reenable"), &cfg).await?;
                    println!("re-enabled rule {rule}; it acts again from the next remediation round");
                    Ok(())
                }
            }
        }
        Some(Command::Rules(rules)) => match rules.cmd {
            RulesCmd::Test { files } => {
                let (mut total, mut failed) = (0, 0);
                for f in &files {
                    match controller::rules::test::run_file(f) {
                        Ok((n, bad, failures)) => {
                            total += n;
                            for msg in &failures {
                                eprintln!("FAILED {msg}");
                            }
                            failed += bad;
                        }
                        Err(e) => {
                            eprintln!("{e}");
                            failed += 1;
                        }
                    }
                }
                println!("{} passed, {} failed", total.saturating_sub(failed), failed);
                if failed > 0 {
                    std::process::exit(1);
                }
                Ok(())
            }
            RulesCmd::Check { dir } => match controller::rules::load::load_dir(&dir) {
                Ok(set) => {
                    println!("{}: {} rules OK", dir.display(), set.rules.len());
                    Ok(())
                }
                Err(errors) => {
                    for e in &errors {
                        eprintln!("{e}");
                    }
                    eprintln!("{} error(s); the rule set would be rejected", errors.len());
                    std::process::exit(1);
                }
            },
        },
        Some(Command::Bench(BenchCmd::Forecast(args))) => controller::detect::forecast_bench::run(args),
        None => {
            init_logging(&cli.run.log)?;
            controller::server::run(cfg, shutdown_signal()).await
        }
        Some(Command::Bench(BenchCmd::Nab(a))) => {
            let t = std::time::Instant::now();
            let (files, rows) = controller::bench::nab::run(&a.data, &a.out, a.files.as_deref())?;
            println!("scored {files} files, {rows} rows in {:.2}s → {}", t.elapsed().as_secs_f64(), a.out.display());
            Ok(())
        }
        Some(Command::Bench(BenchCmd::Detect(a))) => {
            anyhow::ensure!(a.series > 0 && a.samples_per_series > 0, "--series and --samples-per-series must be > 0");
            let r = controller::bench::detect::run(a.series, a.samples_per_series);
            println!(
                "{} samples over {} series in {:.3}s: {:.0} samples/s, {} bytes of state per series, {} alerts",
                r.samples, r.series, r.seconds, r.samples_per_sec, r.state_bytes_per_series, r.alerts
            );
            Ok(())
        }
        Some(Command::Local(local)) => {
            if cli.run.data_dir.is_none() && cli.run.config.is_none() {
                cfg.data_dir = PathBuf::from("medic-local-data");
            }
            let mut log = cli.run.log.clone();
            log.log_file.get_or_insert_with(|| {
                std::path::absolute(&cfg.data_dir).unwrap_or(cfg.data_dir.clone()).join("controller.log")
            });
            init_logging(&log)?;
            run_local(cfg, local).await
        }
    }
}
