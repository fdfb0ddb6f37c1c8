//! Who may talk to the controller.
//!
//! - `tls`: the agents' gRPC port over TLS (rustls, ring), optionally asking for client
//!   certificates signed by `--tls-client-ca`; handshake failures are counted.
//! - `agents`: which node an agent may speak for — the DNS name (else CN) of its client
//!   certificate, or the node its token (`--agent-tokens-file`) is bound to.
//! - `api`: the bearer token (`--api-token-file`) that guards the mutating HTTP API.
//!
//! Secrets (tokens, keys) are kept in [`secrecy::SecretString`] or as SHA-256 digests, compared
//! in constant time, and never logged.

pub mod agents;
pub mod api;
pub mod tls;

use ring::digest::{SHA256, digest};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Syntax { path: PathBuf, line: usize, message: String },
    #[error("{0}")]
    Config(String),
}

pub(crate) fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read { what, path: path.to_path_buf(), source })
}

/// A token as stored: its SHA-256, so a token file may hold `sha256:<hex>` instead of the token,
/// and comparisons take the same time whatever the input.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(<redacted>)")
    }
}

/// Tokens shorter than this are refused: they could be guessed.
pub const MIN_TOKEN_CHARS: usize = 16;

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        let d = digest(&SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// Parses a token file entry: `sha256:<64 hex digits>`, or the token itself.
    pub fn parse(entry: &str) -> Result<Self, String> {
        if let Some(hex) = entry.strip_prefix("sha256:") {
            if hex.len() != 64 {
                return Err("a sha256: entry needs 64 hex digits".into());
            }
            let mut out = [0u8; 32];
            for (i, b) in out.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .map_err(|_| "a sha256: entry needs 64 hex digits".to_string())?;
            }
            return Ok(Self(out));
        }
        if entry.chars().count() < MIN_TOKEN_CHARS {
            return Err(format!(
                "tokens must have at least {MIN_TOKEN_CHARS} characters (e.g. `head -c 32 /dev/urandom | base64`)"
            ));
        }
        Ok(Self::of(entry))
    }

    /// Constant-time equality.
    pub fn matches(&self, other: &TokenDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// `Authorization: Bearer <token>` → the token.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// Calls `reload` when one of `paths` changes (checked every `every`) or on SIGHUP. Secrets
/// mounted from a Kubernetes Secret change this way when the Secret is updated.
pub fn watch_files(
    paths: Vec<PathBuf>,
    every: Duration,
    reload: impl Fn() + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    fn stamp(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
        paths.iter().map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
    }
    tokio::spawn(async move {
        let mut last = stamp(&paths);
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            let now = stamp(&paths);
            if forced || now != last {
                last = now;
                reload();
            }
        }
    })
}

/// Everything the controller needs to check who talks to it, built from the configuration.
#[derive(Clone)]
pub struct Security {
    pub tls: Option<tls::ServerTls>,
    pub agents: agents::AgentAuth,
    pub api: api::ApiAuth,
}

impl Security {
    /// Loads the certificates and token files the configuration names; an unusable combination
    /// is an error that says what to change.
    pub fn from_config(cfg: &crate::config::ControllerConfig) -> Result<Self, SecurityError> {
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => Some(tls::ServerTls::load(tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: cfg.tls_client_ca.clone(),
            })?),
            (None, None) => None,
            _ => {
                return Err(SecurityError::Config(
                    "--tls-cert and --tls-key go together: the certificate chain and its private key".into(),
                ));
            }
        };
        if tls.is_none() && cfg.tls_client_ca.is_some() {
            return Err(SecurityError::Config(
                "--tls-client-ca needs --tls-cert and --tls-key: client certificates only exist over TLS".into(),
            ));
        }
        let agents = agents::AgentAuth::new(cfg.tls_client_ca.is_some(), cfg.agent_tokens_file.as_deref())?;
        let api = api::ApiAuth::new(cfg.api_token_file.as_deref())?;
        Ok(Self { tls, agents, api })
    }

    /// Says at start what is open, and keeps certificates and tokens current when their files
    /// change (or on SIGHUP).
    pub fn start(&self) -> Vec<tokio::task::JoinHandle<()>> {
        if self.agents.is_open() {
            tracing::warn!(
                "agents are not authenticated: any client that reaches the gRPC port can send data as any node; set --tls-client-ca or --agent-tokens-file"
            );
        }
        if self.tls.is_none() {
            tracing::warn!("the agents' gRPC port is not encrypted; set --tls-cert and --tls-key");
        }
        if self.api.file().is_none() {
            tracing::warn!("the mutating HTTP API (approve) is open to anyone who can reach it; set --api-token-file");
        }
        let mut tasks = Vec::new();
        let every = Duration::from_secs(5);
        if let Some(t) = self.tls.clone() {
            tasks.push(watch_files(t.files(), every, move || t.reload()));
        }
        if let Some(f) = self.agents.tokens_file() {
            let a = self.agents.clone();
            tasks.push(watch_files(vec![f], every, move || a.reload_tokens()));
        }
        if let Some(f) = self.api.file() {
            let a = self.api.clone();
            tasks.push(watch_files(vec![f], every, move || a.reload()));
        }
        tasks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_its_own_digest_and_its_sha256_entry_only() {
        let t = "a-long-enough-agent-token";
        let d = TokenDigest::of(t);
        assert!(d.matches(&TokenDigest::parse(t).unwrap()));
        let hex: String = d.0.iter().map(|b| format!("{b:02x}")).collect();
        assert!(d.matches(&TokenDigest::parse(&format!("sha256:{hex}")).unwrap()));
        assert!(!d.matches(&TokenDigest::of("a-long-enough-agent-tokem")));
        assert!(TokenDigest::parse("short").is_err(), "short tokens are refused");
        assert_eq!(format!("{d:?}"), "TokenDigest(<redacted>)");
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
