//! Wires the agent's data path: collect → spool → stream, plus the HTTP endpoint.

use crate::collect::clickhouse::{ClickHouseCollector, ClickHouseOptions, redact_url};
use crate::collect::logs::{TailCursor, Tailer, TailerOptions};
use crate::collect::{Collector, agent::SelfCollector, host};
use crate::config::AgentConfig;
use crate::entry::SpoolEntry;
use crate::spool::{Spool, SpoolOptions};
use crate::stream::{self, Shared, StreamOptions};
use crate::telemetry::{AgentMetrics, CollectorLabels};
use anyhow::Context;
use medic_proto::v1::{Batch, LogRecord, Sample};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

const CURSOR_FILE: &str = "tail-cursor.json";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Appends one batch to the spool and wakes the sender. Errors (disk full…) are counted and
/// logged; the caller keeps running and tries again next round.
fn spool_batch(shared: &Shared, samples: Vec<Sample>, logs: Vec<LogRecord>, cursor: &[u8]) -> bool {
    let entry = SpoolEntry {
        batch: Some({
            let mut b = Batch { seq: 0, created_unix_ms: now_ms(), samples, logs, series: vec![] };
            // Protocol version 2: each series' name and labels once per batch.
            b.group_samples();
            b
        }),
        tail_cursor: cursor.to_vec(),
    };
    let payload = entry.encode_bytes();
    let mut spool = shared.spool.lock().unwrap_or_else(|p| p.into_inner());
    let result = spool.append(&payload);
    stream::update_spool_metrics(shared, &spool);
    drop(spool);
    match result {
        Ok(_) => {
            shared.appended.notify_one();
            true
        }
        Err(e) => {
            shared.metrics.spool_append_errors.inc();
            tracing::error!(error = %e, "cannot write to the spool; this batch is lost unless space frees up");
            false
        }
    }
}

/// The cursor to resume tailing from: the one spooled with the newest record (exactly what was
/// shipped), else the cursor file (written after each append, survives the spool being emptied).
fn restore_cursor(spool: &Spool, spool_dir: &Path) -> Option<TailCursor> {
    let from_spool = spool
        .last_record()
        .ok()
        .flatten()
        .and_then(|(_, payload)| SpoolEntry::decode_bytes(&payload).ok())
        .filter(|e| !e.tail_cursor.is_empty())
        .and_then(|e| serde_json::from_slice::<TailCursor>(&e.tail_cursor).ok());
    from_spool.or_else(|| {
        let text = std::fs::read(spool_dir.join(CURSOR_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    })
}

fn write_cursor_file(dir: &Path, cursor: &[u8]) {
    let tmp = dir.join(format!("{CURSOR_FILE}.tmp"));
    let res = std::fs::write(&tmp, cursor).and_then(|_| std::fs::rename(&tmp, dir.join(CURSOR_FILE)));
    if let Err(e) = res {
        tracing::warn!(error = %e, "cannot save the log cursor file");
    }
}

async fn collect_loop(
    cfg: AgentConfig,
    shared: Shared,
    mut interval_hint: watch::Receiver<Option<Duration>>,
    mut stop: watch::Receiver<bool>,
) {
    let opts = host::HostOptions {
        paths: host::HostPaths {
            proc_root: cfg.proc_root.clone(),
            sys_root: cfg.sys_root.clone(),
            rootfs: cfg.rootfs.clone(),
        },
        processes: cfg.processes.clone(),
        ..Default::default()
    };
    let mut collectors: Vec<Box<dyn Collector>> = host::collectors(&opts);
    collectors.push(Box::new(SelfCollector::new().with_log_records(shared.metrics.log_records_read.clone())));
    let collectors = Arc::new(Mutex::new(collectors));
    let mut period = interval_hint.borrow().unwrap_or(cfg.interval);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = interval_hint.changed() => {
                let p = interval_hint.borrow().unwrap_or(cfg.interval);
                if p != period {
                    tracing::info!(from = ?period, to = ?p, "collection interval changed by the controller");
                    period = p;
                    tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                }
                continue;
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = now_ms();
        let collectors = collectors.clone();
        let metrics = shared.metrics.clone();
        // /proc reads are blocking syscalls; keep them off the async workers.
        let samples = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(512);
            let mut cs = collectors.lock().unwrap_or_else(|p| p.into_inner());
            for c in cs.iter_mut() {
                if let Err(e) = c.collect(now, &mut out) {
                    metrics.collector_errors.get_or_create(&CollectorLabels { collector: c.name().into() }).inc();
                    tracing::debug!(collector = c.name(), error = %e, "collector failed this round");
                }
            }
            out
        })
        .await
        .unwrap_or_default();
        shared.metrics.samples_collected.inc_by(samples.len() as u64);
        shared.metrics.latest.replace(samples.clone());
        spool_batch(&shared, samples, Vec::new(), &[]);
    }
}

