//! One specification, two stores: everything the controller relies on from its store holds for
//! the embedded store and for ClickHouse (the real engine, `tests/clickhouse/server.py`).

use anyhow::Result;
use controller::store::clickhouse::{ClickHouseOptions, ClickHouseStore};
use controller::store::embedded::EmbeddedStore;
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
        "[1,2,3]",
        "each applied exactly once"
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
        "ALTER TABLE medic.schema_migrations DELETE WHERE version = 3 SETTINGS mutations_sync = 2",
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
