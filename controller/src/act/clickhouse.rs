//! ClickHouse actions: TTL tuning (only the delete clause is shortened; the previous TTL is kept
//! for restoring), partition moves off a full disk within each table's storage policy,
//! `SYSTEM RESTART REPLICA`, and the allow-listed statements of `sql` steps.
//!
//! Statements are built from names that come from rule files, firings and system tables: every
//! name is quoted ([`quote_ident`], [`quote_str`]) and sent with `query_raw`, so that neither a `-`
//! nor a backtick nor a `?` in a name changes the statement.

use super::ActError;
use crate::rules::load::{name_problem, sql_check};
use crate::rules::model::{MoveTo, PartitionOrder, RebalanceStep, TtlStep};
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

fn ch(e: clickhouse::error::Error) -> ActError {
    ActError::ClickHouse(e.to_string())
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '\\' | '\'' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A database, table or column name as a backquoted identifier (`\` and `` ` `` escaped). Names
/// ClickHouse cannot have or that would not survive a statement (empty, control characters) are
/// refused.
pub fn quote_ident(name: &str) -> Result<String, ActError> {
    match name_problem(name) {
        Some(p) => Err(ActError::Refused(p)),
        None => Ok(format!("`{}`", escape(name))),
    }
}

/// A partition id, disk or volume name as a string literal (`\` and `'` escaped).
pub fn quote_str(s: &str) -> Result<String, ActError> {
    match name_problem(s) {
        Some(p) => Err(ActError::Refused(p)),
        None => Ok(format!("'{}'", escape(s))),
    }
}

fn table_name(database: &str, table: &str) -> Result<String, ActError> {
    Ok(format!("{}.{}", quote_ident(database)?, quote_ident(table)?))
}

// ---------------------------------------------------------------------------------------------
// TTL

/// A table's TTL clause as ClickHouse reports it, and the length of its delete clause when that
/// is `expression + interval` (the unconditional delete; else the first `… WHERE` delete).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableTtl {
    pub expression: String,
    pub seconds: Option<u64>,
}

/// What one element of a TTL clause does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlAction {
    /// Rows expire (no WHERE).
    Delete,
    /// Rows matching the WHERE expire.
    DeleteWhere,
    /// Parts move `TO DISK` / `TO VOLUME`.
    Move,
    /// Parts are recompressed.
    Recompress,
    /// Rows are rolled up (`GROUP BY … SET …`).
    GroupBy,
}

/// One element of a TTL clause: `time [action]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TtlElement {
    pub text: String,
    /// The time expression (`ts + toIntervalDay(30)`).
    pub time: String,
    pub action: TtlAction,
}

impl TtlElement {
    /// The interval added to the time expression, in seconds, when there is one.
    pub fn seconds(&self) -> Option<u64> {
        split_interval(&self.time).map(|(_, s)| s)
    }
}

/// `s` with everything inside quotes or brackets blanked out (byte for byte, delimiters kept), so
/// that keywords and commas found in it are top-level ones.
fn mask(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = b.to_vec();
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match quote {
            Some(q) => {
                if c == b'\\' && i + 1 < b.len() {
                    out[i] = b'_';
                    out[i + 1] = b'_';
                    i += 2;
                    continue;
                }
                if c == q {
                    quote = None;
                } else {
                    out[i] = b'_';
                }
            }
            None => match c {
                b'\'' | b'`' | b'"' => quote = Some(c),
                b'(' | b'[' => depth += 1,
                b')' | b']' => depth = depth.saturating_sub(1),
                _ if depth > 0 => out[i] = b'_',
                _ => {}
            },
        }
        i += 1;
    }
    out
}

fn find_top(masked: &[u8], pat: &str) -> Option<usize> {
    masked.windows(pat.len()).position(|w| w == pat.as_bytes())
}

