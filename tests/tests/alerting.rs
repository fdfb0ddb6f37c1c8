//! What Medic knows reaches people through the tools they already use, for real: Prometheus
//! scrapes a live agent watching a live ClickHouse, the shipped rules fire on an injected fault,
//! the shipped Alertmanager config routes the alert to a (local) PagerDuty Events API v2
//! endpoint, and the same incident resolves when the fault is gone.

use anyhow::{Result, bail};
use medic_tests::*;
use std::time::Duration;

const ROUTING_KEY: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_pages_through_prometheus_and_alertmanager_and_resolves() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pd = FakePagerDuty::start().await?;
    let am = AlertmanagerProc::start(&dir.path().join("am"), &alertmanager_for_tests(&pd.url(), ROUTING_KEY)?).await?;

    let ch_dir = dir.path().join("ch");
    let mut ch = ClickHouseProc::start(&ch_dir).await?;
    let ch_port = ch.port;
    let url = ch.url();
    let controller = ControllerProc::start(&dir.path().join("c"), free_port(), free_port(), &[]).await?;
    let agent = AgentProc::start(
        &controller.grpc_url(),
        "ch-1",
        &dir.path().join("spool"),
        free_port(),
        &["--interval", "1s", "--clickhouse-url", &url, "--clickhouse-timeout", "1s"],
    )
    .await?;

    let rules = rules_for_tests(dir.path(), "2s")?;
    let rule_list: Vec<String> = rules.iter().map(|p| format!("  - {}", p.display())).collect();
    let prom_cfg = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n{}\n\
         alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{}']\n\
         scrape_configs:\n  - job_name: medic-agent\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n  \
         - job_name: medic-controller\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
        rule_list.join("\n"),
        am.port,
        agent.http,
        controller.http
    );
    let prom = PrometheusProc::start(&dir.path().join("prom"), &prom_cfg).await?;
    eventually(Duration::from_secs(30), || async {
        Ok((prom.query("clickhouse_up == 1").await?.len() == 1).then_some(()))
    })
    .await?;
    assert!(
        pd.events().iter().all(|e| e["payload"]["summary"].as_str().is_none_or(|s| !s.contains("does not answer"))),
        "no page while healthy"
    );

    // The fault: ClickHouse dies.
    ch.proc.kill9();
    let trigger = eventually(Duration::from_secs(60), || async {
        let found = pd.events().into_iter().find(|e| {
            e["event_action"] == "trigger"
                && e["payload"]["summary"].as_str().is_some_and(|s| s.contains("does not answer"))
        });
        Ok(found)
    })
    .await?;
    assert_eq!(trigger["routing_key"], ROUTING_KEY);
    assert_eq!(trigger["payload"]["severity"], "critical");
    assert_eq!(trigger["payload"]["summary"], format!("ClickHouse on 127.0.0.1:{} does not answer", agent.http));
    assert_eq!(trigger["payload"]["custom_details"]["runbook"], "deploy/prometheus/runbooks.md#clickhousedown");
    assert!(
        trigger["payload"]["custom_details"]["description"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot query ClickHouse")
    );
    assert_eq!(trigger["client"], "Medic");
    let dedup = trigger["dedup_key"].as_str().unwrap_or_default().to_string();
    assert!(!dedup.is_empty());

    // The fix: ClickHouse is back, and the same incident resolves.
    let _ch = ClickHouseProc::start_on(&ch_dir, ch_port).await?;
    let resolve = eventually(Duration::from_secs(60), || async {
        Ok(pd.events().into_iter().find(|e| e["event_action"] == "resolve" && e["dedup_key"] == dedup.as_str()))
    })
    .await?;
    assert_eq!(resolve["routing_key"], ROUTING_KEY);
    // One problem, one incident: every event about it carries the same dedup key.
    let about_it: Vec<serde_json::Value> = pd
        .events()
        .into_iter()
        .filter(|e| e["payload"]["summary"].as_str().is_some_and(|s| s.contains("does not answer")))
        .collect();
    if about_it.iter().any(|e| e["dedup_key"] != dedup.as_str()) {
        bail!("several incidents for one outage: {about_it:#?}");
    }
    Ok(())
}

