//! One specification, two stores: everything the controller relies on from its store holds for
//! the embedded store and for ClickHouse (the real engine, `tests/clickhouse/server.py`).

use anyhow::{Result, bail};
use controller::store::clickhouse::{ClickHouseOptions, ClickHouseStore};
use controller::store::embedded::{EmbeddedOptions, EmbeddedStore};
use controller::store::{LogQuery, NodeRecord, SeriesQuery, Store, WriteSet};
use medic_proto::v1::{Batch, Label, LogLevel, LogRecord, MetricKind, Sample};
use medic_tests::ClickHouseProc;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

const T0: i64 = 1_795_478_400_000; // 2026-11-24T00:00:00Z
const HOUR: i64 = 3_600_000;

type Opener = Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Arc<dyn Store>>>>>>;

fn sample(metric: &str, labels: &[(&str, &str)], ts: i64, v: f64) -> Sample {
    Sample {
        metric: metric.into(),
        labels: labels.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
        timestamp_ms: ts,
        value: v,
        kind: MetricKind::Counter as i32,
    }
}

fn log(ts: i64, level: LogLevel, msg: &str) -> LogRecord {
    LogRecord {
        timestamp_ms: ts,
        source: "/var/log/clickhouse-server/clickhouse-server.log".into(),
        level: level as i32,
        message: msg.into(),
        fields: vec![Label::new("logger", "executeQuery"), Label::new("code", "252")],
    }
}

fn set(node: &str, seq: u64, samples: Vec<Sample>, logs: Vec<LogRecord>) -> WriteSet {
    WriteSet {
        batches: vec![(node.into(), Arc::new(Batch { seq, created_unix_ms: 0, samples, logs, series: vec![] }))],
        nodes: vec![NodeRecord {
            node: node.into(),
            spool_id: "spool-a".into(),
            last_seq: seq,
            batches: seq,
            ..Default::default()
        }],
    }
}

/// The store contract, run against whichever store `open` opens (twice, to check persistence).
async fn store_contract(open: Opener) -> Result<()> {
    {
        let store = open().await?;
        store
            .write(set(
                "ch-1",
                1,
                vec![
                    sample("node_cpu_seconds_total", &[("cpu", "0"), ("mode", "idle")], T0, 10.0),
                    sample("node_cpu_seconds_total", &[("cpu", "0"), ("mode", "user")], T0, 1.0),
                    sample("node_load1", &[], T0, 0.5),
                ],
                vec![
                    log(T0, LogLevel::Info, "Ready for connections."),
                    log(T0 + 1, LogLevel::Error, "Too many parts (300)."),
                ],
            ))
            .await?;
        store
            .write(set(
                "ch-1",
                2,
                vec![sample("node_cpu_seconds_total", &[("cpu", "0"), ("mode", "idle")], T0 + 10_000, 20.0)],
                vec![],
            ))
            .await?;
        store
            .write(set(
                "ch-2",
                1,
                vec![sample("node_load1", &[("weird", "a \"quoted\" \\ value")], T0 + HOUR, 2.0)],
                vec![],
            ))
            .await?;
    }
    // Everything is still there after reopening.
    let store = open().await?;
    let mut nodes = store.load_nodes().await?;
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let summary: Vec<(&str, u64, &str)> =
        nodes.iter().map(|n| (n.node.as_str(), n.last_seq, n.spool_id.as_str())).collect();
    assert_eq!(summary, [("ch-1", 2, "spool-a"), ("ch-2", 1, "spool-a")]);

    assert_eq!(store.metric_names("ch-1").await?, ["node_cpu_seconds_total", "node_load1"]);
    let q = SeriesQuery {
        node: "ch-1".into(),
        metric: "node_cpu_seconds_total".into(),
        from_ms: T0,
        to_ms: T0 + HOUR,
        limit: 100,
    };
    let points = store.series(&q).await?;
    let got: Vec<(&str, i64, f64)> =
        points.iter().map(|p| (p.labels["mode"].as_str(), p.timestamp_ms, p.value)).collect();
    assert_eq!(got, [("idle", T0, 10.0), ("idle", T0 + 10_000, 20.0), ("user", T0, 1.0)]);
    // The range is inclusive at both ends and excludes what lies outside.
    let later = store.series(&SeriesQuery { from_ms: T0 + 1, ..q.clone() }).await?;
    assert_eq!(later.iter().map(|p| p.value).collect::<Vec<_>>(), [20.0]);
    assert_eq!(store.series(&SeriesQuery { limit: 1, ..q.clone() }).await?.len(), 1);
    let odd = store.series(&SeriesQuery { node: "ch-2".into(), metric: "node_load1".into(), ..q.clone() }).await?;
    assert_eq!(odd[0].labels["weird"], "a \"quoted\" \\ value");

    let lq = LogQuery {
        node: "ch-1".into(),
        min_level: Some(LogLevel::Warning as i32),
        from_ms: 0,
        to_ms: T0 + HOUR,
        limit: 10,
    };
    let errors = store.logs(&lq).await?;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].record.message, "Too many parts (300).");
    assert_eq!(errors[0].seq, 1);
    let fields: Vec<(&str, &str)> =
        errors[0].record.fields.iter().map(|f| (f.name.as_str(), f.value.as_str())).collect();
    assert!(fields.contains(&("code", "252")), "{fields:?}");
    let all = store.logs(&LogQuery { min_level: None, ..lq }).await?;
    assert_eq!(
        all.iter().map(|l| l.record.message.as_str()).collect::<Vec<_>>(),
        ["Too many parts (300).", "Ready for connections."]
    );
    store.ping().await?;

    // Detection and remediation events are recorded and read back newest first.
    use controller::store::{EventKind, EventRecord};
    let ev = |kind, ts: i64, n: &str| EventRecord {
        kind,
        ts_ms: ts,
        node: n.into(),
        body: serde_json::json!({"ts": ts, "what": n}),
    };
    store
        .write_events(vec![
            ev(EventKind::Action, T0, "ch-1"),
            ev(EventKind::Action, T0 + 2, "ch-2"),
            ev(EventKind::Anomaly, T0 + 1, "ch-1"),
        ])
        .await?;
    let actions = store.events(EventKind::Action, 10).await?;
    assert_eq!(actions.iter().map(|e| e.node.as_str()).collect::<Vec<_>>(), ["ch-2", "ch-1"]);
    assert_eq!(actions[0].body["ts"], T0 + 2);
    assert_eq!(store.events(EventKind::Action, 1).await?.len(), 1);
    assert_eq!(store.events(EventKind::Anomaly, 10).await?.len(), 1);
    assert!(store.events(EventKind::Forecast, 10).await?.is_empty());
    Ok(())
}

