//! Which node an agent may speak for. An agent proves it with a client certificate (its DNS
//! name, else its CN, is the node id) or with a token bound to one node (`--agent-tokens-file`).
//! The node it names in its hello must be that one; otherwise the stream is refused and counted
//! in `medic_agents_refused_total{reason}`.
//!
//! Tokens file: one `NODE TOKEN` pair per line, `#` starts a comment; TOKEN may be written as
//! `sha256:<hex>` so the file need not hold the token itself. A token may be bound to one node
//! only. The file is re-read when it changes and on SIGHUP; a broken file is refused and the last
//! good one stays.

use super::{SecurityError, TokenDigest, bearer, read_file};
use crate::telemetry::ReasonLabels;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tonic::Status;

/// What an agent proved before its hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A verified client certificate with these names (DNS SANs, else the CN).
    Certificate(Vec<String>),
    /// A token bound to this node.
    Token(String),
    /// Nothing: this controller authenticates nobody.
    Anonymous,
}

#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    entries: Vec<(String, TokenDigest)>,
}

impl TokenTable {
    pub fn parse(path: &Path, text: &str) -> Result<Self, SecurityError> {
        let mut entries: Vec<(String, TokenDigest)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let syntax = |message: String| SecurityError::Syntax { path: path.to_path_buf(), line: i + 1, message };
            let mut parts = line.split_whitespace();
            let (Some(node), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(syntax("expected `NODE TOKEN`".into()));
            };
            crate::ingest::validate_node_name(node).map_err(syntax)?;
            let digest = TokenDigest::parse(token).map_err(syntax)?;
            if entries.iter().any(|(n, _)| n == node) {
                return Err(syntax(format!("node {node} has a token already; one token per node")));
            }
            if let Some((other, _)) = entries.iter().find(|(_, d)| d.matches(&digest)) {
                return Err(syntax(format!("this token is bound to {other} already; every node needs its own")));
            }
            entries.push((node.to_string(), digest));
        }
        Ok(Self { entries })
    }

    pub fn load(path: &Path) -> Result<Self, SecurityError> {
        let bytes = read_file("--agent-tokens-file", path)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| SecurityError::Config(format!("--agent-tokens-file {} is not UTF-8 text", path.display())))?;
        Self::parse(path, &text)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The node a token is bound to. Every entry is compared (in constant time), so how long
    /// this takes does not depend on which entry, if any, matched.
    pub fn node_of(&self, token: &str) -> Option<&str> {
        let d = TokenDigest::of(token);
        let mut found = None;
        for (node, entry) in &self.entries {
            if entry.matches(&d) {
                found = Some(node.as_str());
            }
        }
        found
    }
}

/// The names a certificate is issued to: its DNS subject alternative names, else its CN.
/// Wildcards are kept as written, so they never equal a node name.
pub fn certificate_names(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    if names.is_empty()
        && let Some(cn) = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok())
    {
        names.push(cn.to_string());
    }
    Ok(names)
}

#[derive(Clone)]
pub struct AgentAuth {
    /// `--tls-client-ca` is set: certificates presented were verified against it.
    client_ca: bool,
    tokens: Option<(PathBuf, Arc<RwLock<Arc<TokenTable>>>)>,
    refused: Family<ReasonLabels, Counter>,
}

impl AgentAuth {
    pub fn new(client_ca: bool, tokens_file: Option<&Path>) -> Result<Self, SecurityError> {
        let tokens = match tokens_file {
            Some(p) => Some((p.to_path_buf(), Arc::new(RwLock::new(Arc::new(TokenTable::load(p)?))))),
            None => None,
        };
        Ok(Self { client_ca, tokens, refused: Family::default() })
    }

    /// True when nobody is authenticated (no client CA, no tokens): today's open behaviour.
    pub fn is_open(&self) -> bool {
        !self.client_ca && self.tokens.is_none()
    }