/// The controller's own alerts: a rule's notify step pages through Alertmanager while its
/// condition holds and resolves when it clears; a remediation that does not help escalates as a
/// critical page; an action waiting for approval pages with the way to approve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_posts_notify_and_escalation_alerts_that_page_and_resolve() -> Result<()> {
    use std::io::Write;
    let dir = tempfile::tempdir()?;
    let pd = FakePagerDuty::start().await?;
    let am = AlertmanagerProc::start(&dir.path().join("am"), &alertmanager_for_tests(&pd.url(), ROUTING_KEY)?).await?;
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules)?;
    std::fs::write(
        rules.join("r.yaml"),
        "rules:
  - name: parts-pager
    when:
      log: { signature: too_many_parts, count: 1, window: 4s }
    do:
      - notify: { severity: warning, summary: \"Too many parts on this node\" }
    verify: { clears_within: 1m }
  - name: hopeless
    when:
      threshold: { metric: node_load1, op: \">=\", value: 0 }
    do:
      - restart: { how: service, service: dummy }
    verify: { clears_within: 2s }
  - name: needs-a-human
    when:
      threshold: { metric: node_load1, op: \">=\", value: 0 }
    do:
      - notify: { severity: info }
    guards: { approval: { expires_after: 1h } }
",
    )?;
    let log = dir.path().join("ch.log");
    std::fs::write(&log, "")?;
    let (r, am_url, l) = (rules.to_string_lossy().to_string(), am.url(""), log.to_string_lossy().to_string());
    let c = ControllerProc::start(
        &dir.path().join("c"),
        free_port(),
        free_port(),
        &["--rules-dir", &r, "--remediation-interval", "500ms", "--alertmanager-url", &am_url, "--alert-resend", "1s"],
    )
    .await?;
    let _agent = AgentProc::start(
        &c.grpc_url(),
        "ch-1",
        &dir.path().join("spool"),
        free_port(),
        &["--interval", "500ms", "--log-file", &l, "--service-restart", "dummy=true"],
    )
    .await?;

    // Escalation: "hopeless" acts, its condition never clears, so it escalates as critical.
    let escalation = eventually(Duration::from_secs(30), || async {
        Ok(pd.events().into_iter().find(|e| {
            e["event_action"] == "trigger"
                && e["payload"]["summary"].as_str().is_some_and(|s| s.contains("rule hopeless on ch-1 did not fix"))
        }))
    })
    .await?;
    assert_eq!(escalation["payload"]["severity"], "critical");
    assert_eq!(
        escalation["payload"]["custom_details"]["runbook"],
        "deploy/prometheus/runbooks.md#medicremediationfailed"
    );

    // Approval: an action that waits for a human pages, with the command that releases it.
    let approval = eventually(Duration::from_secs(30), || async {
        Ok(pd.events().into_iter().find(|e| {
            e["event_action"] == "trigger"
                && e["payload"]["summary"].as_str().is_some_and(|s| s.contains("on ch-1 waits for approval"))
        }))
    })
    .await?;
    assert_eq!(approval["payload"]["severity"], "warning");
    let how = approval["payload"]["custom_details"]["description"].as_str().unwrap_or_default();
    assert!(how.contains("controller actions approve"), "{how}");

    // Notify: pages while too-many-parts errors keep coming, resolves once they stop.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log)?;
    writeln!(
        f,
        "2026.11.24 06:00:00.000000 [ 7 ] {{q1}} <Error> executeQuery: Code: 252. DB::Exception: Too many parts (3001). (TOO_MANY_PARTS)"
    )?;
    drop(f);
    let trigger = eventually(Duration::from_secs(30), || async {
        Ok(pd
            .events()
            .into_iter()
            .find(|e| e["event_action"] == "trigger" && e["payload"]["summary"] == "Too many parts on this node"))
    })
    .await?;
    assert_eq!(trigger["payload"]["severity"], "warning");
    let dedup = trigger["dedup_key"].as_str().unwrap_or_default().to_string();
    eventually(Duration::from_secs(30), || async {
        Ok(pd.events().into_iter().find(|e| e["event_action"] == "resolve" && e["dedup_key"] == dedup.as_str()))
    })
    .await?;
    Ok(())
}

/// What no rule takes care of still reaches a human: a lasting anomaly on a metric no rule
/// watches, and a disk forecast to fill with no rule that could act, each page through the real
/// Alertmanager with the controller's explanation, and resolve when the cause is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anomaly_and_an_exhaustion_that_no_rule_handles_page_and_resolve() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pd = FakePagerDuty::start().await?;
    let am = AlertmanagerProc::start(&dir.path().join("am"), &alertmanager_for_tests(&pd.url(), ROUTING_KEY)?).await?;
    let am_url = am.url("");
    // No rule at all: everything detection finds is unhandled.
    let c = ControllerProc::start(
        &dir.path().join("c"),
        free_port(),
        free_port(),
        &[
            "--remediation-interval",
            "500ms",
            "--alertmanager-url",
            &am_url,
            "--alert-resend",
            "1s",
            "--unhandled-anomaly-for",
            "2s",
            // An application metric: not one of the built-in health signals.
            "--unhandled-anomaly-metric",
            "app_queue_depth:up",
        ],
    )
    .await?;
    let mut agent = SyntheticAgent::connect(&c.grpc_url(), "app-1", &[("role", "app")]).await?;
    let now = chrono::Utc::now().timestamp_millis();

    // Three days of a disk losing 10 % of 1 TB a day, 10 h from empty now; and ten minutes of a
    // quiet queue depth.
    let data: &[(&str, &str)] = &[("mountpoint", "/data")];
    let mut history = Vec::new();
    for i in (1..=432i64).rev() {
        let t = now - i * 600_000;
        let avail = 1e12 * 0.1 / 86_400_000.0 * (10.0 * 3_600_000.0 + (now - t) as f64);
        history.push(("node_filesystem_avail_bytes", data, t, avail));
    }
    for i in (1..=600i64).rev() {
        history.push(("app_queue_depth", &[][..], now - i * 1000, 10.0 + ((i * 7919) % 13) as f64 * 0.1));
    }
    agent.send(&history).await?;

    let page = |summary: &'static str| {
        let pd = &pd;
        async move {
            eventually(Duration::from_secs(40), || async {
                Ok(pd.events().into_iter().find(|e| {
                    e["event_action"] == "trigger"
                        && e["payload"]["summary"].as_str().is_some_and(|s| s.contains(summary))
                }))
            })
            .await
        }
    };
    let exhaustion = page("filesystem:/data on app-1 runs out in").await?;
    assert_eq!(exhaustion["payload"]["severity"], "critical", "under 24 h: {exhaustion:#}");
    assert_eq!(
        exhaustion["payload"]["custom_details"]["runbook"],
        "deploy/prometheus/runbooks.md#medicexhaustionunhandled"
    );
    let details = exhaustion["payload"]["custom_details"]["description"].as_str().unwrap_or_default();
    assert!(details.contains("No rule has a forecast condition"), "{details}");
    let m = scrape(&c.url("/metrics")).await?;
    assert_eq!(m.get("medic_unhandled_exhaustions").copied(), Some(1.0));

    // The queue depth jumps tenfold and stays there.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spike = tokio::spawn({
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        let stop = stop.clone();
        async move {
            let mut i = 0;
            while tokio::time::Instant::now() < deadline && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = chrono::Utc::now().timestamp_millis();
                if agent.send(&[("app_queue_depth", &[][..], t, 100.0 + (i % 3) as f64)]).await.is_err() {
                    break;
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            agent
        }
    });
    let anomaly = page("app_queue_depth on app-1 behaves abnormally").await?;
    assert_eq!(anomaly["payload"]["severity"], "warning");
    let open: Vec<serde_json::Value> = get_json(&c.url("/api/v1/anomalies/open?node=app-1")).await?;
    assert!(
        open.iter().any(|e| e["metric"] == "app_queue_depth" && e["baseline"].as_f64().is_some_and(|b| b < 20.0)),
        "the open episode remembers the baseline it left: {open:#?}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let dedup = anomaly["dedup_key"].as_str().unwrap_or_default().to_string();
    let mut agent = spike.await?;

    // The disk is cleaned up (plenty free, no longer falling) and the queue is quiet again: both
    // resolve. The forecast refreshes on its schedule, so only the anomaly is waited for here.
    for _ in 0..20 {
        let t = chrono::Utc::now().timestamp_millis();
        agent.send(&[("app_queue_depth", &[][..], t, 10.0)]).await?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if pd.events().iter().any(|e| e["event_action"] == "resolve" && e["dedup_key"] == dedup.as_str()) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the anomaly page never resolved: {:#?}", pd.events());
        }
        let t = chrono::Utc::now().timestamp_millis();
        agent.send(&[("app_queue_depth", &[][..], t, 10.0)]).await?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}
