use agentd::collect::logs::ReadFrom;
use agentd::config::AgentConfig;
use anyhow::Context;
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Medic node agent: collects host and ClickHouse metrics and logs, spools them to disk and streams them to the
/// controller. Nothing is lost when either side dies.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// TOML config file; flags given on the command line override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Controller gRPC URL; https:// for TLS. Several, separated by commas, are tried in turn
    /// (controller replicas without a load balancer) [default: http://127.0.0.1:7070]
    #[arg(long)]
    controller: Option<String>,
    /// CA certificate (PEM) that signed the controller's certificate; needed for https:// [default: none]
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for a controller that requires one; its DNS name (else CN) must
    /// equal this node's name [default: none]
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert [default: none]
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Name to check in the controller's certificate instead of the URL's host [default: the host]
    #[arg(long)]
    tls_server_name: Option<String>,
    /// File holding this agent's token (bound to this node by the controller's
    /// --agent-tokens-file), sent as `authorization: Bearer` [default: none]
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// This node's name [default: env MEDIC_NODE, else the hostname]
    #[arg(long, env = "MEDIC_NODE")]
    node: Option<String>,
    /// Label sent to the controller, NAME=VALUE (repeatable), e.g. --label role=clickhouse
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Spool directory; keep it on persistent storage [default: ./medic-spool]
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// Spool size cap in bytes; beyond it the oldest batches are dropped (and counted) [default: 268435456]
    #[arg(long)]
    spool_max_bytes: Option<u64>,
    /// Collection interval, e.g. 200ms, 1s, 10s [default: 10s]
    #[arg(long, value_parser = humantime::parse_duration)]
    interval: Option<Duration>,
    /// HTTP address for /healthz and /metrics [default: 127.0.0.1:9465]
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Log file glob to tail (repeatable), e.g. '/var/log/clickhouse-server/*.log'
    #[arg(long = "log-file")]
    log_files: Vec<String>,
    /// Where to start in log files found at the very first start [default: end]
    #[arg(long, value_enum)]
    read_from: Option<ReadFromArg>,
    /// Longer log lines are truncated [default: 16384]
    #[arg(long)]
    max_line_bytes: Option<usize>,
    /// Process name whose count, CPU and memory are reported (repeatable), e.g. clickhouse-server
    #[arg(long = "process")]
    processes: Vec<String>,
    /// Host /proc (set to the host mount in a container) [default: /proc]
    #[arg(long)]
    proc_root: Option<PathBuf>,
    /// Host /sys [default: /sys]
    #[arg(long)]
    sys_root: Option<PathBuf>,
    /// Where the host's root filesystem is visible, for filesystem usage [default: /]
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// ClickHouse HTTP interface to collect metrics from, e.g. http://127.0.0.1:8123. The user and
    /// password come from the env variables MEDIC_CLICKHOUSE_USER and MEDIC_CLICKHOUSE_PASSWORD or
    /// --clickhouse-password-file, never from the command line [default: none]
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// File holding the ClickHouse password; wins over MEDIC_CLICKHOUSE_PASSWORD [default: none]
    #[arg(long)]
    clickhouse_password_file: Option<PathBuf>,
    /// Bound on one ClickHouse collection round; a server that does not answer within it is
    /// reported down (clickhouse_up 0) [default: 5s]
    #[arg(long, value_parser = humantime::parse_duration)]
    clickhouse_timeout: Option<Duration>,
    /// A service the controller may restart, NAME=COMMAND (repeatable), e.g.
    /// --service-restart clickhouse-server='systemctl restart clickhouse-server'
    #[arg(long = "service-restart", value_parser = parse_label)]
    service_restart: Vec<(String, String)>,
    /// Also allow the controller to run `systemctl restart NAME` for unlisted services.
    #[arg(long)]
    allow_systemctl_restart: bool,
    /// Batches sent to the controller before waiting for acks [default: 256]
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter, e.g. info or agentd=debug (RUST_LOG also works).
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ReadFromArg {
    Beginning,
    End,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (n, v) = s.split_once('=').ok_or_else(|| format!("label {s:?} must look like NAME=VALUE"))?;
    if n.is_empty() {
        return Err(format!("label {s:?} has an empty name"));
    }
    Ok((n.to_string(), v.to_string()))
}

fn config(cli: &Cli) -> anyhow::Result<AgentConfig> {
    let mut cfg = match &cli.config {
        Some(p) => AgentConfig::from_file(p)?,
        None => AgentConfig::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = &cli.$field { cfg.$field = v.clone().into(); } )* };
    }
    set!(controller, spool_dir, spool_max_bytes, interval, http_listen, max_line_bytes, proc_root, sys_root, rootfs);
    set!(clickhouse_url, clickhouse_password_file, clickhouse_timeout);
    set!(tls_ca, tls_cert, tls_key, tls_server_name, token_file);
    if cli.node.is_some() {
        cfg.node = cli.node.clone();
    }
    if let Some(r) = cli.read_from {
        cfg.read_from = match r {
            ReadFromArg::Beginning => ReadFrom::Beginning,
            ReadFromArg::End => ReadFrom::End,
        };
    }
    cfg.labels.extend(cli.labels.iter().cloned());
    cfg.log_files.extend(cli.log_files.iter().cloned());
    cfg.processes.extend(cli.processes.iter().cloned());
    cfg.service_restart.extend(cli.service_restart.iter().cloned());
    cfg.allow_systemctl_restart |= cli.allow_systemctl_restart;
    if let Some(n) = cli.max_in_flight {
        cfg.max_in_flight = n;
    }
    if cfg.interval < Duration::from_millis(100) {
        anyhow::bail!("--interval {:?} is too short; use 100ms or more", cfg.interval);
    }
    if cfg.clickhouse_timeout < Duration::from_millis(10) {
        anyhow::bail!("--clickhouse-timeout {:?} is too short; use 10ms or more", cfg.clickhouse_timeout);
    }
    Ok(cfg)
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log_level))
        .context("invalid --log-level")?;
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => fmt.json().init(),
        LogFormat::Text => fmt.init(),
    }
    let cfg = config(&cli)?;
    // Two workers are plenty for an agent and keep its footprint small on busy nodes.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(agentd::agent::run(cfg, shutdown_signal()))
}
