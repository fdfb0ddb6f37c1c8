//! TLS for the agents' gRPC port. The controller runs the handshakes itself (tokio-rustls, ring
//! provider) rather than through tonic's acceptor, so that a refused handshake — no TLS, a client
//! certificate from another CA, an expired one — is counted and logged with its reason, and so
//! that renewed certificate files are picked up without a restart.
//!
//! With `--tls-client-ca`, client certificates are verified against that CA when presented but
//! not demanded at the handshake: an agent without one is then refused by the ingest service with
//! a gRPC status that says what is missing (and agents using a token instead still get in).

use super::{SecurityError, read_file};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// The current server configuration; replaced whole when the files change.
#[derive(Clone)]
pub struct ServerTls {
    files: TlsFiles,
    config: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let pem = read_file(what, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| SecurityError::Config(format!("{what} {}: not PEM certificates: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(SecurityError::Config(format!("{what} {} holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

impl ServerTls {
    pub fn load(files: TlsFiles) -> Result<Self, SecurityError> {
        let config = Self::build(&files)?;
        Ok(Self { files, config: Arc::new(RwLock::new(config)) })
    }

    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    pub fn files(&self) -> Vec<PathBuf> {
        let f = &self.files;
        [Some(f.cert.clone()), Some(f.key.clone()), f.client_ca.clone()].into_iter().flatten().collect()
    }

    fn build(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, SecurityError> {
        let chain = certs("--tls-cert", &files.cert)?;
        let key_pem = read_file("--tls-key", &files.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            SecurityError::Config(format!("--tls-key {}: no PEM private key found ({e})", files.key.display()))
        })?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| SecurityError::Config(format!("TLS: {e}")))?;
        let builder = match &files.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs("--tls-client-ca", ca)? {
                    roots.add(c).map_err(|e| {
                        SecurityError::Config(format!(
                            "--tls-client-ca {}: not a usable CA certificate: {e}",
                            ca.display()
                        ))
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| SecurityError::Config(format!("--tls-client-ca {}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            SecurityError::Config(format!(
                "--tls-cert {} and --tls-key {} do not make a usable pair: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// Reads the files again; a broken set is refused and the current one stays.
    pub fn reload(&self) {
        match Self::build(&self.files) {
            Ok(c) => {
                if let Ok(mut g) = self.config.write() {
                    *g = c;
                }
                tracing::info!(cert = %self.files.cert.display(), "reloaded the TLS certificate");
            }
            Err(e) => {
                tracing::error!(error = %e, "the TLS files changed but cannot be used; keeping the previous ones")
            }
        }
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self.config.read().map(|g| g.clone()).unwrap_or_else(|p| p.into_inner().clone());
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Accepts TCP connections and completes their handshakes concurrently (a slow or hostile
    /// client never holds up the others); refused handshakes go to `refused`.
    pub fn incoming(
        self,
        listener: TcpListener,
        refused: impl Fn(&'static str) + Send + Sync + 'static,
    ) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let refused = Arc::new(refused);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = tx.closed() => return,
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::warn!(error = %e, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx, refused) = (self.acceptor(), tx.clone(), refused.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        // Connected and closed without a word: a port check, not a client.
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                            tracing::debug!(%peer, "a connection closed before a TLS handshake");
                        }
                        Ok(Err(e)) => {
                            refused("tls_handshake");
                            tracing::warn!(%peer, error = %e, "refused a connection: TLS handshake failed (a client certificate from another CA, or not TLS)");
                        }
                        Err(_) => {
                            refused("tls_handshake");
                            tracing::warn!(%peer, "refused a connection: no TLS handshake within 10 s");
                        }
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}
