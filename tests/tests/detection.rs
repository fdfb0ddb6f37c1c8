//! Detection results are data: what the controller finds in a live stream (an anomaly, a
//! forecast exhaustion) is on its API and /metrics with the explanation, stored, and still served
//! after the controller restarts — whose forecasters pick up the stored history.

use anyhow::Result;
use medic_tests::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomalies_and_forecasts_are_served_with_their_explanation_and_survive_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (grpc, http) = (free_port(), free_port());
    let mut c = ControllerProc::start(&dir.path().join("c"), grpc, http, &[]).await?;
    let mut agent = SyntheticAgent::connect(&c.grpc_url(), "db-1", &[("role", "clickhouse")]).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let data: &[(&str, &str)] = &[("mountpoint", "/data")];
    // Three days of a filesystem losing 10 % of 1 TB a day, 2 days from empty now; ten minutes of a
    // steady request rate ending in a spike.
    let mut batch: Vec<GaugeSample> = (1..=432i64)
        .rev()
        .map(|i| {
            let t = now - i * 600_000;
            (
                "node_filesystem_avail_bytes",
                data,
                t,
                1e12 * 0.1 / 86_400_000.0 * (2.0 * 86_400_000.0 + (now - t) as f64),
            )
        })
        .collect();
    batch
        .extend((1..=600i64).rev().map(|i| ("app_requests", &[][..], now - i * 1000, 50.0 + ((i * 7919) % 13) as f64)));
    batch.push(("app_requests", &[][..], now, 900.0));
    agent.send(&batch).await?;

    let anomalies: Vec<serde_json::Value> = eventually(Duration::from_secs(20), || async {
        let a: Vec<serde_json::Value> = get_json(&c.url("/api/v1/anomalies?node=db-1&metric=app_requests")).await?;
        Ok(a.iter().any(|x| x["observed"] == 900.0).then_some(a))
    })
    .await?;
    let spike = anomalies.iter().find(|x| x["observed"] == 900.0).expect("found above");
    assert!(
        spike["baseline"].as_f64().is_some_and(|b| (40.0..70.0).contains(&b)),
        "explained by its baseline: {spike}"
    );
    assert!(spike["score"].as_f64().is_some_and(|s| s >= 0.5));
    assert!(spike["signals"].as_array().is_some_and(|s| !s.is_empty()), "and the signals that fired: {spike}");

    let forecast = eventually(Duration::from_secs(20), || async {
        let f: Vec<serde_json::Value> = get_json(&c.url("/api/v1/forecasts?node=db-1")).await?;
        Ok(f.into_iter().find(|x| x["resource"] == "filesystem:/data"))
    })
    .await?;
    let days = forecast["exhaustion_seconds"].as_f64().unwrap_or_default() / 86_400.0;
    assert!((1.5..2.5).contains(&days), "about two days to empty: {forecast}");
    let pessimistic = forecast["pessimistic_seconds"].as_f64().unwrap_or(f64::MAX) / 86_400.0;
    assert!(pessimistic <= days, "the pessimistic bound comes first: {forecast}");
    let m = scrape(&c.url("/metrics")).await?;
    assert!(
        m.iter().any(|(k, v)| k.starts_with("medic_forecast_exhaustion_seconds{")
            && k.contains("filesystem:/data")
            && (v / 86_400.0 - days).abs() < 0.01),
        "on /metrics too"
    );

    // Give the event log a moment to store them, then restart the controller on the same data.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(agent);
    c.proc.terminate()?;
    let restarted = chrono::Utc::now().timestamp_millis();
    let c = ControllerProc::start(&dir.path().join("c"), grpc, http, &[]).await?;
    let after: Vec<serde_json::Value> = get_json(&c.url("/api/v1/anomalies?node=db-1&metric=app_requests")).await?;
    assert!(after.iter().any(|x| x["observed"] == 900.0 && x["baseline"] == spike["baseline"]), "{after:#?}");
    let f: Vec<serde_json::Value> = get_json(&c.url("/api/v1/forecasts?node=db-1")).await?;
    assert!(
        f.iter().any(|x| x["resource"] == "filesystem:/data"),
        "a fresh forecast is served after a restart: {f:#?}"
    );

    // The forecaster's history came back too: the restarted controller forecasts again, fitted on
    // the stored three days (without them it would have nothing to fit on).
    let mut agent = SyntheticAgent::connect(&c.grpc_url(), "db-1", &[("role", "clickhouse")]).await?;
    let t = chrono::Utc::now().timestamp_millis();
    let avail = 1e12 * 0.1 / 86_400_000.0 * (2.0 * 86_400_000.0 - (t - now) as f64);
    agent.send(&[("node_filesystem_avail_bytes", data, t, avail)]).await?;
    let refit = eventually(Duration::from_secs(20), || async {
        let f: Vec<serde_json::Value> = get_json(&c.url("/api/v1/forecasts?node=db-1")).await?;
        Ok(f.into_iter().find(|x| {
            x["resource"] == "filesystem:/data" && x["computed_at_ms"].as_i64().is_some_and(|at| at >= restarted)
        }))
    })
    .await?;
    let days = refit["exhaustion_seconds"].as_f64().unwrap_or_default() / 86_400.0;
    assert!((1.5..2.5).contains(&days), "fitted on the stored history: {refit}");
    Ok(())
}