    pub fn tokens_file(&self) -> Option<PathBuf> {
        self.tokens.as_ref().map(|(p, _)| p.clone())
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "medic_agents_refused",
            "Agent connections refused by authentication, by reason (tls_handshake, no_credentials, invalid_token, identity_mismatch, token_for_other_node)",
            self.refused.clone(),
        );
    }

    pub fn count_refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }

    /// Re-reads the tokens file; a broken file is refused and the last good table stays.
    pub fn reload_tokens(&self) {
        let Some((path, table)) = &self.tokens else { return };
        match TokenTable::load(path) {
            Ok(t) => {
                tracing::info!(file = %path.display(), tokens = t.len(), "reloaded the agent tokens");
                if let Ok(mut g) = table.write() {
                    *g = Arc::new(t);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the agent tokens file changed but is invalid; keeping the previous tokens")
            }
        }
    }

    fn refuse(&self, reason: &'static str, status: Status) -> Status {
        self.count_refused(reason);
        tracing::warn!(reason, message = status.message(), "refused an agent");
        status
    }

    /// What the connection proves, before the hello is read: a stream without any acceptable
    /// credential is refused at once.
    pub fn authenticate(
        &self,
        peer_certs: Option<&[CertificateDer<'static>]>,
        authorization: Option<&str>,
    ) -> Result<Principal, Status> {
        if self.client_ca
            && let Some(cert) = peer_certs.and_then(|c| c.first())
        {
            let names = certificate_names(cert.as_ref())
                .map_err(|e| self.refuse("identity_mismatch", Status::unauthenticated(e)))?;
            return Ok(Principal::Certificate(names));
        }
        if let Some((_, table)) = &self.tokens {
            let table = table.read().map(|g| g.clone()).unwrap_or_default();
            return match authorization {
                None => Err(self.refuse(
                    "no_credentials",
                    Status::unauthenticated(if self.client_ca {
                        "this controller requires a client certificate (agentd --tls-cert/--tls-key) or an agent token (agentd --token-file)"
                    } else {
                        "this controller requires an agent token (agentd --token-file)"
                    }),
                )),
                Some(h) => match bearer(h).and_then(|t| table.node_of(t)) {
                    Some(node) => Ok(Principal::Token(node.to_string())),
                    None => Err(self.refuse(
                        "invalid_token",
                        Status::unauthenticated(
                            "the agent token is not valid here; check agentd --token-file against the controller's --agent-tokens-file",
                        ),
                    )),
                },
            };
        }
        if self.client_ca {
            return Err(self.refuse(
                "no_credentials",
                Status::unauthenticated(
                    "this controller requires a client certificate signed by its --tls-client-ca (agentd --tls-cert/--tls-key)",
                ),
            ));
        }
        Ok(Principal::Anonymous)
    }

    /// Whether what was proved allows speaking as `node` (the node of the hello).
    pub fn authorize(&self, principal: &Principal, node: &str) -> Result<(), Status> {
        match principal {
            Principal::Anonymous => Ok(()),
            Principal::Certificate(names) if names.iter().any(|n| n == node) => Ok(()),
            Principal::Certificate(names) => Err(self.refuse(
                "identity_mismatch",
                Status::permission_denied(format!(
                    "the client certificate is issued to {names:?}, not to node {node:?}; an agent may only speak for the node named in its certificate"
                )),
            )),
            Principal::Token(bound) if bound == node => Ok(()),
            Principal::Token(bound) => Err(self.refuse(
                "token_for_other_node",
                Status::permission_denied(format!(
                    "this agent token belongs to node {bound:?}, not to {node:?}; every node needs its own token"
                )),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<TokenTable, SecurityError> {
        TokenTable::parse(Path::new("tokens"), text)
    }

    #[test]
    fn a_token_is_bound_to_exactly_one_node() {
        let t =
            table("# node token\nch-1 token-of-ch-1-0123456789\nch-2  token-of-ch-2-0123456789  # second\n").unwrap();
        assert_eq!(t.node_of("token-of-ch-1-0123456789"), Some("ch-1"));
        assert_eq!(t.node_of("token-of-ch-2-0123456789"), Some("ch-2"));
        assert_eq!(t.node_of("token-of-ch-3-0123456789"), None);
        let e = table("a token-shared-0123456789\nb token-shared-0123456789\n").unwrap_err().to_string();
        assert!(e.contains("tokens:2:") && e.contains("bound to a"), "{e}");
        let e = table("a t1-0123456789abcdef\na t2-0123456789abcdef\n").unwrap_err().to_string();
        assert!(e.contains("one token per node"), "{e}");
        let e = table("a\n").unwrap_err().to_string();
        assert!(e.contains("NODE TOKEN"), "{e}");
        let e = table("bad/node token-0123456789abcdef\n").unwrap_err().to_string();
        assert!(e.contains("tokens:1:"), "{e}");
    }

    #[test]
    fn another_nodes_token_cannot_speak_for_this_node() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, "ch-1 token-of-ch-1-0123456789\nch-2 token-of-ch-2-0123456789\n").unwrap();
        let auth = AgentAuth::new(false, Some(&f)).unwrap();
        let p = auth.authenticate(None, Some("Bearer token-of-ch-1-0123456789")).unwrap();
        assert_eq!(p, Principal::Token("ch-1".into()));
        assert!(auth.authorize(&p, "ch-1").is_ok());
        assert_eq!(auth.authorize(&p, "ch-2").unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(auth.authenticate(None, None).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(
            auth.authenticate(None, Some("Bearer nope-nope-nope-nope")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut reg = Registry::default();
        auth.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for reason in ["token_for_other_node", "no_credentials", "invalid_token"] {
            assert!(text.contains(&format!("medic_agents_refused_total{{reason=\"{reason}\"}} 1")), "{text}");
        }
    }

    #[test]
    fn a_broken_tokens_file_keeps_the_last_good_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, "ch-1 token-of-ch-1-0123456789\n").unwrap();
        let auth = AgentAuth::new(false, Some(&f)).unwrap();
        std::fs::write(&f, "ch-1\n").unwrap();
        auth.reload_tokens();
        assert!(auth.authenticate(None, Some("Bearer token-of-ch-1-0123456789")).is_ok());
        std::fs::write(&f, "ch-9 token-of-ch-9-0123456789\n").unwrap();
        auth.reload_tokens();
        assert!(
            auth.authenticate(None, Some("Bearer token-of-ch-1-0123456789")).is_err(),
            "a removed token stops working"
        );
        assert!(auth.authenticate(None, Some("Bearer token-of-ch-9-0123456789")).is_ok());
    }

    #[test]
    fn without_client_ca_or_tokens_every_agent_is_let_in() {
        let auth = AgentAuth::new(false, None).unwrap();
        assert!(auth.is_open());
        assert_eq!(auth.authenticate(None, None).unwrap(), Principal::Anonymous);
    }
}