fn embedded_opener(dir: &Path) -> Opener {
    let dir = dir.to_path_buf();
    Box::new(move || {
        let dir = dir.clone();
        Box::pin(async move { Ok(Arc::new(EmbeddedStore::open(&dir)?) as Arc<dyn Store>) })
    })
}

/// The embedded store compacting everything it holds whenever it is opened, so that the
/// contract's reads after reopening come from compacted chunks rather than sample blocks.
fn embedded_compacting_opener(dir: &Path) -> Opener {
    let dir = dir.to_path_buf();
    Box::new(move || {
        let dir = dir.clone();
        Box::pin(async move {
            let store = EmbeddedStore::open_with(&dir, EmbeddedOptions { background_compaction: false })?;
            store.compact(i64::MAX)?;
            Ok(Arc::new(store) as Arc<dyn Store>)
        })
    })
}

fn clickhouse_opener(url: String, retention: Duration) -> Opener {
    Box::new(move || {
        let mut o = ClickHouseOptions::new(url.clone());
        o.retention = retention;
        Box::pin(async move { Ok(Arc::new(ClickHouseStore::open(o).await?) as Arc<dyn Store>) })
    })
}

#[tokio::test]
async fn the_embedded_store_keeps_the_store_contract() -> Result<()> {
    let dir = tempfile::tempdir()?;
    store_contract(embedded_opener(dir.path())).await
}

