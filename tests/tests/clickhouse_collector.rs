//! The ClickHouse collector against the real ClickHouse 26.9 engine (tests/clickhouse), against
//! servers that are down or never answer, and end to end through agentd and the controller.

use agentd::collect::clickhouse::{ClickHouseCollector, ClickHouseOptions, Query};
use anyhow::{Result, bail};
use medic_proto::v1::{MetricKind, Sample};
use medic_tests::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn options(url: &str, timeout: Duration) -> ClickHouseOptions {
    ClickHouseOptions {
        url: url.to_string(),
        user: None,
        password: None,
        timeout,
        // Long enough that the first round's query-log window covers everything this test ran.
        interval: Duration::from_secs(120),
    }
}

fn label<'a>(s: &'a Sample, name: &str) -> Option<&'a str> {
    s.labels.iter().find(|l| l.name == name).map(|l| l.value.as_str())
}

/// The value of the one sample of `metric` whose labels include all of `labels`.
fn value(out: &[Sample], metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    out.iter().find(|s| s.metric == metric && labels.iter().all(|(n, v)| label(s, n) == Some(v))).map(|s| s.value)
}

fn must(out: &[Sample], metric: &str, labels: &[(&str, &str)]) -> f64 {
    match value(out, metric, labels) {
        Some(v) => v,
        None => {
            let names: std::collections::BTreeSet<&str> = out.iter().map(|s| s.metric.as_str()).collect();
            panic!("no {metric}{labels:?} among {} samples: {names:?}", out.len())
        }
    }
}

async fn timed(c: &mut ClickHouseCollector) -> (Vec<Sample>, Duration) {
    let start = Instant::now();
    let out = c.collect(chrono::Utc::now().timestamp_millis()).await;
    (out, start.elapsed())
}

