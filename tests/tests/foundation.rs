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

/// Waits until the agent has nothing unacked and the controller's last stored seq equals the
/// agent's last assigned seq, read on both sides of the controller read so it is consistent.
async fn drained(agent: &AgentProc, controller: &ControllerProc) -> Result<serde_json::Value> {
    eventually(Duration::from_secs(30), || async {
        let before = agent.metrics().await?;
        let nodes = controller.nodes().await?;
        let after = agent.metrics().await?;
        let last = before.get("medic_agent_spool_last_seq").copied().unwrap_or(-1.0);
        let acked = after.get("medic_agent_spool_acked_seq").copied().unwrap_or(-2.0);
        let last_after = after.get("medic_agent_spool_last_seq").copied().unwrap_or(-3.0);
        let Some(node) = nodes.get(&agent.node) else { bail!("controller does not know {}", agent.node) };
        let stored = node["last_seq"].as_f64().unwrap_or(-4.0);
        if last == last_after && last == acked && last == stored {
            Ok(Some(node.clone()))
        } else {
            bail!(
                "{}: agent last={last} acked={acked} (then last={last_after}), controller last_seq={stored}",
                agent.node
            )
        }
    })
    .await
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
    let (grpc, http) = (free_port(), free_port());
    let data = dir.path().join("controller");
    let mut controller = ControllerProc::start(&data, grpc, http, &[]).await?;

    let logs: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("app-{i}.log"))).collect();
    for l in &logs {
        std::fs::write(l, "")?;
    }
    let stop_logs = Arc::new(AtomicBool::new(false));
    let writer = log_writer(logs.clone(), stop_logs.clone());

    let mut agents = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let spool = dir.path().join(format!("spool-{i}"));
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
    controller = ControllerProc::start(&data, grpc, http, &[]).await?;
    pause(1200).await;

    let (a1, args1) = &mut agents[1];
    a1.proc.kill9();
    pause(500).await;
    let args: Vec<&str> = args1.iter().map(String::as_str).collect();
    *a1 = AgentProc::start(&controller.grpc_url(), "node-1", &a1.spool_dir.clone(), a1.http, &args).await?;
    pause(1000).await;

    controller.proc.kill9();
    pause(500).await;
    controller = ControllerProc::start(&data, grpc, http, &[]).await?;
    pause(1500).await;

    stop_logs.store(true, Ordering::Relaxed);
    let written = writer.join().map_err(|_| anyhow::anyhow!("log writer panicked"))?;

    for (i, (agent, _)) in agents.iter().enumerate() {
        let node = drained(agent, &controller).await?;
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
    Ok(())
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