/// `a + toIntervalDay(7)` → ("a", 604800); several intervals are added up.
fn split_interval(time: &str) -> Option<(String, u64)> {
    const UNITS: [(&str, u64); 8] = [
        ("Second", 1),
        ("Minute", 60),
        ("Hour", 3600),
        ("Day", 86_400),
        ("Week", 604_800),
        ("Month", 2_592_000),
        ("Quarter", 7_776_000),
        ("Year", 31_536_000),
    ];
    let m = mask(time);
    let mut cuts = vec![0];
    let mut i = 0;
    while let Some(p) = find_top(&m[i..], " + ") {
        cuts.push(i + p);
        i += p + 3;
    }
    cuts.push(time.len());
    let mut base = Vec::new();
    let mut seconds = 0u64;
    let mut found = false;
    for w in cuts.windows(2) {
        let term = time[w[0]..w[1]].trim_start_matches(" + ").trim();
        let interval = UNITS.iter().find_map(|(unit, mult)| {
            let n = term.strip_prefix("toInterval")?.strip_prefix(unit)?.strip_prefix('(')?.strip_suffix(')')?;
            n.trim().parse::<u64>().ok().map(|n| n.saturating_mul(*mult))
        });
        match interval {
            Some(s) => {
                seconds = seconds.saturating_add(s);
                found = true;
            }
            None => base.push(term),
        }
    }
    (found && !base.is_empty()).then(|| (base.join(" + "), seconds))
}

/// Whether a piece of a `SET` list is an assignment (`name = expr`).
fn is_assignment(piece: &str) -> bool {
    let m = mask(piece.trim());
    let p = String::from_utf8_lossy(&m);
    let name_end = p.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '`')).unwrap_or(p.len());
    let rest = p[name_end..].trim_start();
    name_end > 0 && rest.starts_with('=') && !rest.starts_with("==")
}

/// The elements of a TTL clause, split the way ClickHouse's parser reads them: at top-level
/// commas, except those inside a `GROUP BY` key list or `SET` assignment list.
pub fn ttl_elements(expression: &str) -> Vec<TtlElement> {
    let m = mask(expression);
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, c) in m.iter().enumerate() {
        if *c == b',' {
            pieces.push(&expression[start..i]);
            start = i + 1;
        }
    }
    pieces.push(&expression[start..]);
    #[derive(PartialEq)]
    enum State {
        Normal,
        Keys,
        Set,
    }
    let mut texts: Vec<String> = Vec::new();
    let mut state = State::Normal;
    for piece in pieces {
        let p = piece.trim();
        let continues = match state {
            State::Normal => false,
            State::Keys => true,
            State::Set => is_assignment(p),
        };
        match texts.last_mut() {
            Some(last) if continues => {
                last.push_str(", ");
                last.push_str(p);
            }
            _ => texts.push(p.to_string()),
        }
        let pm = mask(&format!(" {p} "));
        state = if find_top(&pm, " SET ").is_some() || (continues && state == State::Set) {
            State::Set
        } else if find_top(&pm, " GROUP BY ").is_some() || (continues && state == State::Keys) {
            State::Keys
        } else {
            State::Normal
        };
    }
    texts
        .into_iter()
        .filter(|t| !t.is_empty())
        .map(|text| {
            let m = mask(&text);
            let at = |k: &str| find_top(&m, k);
            let cut = [" TO DISK ", " TO VOLUME ", " DELETE", " RECOMPRESS ", " GROUP BY ", " WHERE "]
                .iter()
                .filter_map(|k| at(k))
                .min()
                .unwrap_or(text.len());
            let action = if at(" TO DISK ").or(at(" TO VOLUME ")).is_some() {
                TtlAction::Move
            } else if at(" RECOMPRESS ").is_some() {
                TtlAction::Recompress
            } else if at(" GROUP BY ").is_some() {
                TtlAction::GroupBy
            } else if at(" WHERE ").is_some() {
                TtlAction::DeleteWhere
            } else {
                TtlAction::Delete
            };
            TtlElement { time: text[..cut].trim().to_string(), text, action }
        })
        .collect()
}

