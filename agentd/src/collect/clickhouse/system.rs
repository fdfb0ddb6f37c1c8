//! Server-wide tables: version and uptime, system.metrics / events / asynchronous_metrics, disks,
//! errors and merges.
//!
//! Numeric columns are cast in SQL to the type the row declares, so a column that changes width
//! between ClickHouse versions (UInt32 → UInt64…) does not fail row validation.

use super::{Query, QueryError, fetch_each, metric_name};
use crate::collect::{counter, gauge};
use clickhouse::Client;
use medic_proto::v1::Sample;
use std::time::{Duration, Instant};

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
pub struct VersionRow<'a> {
    pub uptime: u64,
    pub version: &'a str,
}

pub struct Version {
    pub uptime: u64,
    pub version: String,
}

pub async fn version(client: &Client, deadline: Instant, timeout: Duration) -> Result<Version, QueryError> {
    const SQL: &str = sql!("SELECT toUInt64(uptime()) AS uptime, version() AS version");
    let mut v = None;
    fetch_each::<VersionRow<'_>, _>(client, deadline, timeout, SQL, |r| {
        v = Some(Version { uptime: r.uptime, version: r.version.to_string() })
    })
    .await?;
    // A server always returns the one row; an empty answer is something in between (a proxy)
    // that is not ClickHouse.
    v.ok_or(QueryError::ClickHouse(clickhouse::error::Error::RowNotFound))
}

/// A row of system.metrics, system.events or system.asynchronous_metrics.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
pub struct NameValue<'a> {
    pub name: &'a str,
    pub value: f64,
}

/// How one of the three name/value tables is read and named.
pub struct NameValueSource {
    pub sql: &'static str,
    pub prefix: &'static str,
    pub suffix: &'static str,
    pub counter: bool,
}

pub fn source(q: Query) -> NameValueSource {
    match q {
        Query::Events => NameValueSource {
            sql: sql!("SELECT event AS name, toFloat64(value) AS value FROM system.events"),
            prefix: "clickhouse_events_",
            suffix: "_total",
            counter: true,
        },
        Query::AsyncMetrics => NameValueSource {
            sql: sql!("SELECT metric AS name, toFloat64(value) AS value FROM system.asynchronous_metrics"),
            prefix: "clickhouse_async_metrics_",
            suffix: "",
            counter: false,
        },
        _ => NameValueSource {
            sql: sql!("SELECT metric AS name, toFloat64(value) AS value FROM system.metrics"),
            prefix: "clickhouse_metrics_",
            suffix: "",
            counter: false,
        },
    }
}

pub fn name_value_sample(src: &NameValueSource, row: &NameValue<'_>, now_ms: i64) -> Option<Sample> {
    // Some asynchronous metrics are NaN until first computed; a NaN sample only poisons
    // aggregations downstream.
    if !row.value.is_finite() {
        return None;
    }
    let name = metric_name(src.prefix, row.name, src.suffix);
    Some(if src.counter { counter(&name, &[], now_ms, row.value) } else { gauge(&name, &[], now_ms, row.value) })
}

pub async fn name_values(
    client: &Client,
    q: Query,
    deadline: Instant,
    timeout: Duration,
    now_ms: i64,
    out: &mut Vec<Sample>,
) -> Result<(), QueryError> {
    let src = source(q);
    let start = out.len();
    let r = fetch_each::<NameValue<'_>, _>(client, deadline, timeout, src.sql, |row| {
        out.extend(name_value_sample(&src, &row, now_ms));
    })
    .await;
    all_or_nothing(out, start, r)
}

/// A failed query leaves nothing of its partial answer in `out`: half a table would look like
/// series disappearing.
pub(crate) fn all_or_nothing(
    out: &mut Vec<Sample>,
    start: usize,
    r: Result<usize, QueryError>,
) -> Result<(), QueryError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
pub struct DiskRow<'a> {
    pub name: &'a str,
    pub free: f64,
    pub total: f64,
    pub unreserved: f64,
}

pub fn disk_samples(row: &DiskRow<'_>, now_ms: i64, out: &mut Vec<Sample>) {
    let l = [("disk", row.name)];
    out.push(gauge("clickhouse_disk_free_bytes", &l, now_ms, row.free));
    out.push(gauge("clickhouse_disk_total_bytes", &l, now_ms, row.total));
    out.push(gauge("clickhouse_disk_unreserved_bytes", &l, now_ms, row.unreserved));
    // A ratio is what a rule can compare with one fixed value on disks of every size.
    if row.total > 0.0 {
        out.push(gauge("clickhouse_disk_free_ratio", &l, now_ms, row.free / row.total));
    }
}

pub async fn disks(
    client: &Client,
    deadline: Instant,
    timeout: Duration,
    now_ms: i64,
    out: &mut Vec<Sample>,
) -> Result<(), QueryError> {
    const SQL: &str = sql!(
        "SELECT name, toFloat64(free_space) AS free, toFloat64(total_space) AS total,",
        " toFloat64(unreserved_space) AS unreserved FROM system.disks"
    );
    let start = out.len();
    let r = fetch_each::<DiskRow<'_>, _>(client, deadline, timeout, SQL, |row| disk_samples(&row, now_ms, out)).await;
    all_or_nothing(out, start, r)
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
pub struct ErrorRow<'a> {
    pub name: &'a str,
    pub code: i32,
    pub value: f64,
}