#[tokio::test]
async fn the_embedded_store_keeps_the_store_contract_once_everything_is_compacted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    store_contract(embedded_compacting_opener(dir.path())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clickhouse_store_keeps_the_store_contract() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(dir.path()).await?;
    store_contract(clickhouse_opener(ch.url(), Duration::from_secs(7 * 86400))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clickhouse_schema_is_created_migrated_once_and_carries_the_retention_ttl() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(dir.path()).await?;
    let week = Duration::from_secs(7 * 86400);
    drop(clickhouse_opener(ch.url(), week)().await?);
    drop(clickhouse_opener(ch.url(), week)().await?);
    assert_eq!(
        ch.query("SELECT groupArray(version) FROM (SELECT version FROM medic.schema_migrations ORDER BY version)")
            .await?
            .trim(),
        "[1,2,3,4]",
        "each applied exactly once"
    );
    // Retried inserts are deduplicated by their token (schema v4).
    let dedup = ch
        .query("SELECT name FROM system.tables WHERE database = 'medic' AND create_table_query LIKE '%non_replicated_deduplication_window = 10000%' ORDER BY name")
        .await?;
    assert_eq!(
        dedup.split_whitespace().collect::<Vec<_>>(),
        ["actions", "anomalies", "changepoints", "forecasts", "logs", "outliers", "samples"]
    );
    let tables = ch.query("SELECT name FROM system.tables WHERE database = 'medic' ORDER BY name").await?;
    assert_eq!(
        tables.split_whitespace().collect::<Vec<_>>(),
        [
            "actions",
            "anomalies",
            "changepoints",
            "forecasts",
            "logs",
            "nodes",
            "outliers",
            "samples",
            "schema_migrations"
        ]
    );
    let ddl =
        ch.query("SELECT create_table_query FROM system.tables WHERE database = 'medic' AND name = 'samples'").await?;
    for want in [
        "DoubleDelta",
        "Delta(8), ZSTD(3)",
        "ZSTD",
        "LowCardinality",
        "DateTime64(3",
        "PARTITION BY toDate(ts)",
        "toIntervalSecond(604800)",
    ] {
        assert!(ddl.contains(want), "samples table lacks {want}: {ddl}");
    }
    // A new retention is applied to every telemetry table at the next start.
    drop(clickhouse_opener(ch.url(), Duration::from_secs(2 * 86400))().await?);
    let ttls = ch
        .query("SELECT name FROM system.tables WHERE database = 'medic' AND engine_full LIKE '%toIntervalSecond(172800)%' ORDER BY name")
        .await?;
    assert_eq!(
        ttls.split_whitespace().collect::<Vec<_>>(),
        ["actions", "anomalies", "changepoints", "forecasts", "logs", "outliers", "samples"]
    );
    Ok(())
}

/// What detection and remediation record can be queried by column in ClickHouse: the audit log
/// by rule and outcome, anomalies by metric and score, forecasts by resource and time left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_anomalies_and_forecasts_have_tables_with_typed_columns() -> Result<()> {
    use controller::store::{EventKind, EventRecord};
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(dir.path()).await?;
    let store = clickhouse_opener(ch.url(), Duration::from_secs(7 * 86400))().await?;
    let ev = |kind, body: serde_json::Value| EventRecord { kind, ts_ms: T0, node: "ch-1".into(), body };
    store
        .write_events(vec![
            ev(
                EventKind::Action,
                serde_json::json!({"action_id": "a-1", "rule": "clickhouse-down", "target": "ch-1",
                    "action": "restart", "outcome": "skipped", "guard": "cooldown",
                    "evidence": "clickhouse_up = 0 for 30s", "message": "in cooldown"}),
            ),
            ev(
                EventKind::Anomaly,
                serde_json::json!({"metric": "clickhouse_parts_active", "labels": {"table": "hits"},
                    "score": 0.97, "observed": 310.0, "baseline": 40.0, "signals": ["spike", "novelty"]}),
            ),
            ev(
                EventKind::Forecast,
                serde_json::json!({"resource": "disk:/var/lib/clickhouse", "exhaustion_seconds": 7200.0,
                    "pessimistic_seconds": null, "model": "mstl", "explanation": "fills in 2h"}),
            ),
            ev(
                EventKind::Outlier,
                serde_json::json!({"role": "clickhouse", "metrics": [
                    {"metric": "cpu", "value": 0.9, "peer_median": 0.2, "outlying_fraction": 1.0, "flagged_by": []}]}),
            ),
            ev(
                EventKind::Changepoint,
                serde_json::json!({"metric": "mem", "labels": {}, "before_mean": 1.0, "after_mean": 2.0}),
            ),
        ])
        .await?;
    let q = |sql: &'static str| ch.query(sql);
    assert_eq!(
        q("SELECT action_id, rule, action, outcome, guard, evidence FROM medic.actions FORMAT TSV").await?.trim(),
        "a-1\tclickhouse-down\trestart\tskipped\tcooldown\tclickhouse_up = 0 for 30s"
    );
    assert_eq!(
        q("SELECT node, metric, labels['table'], score, observed, baseline, signals FROM medic.anomalies FORMAT TSV")
            .await?
            .trim(),
        "ch-1\tclickhouse_parts_active\thits\t0.97\t310\t40\t['spike','novelty']"
    );
    assert_eq!(
        q("SELECT resource, exhaustion_seconds, pessimistic_seconds, model FROM medic.forecasts FORMAT TSV")
            .await?
            .trim(),
        "disk:/var/lib/clickhouse\t7200\t\\N\tmstl"
    );
    assert_eq!(
        q("SELECT role, metrics, peer_medians FROM medic.outliers FORMAT TSV").await?.trim(),
        "clickhouse\t['cpu']\t[0.2]"
    );
    assert_eq!(
        q("SELECT metric, before_mean, after_mean FROM medic.changepoints FORMAT TSV").await?.trim(),
        "mem\t1\t2"
    );
    // The API reads the records back whole.
    let actions = store.events(EventKind::Action, 10).await?;
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0].body["guard"], "cooldown");
    Ok(())
}