async fn run_failing(ch: &ClickHouseProc, n: usize) -> Result<()> {
    for _ in 0..n {
        if ch.query("SELECT throwIf(1)").await.is_ok() {
            bail!("throwIf(1) did not fail");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collects_a_real_server_and_reads_the_query_log_incrementally() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(&dir.path().join("ch")).await?;
    ch.query("CREATE DATABASE medic_t").await?;
    ch.query("CREATE TABLE medic_t.events (d Date, x UInt64) ENGINE = MergeTree PARTITION BY d ORDER BY x").await?;
    // Keep the parts apart so the part counts are deterministic.
    ch.query("SYSTEM STOP MERGES medic_t.events").await?;
    const INSERTS: u64 = 5;
    for i in 0..INSERTS {
        ch.query(&format!("INSERT INTO medic_t.events VALUES ('2026-01-01', {i}), ('2026-01-01', {})", i + 100))
            .await?;
    }
    ch.query("INSERT INTO medic_t.events VALUES ('2026-01-02', 1)").await?;
    for _ in 0..3 {
        ch.query("SELECT count() FROM medic_t.events").await?;
    }
    run_failing(&ch, 1).await?;
    ch.query("SYSTEM FLUSH LOGS").await?;

    let mut c = ClickHouseCollector::new(options(&ch.url(), Duration::from_secs(5)));
    let (out, took) = timed(&mut c).await;
    eprintln!("first round: {} samples in {took:?}", out.len());

    assert_eq!(must(&out, "clickhouse_up", &[]), 1.0);
    assert!(must(&out, "clickhouse_uptime_seconds", &[]) >= 0.0);
    let version = out.iter().find(|s| s.metric == "clickhouse_version_info").and_then(|s| label(s, "version"));
    assert!(version.is_some_and(|v| v.starts_with("26.")), "version: {version:?}");
    assert!(must(&out, "clickhouse_scrape_duration_seconds", &[]) > 0.0);
    for q in Query::ALL {
        assert_eq!(c.scrape_errors(q), 0, "query {} failed against the real engine", q.name());
        assert_eq!(must(&out, "clickhouse_scrape_errors_total", &[("query", q.name())]), 0.0);
    }

    let t = [("database", "medic_t"), ("table", "events")];
    assert_eq!(must(&out, "clickhouse_table_parts", &t), INSERTS as f64 + 1.0);
    assert_eq!(must(&out, "clickhouse_table_rows", &t), 2.0 * INSERTS as f64 + 1.0);
    assert!(must(&out, "clickhouse_table_bytes", &t) > 0.0);
    assert!(must(&out, "clickhouse_table_max_parts_per_partition", &t) >= INSERTS as f64);
    // query_log is a MergeTree table of the system database, included like any other.
    assert!(value(&out, "clickhouse_table_parts", &[("database", "system"), ("table", "query_log")]).is_some());

    let events = out.iter().filter(|s| s.metric.starts_with("clickhouse_events_")).collect::<Vec<_>>();
    assert!(events.len() > 10, "{} event counters", events.len());
    assert!(events.iter().all(|s| s.kind == MetricKind::Counter as i32 && s.metric.ends_with("_total")));
    assert!(must(&out, "clickhouse_events_Query_total", &[]) >= 4.0);
    assert!(value(&out, "clickhouse_metrics_Query", &[]).is_some(), "system.metrics");
    assert!(out.iter().any(|s| s.metric.starts_with("clickhouse_async_metrics_")), "system.asynchronous_metrics");
    assert!(
        must(&out, "clickhouse_errors_total", &[("name", "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO"), ("code", "395")])
            >= 1.0
    );

    let disk = [("disk", "default")];
    assert!(must(&out, "clickhouse_disk_total_bytes", &disk) > 0.0);
    assert!(must(&out, "clickhouse_disk_free_bytes", &disk) > 0.0);
    assert!(value(&out, "clickhouse_disk_unreserved_bytes", &disk).is_some());
    assert_eq!(must(&out, "clickhouse_merges_running", &[]), 0.0);

    // No replicated tables on this engine: the query runs and reports nothing.
    assert!(!out.iter().any(|s| s.metric.starts_with("clickhouse_replica_")));

    for q in ["0.5", "0.9", "0.99"] {
        assert!(must(&out, "clickhouse_query_duration_seconds", &[("quantile", q)]) >= 0.0);
    }
    let finished = must(&out, "clickhouse_query_log_queries_total", &[("type", "QueryFinish")]);
    assert!(finished >= 4.0, "finished {finished}");
    let failed = must(&out, "clickhouse_failed_queries_total", &[]);
    assert_eq!(failed, 1.0, "the one throwIf");
    assert_eq!(must(&out, "clickhouse_query_log_queries_total", &[("type", "ExceptionWhileProcessing")]), 1.0);

    // Second round: only what happened since the first is added.
    run_failing(&ch, 2).await?;
    ch.query("SELECT 1").await?;
    ch.query("SYSTEM FLUSH LOGS").await?;
    let (out2, took2) = timed(&mut c).await;
    eprintln!("second round: {} samples in {took2:?}", out2.len());
    assert_eq!(must(&out2, "clickhouse_failed_queries_total", &[]), failed + 2.0);
    let finished2 = must(&out2, "clickhouse_query_log_queries_total", &[("type", "QueryFinish")]);
    assert!(finished2 >= finished + 1.0, "{finished} then {finished2}");
    // The agent's own queries are not counted, or every round would count the previous one's.
    assert!(finished2 < finished + 20.0, "{finished} then {finished2}");

    // Third round, nothing failed in between.
    ch.query("SYSTEM FLUSH LOGS").await?;
    let (out3, took3) = timed(&mut c).await;
    eprintln!("third round: {} samples in {took3:?}", out3.len());
    assert_eq!(must(&out3, "clickhouse_failed_queries_total", &[]), failed + 2.0);

    // A few more rounds for a steadier time per round.
    let mut total = Duration::ZERO;
    for _ in 0..5 {
        let (o, t) = timed(&mut c).await;
        assert_eq!(must(&o, "clickhouse_up", &[]), 1.0);
        total += t;
    }
    eprintln!("steady state: {:?} per round", total / 5);
    Ok(())
}

#[tokio::test]
async fn a_closed_port_is_reported_down_at_once() -> Result<()> {
    let port = free_port();
    let mut c = ClickHouseCollector::new(options(&format!("http://127.0.0.1:{port}"), Duration::from_secs(5)));
    let (out, took) = timed(&mut c).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(must(&out, "clickhouse_up", &[]), 0.0);
    assert!(must(&out, "clickhouse_scrape_duration_seconds", &[]) < 1.0);
    assert_eq!(must(&out, "clickhouse_scrape_errors_total", &[("query", "version")]), 1.0);
    assert!(!out.iter().any(|s| s.metric.starts_with("clickhouse_table_")));
    assert!(c.down_reason().is_some());
    Ok(())
}

#[tokio::test]
async fn a_server_that_never_answers_is_reported_down_after_the_timeout() -> Result<()> {
    // Accepts connections (the kernel completes the handshake) but never reads or writes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let timeout = Duration::from_millis(500);
    let mut c = ClickHouseCollector::new(options(&url, timeout));
    let (out, took) = timed(&mut c).await;
    assert!(took >= timeout && took < timeout + Duration::from_millis(500), "took {took:?}");
    assert_eq!(must(&out, "clickhouse_up", &[]), 0.0);
    let (out, took) = timed(&mut c).await;
    assert!(took < timeout + Duration::from_millis(500), "second round took {took:?}");
    assert_eq!(must(&out, "clickhouse_scrape_errors_total", &[("query", "version")]), 2.0);
    drop(listener);
    Ok(())
}

/// A proxy in front of the engine that answers like a server where the agent's user is read-only
/// (`readonly=1`, common for monitoring users; the engine itself does not enforce it): a request
/// changing a setting gets READONLY (164). Returns its port and how many requests it refused.
async fn readonly_proxy(upstream: u16) -> Result<(u16, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = refused.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                // The crate writes a small request in one go: its head (and body) come in one read.
                let mut buf = vec![0u8; 64 << 10];
                let n = client.read(&mut buf).await?;
                let head = String::from_utf8_lossy(&buf[..n]);
                if head.lines().next().is_some_and(|l| l.contains("max_execution_time")) {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = "Code: 164. DB::Exception: Cannot modify 'max_execution_time' setting in readonly mode. \
                                (READONLY) (version 26.9.2.1)";
                    let resp = format!(
                        "HTTP/1.1 500 Internal Server Error\r\nX-ClickHouse-Exception-Code: 164\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    client.write_all(resp.as_bytes()).await?;
                    return Ok::<_, std::io::Error>(());
                }
                let mut up = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await?;
                up.write_all(&buf[..n]).await?;
                tokio::io::copy_bidirectional(&mut client, &mut up).await?;
                Ok(())
            });
        }
    });
    Ok((port, refused))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_user_is_served_without_server_side_timeouts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(&dir.path().join("ch")).await?;
    let (port, refused) = readonly_proxy(ch.port).await?;
    let mut c = ClickHouseCollector::new(options(&format!("http://127.0.0.1:{port}"), Duration::from_secs(5)));
    let (out, _) = timed(&mut c).await;
    assert_eq!(must(&out, "clickhouse_up", &[]), 1.0, "the first round already falls back");
    assert_eq!(refused.load(Ordering::SeqCst), 1);
    assert_eq!(c.scrape_errors(Query::Version), 0);
    let (out, _) = timed(&mut c).await;
    assert_eq!(must(&out, "clickhouse_up", &[]), 1.0);
    assert_eq!(refused.load(Ordering::SeqCst), 1, "the setting is not sent again");
    for q in Query::ALL {
        assert_eq!(c.scrape_errors(q), 0, "{}", q.name());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentd_ships_clickhouse_metrics_to_the_controller() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(&dir.path().join("ch")).await?;
    ch.query("CREATE TABLE default.e2e (x UInt64) ENGINE = MergeTree ORDER BY x").await?;
    ch.query("INSERT INTO default.e2e VALUES (1)").await?;
    let controller = ControllerProc::start(&dir.path().join("c"), free_port(), free_port(), &[]).await?;
    // The engine ignores credentials; this checks the file is read and its content never logged.
    let pw = dir.path().join("ch-password");
    std::fs::write(&pw, "e2e-secret-pw\n")?;
    let (url, pw) = (ch.url(), pw.to_string_lossy().to_string());
    let agent = AgentProc::start(
        &controller.grpc_url(),
        "ch-node",
        &dir.path().join("spool"),
        free_port(),
        &["--interval", "500ms", "--clickhouse-url", &url, "--clickhouse-password-file", &pw],
    )
    .await?;
    let path = format!("/api/v1/metrics?node={}", agent.node);
    eventually(Duration::from_secs(15), || async {
        let names: Vec<String> = get_json(&controller.url(&path)).await?;
        let has = |n: &str| names.iter().any(|m| m == n);
        if has("clickhouse_up") && has("clickhouse_table_parts") && has("node_load1") {
            Ok(Some(()))
        } else {
            bail!("metrics so far: {} names, clickhouse_up: {}", names.len(), has("clickhouse_up"))
        }
    })
    .await?;
    let series: Vec<serde_json::Value> =
        get_json(&controller.url("/api/v1/series?node=ch-node&metric=clickhouse_up&limit=100")).await?;
    assert!(!series.is_empty() && series.iter().all(|p| p["value"] == 1.0), "clickhouse_up: {series:?}");
    let parts: Vec<serde_json::Value> =
        get_json(&controller.url("/api/v1/series?node=ch-node&metric=clickhouse_table_parts&limit=1000")).await?;
    assert!(
        parts
            .iter()
            .any(|p| p["labels"]["table"] == "e2e" && p["labels"]["database"] == "default" && p["value"] == 1.0),
        "clickhouse_table_parts: {parts:?}"
    );
    // agentd is also the node's ClickHouse exporter: Prometheus can scrape the same figures.
    let exposed = agent.metrics().await?;
    assert_eq!(
        exposed.get("clickhouse_up"),
        Some(&1.0),
        "agentd /metrics lacks clickhouse_up: {:?}",
        exposed.keys().filter(|k| k.contains("clickhouse")).collect::<Vec<_>>()
    );
    assert_eq!(exposed.get("clickhouse_table_parts{database=\"default\",table=\"e2e\"}"), Some(&1.0));
    assert!(exposed.keys().any(|k| k.starts_with("clickhouse_events_Query_total")), "counters keep their _total");
    let log = std::fs::read_to_string(dir.path().join("ch-node.out"))?;
    assert!(!log.contains("e2e-secret-pw"), "the password leaked into the agent's log");
    assert!(log.contains("collecting ClickHouse metrics"), "{log}");
    Ok(())
}

