//! The bearer token that guards the controller's mutating HTTP API (`--api-token-file`): every
//! request that is not a GET/HEAD/OPTIONS — approving an action today — needs
//! `Authorization: Bearer <token>`: 401 without one, 403 with a wrong one. Reads stay open.
//!
//! The file holds one token per line (several while rotating), `#` comments, each either the
//! token or `sha256:<hex>` of it. It is re-read when it changes and on SIGHUP.

use super::{SecurityError, TokenDigest, bearer, read_file};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

#[derive(Clone, Default)]
pub struct ApiAuth {
    file: Option<PathBuf>,
    tokens: Arc<RwLock<Arc<Vec<TokenDigest>>>>,
}

fn parse(path: &Path, text: &str) -> Result<Vec<TokenDigest>, SecurityError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(TokenDigest::parse(line).map_err(|message| SecurityError::Syntax {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        })?);
    }
    if out.is_empty() {
        return Err(SecurityError::Config(format!("--api-token-file {} holds no token", path.display())));
    }
    Ok(out)
}

fn load(path: &Path) -> Result<Vec<TokenDigest>, SecurityError> {
    let text = String::from_utf8(read_file("--api-token-file", path)?)
        .map_err(|_| SecurityError::Config(format!("--api-token-file {} is not UTF-8 text", path.display())))?;
    parse(path, &text)
}

impl ApiAuth {
    /// No file: the API is open (the controller warns at start).
    pub fn new(file: Option<&Path>) -> Result<Self, SecurityError> {
        let tokens = match file {
            Some(f) => load(f)?,
            None => Vec::new(),
        };
        Ok(Self { file: file.map(Path::to_path_buf), tokens: Arc::new(RwLock::new(Arc::new(tokens))) })
    }

    pub fn file(&self) -> Option<PathBuf> {
        self.file.clone()
    }

    pub fn reload(&self) {
        let Some(f) = &self.file else { return };
        match load(f) {
            Ok(t) => {
                tracing::info!(file = %f.display(), tokens = t.len(), "reloaded the API tokens");
                if let Ok(mut g) = self.tokens.write() {
                    *g = Arc::new(t);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the API token file changed but is invalid; keeping the previous tokens")
            }
        }
    }

    /// Ok, or the status to answer with.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), (StatusCode, &'static str)> {
        if self.file.is_none() {
            return Ok(());
        }
        let Some(token) = authorization.and_then(bearer) else {
            return Err((
                StatusCode::UNAUTHORIZED,
                "this API call needs `Authorization: Bearer <token>` (the controller's --api-token-file; `controller actions` reads --api-token-file or MEDIC_API_TOKEN)",
            ));
        };
        let tokens = self.tokens.read().map(|g| g.clone()).unwrap_or_default();
        let d = TokenDigest::of(token);
        // Every entry is compared, so the time taken does not tell which one matched.
        let ok = tokens.iter().fold(false, |acc, t| acc | t.matches(&d));
        if ok { Ok(()) } else { Err((StatusCode::FORBIDDEN, "the API token is wrong")) }
    }
}

/// Axum middleware: mutating requests need the token.
pub async fn require_token(State(auth): State<ApiAuth>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match auth.check(header) {
        Ok(()) => next.run(req).await,
        Err((status, message)) => {
            tracing::warn!(method = %req.method(), path = %req.uri().path(), status = status.as_u16(), "refused an API call: {message}");
            let mut resp = (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            }
            resp
        }
    }
}

/// The token `controller actions approve` sends: `--api-token-file` (its first plain token),
/// else the env variable MEDIC_API_TOKEN.
pub fn client_token(file: Option<&Path>) -> Result<Option<secrecy::SecretString>, SecurityError> {
    if let Some(f) = file {
        let text = String::from_utf8(read_file("--api-token-file", f)?)
            .map_err(|_| SecurityError::Config(format!("--api-token-file {} is not UTF-8 text", f.display())))?;
        let token = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .find(|l| !l.is_empty() && !l.starts_with("sha256:"))
            .ok_or_else(|| {
                SecurityError::Config(format!(
                    "--api-token-file {} holds no plain token to send (only sha256: digests); set MEDIC_API_TOKEN",
                    f.display()
                ))
            })?;
        return Ok(Some(token.to_string().into()));
    }
    Ok(std::env::var("MEDIC_API_TOKEN").ok().filter(|t| !t.trim().is_empty()).map(|t| t.trim().to_string().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutating_calls_need_the_right_token() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("api-token");
        std::fs::write(&f, "# rotating\nold-api-token-0123456789\nnew-api-token-0123456789\n").unwrap();
        let auth = ApiAuth::new(Some(&f)).unwrap();
        assert_eq!(auth.check(None).unwrap_err().0, StatusCode::UNAUTHORIZED);
        assert_eq!(auth.check(Some("Basic xyz")).unwrap_err().0, StatusCode::UNAUTHORIZED);
        assert_eq!(auth.check(Some("Bearer wrong-api-token-012345")).unwrap_err().0, StatusCode::FORBIDDEN);
        assert!(auth.check(Some("Bearer old-api-token-0123456789")).is_ok());
        assert!(auth.check(Some("Bearer new-api-token-0123456789")).is_ok());
        assert!(ApiAuth::new(None).unwrap().check(None).is_ok(), "no token file: open");
        use secrecy::ExposeSecret;
        assert_eq!(client_token(Some(&f)).unwrap().unwrap().expose_secret(), "old-api-token-0123456789");
    }
}
