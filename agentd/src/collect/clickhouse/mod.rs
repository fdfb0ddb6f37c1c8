//! ClickHouse metrics, read from the server's system tables over its HTTP interface.
//!
//! Unlike the host collectors this one is async: it talks to a server that may be down, slow or
//! overloaded, so it runs in its own task and never delays host collection. One collection round
//! is bounded by [`ClickHouseOptions::timeout`]: the first query doubles as the liveness probe
//! (`clickhouse_up`), and when it fails the round ends at once, so a dead server costs one
//! connection attempt (refused: immediately; black hole: one timeout) per interval.
//!
//! Each system table is read by its own query; a query that fails (a table missing in some
//! version, a type change, a permission) is counted in
//! `clickhouse_scrape_errors_total{query}` and the others are still reported.
//!
//! Every query starts with [`MARKER`], so the query-log statistics can leave the agent's own
//! queries out (a filter on the text works for read-only users too, unlike `log_queries=0`).
//!
//! Metric names: see README.md, "ClickHouse metrics".

/// A query's text, starting with [`MARKER`].
macro_rules! sql {
    ($($part:literal),+ $(,)?) => { concat!("/* medic-agentd */ ", $($part),+) };
}

mod parts;
mod queries;
mod replication;
mod system;

use clickhouse::{Client, RowRead};
use medic_proto::v1::Sample;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{counter, gauge};
pub use parts::{DetachedRow, TableRow};
pub use queries::{QueryLogRow, QueryLogWindow};
pub use replication::{MutationRow, ReplicaRow};

/// Prefix of every query the agent sends, so its own queries can be told apart in query_log.
pub const MARKER: &str = "/* medic-agentd */";

/// A mutation that is not done after this long counts as stuck.
pub const STUCK_MUTATION_AFTER: Duration = Duration::from_secs(600);

/// Env variables for the credentials: never taken from the command line, where every local user
/// can read them in /proc/*/cmdline.
pub const USER_ENV: &str = "MEDIC_CLICKHOUSE_USER";
pub const PASSWORD_ENV: &str = "MEDIC_CLICKHOUSE_PASSWORD";

#[derive(Clone)]
pub struct ClickHouseOptions {
    /// HTTP interface, e.g. http://127.0.0.1:8123.
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Bound on one collection round, all queries together.
    pub timeout: Duration,
    /// The collection interval; on the first round the query log is read this far back.
    pub interval: Duration,
}

/// Hand-written so the password can never end up in a log line through `{:?}`.
impl std::fmt::Debug for ClickHouseOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseOptions")
            .field("url", &redact_url(&self.url))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("interval", &self.interval)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the ClickHouse password file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("clickhouse_url {0:?} must start with http:// or https://")]
    Url(String),
}

impl ClickHouseOptions {
    /// The options for `url`, with credentials from the environment and the password file (which
    /// wins over `MEDIC_CLICKHOUSE_PASSWORD`, being the explicit setting). `MEDIC_CLICKHOUSE_USER`
    /// wins over the configured user, like a flag would.
    pub fn resolve(
        url: &str,
        user: Option<&str>,
        password_file: Option<&std::path::Path>,
        timeout: Duration,
        interval: Duration,
    ) -> Result<Self, ConfigError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::Url(redact_url(url)));
        }
        let env = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let user = env(USER_ENV).or_else(|| user.map(str::to_string));
        let password = match password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::PasswordFile { path: path.to_path_buf(), source })?;
                // Editors and `echo` add a final newline that is not part of the password.
                Some(text.trim_end_matches(['\n', '\r']).to_string())
            }
            None => env(PASSWORD_ENV),
        };
        Ok(Self { url: url.to_string(), user, password, timeout, interval })
    }
}

/// The URL without any `user:password@`, for logs.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// The system-table queries, each with its own error counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    Version,
    Metrics,
    Events,
    AsyncMetrics,
    Parts,
    DetachedParts,
    Replicas,
    Mutations,
    Disks,
    Errors,
    Merges,
    QueryLog,
}

