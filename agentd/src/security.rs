//! How agentd proves who it is to the controller, and checks who the controller is: TLS (rustls,
//! ring provider) for `https://` controller URLs with the controller's CA (`--tls-ca`), an
//! optional client certificate (`--tls-cert`, `--tls-key`) and an optional per-agent token
//! (`--token-file`) sent as `authorization: Bearer <token>` on the stream.

use crate::config::AgentConfig;
use secrecy::{ExposeSecret, SecretString};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

/// The agent's credentials and trust, ready to open a stream. `Debug` never shows key or token.
#[derive(Clone, Default)]
pub struct Credentials {
    tls: Option<ClientTlsConfig>,
    /// `--tls-server-name`: the name checked in the controller's certificate instead of the
    /// URL's host.
    server_name: Option<String>,
    token: Option<SecretString>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("tls", &self.tls.is_some())
            .field("server_name", &self.server_name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read { what, path: path.to_path_buf(), source })
}

/// Reads a secret from a file: surrounding whitespace (a final newline) is not part of it.
pub fn read_secret_file(what: &'static str, path: &Path) -> Result<SecretString, SecurityError> {
    let bytes = read(what, path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| SecurityError::Config(format!("{what} {} is not UTF-8 text", path.display())))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(SecurityError::Config(format!("{what} {} is empty", path.display())));
    }
    Ok(SecretString::from(trimmed.to_string()))
}

/// The controller URLs of `--controller`: one, or several separated by commas to fail over
/// between (bare metal; behind a Kubernetes Service one URL reaches every replica).
pub fn controller_urls(spec: &str) -> Vec<String> {
    spec.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

impl Credentials {
    /// Loads what the configuration names, and refuses combinations that cannot work.
    pub fn load(cfg: &AgentConfig) -> Result<Self, SecurityError> {
        let urls = controller_urls(&cfg.controller);
        if urls.is_empty() {
            return Err(SecurityError::Config("--controller is empty; give the controller's gRPC URL".into()));
        }
        for u in &urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(SecurityError::Config(format!(
                    "controller URL {u:?} must start with https:// (TLS) or http://"
                )));
            }
        }
        let any_https = urls.iter().any(|u| u.starts_with("https://"));
        let any_http = urls.iter().any(|u| u.starts_with("http://"));
        let tls_flags = cfg.tls_ca.is_some() || cfg.tls_cert.is_some() || cfg.tls_key.is_some();
        if any_https && any_http {
            return Err(SecurityError::Config(
                "the controller URLs mix https:// and http://; use one scheme for all replicas".into(),
            ));
        }
        if tls_flags && !any_https {
            return Err(SecurityError::Config(
                "--tls-ca, --tls-cert and --tls-key need an https:// controller URL".into(),
            ));
        }
        let mut creds = Credentials { server_name: cfg.tls_server_name.clone(), ..Default::default() };
        if any_https {
            let ca = cfg.tls_ca.as_deref().ok_or_else(|| {
                SecurityError::Config(
                    "an https:// controller URL needs --tls-ca: the CA certificate (PEM) that signed the controller's certificate".into(),
                )
            })?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--tls-ca", ca)?));
            match (&cfg.tls_cert, &cfg.tls_key) {
                (Some(c), Some(k)) => {
                    tls = tls.identity(Identity::from_pem(read("--tls-cert", c)?, read("--tls-key", k)?));
                }
                (None, None) => {}
                _ => {
                    return Err(SecurityError::Config(
                        "--tls-cert and --tls-key go together: the client certificate and its private key".into(),
                    ));
                }
            }
            if let Some(name) = &cfg.tls_server_name {
                tls = tls.domain_name(name.clone());
            }
            creds.tls = Some(tls);
        }
        if let Some(f) = &cfg.token_file {
            creds.token = Some(read_secret_file("--token-file", f)?);
            if !any_https {
                tracing::warn!(
                    "the agent token is sent over a plain http:// connection where anyone on the path can read it; use an https:// controller URL"
                );
            }
        }
        Ok(creds)
    }

    /// A connection endpoint for one controller URL, with TLS when the URL is https.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, String> {
        let mut e = Endpoint::from_shared(url.to_string()).map_err(|e| e.to_string())?;
        if url.starts_with("https://") {
            let tls = self.tls.clone().ok_or("an https:// controller URL needs --tls-ca")?;
            e = e.tls_config(tls).map_err(|e| e.to_string())?;
        }
        Ok(e.connect_timeout(Duration::from_secs(5)))
    }

    /// Adds the per-agent token, if any, to a request.
    pub fn authorize<T>(&self, req: &mut tonic::Request<T>) -> Result<(), String> {
        if let Some(t) = &self.token {
            let value = format!("Bearer {}", t.expose_secret())
                .parse()
                .map_err(|_| "the token file holds characters not allowed in a header".to_string())?;
            req.metadata_mut().insert("authorization", value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_controller_urls_are_separated_by_commas() {
        assert_eq!(controller_urls("https://a:7070, https://b:7070,"), vec!["https://a:7070", "https://b:7070"]);
        assert_eq!(controller_urls("http://c:7070"), vec!["http://c:7070"]);
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "s3cret-agent-token-value\n").unwrap();
        let cfg = AgentConfig { token_file: Some(f), ..Default::default() };
        let creds = Credentials::load(&cfg).unwrap();
        let shown = format!("{creds:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let mut req = tonic::Request::new(());
        creds.authorize(&mut req).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer s3cret-agent-token-value");
    }

    #[test]
    fn tls_options_without_an_https_url_are_refused_with_a_reason() {
        let cfg = AgentConfig { tls_ca: Some("/nonexistent".into()), ..Default::default() };
        let e = Credentials::load(&cfg).unwrap_err().to_string();
        assert!(e.contains("https://"), "{e}");
        let cfg = AgentConfig { controller: "https://c:7070".into(), ..Default::default() };
        let e = Credentials::load(&cfg).unwrap_err().to_string();
        assert!(e.contains("--tls-ca"), "{e}");
    }
}
