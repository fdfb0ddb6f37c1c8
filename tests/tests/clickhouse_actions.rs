//! ClickHouse remediation statements against the real engine: TTL shortened within its bounds and
//! restored exactly, allow-listed statements run and others refused, rebalance planning.

use anyhow::Result;
use controller::act::ActError;
use controller::act::clickhouse::{plan_rebalance, restore_ttl, run_sql, shorten_ttl, table_ttl};
use controller::rules::model::{MoveTo, PartitionOrder, RebalanceStep, TtlStep};
use medic_tests::ClickHouseProc;
use std::time::Duration;

fn ttl_step(min_days: u64, max_days: u64) -> TtlStep {
    TtlStep {
        database: "analytics".into(),
        table: "events".into(),
        column: "ts".into(),
        min: Duration::from_secs(min_days * 86_400),
        max: Duration::from_secs(max_days * 86_400),
        factor: 0.5,
        restore_after: Duration::from_secs(3600),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_is_shortened_within_bounds_and_restored_exactly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(dir.path()).await?;
    ch.query("CREATE DATABASE analytics").await?;
    ch.query(
        "CREATE TABLE analytics.events (ts DateTime, x UInt64) ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY ts
         TTL ts + INTERVAL 30 DAY",
    )
    .await?;
    let client = ch.client();
    let step = ttl_step(10, 30);

    let first = shorten_ttl(&client, &step).await?;
    assert_eq!(first.previous.seconds, Some(30 * 86_400));
    assert_eq!(first.new_seconds, 15 * 86_400, "30 d × 0.5");
    assert_eq!(table_ttl(&client, "analytics", "events").await?.and_then(|t| t.seconds), Some(15 * 86_400));

    let second = shorten_ttl(&client, &step).await?;
    assert_eq!(second.new_seconds, 10 * 86_400, "never below min");
    match shorten_ttl(&client, &step).await {
        Err(ActError::NothingToDo(m)) => assert!(m.contains("minimum"), "{m}"),
        other => panic!("at the minimum nothing is done: {other:?}"),
    }

    // Restoring the first change puts back the original clause exactly.
    restore_ttl(&client, &step, &first).await?;
    let now = table_ttl(&client, "analytics", "events").await?.expect("TTL");
    assert_eq!(now, first.previous);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allow_listed_statements_run_and_rebalance_needs_two_disks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(dir.path()).await?;
    let client = ch.client();
    run_sql(&client, "SYSTEM FLUSH LOGS").await?;
    ch.query("CREATE TABLE default.keep (x UInt64) ENGINE = MergeTree ORDER BY x").await?;
    match run_sql(&client, "DROP TABLE default.keep").await {
        Err(ActError::Refused(_)) => {}
        other => panic!("DROP must be refused: {other:?}"),
    }
    assert_eq!(ch.query("EXISTS TABLE default.keep").await?.trim(), "1");
    ch.query("INSERT INTO default.keep VALUES (1)").await?;
    let step = RebalanceStep { to: MoveTo::Disk, order: PartitionOrder::Age, target_free: 0.2, max_partitions: 10 };
    assert!(plan_rebalance(&client, &step).await?.is_empty(), "one disk: nowhere to move to");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_moves_the_oldest_partitions_from_the_fullest_disk_to_the_roomiest() -> Result<()> {
    use controller::act::clickhouse::move_partition;
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start_tiered(dir.path()).await?;
    ch.query(
        "CREATE TABLE default.ev (ts DateTime, x UInt64) ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY ts
         SETTINGS storage_policy = 'tiered'",
    )
    .await?;
    ch.query(
        "INSERT INTO default.ev SELECT toDateTime('2026-11-20 00:00:00') + number * 86400, number FROM numbers(5)",
    )
    .await?;
    let client = ch.client();
    // 5 % keeps the plan independent of how full the machine's own disk is: the test engine makes
    // the default disk look under 5 % free and the cold disk (the rest of the filesystem) roomy.
    let step = RebalanceStep { to: MoveTo::Disk, order: PartitionOrder::Age, target_free: 0.05, max_partitions: 2 };
    let plan = plan_rebalance(&client, &step).await?;
    let ids: Vec<&str> = plan.iter().map(|m| m.partition_id.as_str()).collect();
    assert_eq!(ids, ["20261120", "20261121"], "the two oldest, within max_partitions");
    assert!(plan.iter().all(|m| m.from == "default" && m.to == "cold"), "{plan:?}");
    for m in &plan {
        move_partition(&client, m, Duration::from_secs(30)).await?;
    }
    let placed = ch
        .query("SELECT groupArray((partition_id, disk_name)) FROM (SELECT partition_id, disk_name FROM system.parts WHERE table = 'ev' AND active ORDER BY partition_id)")
        .await?;
    assert_eq!(
        placed.trim(),
        "[('20261120','cold'),('20261121','cold'),('20261122','default'),('20261123','default'),('20261124','default')]"
    );
    Ok(())
}
