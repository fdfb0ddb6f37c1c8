//! The ClickHouse store (`controller --clickhouse-url`): production telemetry storage, shared by
//! every controller replica.
//!
//! Exactly-once without transactions — commit records. Every group the writer hands us gets a
//! `commit` number, unique to this store instance (the high 32 bits are a random incarnation, the
//! low ones count up, so replicas sharing the database never collide). Data rows (samples, logs)
//! carry it and their node's `spool` and `seq`; only after ClickHouse confirmed them is the
//! group's node state written to `nodes`, and only then does the controller ack. The node state
//! says what is stored: a node's rows with its current spool and a `seq` above the stored
//! `last_seq` belong to a group that was cut off by a crash. They are deleted before that node
//! writes again — when the node says hello (on whichever replica), see [`Store::refresh_nodes`] —
//! and the agent, which never got an ack, replays them.
//!
//! Retries are idempotent. A failed write is retried with the same rows under the same commit
//! number, and every insert carries `insert_deduplication_token` = (commit, table), which the
//! tables keep for their last [`DEDUP_WINDOW`] blocks: whichever copy of a block lands first is
//! the one kept. So a write that ClickHouse applied although the client saw an error (a timeout,
//! an answer lost), or an insert a frozen server applies only after its retry, is never stored
//! twice — and nothing is deleted after a failed write, so a commit record that landed unseen
//! never has its rows taken away. A batch is therefore never stored twice and never acked
//! unstored, whichever replica the agent talks to next.
//!
//! `nodes` is a ReplacingMergeTree keyed by node whose `version` grows by one with every write of
//! that node, continuing from the stored version the writing replica read — so the newest state
//! wins whichever replica wrote it.
//!
//! Every call to ClickHouse is bounded by `--clickhouse-timeout`. The store connects lazily:
//! [`ClickHouseStore::new`] does no I/O, and until the schema is set up (at the first call that
//! finds ClickHouse answering) every call fails with `Unavailable("waiting for ClickHouse at …")`.

use super::{EventKind, EventRecord, LogQuery, NodeRecord, Point, SeriesQuery, Store, StoreError, StoredLog, WriteSet};
use async_trait::async_trait;
use clickhouse::{Client, Row, insert::Insert, inserter::Inserter};
use medic_proto::v1::{Label, LogRecord};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Blocks whose deduplication token each telemetry and event table remembers: far more than
/// can land between an insert and its last retry (one group writes a block or two per table).
pub const DEDUP_WINDOW: u32 = 10_000;

/// Upper bound for the liveness probe (`/healthz`, the writer's idle check), below any sensible
/// `--clickhouse-timeout`: a hung server must make a probe answer "unhealthy", not time out.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Where and how to reach ClickHouse. Credentials never come from the command line.
#[derive(Clone)]
pub struct ClickHouseOptions {
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Rows older than this are dropped by ClickHouse's TTL.
    pub retention: Duration,
    /// Upper bound for one statement; a hung server must not hang ingest forever.
    pub timeout: Duration,
}

/// Hand-written so the password never reaches a log line through `{:?}`.
impl std::fmt::Debug for ClickHouseOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseOptions")
            .field("url", &redact_url(&self.url))
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("retention", &self.retention)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ClickHouseOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            database: "medic".into(),
            user: None,
            password: None,
            retention: Duration::from_secs(7 * 86400),
            timeout: Duration::from_secs(30),
        }
    }
}

/// The URL without any `user:password@`, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let host = &rest[at + 1..];
            match scheme {
                Some(scheme) => format!("{scheme}://<redacted>@{host}"),
                None => format!("<redacted>@{host}"),
            }
        }
        None => url.to_string(),
    }
}

#[derive(Row, Serialize)]
struct SampleRow<'a> {
    node: &'a str,
    metric: &'a str,
    labels: &'a str,
    ts: i64,
    value: f64,
    kind: i8,
    spool: &'a str,
    seq: u64,
    commit: u64,
}

#[derive(Row, Serialize)]
struct LogRow<'a> {
    node: &'a str,
    ts: i64,
    source: &'a str,
    level: i8,
    message: &'a str,
    fields: Vec<(&'a str, &'a str)>,
    spool: &'a str,
    seq: u64,
    idx: u32,
    commit: u64,
}

#[derive(Row, Serialize)]
struct NodeRow<'a> {
    node: &'a str,
    version: u64,
    record: &'a str,
}

/// The message of an error without its kind's prefix, to embed in another message.
fn message(e: &StoreError) -> &str {
    match e {
        StoreError::Io(m) | StoreError::Corrupt(m) | StoreError::Unavailable(m) | StoreError::BadQuery(m) => m,
    }
}

fn ch_err(context: &str, e: clickhouse::error::Error) -> StoreError {
    use clickhouse::error::Error as E;
    match e {
        E::Network(_) | E::TimedOut => StoreError::Unavailable(format!("{context}: {e}")),
        _ => StoreError::Io(format!("{context}: {e}")),
    }
}

/// Labels as one sortable string, `name="value",…` (Prometheus text syntax, so it reads well in
/// SQL too). Labels arrive sorted by name.
pub fn encode_labels(labels: &[Label], out: &mut String) {
    out.clear();
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&l.name);
        out.push_str("=\"");
        for c in l.value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

