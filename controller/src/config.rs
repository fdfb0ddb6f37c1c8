//! Controller configuration: a TOML file (`--config`) whose every field has a documented default;
//! command-line flags override the file.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// gRPC address agents connect to. Default 127.0.0.1:7070.
    pub grpc_listen: SocketAddr,
    /// HTTP address for /healthz, /metrics and /api/v1. Default 127.0.0.1:7080.
    pub http_listen: SocketAddr,
    /// Where the embedded store keeps its files. Default ./medic-data.
    pub data_dir: PathBuf,
    /// How long telemetry is kept, e.g. "7d". Default 7 days.
    #[serde(with = "humantime_serde_compat")]
    pub retention: Duration,
    /// Largest agent message accepted, bytes. Default 16 MiB.
    pub max_message_bytes: usize,
    /// Batches that may wait for the store before agents are slowed down. Default 4096.
    pub ingest_queue_batches: usize,
    /// Collection interval pushed to agents (e.g. "10s"); unset leaves each agent's own.
    #[serde(with = "humantime_serde_compat::option")]
    pub agent_interval: Option<Duration>,
    /// Directory of rule files (hot-reloaded); unset runs without remediation rules.
    pub rules_dir: Option<PathBuf>,
    /// Use the Kubernetes API (in-cluster, or the kubeconfig) for pod restarts and scaling.
    /// Default: on when running in a cluster (KUBERNETES_SERVICE_HOST is set).
    pub kubernetes: bool,
    /// Label selector of the ClickHouse pods (e.g. "app.kubernetes.io/name=clickhouse"): a
    /// restart of a node whose agent reports only its Kubernetes node (label `k8s_node`, as the
    /// agent DaemonSet does) deletes the one running pod matching it on that node. Unset: such
    /// restarts are refused with a message saying to set it.
    pub kubernetes_pod_selector: Option<String>,
    /// How often rules are evaluated. Default 10s.
    #[serde(with = "humantime_serde_compat")]
    pub remediation_interval: Duration,
    /// Controller-wide rate limit: at most this many actions, across all rules, within
    /// `max_actions_window`. Default 10.
    pub max_actions: u32,
    /// The window of `max_actions`. Default 10m.
    #[serde(with = "humantime_serde_compat")]
    pub max_actions_window: Duration,
    /// Alertmanager base URLs the controller posts its own alerts to (escalations, approvals,
    /// notify steps); empty: they are only logged and audited.
    pub alertmanager_urls: Vec<String>,
    /// How often active alerts are re-sent (they expire after 4 of these if the controller dies).
    #[serde(with = "humantime_serde_compat")]
    pub alert_resend: Duration,
    /// How long a series must stay anomalous, with no rule covering it, before the controller
    /// raises MedicAnomalyUnhandled. Default 5m.
    #[serde(with = "humantime_serde_compat")]
    pub unhandled_anomaly_for: Duration,
    /// Which anomalies may raise MedicAnomalyUnhandled: `GLOB:up|down|any` per metric, the first
    /// match decides. Empty (the default): the built-in health signals (errors and failures
    /// rising, latency and backlogs growing, memory pressure, space running out, ClickHouse
    /// down); volume metrics (rows, bytes, query counts) never page on their own.
    pub unhandled_anomaly_metrics: Vec<String>,
    /// Forecast exhaustions closer than this, with no rule that would act, raise
    /// MedicExhaustionUnhandled. Default 72h.
    #[serde(with = "humantime_serde_compat")]
    pub unhandled_exhaustion_within: Duration,
    /// ClickHouse HTTP URL of each node for ClickHouse steps, `{node}` replaced by the node name
    /// (e.g. http://{node}:8123) and `{label:NAME}` by the node's label NAME. Credentials as for
    /// `clickhouse_url`.
    pub clickhouse_node_url: Option<String>,
    /// ClickHouse HTTP URL (e.g. http://clickhouse:8123) to store telemetry in; unset uses the
    /// embedded store under `data_dir`.
    pub clickhouse_url: Option<String>,
    /// Database for Medic's tables. Default "medic".
    pub clickhouse_database: String,
    /// ClickHouse user; else MEDIC_CLICKHOUSE_USER; else the server's default user.
    pub clickhouse_user: Option<String>,
    /// File holding the ClickHouse password; else MEDIC_CLICKHOUSE_PASSWORD. Passwords are never
    /// taken from the command line, where `ps` would show them.
    pub clickhouse_password_file: Option<PathBuf>,
    /// Upper bound for one ClickHouse statement. Default 30s.
    #[serde(with = "humantime_serde_compat")]
    pub clickhouse_timeout: Duration,
    /// Certificate chain (PEM) for the agents' gRPC port; with `tls_key`, agents connect with
    /// https:// URLs. Unset: plain gRPC.
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that signs agent client certificates: an agent must then present a certificate
    /// whose DNS name (else CN) is its node name, or a token. Needs `tls_cert`.
    pub tls_client_ca: Option<PathBuf>,
    /// Per-agent tokens, `NODE TOKEN` per line (TOKEN may be `sha256:<hex>`); each binds a token
    /// to one node. Re-read on change and on SIGHUP.
    pub agent_tokens_file: Option<PathBuf>,
    /// Token(s) required as `Authorization: Bearer` by the mutating HTTP API (approve). Unset:
    /// open (a warning is logged at start).
    pub api_token_file: Option<PathBuf>,
    /// Run as one of several replicas: a Kubernetes Lease elects the one that runs detection and
    /// remediation; every replica ingests. Needs the ClickHouse store (`clickhouse_url`), which
    /// all replicas share. Default false (a single controller, always acting).
    pub leader_election: bool,
    /// Name of the Lease. Default "medic-controller".
    pub lease_name: String,
    /// Namespace of the Lease. Default: env POD_NAMESPACE, else the service account's namespace.
    pub lease_namespace: Option<String>,
    /// How long the lease stays valid after the holder's last renewal. Default 15s.
    #[serde(with = "humantime_serde_compat")]
    pub lease_duration: Duration,
    /// How often the holder renews the lease. Default 5s.
    #[serde(with = "humantime_serde_compat")]
    pub lease_renew_interval: Duration,
    /// The holder stops acting when it could not renew for this long; must be shorter than
    /// `lease_duration`, so it has stopped before anyone else may take over. Default 10s.
    #[serde(with = "humantime_serde_compat")]
    pub lease_renew_deadline: Duration,
    /// How often followers try to take the lease, and a failed renewal is retried. Default 2s.
    #[serde(with = "humantime_serde_compat")]
    pub lease_retry_interval: Duration,
    /// This replica's HTTP API as other replicas reach it, published on the lease while leading
    /// (followers pass leader-only API calls on to it). Default: http://$POD_IP:<http port>,
    /// else http://<hostname>:<http port>.
    pub advertise_url: Option<String>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7080)),
            data_dir: PathBuf::from("medic-data"),
            retention: Duration::from_secs(7 * 86400),
            max_message_bytes: 16 << 20,
            ingest_queue_batches: 4096,
            agent_interval: None,
            rules_dir: None,
            remediation_interval: Duration::from_secs(10),
            max_actions: 10,
            max_actions_window: Duration::from_secs(600),
            kubernetes: std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
            kubernetes_pod_selector: None,
            clickhouse_node_url: None,
            alertmanager_urls: Vec::new(),
            alert_resend: Duration::from_secs(60),
            unhandled_anomaly_for: Duration::from_secs(300),
            unhandled_anomaly_metrics: Vec::new(),
            unhandled_exhaustion_within: Duration::from_secs(72 * 3600),
            clickhouse_url: None,
            clickhouse_database: "medic".into(),
            clickhouse_user: None,
            clickhouse_password_file: None,
            clickhouse_timeout: Duration::from_secs(30),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            agent_tokens_file: None,
            api_token_file: None,
            leader_election: false,
            lease_name: "medic-controller".into(),
            lease_namespace: None,
            lease_duration: Duration::from_secs(15),
            lease_renew_interval: Duration::from_secs(5),
            lease_renew_deadline: Duration::from_secs(10),
            lease_retry_interval: Duration::from_secs(2),
            advertise_url: None,
        }
    }
}

