//! Remediation end to end, with real processes: a rule fires on a firing condition only, acts,
//! and is verified when the condition clears; an action that does not help is rolled back and
//! escalated and its rule stops; dry-run changes nothing. Everything is in the audit log.

use anyhow::{Result, bail};
use medic_tests::*;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

async fn audit(c: &ControllerProc, rule: &str) -> Result<Vec<serde_json::Value>> {
    get_json(&c.url(&format!("/api/v1/actions?rule={rule}"))).await
}

fn outcomes(entries: &[serde_json::Value]) -> Vec<String> {
    entries.iter().rev().filter_map(|e| e["outcome"].as_str().map(str::to_string)).collect()
}

async fn wait_outcome(c: &ControllerProc, rule: &str, outcome: &str, secs: u64) -> Result<Vec<serde_json::Value>> {
    eventually(Duration::from_secs(secs), || async {
        let a = audit(c, rule).await?;
        if a.iter().any(|e| e["outcome"] == outcome) { Ok(Some(a)) } else { bail!("{rule}: {:?}", outcomes(&a)) }
    })
    .await
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// A controller on the rules in `rules` (evaluated every 500 ms) and one agent named `node`
/// (collecting every 500 ms) streaming to it, each with its extra flags.
async fn fleet(
    dir: &std::path::Path,
    rules: &std::path::Path,
    controller_extra: &[&str],
    node: &str,
    agent_extra: &[&str],
) -> Result<(ControllerProc, AgentProc)> {
    let r = rules.to_string_lossy().to_string();
    let mut args = vec!["--rules-dir", &r, "--remediation-interval", "500ms"];
    args.extend_from_slice(controller_extra);
    let c = ControllerProc::start(&dir.join("c"), free_port(), free_port(), &args).await?;
    let mut agent_args = vec!["--interval", "500ms"];
    agent_args.extend_from_slice(agent_extra);
    let agent = AgentProc::start(&c.grpc_url(), node, &dir.join("spool"), free_port(), &agent_args).await?;
    Ok((c, agent))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_signature_restarts_the_service_and_the_fix_is_verified() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules)?;
    std::fs::write(
        rules.join("r.yaml"),
        "rules:
  - name: restart-on-too-many-parts
    when:
      log: { signature: too_many_parts, count: 1, window: 4s }
    do:
      - restart: { how: service, service: dummy }
    guards: { cooldown: 1h }
    verify: { clears_within: 20s }
",
    )?;
    let pidfile = dir.path().join("svc.pid");
    let start = format!("sleep 600 > /dev/null 2>&1 & echo $! > {}", pidfile.display());
    std::process::Command::new("sh").arg("-c").arg(&start).status()?;
    let old: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    let log = dir.path().join("clickhouse-server.log");
    std::fs::write(&log, "")?;

    let svc = format!("dummy=kill $(cat {p}); {start}", p = pidfile.display());
    let l = log.to_string_lossy().to_string();
    let (c, _agent) = fleet(dir.path(), &rules, &[], "ch-1", &["--log-file", &l, "--service-restart", &svc]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(audit(&c, "restart-on-too-many-parts").await?.is_empty(), "nothing fires while healthy");

    let mut f = std::fs::OpenOptions::new().append(true).open(&log)?;
    writeln!(
        f,
        "2026.11.24 06:00:00.000000 [ 7 ] {{q1}} <Error> executeQuery: Code: 252. DB::Exception: Too many parts (3001). Merges are processing significantly slower than inserts. (TOO_MANY_PARTS)"
    )?;
    drop(f);

    let a = wait_outcome(&c, "restart-on-too-many-parts", "verified", 40).await?;
    assert_eq!(outcomes(&a), ["started", "acted", "verified"], "{a:#?}");
    assert!(a.iter().any(|e| e["message"] == "restarted dummy"));
    assert!(a[0]["evidence"].as_str().unwrap_or_default().contains("too_many_parts"));
    let new: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    assert_ne!(new, old);
    assert!(!alive(old) && alive(new));
    let m = scrape(&c.url("/metrics")).await?;
    let key = "medic_actions_total{rule=\"restart-on-too-many-parts\",action=\"restart\",outcome=\"verified\"}";
    assert_eq!(m.get(key), Some(&1.0), "{:?}", m.keys().filter(|k| k.starts_with("medic_actions")).collect::<Vec<_>>());
    // SAFETY: cleaning up the process this test started.
    unsafe { libc::kill(new, libc::SIGKILL) };
    Ok(())
}

/// A ClickHouse with `analytics.events` at a 30-day TTL, its TTL clause as it stands, and an
/// empty rules directory.
async fn events_table_with_30_day_ttl(dir: &Path) -> Result<(ClickHouseProc, String, std::path::PathBuf)> {
    let ch = ClickHouseProc::start(&dir.join("ch")).await?;
    ch.query("CREATE DATABASE analytics").await?;
    ch.query(
        "CREATE TABLE analytics.events (ts DateTime, x UInt64) ENGINE = MergeTree ORDER BY ts TTL ts + INTERVAL 30 DAY",
    )
    .await?;
    let original = ttl_text(&ch).await?;
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules)?;
    Ok((ch, original, rules))
}