/// A store created by an earlier version (one `events` table for every kind) is migrated in
/// place: each event moves to the table of its kind and the audit log survives the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stored_by_schema_version_2_move_to_the_table_of_their_kind() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(dir.path()).await?;
    drop(clickhouse_opener(ch.url(), Duration::from_secs(7 * 86400))().await?);
    // Back to what version 2 left behind.
    for sql in [
        "DROP TABLE medic.actions",
        "DROP TABLE medic.anomalies",
        "DROP TABLE medic.outliers",
        "DROP TABLE medic.changepoints",
        "DROP TABLE medic.forecasts",
        "ALTER TABLE medic.schema_migrations DELETE WHERE version >= 3 SETTINGS mutations_sync = 2",
        "CREATE TABLE medic.events (ts DateTime64(3, 'UTC'), kind LowCardinality(String),
             node LowCardinality(String), body String) ENGINE = MergeTree PARTITION BY toDate(ts) ORDER BY (kind, ts, node)",
        r#"INSERT INTO medic.events VALUES
             ('2026-11-24 00:00:00.000', 'action', 'ch-1', '{"action_id":"a-7","rule":"r","outcome":"verified"}'),
             ('2026-11-24 00:00:01.000', 'action', 'ch-2', '{"action_id":"a-8","rule":"r","outcome":"escalated"}'),
             ('2026-11-24 00:00:02.000', 'anomaly', 'ch-1', '{"metric":"m","score":0.9}')"#,
    ] {
        ch.query(sql).await?;
    }
    let store = clickhouse_opener(ch.url(), Duration::from_secs(7 * 86400))().await?;
    assert_eq!(
        ch.query("SELECT groupArray(action_id) FROM (SELECT action_id FROM medic.actions ORDER BY ts)").await?.trim(),
        "['a-7','a-8']"
    );
    assert_eq!(ch.query("SELECT metric, score FROM medic.anomalies FORMAT TSV").await?.trim(), "m\t0.9");
    assert_eq!(ch.query("EXISTS TABLE medic.events").await?.trim(), "0");
    use controller::store::EventKind;
    let actions = store.events(EventKind::Action, 10).await?;
    assert_eq!(actions.iter().map(|e| e.node.as_str()).collect::<Vec<_>>(), ["ch-2", "ch-1"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_a_write_that_never_committed_are_removed_when_their_node_says_hello_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(dir.path()).await?;
    let open = clickhouse_opener(ch.url(), Duration::from_secs(7 * 86400));
    let store = open().await?;
    store.write(set("n", 1, vec![sample("m_total", &[], T0, 1.0)], vec![log(T0, LogLevel::Info, "kept")])).await?;
    drop(store);
    // A crash after the data insert and before the commit record: rows with a newer commit.
    ch.query(&format!(
        "INSERT INTO medic.samples (node, metric, labels, ts, value, kind, spool, seq, commit)
         VALUES ('n', 'm_total', '', fromUnixTimestamp64Milli(toInt64({}), 'UTC'), 2, 'counter', 'spool-a', 2, 98765432109876)",
        T0 + 10_000
    ))
    .await?;
    ch.query(&format!(
        "INSERT INTO medic.logs (node, ts, source, level, message, fields, spool, seq, idx, commit)
         VALUES ('n', fromUnixTimestamp64Milli(toInt64({}), 'UTC'), 'x', 'info', 'orphan', map(), 'spool-a', 2, 0, 98765432109876)",
        T0 + 10_000
    ))
    .await?;
    let store = open().await?;
    assert_eq!(store.load_nodes().await?[0].last_seq, 1);
    // What the writer does when the agent reconnects, to whichever controller replica.
    let fresh = store.refresh_nodes(&["n".to_string()]).await?;
    assert_eq!((fresh.len(), fresh[0].last_seq), (1, 1));
    assert_eq!(ch.query("SELECT count() FROM medic.samples").await?.trim(), "1", "the orphan sample is gone");
    assert_eq!(ch.query("SELECT groupArray(message) FROM medic.logs").await?.trim(), "['kept']");
    // The replayed batch then lands once.
    store.write(set("n", 2, vec![sample("m_total", &[], T0 + 10_000, 2.0)], vec![])).await?;
    assert_eq!(ch.query("SELECT count() FROM medic.samples").await?.trim(), "2");
    Ok(())
}

/// What a network or a sick server does to one request, injected by [`FaultProxy`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// The request reaches ClickHouse and is applied; its answer is lost (the connection drops).
    LoseAnswer,
    /// The connection drops before the request reaches ClickHouse.
    Refuse,
    /// The request is held back until [`FaultProxy::release`], long after its client gave up:
    /// what a frozen server does with what it received before it froze.
    Hold,
}

