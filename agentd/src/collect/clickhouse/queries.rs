//! Query statistics from system.query_log, read incrementally.
//!
//! Each round reads only the entries after the newest one the previous round saw (by
//! `event_time_microseconds`, on the server's clock, so agent clock skew does not matter); the
//! first round reads the last collection interval. Counts are accumulated into counters; latency
//! quantiles describe the queries finished in the window.
//!
//! query_log is written in batches (`flush_interval_milliseconds`, 7.5 s by default), so an entry
//! can appear well after its event time. That is why the cursor is the newest entry *seen*, not
//! the time of the round: entries flushed late are still newer than everything seen before.
//! Entries of queries finishing within microseconds of each other on different threads may
//! straddle a flush out of order; the rare one older than the cursor is missed.

use super::{MARKER, QueryError, UNKNOWN_TABLE, fetch_each};
use crate::collect::{counter, gauge};
use clickhouse::Client;
use medic_proto::v1::Sample;
use std::time::{Duration, Instant};

/// A round never reads further back than this, however long the agent could not reach the
/// server: a bounded scan of query_log, at the price of undercounting after a long outage.
pub const MAX_LOOKBACK: Duration = Duration::from_secs(3600);

pub const QUANTILES: [(f64, &str); 3] = [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99")];

/// What one window of query_log adds up to.
#[derive(Debug, Clone, Default, PartialEq, clickhouse::Row, serde::Deserialize)]
pub struct QueryLogRow {
    pub finished: u64,
    pub failed_before_start: u64,
    pub failed_while_processing: u64,
    /// Duration quantiles (seconds) of the finished queries, in [`QUANTILES`] order; meaningless
    /// when `finished` is 0.
    pub durations: Vec<f64>,
    /// Newest `event_time_microseconds` in the window (Unix µs), 0 when the window is empty.
    pub last_us: i64,
    /// The window's lower bound (Unix µs).
    pub lower_us: i64,
}

/// The cursor and the accumulated counts.
#[derive(Debug, Clone, Default)]
pub struct QueryLogWindow {
    cursor_us: Option<i64>,
    finished: u64,
    failed_before_start: u64,
    failed_while_processing: u64,
}

impl QueryLogWindow {
    pub fn cursor_us(&self) -> Option<i64> {
        self.cursor_us
    }

    /// The query for the next window. `quantiles` (reservoir of 8192) keeps the server's memory
    /// bounded on busy servers, and is exact below that many queries per window.
    pub fn sql(&self, interval: Duration) -> String {
        let lower = match self.cursor_us {
            Some(us) => format!(
                "greatest(fromUnixTimestamp64Micro(toInt64({us})), now64(6) - toIntervalSecond({}))",
                MAX_LOOKBACK.as_secs()
            ),
            None => {
                format!("now64(6) - toIntervalMillisecond({})", interval.as_millis().clamp(1, MAX_LOOKBACK.as_millis()))
            }
        };
        format!(
            "{MARKER} WITH {lower} AS lower SELECT \
             toUInt64(countIf(type = 'QueryFinish')) AS finished, \
             toUInt64(countIf(type = 'ExceptionBeforeStart')) AS failed_before_start, \
             toUInt64(countIf(type = 'ExceptionWhileProcessing')) AS failed_while_processing, \
             arrayMap(x -> toFloat64(x), quantilesIf(0.5, 0.9, 0.99)(query_duration_ms / 1000, type = 'QueryFinish')) AS durations, \
             toInt64(if(count() = 0, 0, toUnixTimestamp64Micro(max(event_time_microseconds)))) AS last_us, \
             toInt64(toUnixTimestamp64Micro(lower)) AS lower_us \
             FROM system.query_log \
             WHERE event_date >= toDate(lower) AND event_time >= toDateTime(lower) \
             AND event_time_microseconds > lower AND type != 'QueryStart' \
             AND NOT startsWith(query, '{MARKER}')"
        )
    }

    /// Accounts one window and appends this round's samples.
    pub fn advance(&mut self, row: &QueryLogRow, now_ms: i64, out: &mut Vec<Sample>) {
        self.finished += row.finished;
        self.failed_before_start += row.failed_before_start;
        self.failed_while_processing += row.failed_while_processing;
        // An empty window still moves a first-round cursor to its lower bound, so entries that
        // are flushed late are not lost to a window that keeps sliding.
        let newest = if row.last_us > 0 { row.last_us } else { row.lower_us };
        if newest > 0 {
            self.cursor_us = Some(self.cursor_us.map_or(newest, |c| c.max(newest)));
        }
        if row.finished > 0 {
            for ((_, q), v) in QUANTILES.iter().zip(&row.durations) {
                if v.is_finite() {
                    out.push(gauge("clickhouse_query_duration_seconds", &[("quantile", q)], now_ms, *v));
                }
            }
        }
        self.push_counters(now_ms, out);
    }

    /// The accumulated counters alone (a round whose query_log query failed, or where the table
    /// does not exist yet), so they never have gaps.
    pub fn push_counters(&self, now_ms: i64, out: &mut Vec<Sample>) {
        let t = "clickhouse_query_log_queries_total";
        out.push(counter(t, &[("type", "QueryFinish")], now_ms, self.finished as f64));
        out.push(counter(t, &[("type", "ExceptionBeforeStart")], now_ms, self.failed_before_start as f64));
        out.push(counter(t, &[("type", "ExceptionWhileProcessing")], now_ms, self.failed_while_processing as f64));
        let failed = self.failed_before_start + self.failed_while_processing;
        out.push(counter("clickhouse_failed_queries_total", &[], now_ms, failed as f64));
    }
}

pub async fn query_log(
    client: &Client,
    window: &mut QueryLogWindow,
    interval: Duration,
    deadline: Instant,
    timeout: Duration,
    now_ms: i64,
    out: &mut Vec<Sample>,
) -> Result<(), QueryError> {
    let sql = window.sql(interval);
    let mut row = None;
    let r = fetch_each::<QueryLogRow, _>(client, deadline, timeout, &sql, |r| row = Some(r)).await;
    match (r, row) {
        (Ok(_), Some(row)) => {
            window.advance(&row, now_ms, out);
            Ok(())
        }
        // query_log appears at its first flush, and not at all when the server disables it:
        // nothing to report, and nothing wrong.
        (Err(e), _) if e.server_code() == Some(UNKNOWN_TABLE) => {
            window.push_counters(now_ms, out);
            Ok(())
        }
        (Ok(_), None) => {
            window.push_counters(now_ms, out);
            Ok(())
        }
        (Err(e), _) => {
            window.push_counters(now_ms, out);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(out: &[Sample], metric: &str, label: Option<(&str, &str)>) -> Option<f64> {
        out.iter()
            .find(|s| {
                s.metric == metric && label.is_none_or(|(n, v)| s.labels.iter().any(|l| l.name == n && l.value == v))
            })
            .map(|s| s.value)
    }

    fn row(finished: u64, before: u64, during: u64, durations: &[f64], last_us: i64, lower_us: i64) -> QueryLogRow {
        QueryLogRow {
            finished,
            failed_before_start: before,
            failed_while_processing: during,
            durations: durations.to_vec(),
            last_us,
            lower_us,
        }
    }

    #[test]
    fn first_window_is_one_interval_then_follows_the_cursor() {
        let mut w = QueryLogWindow::default();
        let sql = w.sql(Duration::from_secs(10));
        assert!(sql.starts_with(MARKER), "{sql}");
        assert!(sql.contains("now64(6) - toIntervalMillisecond(10000)"), "{sql}");
        assert!(sql.contains(&format!("NOT startsWith(query, '{MARKER}')")), "{sql}");

        w.advance(&row(3, 0, 1, &[0.01, 0.02, 0.03], 1_700_000_000_123_456, 1_699_999_990_000_000), 1, &mut Vec::new());
        assert_eq!(w.cursor_us(), Some(1_700_000_000_123_456));
        let sql = w.sql(Duration::from_secs(10));
        assert!(sql.contains("fromUnixTimestamp64Micro(toInt64(1700000000123456))"), "{sql}");
        assert!(sql.contains("toIntervalSecond(3600)"), "the look-back is bounded: {sql}");
    }

    #[test]
    fn an_empty_window_pins_a_first_cursor_but_never_moves_one_back() {
        let mut w = QueryLogWindow::default();
        w.advance(&row(0, 0, 0, &[0.0, 0.0, 0.0], 0, 500), 1, &mut Vec::new());
        assert_eq!(w.cursor_us(), Some(500), "late-flushed entries after the first window still count");
        w.advance(&row(1, 0, 0, &[0.1, 0.1, 0.1], 900, 500), 2, &mut Vec::new());
        assert_eq!(w.cursor_us(), Some(900));
        w.advance(&row(0, 0, 0, &[0.0, 0.0, 0.0], 0, 600), 3, &mut Vec::new());
        assert_eq!(w.cursor_us(), Some(900), "never backwards");
    }

    #[test]
    fn counts_accumulate_and_quantiles_describe_only_the_window() {
        let mut w = QueryLogWindow::default();
        let mut out = Vec::new();
        w.advance(&row(10, 1, 2, &[0.005, 0.25, 1.5], 100, 1), 7, &mut out);
        assert_eq!(value(&out, "clickhouse_query_duration_seconds", Some(("quantile", "0.5"))), Some(0.005));
        assert_eq!(value(&out, "clickhouse_query_duration_seconds", Some(("quantile", "0.9"))), Some(0.25));
        assert_eq!(value(&out, "clickhouse_query_duration_seconds", Some(("quantile", "0.99"))), Some(1.5));
        assert_eq!(value(&out, "clickhouse_query_log_queries_total", Some(("type", "QueryFinish"))), Some(10.0));
        assert_eq!(value(&out, "clickhouse_failed_queries_total", None), Some(3.0));

        let mut out = Vec::new();
        w.advance(&row(0, 0, 4, &[0.0, 0.0, 0.0], 200, 100), 8, &mut out);
        assert_eq!(value(&out, "clickhouse_query_duration_seconds", None), None, "no finished query: no quantiles");
        assert_eq!(value(&out, "clickhouse_query_log_queries_total", Some(("type", "QueryFinish"))), Some(10.0));
        assert_eq!(
            value(&out, "clickhouse_query_log_queries_total", Some(("type", "ExceptionWhileProcessing"))),
            Some(6.0)
        );
        assert_eq!(value(&out, "clickhouse_failed_queries_total", None), Some(7.0));
        assert!(
            out.iter()
                .filter(|s| s.metric.ends_with("_total"))
                .all(|s| s.kind == medic_proto::v1::MetricKind::Counter as i32)
        );
    }
}
