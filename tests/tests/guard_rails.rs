//! Guard rails in the live remediation loop, with a real controller: everything that fires in one
//! round is judged with the actions of that same round already under way; an approved action
//! still obeys the guards and never runs for a condition that has cleared; a rule stopped by a
//! failed verification acts again only once a person re-enables it; a target Medic can do
//! nothing for is escalated without stopping the rule; and verification looks at the
//! condition's state, so a problem that cleared while the fix was still running counts as fixed.

use anyhow::{Result, bail};
use medic_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

async fn audit(c: &ControllerProc, rule: &str) -> Result<Vec<serde_json::Value>> {
    get_json(&c.url(&format!("/api/v1/actions?rule={rule}&limit=10000"))).await
}

fn with_outcome<'a>(entries: &'a [serde_json::Value], outcome: &str) -> Vec<&'a serde_json::Value> {
    entries.iter().filter(|e| e["outcome"] == outcome).collect()
}

async fn wait_outcome(c: &ControllerProc, rule: &str, outcome: &str, n: usize, secs: u64) -> Result<()> {
    eventually(Duration::from_secs(secs), || async {
        let a = audit(c, rule).await?;
        let got = with_outcome(&a, outcome).len();
        if got >= n {
            Ok(Some(()))
        } else {
            bail!("{rule}: {got} × {outcome} of {n}: {:?}", a.iter().map(|e| &e["outcome"]).collect::<Vec<_>>())
        }
    })
    .await
}

fn write_rules(dir: &Path, yaml: &str) -> Result<std::path::PathBuf> {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules)?;
    std::fs::write(rules.join("r.yaml"), yaml)?;
    Ok(rules)
}

async fn controller(dir: &Path, rules: &Path, extra: &[&str]) -> Result<ControllerProc> {
    let r = rules.to_string_lossy().to_string();
    let mut args = vec!["--rules-dir", &r, "--remediation-interval", "500ms"];
    args.extend_from_slice(extra);
    ControllerProc::start(&dir.join("c"), free_port(), free_port(), &args).await
}

