//! Every shipped alert expression runs against a real Prometheus scraping a live fleet (a
//! controller with rules, an agent watching a real ClickHouse engine), evaluates without error,
//! and every series it reads exists — so an alert cannot sit silent because a metric was renamed
//! or never exported. Series that exist only during a fault are listed in [`FAULT_ONLY`] with the
//! fault that creates them, and the test injects those faults and checks them then; series that
//! this machine cannot produce at all (replication needs ClickHouse Keeper) are listed in
//! [`UNAVAILABLE`] with the reason.

use anyhow::{Context, Result, bail};
use medic_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// Selectors with data only while something is wrong, and the fault this test injects for them.
const FAULT_ONLY: &[(&str, &str)] = &[
    ("clickhouse_events_DelayedInserts_total", "too many parts: tiny inserts into a table with merges stopped"),
    ("clickhouse_events_RejectedInserts_total", "too many parts: tiny inserts into a table with merges stopped"),
    (r#"clickhouse_detached_parts{reason!~"ignored|clone"}"#, "a partition detached by hand"),
    (r#"clickhouse_errors_total{name="MEMORY_LIMIT_EXCEEDED"}"#, "a query over its memory limit"),
    ("clickhouse_events_DNSError_total", "a query reading from a host name that does not resolve"),
    ("clickhouse_events_DistributedConnectionFailAtAll_total", "a remote() query to a port nobody listens on"),
    (
        r#"medic_forecast_exhaustion_seconds{resource=~"clickhouse_disk.*|filesystem.*"}"#,
        "a filesystem filling for three days (history from a scripted agent)",
    ),
    ("medic_ingest_streams_rejected_total", "an agent speaking an unknown protocol version"),
    (r#"medic_actions_total{outcome=~"failed|rolled_back|escalated"}"#, "a rule whose action does not help"),
];

/// Selectors no fault on this machine can produce, and why.
const UNAVAILABLE: &[(&str, &str)] = &[
    ("clickhouse_replica_is_readonly", "needs a Replicated table: the test engine has no ClickHouse Keeper"),
    ("clickhouse_replica_is_session_expired", "needs a Replicated table: the test engine has no ClickHouse Keeper"),
    ("clickhouse_replica_absolute_delay_seconds", "needs a Replicated table: the test engine has no ClickHouse Keeper"),
    ("clickhouse_replica_queue_size", "needs a Replicated table: the test engine has no ClickHouse Keeper"),
    ("clickhouse_replica_active_replicas", "needs a Replicated table: the test engine has no ClickHouse Keeper"),
    ("clickhouse_replica_total_replicas", "needs a Replicated table: the test engine has no ClickHouse Keeper"),
    ("clickhouse_replica_lost_part_count", "needs a Replicated table: the test engine has no ClickHouse Keeper"),
    ("clickhouse_events_ZooKeeperHardwareExceptions_total", "needs a ClickHouse Keeper connection to lose"),
];

struct AlertRule {
    name: String,
    expr: String,
}

fn alert_rules() -> Result<Vec<AlertRule>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let mut out = Vec::new();
    for f in ["medic-rules.yaml", "clickhouse-rules.yaml"] {
        let v: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(dir.join(f))?)?;
        for g in v["groups"].as_array().into_iter().flatten() {
            for r in g["rules"].as_array().into_iter().flatten() {
                if let (Some(name), Some(expr)) = (r["alert"].as_str(), r["expr"].as_str()) {
                    out.push(AlertRule { name: name.into(), expr: expr.trim().into() });
                }
            }
        }
    }
    Ok(out)
}

const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
];