pub fn decode_labels(s: &str) -> Result<Vec<(String, String)>, StoreError> {
    let bad = || StoreError::Corrupt(format!("label string {s:?}"));
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").ok_or_else(bad)?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err(bad()),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(bad()),
            }
        };
        out.push((name.to_string(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(out)
}

/// One step of a schema migration.
enum Step {
    Sql(String),
    /// v3: v2's `events` rows into the table of their kind (decided from what is there).
    MoveEventsToKindTables,
}

struct Writers {
    /// Highest commit number of ours whose node state is stored; this instance's commit numbers
    /// are `incarnation << 32 | n`, and a group is written (and retried) as `committed + 1`.
    committed: u64,
    /// The stored `nodes.version` of every node this instance has read or written.
    versions: std::collections::HashMap<String, u64>,
}

/// Connecting and migrating, retried with backoff until ClickHouse answers.
struct Setup {
    /// No attempt before this (a server that is down is not asked on every call).
    next_attempt: Option<Instant>,
    delay: Duration,
}

pub struct ClickHouseStore {
    client: Client,
    /// The same connection settings scoped to Medic's database, for inserts (the crate quotes a
    /// table name as one identifier, so `db.table` cannot be passed as a name).
    data: Client,
    opts: ClickHouseOptions,
    writers: Mutex<Writers>,
    /// The schema is set up: calls go through.
    ready: AtomicBool,
    setup: Mutex<Setup>,
    /// Why the schema is not set up yet, for the errors of every call meanwhile.
    waiting: std::sync::Mutex<String>,
}

impl ClickHouseStore {
    /// Checks the options and prepares the connection, without contacting ClickHouse: the schema
    /// is created or migrated at the first call that finds the server answering (see
    /// [`Self::connect`]); until then every call fails with `StoreError::Unavailable`.
    pub fn new(opts: ClickHouseOptions) -> Result<Self, StoreError> {
        if !opts.database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || opts.database.is_empty() {
            return Err(StoreError::BadQuery(format!(
                "database name {:?} must be letters, digits and '_'",
                opts.database
            )));
        }
        if opts.timeout.is_zero() {
            return Err(StoreError::BadQuery("the ClickHouse timeout must be above zero".into()));
        }
        let mut client = Client::default()
            .with_url(&opts.url)
            .with_setting("max_execution_time", opts.timeout.as_secs().max(1).to_string());
        if let Some(u) = &opts.user {
            client = client.with_user(u);
        }
        if let Some(p) = &opts.password {
            client = client.with_password(p);
        }
        let data = client.clone().with_database(&opts.database);
        // Never 0: commit numbers below 2^32 are those of controllers that predate incarnations.
        let incarnation = u64::from(rand::random::<u32>() >> 1) + 1;
        Ok(Self {
            client,
            data,
            opts,
            writers: Mutex::new(Writers { committed: incarnation << 32, versions: Default::default() }),
            ready: AtomicBool::new(false),
            setup: Mutex::new(Setup { next_attempt: None, delay: Duration::from_millis(250) }),
            waiting: std::sync::Mutex::new("not connected yet".into()),
        })
    }

    /// Connects and creates or migrates the schema now, failing if ClickHouse does not answer.
    pub async fn open(opts: ClickHouseOptions) -> Result<Self, StoreError> {
        let store = Self::new(opts)?;
        store.migrate().await?;
        store.ready.store(true, Ordering::Release);
        Ok(store)
    }

    /// Sets the schema up if it is not yet (at most one attempt at a time, backing off while
    /// ClickHouse does not answer). Every call but [`Store::ping`] goes through here first.
    pub async fn connect(&self) -> Result<(), StoreError> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        // Whoever holds the lock is trying right now; the others are told to wait.
        if let Ok(mut setup) = self.setup.try_lock() {
            if self.ready.load(Ordering::Acquire) {
                return Ok(());
            }
            if setup.next_attempt.is_none_or(|t| Instant::now() >= t) {
                match self.migrate().await {
                    Ok(()) => {
                        self.ready.store(true, Ordering::Release);
                        tracing::info!(url = %redact_url(&self.opts.url), database = %self.db(), "ClickHouse store ready");
                        return Ok(());
                    }
                    Err(e) => {
                        let reason = message(&e).to_string();
                        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
                        // Said once per reason, not at every attempt.
                        if *waiting != reason {
                            tracing::warn!(url = %redact_url(&self.opts.url), error = %reason, "cannot set up the ClickHouse schema; retrying until ClickHouse answers");
                            *waiting = reason;
                        }
                        drop(waiting);
                        setup.next_attempt = Some(Instant::now() + setup.delay);
                        setup.delay = (setup.delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
        Err(self.waiting_error())
    }

    fn waiting_error(&self) -> StoreError {
        let reason = self.waiting.lock().unwrap_or_else(|p| p.into_inner()).clone();
        StoreError::Unavailable(format!("waiting for ClickHouse at {}: {reason}", redact_url(&self.opts.url)))
    }

    /// Runs a ClickHouse call with the configured bound: a hung server must not hang its caller.
    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, clickhouse::error::Error>>,
    ) -> Result<T, StoreError> {
        self.bounded_by(self.opts.timeout, what, fut).await
    }

    async fn bounded_by<T>(
        &self,
        limit: Duration,
        what: &str,
        fut: impl Future<Output = Result<T, clickhouse::error::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r.map_err(|e| ch_err(what, e)),
            Err(_) => Err(StoreError::Unavailable(format!("{what}: ClickHouse did not answer within {limit:?}"))),
        }
    }

    /// The crate's batching inserter for one group's rows of `table`: one INSERT, streamed as the
    /// rows are written (never a row count or period that would commit half a group), ended by
    /// `end()`, deduplicated by `token`. Its sends and its end are bounded by the timeout; the
    /// first write, which opens the INSERT (and reads the table's schema for row validation), is
    /// bounded by the caller.
    fn open_inserter<T: Row>(&self, table: &str, token: &str) -> Inserter<T> {
        let limit = Some(self.opts.timeout);
        self.data
            .inserter::<T>(table)
            .with_max_rows(u64::MAX)
            .with_max_bytes(u64::MAX)
            .with_period(None)
            .with_timeouts(limit, limit)
            // Explicitly on: a user profile may have turned deduplication off.
            .with_setting("insert_deduplicate", "1")
            .with_setting("insert_deduplication_token", token)
    }

    /// An INSERT into Medic's `table`, bounded like every call, deduplicated by `token` if given.
    async fn open_insert<T: Row>(&self, table: &str, token: Option<&str>) -> Result<Insert<T>, StoreError> {
        let what = format!("inserting into {table}");
        // With row validation the first insert into a table reads its schema: bounded too.
        let limit = Some(self.opts.timeout);
        let mut insert = self.bounded(&what, self.data.insert::<T>(table)).await?.with_timeouts(limit, limit);
        if let Some(token) = token {
            // Explicitly on: a user profile may have turned deduplication off.
            insert = insert.with_setting("insert_deduplicate", "1").with_setting("insert_deduplication_token", token);
        }
        Ok(insert)
    }

    fn db(&self) -> &str {
        &self.opts.database
    }

    async fn exec(&self, sql: &str) -> Result<(), StoreError> {
        self.bounded(sql.lines().next().unwrap_or(sql).trim(), self.client.query(sql).execute()).await
    }

    async fn fetch<T>(&self, q: clickhouse::query::Query, what: &str) -> Result<Vec<T>, StoreError>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        self.bounded(what, q.fetch_all::<T>()).await
    }

    async fn count(&self, sql: &str, what: &str) -> Result<u64, StoreError> {
        #[derive(Row, Deserialize)]
        struct C {
            n: u64,
        }
        let rows: Vec<C> = self.fetch(self.client.query(sql), what).await?;
        Ok(rows.first().map(|c| c.n).unwrap_or(0))
    }

    /// Schema versions, applied in order and recorded in `schema_migrations`. Changing a table
    /// means adding a migration, never editing an applied one. Every step can run again after a
    /// cut anywhere (a crash, ClickHouse gone) before its version was recorded: DDL with
    /// `IF [NOT] EXISTS`, and data moves decided in Rust from what is actually there.
    fn migrations(&self) -> Vec<(u32, Vec<Step>)> {
        let db = self.db();
        let mut v: Vec<(u32, Vec<Step>)> = self
            .migrations_v1()
            .into_iter()
            .map(|(version, sql)| (version, sql.into_iter().map(Step::Sql).collect()))
            .collect();
        // v2: one table for detection and remediation events (audit log, anomalies, outliers,
        // changepoints, forecasts), each row the full record as JSON; the v1 per-kind tables
        // were never written and are dropped.
        v.push((
            2,
            vec![
                Step::Sql(format!(
                    "CREATE TABLE IF NOT EXISTS {db}.events (
                        ts DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
                        kind LowCardinality(String),
                        node LowCardinality(String),
                        body String CODEC(ZSTD(3))
                    ) ENGINE = MergeTree
                    PARTITION BY toDate(ts)
                    ORDER BY (kind, ts, node)"
                )),
                Step::Sql(format!("DROP TABLE IF EXISTS {db}.anomalies")),
                Step::Sql(format!("DROP TABLE IF EXISTS {db}.forecasts")),
                Step::Sql(format!("DROP TABLE IF EXISTS {db}.actions")),
            ],
        ));
        // v3: a table per kind of event, so the audit log, anomalies and forecasts can be queried
        // by column (`SELECT rule, outcome, count() FROM medic.actions GROUP BY …`). The typed
        // columns are DEFAULT expressions over `body`, the full record as the API shows it: the
        // controller writes (ts, node, body) only, so adding a field to a record never breaks an
        // insert, and the rows of v2's `events` are copied over by the same expressions.
        let mut v3: Vec<Step> = EVENT_TABLES
            .iter()
            .map(|(_, table, columns, order)| Step::Sql(event_table_ddl(db, table, columns, order)))
            .collect();
        v3.push(Step::MoveEventsToKindTables);
        v.push((3, v3));
        // v4: retried inserts are deduplicated by their token (see the module docs).
        let mut v4 = Vec::new();
        for table in ["samples", "logs"].into_iter().chain(EVENT_TABLES.iter().map(|(_, table, _, _)| *table)) {
            v4.push(Step::Sql(format!(
                "ALTER TABLE {db}.{table} MODIFY SETTING non_replicated_deduplication_window = {DEDUP_WINDOW}"
            )));
        }
        v.push((4, v4));
        v
    }

    /// v3's data move, safe to run again: copies v2's `events` into the table of each kind — a
    /// kind whose table already holds as many rows was copied by an earlier run, one holding
    /// fewer was cut off part-way and is copied over again — and then drops `events`. Once
    /// `events` is gone, there is nothing left to do.
    async fn move_events_to_kind_tables(&self) -> Result<(), StoreError> {
        let db = self.db().to_string();
        let exists = self
            .count(
                &format!("SELECT count() AS n FROM system.tables WHERE database = '{db}' AND name = 'events'"),
                "looking for v2's events table",
            )
            .await?;
        if exists == 0 {
            return Ok(());
        }
        for (kind, table, _, _) in EVENT_TABLES {
            let kind = kind.as_str();
            let from = self
                .count(&format!("SELECT count() AS n FROM {db}.events WHERE kind = '{kind}'"), "counting v2 events")
                .await?;
            let there = self.count(&format!("SELECT count() AS n FROM {db}.{table}"), "counting moved events").await?;
            if there == from {
                continue;
            }
            if there > 0 {
                tracing::warn!(
                    table,
                    copied = there,
                    of = from,
                    "an earlier migration was cut off while copying events; copying them again"
                );
                self.exec(&format!("TRUNCATE TABLE {db}.{table}")).await?;
            }
            self.exec(&format!(
                "INSERT INTO {db}.{table} (ts, node, body) SELECT ts, node, body FROM {db}.events WHERE kind = '{kind}'"
            ))
            .await?;
        }
        self.exec(&format!("DROP TABLE IF EXISTS {db}.events")).await
    }

    fn migrations_v1(&self) -> Vec<(u32, Vec<String>)> {
        let db = self.db();
        vec![(
            1,
            vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {db}.samples (
                        node LowCardinality(String),
                        metric LowCardinality(String),
                        labels String CODEC(ZSTD(3)),
                        ts DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
                        value Float64 CODEC(Delta, ZSTD(3)),
                        kind Enum8('unspecified' = 0, 'gauge' = 1, 'counter' = 2),
                        spool LowCardinality(String),
                        seq UInt64 CODEC(DoubleDelta, ZSTD(1)),
                        commit UInt64 CODEC(DoubleDelta, ZSTD(1))
                    ) ENGINE = MergeTree
                    PARTITION BY toDate(ts)
                    ORDER BY (node, metric, labels, ts)"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {db}.logs (
                        node LowCardinality(String),
                        ts DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
                        source LowCardinality(String),
                        level Enum8('unspecified' = 0, 'trace' = 1, 'debug' = 2, 'info' = 3, 'notice' = 4,
                                    'warning' = 5, 'error' = 6, 'critical' = 7, 'fatal' = 8),
                        message String CODEC(ZSTD(3)),
                        fields Map(LowCardinality(String), String) CODEC(ZSTD(1)),
                        spool LowCardinality(String),
                        seq UInt64 CODEC(DoubleDelta, ZSTD(1)),
                        idx UInt32 CODEC(ZSTD(1)),
                        commit UInt64 CODEC(DoubleDelta, ZSTD(1))
                    ) ENGINE = MergeTree
                    PARTITION BY toDate(ts)
                    ORDER BY (node, ts, seq, idx)"
                ),
                // One row per node per commit; merges keep the newest (the highest version).
                format!(
                    "CREATE TABLE IF NOT EXISTS {db}.nodes (
                        node String,
                        version UInt64,
                        record String CODEC(ZSTD(3))
                    ) ENGINE = ReplacingMergeTree(version)
                    ORDER BY node"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {db}.anomalies (
                        ts DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
                        node LowCardinality(String),
                        metric LowCardinality(String),
                        labels String CODEC(ZSTD(3)),
                        score Float32,
                        observed Float64,
                        baseline Float64,
                        signals Array(LowCardinality(String)),
                        explanation String CODEC(ZSTD(3))
                    ) ENGINE = MergeTree
                    PARTITION BY toDate(ts)
                    ORDER BY (node, metric, ts)"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {db}.forecasts (
                        ts DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
                        node LowCardinality(String),
                        resource LowCardinality(String),
                        exhaustion_seconds Nullable(Float64),
                        exhaustion_seconds_pessimistic Nullable(Float64),
                        model LowCardinality(String),
                        explanation String CODEC(ZSTD(3))
                    ) ENGINE = MergeTree
                    PARTITION BY toDate(ts)
                    ORDER BY (node, resource, ts)"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {db}.actions (
                        ts DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
                        id String,
                        rule LowCardinality(String),
                        action LowCardinality(String),
                        target String,
                        outcome LowCardinality(String),
                        evidence String CODEC(ZSTD(3))
                    ) ENGINE = MergeTree
                    PARTITION BY toDate(ts)
                    ORDER BY (ts, id)"
                ),
            ],
        )]
    }

    /// Tables whose rows expire with the retention, and the time column that decides.
    fn ttl_tables(&self) -> Vec<(&'static str, &'static str)> {
        let mut t = vec![("samples", "ts"), ("logs", "ts")];
        t.extend(EVENT_TABLES.iter().map(|(_, table, _, _)| (*table, "ts")));
        t
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let db = self.db().to_string();
        self.exec(&format!("CREATE DATABASE IF NOT EXISTS {db}")).await?;
        self.exec(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, applied_at DateTime DEFAULT now())
             ENGINE = MergeTree ORDER BY version"
        ))
        .await?;
        #[derive(Row, Deserialize)]
        struct V {
            version: u32,
        }
        let applied: Vec<V> = self
            .fetch(self.client.query(&format!("SELECT version FROM {db}.schema_migrations")), "reading schema version")
            .await?;
        let applied: std::collections::BTreeSet<u32> = applied.into_iter().map(|v| v.version).collect();
        for (version, steps) in self.migrations() {
            if applied.contains(&version) {
                continue;
            }
            tracing::info!(version, database = %db, "applying ClickHouse schema migration");
            for step in steps {
                match step {
                    Step::Sql(sql) => self.exec(&sql).await?,
                    Step::MoveEventsToKindTables => self.move_events_to_kind_tables().await?,
                }
            }
            self.exec(&format!("INSERT INTO {db}.schema_migrations (version) VALUES ({version})")).await?;
        }
        self.reconcile_ttl().await
    }

    /// Makes each table's TTL match the configured retention (cheaply: no rewrite of old parts).
    async fn reconcile_ttl(&self) -> Result<(), StoreError> {
        let secs = self.opts.retention.as_secs().max(3600);
        #[derive(Row, Deserialize)]
        struct T {
            name: String,
            engine_full: String,
        }
        let db = self.db().to_string();
        let tables: Vec<T> = self
            .fetch(
                self.client.query("SELECT name, engine_full FROM system.tables WHERE database = ?").bind(&db),
                "reading table definitions",
            )
            .await?;
        for (table, col) in self.ttl_tables() {
            let want = format!("toIntervalSecond({secs})");
            let has = tables.iter().any(|t| t.name == table && t.engine_full.contains(&want));
            if !has {
                tracing::info!(table, retention_seconds = secs, "setting ClickHouse TTL");
                self.exec(&format!(
                    "ALTER TABLE {db}.{table} MODIFY TTL toDateTime({col}) + INTERVAL {secs} SECOND
                     SETTINGS materialize_ttl_after_modify = 0"
                ))
                .await?;
            }
        }
        Ok(())
    }

    /// The latest stored state of `nodes`, with the version it was stored under.
    async fn stored_nodes(&self, nodes: Option<&[String]>) -> Result<Vec<(NodeRecord, u64)>, StoreError> {
        #[derive(Row, Deserialize)]
        struct R {
            record: String,
            v: u64,
        }
        let db = self.db().to_string();
        let q = match nodes {
            Some(n) => self
                .client
                .query(&format!(
                    "SELECT argMax(record, version) AS record, max(version) AS v FROM {db}.nodes WHERE has(?, node) GROUP BY node"
                ))
                .bind(n),
            None => self.client.query(&format!(
                "SELECT argMax(record, version) AS record, max(version) AS v FROM {db}.nodes GROUP BY node"
            )),
        };
        let rows: Vec<R> = self.fetch(q, "loading nodes").await?;
        rows.into_iter()
            .map(|r| {
                let rec: NodeRecord =
                    serde_json::from_str(&r.record).map_err(|e| StoreError::Corrupt(format!("node record: {e}")))?;
                Ok((rec, r.v))
            })
            .collect()
    }

    /// Deletes rows the stored node state does not account for: the current spool's batches
    /// above `last_seq`, left by a write that was cut off (by whichever replica). The agent still
    /// has them and replays them.
    async fn remove_unaccounted(&self, records: &[NodeRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let db = self.db().to_string();
        let names: Vec<&str> = records.iter().map(|r| r.node.as_str()).collect();
        let spools: Vec<&str> = records.iter().map(|r| r.spool_id.as_str()).collect();
        let seqs: Vec<u64> = records.iter().map(|r| r.last_seq).collect();
        for table in ["samples", "logs"] {
            #[derive(Row, Deserialize)]
            struct C {
                node: String,
                n: u64,
            }
            let q = self
                .client
                .query(&format!(
                    "SELECT node, count() AS n FROM {db}.{table}
                     WHERE has(?, node) AND spool = transform(node, ?, ?, '') AND seq > transform(node, ?, ?, 0)
                     GROUP BY node"
                ))
                .bind(&names)
                .bind(&names)
                .bind(&spools)
                .bind(&names)
                .bind(&seqs);
            for c in self.fetch::<C>(q, "looking for unaccounted rows").await? {
                let Some(r) = records.iter().find(|r| r.node == c.node) else { continue };
                tracing::warn!(
                    table,
                    node = %r.node,
                    rows = c.n,
                    last_seq = r.last_seq,
                    "removing rows of a write that was never committed; the agent replays them"
                );
                let q = self
                    .client
                    .query(&format!(
                        "ALTER TABLE {db}.{table} DELETE WHERE node = ? AND spool = ? AND seq > ? SETTINGS mutations_sync = 2"
                    ))
                    .bind(&r.node)
                    .bind(&r.spool_id)
                    .bind(r.last_seq);
                self.bounded("removing unaccounted rows", q.execute()).await?;
            }
        }
        Ok(())
    }

    /// Writes one group: its samples, its logs, then the commit record. A retry after an error
    /// writes the same rows under the same commit number and the same deduplication tokens, so
    /// whatever part of an earlier attempt landed (or lands later) is kept once.
    async fn write_group(&self, w: &mut Writers, set: &WriteSet) -> Result<(), StoreError> {
        // Consecutive numbers: in the samples' sort order they grow by one per round, which
        // DoubleDelta stores in almost nothing.
        let commit = w.committed + 1;
        let spool_of =
            |node: &str| set.nodes.iter().find(|n| n.node == node).map(|n| n.spool_id.as_str()).unwrap_or("");

        if set.batches.iter().any(|(_, b)| b.sample_count() > 0) {
            let token = format!("medic-{commit}-samples");
            let mut insert = self.open_inserter::<SampleRow<'static>>("samples", &token);
            let mut opened = false;
            let mut labels = String::new();
            for (node, batch) in &set.batches {
                let spool = spool_of(node);
                for s in batch.series_refs() {
                    encode_labels(s.labels, &mut labels);
                    for (ts, value) in s.points() {
                        let row = SampleRow {
                            node,
                            metric: s.metric,
                            labels: &labels,
                            ts,
                            value,
                            kind: s.kind.clamp(0, 2) as i8,
                            spool,
                            seq: batch.seq,
                            commit,
                        };
                        if opened {
                            insert.write(&row).await.map_err(|e| ch_err("inserting samples", e))?;
                        } else {
                            self.bounded("inserting samples", insert.write(&row)).await?;
                            opened = true;
                        }
                    }
                }
            }
            self.bounded("inserting samples", insert.end()).await?;
        }

        if set.batches.iter().any(|(_, b)| !b.logs.is_empty()) {
            let token = format!("medic-{commit}-logs");
            let mut insert = self.open_inserter::<LogRow<'static>>("logs", &token);
            let mut opened = false;
            for (node, batch) in &set.batches {
                let spool = spool_of(node);
                for (idx, l) in batch.logs.iter().enumerate() {
                    let row = LogRow {
                        node,
                        ts: l.timestamp_ms,
                        source: &l.source,
                        level: l.level.clamp(0, 8) as i8,
                        message: &l.message,
                        fields: l.fields.iter().map(|f| (f.name.as_str(), f.value.as_str())).collect(),
                        spool,
                        seq: batch.seq,
                        idx: idx as u32,
                        commit,
                    };
                    if opened {
                        insert.write(&row).await.map_err(|e| ch_err("inserting logs", e))?;
                    } else {
                        self.bounded("inserting logs", insert.write(&row)).await?;
                        opened = true;
                    }
                }
            }
            self.bounded("inserting logs", insert.end()).await?;
        }

        // The commit record: written last, it makes the group's rows count. Written twice (a
        // retry after an answer was lost), its rows are identical: same node, same version.
        let mut versions = Vec::with_capacity(set.nodes.len());
        if !set.nodes.is_empty() {
            let mut insert = self.open_insert::<NodeRow<'static>>("nodes", None).await?;
            for n in &set.nodes {
                let record = serde_json::to_string(n).map_err(|e| StoreError::Io(e.to_string()))?;
                let version = w.versions.get(&n.node).copied().unwrap_or(0) + 1;
                insert
                    .write(&NodeRow { node: &n.node, version, record: &record })
                    .await
                    .map_err(|e| ch_err("committing", e))?;
                versions.push((n.node.clone(), version));
            }
            insert.end().await.map_err(|e| ch_err("committing", e))?;
        }
        w.committed = commit;
        w.versions.extend(versions);
        Ok(())
    }
}

