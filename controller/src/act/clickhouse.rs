//! ClickHouse actions: TTL tuning (with the previous TTL kept for restoring), partition moves
//! from the fullest disk to the one with the most room, `SYSTEM RESTART REPLICA`, and the
//! allow-listed statements of `sql` steps.

use super::ActError;
use crate::rules::load::sql_allowed;
use crate::rules::model::{MoveTo, PartitionOrder, RebalanceStep, TtlStep};
use clickhouse::{Client, Row};
use serde::Deserialize;
use std::time::Duration;

fn ch(e: clickhouse::error::Error) -> ActError {
    ActError::ClickHouse(e.to_string())
}

/// Database and table names go into statements: accept plain identifiers only.
fn ident(s: &str) -> Result<String, ActError> {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(format!("`{s}`"))
    } else {
        Err(ActError::Refused(format!("{s:?} is not a plain identifier")))
    }
}

/// A table's TTL as ClickHouse reports it, and its length when it is `column + interval`.
#[derive(Debug, Clone, PartialEq)]
pub struct TableTtl {
    pub expression: String,
    pub seconds: Option<u64>,
}

/// Parses the `TTL …` clause out of `system.tables.engine_full`.
pub fn parse_ttl(engine_full: &str) -> Option<TableTtl> {
    let start = engine_full.find(" TTL ")? + 5;
    let rest = &engine_full[start..];
    let end = rest.find(" SETTINGS ").unwrap_or(rest.len());
    let expression = rest[..end].trim().to_string();
    let seconds =
        [("Second", 1), ("Minute", 60), ("Hour", 3600), ("Day", 86_400), ("Week", 604_800), ("Month", 2_592_000)]
            .iter()
            .find_map(|(unit, mult)| {
                let tag = format!("toInterval{unit}(");
                let i = expression.find(&tag)? + tag.len();
                let n: u64 = expression[i..].split(')').next()?.trim().parse().ok()?;
                Some(n * mult)
            });
    Some(TableTtl { expression, seconds })
}

pub async fn table_ttl(client: &Client, database: &str, table: &str) -> Result<Option<TableTtl>, ActError> {
    #[derive(Row, Deserialize)]
    struct T {
        engine_full: String,
    }
    let rows: Vec<T> = client
        .query("SELECT engine_full FROM system.tables WHERE database = ? AND name = ?")
        .bind(database)
        .bind(table)
        .fetch_all()
        .await
        .map_err(ch)?;
    let t = rows.first().ok_or_else(|| ActError::Refused(format!("table {database}.{table} does not exist")))?;
    Ok(parse_ttl(&t.engine_full))
}

/// What a TTL step did, so it can be undone.
#[derive(Debug, Clone, PartialEq)]
pub struct TtlChange {
    pub previous: TableTtl,
    pub new_seconds: u64,
}

/// Shortens the TTL by the step's factor, never below its `min`. Old parts are not rewritten
/// (`materialize_ttl_after_modify = 0`): expired rows go at the next merges, so the change is
/// cheap and quick to undo.
pub async fn shorten_ttl(client: &Client, step: &TtlStep) -> Result<TtlChange, ActError> {
    let previous = table_ttl(client, &step.database, &step.table)
        .await?
        .ok_or_else(|| ActError::Refused(format!("{}.{} has no TTL to shorten", step.database, step.table)))?;
    let current = previous.seconds.unwrap_or(step.max.as_secs()).min(step.max.as_secs());
    let min = step.min.as_secs();
    if current <= min {
        return Err(ActError::NothingToDo(format!("TTL is already at its minimum ({} s)", min)));
    }
    let new_seconds = ((current as f64 * step.factor) as u64).max(min);
    set_ttl(client, &step.database, &step.table, &format!("{} + INTERVAL {new_seconds} SECOND", ident(&step.column)?))
        .await?;
    Ok(TtlChange { previous, new_seconds })
}

pub async fn set_ttl(client: &Client, database: &str, table: &str, expression: &str) -> Result<(), ActError> {
    let sql = format!(
        "ALTER TABLE {}.{} MODIFY TTL {expression} SETTINGS materialize_ttl_after_modify = 0",
        ident(database)?,
        ident(table)?
    );
    client.query(&sql).execute().await.map_err(ch)
}

/// Puts back the TTL a [`shorten_ttl`] replaced.
pub async fn restore_ttl(client: &Client, step: &TtlStep, change: &TtlChange) -> Result<(), ActError> {
    set_ttl(client, &step.database, &step.table, &change.previous.expression).await
}

pub async fn restart_replica(client: &Client, database: &str, table: &str) -> Result<(), ActError> {
    client.query(&format!("SYSTEM RESTART REPLICA {}.{}", ident(database)?, ident(table)?)).execute().await.map_err(ch)
}