/// A hung ClickHouse (SIGSTOP) is reported down within the timeout, and the node's host metrics
/// keep arriving every interval meanwhile: the ClickHouse collector never holds up the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_clickhouse_is_reported_down_while_host_metrics_keep_flowing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(&dir.path().join("ch")).await?;
    let controller = ControllerProc::start(&dir.path().join("c"), free_port(), free_port(), &[]).await?;
    let url = ch.url();
    let _agent = AgentProc::start(
        &controller.grpc_url(),
        "hung",
        &dir.path().join("spool"),
        free_port(),
        &["--interval", "500ms", "--clickhouse-url", &url, "--clickhouse-timeout", "1s"],
    )
    .await?;
    let points = |metric: &'static str| {
        let c = &controller;
        async move {
            let p: Vec<serde_json::Value> =
                get_json(&c.url(&format!("/api/v1/series?node=hung&metric={metric}&limit=100000"))).await?;
            Ok::<_, anyhow::Error>(p)
        }
    };
    eventually(Duration::from_secs(15), || async {
        Ok(points("clickhouse_up").await?.iter().any(|p| p["value"] == 1.0).then_some(()))
    })
    .await?;
    ch.pause();
    let paused_at = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let down = points("clickhouse_up").await?;
    let load = points("node_load1").await?;
    ch.resume();
    let after = |p: &[serde_json::Value]| {
        p.iter().filter(|x| x["timestamp_ms"].as_i64().is_some_and(|t| t > paused_at)).cloned().collect::<Vec<_>>()
    };
    let (down, load) = (after(&down), after(&load));
    assert!(down.iter().any(|p| p["value"] == 0.0), "reported down while hung: {down:?}");
    // Six seconds at 500 ms: well over half of the rounds' host samples arrived while it hung.
    assert!(load.len() >= 6, "host metrics kept flowing: {} node_load1 points in 6 s", load.len());
    Ok(())
}
