//! Per-table part statistics (system.tables + system.parts) and detached parts.

use super::system::all_or_nothing;
use super::{QueryError, fetch_each};
use crate::collect::gauge;
use clickhouse::Client;
use medic_proto::v1::Sample;
use std::time::{Duration, Instant};

/// One MergeTree-family table. Tables without active parts have zeros, so emptying a table (or a
/// part count falling to nothing) shows as 0 rather than as a series that stops.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
pub struct TableRow<'a> {
    pub database: &'a str,
    pub table: &'a str,
    pub parts: u64,
    pub rows: u64,
    pub bytes: u64,
    pub max_parts_per_partition: u64,
}

/// Every MergeTree-family engine ends in `MergeTree` (Replicated…, Replacing…, Shared…); the
/// `System…MergeTreeSettings` tables do not. The system database is included: query_log and
/// friends are real MergeTree tables and can get too many parts like any other. `ifNull` keeps the
/// types right on servers whose profile sets `join_use_nulls` (we may not override settings: the
/// monitoring user is often read-only).
const TABLES_SQL: &str = sql!(
    "SELECT t.database AS database, t.name AS table, toUInt64(ifNull(p.parts, 0)) AS parts,",
    " toUInt64(ifNull(p.rows, 0)) AS rows, toUInt64(ifNull(p.bytes, 0)) AS bytes,",
    " toUInt64(ifNull(p.max_parts_per_partition, 0)) AS max_parts_per_partition",
    " FROM system.tables AS t LEFT JOIN (",
    "SELECT database, table, sum(n) AS parts, sum(r) AS rows, sum(b) AS bytes, max(n) AS max_parts_per_partition",
    " FROM (SELECT database, table, partition_id, count() AS n, sum(rows) AS r, sum(bytes_on_disk) AS b",
    " FROM system.parts WHERE active GROUP BY database, table, partition_id)",
    " GROUP BY database, table) AS p ON p.database = t.database AND p.table = t.name",
    " WHERE endsWith(t.engine, 'MergeTree') AND NOT t.is_temporary"
);

pub fn table_samples(row: &TableRow<'_>, now_ms: i64, out: &mut Vec<Sample>) {
    let l = [("database", row.database), ("table", row.table)];
    out.push(gauge("clickhouse_table_parts", &l, now_ms, row.parts as f64));
    out.push(gauge("clickhouse_table_rows", &l, now_ms, row.rows as f64));
    out.push(gauge("clickhouse_table_bytes", &l, now_ms, row.bytes as f64));
    out.push(gauge("clickhouse_table_max_parts_per_partition", &l, now_ms, row.max_parts_per_partition as f64));
}

pub async fn tables(
    client: &Client,
    deadline: Instant,
    timeout: Duration,
    now_ms: i64,
    out: &mut Vec<Sample>,
) -> Result<(), QueryError> {
    let start = out.len();
    let r =
        fetch_each::<TableRow<'_>, _>(client, deadline, timeout, TABLES_SQL, |row| table_samples(&row, now_ms, out))
            .await;
    all_or_nothing(out, start, r)
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
pub struct DetachedRow<'a> {
    pub database: &'a str,
    pub table: &'a str,
    /// Empty for parts a user detached (`ALTER TABLE … DETACH PART`); otherwise why the server
    /// did (`broken`, `unexpected`, `ignored`, `clone`, `covered-by-broken`…).
    pub reason: &'a str,
    pub parts: u64,
}

const DETACHED_SQL: &str = sql!(
    "SELECT database, table, ifNull(reason, '') AS reason, toUInt64(count()) AS parts",
    " FROM system.detached_parts GROUP BY database, table, reason"
);

pub fn detached_sample(row: &DetachedRow<'_>, now_ms: i64) -> Sample {
    let l = [("database", row.database), ("table", row.table), ("reason", row.reason)];
    gauge("clickhouse_detached_parts", &l, now_ms, row.parts as f64)
}

pub async fn detached(
    client: &Client,
    deadline: Instant,
    timeout: Duration,
    now_ms: i64,
    out: &mut Vec<Sample>,
) -> Result<(), QueryError> {
    let start = out.len();
    let r = fetch_each::<DetachedRow<'_>, _>(client, deadline, timeout, DETACHED_SQL, |row| {
        out.push(detached_sample(&row, now_ms))
    })
    .await;
    all_or_nothing(out, start, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &Sample) -> Vec<(&str, &str)> {
        s.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect()
    }

    #[test]
    fn table_rows_become_four_gauges() {
        let mut out = Vec::new();
        let row = TableRow {
            database: "db",
            table: "events",
            parts: 12,
            rows: 1000,
            bytes: 4096,
            max_parts_per_partition: 7,
        };
        table_samples(&row, 5, &mut out);
        let got: Vec<(&str, f64)> = out.iter().map(|s| (s.metric.as_str(), s.value)).collect();
        assert_eq!(
            got,
            [
                ("clickhouse_table_parts", 12.0),
                ("clickhouse_table_rows", 1000.0),
                ("clickhouse_table_bytes", 4096.0),
                ("clickhouse_table_max_parts_per_partition", 7.0)
            ]
        );
        assert!(out.iter().all(|s| labels(s) == [("database", "db"), ("table", "events")] && s.timestamp_ms == 5));
    }

    #[test]
    fn detached_parts_keep_their_reason() {
        let s = detached_sample(&DetachedRow { database: "db", table: "t", reason: "broken", parts: 2 }, 1);
        assert_eq!(s.metric, "clickhouse_detached_parts");
        assert_eq!(s.value, 2.0);
        assert_eq!(labels(&s), [("database", "db"), ("reason", "broken"), ("table", "t")]);
    }
}