/// Runs one allow-listed statement (checked again here: the executor does not trust its caller).
pub async fn run_sql(client: &Client, statement: &str) -> Result<(), ActError> {
    if !sql_allowed(statement) {
        return Err(ActError::Refused(format!("{statement:?} is not on the allow-list")));
    }
    client.query(statement).execute().await.map_err(ch)
}

/// One partition to move.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionMove {
    pub database: String,
    pub table: String,
    pub partition_id: String,
    pub bytes: u64,
    pub from: String,
    pub to: String,
}

/// Picks partitions to move from the fullest disk (by free fraction) to the one with the most
/// room, oldest or largest first, until the source would reach `target_free` or the step's limit.
pub async fn plan_rebalance(client: &Client, step: &RebalanceStep) -> Result<Vec<PartitionMove>, ActError> {
    #[derive(Row, Deserialize)]
    struct D {
        name: String,
        free_space: u64,
        total_space: u64,
    }
    let disks: Vec<D> = client
        .query("SELECT name, free_space, total_space FROM system.disks WHERE total_space > 0")
        .fetch_all()
        .await
        .map_err(ch)?;
    if step.to == MoveTo::Volume {
        return Err(ActError::Refused("moves between volumes are planned per storage policy; use to: disk".into()));
    }
    let frac = |d: &D| d.free_space as f64 / d.total_space as f64;
    let (Some(src), Some(dst)) = (
        disks.iter().min_by(|a, b| frac(a).total_cmp(&frac(b))),
        disks.iter().max_by(|a, b| frac(a).total_cmp(&frac(b))),
    ) else {
        return Ok(Vec::new());
    };
    if src.name == dst.name {
        return Ok(Vec::new());
    }
    let need = (step.target_free * src.total_space as f64 - src.free_space as f64).max(0.0) as u64;
    let room = (dst.free_space as f64 - step.target_free * dst.total_space as f64).max(0.0) as u64;
    #[derive(Row, Deserialize)]
    struct P {
        database: String,
        table: String,
        partition_id: String,
        bytes: u64,
        oldest: u32,
    }
    let order = match step.order {
        PartitionOrder::Age => "oldest ASC",
        PartitionOrder::Size => "bytes DESC",
    };
    let parts: Vec<P> = client
        .query(&format!(
            "SELECT database, table, partition_id, sum(bytes_on_disk) AS bytes, toUInt32(min(min_time)) AS oldest
             FROM system.parts WHERE active AND disk_name = ? AND database != 'system'
             GROUP BY database, table, partition_id ORDER BY {order}"
        ))
        .bind(&src.name)
        .fetch_all()
        .await
        .map_err(ch)?;
    let mut moved = 0u64;
    let mut out = Vec::new();
    for p in parts {
        if moved >= need || out.len() >= step.max_partitions as usize {
            break;
        }
        if moved + p.bytes > room {
            continue;
        }
        moved += p.bytes;
        let _ = p.oldest;
        out.push(PartitionMove {
            database: p.database,
            table: p.table,
            partition_id: p.partition_id,
            bytes: p.bytes,
            from: src.name.clone(),
            to: dst.name.clone(),
        });
    }
    Ok(out)
}

pub async fn move_partition(client: &Client, m: &PartitionMove, timeout: Duration) -> Result<(), ActError> {
    let sql = format!(
        "ALTER TABLE {}.{} MOVE PARTITION ID '{}' TO DISK '{}'",
        ident(&m.database)?,
        ident(&m.table)?,
        m.partition_id.replace('\'', ""),
        m.to.replace('\'', "")
    );
    match tokio::time::timeout(timeout, client.query(&sql).execute()).await {
        Ok(r) => r.map_err(ch),
        Err(_) => {
            Err(ActError::ClickHouse(format!("moving partition {} did not finish within {timeout:?}", m.partition_id)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ttl_clause_and_its_length_come_out_of_engine_full() {
        let e = "MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY ts TTL ts + toIntervalDay(30) SETTINGS index_granularity = 8192";
        assert_eq!(
            parse_ttl(e),
            Some(TableTtl { expression: "ts + toIntervalDay(30)".into(), seconds: Some(2_592_000) })
        );
        let e = "MergeTree ORDER BY x TTL toDateTime(ts) + toIntervalSecond(604800)";
        assert_eq!(parse_ttl(e).and_then(|t| t.seconds), Some(604_800));
        assert_eq!(parse_ttl("MergeTree ORDER BY x SETTINGS index_granularity = 8192"), None);
    }

    #[test]
    fn identifiers_are_quoted_and_anything_else_refused() {
        assert_eq!(ident("events_2").unwrap(), "`events_2`");
        assert!(ident("x`; DROP TABLE y").is_err());
        assert!(ident("").is_err());
    }
}
