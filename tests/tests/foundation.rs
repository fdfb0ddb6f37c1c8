//! The telemetry path, end to end, with real processes on loopback: what an agent collects
//! reaches the controller's store exactly once, whatever crashes in between.

use anyhow::{Result, bail};
use medic_tests::*;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Appends numbered lines to each file until stopped; returns what it wrote per file.
fn log_writer(files: Vec<PathBuf>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Vec<String>>> {
    std::thread::spawn(move || {
        let mut written: Vec<Vec<String>> = vec![Vec::new(); files.len()];
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            for (i, f) in files.iter().enumerate() {
                let line = format!("2026.11.24 06:00:00.000000 [ 1 ] {{}} <Information> test: file {i} line {n}");
                let mut fh = std::fs::OpenOptions::new().create(true).append(true).open(f).expect("open test log");
                writeln!(fh, "{line}").expect("write test log");
                written[i].push(line);
            }
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        written
    })
}

async fn stored_log_lines(c: &ControllerProc, node: &str) -> Result<Vec<String>> {
    let logs: Vec<serde_json::Value> = get_json(&c.url(&format!("/api/v1/logs?node={node}&limit=10000"))).await?;
    Ok(logs.iter().filter_map(|l| l["message"].as_str().map(str::to_string)).collect())
}

/// The part of a line that identifies it, whether the tailer parsed it (ClickHouse format:
/// the message is what follows the logger) or kept it raw.
fn key(line: &str) -> &str {
    line.find("file ").map_or(line, |i| &line[i..])
}

fn assert_exactly_once(node: &str, written: &[String], stored: &[String]) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in stored {
        *counts.entry(key(s)).or_default() += 1;
    }
    let missing: Vec<&String> = written.iter().filter(|w| !counts.contains_key(key(w))).collect();
    let dups: Vec<(&&str, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty(),
        "{node}: {} of {} log lines never stored, e.g. {:?}",
        missing.len(),
        written.len(),
        missing.first()
    );
    assert!(dups.is_empty(), "{node}: log lines stored more than once: {dups:?}");
    assert_eq!(stored.len(), written.len(), "{node}: stored log records vs lines written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_agents_lose_and_duplicate_nothing_when_controller_and_agent_are_killed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    crash_scenario(dir.path(), &[]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_clickhouse_stored_rows_equal_produced_rows_across_crashes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(&dir.path().join("clickhouse")).await?;
    let url = ch.url();
    let nodes = crash_scenario(dir.path(), &["--clickhouse-url", &url]).await?;
    for node in nodes {
        let name = node["node"].as_str().unwrap_or_default();
        // The agents keep streaming: compare against the batches the snapshot accounts for.
        let last_seq = node["last_seq"].as_u64().unwrap_or(0);
        let rows: u64 = ch
            .query(&format!("SELECT count() FROM medic.samples WHERE node = '{name}' AND seq <= {last_seq}"))
            .await?
            .trim()
            .parse()?;
        if Some(rows) != node["samples"].as_u64() {
            let detail = ch
                .query(&format!(
                    "SELECT seq, groupArray((commit, c)) FROM (SELECT seq, commit, count() c FROM medic.samples
                     WHERE node = '{name}' GROUP BY seq, commit) GROUP BY seq HAVING length(groupArray(commit)) > 1 ORDER BY seq"
                ))
                .await?;
            let commits = ch.query("SELECT version, node FROM medic.nodes ORDER BY version").await?;
            panic!(
                "{name}: {rows} rows in medic.samples, {} samples in stored batches; seqs stored under several commits:\n{detail}\ncommits:\n{commits}",
                node["samples"]
            );
        }
        let dup_rows = ch
            .query(&format!(
                "SELECT count() FROM (SELECT seq, metric, labels, ts FROM medic.samples WHERE node = '{name}'
                 GROUP BY seq, metric, labels, ts HAVING count() > 1)"
            ))
            .await?;
        assert_eq!(dup_rows.trim(), "0", "{name}: duplicated rows");
        let seqs: u64 = ch
            .query(&format!("SELECT uniqExact(seq) FROM medic.samples WHERE node = '{name}'"))
            .await?
            .trim()
            .parse()?;
        assert!(seqs > 10, "{name}: {seqs} batches with samples");
    }
    Ok(())
}