#[derive(Default)]
struct ProxyState {
    /// (text in the request's head, fault), each used once.
    armed: Vec<(String, Fault)>,
    /// Held requests that ClickHouse has answered since their release.
    held_answered: usize,
}

/// A TCP proxy in front of ClickHouse that injects one fault into the next request whose head
/// (request line: the INSERT's table is in the `query` parameter) contains a given text.
struct FaultProxy {
    port: u16,
    state: Arc<std::sync::Mutex<ProxyState>>,
    release: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    async fn start(upstream: u16) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state: Arc<std::sync::Mutex<ProxyState>> = Arc::default();
        let (release, released) = tokio::sync::watch::channel(false);
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (st, released) = (st.clone(), released.clone());
                tokio::spawn(async move {
                    let _ = proxy_connection(client, upstream, st, released).await;
                });
            }
        });
        Ok(Self { port, state, release, task })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn arm(&self, marker: &str, fault: Fault) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).armed.push((marker.to_string(), fault));
    }

    fn release(&self) {
        let _ = self.release.send(true);
    }

    async fn wait_held_answered(&self, n: usize) -> Result<()> {
        medic_tests::eventually(Duration::from_secs(20), || async {
            let got = self.state.lock().unwrap_or_else(|p| p.into_inner()).held_answered;
            Ok((got >= n).then_some(()))
        })
        .await
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy_connection(
    client: tokio::net::TcpStream,
    upstream: u16,
    state: Arc<std::sync::Mutex<ProxyState>>,
    mut released: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await?;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let lose_answer = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicBool::new(false));
    let (lose, hold) = (lose_answer.clone(), held.clone());
    let answers = state.clone();
    let to_server = async move {
        let mut buf = vec![0u8; 64 << 10];
        let mut kept: Vec<u8> = Vec::new();
        let mut holding = false;
        let mut client_open = true;
        loop {
            if holding {
                tokio::select! {
                    _ = async { let _ = released.wait_for(|r| *r).await; } => {
                        sw.write_all(&kept).await?;
                        kept.clear();
                        holding = false;
                        if !client_open {
                            sw.shutdown().await?;
                            // Keep the connection until ClickHouse answered.
                            std::future::pending::<()>().await;
                        }
                        continue;
                    }
                    n = cr.read(&mut buf), if client_open => {
                        let n = n.unwrap_or(0);
                        if n == 0 { client_open = false; } else { kept.extend_from_slice(&buf[..n]); }
                        continue;
                    }
                }
            }
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                sw.shutdown().await?;
                return Ok::<(), anyhow::Error>(());
            }
            let chunk = &buf[..n];
            let head = String::from_utf8_lossy(&chunk[..n.min(2048)]).to_string();
            let fault = {
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                let i = st.armed.iter().position(|(m, _)| head.contains(m.as_str()));
                i.map(|i| st.armed.remove(i).1)
            };
            match fault {
                Some(Fault::Refuse) => bail!("refused"),
                Some(Fault::LoseAnswer) => lose.store(true, Ordering::SeqCst),
                Some(Fault::Hold) => {
                    hold.store(true, Ordering::SeqCst);
                    holding = true;
                    kept.extend_from_slice(chunk);
                    continue;
                }
                None => {}
            }
            sw.write_all(chunk).await?;
        }
    };
    let to_client = async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = sr.read(&mut buf).await?;
            if held.load(Ordering::SeqCst) && n > 0 {
                answers.lock().unwrap_or_else(|p| p.into_inner()).held_answered += 1;
                bail!("held request answered");
            }
            if n == 0 {
                cw.shutdown().await?;
                return Ok::<(), anyhow::Error>(());
            }
            if lose_answer.load(Ordering::SeqCst) {
                bail!("answer lost");
            }
            cw.write_all(&buf[..n]).await?;
        }
    };
    // Either side ending ends the connection (dropping both sockets).
    tokio::select! {
        r = to_server => r,
        r = to_client => r,
    }
}

