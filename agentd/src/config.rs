//! agentd configuration: a TOML file (`--config`) whose every field has a documented default;
//! command-line flags override the file.

use crate::collect::logs::ReadFrom;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Controller gRPC URL, https:// for TLS; several separated by commas are tried in turn
    /// (replicas on bare metal). Default http://127.0.0.1:7070.
    pub controller: String,
    /// CA certificate (PEM) that signed the controller's certificate; needed for https.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for controllers that require one; its DNS name (or CN) must be
    /// this node's name.
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Name checked in the controller's certificate instead of the URL's host.
    pub tls_server_name: Option<String>,
    /// File holding this agent's token (`--agent-tokens-file` on the controller binds it to this
    /// node), sent as `authorization: Bearer`.
    pub token_file: Option<PathBuf>,
    /// This node's name. Default: the hostname.
    pub node: Option<String>,
    /// Labels sent with the hello (role, shard, replica, zone…), used for peer groups and selectors.
    pub labels: Vec<(String, String)>,
    /// Spool directory; must survive restarts. Default ./medic-spool.
    pub spool_dir: PathBuf,
    /// Largest spool on disk before the oldest batches are dropped. Default 256 MiB.
    pub spool_max_bytes: u64,
    /// Collection interval. Default 10s.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// HTTP address for /healthz and /metrics. Default 127.0.0.1:9465.
    pub http_listen: SocketAddr,
    /// Log files to tail (globs).
    pub log_files: Vec<String>,
    /// Longer log lines are truncated. Default 16 KiB.
    pub max_line_bytes: usize,
    /// Where to start in log files found at the very first start: "end" (default) or "beginning".
    pub read_from: ReadFrom,
    /// Process names whose count, CPU and memory are reported, e.g. ["clickhouse-server"].
    pub processes: Vec<String>,
    /// Host /proc, /sys and root mount (set to /host/... in a container). Defaults /proc, /sys, /.
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    pub rootfs: PathBuf,
    /// Batches in flight to the controller before waiting for acks. Default 256.
    pub max_in_flight: usize,
    /// Services the controller may restart here: name → command line (run with sh -c).
    pub service_restart: std::collections::BTreeMap<String, String>,
    /// Also allow `systemctl restart NAME` for services not listed above. Default false.
    pub allow_systemctl_restart: bool,
    /// ClickHouse HTTP interface to collect metrics from, e.g. http://127.0.0.1:8123. Default:
    /// none (no ClickHouse collection). Credentials never go here: see the next two keys.
    pub clickhouse_url: Option<String>,
    /// ClickHouse user. The env variable MEDIC_CLICKHOUSE_USER wins. Default: the server's default.
    pub clickhouse_user: Option<String>,
    /// File holding the ClickHouse password (a final newline is ignored). Without it, the env
    /// variable MEDIC_CLICKHOUSE_PASSWORD is used.
    pub clickhouse_password_file: Option<PathBuf>,
    /// Bound on one ClickHouse collection round, all queries together; the server is also asked to
    /// stop the agent's queries after this long. Default 5s.
    #[serde(deserialize_with = "duration")]
    pub clickhouse_timeout: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            controller: "http://127.0.0.1:7070".into(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_server_name: None,
            token_file: None,
            node: None,
            labels: Vec::new(),
            spool_dir: PathBuf::from("medic-spool"),
            spool_max_bytes: 256 << 20,
            interval: Duration::from_secs(10),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9465)),
            log_files: Vec::new(),
            max_line_bytes: 16 << 10,
            read_from: ReadFrom::End,
            processes: Vec::new(),
            proc_root: "/proc".into(),
            sys_root: "/sys".into(),
            rootfs: "/".into(),
            max_in_flight: 256,
            service_restart: Default::default(),
            allow_systemctl_restart: false,
            clickhouse_url: None,
            clickhouse_user: None,
            clickhouse_password_file: None,
            clickhouse_timeout: Duration::from_secs(5),
        }
    }
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

impl AgentConfig {
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    /// The node name: configured, else the hostname.
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(|| {
            std::fs::read_to_string(self.proc_root.join("sys/kernel/hostname"))
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clickhouse_keys_parse_and_default() {
        let cfg: AgentConfig = toml::from_str(
            "clickhouse_url = \"http://127.0.0.1:8123\"\nclickhouse_user = \"medic\"\n\
             clickhouse_password_file = \"/etc/medic/ch-password\"\nclickhouse_timeout = \"2s\"\n",
        )
        .expect("valid config");
        assert_eq!(cfg.clickhouse_url.as_deref(), Some("http://127.0.0.1:8123"));
        assert_eq!(cfg.clickhouse_user.as_deref(), Some("medic"));
        assert_eq!(cfg.clickhouse_password_file, Some(PathBuf::from("/etc/medic/ch-password")));
        assert_eq!(cfg.clickhouse_timeout, Duration::from_secs(2));
        let d = AgentConfig::default();
        assert_eq!((d.clickhouse_url, d.clickhouse_timeout), (None, Duration::from_secs(5)));
        // A password is never a config key: only a file holding it.
        assert!(toml::from_str::<AgentConfig>("clickhouse_password = \"x\"").is_err());
    }
}