/// ClickHouse collection in its own task and its own batches: a slow or dead server delays only
/// these samples (each round is bounded by the collector's timeout), never the host metrics.
async fn clickhouse_loop(
    mut collector: ClickHouseCollector,
    default_interval: Duration,
    shared: Shared,
    mut interval_hint: watch::Receiver<Option<Duration>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut period = interval_hint.borrow().unwrap_or(default_interval);
    collector.set_interval(period);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut was_up: Option<bool> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = interval_hint.changed() => {
                let p = interval_hint.borrow().unwrap_or(default_interval);
                if p != period {
                    period = p;
                    collector.set_interval(p);
                    tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                }
                continue;
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        let samples = tokio::select! {
            s = collector.collect(now_ms()) => s,
            _ = stop.wait_for(|s| *s) => return,
        };
        let up = collector.down_reason().is_none();
        if !up {
            shared.metrics.collector_errors.get_or_create(&CollectorLabels { collector: "clickhouse".into() }).inc();
        }
        if was_up != Some(up) {
            match collector.down_reason() {
                None => tracing::info!(url = %redact_url(&collector.options().url), "ClickHouse is answering"),
                Some(reason) => {
                    tracing::warn!(url = %redact_url(&collector.options().url), %reason, "ClickHouse is not answering")
                }
            }
            was_up = Some(up);
        }
        shared.metrics.samples_collected.inc_by(samples.len() as u64);
        shared.metrics.latest_clickhouse.replace(samples.clone());
        spool_batch(&shared, samples, Vec::new(), &[]);
    }
}

async fn tail_loop(mut tailer: Tailer, shared: Shared, spool_dir: PathBuf, mut stop: watch::Receiver<bool>) {
    // Records read but not yet spooled (the spool refused them, e.g. disk full). They are retried
    // before anything new is read, so a full disk delays log lines but never loses them.
    let mut pending: Option<(Vec<LogRecord>, Vec<u8>)> = None;
    loop {
        tokio::select! {
            _ = tailer.changed() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        loop {
            let (records, cursor) = match pending.take() {
                Some(p) => p,
                None => {
                    let records = tailer.poll(10_000);
                    if records.is_empty() {
                        break;
                    }
                    shared.metrics.log_records_read.inc_by(records.len() as u64);
                    (records, serde_json::to_vec(&tailer.cursor()).unwrap_or_default())
                }
            };
            if spool_batch(&shared, Vec::new(), records.clone(), &cursor) {
                write_cursor_file(&spool_dir, &cursor);
            } else {
                pending = Some((records, cursor));
                break;
            }
        }
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let node = cfg.node_name();
    // Before anything starts: a TLS or token mistake should stop the agent at once, saying what.
    let credentials =
        crate::security::Credentials::load(&cfg).context("configuring the connection to the controller")?;
    let metrics = Arc::new(AgentMetrics::new());
    let spool = Spool::open(&cfg.spool_dir, SpoolOptions { max_bytes: cfg.spool_max_bytes, ..Default::default() })
        .with_context(|| format!("opening the spool in {}", cfg.spool_dir.display()))?;
    let st = spool.stats();
    tracing::info!(node = %node, spool = %cfg.spool_dir.display(), unacked = st.batches, next_seq = st.next_seq, corrupt = st.corrupt_records_total, "spool opened");
    let cursor = restore_cursor(&spool, &cfg.spool_dir);
    let (hint_tx, hint_rx) = watch::channel(None);
    let shared = Shared {
        spool: Arc::new(Mutex::new(spool)),
        appended: Arc::new(Notify::new()),
        metrics: metrics.clone(),
        interval_hint: hint_tx,
    };
    {
        let spool = shared.spool.lock().unwrap_or_else(|p| p.into_inner());
        stream::update_spool_metrics(&shared, &spool);
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(url) = &cfg.clickhouse_url {
        let opts = ClickHouseOptions::resolve(
            url,
            cfg.clickhouse_user.as_deref(),
            cfg.clickhouse_password_file.as_deref(),
            cfg.clickhouse_timeout,
            cfg.interval,
        )
        .context("configuring the ClickHouse collector")?;
        tracing::info!(url = %redact_url(url), user = ?opts.user, timeout = ?opts.timeout, "collecting ClickHouse metrics");
        let collector = ClickHouseCollector::new(opts);
        tasks.push(tokio::spawn(clickhouse_loop(
            collector,
            cfg.interval,
            shared.clone(),
            hint_rx.clone(),
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(collect_loop(cfg.clone(), shared.clone(), hint_rx, stop_rx.clone())));
    if !cfg.log_files.is_empty() {
        let tailer = Tailer::new(
            TailerOptions {
                globs: cfg.log_files.clone(),
                max_line_bytes: cfg.max_line_bytes,
                read_from: cfg.read_from,
            },
            cursor,
        )
        .context("starting the log tailer")?;
        tasks.push(tokio::spawn(tail_loop(tailer, shared.clone(), cfg.spool_dir.clone(), stop_rx.clone())));
    }
    let mut sopts = StreamOptions::new(cfg.controller.clone(), node.clone());
    sopts.credentials = credentials;
    sopts.labels = cfg.labels.clone();
    sopts.max_in_flight = cfg.max_in_flight.max(1);
    sopts.commands = Arc::new(crate::command::CommandOptions {
        restart_commands: cfg.service_restart.clone(),
        allow_systemctl: cfg.allow_systemctl_restart,
    });
    if !cfg.service_restart.is_empty() || cfg.allow_systemctl_restart {
        sopts.capabilities.push("command.restart_service".into());
    }
    tasks.push(tokio::spawn(stream::run(sopts, shared.clone(), stop_rx.clone())));

    let listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("binding HTTP listener on {}", cfg.http_listen))?;
    tracing::info!(http = %listener.local_addr()?, controller = %cfg.controller, "agentd running");
    let mut http_stop = stop_rx.clone();
    let http = axum::serve(listener, crate::http::router(metrics)).with_graceful_shutdown(async move {
        let _ = http_stop.wait_for(|s| *s).await;
    });
    let http_task = tokio::spawn(async move { http.await });

    shutdown.await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let _ = http_task.await;
    tracing::info!("agentd stopped");
    Ok(())
}
