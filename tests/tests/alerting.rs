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
