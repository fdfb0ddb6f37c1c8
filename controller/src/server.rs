//! Wires the data path together and runs it until shutdown.

use crate::act::executor::{AgentExecutor, ClickHouseExecutor, Executor, Executors, KubeExecutor, NotifyExecutor};
use crate::api::{self, ApiState};
use crate::config::ControllerConfig;
use crate::decide::audit::{Audit, AuditEntry};
use crate::decide::runner::{Remediation, Runner};
use crate::detect::engine::{EngineConfig, StoreSink};
use crate::detect::exposition::DetectionCollector;
use crate::ingest::nodes::NodeTable;
use crate::ingest::writer::{Writer, WriterOptions};
use crate::ingest::{IngestOptions, IngestService};
use crate::publish::alertmanager::Alerts;
use crate::publish::unhandled::{Unhandled, UnhandledConfig, UnhandledMetrics};
use crate::rules::watch::{ActiveRules, RuleMetrics};
use crate::store::EventKind;
use crate::store::Store;
use crate::store::clickhouse::{ClickHouseStore, redact_url};
use crate::store::embedded::EmbeddedStore;
use crate::store::events::EventLog;
use crate::telemetry::Metrics;
use anyhow::Context;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub async fn run(cfg: ControllerConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let anomaly_metrics: Vec<crate::publish::unhandled::HealthSignal> = if cfg.unhandled_anomaly_metrics.is_empty() {
        crate::publish::unhandled::default_health_signals()
    } else {
        cfg.unhandled_anomaly_metrics
            .iter()
            .map(|s| {
                s.parse().map_err(|e| anyhow::anyhow!("--unhandled-anomaly-metric {s}: {e} (write GLOB:up|down|any)"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let security = crate::security::Security::from_config(&cfg)?;
    cfg.check_leader_election()?;
    let store: Arc<dyn Store> = match cfg.clickhouse()? {
        // Connects lazily: a ClickHouse that is not up yet is waited for (see `load_when_ready`).
        Some(opts) => {
            tracing::info!(url = %redact_url(&opts.url), database = %opts.database, timeout = ?opts.timeout, "storing telemetry in ClickHouse");
            Arc::new(ClickHouseStore::new(opts).context("checking the ClickHouse settings")?)
        }
        None => Arc::new(
            EmbeddedStore::open(&cfg.data_dir)
                .with_context(|| format!("opening the embedded store in {}", cfg.data_dir.display()))?,
        ),
    };
    let metrics = Arc::new(Metrics::new(store.kind()));
    let election = crate::ha::Election::start(&cfg).await?;
    let leadership = election.leadership.clone();
    metrics.register_unprefixed(|r| leadership.register(r));
    metrics.register_unprefixed(|r| security.agents.register(r));
    let security_tasks = security.start();
    // Up once the nodes' delivery state is read; until then nothing is acked.
    metrics.store_up.set(0);
    let nodes = NodeTable::default();
    // Everything that needs the stored state (ingest, remediation, forecasters) waits for it.
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);

    let (jobs_tx, jobs_rx) = tokio::sync::mpsc::channel(cfg.ingest_queue_batches.max(1));
    let rules = cfg.rules_dir.as_ref().map(|dir| {
        let rule_metrics = RuleMetrics::default();
        metrics.register_unprefixed(|r| rule_metrics.register(r));
        ActiveRules::load(dir, rule_metrics)
    });
    let rules_task = rules.clone().map(|r| tokio::spawn(r.watch()));
    let event_log = EventLog::start(store.clone());
    let engine = crate::detect::engine::start(EngineConfig::default(), StoreSink(event_log.clone()));
    // Forecasters are warmed from the stored history when this replica first leads (at once for a
    // single controller): followers do not detect.
    let warm_task = {
        let (store, engine, leadership) = (store.clone(), engine.clone(), election.leadership.clone());
        let mut ready = ready_rx.clone();
        tokio::spawn(async move {
            let _ = ready.wait_for(|r| *r).await;
            leadership.wait_for(true).await;
            warm_forecasters(store, engine, EngineConfig::default()).await
        })
    };
    // The stored history is read once the store answers, before remediation starts.
    let remediation = Remediation::with_audit(Audit::stored(event_log, Vec::new()));
    let kube_client = if cfg.kubernetes {
        match kube::Client::try_default().await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "no Kubernetes API (in-cluster config or kubeconfig); pod and scale steps are unavailable");
                None
            }
        }
    } else {
        None
    };
    let alerts = Alerts::new(
        cfg.alertmanager_urls.clone(),
        cfg.alert_resend,
        format!("http://{}/api/v1/actions", cfg.http_listen),
    );
    let alerts_task = tokio::spawn(alerts.clone().run());
    metrics.register_unprefixed(|r| remediation.audit.register(r));
    metrics.register_unprefixed(|r| remediation.register(r));
    let runner_task = rules.clone().map(|rules| {
        // The executors this controller can use, Kubernetes first for pods that have one.
        let step_timeout = std::time::Duration::from_secs(120);
        let mut executors: Vec<Arc<dyn Executor>> = Vec::new();
        if let Some(client) = kube_client.clone() {
            executors.push(Arc::new(KubeExecutor {
                client,
                timeout: step_timeout,
                pod_selector: cfg.kubernetes_pod_selector.clone(),
            }));
        }
        if let Some(url) = cfg.clickhouse_node_url.clone() {
            executors.push(Arc::new(ClickHouseExecutor {
                url_template: url,
                user: cfg.clickhouse_user.clone().or_else(|| std::env::var("MEDIC_CLICKHOUSE_USER").ok()),
                password: std::env::var("MEDIC_CLICKHOUSE_PASSWORD").ok(),
                timeout: step_timeout,
            }));
        }
        executors.push(Arc::new(AgentExecutor { nodes: nodes.clone(), timeout: step_timeout }));
        executors.push(Arc::new(NotifyExecutor));
        // First: refuses every step while this replica may not act (not the leader).
        executors.insert(0, Arc::new(crate::ha::fence::FenceExecutor(leadership.clone())));
        let exec = Executors(executors);
        let (facts, detection, nodes, remediation, alerts) =
            (engine.facts.clone(), engine.state.clone(), nodes.clone(), remediation.clone(), alerts.clone());
        let every = cfg.remediation_interval;
        let (max_actions, max_actions_window) = (cfg.max_actions, cfg.max_actions_window);
        let (store, election) = (store.clone(), cfg.leader_election);
        let (audit, state) = (remediation.audit.clone(), engine.state.clone());
        let mut ready = ready_rx.clone();
        let remediate = crate::ha::while_leading(
            leadership.clone(),
            // A new leader starts from the audit log and the detection results as the previous
            // one stored them.
            move || {
                let (store, audit, state) = (store.clone(), audit.clone(), state.clone());
                async move {
                    if election {
                        match load_audit(store.as_ref()).await {
                            Ok(h) => audit.replace_history(h),
                            Err(e) => tracing::error!(error = %e, "cannot read the stored audit log; cooldowns of the previous leader are unknown"),
                        }
                        restore_detection(store.as_ref(), &state).await;
                    }
                }
            },
            move || {
                Runner {
                    rules: rules.clone(),
                    facts: facts.clone(),
                    detection: detection.clone(),
                    nodes: nodes.clone(),
                    exec: exec.clone(),
                    remediation: remediation.clone(),
                    global: crate::decide::guards::GlobalLimit { max: max_actions, per: max_actions_window },
                    every,
                    alerts: alerts.clone(),
                }
                .run()
            },
        );
        tokio::spawn(async move {
            // Not before the audit log is read: cooldowns and rate limits count what it holds.
            let _ = ready.wait_for(|r| *r).await;
            remediate.await
        })
    });
    // Of several replicas only the leader detects; followers relay what they store to it.
    let relay = cfg.leader_election.then(|| {
        let token = match crate::security::api::client_token(cfg.api_token_file.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "replicas cannot authenticate to each other; the leader will refuse what this one relays");
                None
            }
        };
        let r = crate::ha::relay::Relay::new(leadership.clone(), nodes.clone(), token, cfg.advertise_url())
            .with_engine(engine.clone());
        metrics.register_unprefixed(|reg| r.register(reg));
        r
    });
    let relay_task = relay.clone().map(|r| tokio::spawn(r.run()));
    let step_down_task = cfg.leader_election.then(|| {
        let (facts, detection, alerts) = (engine.facts.clone(), engine.state.clone(), alerts.clone());
        let relay = relay.clone();
        // What a follower holds would be stale by the time it leads again.
        tokio::spawn(crate::ha::on_step_down(leadership.clone(), move || {
            if let Ok(mut f) = facts.write() {
                f.nodes.clear();
            }
            if let Ok(mut d) = detection.write() {
                d.clear_results();
            }
            alerts.forget_all();
            if let Some(r) = &relay {
                r.forget_remote();
            }
        }))
    });
    let unhandled_metrics = UnhandledMetrics::default();
    metrics.register_unprefixed(|r| unhandled_metrics.register(r));
    let unhandled = Unhandled {
        cfg: UnhandledConfig {
            anomaly_for: cfg.unhandled_anomaly_for,
            exhaustion_within: cfg.unhandled_exhaustion_within,
            every: cfg.remediation_interval,
            anomaly_metrics,
            ..Default::default()
        },
        rules: rules.clone(),
        facts: engine.facts.clone(),
        detection: engine.state.clone(),
        alerts: alerts.clone(),
        metrics: unhandled_metrics,
    };
    // Raised by the leader only, like every other alert of the remediation loop.
    let unhandled_task = tokio::spawn(crate::ha::while_leading(
        leadership.clone(),
        || async {},
        move || {
            let u = &unhandled;
            Unhandled {
                cfg: u.cfg.clone(),
                rules: u.rules.clone(),
                facts: u.facts.clone(),
                detection: u.detection.clone(),
                alerts: u.alerts.clone(),
                metrics: u.metrics.clone(),
            }
            .run()
        },
    ));
    metrics.register_collector(DetectionCollector(engine.state.clone()));
    let (leading, relaying) = (leadership.clone(), relay.clone());
    let writer = Writer::new(store.clone(), nodes.clone(), metrics.clone(), WriterOptions::default()).with_detection(
        engine.clone().divert(move |b| match &relaying {
            Some(r) if !leading.is_leader() => {
                r.forward(b);
                None
            }
            _ => Some(b),
        }),
    );
    let writer_task = {
        let (store, nodes, metrics) = (store.clone(), nodes.clone(), metrics.clone());
        let (state, audit) = (engine.state.clone(), remediation.audit.clone());
        tokio::spawn(async move {
            // Ingest decides what is a replay from the stored delivery state: agents wait for it
            // (unacked, their batches spooled) while the store does not answer.
            nodes.load(load_when_ready(store.as_ref(), &nodes, &metrics).await);
            restore_detection(store.as_ref(), &state).await;
            match load_audit(store.as_ref()).await {
                Ok(h) => audit.replace_history(h),
                Err(e) => tracing::warn!(error = %e, "cannot read the stored audit log; starting with an empty one"),
            }
            let _ = ready_tx.send(true);
            writer.run(jobs_rx).await
        })
    };

    let ingest = IngestService::new(
        jobs_tx,
        nodes.clone(),
        metrics.clone(),
        IngestOptions {
            max_message_bytes: cfg.max_message_bytes,
            max_age: cfg.retention,
            interval_hint: cfg.agent_interval,
            ..Default::default()
        },
    )
    .with_auth(security.agents.clone());

    let grpc_listener = tokio::net::TcpListener::bind(cfg.grpc_listen)
        .await
        .with_context(|| format!("binding gRPC listener on {}", cfg.grpc_listen))?;
    let http_listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("binding HTTP listener on {}", cfg.http_listen))?;
    tracing::info!(grpc = %grpc_listener.local_addr()?, http = %http_listener.local_addr()?, store = store.kind(), tls = security.tls.is_some(), "controller listening");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown_nodes = nodes.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
        // Agent streams never end by themselves; a graceful stop has to end them.
        shutdown_nodes.disconnect_all();
    });

    let mut grpc_stop = stop_rx.clone();
    let grpc_shutdown = async move {
        let _ = grpc_stop.wait_for(|s| *s).await;
    };
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(ingest.into_server());
    let grpc: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match &security.tls
    {
        Some(tls) => {
            let agents = security.agents.clone();
            let incoming = tls.clone().incoming(grpc_listener, move |reason| agents.count_refused(reason));
            Box::pin(router.serve_with_incoming_shutdown(incoming, grpc_shutdown))
        }
        None => Box::pin(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
            grpc_shutdown,
        )),
    };

    let mut http_stop = stop_rx.clone();
    let app = api::router(ApiState {
        store: store.clone(),
        nodes: nodes.clone(),
        metrics: metrics.clone(),
        detection: engine.state.clone(),
        rules: rules.clone(),
        remediation: remediation.clone(),
        leadership: leadership.clone(),
    })
    .merge(relay.clone().map(|r| r.router()).unwrap_or_default())
    .layer(axum::middleware::from_fn_with_state(
        crate::ha::proxy::LeaderProxy::new(leadership.clone()),
        crate::ha::proxy::to_leader,
    ))
    .layer(axum::middleware::from_fn_with_state(security.api.clone(), crate::security::api::require_token));
    let http = axum::serve(http_listener, app).with_graceful_shutdown(async move {
        let _ = http_stop.wait_for(|s| *s).await;
    });

    let retention = cfg.retention;
    let retention_store = store.clone();
    let retention_metrics = metrics.clone();
    let retention_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tick.tick().await;
            let cutoff = chrono::Utc::now().timestamp_millis() - retention.as_millis() as i64;
            match retention_store.enforce_retention(cutoff).await {
                Ok(n) => {
                    retention_metrics.retention_dropped_partitions.inc_by(n);
                }
                Err(e) => tracing::warn!(error = %e, "retention pass failed; will retry"),
            }
        }
    });

    let servers = async { tokio::join!(grpc, http) };
    tokio::pin!(servers);
    let (g, h) = tokio::select! {
        r = &mut servers => r,
        // Once asked to stop, give connections a bounded time to close, then go anyway: nothing
        // unacked is lost (agents replay it), and a stuck peer must not block a restart.
        _ = async {
            let mut s = stop_rx.clone();
            let _ = s.wait_for(|v| *v).await;
            tokio::time::sleep(Duration::from_secs(8)).await;
        } => {
            tracing::warn!("connections did not close within 8 s of the stop signal; stopping anyway");
            (Ok(()), Ok(()))
        }
    };
    retention_task.abort();
    for t in security_tasks {
        t.abort();
    }
    alerts_task.abort();
    unhandled_task.abort();
    warm_task.abort();
    for t in [rules_task, runner_task, step_down_task, relay_task].into_iter().flatten() {
        t.abort();
    }
    writer_task.abort();
    election.stop().await;
    g.context("gRPC server failed")?;
    h.context("HTTP server failed")?;
    tracing::info!("controller stopped");
    Ok(())
}