/// A store call that must end by itself (a bounded failure is fine; hanging is not).
async fn within<T>(call: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .map_err(|_| anyhow::anyhow!("the store call hung for 30 s: it has no bound"))
}

fn options(url: String, timeout: Duration) -> ClickHouseOptions {
    let mut o = ClickHouseOptions::new(url);
    o.timeout = timeout;
    o
}

async fn count(ch: &ClickHouseProc, sql: &str) -> Result<u64> {
    Ok(ch.query(sql).await?.trim().parse()?)
}

/// The commit record is applied by ClickHouse but its answer is lost (a timeout): the group is
/// stored. Nothing of it may be deleted afterwards — not even when the controller then dies in
/// the middle of its retry — or the agent's replay, which the stored state calls a duplicate,
/// would never bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_record_that_landed_unseen_keeps_its_rows_even_if_the_retry_is_cut_off() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(dir.path()).await?;
    let proxy = FaultProxy::start(ch.port).await?;
    let store = ClickHouseStore::open(options(proxy.url(), Duration::from_secs(5))).await?;
    store.write(set("n", 1, vec![sample("m_total", &[], T0, 1.0)], vec![log(T0, LogLevel::Info, "one")])).await?;

    let second =
        || set("n", 2, vec![sample("m_total", &[], T0 + 10_000, 2.0)], vec![log(T0 + 1, LogLevel::Info, "two")]);
    proxy.arm("%60nodes%60", Fault::LoseAnswer);
    assert!(store.write(second()).await.is_err(), "the answer to the commit record was lost");
    assert!(
        ch.query("SELECT argMax(record, version) FROM medic.nodes WHERE node = 'n'").await?.contains("\"last_seq\":2"),
        "ClickHouse applied the commit record"
    );
    // The retry dies before it writes anything (the controller crashes during it).
    proxy.arm("%60samples%60", Fault::Refuse);
    assert!(store.write(second()).await.is_err());
    drop(store);

    // The agent says hello to the next controller: seq 2 is stored, and so are its rows.
    let store = ClickHouseStore::open(options(ch.url(), Duration::from_secs(5))).await?;
    let fresh = store.refresh_nodes(&["n".to_string()]).await?;
    assert_eq!(fresh[0].last_seq, 2);
    assert_eq!(count(&ch, "SELECT count() FROM medic.samples WHERE seq = 2").await?, 1, "seq 2's sample is stored");
    assert_eq!(count(&ch, "SELECT count() FROM medic.logs WHERE seq = 2").await?, 1, "seq 2's log record is stored");
    assert_eq!(count(&ch, "SELECT count() FROM medic.samples").await?, 2);
    Ok(())
}