/// The delete clauses a TTL step shortens: the unconditional one, or, without it, every
/// `… WHERE` delete. Moves, recompression and roll-ups are never touched.
fn deletes(elements: &[TtlElement]) -> Vec<usize> {
    let plain: Vec<usize> = (0..elements.len()).filter(|i| elements[*i].action == TtlAction::Delete).collect();
    if !plain.is_empty() {
        return plain;
    }
    (0..elements.len()).filter(|i| elements[*i].action == TtlAction::DeleteWhere).collect()
}

/// Parses the `TTL …` clause out of `system.tables.engine_full`.
pub fn parse_ttl(engine_full: &str) -> Option<TableTtl> {
    let m = mask(engine_full);
    let start = find_top(&m, " TTL ")? + 5;
    let end = find_top(&m[start..], " SETTINGS ").map(|e| start + e).unwrap_or(engine_full.len());
    let expression = engine_full[start..end].trim().to_string();
    let elements = ttl_elements(&expression);
    let seconds = deletes(&elements).first().and_then(|i| elements[*i].seconds());
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TtlChange {
    pub previous: TableTtl,
    /// The length of the (first) shortened delete clause.
    pub new_seconds: u64,
    /// The whole TTL clause as Medic set it.
    pub expression: String,
    /// The partitions whose TTL was materialised (expired rows deleted in the background).
    pub materialized: Vec<String>,
}

/// `seconds` in the largest unit that divides it, for a TTL a person can read.
fn interval(seconds: u64) -> String {
    let (unit, n) = [("Day", 86_400), ("Hour", 3600), ("Minute", 60)]
        .iter()
        .find(|(_, m)| seconds > 0 && seconds.is_multiple_of(*m))
        .map(|(u, m)| (*u, seconds / m))
        .unwrap_or(("Second", seconds));
    format!("toInterval{unit}({n})")
}

/// The TTL clause with its delete clause(s) shortened by the step's factor, never below `min` nor
/// ever lengthened, everything else kept as written, and the shortest new delete time.
/// `Ok(None)`: already at the minimum.
///
/// A move (`TO DISK`/`TO VOLUME`) kept as written may then fall at or after the new delete time:
/// rows are deleted before they would move, so no I/O is spent moving data about to go, and the
/// tiering is back unchanged when the TTL is restored.
pub fn shortened(ttl: &TableTtl, step: &TtlStep) -> Result<Option<(String, u64)>, ActError> {
    let elements = ttl_elements(&ttl.expression);
    let targets = deletes(&elements);
    if targets.is_empty() {
        return Err(ActError::Refused(format!(
            "the TTL of {}.{} ({}) has no delete clause, only moves, recompression or roll-ups: a ttl step shortens how long rows are kept",
            step.database, step.table, ttl.expression
        )));
    }
    let (min, max) = (step.min.as_secs(), step.max.as_secs());
    let mut texts: Vec<String> = elements.iter().map(|e| e.text.clone()).collect();
    let mut shortest = None;
    for i in targets {
        let e = &elements[i];
        let (base, current) = match split_interval(&e.time) {
            Some((base, s)) => (base, s.min(max)),
            // No interval to scale: fall back to the step's column, starting from `max`.
            None => (quote_ident(&step.column)?, max),
        };
        if current <= min {
            continue;
        }
        let new = ((current as f64 * step.factor) as u64).max(min);
        texts[i] = format!("{base} + {}{}", interval(new), &e.text[e.time.len()..]);
        shortest = Some(shortest.map_or(new, |s: u64| s.min(new)));
    }
    Ok(shortest.map(|new| (texts.join(", "), new)))
}

/// Shortens the delete clause of the table's TTL by the step's factor, never below its `min`,
/// then has ClickHouse apply it to the partitions that now hold expired rows.
///
/// Parts keep the TTL they were written with until their TTL is materialised (a merge alone
/// does not apply a shortened TTL), so the change is made with `materialize_ttl_after_modify = 0`
/// and then `MATERIALIZE TTL` runs only for the partitions old enough to have rows past the new
/// delete time (all partitions when the partition key has no date): a mutation in the
/// background that rewrites those parts without their expired rows, and drops parts that expire
/// whole. Younger partitions are not touched.
pub async fn shorten_ttl(client: &Client, step: &TtlStep) -> Result<TtlChange, ActError> {
    let previous = table_ttl(client, &step.database, &step.table)
        .await?
        .ok_or_else(|| ActError::Refused(format!("{}.{} has no TTL to shorten", step.database, step.table)))?;
    let Some((expression, new_seconds)) = shortened(&previous, step)? else {
        return Err(ActError::NothingToDo(format!("TTL is already at its minimum ({} s)", step.min.as_secs())));
    };
    set_ttl(client, &step.database, &step.table, &expression).await?;
    // ClickHouse normalises what it is given; remember the clause as it now reads.
    let expression = table_ttl(client, &step.database, &step.table).await?.map(|t| t.expression).unwrap_or(expression);
    let materialized = materialize_ttl(client, &step.database, &step.table, new_seconds).await?;
    Ok(TtlChange { previous, new_seconds, expression, materialized })
}

/// Starts `MATERIALIZE TTL` for the partitions with data older than `seconds`; returns them.
async fn materialize_ttl(client: &Client, database: &str, table: &str, seconds: u64) -> Result<Vec<String>, ActError> {
    #[derive(Row, Deserialize)]
    struct P {
        partition_id: String,
    }
    let old: Vec<P> = client
        .query(
            "SELECT partition_id FROM system.parts WHERE active AND database = ? AND table = ?
             GROUP BY partition_id
             HAVING min(toUInt32(min_time)) = 0 OR min(toUInt32(min_time)) <= toUInt32(now()) - ?
             ORDER BY partition_id",
        )
        .bind(database)
        .bind(table)
        .bind(seconds.min(u32::MAX as u64))
        .fetch_all()
        .await
        .map_err(ch)?;
    if old.is_empty() {
        return Ok(Vec::new());
    }
    let commands = old
        .iter()
        .map(|p| quote_str(&p.partition_id).map(|id| format!("MATERIALIZE TTL IN PARTITION ID {id}")))
        .collect::<Result<Vec<_>, _>>()?;
    let sql = format!("ALTER TABLE {} {}", table_name(database, table)?, commands.join(", "));
    client.query_raw(&sql).execute().await.map_err(ch)?;
    Ok(old.into_iter().map(|p| p.partition_id).collect())
}

pub async fn set_ttl(client: &Client, database: &str, table: &str, expression: &str) -> Result<(), ActError> {
    let sql = format!(
        "ALTER TABLE {} MODIFY TTL {expression} SETTINGS materialize_ttl_after_modify = 0",
        table_name(database, table)?
    );
    client.query_raw(&sql).execute().await.map_err(ch)
}

/// Puts back the TTL a [`shorten_ttl`] replaced, exactly as it was written, if the table still
/// has the TTL Medic set. A TTL someone changed since is left alone (an error says so); one that
/// is already back is fine.
pub async fn restore_ttl(client: &Client, step: &TtlStep, change: &TtlChange) -> Result<(), ActError> {
    let now = table_ttl(client, &step.database, &step.table).await?.map(|t| t.expression);
    match now.as_deref() {
        Some(e) if e == change.previous.expression => Ok(()),
        Some(e) if e == change.expression => {
            set_ttl(client, &step.database, &step.table, &change.previous.expression).await
        }
        other => Err(ActError::Refused(format!(
            "the TTL of {}.{} is now {}, not the one Medic set ({}): it was changed since, so Medic does not put back {} over it; restore it by hand if that is still wanted",
            step.database,
            step.table,
            other.unwrap_or("(none)"),
            change.expression,
            change.previous.expression
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Replicas

/// `SYSTEM RESTART REPLICA` for a replicated table that is read-only (its Keeper session was
/// lost, or it could not start). Returns what the replica looks like afterwards.
pub async fn restart_replica(client: &Client, database: &str, table: &str) -> Result<String, ActError> {
    #[derive(Row, Deserialize)]
    struct T {
        engine: String,
    }
    let t: Option<T> = client
        .query("SELECT engine FROM system.tables WHERE database = ? AND name = ?")
        .bind(database)
        .bind(table)
        .fetch_optional()
        .await
        .map_err(ch)?;
    let Some(t) = t else {
        return Err(ActError::Refused(format!(
            "table {database}.{table} does not exist on this server: the firing's target (its database and table labels) names no table here"
        )));
    };
    if !t.engine.starts_with("Replicated") {
        return Err(ActError::Refused(format!(
            "{database}.{table} is a {} table, not a Replicated*MergeTree: SYSTEM RESTART REPLICA only re-initialises replicated tables; fire `restart: {{ how: replica }}` only on clickhouse_replica_is_readonly",
            t.engine
        )));
    }
    let state = replica_state(client, database, table).await?;
    if state.as_ref().is_some_and(|s| s.is_readonly == 0 && s.is_session_expired == 0) {
        return Err(ActError::NothingToDo(format!("replica {database}.{table} is not read-only any more")));
    }
    client
        .query_raw(&format!("SYSTEM RESTART REPLICA {}", table_name(database, table)?))
        .execute()
        .await
        .map_err(ch)?;
    let after = match replica_state(client, database, table).await? {
        Some(s) if s.is_readonly == 0 => "read-write again".to_string(),
        Some(s) if s.zookeeper_exception.is_empty() => "still read-only".to_string(),
        Some(s) => format!("still read-only ({})", s.zookeeper_exception),
        None => "no longer in system.replicas".to_string(),
    };
    Ok(format!("SYSTEM RESTART REPLICA {database}.{table}: {after}"))
}

#[derive(Row, Deserialize)]
struct ReplicaState {
    is_readonly: u8,
    is_session_expired: u8,
    zookeeper_exception: String,
}

async fn replica_state(client: &Client, database: &str, table: &str) -> Result<Option<ReplicaState>, ActError> {
    client
        .query(
            "SELECT toUInt8(is_readonly) AS is_readonly, toUInt8(is_session_expired) AS is_session_expired, zookeeper_exception
             FROM system.replicas WHERE database = ? AND table = ?",
        )
        .bind(database)
        .bind(table)
        .fetch_optional()
        .await
        .map_err(ch)
}

/// Runs one allow-listed statement (checked again here: the executor does not trust its caller).
pub async fn run_sql(client: &Client, statement: &str) -> Result<(), ActError> {
    if let Err(why) = sql_check(statement) {
        return Err(ActError::Refused(format!("{statement:?} is not allowed: {why}")));
    }
    client.query_raw(statement).execute().await.map_err(ch)
}

// ---------------------------------------------------------------------------------------------
// Rebalance

/// One partition to move.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionMove {
    pub database: String,
    pub table: String,
    pub partition_id: String,
    pub bytes: u64,
    /// The disk it is moved off.
    pub from: String,
    /// `TO DISK` or `TO VOLUME`.
    pub kind: MoveTo,
    /// The disk or volume it goes to.
    pub to: String,
}

#[derive(Row, Deserialize)]
struct Disk {
    name: String,
    free_space: u64,
    total_space: u64,
}

#[derive(Row, Deserialize)]
struct Volume {
    policy_name: String,
    volume_name: String,
    disks: Vec<String>,
    max_data_part_size: u64,
}

#[derive(Row, Deserialize)]
struct Partition {
    database: String,
    table: String,
    partition_id: String,
    bytes: u64,
    largest: u64,
}

#[derive(Row, Deserialize)]
struct TablePolicy {
    database: String,
    name: String,
    storage_policy: String,
}

/// Picks partitions to move off `source` (the disk the firing names; else the fullest disk by
/// free fraction), oldest or largest first, until it would have `target_free` free or the step's
/// limit is reached. Each partition goes only where its table's storage policy allows: with
/// `to: disk` to the policy's disk, with `to: volume` to the policy's volume (one not holding the
/// source disk), that has the most room above `target_free` and can take it.
pub async fn plan_rebalance(
    client: &Client,
    step: &RebalanceStep,
    source: Option<&str>,
) -> Result<Vec<PartitionMove>, ActError> {
    let disks: Vec<Disk> =
        client.query("SELECT name, free_space, total_space FROM system.disks").fetch_all().await.map_err(ch)?;
    let src = match source {
        Some(name) => disks.iter().find(|d| d.name == name).ok_or_else(|| {
            ActError::Refused(format!(
                "the firing names disk {name:?}, which this server does not have (disks: {})",
                disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })?,
        None => disks
            .iter()
            .filter(|d| d.total_space > 0)
            .min_by(|a, b| {
                let f = |d: &Disk| d.free_space as f64 / d.total_space as f64;
                f(a).total_cmp(&f(b))
            })
            .ok_or_else(|| ActError::NothingToDo("the server reports no disk with a size".into()))?,
    };
    if src.total_space == 0 {
        return Err(ActError::Refused(format!("disk {} reports no size, so how full it is is unknown", src.name)));
    }
    let need = (step.target_free * src.total_space as f64 - src.free_space as f64).max(0.0) as u64;
    if need == 0 {
        return Err(ActError::NothingToDo(format!(
            "disk {} already has {:.1} % free (target {:.1} %)",
            src.name,
            100.0 * src.free_space as f64 / src.total_space as f64,
            100.0 * step.target_free
        )));
    }
    // Room on each disk above its own target_free share, used up as moves are planned.
    let mut room: BTreeMap<String, u64> = disks
        .iter()
        .filter(|d| d.total_space > 0 && d.name != src.name)
        .map(|d| (d.name.clone(), (d.free_space as f64 - step.target_free * d.total_space as f64).max(0.0) as u64))
        .collect();
    let volumes: Vec<Volume> = client
        .query(
            "SELECT policy_name, volume_name, disks, toUInt64(max_data_part_size) AS max_data_part_size
             FROM system.storage_policies ORDER BY policy_name, volume_priority",
        )
        .fetch_all()
        .await
        .map_err(ch)?;
    let order = match step.order {
        PartitionOrder::Age => "min(min_time) ASC, min(modification_time) ASC, partition_id ASC",
        PartitionOrder::Size => "bytes DESC, partition_id ASC",
    };
    let parts: Vec<Partition> = client
        .query(&format!(
            "SELECT database, table, partition_id, sum(bytes_on_disk) AS bytes, max(bytes_on_disk) AS largest
             FROM system.parts
             WHERE active AND disk_name = ? AND database NOT IN ('system', 'INFORMATION_SCHEMA', 'information_schema')
             GROUP BY database, table, partition_id ORDER BY {order}"
        ))
        .bind(&src.name)
        .fetch_all()
        .await
        .map_err(ch)?;
    let policies: BTreeMap<(String, String), String> = client
        .query("SELECT database, name, storage_policy FROM system.tables WHERE storage_policy != ''")
        .fetch_all::<TablePolicy>()
        .await
        .map_err(ch)?
        .into_iter()
        .map(|t| ((t.database, t.name), t.storage_policy))
        .collect();

    let mut moved = 0u64;
    let mut out = Vec::new();
    let mut nowhere = 0usize;
    for p in parts {
        if moved >= need || out.len() >= step.max_partitions as usize {
            break;
        }
        let Some(policy) = policies.get(&(p.database.clone(), p.table.clone())) else { continue };
        let in_policy = volumes.iter().filter(|v| &v.policy_name == policy);
        // Candidates: (destination, its disks, room).
        let candidates: Vec<(String, Vec<String>)> = match step.to {
            MoveTo::Disk => in_policy
                .flat_map(|v| v.disks.iter())
                .filter(|d| **d != src.name)
                .map(|d| (d.clone(), vec![d.clone()]))
                .collect(),
            MoveTo::Volume => in_policy
                .filter(|v| !v.disks.contains(&src.name))
                .filter(|v| v.max_data_part_size == 0 || v.max_data_part_size >= p.largest)
                .map(|v| (v.volume_name.clone(), v.disks.clone()))
                .collect(),
        };
        let room_of = |disks: &[String], room: &BTreeMap<String, u64>| -> (u64, u64) {
            let rooms = disks.iter().map(|d| room.get(d).copied().unwrap_or(0));
            (rooms.clone().sum(), rooms.max().unwrap_or(0))
        };
        let best = candidates
            .into_iter()
            .map(|(name, disks)| {
                let (total, widest) = room_of(&disks, &room);
                (name, disks, total, widest)
            })
            .filter(|(_, _, total, widest)| *total >= p.bytes && *widest >= p.largest)
            .max_by_key(|(_, _, total, _)| *total);
        let Some((to, to_disks, _, _)) = best else {
            nowhere += 1;
            continue;
        };
        // ClickHouse puts each part on one disk of the volume; count it against the roomiest.
        let mut left = p.bytes;
        let mut by_room: Vec<&String> = to_disks.iter().collect();
        by_room.sort_by_key(|d| std::cmp::Reverse(room.get(*d).copied().unwrap_or(0)));
        for d in by_room {
            let r = room.entry(d.clone()).or_default();
            let take = left.min(*r);
            *r -= take;
            left -= take;
        }
        moved += p.bytes;
        out.push(PartitionMove {
            database: p.database,
            table: p.table,
            partition_id: p.partition_id,
            bytes: p.bytes,
            from: src.name.clone(),
            kind: step.to,
            to,
        });
    }
    if out.is_empty() {
        let kind = if step.to == MoveTo::Disk { "disk" } else { "volume" };
        return Err(ActError::NothingToDo(if nowhere == 0 {
            format!("no partition of a MergeTree table is on disk {}", src.name)
        } else {
            format!(
                "none of the {nowhere} partitions on disk {} can move: no other {kind} in its table's storage policy has room for it above {:.0} % free (give the tables a storage policy with another {kind}, or add space)",
                src.name,
                100.0 * step.target_free
            )
        }));
    }
    Ok(out)
}

pub async fn move_partition(client: &Client, m: &PartitionMove, timeout: Duration) -> Result<(), ActError> {
    let sql = format!(
        "ALTER TABLE {} MOVE PARTITION ID {} TO {} {}",
        table_name(&m.database, &m.table)?,
        quote_str(&m.partition_id)?,
        if m.kind == MoveTo::Disk { "DISK" } else { "VOLUME" },
        quote_str(&m.to)?
    );
    match tokio::time::timeout(timeout, client.query_raw(&sql).execute()).await {
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
    fn a_ttl_clause_splits_into_its_elements_as_clickhouse_reads_them() {
        // As ClickHouse 26.9 writes it in engine_full.
        let ttl = "ts + toIntervalDay(7) TO VOLUME 'cold, warm', ts + toIntervalDay(3) WHERE lvl IN ('debug', 'trace'), \
                   ts + toIntervalDay(30), ts + toIntervalYear(1) RECOMPRESS CODEC(ZSTD(3)), \
                   ts + toIntervalMonth(2) GROUP BY k, j SET v = max(v), x = sum(x), ts + toIntervalYear(2)";
        let e = ttl_elements(ttl);
        let got: Vec<(&str, TtlAction, Option<u64>)> =
            e.iter().map(|e| (e.time.as_str(), e.action, e.seconds())).collect();
        assert_eq!(
            got,
            [
                ("ts + toIntervalDay(7)", TtlAction::Move, Some(7 * 86_400)),
                ("ts + toIntervalDay(3)", TtlAction::DeleteWhere, Some(3 * 86_400)),
                ("ts + toIntervalDay(30)", TtlAction::Delete, Some(30 * 86_400)),
                ("ts + toIntervalYear(1)", TtlAction::Recompress, Some(31_536_000)),
                ("ts + toIntervalMonth(2)", TtlAction::GroupBy, Some(2 * 2_592_000)),
                ("ts + toIntervalYear(2)", TtlAction::Delete, Some(2 * 31_536_000)),
            ]
        );
        assert_eq!(e[4].text, "ts + toIntervalMonth(2) GROUP BY k, j SET v = max(v), x = sum(x)");
        assert_eq!(e.iter().map(|e| e.text.as_str()).collect::<Vec<_>>().join(", "), ttl);
    }

    fn step(min_days: u64, max_days: u64) -> TtlStep {
        TtlStep {
            database: "db".into(),
            table: "t".into(),
            column: "ts".into(),
            min: Duration::from_secs(min_days * 86_400),
            max: Duration::from_secs(max_days * 86_400),
            factor: 0.5,
            restore_after: Duration::from_secs(3600),
        }
    }

    #[test]
    fn only_the_delete_clause_is_shortened_and_moves_stay_as_written() {
        let ttl = |e: &str| parse_ttl(&format!("MergeTree ORDER BY ts TTL {e}")).unwrap();
        let t = ttl("ts + toIntervalDay(7) TO VOLUME 'cold', ts + toIntervalDay(30)");
        assert_eq!(
            shortened(&t, &step(3, 30)).unwrap(),
            Some(("ts + toIntervalDay(7) TO VOLUME 'cold', ts + toIntervalDay(15)".into(), 15 * 86_400))
        );
        // The delete may come before the move: the move is kept (it will not happen while the
        // shorter TTL holds, and is back on restore).
        let t = ttl("ts + toIntervalDay(7) TO VOLUME 'cold', ts + toIntervalDay(10)");
        assert_eq!(
            shortened(&t, &step(3, 30)).unwrap().map(|s| s.0),
            Some("ts + toIntervalDay(7) TO VOLUME 'cold', ts + toIntervalDay(5)".into())
        );
        let t = ttl("ts + toIntervalDay(20) WHERE lvl = 'debug', ts + toIntervalDay(2) WHERE lvl = 'trace'");
        assert_eq!(
            shortened(&t, &step(3, 30)).unwrap().map(|s| s.0),
            Some("ts + toIntervalDay(10) WHERE lvl = 'debug', ts + toIntervalDay(2) WHERE lvl = 'trace'".into()),
            "WHERE deletes are shortened when there is no plain one, never lengthened to min"
        );
        let t = ttl("ts + toIntervalHour(36) GROUP BY k SET v = max(v), ts + toIntervalDay(30)");
        assert_eq!(
            shortened(&t, &step(1, 30)).unwrap().map(|s| s.0),
            Some("ts + toIntervalHour(36) GROUP BY k SET v = max(v), ts + toIntervalDay(15)".into())
        );
        assert!(matches!(
            shortened(&ttl("ts + toIntervalDay(7) TO DISK 'cold'"), &step(1, 30)),
            Err(ActError::Refused(_))
        ));
        assert_eq!(shortened(&ttl("ts + toIntervalDay(3)"), &step(3, 30)).unwrap(), None, "at the minimum");
        assert_eq!(
            shortened(&ttl("ts + toIntervalDay(5)"), &step(3, 30)).unwrap(),
            Some(("ts + toIntervalDay(3)".into(), 3 * 86_400)),
            "never below min"
        );
    }

    #[test]
    fn names_are_quoted_so_they_cannot_change_the_statement() {
        assert_eq!(quote_ident("events_2").unwrap(), "`events_2`");
        assert_eq!(quote_ident("my-db").unwrap(), "`my-db`");
        assert_eq!(quote_ident("x`; DROP TABLE y").unwrap(), "`x\\`; DROP TABLE y`");
        assert_eq!(quote_ident("a\\").unwrap(), "`a\\\\`");
        assert_eq!(quote_str("it's").unwrap(), "'it\\'s'");
        assert!(quote_ident("").is_err());
        assert!(quote_ident("a\nb").is_err());
        assert!(quote_str("a\0").is_err());
    }
}