#[async_trait]
impl Store for ClickHouseStore {
    fn kind(&self) -> &'static str {
        "clickhouse"
    }

    async fn load_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.connect().await?;
        let stored = self.stored_nodes(None).await?;
        let mut w = self.writers.lock().await;
        for (r, v) in &stored {
            w.versions.insert(r.node.clone(), *v);
        }
        Ok(stored.into_iter().map(|(r, _)| r).collect())
    }

    async fn refresh_nodes(&self, nodes: &[String]) -> Result<Vec<NodeRecord>, StoreError> {
        self.connect().await?;
        // Under the writers' lock: no write of ours is between data and commit record now.
        let mut w = self.writers.lock().await;
        let stored = self.stored_nodes(Some(nodes)).await?;
        let records: Vec<NodeRecord> = stored.iter().map(|(r, _)| r.clone()).collect();
        self.remove_unaccounted(&records).await?;
        for (r, v) in stored {
            w.versions.insert(r.node, v);
        }
        Ok(records)
    }

    async fn write(&self, set: WriteSet) -> Result<(), StoreError> {
        self.connect().await?;
        let mut w = self.writers.lock().await;
        self.write_group(&mut w, &set).await
    }

    async fn metric_names(&self, node: &str) -> Result<Vec<String>, StoreError> {
        self.connect().await?;
        #[derive(Row, Deserialize)]
        struct M {
            metric: String,
        }
        let db = self.db().to_string();
        let q = self
            .client
            .query(&format!("SELECT DISTINCT metric FROM {db}.samples WHERE node = ? ORDER BY metric"))
            .bind(node);
        Ok(self.fetch::<M>(q, "listing metrics").await?.into_iter().map(|m| m.metric).collect())
    }

    async fn series(&self, q: &SeriesQuery) -> Result<Vec<Point>, StoreError> {
        self.connect().await?;
        #[derive(Row, Deserialize)]
        struct P {
            labels: String,
            // Not `ts`: an alias named like the column would shadow it in WHERE.
            ts_ms: i64,
            value: f64,
        }
        let db = self.db().to_string();
        let query = self
            .client
            .query(&format!(
                "SELECT labels, toUnixTimestamp64Milli(ts) AS ts_ms, value FROM {db}.samples
                 WHERE node = ? AND metric = ? AND ts >= fromUnixTimestamp64Milli(toInt64(?), 'UTC') AND ts <= fromUnixTimestamp64Milli(toInt64(?), 'UTC')
                 ORDER BY labels, ts LIMIT ?"
            ))
            .bind(&q.node)
            .bind(&q.metric)
            .bind(q.from_ms)
            .bind(q.to_ms)
            .bind(q.limit as u64);
        let rows = self.fetch::<P>(query, "reading series").await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut last: Option<(String, std::collections::BTreeMap<String, String>)> = None;
        for r in rows {
            let labels = match &last {
                Some((s, l)) if *s == r.labels => l.clone(),
                _ => {
                    let l: std::collections::BTreeMap<String, String> = decode_labels(&r.labels)?.into_iter().collect();
                    last = Some((r.labels.clone(), l.clone()));
                    l
                }
            };
            out.push(Point { metric: q.metric.clone(), labels, timestamp_ms: r.ts_ms, value: r.value });
        }
        Ok(out)
    }

    async fn logs(&self, q: &LogQuery) -> Result<Vec<StoredLog>, StoreError> {
        self.connect().await?;
        #[derive(Row, Deserialize)]
        struct L {
            ts_ms: i64,
            source: String,
            level: i8,
            message: String,
            fields: Vec<(String, String)>,
            seq: u64,
        }
        let db = self.db().to_string();
        let query = self
            .client
            .query(&format!(
                "SELECT toUnixTimestamp64Milli(ts) AS ts_ms, source, CAST(level, 'Int8') AS level, message,
                        CAST(fields, 'Array(Tuple(String, String))') AS fields, seq
                 FROM {db}.logs
                 WHERE node = ? AND CAST(level, 'Int8') >= ? AND ts >= fromUnixTimestamp64Milli(toInt64(?), 'UTC') AND ts <= fromUnixTimestamp64Milli(toInt64(?), 'UTC')
                 ORDER BY ts DESC, seq DESC, idx DESC LIMIT ?"
            ))
            .bind(&q.node)
            .bind(q.min_level.unwrap_or(0) as i8)
            .bind(q.from_ms.max(0))
            .bind(q.to_ms)
            .bind(q.limit as u64);
        let rows = self.fetch::<L>(query, "reading logs").await?;
        Ok(rows
            .into_iter()
            .map(|r| StoredLog {
                node: q.node.clone(),
                seq: r.seq,
                record: LogRecord {
                    timestamp_ms: r.ts_ms,
                    source: r.source,
                    level: r.level as i32,
                    message: r.message,
                    fields: r.fields.into_iter().map(|(n, v)| Label::new(n, v)).collect(),
                },
            })
            .collect())
    }

    /// ClickHouse's TTL does the work; nothing to do here.
    async fn enforce_retention(&self, _cutoff_ms: i64) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Reports, never sets up: a probe bounded by [`PING_TIMEOUT`] must not cut a migration short.
    async fn ping(&self) -> Result<(), StoreError> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(self.waiting_error());
        }
        self.bounded_by(
            self.opts.timeout.min(PING_TIMEOUT),
            "pinging ClickHouse",
            self.client.query("SELECT 1").execute(),
        )
        .await
    }

    /// One insert per kind. The event log retries a failed call with the same events, so each
    /// insert's deduplication token is a digest of its rows: the kinds that landed before the
    /// failure are not recorded twice.
    async fn write_events(&self, events: Vec<EventRecord>) -> Result<(), StoreError> {
        #[derive(Row, Serialize)]
        struct E<'a> {
            ts: i64,
            node: &'a str,
            body: &'a str,
        }
        self.connect().await?;
        for (kind, _, _, _) in EVENT_TABLES {
            let table = event_table(kind);
            let rows: Vec<(i64, &str, String)> = events
                .iter()
                .filter(|e| e.kind == kind)
                .map(|e| (e.ts_ms, e.node.as_str(), e.body.to_string()))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let token = format!("medic-events-{table}-{}", digest(&rows));
            let mut insert = self.open_insert::<E<'static>>(table, Some(&token)).await?;
            for (ts, node, body) in &rows {
                insert.write(&E { ts: *ts, node, body }).await.map_err(|e| ch_err("recording events", e))?;
            }
            insert.end().await.map_err(|e| ch_err("recording events", e))?;
        }
        Ok(())
    }

    async fn events(&self, kind: EventKind, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        self.connect().await?;
        #[derive(Row, Deserialize)]
        struct E {
            ts_ms: i64,
            node: String,
            body: String,
        }
        let db = self.db().to_string();
        let table = event_table(kind);
        let q = self
            .client
            .query(&format!(
                "SELECT toUnixTimestamp64Milli(ts) AS ts_ms, node, body FROM {db}.{table} ORDER BY ts DESC LIMIT ?"
            ))
            .bind(limit as u64);
        let rows = self.fetch::<E>(q, "reading events").await?;
        rows.into_iter()
            .map(|r| {
                let body =
                    serde_json::from_str(&r.body).map_err(|e| StoreError::Corrupt(format!("event body: {e}")))?;
                Ok(EventRecord { kind, ts_ms: r.ts_ms, node: r.node, body })
            })
            .collect()
    }
}

