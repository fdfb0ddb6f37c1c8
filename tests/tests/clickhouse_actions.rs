//! ClickHouse remediation statements against the real engine: TTL delete clauses shortened within
//! their bounds (moves, WHERE and GROUP BY kept) and restored exactly, allow-listed statements run
//! and others refused, partition moves planned within each table's storage policy (to a disk or a
//! volume, from the disk the firing names), `SYSTEM RESTART REPLICA` on a read-only replica.

use anyhow::Result;
use controller::act::ActError;
use controller::act::clickhouse::{
    PartitionMove, move_partition, plan_rebalance, restore_ttl, run_sql, shorten_ttl, table_ttl,
};
use controller::act::executor::{ClickHouseExecutor, Executor, Target};
use controller::rules::model::{MoveTo, PartitionOrder, RebalanceStep, RestartHow, RestartStep, Step, TtlStep};
use medic_tests::ClickHouseProc;
use std::collections::BTreeMap;
use std::time::Duration;

fn ttl_step(database: &str, table: &str, min_days: u64, max_days: u64) -> TtlStep {
    TtlStep {
        database: database.into(),
        table: table.into(),
        column: "ts".into(),
        min: Duration::from_secs(min_days * 86_400),
        max: Duration::from_secs(max_days * 86_400),
        factor: 0.5,
        restore_after: Duration::from_secs(3600),
    }
}

async fn ttl_text(client: &clickhouse::Client, db: &str, table: &str) -> Result<String> {
    Ok(table_ttl(client, db, table).await?.map(|t| t.expression).unwrap_or_default())
}

fn executor(ch: &ClickHouseProc) -> ClickHouseExecutor {
    ClickHouseExecutor { url_template: ch.url(), user: None, password: None, timeout: Duration::from_secs(30) }
}

