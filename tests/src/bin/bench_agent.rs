//! Footprint of agentd next to Debian's prometheus-node-exporter on the same machine, same time.
//!
//! Starts a release controller, one release agentd (`--interval 1s`, spool in a temp dir, tailing
//! a small log that this program appends a line to every second, watching the node_exporter
//! process) and `prometheus-node-exporter` with its default collectors. Every second both
//! `/metrics` endpoints are scraped (node_exporter does its collection work per scrape; agentd
//! collects on its own 1 s tick and also serves its self-metrics). RSS (VmRSS) is sampled every
//! second; CPU (utime+stime) at the start and end of the measured run.
//! Run via `tests/bench/run`.

use anyhow::{Context, Result, bail};
use clap::Parser;
use medic_tests::bench::{bounded, cpu_seconds, loadavg, mb, report, rss_bytes, stop, tail};
use medic_tests::{AgentProc, ControllerProc, Proc, free_port, wait_http_ok};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "agentd vs prometheus-node-exporter: RSS and CPU side by side")]
struct Args {
    /// Measured run.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time after both are up before measuring (first collections, spool and stream set up).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// The node_exporter binary.
    #[arg(long, default_value = "prometheus-node-exporter")]
    node_exporter: PathBuf,
}

/// One process's footprint over the run.
#[derive(Default)]
struct Footprint {
    cpu_start: f64,
    cpu_end: f64,
    rss_max: u64,
    rss_final: u64,
    scrapes_ok: u64,
    scrapes_failed: u64,
    last_scrape_bytes: usize,
    last_scrape_series: usize,
}

impl Footprint {
    fn start(pid: i32) -> Result<Self> {
        let rss = rss_bytes(pid)?;
        Ok(Self { cpu_start: cpu_seconds(pid)?, rss_max: rss, rss_final: rss, ..Default::default() })
    }
    fn sample_rss(&mut self, pid: i32) -> Result<()> {
        let rss = rss_bytes(pid)?;
        self.rss_max = self.rss_max.max(rss);
        self.rss_final = rss;
        Ok(())
    }
    fn cpu_pct(&self, secs: f64) -> f64 {
        (self.cpu_end - self.cpu_start) / secs.max(1e-9) * 100.0
    }
}

async fn scrape_into(client: &reqwest::Client, url: &str, f: &mut Footprint) {
    let body = match client.get(url).send().await.and_then(|r| r.error_for_status()) {
        Ok(r) => r.text().await,
        Err(e) => Err(e),
    };
    match body {
        Ok(text) => {
            f.scrapes_ok += 1;
            f.last_scrape_bytes = text.len();
            f.last_scrape_series = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).count();
        }
        Err(_) => f.scrapes_failed += 1,
    }
}

fn alive(p: &mut Proc, log: &Path) -> Result<()> {
    match p.child.try_wait() {
        Ok(None) => Ok(()),
        Ok(Some(status)) => bail!("{} exited ({status}) during the run; its log:\n{}", p.name, tail(log, 20)),
        Err(e) => bail!("{}: {e}", p.name),
    }
}