/// The table of each kind of event: (kind, table, typed columns, ORDER BY). Every typed column is
/// a DEFAULT over `body`, the record as `/api/v1/…` shows it (field names are those of
/// `AuditEntry`, `AnomalyView`, `OutlierView`, `ChangepointView` and `ForecastView`).
/// `event_table` must name the same tables.
const EVENT_TABLES: [(EventKind, &str, &str, &str); 5] = [
    (
        EventKind::Action,
        "actions",
        "action_id String DEFAULT JSONExtractString(body, 'action_id'),
         rule LowCardinality(String) DEFAULT JSONExtractString(body, 'rule'),
         target String DEFAULT JSONExtractString(body, 'target'),
         action LowCardinality(String) DEFAULT JSONExtractString(body, 'action'),
         outcome LowCardinality(String) DEFAULT JSONExtractString(body, 'outcome'),
         guard LowCardinality(String) DEFAULT JSONExtractString(body, 'guard'),
         message String DEFAULT JSONExtractString(body, 'message') CODEC(ZSTD(3)),
         evidence String DEFAULT JSONExtractString(body, 'evidence') CODEC(ZSTD(3))",
        "ts, action_id",
    ),
    (
        EventKind::Anomaly,
        "anomalies",
        "metric LowCardinality(String) DEFAULT JSONExtractString(body, 'metric'),
         labels Map(LowCardinality(String), String) DEFAULT JSONExtract(body, 'labels', 'Map(String, String)'),
         score Float64 DEFAULT JSONExtractFloat(body, 'score'),
         observed Float64 DEFAULT JSONExtractFloat(body, 'observed'),
         baseline Float64 DEFAULT JSONExtractFloat(body, 'baseline'),
         signals Array(LowCardinality(String)) DEFAULT JSONExtract(body, 'signals', 'Array(String)')",
        "node, metric, ts",
    ),
    (
        EventKind::Outlier,
        "outliers",
        "role LowCardinality(String) DEFAULT JSONExtractString(body, 'role'),
         metrics Array(LowCardinality(String))
             DEFAULT arrayMap(m -> JSONExtractString(m, 'metric'), JSONExtractArrayRaw(body, 'metrics')),
         values Array(Float64)
             DEFAULT arrayMap(m -> JSONExtractFloat(m, 'value'), JSONExtractArrayRaw(body, 'metrics')),
         peer_medians Array(Float64)
             DEFAULT arrayMap(m -> JSONExtractFloat(m, 'peer_median'), JSONExtractArrayRaw(body, 'metrics'))",
        "node, ts",
    ),
    (
        EventKind::Changepoint,
        "changepoints",
        "metric LowCardinality(String) DEFAULT JSONExtractString(body, 'metric'),
         labels Map(LowCardinality(String), String) DEFAULT JSONExtract(body, 'labels', 'Map(String, String)'),
         before_mean Float64 DEFAULT JSONExtractFloat(body, 'before_mean'),
         after_mean Float64 DEFAULT JSONExtractFloat(body, 'after_mean')",
        "node, metric, ts",
    ),
    (
        EventKind::Forecast,
        "forecasts",
        "resource LowCardinality(String) DEFAULT JSONExtractString(body, 'resource'),
         exhaustion_seconds Nullable(Float64) DEFAULT JSONExtract(body, 'exhaustion_seconds', 'Nullable(Float64)'),
         pessimistic_seconds Nullable(Float64) DEFAULT JSONExtract(body, 'pessimistic_seconds', 'Nullable(Float64)'),
         model LowCardinality(String) DEFAULT JSONExtractString(body, 'model'),
         explanation String DEFAULT JSONExtractString(body, 'explanation') CODEC(ZSTD(3))",
        "node, resource, ts",
    ),
];