/// The vector selectors of a PromQL expression: each metric name with the `{…}` right after it.
/// Enough PromQL for our rule files: skips strings, label lists after by/on/…, range and
/// subquery brackets, function names and keywords.
fn selectors(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut after_grouping = false;
    while i < b.len() {
        let c = b[i] as char;
        if c == '"' || c == '\'' {
            i += 1;
            while i < b.len() && b[i] as char != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '[' {
            while i < b.len() && b[i] != b']' {
                i += 1;
            }
            i += 1;
        } else if c == '(' && after_grouping {
            // by (a, b): label names, not metrics.
            while i < b.len() && b[i] != b')' {
                i += 1;
            }
            i += 1;
            after_grouping = false;
        } else if c.is_ascii_digit() {
            // A number or a duration (0.20, 1e3, 5m): never a metric.
            while i < b.len() && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < b.len() && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let mut j = i;
            while j < b.len() && (b[j] as char).is_whitespace() {
                j += 1;
            }
            let next = b.get(j).copied().map(char::from);
            if ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&word) {
                after_grouping = true;
                continue;
            }
            // `sum by (…) (…)`: an aggregation whose grouping comes before its argument.
            let next_word: String = expr[j..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            let aggregation = next_word == "by" || next_word == "without";
            if KEYWORDS.contains(&word.to_lowercase().as_str()) || next == Some('(') || aggregation {
                continue;
            }
            let mut sel = word.to_string();
            if next == Some('{') {
                let close = expr[j..].find('}').map(|k| j + k + 1).unwrap_or(b.len());
                sel.push_str(&expr[j..close]);
                i = close;
            }
            out.push(sel);
        } else if c == '{' {
            // A selector without a metric name, e.g. {__name__=~"…"}.
            let close = expr[i..].find('}').map(|k| i + k + 1).unwrap_or(b.len());
            out.push(expr[i..close].to_string());
            i = close;
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn selectors_are_read_off_promql_as_prometheus_would() {
    assert_eq!(
        selectors(
            r#"sum by (instance, reason) (increase(medic_ingest_streams_rejected_total{reason!~"a|b"}[10m])) > 5"#
        ),
        [r#"medic_ingest_streams_rejected_total{reason!~"a|b"}"#]
    );
    assert_eq!(
        selectors(
            "clickhouse_disk_free_bytes / clickhouse_disk_total_bytes < 0.20 and clickhouse_disk_total_bytes > 0"
        ),
        ["clickhouse_disk_free_bytes", "clickhouse_disk_total_bytes", "clickhouse_disk_total_bytes"]
    );
    assert_eq!(selectors(r#"absent(up{job="medic-controller"})"#), [r#"up{job="medic-controller"}"#]);
    assert_eq!(
        selectors("a * on (instance) group_left (version) b offset 5m"),
        ["a", "b"],
        "label lists and keywords are not metrics"
    );
}

/// Result of an instant query: number of series, or the error Prometheus gave.
async fn instant(prom: &PrometheusProc, promql: &str) -> Result<usize> {
    let url = prom.url("/api/v1/query");
    let v: serde_json::Value = client().get(&url).query(&[("query", promql)]).send().await?.json().await?;
    if v["status"] != "success" {
        bail!("{promql}: {}", v["error"]);
    }
    Ok(v["data"]["result"].as_array().map(Vec::len).unwrap_or(0))
}

fn listed(table: &[(&'static str, &'static str)], sel: &str) -> Option<&'static str> {
    table.iter().find(|(s, _)| *s == sel).map(|(_, why)| *why)
}

/// An agent that says hello with a protocol version no controller speaks.
async fn outdated_agent(controller: &str) -> Result<()> {
    use medic_proto::v1::{AgentMessage, Hello, agent_message, telemetry_client::TelemetryClient};
    let mut client = TelemetryClient::connect(controller.to_string()).await?;
    let hello = Hello { node: "old-1".into(), protocol_version: 999, spool_id: "s".into(), ..Default::default() };
    let msgs = vec![AgentMessage { msg: Some(agent_message::Msg::Hello(hello)) }];
    match client.stream(tokio_stream::iter(msgs)).await {
        Ok(resp) => {
            let mut inbound = resp.into_inner();
            let refused = inbound.message().await.is_err();
            anyhow::ensure!(refused, "an unknown protocol version must be refused");
        }
        Err(status) => anyhow::ensure!(status.code() == tonic::Code::FailedPrecondition, "{status}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_expression_runs_on_a_live_fleet_and_reads_series_that_exist() -> Result<()> {
    let rules = alert_rules()?;
    assert!(rules.len() >= 40, "both rule files are read: {}", rules.len());
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(&dir.path().join("ch")).await?;
    ch.query(
        "CREATE TABLE default.events (ts DateTime, v UInt64) ENGINE = MergeTree PARTITION BY toYYYYMM(ts) ORDER BY ts",
    )
    .await?;
    ch.query("INSERT INTO default.events SELECT now() - number, number FROM numbers(1000)").await?;
    // Mutations are part of normal life: the mutation gauges exist from the first one on.
    ch.query("ALTER TABLE default.events DELETE WHERE v = 1").await?;
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir_all(&rules_dir)?;
    std::fs::write(
        rules_dir.join("r.yaml"),
        "rules:\n  - name: watch-load\n    when:\n      threshold: { metric: node_load1, op: \">\", value: 1000 }\n    do: [ { notify: { severity: info } } ]\n",
    )?;
    let r = rules_dir.to_string_lossy().to_string();
    let controller = ControllerProc::start(
        &dir.path().join("c"),
        free_port(),
        free_port(),
        &["--rules-dir", &r, "--remediation-interval", "500ms", "--clickhouse-node-url", &ch.url()],
    )
    .await?;
    let agent = AgentProc::start(
        &controller.grpc_url(),
        "alerts-1",
        &dir.path().join("spool"),
        free_port(),
        &["--interval", "1s", "--clickhouse-url", &ch.url(), "--clickhouse-timeout", "1s"],
    )
    .await?;
    let prom =
        PrometheusProc::start(&dir.path().join("prom"), &fleet_scrape_config(agent.http, controller.http)).await?;

    // Queries keep running, as on any live system, so the query-log quantiles have data.
    let ch_url = ch.url();
    let load = tokio::spawn(async move {
        loop {
            let _ = client().post(&ch_url).body("SELECT count() FROM default.events WHERE v > 10").send().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });

    let all: BTreeMap<String, Vec<String>> = rules.iter().map(|r| (r.name.clone(), selectors(&r.expr))).collect();
    let healthy = eventually(Duration::from_secs(45), || async {
        let mut missing = BTreeSet::new();
        for r in &rules {
            instant(&prom, &r.expr).await.with_context(|| format!("alert {}", r.name))?;
            for s in &all[&r.name] {
                if listed(FAULT_ONLY, s).is_none() && listed(UNAVAILABLE, s).is_none() && instant(&prom, s).await? == 0
                {
                    missing.insert(format!("{}: {s}", r.name));
                }
            }
        }
        if missing.is_empty() {
            Ok(Some(()))
        } else {
            bail!(
                "{} selectors without data on a healthy fleet:\n{}",
                missing.len(),
                missing.into_iter().collect::<Vec<_>>().join("\n")
            )
        }
    })
    .await;
    healthy?;

    // The faults, all at once: they do not interfere.
    ch.query(
        "CREATE TABLE default.tiny (x UInt64) ENGINE = MergeTree ORDER BY x
         SETTINGS parts_to_delay_insert = 2, parts_to_throw_insert = 4, max_delay_to_insert = 1",
    )
    .await?;
    ch.query("SYSTEM STOP MERGES default.tiny").await?;
    for i in 0..8 {
        let _ = ch.query(&format!("INSERT INTO default.tiny VALUES ({i})")).await;
    }
    let partition = ch.query("SELECT any(partition_id) FROM system.parts WHERE table = 'events' AND active").await?;
    ch.query(&format!("ALTER TABLE default.events DETACH PARTITION ID '{}'", partition.trim())).await?;
    let refused = ch
        .query("SELECT count() FROM (SELECT number % 1000000 AS k FROM numbers(5000000) GROUP BY k) SETTINGS max_memory_usage = 1000000")
        .await;
    anyhow::ensure!(refused.is_err(), "the query must exceed its memory limit");
    let _ = ch.query("SELECT * FROM url('http://medic-no-such-host.invalid/x.csv', CSV, 'a String')").await;
    let _ = ch.query(&format!("SELECT * FROM remote('127.0.0.1:{}', system.one)", free_port())).await;
    outdated_agent(&controller.grpc_url()).await?;
    std::fs::write(
        rules_dir.join("hopeless.yaml"),
        "rules:\n  - name: hopeless\n    when:\n      threshold: { metric: node_load1, op: \">=\", value: 0 }\n    do: [ { sql: { statement: SYSTEM FLUSH LOGS } } ]\n    verify: { clears_within: 1s }\n",
    )?;
    let mut filling = SyntheticAgent::connect(&controller.grpc_url(), "fill-1", &[]).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let data: &[(&str, &str)] = &[("mountpoint", "/data")];
    let history: Vec<GaugeSample> = (1..=432i64)
        .rev()
        .map(|i| {
            let t = now - i * 600_000;
            (
                "node_filesystem_avail_bytes",
                data,
                t,
                1e12 - 1e12 * 0.1 / 86_400_000.0 * (t - now + 3 * 86_400_000) as f64,
            )
        })
        .collect();
    filling.send(&history).await?;

    let faulted = eventually(Duration::from_secs(60), || async {
        let mut missing = Vec::new();
        for (sel, fault) in FAULT_ONLY {
            if instant(&prom, sel).await? == 0 {
                missing.push(format!("{sel} (fault: {fault})"));
            }
        }
        if missing.is_empty() {
            Ok(Some(()))
        } else {
            bail!("{} selectors without data during their fault:\n{}", missing.len(), missing.join("\n"))
        }
    })
    .await;
    load.abort();
    faulted?;

    // Every listed selector is really read by some alert (a stale entry would hide a gap).
    let used: BTreeSet<&String> = all.values().flatten().collect();
    for (sel, _) in FAULT_ONLY.iter().chain(UNAVAILABLE) {
        assert!(used.contains(&sel.to_string()), "{sel} is listed but no alert reads it");
    }
    for r in &rules {
        instant(&prom, &r.expr).await.with_context(|| format!("alert {} during the faults", r.name))?;
    }
    Ok(())
}