async fn run(args: Args) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("medic-bench-agent-").tempdir()?;
    let dir = dir.path();
    let mut controller = ControllerProc::start(&dir.join("controller"), free_port(), free_port(), &[])
        .await
        .context("starting the controller")?;

    let app_log = dir.join("app.log");
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&app_log)?;
    writeln!(log, "2026-11-24 06:00:00.000 INFO bench: started")?;
    let app_log_arg = app_log.to_string_lossy().into_owned();
    let mut agent = AgentProc::start(
        &controller.grpc_url(),
        "bench-agent",
        &dir.join("agent").join("spool"),
        free_port(),
        &["--interval", "1s", "--log-file", &app_log_arg, "--process", "prometheus-node-exporter"],
    )
    .await
    .context("starting agentd")?;
    let agent_log = dir.join("agent").join("bench-agent.out");

    let ne_port = free_port();
    let ne_url = format!("http://127.0.0.1:{ne_port}/metrics");
    let ne_log = dir.join("node_exporter.out");
    let mut cmd = std::process::Command::new(&args.node_exporter);
    cmd.arg(format!("--web.listen-address=127.0.0.1:{ne_port}"));
    let mut ne = Proc::spawn("node_exporter", &mut cmd, &ne_log).with_context(|| {
        format!("starting {} (apt-get install prometheus-node-exporter)", args.node_exporter.display())
    })?;
    if let Err(e) = wait_http_ok(&ne_url, Duration::from_secs(20)).await {
        bail!("{e:#}; node_exporter log:\n{}", tail(&ne_log, 20));
    }
    tokio::time::sleep(args.settle).await;

    let (agent_pid, ne_pid) = (agent.proc.pid(), ne.pid());
    let agent_url = agent.url("/metrics");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    println!(
        "bench_agent: agentd (pid {agent_pid}, --interval 1s) and node_exporter (pid {ne_pid}), both scraped every 1 s for {:?}",
        args.duration
    );
    println!("load average before: {}", loadavg());
    let delivered_before = delivered(&controller).await;
    let mut fa = Footprint::start(agent_pid)?;
    let mut fn_ = Footprint::start(ne_pid)?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut line = 0u64;
    while started.elapsed() < args.duration {
        tick.tick().await;
        tokio::join!(scrape_into(&client, &ne_url, &mut fn_), scrape_into(&client, &agent_url, &mut fa));
        line += 1;
        writeln!(log, "2026-11-24 06:00:{:02}.000 INFO bench: line {line}", line % 60)?;
        alive(&mut agent.proc, &agent_log)?;
        alive(&mut ne, &ne_log)?;
        fa.sample_rss(agent_pid)?;
        fn_.sample_rss(ne_pid)?;
    }
    let secs = started.elapsed().as_secs_f64();
    fa.cpu_end = cpu_seconds(agent_pid)?;
    fn_.cpu_end = cpu_seconds(ne_pid)?;
    fa.sample_rss(agent_pid)?;
    fn_.sample_rss(ne_pid)?;
    let delivered_after = delivered(&controller).await;

    println!("{:<34}{:>14}{:>16}", "", "agentd", "node_exporter");
    println!("{:<34}{:>14.1}{:>16.1}", "RSS max (MB)", mb(fa.rss_max), mb(fn_.rss_max));
    println!("{:<34}{:>14.1}{:>16.1}", "RSS final (MB)", mb(fa.rss_final), mb(fn_.rss_final));
    println!("{:<34}{:>14.2}{:>16.2}", "CPU (% of one core)", fa.cpu_pct(secs), fn_.cpu_pct(secs));
    println!("{:<34}{:>14.2}{:>16.2}", "CPU seconds", fa.cpu_end - fa.cpu_start, fn_.cpu_end - fn_.cpu_start);
    println!(
        "{:<34}{:>14}{:>16}",
        "/metrics scrapes ok / failed",
        format!("{}/{}", fa.scrapes_ok, fa.scrapes_failed),
        format!("{}/{}", fn_.scrapes_ok, fn_.scrapes_failed)
    );
    println!(
        "{:<34}{:>14}{:>16}",
        "/metrics size (bytes / series)",
        format!("{}/{}", fa.last_scrape_bytes, fa.last_scrape_series),
        format!("{}/{}", fn_.last_scrape_bytes, fn_.last_scrape_series)
    );
    let work_ok = match (delivered_before, delivered_after) {
        (Ok(b), Ok(a)) => {
            println!(
                "agentd delivered to the controller during the run: {} batches, {} samples, {} log records ({:.0} samples/s)",
                a.0.saturating_sub(b.0),
                a.1.saturating_sub(b.1),
                a.2.saturating_sub(b.2),
                a.1.saturating_sub(b.1) as f64 / secs
            );
            a.0 > b.0
        }
        (Err(e), _) | (_, Err(e)) => {
            println!("could not read what agentd delivered: {e:#}");
            false
        }
    };
    if !work_ok {
        println!(
            "WARNING: agentd delivered no batches during the run (its spool or collectors may not be implemented yet); its figures are not representative"
        );
        println!("agentd log (tail):\n{}", tail(&agent_log, 10));
    }

    for p in [&mut agent.proc, &mut ne, &mut controller.proc] {
        stop(p, Duration::from_secs(10));
    }
    println!(
        "agentd_rss_mb={:.1} agentd_cpu_pct={:.2} node_exporter_rss_mb={:.1} node_exporter_cpu_pct={:.2}",
        mb(fa.rss_max),
        fa.cpu_pct(secs),
        mb(fn_.rss_max),
        fn_.cpu_pct(secs)
    );
    Ok(())
}

/// (batches, samples, log records) the controller has stored from the agent.
async fn delivered(controller: &ControllerProc) -> Result<(u64, u64, u64)> {
    let nodes = controller.nodes().await?;
    let Some(n) = nodes.get("bench-agent") else {
        return Ok((0, 0, 0));
    };
    let get = |k: &str| n[k].as_u64().unwrap_or(0);
    Ok((get("batches"), get("samples"), get("log_records")))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let limit = args.settle + args.duration + Duration::from_secs(90);
    report(bounded("bench_agent", limit, run(args)).await)
}