/// A frozen ClickHouse applies the inserts it received before it froze once it thaws — after
/// the controller has long given up on them and retried. Retries are idempotent: whichever copy
/// lands first is kept, for telemetry and for recorded events alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_that_lands_after_its_retry_is_stored_once() -> Result<()> {
    use controller::store::{EventKind, EventRecord};
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(dir.path()).await?;
    let proxy = FaultProxy::start(ch.port).await?;
    let store = ClickHouseStore::open(options(proxy.url(), Duration::from_secs(1))).await?;
    let group = |seq: u64| {
        set(
            "n",
            seq,
            vec![
                sample("m_total", &[("a", "1")], T0 + seq as i64, 1.0),
                sample("m_total", &[("a", "2")], T0 + seq as i64, 2.0),
            ],
            vec![log(T0 + seq as i64, LogLevel::Info, "once")],
        )
    };
    // Group 1's samples are held; group 2's samples land and its log records are held.
    proxy.arm("%60samples%60", Fault::Hold);
    assert!(within(store.write(group(1))).await?.is_err(), "the held insert timed out");
    within(store.write(group(1))).await??;
    proxy.arm("%60logs%60", Fault::Hold);
    assert!(within(store.write(group(2))).await?.is_err(), "the held insert timed out");
    within(store.write(group(2))).await??;

    let ev =
        |kind, what: &str| EventRecord { kind, ts_ms: T0, node: "n".into(), body: serde_json::json!({"what": what}) };
    let events = || vec![ev(EventKind::Action, "restart"), ev(EventKind::Anomaly, "spike")];
    // The audit entry lands, the anomaly's insert is held: the event log retries both.
    proxy.arm("%60anomalies%60", Fault::Hold);
    assert!(within(store.write_events(events())).await?.is_err(), "the held insert timed out");
    within(store.write_events(events())).await??;

    proxy.release();
    proxy.wait_held_answered(3).await?;
    assert_eq!(count(&ch, "SELECT count() FROM medic.samples").await?, 4, "samples stored once");
    assert_eq!(count(&ch, "SELECT count() FROM medic.logs").await?, 2, "log records stored once");
    assert_eq!(count(&ch, "SELECT count() FROM medic.actions").await?, 1, "audit entry recorded once");
    assert_eq!(count(&ch, "SELECT count() FROM medic.anomalies").await?, 1, "anomaly recorded once");
    Ok(())
}

/// A hung ClickHouse (SIGSTOP: connections are accepted, nothing answers) makes every call fail
/// within `--clickhouse-timeout` instead of hanging; once it thaws, the retried write is stored
/// once, whatever the thawed server does with what it received while frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_to_a_frozen_clickhouse_fails_within_the_timeout_and_the_retry_stores_once() -> Result<()> {
    use controller::store::{EventKind, EventRecord, StoreError};
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(dir.path()).await?;
    let store = ClickHouseStore::open(options(ch.url(), Duration::from_secs(1))).await?;
    store.write(set("n", 1, vec![sample("m_total", &[], T0, 1.0)], vec![])).await?;
    let second = || set("n", 2, vec![sample("m_total", &[], T0 + 1, 2.0)], vec![log(T0, LogLevel::Info, "two")]);
    // A hello changes only the node record: a group with nothing but the commit record.
    let hello_only = || WriteSet { batches: vec![], nodes: second().nodes };
    let event =
        || vec![EventRecord { kind: EventKind::Action, ts_ms: T0, node: "n".into(), body: serde_json::json!({}) }];

    ch.pause();
    let unavailable = |what: &str, r: Result<(), StoreError>| match r {
        Err(StoreError::Unavailable(_)) => Ok(()),
        other => Err(anyhow::anyhow!("{what} on a frozen ClickHouse: {other:?}")),
    };
    unavailable("write", within(store.write(second())).await?)?;
    unavailable("commit record", within(store.write(hello_only())).await?)?;
    unavailable("write_events", within(store.write_events(event())).await?)?;
    unavailable("ping", within(store.ping()).await?)?;
    unavailable("refresh_nodes", within(store.refresh_nodes(&["n".into()])).await?.map(|_| ()))?;
    unavailable("load_nodes", within(store.load_nodes()).await?.map(|_| ()))?;
    unavailable("metric_names", within(store.metric_names("n")).await?.map(|_| ()))?;
    ch.resume();

    within(store.write(second())).await??;
    within(store.write_events(event())).await??;
    // What the thawed server received while frozen is applied by now or deduplicated later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&ch, "SELECT count() FROM medic.samples").await?, 2, "each sample once");
    assert_eq!(count(&ch, "SELECT count() FROM medic.logs").await?, 1, "the log record once");
    assert_eq!(count(&ch, "SELECT count() FROM medic.actions").await?, 1, "the audit entry once");
    assert_eq!(store.load_nodes().await?[0].last_seq, 2);
    Ok(())
}