/// The nodes' stored delivery state, retried until the store answers (a ClickHouse that starts
/// after the controller, or is down at its start).
async fn load_when_ready(store: &dyn Store, nodes: &NodeTable, metrics: &Metrics) -> Vec<crate::store::NodeRecord> {
    let mut backoff = Duration::from_millis(250);
    let mut said = false;
    loop {
        match store.load_nodes().await {
            Ok(records) => {
                metrics.store_up.set(1);
                nodes.set_store_error(None);
                if said {
                    tracing::info!(nodes = records.len(), "the store answers; ingesting");
                }
                return records;
            }
            Err(e) => {
                metrics.store_up.set(0);
                nodes.set_store_error(Some(e.to_string()));
                if !said {
                    tracing::warn!(error = %e, "cannot read the nodes' delivery state; agents keep their batches spooled until the store answers");
                    said = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Detection results of earlier runs, back into memory so the API shows them after a restart.
async fn restore_detection(store: &dyn Store, state: &std::sync::RwLock<crate::detect::engine::DetectionState>) {
    async fn load<T: serde::de::DeserializeOwned>(store: &dyn Store, kind: EventKind, limit: usize) -> Vec<T> {
        match store.events(kind, limit).await {
            Ok(ev) => ev.into_iter().filter_map(|e| serde_json::from_value(e.body).ok()).collect(),
            Err(e) => {
                tracing::warn!(error = %e, kind = kind.as_str(), "cannot read stored detection results; the API starts without them");
                Vec::new()
            }
        }
    }
    let anomalies = load(store, EventKind::Anomaly, 10_000).await;
    let changepoints = load(store, EventKind::Changepoint, 1000).await;
    let forecasts = load(store, EventKind::Forecast, 10_000).await;
    let fresh_ms = (2.0 * EngineConfig::default().forecast.refresh_secs * 1000.0) as i64;
    if let Ok(mut st) = state.write() {
        st.restore(anomalies, changepoints, forecasts, chrono::Utc::now().timestamp_millis(), fresh_ms);
    }
}

/// Reads back the stored history of the exhaustion-type series and hands it to the forecasters,
/// so forecasts resume within one refresh after a restart instead of after days of fresh data.
async fn warm_forecasters(store: Arc<dyn Store>, engine: crate::detect::engine::EngineHandle, cfg: EngineConfig) {
    use crate::detect::engine::{EXHAUSTION_METRICS, StoredBatch};
    use crate::store::SeriesQuery;
    use medic_proto::v1::{Batch, Label, Series};
    let nodes = match store.load_nodes().await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list nodes to warm the forecasters; forecasts start from fresh data");
            return;
        }
    };
    let now = chrono::Utc::now().timestamp_millis();
    let from = now - (cfg.forecast.max_window_secs * 1000.0) as i64;
    let mut points_read = 0usize;
    for n in nodes {
        let mut series: Vec<Series> = Vec::new();
        for metric in EXHAUSTION_METRICS {
            let q = SeriesQuery {
                node: n.node.clone(),
                metric: metric.to_string(),
                from_ms: from,
                to_ms: now,
                limit: 500_000,
            };
            let points = match store.series(&q).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(node = %n.node, metric, error = %e, "cannot read history to warm a forecaster");
                    continue;
                }
            };
            points_read += points.len();
            for p in points {
                let labels: Vec<Label> = p.labels.iter().map(|(k, v)| Label::new(k.clone(), v.clone())).collect();
                match series.iter_mut().rev().find(|s| s.metric == p.metric && s.labels == labels) {
                    Some(s) => {
                        s.timestamps_ms.push(p.timestamp_ms);
                        s.values.push(p.value);
                    }
                    None => series.push(Series {
                        metric: p.metric,
                        labels,
                        kind: 1,
                        timestamps_ms: vec![p.timestamp_ms],
                        values: vec![p.value],
                    }),
                }
            }
        }
        if series.is_empty() {
            continue;
        }
        let batch = StoredBatch {
            node: n.node.clone(),
            labels: n.labels.clone().into_iter().collect(),
            batch: Arc::new(Batch { series, ..Default::default() }),
        };
        let engine = engine.clone();
        if tokio::task::spawn_blocking(move || engine.warm(batch)).await.is_err() {
            return;
        }
    }
    if points_read > 0 {
        tracing::info!(points = points_read, "forecasters warmed from stored history");
    }
}

/// The stored audit log, oldest first.
async fn load_audit(store: &dyn Store) -> Result<Vec<AuditEntry>, crate::store::StoreError> {
    let ev = store.events(EventKind::Action, 10_000).await?;
    Ok(ev.into_iter().rev().filter_map(|e| serde_json::from_value(e.body).ok()).collect())
}