/// 128 bits identifying a list of event rows (two SipHash digests with different keys), stable
/// for the life of the process: all a retry needs.
fn digest(rows: &[(i64, &str, String)]) -> String {
    use std::hash::{Hash, Hasher};
    let mut a = std::hash::DefaultHasher::new();
    let mut b = std::hash::DefaultHasher::new();
    0xa5a5_u16.hash(&mut b);
    rows.hash(&mut a);
    rows.hash(&mut b);
    format!("{:016x}{:016x}", a.finish(), b.finish())
}

fn event_table(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Action => "actions",
        EventKind::Anomaly => "anomalies",
        EventKind::Outlier => "outliers",
        EventKind::Changepoint => "changepoints",
        EventKind::Forecast => "forecasts",
    }
}

fn event_table_ddl(db: &str, table: &str, columns: &str, order: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.{table} (
            ts DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
            node LowCardinality(String),
            {columns},
            body String CODEC(ZSTD(3))
        ) ENGINE = MergeTree
        PARTITION BY toDate(ts)
        ORDER BY ({order})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_strings_round_trip_with_quotes_backslashes_and_newlines() {
        let labels =
            vec![Label::new("a", "plain"), Label::new("b", "with \"quotes\", \\ and\nnewline"), Label::new("c", "")];
        let mut s = String::new();
        encode_labels(&labels, &mut s);
        assert_eq!(s, r#"a="plain",b="with \"quotes\", \\ and\nnewline",c="""#);
        let back = decode_labels(&s).unwrap();
        let expected: Vec<(String, String)> = labels.into_iter().map(|l| (l.name, l.value)).collect();
        assert_eq!(back, expected);
        assert_eq!(decode_labels("").unwrap(), vec![]);
        assert!(decode_labels("a=\"unterminated").is_err());
    }

    #[test]
    fn credentials_in_a_url_never_reach_a_log_line() {
        assert_eq!(redact_url("http://medic:s3cret@ch:8123/?x=1"), "http://<redacted>@ch:8123/?x=1");
        assert_eq!(redact_url("https://ch:8443"), "https://ch:8443");
        assert_eq!(redact_url("http://ch:8123/a@b"), "http://ch:8123/a@b");
        assert_eq!(redact_url("http://ch:8123?user=a@b"), "http://ch:8123?user=a@b");
        assert_eq!(redact_url("u:p@ch:8123"), "<redacted>@ch:8123");
        let mut o = ClickHouseOptions::new("http://medic:s3cret@ch:8123");
        o.password = Some("hunter2".into());
        let shown = format!("{o:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("http://<redacted>@ch:8123"), "{shown}");
    }

    #[tokio::test]
    async fn a_store_whose_server_is_not_up_says_what_it_waits_for() {
        // Nothing listens on port 9 of loopback (discard service): refused at once.
        let mut o = ClickHouseOptions::new("http://medic:s3cret@127.0.0.1:9");
        o.timeout = Duration::from_secs(2);
        let store = ClickHouseStore::new(o).expect("valid options");
        let e = store.load_nodes().await.expect_err("no server");
        let shown = e.to_string();
        assert!(matches!(e, StoreError::Unavailable(_)), "{shown}");
        assert!(shown.contains("waiting for ClickHouse at http://<redacted>@127.0.0.1:9: "), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let e = store.ping().await.expect_err("not set up");
        assert!(e.to_string().contains("waiting for ClickHouse"), "{e}");
    }
}
