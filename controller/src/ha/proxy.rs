//! On a follower, the API calls only the leader can answer — the remediation audit and
//! approvals, and what detection found — are passed on to the leader (whose HTTP URL it
//! published on the lease), so any replica behind a Service answers them. Everything else
//! (nodes, series, logs, rules, /healthz, /metrics) each replica answers itself.

use super::Leadership;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// Set on a passed-on request, so it is never passed on twice.
const FORWARDED: &str = "x-medic-forwarded-by";

#[derive(Clone)]
pub struct LeaderProxy {
    pub leadership: Leadership,
    pub http: reqwest::Client,
}

impl LeaderProxy {
    pub fn new(leadership: Leadership) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap_or_default();
        Self { leadership, http }
    }
}

/// Whether only the leader knows the answer.
pub fn leader_only(path: &str) -> bool {
    path == "/api/v1/actions"
        || (path.starts_with("/api/v1/actions/") && path.ends_with("/approve"))
        || (path.starts_with("/api/v1/rules/") && path.ends_with("/reenable"))
        || matches!(
            path,
            "/api/v1/anomalies"
                | "/api/v1/forecasts"
                | "/api/v1/outliers"
                | "/api/v1/changepoints"
                | "/api/v1/conditions"
        )
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

pub async fn to_leader(State(p): State<LeaderProxy>, req: Request, next: Next) -> Response {
    if !leader_only(req.uri().path()) || p.leadership.is_leader() || req.headers().contains_key(FORWARDED) {
        return next.run(req).await;
    }
    let view = p.leadership.view();
    let Some(base) = view.leader_url else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no leader is known yet (the election is under way); retry in a few seconds".into(),
        );
    };
    let target =
        format!("{}{}", base.trim_end_matches('/'), req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, 1 << 20).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("reading the request: {e}")),
    };
    let mut out = p.http.request(parts.method.clone(), &target).header(FORWARDED, view.identity.as_str()).body(body);
    for h in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(v) = parts.headers.get(&h) {
            out = out.header(h, v);
        }
    }
    match out.send().await {
        Ok(resp) => {
            let status = resp.status();
            let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
            match resp.bytes().await {
                Ok(bytes) => {
                    let mut r = Response::new(Body::from(bytes));
                    *r.status_mut() = status;
                    if let Some(ct) = content_type {
                        r.headers_mut().insert(header::CONTENT_TYPE, ct);
                    }
                    if let Ok(v) = HeaderValue::from_str(view.holder.as_deref().unwrap_or("")) {
                        r.headers_mut().insert("x-medic-answered-by", v);
                    }
                    r
                }
                Err(e) => error(StatusCode::BAD_GATEWAY, format!("the leader at {base} broke off its answer: {e}")),
            }
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("the leader at {base} did not answer: {e}")),
    }
}