/// A controller may start before ClickHouse: its store answers "waiting for ClickHouse at URL"
/// until the server is up, then creates the schema and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_created_before_clickhouse_is_up_sets_up_its_schema_once_it_answers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = medic_tests::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let store = ClickHouseStore::new(options(url.clone(), Duration::from_secs(2)))?;
    let e = store.load_nodes().await.expect_err("nothing listens yet");
    assert!(e.to_string().contains(&format!("waiting for ClickHouse at {url}: ")), "{e}");
    assert!(store.ping().await.is_err());

    let ch = ClickHouseProc::start_on(dir.path(), port).await?;
    let nodes = medic_tests::eventually(Duration::from_secs(20), || async {
        match store.load_nodes().await {
            Ok(n) => Ok(Some(n)),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    assert!(nodes.is_empty());
    store.ping().await?;
    store.write(set("n", 1, vec![sample("m_total", &[], T0, 1.0)], vec![])).await?;
    assert_eq!(count(&ch, "SELECT count() FROM medic.samples").await?, 1);
    assert_eq!(
        ch.query("SELECT groupArray(version) FROM (SELECT version FROM medic.schema_migrations ORDER BY version)")
            .await?
            .trim(),
        "[1,2,3,4]"
    );
    Ok(())
}

/// Schema v3 moves v2's `events` into a table per kind and drops `events`. Cut off anywhere — after
/// copying some kinds, in the middle of one, or after the drop but before v3 was recorded — the
/// next start finishes it with every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_migration_cut_off_anywhere_is_finished_by_the_next_start_without_copying_twice() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(dir.path()).await?;
    let open = clickhouse_opener(ch.url(), Duration::from_secs(7 * 86400));
    drop(open().await?);
    // v2's table and its events, v3 unrecorded; `actions` was copied whole and `anomalies` half
    // when the first attempt at v3 was cut off.
    for sql in [
        "ALTER TABLE medic.schema_migrations DELETE WHERE version >= 3 SETTINGS mutations_sync = 2",
        "CREATE TABLE medic.events (ts DateTime64(3, 'UTC'), kind LowCardinality(String),
             node LowCardinality(String), body String) ENGINE = MergeTree PARTITION BY toDate(ts) ORDER BY (kind, ts, node)",
        r#"INSERT INTO medic.events VALUES
             ('2026-11-24 00:00:00.000', 'action', 'ch-1', '{"action_id":"a-7","rule":"r","outcome":"verified"}'),
             ('2026-11-24 00:00:01.000', 'action', 'ch-2', '{"action_id":"a-8","rule":"r","outcome":"escalated"}'),
             ('2026-11-24 00:00:02.000', 'anomaly', 'ch-1', '{"metric":"m","score":0.9}'),
             ('2026-11-25 00:00:02.000', 'anomaly', 'ch-2', '{"metric":"n","score":0.8}'),
             ('2026-11-25 00:00:03.000', 'forecast', 'ch-2', '{"resource":"memory","model":"ets"}')"#,
        "INSERT INTO medic.actions (ts, node, body) SELECT ts, node, body FROM medic.events WHERE kind = 'action'",
        "INSERT INTO medic.anomalies (ts, node, body) SELECT ts, node, body FROM medic.events WHERE kind = 'anomaly' AND node = 'ch-1'",
    ] {
        ch.query(sql).await?;
    }
    let moved = || async {
        let q = "SELECT (SELECT count() FROM medic.actions), (SELECT count() FROM medic.anomalies),
                        (SELECT count() FROM medic.forecasts), (SELECT count() FROM medic.outliers) FORMAT TSV";
        anyhow::Ok(ch.query(q).await?.trim().to_string())
    };
    drop(open().await?);
    assert_eq!(moved().await?, "2\t2\t1\t0", "every event once, in the table of its kind");
    assert_eq!(ch.query("EXISTS TABLE medic.events").await?.trim(), "0");
    assert_eq!(
        ch.query("SELECT groupArray(metric) FROM (SELECT metric FROM medic.anomalies ORDER BY ts)").await?.trim(),
        "['m','n']"
    );

    // Cut after the drop, before v3 (and v4) were recorded: the next start just records them.
    ch.query("ALTER TABLE medic.schema_migrations DELETE WHERE version >= 3 SETTINGS mutations_sync = 2").await?;
    let store = open().await?;
    assert_eq!(moved().await?, "2\t2\t1\t0");
    assert_eq!(
        ch.query("SELECT groupArray(version) FROM (SELECT version FROM medic.schema_migrations ORDER BY version)")
            .await?
            .trim(),
        "[1,2,3,4]"
    );
    assert_eq!(store.events(controller::store::EventKind::Action, 10).await?.len(), 2);
    Ok(())
}