/// Three agents stream; the controller is killed -9 twice and one agent once, each restarted on
/// its own state. Returns the controller's final view of the nodes, after checking that every
/// batch and every log line was stored exactly once.
async fn crash_scenario(dir: &Path, controller_args: &[&str]) -> Result<Vec<serde_json::Value>> {
    let (grpc, http) = (free_port(), free_port());
    let data = dir.join("controller");
    let mut controller = ControllerProc::start(&data, grpc, http, controller_args).await?;

    let logs: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("app-{i}.log"))).collect();
    for l in &logs {
        std::fs::write(l, "")?;
    }
    let stop_logs = Arc::new(AtomicBool::new(false));
    let writer = log_writer(logs.clone(), stop_logs.clone());

    let mut agents = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let spool = dir.join(format!("spool-{i}"));
        let log = log.to_string_lossy().to_string();
        let args = ["--interval", "200ms", "--log-file", log.as_str(), "--read-from", "beginning"];
        agents.push((
            AgentProc::start(&controller.grpc_url(), &format!("node-{i}"), &spool, free_port(), &args).await?,
            args.map(String::from),
        ));
    }
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));

    pause(1500).await;
    controller.proc.kill9();
    pause(800).await;
    controller = ControllerProc::start(&data, grpc, http, controller_args).await?;
    pause(1200).await;

    let (a1, args1) = &mut agents[1];
    a1.proc.kill9();
    pause(500).await;
    let args: Vec<&str> = args1.iter().map(String::as_str).collect();
    *a1 = AgentProc::start(&controller.grpc_url(), "node-1", &a1.spool_dir.clone(), a1.http, &args).await?;
    pause(1000).await;

    controller.proc.kill9();
    pause(500).await;
    controller = ControllerProc::start(&data, grpc, http, controller_args).await?;
    pause(1500).await;

    stop_logs.store(true, Ordering::Relaxed);
    let written = writer.join().map_err(|_| anyhow::anyhow!("log writer panicked"))?;

    let mut final_nodes = Vec::new();
    for (i, (agent, _)) in agents.iter().enumerate() {
        let node = drained(agent, &controller).await?;
        final_nodes.push(node.clone());
        let last_seq = node["last_seq"].as_u64().unwrap_or(0);
        assert!(last_seq > 10, "{}: only {last_seq} batches in ~7 s at 200 ms", agent.node);
        assert_eq!(node["seq_gaps"], 0, "{}: batches lost: {node}", agent.node);
        assert_eq!(node["batches"].as_u64(), Some(last_seq), "{}: every seq stored exactly once: {node}", agent.node);
        let lines = eventually(Duration::from_secs(10), || async {
            let stored = stored_log_lines(&controller, &agent.node).await?;
            if stored.len() >= written[i].len() {
                Ok(Some(stored))
            } else {
                bail!("{} of {} lines stored", stored.len(), written[i].len())
            }
        })
        .await?;
        assert_exactly_once(&agent.node, &written[i], &lines);
    }

    // The data survived three controller processes: host metrics are queryable for every node.
    for (agent, _) in &agents {
        let names: Vec<String> = get_json(&controller.url(&format!("/api/v1/metrics?node={}", agent.node))).await?;
        assert!(names.iter().any(|n| n == "medic_agent_resident_memory_bytes"), "{}: {names:?}", agent.node);
    }
    Ok(final_nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_truncation_lose_no_log_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let controller = ControllerProc::start(&dir.path().join("c"), free_port(), free_port(), &[]).await?;
    let log = dir.path().join("server.log");
    std::fs::write(&log, "")?;
    let glob = log.to_string_lossy().to_string();
    let agent = AgentProc::start(
        &controller.grpc_url(),
        "rot",
        &dir.path().join("spool"),
        free_port(),
        &["--interval", "1s", "--log-file", &glob],
    )
    .await?;
    let mut expected = Vec::new();
    let mut write = |n: std::ops::Range<usize>, path: &Path| -> Result<()> {
        let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path)?;
        for i in n {
            let line = format!("line {i}");
            writeln!(f, "{line}")?;
            expected.push(line);
        }
        Ok(())
    };
    write(0..100, &log)?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // logrotate's default: rename, then the application re-creates the file.
    std::fs::rename(&log, dir.path().join("server.log.1"))?;
    write(100..150, &dir.path().join("server.log.1"))?; // the app still writes to its open fd
    write(150..250, &log)?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // copytruncate: the file is emptied in place.
    std::fs::OpenOptions::new().write(true).open(&log)?.set_len(0)?;
    write(250..300, &log)?;

    let stored = eventually(Duration::from_secs(15), || async {
        let stored = stored_log_lines(&controller, "rot").await?;
        if stored.len() >= expected.len() {
            Ok(Some(stored))
        } else {
            bail!("{} of {} lines stored", stored.len(), expected.len())
        }
    })
    .await?;
    assert_exactly_once("rot", &expected, &stored);
    drop(agent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_spool_tail_is_skipped_and_counted_and_everything_before_it_is_delivered() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (grpc, http, agent_http) = (free_port(), free_port(), free_port());
    let spool = dir.path().join("spool");
    let url = format!("http://127.0.0.1:{grpc}");
    let args = ["--interval", "200ms"];
    // No controller yet: the agent keeps everything in its spool.
    let mut agent = AgentProc::start(&url, "torn", &spool, agent_http, &args).await?;
    eventually(Duration::from_secs(10), || async {
        let m = agent.metrics().await?;
        Ok((m.get("medic_agent_spool_last_seq").copied().unwrap_or(0.0) >= 5.0).then_some(()))
    })
    .await?;
    agent.proc.kill9();

    // Power loss mid-append: half a record of garbage at the end of the newest segment.
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&spool)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    let newest = segments.last().ok_or_else(|| anyhow::anyhow!("no spool segment in {}", spool.display()))?;
    let records_before = std::fs::metadata(newest)?.len();
    let mut f = std::fs::OpenOptions::new().append(true).open(newest)?;
    f.write_all(&[0x4d, 0x45, 0x44, 0x31, 0xff, 0xff, 0x00, 0x00, 0x12, 0x34])?;
    f.write_all(&[0u8; 300])?;
    drop(f);
    assert!(records_before > 0);

    let controller = ControllerProc::start(&dir.path().join("c"), grpc, http, &[]).await?;
    let agent = AgentProc::start(&url, "torn", &spool, agent_http, &args).await?;
    let m = agent.metrics().await?;
    assert!(
        m.get("medic_agent_spool_corrupt_records_total").copied().unwrap_or(0.0) >= 1.0,
        "the torn tail is counted: {m:?}"
    );
    let node = drained(&agent, &controller).await?;
    assert_eq!(node["seq_gaps"], 0, "no complete batch was lost: {node}");
    assert_eq!(node["batches"], node["last_seq"], "{node}");
    assert!(node["last_seq"].as_u64().unwrap_or(0) >= 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_mid_stream_stops_acks_and_loses_nothing_when_it_returns() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch_dir = dir.path().join("clickhouse");
    let mut ch = ClickHouseProc::start(&ch_dir).await?;
    let ch_port = ch.port;
    let url = ch.url();
    let controller =
        ControllerProc::start(&dir.path().join("c"), free_port(), free_port(), &["--clickhouse-url", &url]).await?;
    let agent = AgentProc::start(
        &controller.grpc_url(),
        "steady",
        &dir.path().join("spool"),
        free_port(),
        &["--interval", "200ms"],
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;

    ch.proc.kill9();
    // The controller says so, and the agent keeps its batches.
    eventually(Duration::from_secs(15), || async {
        let r = client().get(controller.url("/healthz")).send().await?;
        Ok((r.status() == 503).then_some(()))
    })
    .await?;
    eventually(Duration::from_secs(15), || async {
        let m = scrape(&controller.url("/metrics")).await?;
        let (up, errors) = (m.get("medic_store_up"), m.get("medic_store_write_errors_total"));
        if up == Some(&0.0) && errors.is_some_and(|e| *e >= 1.0) {
            Ok(Some(()))
        } else {
            bail!("medic_store_up {up:?}, medic_store_write_errors_total {errors:?}")
        }
    })
    .await?;
    let spooled = eventually(Duration::from_secs(10), || async {
        let m = agent.metrics().await?;
        let n = m.get("medic_agent_spool_batches").copied().unwrap_or(0.0);
        Ok((n >= 5.0).then_some(n))
    })
    .await?;
    assert!(spooled >= 5.0);

    let ch = ClickHouseProc::start_on(&ch_dir, ch_port).await?;
    let node = drained(&agent, &controller).await?;
    assert_eq!(node["seq_gaps"], 0, "{node}");
    assert_eq!(node["batches"], node["last_seq"], "{node}");
    let last_seq = node["last_seq"].as_u64().unwrap_or(0);
    let rows: u64 = ch
        .query(&format!("SELECT count() FROM medic.samples WHERE node = 'steady' AND seq <= {last_seq}"))
        .await?
        .trim()
        .parse()?;
    assert_eq!(Some(rows), node["samples"].as_u64(), "rows stored exactly once");
    wait_http_ok(&controller.url("/healthz"), Duration::from_secs(10)).await?;
    assert_eq!(scrape(&controller.url("/metrics")).await?.get("medic_store_up"), Some(&1.0));
    Ok(())
}

/// `(acked, last)` sequence numbers of an agent's spool.
async fn spool_seqs(agent: &AgentProc) -> Result<(f64, f64)> {
    let m = agent.metrics().await?;
    Ok((
        m.get("medic_agent_spool_acked_seq").copied().unwrap_or(0.0),
        m.get("medic_agent_spool_last_seq").copied().unwrap_or(0.0),
    ))
}

/// /healthz as a Kubernetes probe sees it (5 s timeout): status and body.
async fn probe(controller: &ControllerProc) -> Result<(u16, String)> {
    let probe = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let r = probe.get(controller.url("/healthz")).send().await?;
    Ok((r.status().as_u16(), r.text().await?))
}

/// Checks that every batch the agent produced is in ClickHouse exactly once.
async fn stored_exactly_once(ch: &ClickHouseProc, agent: &AgentProc, controller: &ControllerProc) -> Result<()> {
    let node = drained(agent, controller).await?;
    assert_eq!(node["seq_gaps"], 0, "{node}");
    assert_eq!(node["batches"], node["last_seq"], "{node}");
    let last_seq = node["last_seq"].as_u64().unwrap_or(0);
    let name = &agent.node;
    let rows =
        ch.query(&format!("SELECT count() FROM medic.samples WHERE node = '{name}' AND seq <= {last_seq}")).await?;
    assert_eq!(rows.trim().parse::<u64>().ok(), node["samples"].as_u64(), "rows stored exactly once: {node}");
    let seqs = ch.query(&format!("SELECT uniqExact(seq) FROM medic.samples WHERE node = '{name}'")).await?;
    assert_eq!(seqs.trim().parse::<u64>().ok(), Some(last_seq), "every batch has its rows");
    Ok(())
}

/// A hung ClickHouse (SIGSTOP: it accepts connections and answers nothing). The controller
/// stops acking, its /healthz answers 503 with the reason instead of hanging the probe, and
/// `medic_store_up` drops to 0; once ClickHouse thaws, everything the agent produced meanwhile
/// is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_clickhouse_stops_acks_turns_healthz_unhealthy_and_loses_nothing_when_it_thaws() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(&dir.path().join("clickhouse")).await?;
    let url = ch.url();
    // A timeout above the probe's, as in production (default 30 s): /healthz must not wait for it.
    let args = ["--clickhouse-url", url.as_str(), "--clickhouse-timeout", "8s"];
    let controller = ControllerProc::start(&dir.path().join("c"), free_port(), free_port(), &args).await?;
    let agent = AgentProc::start(
        &controller.grpc_url(),
        "frozen",
        &dir.path().join("spool"),
        free_port(),
        &["--interval", "200ms"],
    )
    .await?;
    eventually(Duration::from_secs(10), || async { Ok((spool_seqs(&agent).await?.0 >= 3.0).then_some(())) }).await?;

    ch.pause();
    let body = eventually(Duration::from_secs(10), || async {
        let (status, body) = probe(&controller).await?;
        Ok((status == 503).then_some(body))
    })
    .await?;
    assert!(body.contains("error"), "the reason: {body}");
    eventually(Duration::from_secs(10), || async {
        let m = scrape(&controller.url("/metrics")).await?;
        Ok((m.get("medic_store_up") == Some(&0.0)).then_some(()))
    })
    .await?;
    // Nothing is acked while the agent goes on producing.
    let (acked, _) = spool_seqs(&agent).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (acked_later, last) = spool_seqs(&agent).await?;
    assert_eq!(acked, acked_later, "no ack while ClickHouse is frozen");
    assert!(last >= acked + 5.0, "the agent spools meanwhile: acked {acked}, last {last}");

    ch.resume();
    stored_exactly_once(&ch, &agent, &controller).await?;
    let (status, body) = probe(&controller).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(scrape(&controller.url("/metrics")).await?.get("medic_store_up"), Some(&1.0));
    Ok(())
}