impl ControllerConfig {
    /// ClickHouse connection settings, with credentials from the environment or the password
    /// file; `None` when the embedded store is to be used.
    pub fn clickhouse(&self) -> anyhow::Result<Option<crate::store::clickhouse::ClickHouseOptions>> {
        let Some(url) = &self.clickhouse_url else { return Ok(None) };
        let mut o = crate::store::clickhouse::ClickHouseOptions::new(url.clone());
        o.database = self.clickhouse_database.clone();
        o.retention = self.retention;
        o.timeout = self.clickhouse_timeout;
        o.user = self.clickhouse_user.clone().or_else(|| std::env::var("MEDIC_CLICKHOUSE_USER").ok());
        o.password = match &self.clickhouse_password_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| anyhow::anyhow!("reading the ClickHouse password file {}: {e}", f.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            ),
            None => std::env::var("MEDIC_CLICKHOUSE_PASSWORD").ok(),
        };
        Ok(Some(o))
    }

    /// Checks the high-availability settings; says what to change.
    pub fn check_leader_election(&self) -> anyhow::Result<()> {
        if !self.leader_election {
            return Ok(());
        }
        anyhow::ensure!(
            self.clickhouse_url.is_some(),
            "--leader-election needs the ClickHouse store (--clickhouse-url): the replicas must share one store, and the embedded store is one replica's own"
        );
        anyhow::ensure!(
            !self.lease_retry_interval.is_zero()
                && self.lease_renew_interval < self.lease_renew_deadline
                && self.lease_renew_deadline < self.lease_duration,
            "lease timing must satisfy 0 < --lease-retry-interval, --lease-renew-interval < --lease-renew-deadline < --lease-duration (got {:?}, {:?}, {:?}, {:?})",
            self.lease_retry_interval,
            self.lease_renew_interval,
            self.lease_renew_deadline,
            self.lease_duration
        );
        Ok(())
    }

    /// This replica's name in the election: env POD_NAME, else the hostname.
    pub fn replica_identity() -> String {
        std::env::var("POD_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("controller-{}", std::process::id()))
    }

    /// The Lease's namespace: configured, else env POD_NAMESPACE, else the service account's.
    pub fn lease_namespace(&self) -> Option<String> {
        self.lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .filter(|s| !s.is_empty())
    }

    /// The HTTP URL other replicas reach this one's API at.
    pub fn advertise_url(&self) -> String {
        if let Some(u) = &self.advertise_url {
            return u.clone();
        }
        let port = self.http_listen.port();
        if let Some(ip) = std::env::var("POD_IP").ok().filter(|s| !s.is_empty()) {
            return if ip.contains(':') { format!("http://[{ip}]:{port}") } else { format!("http://{ip}:{port}") };
        }
        if !self.http_listen.ip().is_unspecified() {
            return format!("http://{}", self.http_listen);
        }
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        format!("http://{}:{port}", if host.is_empty() { "localhost" } else { &host })
    }

    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }
}

/// Durations in config files are written the way people say them: "10s", "7d", "1h 30m".
pub mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let s: Option<String> = Option::deserialize(d)?;
            s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom)).transpose()
        }
    }
}
