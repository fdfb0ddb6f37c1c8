//! Controller high availability end to end: several real controller processes share one real
//! ClickHouse engine. An agent that moves between replicas is stored exactly once, without
//! phantom gaps; a replica that takes over leadership (through a Lease, served here by a
//! stand-in for the Kubernetes API server's lease endpoints) does not repeat what the old leader
//! did.

use anyhow::{Result, bail};
use medic_tests::kube_api::FakeKubeApi;
use medic_tests::*;
use std::path::Path;
use std::time::Duration;

async fn node(c: &ControllerProc, name: &str) -> Result<serde_json::Value> {
    c.nodes().await?.remove(name).ok_or_else(|| anyhow::anyhow!("{name} unknown to the controller on {}", c.http))
}

/// Waits until `c` has the agent connected and has stored at least `batches` of its batches.
async fn streaming_to(c: &ControllerProc, name: &str, batches: u64) -> Result<u64> {
    eventually(Duration::from_secs(40), || async {
        let n = node(c, name).await?;
        let stored = n["batches"].as_u64().unwrap_or(0);
        if n["connected"] == true && stored >= batches {
            Ok(Some(stored))
        } else {
            bail!("connected={} batches={stored} (want {batches})", n["connected"])
        }
    })
    .await
}

async fn scalar(ch: &ClickHouseProc, sql: &str) -> Result<String> {
    Ok(ch.query(sql).await?.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_moving_between_replicas_is_stored_exactly_once_without_phantom_gaps() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(&dir.path().join("clickhouse")).await?;
    let url = ch.url();
    let args = ["--clickhouse-url", url.as_str()];
    let (ga, ha) = (free_port(), free_port());
    let a = ControllerProc::start(&dir.path().join("a"), ga, ha, &args).await?;
    let b = ControllerProc::start(&dir.path().join("b"), free_port(), free_port(), &args).await?;
    let controllers = format!("{},{}", a.grpc_url(), b.grpc_url());
    let agent =
        AgentProc::start(&controllers, "n1", &dir.path().join("spool"), free_port(), &["--interval", "200ms"]).await?;

    // The agent starts on A, the first URL.
    streaming_to(&a, "n1", 5).await?;
    let mut a = a;
    a.proc.kill9();
    // A crashed: the agent fails over to B, which continues where A stopped.
    let on_b = streaming_to(&b, "n1", 1).await?;
    // A comes back and loads the node's state from the store; B keeps receiving, so what A
    // remembers goes stale.
    let a = ControllerProc::start(&dir.path().join("a"), ga, ha, &args).await?;
    let remembered_by_a = node(&a, "n1").await?["last_seq"].as_u64().unwrap_or(0);
    streaming_to(&b, "n1", on_b + 10).await?;
    let mut b = b;
    b.proc.kill9();
    // Back to A, which must take the node's state from the store at its hello, not from memory.
    let n = drained(&agent, &a).await?;
    let last = n["last_seq"].as_u64().unwrap_or(0);
    assert!(
        last > remembered_by_a + 10,
        "A's memory ({remembered_by_a}) was stale by the time the agent came back ({last})"
    );
    assert_eq!(n["seq_gaps"], 0, "no batch is missing, so none may be counted missing: {n}");

    // Every batch the agent produced is in ClickHouse, and no sample twice.
    let seqs =
        scalar(&ch, "SELECT count(DISTINCT seq), min(seq), max(seq) FROM medic.samples WHERE node = 'n1'").await?;
    assert_eq!(seqs, format!("{last}\t1\t{last}"), "batches 1..={last}, each stored");
    let dups = scalar(
        &ch,
        "SELECT count() FROM (SELECT metric, labels, ts, count() AS c FROM medic.samples WHERE node = 'n1'
         GROUP BY metric, labels, ts HAVING c > 1)",
    )
    .await?;
    assert_eq!(dups, "0", "no sample is stored twice");
    let per_batch = scalar(
        &ch,
        "SELECT uniqExact(commit) FROM medic.samples WHERE node = 'n1' GROUP BY seq ORDER BY 1 DESC LIMIT 1",
    )
    .await?;
    assert_eq!(per_batch, "1", "each batch was written by one write only");
    Ok(())
}