/// With no agent sending anything, `medic_store_up` and /healthz still follow ClickHouse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_traffic_medic_store_up_follows_clickhouse() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch_dir = dir.path().join("clickhouse");
    let mut ch = ClickHouseProc::start(&ch_dir).await?;
    let (port, url) = (ch.port, ch.url());
    let controller =
        ControllerProc::start(&dir.path().join("c"), free_port(), free_port(), &["--clickhouse-url", &url]).await?;
    let store_up = || async {
        anyhow::Ok(scrape(&controller.url("/metrics")).await?.get("medic_store_up").copied().unwrap_or(-1.0))
    };
    assert_eq!(store_up().await?, 1.0);
    ch.proc.kill9();
    eventually(Duration::from_secs(10), || async { Ok((store_up().await? == 0.0).then_some(())) }).await?;
    assert_eq!(probe(&controller).await?.0, 503);
    let _ch = ClickHouseProc::start_on(&ch_dir, port).await?;
    eventually(Duration::from_secs(10), || async { Ok((store_up().await? == 1.0).then_some(())) }).await?;
    assert_eq!(probe(&controller).await?.0, 200);
    Ok(())
}

/// ClickHouse is not up when the controller starts (both started together, say). The
/// controller runs anyway: /healthz answers 503 "waiting for ClickHouse at URL: …", /metrics
/// answers, agents are not acked and keep their batches; as soon as ClickHouse answers, the
/// controller creates its schema and stores everything, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_started_before_clickhouse_waits_for_it_and_then_stores_everything_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let controller =
        ControllerProc::start_unhealthy(&dir.path().join("c"), free_port(), free_port(), &["--clickhouse-url", &url])
            .await?;
    let (status, body) = probe(&controller).await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&format!("waiting for ClickHouse at {url}: ")), "{body}");
    let m = scrape(&controller.url("/metrics")).await?;
    assert_eq!(m.get("medic_store_up"), Some(&0.0));

    let agent = AgentProc::start(
        &controller.grpc_url(),
        "early",
        &dir.path().join("spool"),
        free_port(),
        &["--interval", "200ms"],
    )
    .await?;
    eventually(Duration::from_secs(10), || async { Ok((spool_seqs(&agent).await?.1 >= 5.0).then_some(())) }).await?;
    assert_eq!(spool_seqs(&agent).await?.0, 0.0, "nothing is acked before the store is up");

    let ch = ClickHouseProc::start_on(&dir.path().join("clickhouse"), port).await?;
    stored_exactly_once(&ch, &agent, &controller).await?;
    let (status, body) = probe(&controller).await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}