/// `n` scripted nodes `ch-0…`, two replicas per shard (`ch-0` and `ch-1` are shard s0, …).
async fn nodes(c: &ControllerProc, n: usize) -> Result<Vec<SyntheticAgent>> {
    let mut agents = Vec::new();
    for i in 0..n {
        let shard = format!("s{}", i / 2);
        let labels = [("role", "clickhouse"), ("shard", shard.as_str())];
        agents.push(SyntheticAgent::connect(&c.grpc_url(), &format!("ch-{i}"), &labels).await?);
    }
    Ok(agents)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Every node reports `errors{table=t0…t4}` at `value`.
async fn report(agents: &mut [SyntheticAgent], value: f64) -> Result<()> {
    let tables: Vec<String> = (0..5).map(|t| format!("t{t}")).collect();
    for a in agents.iter_mut() {
        let labels: Vec<[(&str, &str); 1]> = tables.iter().map(|t| [("table", t.as_str())]).collect();
        let ts = now_ms();
        let samples: Vec<GaugeSample<'_>> = labels.iter().map(|l| ("errors", &l[..], ts, value)).collect();
        a.send(&samples).await?;
    }
    Ok(())
}

/// The nodes' problem goes on: they report it every 500 ms until the test is done.
async fn keep_reporting(agents: &mut [SyntheticAgent]) -> Result<()> {
    loop {
        report(agents, 1.0).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

const STORM: &str = "rules:
  - name: storm
    when:
      threshold: { metric: errors, op: \">\", value: 0 }
      for: 2s
    do:
      - notify: { severity: warning, summary: errors }
    guards:
      cooldown: 1h
      rate_limit: { max: 50, per: 1h }
      blast_radius: { max_nodes: 3, max_percent: 50, one_replica_per_shard: true }
    verify: { clears_within: 1h }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_100_firings_on_20_nodes_in_one_round_acts_only_as_far_as_the_guards_allow() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rules = write_rules(dir.path(), STORM)?;
    let c = controller(dir.path(), &rules, &["--max-actions", "100"]).await?;
    let mut agents = nodes(&c, 20).await?;
    // All 100 (node, table) conditions start holding together and fire in the same round.
    report(&mut agents, 1.0).await?;
    wait_outcome(&c, "storm", "started", 3, 30).await?;
    // Rounds go on; the storm keeps firing.
    for _ in 0..4 {
        report(&mut agents, 1.0).await?;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let a = audit(&c, "storm").await?;
    let started = with_outcome(&a, "started");
    let nodes: BTreeSet<&str> = started.iter().filter_map(|e| e["node"].as_str()).collect();
    assert_eq!(started.len(), 3, "max_nodes 3: {started:#?}");
    assert_eq!(nodes.len(), 3, "one action per node at a time: {nodes:?}");
    let shards: BTreeSet<String> = nodes
        .iter()
        .filter_map(|n| n.strip_prefix("ch-")?.parse::<usize>().ok())
        .map(|i| format!("s{}", i / 2))
        .collect();
    assert_eq!(shards.len(), 3, "never two replicas of one shard: {nodes:?}");
    let guards: BTreeMap<&str, usize> =
        with_outcome(&a, "skipped").iter().filter_map(|e| e["guard"].as_str()).fold(BTreeMap::new(), |mut m, g| {
            *m.entry(g).or_default() += 1;
            m
        });
    assert!(guards.get("blast_radius").is_some_and(|n| *n > 0), "{guards:?}");
    assert!(guards.get("in_progress").is_some_and(|n| *n > 0), "other tables of a node under action: {guards:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_wide_rate_limit_caps_actions_across_rules() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let second = STORM.replace("rules:\n", "").replace("name: storm", "name: storm-too");
    let rules = write_rules(dir.path(), &format!("{STORM}{second}"))?;
    let c = controller(dir.path(), &rules, &["--max-actions", "4", "--max-actions-window", "1h"]).await?;
    let mut agents = nodes(&c, 20).await?;
    report(&mut agents, 1.0).await?;
    wait_outcome(&c, "storm", "started", 1, 30).await?;
    for _ in 0..4 {
        report(&mut agents, 1.0).await?;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let (a, b) = (audit(&c, "storm").await?, audit(&c, "storm-too").await?);
    let started = with_outcome(&a, "started").len() + with_outcome(&b, "started").len();
    assert_eq!(started, 4, "3 + 3 allowed by the rules, 4 by the controller");
    assert!(
        a.iter().chain(&b).any(|e| e["guard"] == "global_rate_limit"),
        "the controller-wide limit is named as the guard that said no"
    );
    Ok(())
}

const APPROVAL: &str = "rules:
  - name: gated
    when:
      threshold: { metric: errors, op: \">\", value: 0, labels: { table: t0 } }
      for: 1s
    do:
      - notify: { severity: warning, summary: errors }
    guards:
      cooldown: 1h
      blast_radius: { max_nodes: 10, max_percent: 100, one_replica_per_shard: true }
      approval: { expires_after: 10m }
    verify: { clears_within: 1h }
";

async fn approve(c: &ControllerProc, id: &str) -> Result<reqwest::StatusCode> {
    Ok(client().post(c.url(&format!("/api/v1/actions/{id}/approve"))).send().await?.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_actions_still_obey_the_guards_and_a_cleared_condition_cancels_its_approval() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rules = write_rules(dir.path(), APPROVAL)?;
    let c = controller(dir.path(), &rules, &[]).await?;
    // ch-0 and ch-1 are replicas of shard s0, ch-2 is shard s1, ch-4 shard s2.
    let mut agents = nodes(&c, 5).await?;
    agents.remove(3);
    report(&mut agents, 1.0).await?;
    wait_outcome(&c, "gated", "awaiting_approval", 4, 30).await?;
    let a = audit(&c, "gated").await?;
    let id_of = |node: &str| {
        with_outcome(&a, "awaiting_approval")
            .iter()
            .find(|e| e["node"] == node)
            .and_then(|e| e["action_id"].as_str())
            .map(str::to_string)
    };
    let (Some(r0), Some(r1), Some(other), Some(gone)) = (id_of("ch-0"), id_of("ch-1"), id_of("ch-2"), id_of("ch-4"))
    else {
        bail!("one approval per node: {a:#?}");
    };

    // ch-4's problem goes away before anybody approves: the action is dropped, not run later.
    let ts = now_ms();
    agents[3].send(&[("errors", &[("table", "t0")], ts, 0.0)]).await?;
    wait_outcome(&c, "gated", "skipped", 1, 20).await?;
    let a = audit(&c, "gated").await?;
    let dropped = with_outcome(&a, "skipped");
    assert_eq!(dropped[0]["guard"], "resolved", "{dropped:#?}");
    assert_eq!(dropped[0]["node"], "ch-4");
    assert_eq!(approve(&c, &gone).await?, reqwest::StatusCode::NOT_FOUND, "nothing left to approve");

    // Both replicas of s0 approved at once: one runs, the other waits for the shard guard.
    for id in [&r0, &r1, &other] {
        assert!(approve(&c, id).await?.is_success());
    }
    wait_outcome(&c, "gated", "started", 2, 20).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a = audit(&c, "gated").await?;
    let started: BTreeSet<&str> = with_outcome(&a, "started").iter().filter_map(|e| e["node"].as_str()).collect();
    assert_eq!(started.len(), 2, "{started:?}");
    assert!(started.contains("ch-2"), "{started:?}");
    assert!(started.contains("ch-0") ^ started.contains("ch-1"), "one replica of s0 at a time: {started:?}");
    let held: Vec<_> = with_outcome(&a, "skipped").into_iter().filter(|e| e["guard"] == "shard").collect();
    assert_eq!(held.len(), 1, "held once, not every round: {a:#?}");
    assert!(held[0]["message"].as_str().is_some_and(|m| m.starts_with("approved; waits")), "{held:#?}");
    assert_eq!(with_outcome(&a, "approved").len(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_stopped_by_a_failed_verification_acts_again_once_a_person_reenables_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(&dir.path().join("ch")).await?;
    // `does-not-help` changes something and its problem stays; `only-pages` only pages about the
    // same problem, which a person has not fixed yet: that does not stop a rule.
    let rules = write_rules(
        dir.path(),
        "rules:
  - name: does-not-help
    when:
      threshold: { metric: errors, op: \">\", value: 0, labels: { table: t0 } }
    do:
      - sql: { statement: SYSTEM FLUSH LOGS }
    guards: { cooldown: 0s }
    verify: { clears_within: 2s }
  - name: only-pages
    when:
      threshold: { metric: errors, op: \">\", value: 0, labels: { table: t1 } }
    do:
      - notify: { severity: warning, summary: errors }
    guards: { cooldown: 0s }
    verify: { clears_within: 2s }
",
    )?;
    let url = ch.url();
    let c = controller(dir.path(), &rules, &["--clickhouse-node-url", &url]).await?;
    let mut agents = nodes(&c, 1).await?;
    let keep_failing = keep_reporting(&mut agents);
    let check = async {
        wait_outcome(&c, "does-not-help", "escalated", 1, 30).await?;
        wait_outcome(&c, "does-not-help", "skipped", 1, 10).await?;
        let a = audit(&c, "does-not-help").await?;
        assert_eq!(with_outcome(&a, "skipped")[0]["guard"], "rule_failing");
        let r: serde_json::Value = get_json(&c.url("/api/v1/rules")).await?;
        let failing = |name: &str| {
            r["rules"].as_array().and_then(|rs| rs.iter().find(|x| x["name"] == name)).map(|x| x["failing"].clone())
        };
        assert_eq!(failing("does-not-help"), Some(serde_json::json!(true)), "{r}");
        assert_eq!(failing("only-pages"), Some(serde_json::json!(false)), "{r}");
        let pages = audit(&c, "only-pages").await?;
        assert!(with_outcome(&pages, "started").len() >= 2, "pages again after its cooldown: {pages:#?}");
        assert!(with_outcome(&pages, "failed").is_empty() && with_outcome(&pages, "escalated").is_empty());
        let m = scrape(&c.url("/metrics")).await?;
        assert_eq!(m.get("medic_rule_failing{rule=\"does-not-help\"}"), Some(&1.0));

        let api = c.url("");
        let out = std::process::Command::new(bin("controller")?)
            .args(["actions", "reenable", "does-not-help", "--api", api.trim_end_matches('/')])
            .output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        wait_outcome(&c, "does-not-help", "reenabled", 1, 10).await?;
        wait_outcome(&c, "does-not-help", "started", 2, 10).await?;
        // A rule that is not stopped cannot be re-enabled: the API says so.
        let resp = client().post(c.url("/api/v1/rules/no-such-rule/reenable")).send().await?;
        assert_eq!(resp.status(), reqwest::StatusCode::NOT_FOUND);
        Ok::<(), anyhow::Error>(())
    };
    tokio::select! {
        r = keep_failing => r,
        r = check => r,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_to_do_on_a_target_pages_without_stopping_the_rule() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(&dir.path().join("ch")).await?;
    ch.query("CREATE DATABASE analytics").await?;
    ch.query(
        "CREATE TABLE analytics.events (ts DateTime, x UInt64) ENGINE = MergeTree ORDER BY ts TTL ts + INTERVAL 30 DAY",
    )
    .await?;
    // The TTL is already at the rule's minimum: there is nothing the step can do.
    let rules = write_rules(
        dir.path(),
        "rules:
  - name: ttl-at-its-floor
    when:
      threshold: { metric: errors, op: \">\", value: 0, labels: { table: t0 } }
    do:
      - ttl: { database: analytics, table: events, min: 30d, max: 30d }
    guards: { cooldown: 2s }
    verify: { clears_within: 1h }
",
    )?;
    let url = ch.url();
    let c = controller(dir.path(), &rules, &["--clickhouse-node-url", &url]).await?;
    let mut agents = nodes(&c, 1).await?;
    let keep_firing = keep_reporting(&mut agents);
    let check = async {
        // Tried again after its cooldown: the rule was not stopped.
        wait_outcome(&c, "ttl-at-its-floor", "nothing_to_do", 2, 40).await?;
        let a = audit(&c, "ttl-at-its-floor").await?;
        assert!(with_outcome(&a, "escalated").len() >= 2, "each time a person is told");
        assert!(!a.iter().any(|e| e["guard"] == "rule_failing"), "{a:#?}");
        assert!(
            with_outcome(&a, "nothing_to_do")[0]["message"].as_str().is_some_and(|m| m.contains("minimum")),
            "{a:#?}"
        );
        let r: serde_json::Value = get_json(&c.url("/api/v1/rules")).await?;
        assert_eq!(r["rules"][0]["failing"], false, "{r}");
        Ok::<(), anyhow::Error>(())
    };
    tokio::select! {
        r = keep_firing => r,
        r = check => r,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_problem_that_clears_while_the_fix_is_still_running_counts_as_fixed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // The log condition holds for 1 s after the line; the restart takes 4 s.
    let rules = write_rules(
        dir.path(),
        "rules:
  - name: slow-restart
    when:
      log: { signature: too_many_parts, count: 1, window: 1s }
    do:
      - restart: { how: service, service: dummy }
    guards: { cooldown: 1h }
    verify: { clears_within: 30s }
",
    )?;
    let log = dir.path().join("clickhouse-server.log");
    std::fs::write(&log, "")?;
    let c = controller(dir.path(), &rules, &[]).await?;
    let l = log.to_string_lossy().to_string();
    let _agent = AgentProc::start(
        &c.grpc_url(),
        "ch-1",
        &dir.path().join("spool"),
        free_port(),
        &["--interval", "500ms", "--log-file", &l, "--service-restart", "dummy=sleep 4"],
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut f = std::fs::OpenOptions::new().append(true).open(&log)?;
    writeln!(
        f,
        "2026.11.24 06:00:00.000000 [ 7 ] {{q1}} <Error> executeQuery: Code: 252. DB::Exception: Too many parts (3001). Merges are processing significantly slower than inserts. (TOO_MANY_PARTS)"
    )?;
    drop(f);
    wait_outcome(&c, "slow-restart", "verified", 1, 40).await?;
    let a = audit(&c, "slow-restart").await?;
    let outcomes: Vec<&str> = a.iter().rev().filter_map(|e| e["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["started", "acted", "verified"]);
    Ok(())
}