fn restart_rule(dir: &Path) -> Result<String> {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules)?;
    std::fs::write(
        rules.join("r.yaml"),
        "rules:
  - name: restart-once-an-hour
    when:
      threshold: { metric: node_load1, op: \">=\", value: 0 }
    do:
      - restart: { how: service, service: svc }
    guards: { cooldown: 1h }
    verify: { clears_within: 1h }
",
    )?;
    Ok(rules.to_string_lossy().to_string())
}

async fn leadership(c: &ControllerProc) -> Result<serde_json::Value> {
    let h: serde_json::Value = get_json(&c.url("/healthz")).await?;
    Ok(h["leadership"].clone())
}

async fn leads(c: &ControllerProc, secs: u64) -> Result<()> {
    eventually(Duration::from_secs(secs), || async {
        let l = leadership(c).await?;
        if l["leader"] == true { Ok(Some(())) } else { bail!("not the leader: {l}") }
    })
    .await
}

fn restarts(file: &Path) -> usize {
    std::fs::read_to_string(file).map(|s| s.lines().count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_does_not_repeat_the_action_the_old_leader_took() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(&dir.path().join("clickhouse")).await?;
    let kube = FakeKubeApi::start().await?;
    let kubeconfig = kube.kubeconfig(dir.path(), "medic")?;
    let kubeconfig = kubeconfig.to_string_lossy().to_string();
    let rules = restart_rule(dir.path())?;
    let url = ch.url();
    let start = |name: &'static str| replica(dir.path(), name, &kubeconfig, &rules, &url);
    let a = start("ctl-a").await?;
    leads(&a, 20).await?;
    let b = start("ctl-b").await?;
    // B follows, knows who leads and where; /metrics says which replica leads.
    let l = eventually(Duration::from_secs(10), || async {
        let l = leadership(&b).await?;
        if l["holder"] == "ctl-a" { Ok(Some(l)) } else { bail!("{l}") }
    })
    .await?;
    assert_eq!(l["leader"], false);
    assert_eq!(l["leader_url"], format!("http://127.0.0.1:{}", a.http));
    assert_eq!(scrape(&a.url("/metrics")).await?.get("medic_leader").copied(), Some(1.0));
    assert_eq!(scrape(&b.url("/metrics")).await?.get("medic_leader").copied(), Some(0.0));

    let log = dir.path().join("restarts.log");
    let svc = format!("svc=echo restarted >> {}", log.display());
    let controllers = format!("{},{}", a.grpc_url(), b.grpc_url());
    let _agent = AgentProc::start(
        &controllers,
        "n1",
        &dir.path().join("spool"),
        free_port(),
        &["--interval", "300ms", "--service-restart", &svc],
    )
    .await?;
    eventually(Duration::from_secs(30), || async {
        if restarts(&log) >= 1 { Ok(Some(())) } else { bail!("the leader has not acted yet") }
    })
    .await?;
    // The follower answers leader-only questions from the leader.
    let on_b: Vec<serde_json::Value> = get_json(&b.url("/api/v1/actions?rule=restart-once-an-hour")).await?;
    assert!(on_b.iter().any(|e| e["outcome"] == "started"), "B passes /api/v1/actions on to A: {on_b:?}");
    eventually(Duration::from_secs(10), || async {
        let a_log: Vec<serde_json::Value> = get_json(&a.url("/api/v1/actions?rule=restart-once-an-hour")).await?;
        if a_log.iter().any(|e| e["outcome"] == "acted") { Ok(Some(())) } else { bail!("{a_log:?}") }
    })
    .await?;

    // The leader dies without a word; B takes over once the lease runs out.
    let mut a = a;
    a.proc.kill9();
    leads(&b, 20).await?;
    assert_eq!(kube.holder("medic", "medic-controller").as_deref(), Some("ctl-b"));
    // B evaluates the rule — the agent reconnected to it — and finds the old leader's action
    // from the stored audit log: acted, its verification window still open, so in progress.
    let audit = eventually(Duration::from_secs(30), || async {
        let a: Vec<serde_json::Value> = get_json(&b.url("/api/v1/actions?rule=restart-once-an-hour")).await?;
        if a.iter().any(|e| e["outcome"] == "skipped" && e["guard"] == "in_progress") {
            Ok(Some(a))
        } else {
            bail!("B has not decided on the rule yet: {a:?}")
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(restarts(&log), 1, "the action ran once in all: {audit:#?}");
    let started = audit.iter().filter(|e| e["outcome"] == "started").count();
    assert_eq!(started, 1, "one start, by the old leader: {audit:#?}");
    Ok(())
}

/// A controller replica taking part in the election, with test-speed lease timings.
async fn replica(dir: &Path, name: &str, kubeconfig: &str, rules: &str, clickhouse: &str) -> Result<ControllerProc> {
    let (grpc, http) = (free_port(), free_port());
    let advertise = format!("http://127.0.0.1:{http}");
    let args = [
        "--clickhouse-url",
        clickhouse,
        "--leader-election",
        "--lease-duration",
        "3s",
        "--lease-renew-interval",
        "500ms",
        "--lease-renew-deadline",
        "2s",
        "--lease-retry-interval",
        "300ms",
        "--advertise-url",
        advertise.as_str(),
        "--rules-dir",
        rules,
        "--remediation-interval",
        "300ms",
    ];
    ControllerProc::start_with_env(
        &dir.join(name),
        grpc,
        http,
        &args,
        &[("POD_NAME", name), ("KUBECONFIG", kubeconfig)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_detects_and_acts_for_an_agent_connected_to_a_follower() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(&dir.path().join("clickhouse")).await?;
    let kube = FakeKubeApi::start().await?;
    let kubeconfig = kube.kubeconfig(dir.path(), "medic")?.to_string_lossy().to_string();
    let rules = restart_rule(dir.path())?;
    let a = replica(dir.path(), "ctl-a", &kubeconfig, &rules, &ch.url()).await?;
    leads(&a, 20).await?;
    let b = replica(dir.path(), "ctl-b", &kubeconfig, &rules, &ch.url()).await?;
    eventually(Duration::from_secs(10), || async {
        let l = leadership(&b).await?;
        if l["holder"] == "ctl-a" { Ok(Some(())) } else { bail!("{l}") }
    })
    .await?;
    let log = dir.path().join("restarts.log");
    let svc = format!("svc=echo restarted >> {}", log.display());
    // Only B: B stores the data; A, the leader, must see it and reach the agent through B.
    let _agent = AgentProc::start(
        &b.grpc_url(),
        "n1",
        &dir.path().join("spool"),
        free_port(),
        &["--interval", "300ms", "--service-restart", &svc],
    )
    .await?;
    let acted = eventually(Duration::from_secs(30), || async {
        let a_log: Vec<serde_json::Value> = get_json(&a.url("/api/v1/actions?rule=restart-once-an-hour")).await?;
        match a_log.iter().find(|e| e["outcome"] == "acted") {
            Some(e) => Ok(Some(e.clone())),
            None => bail!("the leader has not acted: {a_log:?}"),
        }
    })
    .await?;
    assert_eq!(acted["message"], "restarted svc", "{acted}");
    assert_eq!(restarts(&log), 1, "the agent on the follower ran the leader's restart");
    assert_eq!(node(&a, "n1").await?["connected"], true, "the leader sees the agent as reachable");
    let relayed = scrape(&b.url("/metrics")).await?.get("medic_relay_batches_total").copied().unwrap_or(0.0);
    assert!(relayed > 0.0, "B relayed its batches to A's detection");
    assert_eq!(scrape(&a.url("/metrics")).await?.get("medic_relay_batches_total").copied(), Some(0.0));
    Ok(())
}