pub fn error_sample(row: &ErrorRow<'_>, now_ms: i64) -> Sample {
    let code = row.code.to_string();
    counter("clickhouse_errors_total", &[("name", row.name), ("code", &code)], now_ms, row.value)
}

pub async fn errors(
    client: &Client,
    deadline: Instant,
    timeout: Duration,
    now_ms: i64,
    out: &mut Vec<Sample>,
) -> Result<(), QueryError> {
    // Local and remote (received from other shards) errors are summed: one series per error.
    const SQL: &str = sql!(
        "SELECT name, toInt32(code) AS code, toFloat64(sum(value)) AS value FROM system.errors GROUP BY name, code"
    );
    let start = out.len();
    let r =
        fetch_each::<ErrorRow<'_>, _>(client, deadline, timeout, SQL, |row| out.push(error_sample(&row, now_ms))).await;
    all_or_nothing(out, start, r)
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
pub struct MergesRow {
    pub running: u64,
    pub bytes: f64,
}

pub async fn merges(
    client: &Client,
    deadline: Instant,
    timeout: Duration,
    now_ms: i64,
    out: &mut Vec<Sample>,
) -> Result<(), QueryError> {
    const SQL: &str = sql!(
        "SELECT toUInt64(count()) AS running, toFloat64(sum(total_size_bytes_compressed)) AS bytes FROM system.merges"
    );
    let start = out.len();
    let r = fetch_each::<MergesRow, _>(client, deadline, timeout, SQL, |row| {
        out.push(gauge("clickhouse_merges_running", &[], now_ms, row.running as f64));
        out.push(gauge("clickhouse_merges_bytes", &[], now_ms, row.bytes));
    })
    .await;
    all_or_nothing(out, start, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(out: &'a [Sample], metric: &str) -> Option<&'a Sample> {
        out.iter().find(|s| s.metric == metric)
    }

    #[test]
    fn name_value_rows_become_one_metric_per_name() {
        let m = name_value_sample(&source(Query::Metrics), &NameValue { name: "Query", value: 3.0 }, 7);
        let m = m.expect("finite");
        assert_eq!((m.metric.as_str(), m.value, m.timestamp_ms), ("clickhouse_metrics_Query", 3.0, 7));
        assert_eq!(m.kind, medic_proto::v1::MetricKind::Gauge as i32);
        let e = name_value_sample(&source(Query::Events), &NameValue { name: "FailedQuery", value: 2.0 }, 7)
            .expect("finite");
        assert_eq!(e.metric, "clickhouse_events_FailedQuery_total");
        assert_eq!(e.kind, medic_proto::v1::MetricKind::Counter as i32);
        let a =
            name_value_sample(&source(Query::AsyncMetrics), &NameValue { name: "jemalloc.resident", value: 1e9 }, 7)
                .expect("finite");
        assert_eq!(a.metric, "clickhouse_async_metrics_jemalloc_resident");
        assert!(
            name_value_sample(&source(Query::AsyncMetrics), &NameValue { name: "X", value: f64::NAN }, 7).is_none()
        );
    }

    #[test]
    fn disk_and_error_rows() {
        let mut out = Vec::new();
        disk_samples(&DiskRow { name: "default", free: 10.0, total: 100.0, unreserved: 9.0 }, 1, &mut out);
        assert_eq!(find(&out, "clickhouse_disk_free_bytes").map(|s| s.value), Some(10.0));
        assert_eq!(find(&out, "clickhouse_disk_total_bytes").map(|s| s.value), Some(100.0));
        assert_eq!(find(&out, "clickhouse_disk_unreserved_bytes").map(|s| s.value), Some(9.0));
        assert_eq!(find(&out, "clickhouse_disk_free_ratio").map(|s| s.value), Some(0.1));
        assert!(
            out.iter().all(|s| s.labels.len() == 1 && s.labels[0].name == "disk" && s.labels[0].value == "default")
        );

        let e = error_sample(&ErrorRow { name: "UNKNOWN_TABLE", code: 60, value: 4.0 }, 1);
        assert_eq!(e.metric, "clickhouse_errors_total");
        assert_eq!(e.kind, medic_proto::v1::MetricKind::Counter as i32);
        let labels: Vec<(&str, &str)> = e.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect();
        assert_eq!(labels, [("code", "60"), ("name", "UNKNOWN_TABLE")]);
    }

    #[test]
    fn a_failed_query_leaves_nothing_behind() {
        let mut out = vec![gauge("keep", &[], 1, 1.0)];
        out.push(gauge("partial", &[], 1, 1.0));
        let r = all_or_nothing(&mut out, 1, Err(QueryError::Timeout(Duration::from_secs(1))));
        assert!(r.is_err());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].metric, "keep");
    }
}