async fn ttl_text(ch: &ClickHouseProc) -> Result<String> {
    ch.query("SELECT engine_full FROM system.tables WHERE database = 'analytics' AND name = 'events'").await
}

fn ttl_rules(dir: &Path, dry_run: bool) -> Result<()> {
    std::fs::write(
        dir.join("r.yaml"),
        format!(
            "rules:
  - name: ttl-that-cannot-help
    when:
      threshold: {{ metric: clickhouse_up, op: \"==\", value: 1 }}
    do:
      - ttl: {{ database: analytics, table: events, min: 1d, max: 30d, factor: 0.5 }}
    guards: {{ dry_run: {dry_run} }}
    verify: {{ clears_within: 3s }}
"
        ),
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_that_does_not_help_is_rolled_back_escalated_and_stops_and_dry_run_changes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (ch, original, rules) = events_table_with_30_day_ttl(dir.path()).await?;

    // Dry run first: decided and recorded, nothing changed.
    ttl_rules(&rules, true)?;
    let url = ch.url();
    let (c, _agent) =
        fleet(dir.path(), &rules, &["--clickhouse-node-url", &url], "ch-1", &["--clickhouse-url", &url]).await?;
    wait_outcome(&c, "ttl-that-cannot-help", "dry_run", 20).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ttl_text(&ch).await?, original, "dry-run changes nothing");
    assert_eq!(outcomes(&audit(&c, "ttl-that-cannot-help").await?), ["dry_run"], "recorded once, not every round");

    // For real: the TTL is shortened, the condition never clears, so it is put back and escalated.
    ttl_rules(&rules, false)?;
    let a = wait_outcome(&c, "ttl-that-cannot-help", "escalated", 40).await?;
    assert_eq!(outcomes(&a)[1..6], ["started", "acted", "failed", "rolled_back", "escalated"], "{a:#?}");
    assert!(
        a.iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains("→ 1296000 s"))),
        "shortened to 15 d: {a:#?}"
    );
    assert_eq!(ttl_text(&ch).await?, original, "rolled back exactly");
    // The rule now stops instead of retrying.
    let a = wait_outcome(&c, "ttl-that-cannot-help", "skipped", 20).await?;
    assert_eq!(a[0]["guard"], "rule_failing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_waits_for_approval_runs_once_approved_from_the_cli_and_expires_otherwise() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules)?;
    std::fs::write(
        rules.join("r.yaml"),
        "rules:
  - name: needs-a-human
    when:
      threshold: { metric: node_load1, op: \">=\", value: 0 }
    do:
      - notify: { severity: info }
    guards: { approval: { expires_after: 1h } }
    verify: { clears_within: 1h }
  - name: nobody-answers
    when:
      threshold: { metric: node_load1, op: \">=\", value: 0 }
    do:
      - notify: { severity: info }
    guards: { approval: { expires_after: 2s }, cooldown: 1h }
",
    )?;
    let (c, _agent) = fleet(dir.path(), &rules, &[], "n1", &[]).await?;

    let waiting = wait_outcome(&c, "needs-a-human", "awaiting_approval", 20).await?;
    let id = waiting[0]["action_id"].as_str().unwrap_or_default().to_string();
    let m = scrape(&c.url("/metrics")).await?;
    assert!(m.get("medic_actions_pending_approval").copied().unwrap_or(0.0) >= 1.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(outcomes(&audit(&c, "needs-a-human").await?), ["awaiting_approval"], "nothing runs unapproved");

    let api = c.url("");
    let out =
        std::process::Command::new(bin("controller")?).args(["actions", "approve", &id, "--api", &api]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let a = wait_outcome(&c, "needs-a-human", "acted", 20).await?;
    assert_eq!(outcomes(&a), ["awaiting_approval", "approved", "started", "acted"]);
    let out = std::process::Command::new(bin("controller")?)
        .args(["actions", "approve", "no-such-id", "--api", &api])
        .output()?;
    assert!(!out.status.success(), "approving an unknown action fails");

    let a = wait_outcome(&c, "nobody-answers", "expired", 20).await?;
    assert!(!a.iter().any(|e| e["outcome"] == "acted"), "an expired action never runs: {a:#?}");

    // The audit log is stored: a restarted controller still shows it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (grpc, http) = (c.grpc, c.http);
    let mut c = c;
    c.proc.terminate()?;
    let r = rules.to_string_lossy().to_string();
    let c =
        ControllerProc::start(&dir.path().join("c"), grpc, http, &["--rules-dir", &r, "--remediation-interval", "1h"])
            .await?;
    let after = audit(&c, "needs-a-human").await?;
    assert!(
        outcomes(&after).starts_with(&["awaiting_approval", "approved", "started", "acted"].map(String::from)),
        "{:?}",
        outcomes(&after)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shortened_ttl_is_restored_once_the_pressure_is_gone() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (ch, original, rules) = events_table_with_30_day_ttl(dir.path()).await?;
    std::fs::write(
        rules.join("r.yaml"),
        "rules:
  - name: ttl-under-pressure
    when:
      log: { signature: no_space_left, count: 1, window: 3s }
    do:
      - ttl: { database: analytics, table: events, min: 1d, max: 30d, factor: 0.5, restore_after: 3s }
    verify: { clears_within: 30s }
",
    )?;
    let log = dir.path().join("ch.log");
    std::fs::write(&log, "")?;
    let (url, l) = (ch.url(), log.to_string_lossy().to_string());
    let (c, _agent) = fleet(dir.path(), &rules, &["--clickhouse-node-url", &url], "ch-1", &["--log-file", &l]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut f = std::fs::OpenOptions::new().append(true).open(&log)?;
    writeln!(
        f,
        "2026.11.24 06:00:00.000000 [ 7 ] {{}} <Error> MergeTreeBackgroundExecutor: Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE)"
    )?;
    drop(f);
    let a = wait_outcome(&c, "ttl-under-pressure", "verified", 30).await?;
    assert!(a.iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains("→ 1296000 s"))), "{a:#?}");
    assert_ne!(ttl_text(&ch).await?, original, "shortened while under pressure");
    let a = wait_outcome(&c, "ttl-under-pressure", "restored", 30).await?;
    assert_eq!(outcomes(&a), ["started", "acted", "verified", "restored"]);
    assert_eq!(ttl_text(&ch).await?, original, "the previous TTL is back");
    Ok(())
}

/// The shortened TTL is in the stored audit log: a controller killed before the pressure is
/// gone, and started again, still puts the TTL back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shortened_ttl_is_restored_even_by_a_controller_that_restarted_meanwhile() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (ch, original, rules) = events_table_with_30_day_ttl(dir.path()).await?;
    std::fs::write(
        rules.join("r.yaml"),
        "rules:
  - name: ttl-under-pressure
    when:
      log: { signature: no_space_left, count: 1, window: 3s }
    do:
      - ttl: { database: analytics, table: events, min: 1d, max: 30d, factor: 0.5, restore_after: 8s }
    verify: { clears_within: 30s }
",
    )?;
    let log = dir.path().join("ch.log");
    std::fs::write(&log, "")?;
    let (url, l, r) = (ch.url(), log.to_string_lossy().to_string(), rules.to_string_lossy().to_string());
    let args = ["--rules-dir", &r, "--remediation-interval", "500ms", "--clickhouse-node-url", &url];
    let (grpc, http) = (free_port(), free_port());
    let mut c = ControllerProc::start(&dir.path().join("c"), grpc, http, &args).await?;
    let _agent = AgentProc::start(
        &c.grpc_url(),
        "ch-1",
        &dir.path().join("spool"),
        free_port(),
        &["--interval", "500ms", "--log-file", &l],
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut f = std::fs::OpenOptions::new().append(true).open(&log)?;
    writeln!(
        f,
        "2026.11.24 06:00:00.000000 [ 7 ] {{}} <Error> MergeTreeBackgroundExecutor: Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE)"
    )?;
    drop(f);
    wait_outcome(&c, "ttl-under-pressure", "verified", 30).await?;
    assert_ne!(ttl_text(&ch).await?, original, "shortened while under pressure");
    c.proc.kill9();
    let c = ControllerProc::start(&dir.path().join("c"), grpc, http, &args).await?;
    let a = wait_outcome(&c, "ttl-under-pressure", "restored", 40).await?;
    assert_eq!(outcomes(&a), ["started", "acted", "verified", "restored"]);
    assert_eq!(ttl_text(&ch).await?, original, "the previous TTL is back");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_cut_short_by_a_controller_crash_is_verified_after_the_restart_not_run_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules)?;
    std::fs::write(
        rules.join("r.yaml"),
        "rules:
  - name: slow-restart
    when:
      log: { signature: too_many_parts, count: 1, window: 3s }
    do:
      - restart: { how: service, service: dummy }
    verify: { clears_within: 60s }
",
    )?;
    let log = dir.path().join("clickhouse-server.log");
    std::fs::write(&log, "")?;
    let runs = dir.path().join("runs");
    // A restart that takes a while: the controller is killed while it runs.
    let svc = format!("dummy=echo run >> {}; sleep 3", runs.display());
    let r = rules.to_string_lossy().to_string();
    let args = ["--rules-dir", &r, "--remediation-interval", "500ms"];
    let (grpc, http) = (free_port(), free_port());
    let mut c = ControllerProc::start(&dir.path().join("c"), grpc, http, &args).await?;
    let l = log.to_string_lossy().to_string();
    let _agent = AgentProc::start(
        &c.grpc_url(),
        "ch-1",
        &dir.path().join("spool"),
        free_port(),
        &["--interval", "500ms", "--log-file", &l, "--service-restart", &svc],
    )
    .await?;
    // The problem goes on through the crash and the restart, so a controller that forgot the
    // action would start it again.
    let storm = {
        let log = log.clone();
        tokio::spawn(async move {
            for _ in 0..30 {
                if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&log) {
                    let _ = writeln!(
                        f,
                        "2026.11.24 06:00:00.000000 [ 7 ] {{}} <Error> executeQuery: Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)"
                    );
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    eventually(Duration::from_secs(20), || async {
        Ok(std::fs::read_to_string(&runs).is_ok_and(|s| s.lines().count() == 1).then_some(()))
    })
    .await?;
    c.proc.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c = ControllerProc::start(&dir.path().join("c"), grpc, http, &args).await?;
    wait_outcome(&c, "slow-restart", "verified", 40).await?;
    storm.await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a = audit(&c, "slow-restart").await?;
    // While it is verified, the rule still firing is held back by the guards (audited as skipped).
    assert!(a.iter().filter(|e| e["outcome"] == "skipped").all(|e| e["guard"] == "in_progress"), "{a:#?}");
    let a: Vec<serde_json::Value> = a.into_iter().filter(|e| e["outcome"] != "skipped").collect();
    assert_eq!(outcomes(&a), ["started", "verified"], "one action, verified after the restart: {a:#?}");
    let ids: std::collections::BTreeSet<&str> = a.iter().filter_map(|e| e["action_id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "{a:#?}");
    assert_eq!(std::fs::read_to_string(&runs)?.lines().count(), 1, "the restart ran exactly once");
    Ok(())
}