async fn run(ex: &ClickHouseExecutor, step: &Step, target: &str) -> Result<String, ActError> {
    let labels = BTreeMap::new();
    let t = Target { node: "ch-1", target, labels: &labels, evidence: "test" };
    ex.run(step, &t).await.map(|d| d.message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_is_shortened_within_bounds_and_restored_exactly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(dir.path()).await?;
    // Names with '-' are quoted, not refused.
    ch.query("CREATE DATABASE `web-logs`").await?;
    ch.query(
        "CREATE TABLE `web-logs`.`events-2026` (ts DateTime, x UInt64) ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY ts
         TTL ts + INTERVAL 30 DAY",
    )
    .await?;
    let client = ch.client();
    let step = ttl_step("web-logs", "events-2026", 10, 30);

    let first = shorten_ttl(&client, &step).await?;
    assert_eq!(first.previous.seconds, Some(30 * 86_400));
    assert_eq!(first.new_seconds, 15 * 86_400, "30 d × 0.5");
    assert_eq!(ttl_text(&client, "web-logs", "events-2026").await?, "ts + toIntervalDay(15)");

    let second = shorten_ttl(&client, &step).await?;
    assert_eq!(second.new_seconds, 10 * 86_400, "never below min");
    match shorten_ttl(&client, &step).await {
        Err(ActError::NothingToDo(m)) => assert!(m.contains("minimum"), "{m}"),
        other => panic!("at the minimum nothing is done: {other:?}"),
    }

    // A restore never overwrites a TTL it did not set: the first change's restore waits until the
    // second one is undone, then puts back the original clause exactly.
    match restore_ttl(&client, &step, &first).await {
        Err(ActError::Refused(m)) => assert!(m.contains("was changed since"), "{m}"),
        other => panic!("the first change is not what the table has now: {other:?}"),
    }
    restore_ttl(&client, &step, &second).await?;
    assert_eq!(ttl_text(&client, "web-logs", "events-2026").await?, "ts + toIntervalDay(15)");
    restore_ttl(&client, &step, &first).await?;
    let now = table_ttl(&client, "web-logs", "events-2026").await?.expect("TTL");
    assert_eq!(now, first.previous);
    restore_ttl(&client, &step, &first).await?;
    assert_eq!(now, table_ttl(&client, "web-logs", "events-2026").await?.expect("TTL"), "restoring twice is harmless");

    // Someone changes the TTL by hand after Medic shortened it: Medic leaves theirs alone.
    let third = shorten_ttl(&client, &step).await?;
    ch.query("ALTER TABLE `web-logs`.`events-2026` MODIFY TTL ts + INTERVAL 12 DAY").await?;
    match restore_ttl(&client, &step, &third).await {
        Err(ActError::Refused(m)) => assert!(m.contains("restore it by hand"), "{m}"),
        other => panic!("a hand-made TTL is not overwritten: {other:?}"),
    }
    assert_eq!(ttl_text(&client, "web-logs", "events-2026").await?, "ts + toIntervalDay(12)");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiered_ttl_keeps_its_moves_and_only_its_delete_clause_is_shortened() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start_tiered(dir.path()).await?;
    ch.query(
        "CREATE TABLE default.tiered (ts DateTime, x UInt64) ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY ts
         TTL ts + INTERVAL 7 DAY TO VOLUME 'cold', ts + INTERVAL 30 DAY SETTINGS storage_policy = 'tiered'",
    )
    .await?;
    let client = ch.client();
    let original = ttl_text(&client, "default", "tiered").await?;
    assert_eq!(original, "ts + toIntervalDay(7) TO VOLUME 'cold', ts + toIntervalDay(30)");
    let step = ttl_step("default", "tiered", 3, 30);
    let mut changes = Vec::new();
    for expected in [
        "ts + toIntervalDay(7) TO VOLUME 'cold', ts + toIntervalDay(15)",
        "ts + toIntervalDay(7) TO VOLUME 'cold', ts + toIntervalHour(180)",
        // Now the delete comes before the move: the move stays as written (rows go before they
        // would move, so no I/O is spent on data about to be deleted).
        "ts + toIntervalDay(7) TO VOLUME 'cold', ts + toIntervalHour(90)",
        "ts + toIntervalDay(7) TO VOLUME 'cold', ts + toIntervalDay(3)",
    ] {
        let c = shorten_ttl(&client, &step).await?;
        assert_eq!(c.expression, expected);
        assert_eq!(ttl_text(&client, "default", "tiered").await?, expected);
        changes.push(c);
    }
    assert!(matches!(shorten_ttl(&client, &step).await, Err(ActError::NothingToDo(_))));
    for c in changes.iter().rev() {
        restore_ttl(&client, &step, c).await?;
    }
    assert_eq!(ttl_text(&client, "default", "tiered").await?, original, "the original clause, exactly");

    // A roll-up and a conditional delete: without a plain delete, the WHERE delete is shortened
    // (its condition kept) and the roll-up is left as it is.
    ch.query(
        "CREATE TABLE default.rollup (ts DateTime, k UInt64, lvl String, v UInt64) ENGINE = MergeTree ORDER BY (k, ts)
         TTL ts + INTERVAL 1 DAY GROUP BY k SET v = max(v), ts + INTERVAL 20 DAY DELETE WHERE lvl = 'debug'",
    )
    .await?;
    let original = ttl_text(&client, "default", "rollup").await?;
    let c = shorten_ttl(&client, &ttl_step("default", "rollup", 3, 30)).await?;
    assert_eq!(
        ttl_text(&client, "default", "rollup").await?,
        "ts + toIntervalDay(1) GROUP BY k SET v = max(v), ts + toIntervalDay(10) WHERE lvl = 'debug'"
    );
    restore_ttl(&client, &ttl_step("default", "rollup", 3, 30), &c).await?;
    assert_eq!(ttl_text(&client, "default", "rollup").await?, original);

    // Only moves: nothing to shorten, and the error says why.
    ch.query(
        "CREATE TABLE default.moves_only (ts DateTime) ENGINE = MergeTree ORDER BY ts
         TTL ts + INTERVAL 7 DAY TO VOLUME 'cold' SETTINGS storage_policy = 'tiered'",
    )
    .await?;
    match shorten_ttl(&client, &ttl_step("default", "moves_only", 3, 30)).await {
        Err(ActError::Refused(m)) => assert!(m.contains("no delete clause"), "{m}"),
        other => panic!("a TTL without a delete clause cannot be shortened: {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shortened_ttl_deletes_the_rows_it_expires_from_existing_parts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(dir.path()).await?;
    ch.query(
        "CREATE TABLE default.ev (ts DateTime, x UInt64) ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY ts
         TTL ts + INTERVAL 30 DAY",
    )
    .await?;
    ch.query("INSERT INTO default.ev VALUES (now() - INTERVAL 10 DAY, 10), (now() - INTERVAL 20 DAY, 20)").await?;
    let old = ch.query("SELECT toYYYYMMDD(now() - INTERVAL 20 DAY)").await?.trim().to_string();
    let c = shorten_ttl(&ch.client(), &ttl_step("default", "ev", 3, 30)).await?;
    assert_eq!(c.materialized, [old], "only the partition with rows past the new 15 days");
    // A merge alone would not apply the shorter TTL to parts written before it: the
    // materialisation runs as a mutation in the background.
    let mut left = String::new();
    for _ in 0..100 {
        left = ch.query("SELECT groupArray(x) FROM default.ev").await?.trim().to_string();
        if left == "[10]" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, "[10]", "20 days > the new 15; 10 days kept");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allow_listed_statements_run_and_rebalance_needs_two_disks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(dir.path()).await?;
    let client = ch.client();
    run_sql(&client, "SYSTEM FLUSH LOGS").await?;
    // A '?' in a literal is not a bind placeholder, and a KILL that names its query is allowed.
    run_sql(&client, "KILL QUERY WHERE query_id = 'no-such-query?' SYNC").await?;
    ch.query("CREATE TABLE default.keep (x UInt64) ENGINE = MergeTree ORDER BY x").await?;
    for bad in ["DROP TABLE default.keep", "KILL QUERY WHERE 1", "KILL MUTATION WHERE database = 'default'"] {
        match run_sql(&client, bad).await {
            Err(ActError::Refused(m)) => assert!(m.contains("not allowed"), "{m}"),
            other => panic!("{bad} must be refused: {other:?}"),
        }
    }
    assert_eq!(ch.query("EXISTS TABLE default.keep").await?.trim(), "1");
    ch.query("INSERT INTO default.keep VALUES (1)").await?;
    let step = RebalanceStep { to: MoveTo::Disk, order: PartitionOrder::Age, target_free: 0.99, max_partitions: 10 };
    match plan_rebalance(&client, &step, None).await {
        Err(ActError::NothingToDo(m)) => assert!(m.contains("can move"), "one disk: nowhere to move to: {m}"),
        other => panic!("one disk: nowhere to move to: {other:?}"),
    }
    Ok(())
}

fn placement(rows: &str) -> String {
    format!(
        "SELECT groupArray((partition_id, disk_name)) FROM (SELECT DISTINCT partition_id, disk_name FROM system.parts WHERE {rows} AND active ORDER BY partition_id)"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_moves_the_oldest_partitions_from_the_fullest_disk_to_the_roomiest() -> Result<()> {
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
    let plan = plan_rebalance(&client, &step, None).await?;
    let ids: Vec<&str> = plan.iter().map(|m| m.partition_id.as_str()).collect();
    assert_eq!(ids, ["20261120", "20261121"], "the two oldest, within max_partitions");
    assert!(plan.iter().all(|m| m.from == "default" && m.to == "cold" && m.kind == MoveTo::Disk), "{plan:?}");
    for m in &plan {
        move_partition(&client, m, Duration::from_secs(30)).await?;
    }
    assert_eq!(
        ch.query(&placement("table = 'ev'")).await?.trim(),
        "[('20261120','cold'),('20261121','cold'),('20261122','default'),('20261123','default'),('20261124','default')]"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_moves_only_what_the_tables_storage_policy_allows() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start_tiered(dir.path()).await?;
    ch.query("CREATE DATABASE `my-db`").await?;
    // The oldest partitions belong to a table whose policy has the default disk only.
    ch.query(
        "CREATE TABLE `my-db`.`hot-only` (ts DateTime, x UInt64) ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY ts",
    )
    .await?;
    ch.query(
        "INSERT INTO `my-db`.`hot-only` SELECT toDateTime('2026-01-01 00:00:00') + number * 86400, number FROM numbers(3)",
    )
    .await?;
    ch.query(
        "CREATE TABLE `my-db`.`ev-1` (ts DateTime, x UInt64) ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY ts
         SETTINGS storage_policy = 'tiered'",
    )
    .await?;
    ch.query(
        "INSERT INTO `my-db`.`ev-1` SELECT toDateTime('2026-11-20 00:00:00') + number * 86400, number FROM numbers(3)",
    )
    .await?;
    let client = ch.client();
    let step = RebalanceStep { to: MoveTo::Disk, order: PartitionOrder::Age, target_free: 0.05, max_partitions: 2 };
    let plan = plan_rebalance(&client, &step, None).await?;
    let got: Vec<(&str, &str, &str)> =
        plan.iter().map(|m| (m.table.as_str(), m.partition_id.as_str(), m.to.as_str())).collect();
    assert_eq!(got, [("ev-1", "20261120", "cold"), ("ev-1", "20261121", "cold")]);
    for m in &plan {
        move_partition(&client, m, Duration::from_secs(30)).await?;
    }
    assert_eq!(
        ch.query(&placement("database = 'my-db' AND table = 'ev-1'")).await?.trim(),
        "[('20261120','cold'),('20261121','cold'),('20261122','default')]"
    );
    // What a policy-blind plan would have tried: ClickHouse refuses it.
    let outside = PartitionMove {
        database: "my-db".into(),
        table: "hot-only".into(),
        partition_id: "20260101".into(),
        bytes: 0,
        from: "default".into(),
        kind: MoveTo::Disk,
        to: "cold".into(),
    };
    assert!(move_partition(&client, &outside, Duration::from_secs(30)).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_by_size_moves_the_largest_partitions_first() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start_tiered(dir.path()).await?;
    ch.query(
        "CREATE TABLE default.ev (ts DateTime, x UInt64) ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY ts
         SETTINGS storage_policy = 'tiered'",
    )
    .await?;
    // Day 1: 10 rows, day 2: 50 000, day 3: 1 000, day 4: 20 000 (random values: they do not
    // compress away).
    for (day, rows) in [(1, 10), (2, 50_000), (3, 1_000), (4, 20_000)] {
        ch.query(&format!(
            "INSERT INTO default.ev SELECT toDateTime('2026-03-0{day} 00:00:00') + number % 86400, rand64() FROM numbers({rows})"
        ))
        .await?;
    }
    let client = ch.client();
    let step = RebalanceStep { to: MoveTo::Disk, order: PartitionOrder::Size, target_free: 0.05, max_partitions: 2 };
    let plan = plan_rebalance(&client, &step, None).await?;
    let ids: Vec<&str> = plan.iter().map(|m| m.partition_id.as_str()).collect();
    assert_eq!(ids, ["20260302", "20260304"], "the two largest, largest first");
    assert!(plan[0].bytes > plan[1].bytes, "{plan:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_to_a_volume_moves_partitions_to_the_roomiest_volume_of_the_policy() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start_tiered(dir.path()).await?;
    ch.query("CREATE DATABASE `my-db`").await?;
    ch.query(
        "CREATE TABLE `my-db`.`ev-3` (ts DateTime, x UInt64) ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY ts
         SETTINGS storage_policy = 'three_tier'",
    )
    .await?;
    ch.query(
        "INSERT INTO `my-db`.`ev-3` SELECT toDateTime('2026-11-20 00:00:00') + number * 86400, number FROM numbers(3)",
    )
    .await?;
    let client = ch.client();
    let step = RebalanceStep { to: MoveTo::Volume, order: PartitionOrder::Age, target_free: 0.05, max_partitions: 2 };
    let plan = plan_rebalance(&client, &step, None).await?;
    // v_warm comes next by priority, but v_cold (the cold disk) has twice its room.
    let got: Vec<(&str, MoveTo, &str)> =
        plan.iter().map(|m| (m.partition_id.as_str(), m.kind, m.to.as_str())).collect();
    assert_eq!(got, [("20261120", MoveTo::Volume, "v_cold"), ("20261121", MoveTo::Volume, "v_cold")]);
    for m in &plan {
        move_partition(&client, m, Duration::from_secs(30)).await?;
    }
    assert_eq!(
        ch.query(&placement("table = 'ev-3'")).await?.trim(),
        "[('20261120','cold'),('20261121','cold'),('20261122','default')]"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_starts_from_the_disk_the_firing_names() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start_tiered(dir.path()).await?;
    ch.query(
        "CREATE TABLE default.ev (ts DateTime, x UInt64) ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY ts
         SETTINGS storage_policy = 'three_tier'",
    )
    .await?;
    ch.query(
        "INSERT INTO default.ev SELECT toDateTime('2026-11-20 00:00:00') + number * 86400, number FROM numbers(4)",
    )
    .await?;
    // The two newest days are on warm; default (the fullest disk) keeps the two oldest.
    for p in ["20261122", "20261123"] {
        ch.query(&format!("ALTER TABLE default.ev MOVE PARTITION ID '{p}' TO DISK 'warm'")).await?;
    }
    // A target between warm's and cold's free fractions: warm is short of it, cold has room.
    let f = |d: &str| format!("SELECT free_space / total_space FROM system.disks WHERE name = '{d}'");
    let warm: f64 = ch.query(&f("warm")).await?.trim().parse()?;
    let cold: f64 = ch.query(&f("cold")).await?.trim().parse()?;
    assert!(warm < cold, "the test engine gives warm half of cold's room: {warm} vs {cold}");
    let step = Step::Rebalance(RebalanceStep {
        to: MoveTo::Disk,
        order: PartitionOrder::Age,
        target_free: (warm + cold) / 2.0,
        max_partitions: 10,
    });
    let ex = executor(&ch);
    // As the clickhouse-disk-nearly-full rule fires: clickhouse_disk_free_ratio{disk="warm"}.
    let msg = run(&ex, &step, "disk=warm").await?;
    assert!(msg.contains("warm→disk cold"), "{msg}");
    assert_eq!(
        ch.query(&placement("table = 'ev'")).await?.trim(),
        "[('20261120','default'),('20261121','default'),('20261122','cold'),('20261123','cold')]"
    );
    match run(&ex, &step, "clickhouse_disk:nvme9").await {
        Err(ActError::Refused(m)) => assert!(m.contains("\"nvme9\", which this server does not have"), "{m}"),
        other => panic!("an unknown disk is refused: {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_replica_is_restarted_by_the_table_its_firing_names() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start_with_test_keeper(dir.path()).await?;
    ch.query("CREATE DATABASE `my-db`").await?;
    ch.query(
        "CREATE TABLE `my-db`.`events-r` (x UInt64) ENGINE = ReplicatedMergeTree('/clickhouse/tables/events-r', 'r1') ORDER BY x",
    )
    .await?;
    ch.query("CREATE TABLE default.plain (x UInt64) ENGINE = MergeTree ORDER BY x").await?;
    // The embedded engine cannot replicate: the replica is read-only, as after a lost Keeper session.
    assert_eq!(
        ch.query("SELECT is_readonly FROM system.replicas WHERE database = 'my-db' AND table = 'events-r'")
            .await?
            .trim(),
        "1"
    );
    let inits = "SELECT sum(value) FROM system.errors WHERE name = 'NO_ELEMENTS_IN_CONFIG'";
    let before: u64 = ch.query(inits).await?.trim().parse()?;

    let ex = executor(&ch);
    let step = Step::Restart(RestartStep { how: RestartHow::Replica, service: "clickhouse-server".into() });
    // The target as clickhouse_replica_is_readonly{database, table} fires.
    let msg = run(&ex, &step, "database=my-db,table=events-r").await?;
    assert_eq!(msg, "SYSTEM RESTART REPLICA my-db.events-r: still read-only");
    ch.query("SYSTEM FLUSH LOGS").await?;
    assert_eq!(
        ch.query(
            "SELECT query FROM system.query_log WHERE type = 'QueryFinish' AND query_kind = 'System' AND query LIKE 'SYSTEM RESTART REPLICA%'"
        )
        .await?
        .trim(),
        "SYSTEM RESTART REPLICA `my-db`.`events-r`"
    );
    let after: u64 = ch.query(inits).await?.trim().parse()?;
    assert!(after > before, "the replica was re-initialised (and failed to start again, as it must here)");

    match run(&ex, &step, "database=default,table=plain").await {
        Err(ActError::Refused(m)) => assert!(m.contains("is a MergeTree table, not a Replicated*MergeTree"), "{m}"),
        other => panic!("a table that is not replicated: {other:?}"),
    }
    match run(&ex, &step, "database=default,table=gone").await {
        Err(ActError::Refused(m)) => assert!(m.contains("does not exist"), "{m}"),
        other => panic!("a table that does not exist: {other:?}"),
    }
    match run(&ex, &step, "disk=default").await {
        Err(ActError::Refused(m)) => assert!(m.contains("needs a firing that names a table"), "{m}"),
        other => panic!("a firing without a table: {other:?}"),
    }
    Ok(())
}
