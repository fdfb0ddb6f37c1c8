//! Replication health (system.replicas) and mutations (system.mutations).

use super::system::all_or_nothing;
use super::{QueryError, STUCK_MUTATION_AFTER, fetch_each};
use crate::collect::gauge;
use clickhouse::Client;
use medic_proto::v1::Sample;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clickhouse::Row, serde::Deserialize)]
pub struct ReplicaRow<'a> {
    pub database: &'a str,
    pub table: &'a str,
    pub is_readonly: u8,
    pub is_session_expired: u8,
    pub absolute_delay: u64,
    pub queue_size: u64,
    pub inserts_in_queue: u64,
    pub merges_in_queue: u64,
    /// Replication log entries not yet fetched into this replica's queue.
    pub log_delay: u64,
    pub total_replicas: u64,
    pub active_replicas: u64,
    pub lost_part_count: u64,
}

const REPLICAS_SQL: &str = sql!(
    "SELECT database, table, toUInt8(is_readonly) AS is_readonly, toUInt8(is_session_expired) AS is_session_expired,",
    " toUInt64(absolute_delay) AS absolute_delay, toUInt64(queue_size) AS queue_size,",
    " toUInt64(inserts_in_queue) AS inserts_in_queue, toUInt64(merges_in_queue) AS merges_in_queue,",
    " toUInt64(greatest(log_max_index, log_pointer) - log_pointer) AS log_delay,",
    " toUInt64(total_replicas) AS total_replicas, toUInt64(active_replicas) AS active_replicas,",
    " toUInt64(lost_part_count) AS lost_part_count FROM system.replicas"
);

pub fn replica_samples(row: &ReplicaRow<'_>, now_ms: i64, out: &mut Vec<Sample>) {
    let l = [("database", row.database), ("table", row.table)];
    let mut g = |name: &str, v: f64| out.push(gauge(name, &l, now_ms, v));
    g("clickhouse_replica_is_readonly", f64::from(row.is_readonly));
    g("clickhouse_replica_is_session_expired", f64::from(row.is_session_expired));
    g("clickhouse_replica_absolute_delay_seconds", row.absolute_delay as f64);
    g("clickhouse_replica_queue_size", row.queue_size as f64);
    g("clickhouse_replica_inserts_in_queue", row.inserts_in_queue as f64);
    g("clickhouse_replica_merges_in_queue", row.merges_in_queue as f64);
    g("clickhouse_replica_log_delay", row.log_delay as f64);
    g("clickhouse_replica_total_replicas", row.total_replicas as f64);
    g("clickhouse_replica_active_replicas", row.active_replicas as f64);
    g("clickhouse_replica_lost_part_count", row.lost_part_count as f64);
}

pub async fn replicas(
    client: &Client,
    deadline: Instant,
    timeout: Duration,
    now_ms: i64,
    out: &mut Vec<Sample>,
) -> Result<(), QueryError> {
    let start = out.len();
    let r = fetch_each::<ReplicaRow<'_>, _>(client, deadline, timeout, REPLICAS_SQL, |row| {
        replica_samples(&row, now_ms, out)
    })
    .await;
    all_or_nothing(out, start, r)
}

/// Mutations of one table. system.mutations keeps finished mutations for a while, so a table
/// whose mutations recover reports 0 instead of its series stopping.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
pub struct MutationRow<'a> {
    pub database: &'a str,
    pub table: &'a str,
    pub running: u64,
    /// Not done and older than [`STUCK_MUTATION_AFTER`], or failing.
    pub stuck: u64,
    /// Not done and its latest attempt failed (`latest_fail_reason` set).
    pub failed: u64,
}

fn mutations_sql() -> String {
    let stuck = STUCK_MUTATION_AFTER.as_secs();
    format!(
        "{} SELECT database, table, toUInt64(countIf(NOT is_done)) AS running, \
         toUInt64(countIf(NOT is_done AND (create_time < now() - INTERVAL {stuck} SECOND OR latest_fail_reason != ''))) AS stuck, \
         toUInt64(countIf(NOT is_done AND latest_fail_reason != '')) AS failed \
         FROM system.mutations GROUP BY database, table",
        super::MARKER
    )
}

pub fn mutation_samples(row: &MutationRow<'_>, now_ms: i64, out: &mut Vec<Sample>) {
    let l = [("database", row.database), ("table", row.table)];
    out.push(gauge("clickhouse_mutations_running", &l, now_ms, row.running as f64));
    out.push(gauge("clickhouse_mutations_stuck", &l, now_ms, row.stuck as f64));
    out.push(gauge("clickhouse_mutations_failed", &l, now_ms, row.failed as f64));
}

pub async fn mutations(
    client: &Client,
    deadline: Instant,
    timeout: Duration,
    now_ms: i64,
    out: &mut Vec<Sample>,
) -> Result<(), QueryError> {
    let start = out.len();
    let sql = mutations_sql();
    let r =
        fetch_each::<MutationRow<'_>, _>(client, deadline, timeout, &sql, |row| mutation_samples(&row, now_ms, out))
            .await;
    all_or_nothing(out, start, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(out: &[Sample]) -> Vec<(&str, f64)> {
        out.iter().map(|s| (s.metric.as_str(), s.value)).collect()
    }

    #[test]
    fn a_readonly_lagging_replica_maps_to_its_gauges() {
        let row = ReplicaRow {
            database: "db",
            table: "events",
            is_readonly: 1,
            is_session_expired: 1,
            absolute_delay: 420,
            queue_size: 31,
            inserts_in_queue: 20,
            merges_in_queue: 11,
            log_delay: 5,
            total_replicas: 3,
            active_replicas: 2,
            lost_part_count: 0,
        };
        let mut out = Vec::new();
        replica_samples(&row, 9, &mut out);
        assert_eq!(
            values(&out),
            [
                ("clickhouse_replica_is_readonly", 1.0),
                ("clickhouse_replica_is_session_expired", 1.0),
                ("clickhouse_replica_absolute_delay_seconds", 420.0),
                ("clickhouse_replica_queue_size", 31.0),
                ("clickhouse_replica_inserts_in_queue", 20.0),
                ("clickhouse_replica_merges_in_queue", 11.0),
                ("clickhouse_replica_log_delay", 5.0),
                ("clickhouse_replica_total_replicas", 3.0),
                ("clickhouse_replica_active_replicas", 2.0),
                ("clickhouse_replica_lost_part_count", 0.0),
            ]
        );
        for s in &out {
            let l: Vec<(&str, &str)> = s.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect();
            assert_eq!(l, [("database", "db"), ("table", "events")]);
            assert_eq!(s.timestamp_ms, 9);
        }
    }

    #[test]
    fn mutation_rows_map_to_running_stuck_failed() {
        let mut out = Vec::new();
        mutation_samples(&MutationRow { database: "db", table: "t", running: 3, stuck: 2, failed: 1 }, 1, &mut out);
        assert_eq!(
            values(&out),
            [
                ("clickhouse_mutations_running", 3.0),
                ("clickhouse_mutations_stuck", 2.0),
                ("clickhouse_mutations_failed", 1.0)
            ]
        );
        assert!(mutations_sql().starts_with(super::super::MARKER));
        assert!(mutations_sql().contains("INTERVAL 600 SECOND"));
    }
}