impl Query {
    pub const ALL: [Query; 12] = [
        Query::Version,
        Query::Metrics,
        Query::Events,
        Query::AsyncMetrics,
        Query::Parts,
        Query::DetachedParts,
        Query::Replicas,
        Query::Mutations,
        Query::Disks,
        Query::Errors,
        Query::Merges,
        Query::QueryLog,
    ];

    /// The `query` label of `clickhouse_scrape_errors_total`.
    pub fn name(self) -> &'static str {
        match self {
            Query::Version => "version",
            Query::Metrics => "metrics",
            Query::Events => "events",
            Query::AsyncMetrics => "asynchronous_metrics",
            Query::Parts => "parts",
            Query::DetachedParts => "detached_parts",
            Query::Replicas => "replicas",
            Query::Mutations => "mutations",
            Query::Disks => "disks",
            Query::Errors => "errors",
            Query::Merges => "merges",
            Query::QueryLog => "query_log",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    ClickHouse(#[from] clickhouse::error::Error),
}

impl QueryError {
    /// The server's error code (`Code: 60. DB::Exception: ...`), if the server answered with one.
    pub fn server_code(&self) -> Option<u32> {
        let QueryError::ClickHouse(clickhouse::error::Error::BadResponse(text)) = self else { return None };
        // With an empty body the crate reports just the X-ClickHouse-Exception-Code header.
        if let Ok(code) = text.trim().parse() {
            return Some(code);
        }
        let rest = &text[text.find("Code: ")? + "Code: ".len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        rest[..digits].parse().ok()
    }
}

/// ClickHouse's READONLY: the user may not change settings, not even `max_execution_time`.
const READONLY: u32 = 164;
/// UNKNOWN_TABLE.
pub(crate) const UNKNOWN_TABLE: u32 = 60;

pub struct ClickHouseCollector {
    client: Client,
    opts: ClickHouseOptions,
    /// Whether `client` asks the server to stop our queries itself (`max_execution_time`). Turned
    /// off for read-only users, who may not change settings.
    server_timeout: bool,
    scrape_errors: [u64; Query::ALL.len()],
    window: QueryLogWindow,
    /// Last round's sample count: the next round's Vec is allocated once, at the right size.
    last_len: usize,
    /// Why the last round's probe failed; None while the server answers.
    down_reason: Option<String>,
}

impl ClickHouseCollector {
    pub fn new(opts: ClickHouseOptions) -> Self {
        let client = build_client(&opts, true);
        Self {
            client,
            server_timeout: true,
            scrape_errors: [0; Query::ALL.len()],
            window: QueryLogWindow::default(),
            last_len: 256,
            down_reason: None,
            opts,
        }
    }

    /// Follows interval changes pushed by the controller (the query-log look-back of a first round).
    pub fn set_interval(&mut self, interval: Duration) {
        self.opts.interval = interval;
    }

    /// Why the server is considered down (the last probe's error), or None while it answers.
    pub fn down_reason(&self) -> Option<&str> {
        self.down_reason.as_deref()
    }

    pub fn options(&self) -> &ClickHouseOptions {
        &self.opts
    }

    /// One collection round. Never fails: a server that is down or slow yields `clickhouse_up 0`
    /// within `timeout`, a failing query is counted and skipped.
    pub async fn collect(&mut self, now_ms: i64) -> Vec<Sample> {
        let start = Instant::now();
        let deadline = start + self.opts.timeout;
        let mut out = Vec::with_capacity(self.last_len + self.last_len / 8);

        // The version query doubles as the liveness probe: when it fails the server is down,
        // unreachable or unusable, and the other queries would only fail the same way, slowly.
        let mut probe = system::version(&self.client, deadline, self.opts.timeout).await;
        if self.server_timeout && matches!(&probe, Err(e) if e.server_code() == Some(READONLY)) {
            tracing::warn!("the ClickHouse user is read-only: not asking the server to time out the agent's queries");
            self.server_timeout = false;
            self.client = build_client(&self.opts, false);
            probe = system::version(&self.client, deadline, self.opts.timeout).await;
        }
        match probe {
            Ok(v) => {
                self.down_reason = None;
                out.push(gauge("clickhouse_up", &[], now_ms, 1.0));
                out.push(gauge("clickhouse_uptime_seconds", &[], now_ms, v.uptime as f64));
                out.push(gauge("clickhouse_version_info", &[("version", &v.version)], now_ms, 1.0));
            }
            Err(e) => {
                self.count_error(Query::Version, &e);
                self.down_reason = Some(e.to_string());
                out.push(gauge("clickhouse_up", &[], now_ms, 0.0));
                out.push(gauge("clickhouse_scrape_duration_seconds", &[], now_ms, start.elapsed().as_secs_f64()));
                self.push_error_counters(now_ms, &mut out);
                return out;
            }
        }
        let (client, timeout) = (&self.client, self.opts.timeout);
        let results = [
            (Query::Metrics, system::name_values(client, Query::Metrics, deadline, timeout, now_ms, &mut out).await),
            (Query::Events, system::name_values(client, Query::Events, deadline, timeout, now_ms, &mut out).await),
            (
                Query::AsyncMetrics,
                system::name_values(client, Query::AsyncMetrics, deadline, timeout, now_ms, &mut out).await,
            ),
            (Query::Parts, parts::tables(client, deadline, timeout, now_ms, &mut out).await),
            (Query::DetachedParts, parts::detached(client, deadline, timeout, now_ms, &mut out).await),
            (Query::Replicas, replication::replicas(client, deadline, timeout, now_ms, &mut out).await),
            (Query::Mutations, replication::mutations(client, deadline, timeout, now_ms, &mut out).await),
            (Query::Disks, system::disks(client, deadline, timeout, now_ms, &mut out).await),
            (Query::Errors, system::errors(client, deadline, timeout, now_ms, &mut out).await),
            (Query::Merges, system::merges(client, deadline, timeout, now_ms, &mut out).await),
            (
                Query::QueryLog,
                queries::query_log(client, &mut self.window, self.opts.interval, deadline, timeout, now_ms, &mut out)
                    .await,
            ),
        ];
        for (q, r) in results {
            if let Err(e) = r {
                self.count_error(q, &e);
            }
        }
        out.push(gauge("clickhouse_scrape_duration_seconds", &[], now_ms, start.elapsed().as_secs_f64()));
        self.push_error_counters(now_ms, &mut out);
        self.last_len = out.len();
        out
    }

    fn count_error(&mut self, query: Query, e: &QueryError) {
        tracing::debug!(query = query.name(), error = %e, "ClickHouse query failed");
        if let Some(i) = Query::ALL.iter().position(|q| *q == query) {
            self.scrape_errors[i] += 1;
        }
    }

    fn push_error_counters(&self, now_ms: i64, out: &mut Vec<Sample>) {
        for (q, n) in Query::ALL.iter().zip(self.scrape_errors) {
            out.push(counter("clickhouse_scrape_errors_total", &[("query", q.name())], now_ms, n as f64));
        }
    }

    pub fn scrape_errors(&self, query: Query) -> u64 {
        Query::ALL.iter().position(|q| *q == query).map_or(0, |i| self.scrape_errors[i])
    }
}

/// Runs `sql` with what is left of the round (`deadline`), streaming each row to `each`. Rows
/// borrow from the response buffer, so reading a big table makes no per-row String copies.
pub(crate) async fn fetch_each<T, F>(
    client: &Client,
    deadline: Instant,
    timeout: Duration,
    sql: &str,
    mut each: F,
) -> Result<usize, QueryError>
where
    T: RowRead,
    F: FnMut(T::Value<'_>),
{
    let left = deadline.saturating_duration_since(Instant::now());
    let fetch = async {
        let mut cursor = client.query(sql).fetch::<T>()?;
        let mut n = 0;
        while let Some(row) = cursor.next().await? {
            each(row);
            n += 1;
        }
        Ok::<_, QueryError>(n)
    };
    tokio::time::timeout(left, fetch).await.unwrap_or(Err(QueryError::Timeout(timeout)))
}

fn build_client(opts: &ClickHouseOptions, server_timeout: bool) -> Client {
    // Uncompressed: the answers are small (~100 KB a round) and the server is usually on the same
    // host, where LZ4 would only cost CPU on both ends.
    let mut client = Client::default()
        .with_url(&opts.url)
        .with_compression(clickhouse::Compression::None)
        .with_product_info("medic-agentd", env!("CARGO_PKG_VERSION"));
    if let Some(u) = &opts.user {
        client = client.with_user(u);
    }
    if let Some(p) = &opts.password {
        client = client.with_password(p);
    }
    if server_timeout {
        // Our own timeout only drops the connection; ClickHouse keeps running a query whose client
        // went away unless told otherwise, so it is asked to give up at the same time.
        let secs = opts.timeout.as_secs_f64().ceil().max(1.0);
        client = client.with_setting("max_execution_time", format!("{secs}"));
    }
    client
}

/// `prefix` + `name` (+ `suffix`) with every character outside `[A-Za-z0-9_]` replaced by `_`:
/// asynchronous metric names carry dots (`jemalloc.arenas.all.pactive`), which are not valid in
/// Prometheus names. ClickHouse's CamelCase is kept, as its own Prometheus endpoint does.
pub fn metric_name(prefix: &str, name: &str, suffix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + name.len() + suffix.len());
    s.push_str(prefix);
    s.extend(name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }));
    s.push_str(suffix);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_sanitised_but_keep_their_case() {
        assert_eq!(metric_name("clickhouse_metrics_", "Query", ""), "clickhouse_metrics_Query");
        assert_eq!(
            metric_name("clickhouse_async_metrics_", "jemalloc.arenas.all.pactive", ""),
            "clickhouse_async_metrics_jemalloc_arenas_all_pactive"
        );
        assert_eq!(metric_name("clickhouse_events_", "SelectQuery", "_total"), "clickhouse_events_SelectQuery_total");
        assert_eq!(metric_name("p_", "a-b c/é", ""), "p_a_b_c__");
    }

    #[test]
    fn urls_are_redacted_for_logs() {
        assert_eq!(redact_url("http://u:secret@ch:8123/?x=1"), "http://<redacted>@ch:8123/?x=1");
        assert_eq!(redact_url("https://ch:8443"), "https://ch:8443");
        assert_eq!(redact_url("http://ch:8123/a@b"), "http://ch:8123/a@b");
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let o = ClickHouseOptions {
            url: "http://ch".into(),
            user: Some("medic".into()),
            password: Some("hunter2".into()),
            timeout: Duration::from_secs(1),
            interval: Duration::from_secs(1),
        };
        let s = format!("{o:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("medic"), "{s}");
    }

    #[test]
    fn password_file_wins_and_loses_its_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret \n").expect("write");
        let o = ClickHouseOptions::resolve(
            "http://ch:8123",
            Some("u"),
            Some(&f),
            Duration::from_secs(5),
            Duration::from_secs(1),
        )
        .expect("resolves");
        assert_eq!(o.password.as_deref(), Some("s3cret "));
        let missing = dir.path().join("nope");
        assert!(matches!(
            ClickHouseOptions::resolve("http://ch", None, Some(&missing), Duration::ZERO, Duration::ZERO),
            Err(ConfigError::PasswordFile { .. })
        ));
        assert!(matches!(
            ClickHouseOptions::resolve("ch:8123", None, None, Duration::ZERO, Duration::ZERO),
            Err(ConfigError::Url(_))
        ));
    }

    #[test]
    fn server_codes_are_read_from_exceptions() {
        let e = QueryError::ClickHouse(clickhouse::error::Error::BadResponse(
            "Code: 60. DB::Exception: Unknown table expression identifier 'system.query_log'. (UNKNOWN_TABLE)".into(),
        ));
        assert_eq!(e.server_code(), Some(60));
        let e = QueryError::ClickHouse(clickhouse::error::Error::BadResponse("164".into()));
        assert_eq!(e.server_code(), Some(164));
        assert_eq!(QueryError::Timeout(Duration::from_secs(1)).server_code(), None);
    }
}
