//! HTTP: /healthz, /metrics (OpenMetrics) and the JSON API under /api/v1.

use crate::decide::audit::AuditEntry;
use crate::decide::runner::Remediation;
use crate::detect::engine::{AnomalyView, ChangepointView, DetectionState, ForecastView, OutlierView};
use crate::ingest::nodes::NodeTable;
use crate::rules::watch::ActiveRules;
use crate::store::{LogQuery, SeriesQuery, Store, StoreError};
use crate::telemetry::Metrics;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub nodes: NodeTable,
    pub metrics: Arc<Metrics>,
    pub detection: Arc<std::sync::RwLock<DetectionState>>,
    pub rules: Option<ActiveRules>,
    pub remediation: Remediation,
    pub leadership: crate::ha::Leadership,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/metrics", get(metric_names))
        .route("/api/v1/series", get(series))
        .route("/api/v1/logs", get(logs))
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/actions", get(actions))
        .route("/api/v1/conditions", get(conditions))
        .route("/api/v1/actions/{id}/approve", axum::routing::post(approve))
        .route("/api/v1/rules/{name}/reenable", axum::routing::post(reenable))
        .route("/api/v1/anomalies", get(anomalies))
        .route("/api/v1/anomalies/open", get(open_anomalies))
        .route("/api/v1/forecasts", get(forecasts))
        .route("/api/v1/outliers", get(outliers))
        .route("/api/v1/changepoints", get(changepoints))
        .with_state(state)
}

/// An API error as JSON: `{"error": "..."}` with a fitting status code.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BadQuery(m) => ApiError(StatusCode::BAD_REQUEST, m),
            StoreError::Unavailable(m) => ApiError(StatusCode::SERVICE_UNAVAILABLE, m),
            other => ApiError(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// How long /healthz waits for the store: a hung store must turn the probe into a 503 with the
/// reason, not into a probe that times out.
pub const HEALTH_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

async fn healthz(State(s): State<ApiState>) -> Response {
    let store_error = match tokio::time::timeout(HEALTH_PING_TIMEOUT, s.store.ping()).await {
        Err(_) => Some(format!("the {} store did not answer within {HEALTH_PING_TIMEOUT:?}", s.store.kind())),
        Ok(Err(e)) => Some(e.to_string()),
        Ok(Ok(())) => s.nodes.store_error(),
    };
    // A follower is healthy: it ingests. Leadership is information, not health.
    let leadership = s.leadership.view();
    match store_error {
        None => (
            StatusCode::OK,
            Json(serde_json::json!({"status": "ok", "store": s.store.kind(), "leadership": leadership})),
        )
            .into_response(),
        Some(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({"status": "degraded", "store": s.store.kind(), "error": e, "leadership": leadership}),
            ),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    match s.metrics.encode() {
        Ok(body) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed").into_response(),
    }
}

async fn nodes(State(s): State<ApiState>) -> impl IntoResponse {
    Json(s.nodes.status())
}

#[derive(Deserialize)]
struct NodeParam {
    node: Option<String>,
}

async fn metric_names(State(s): State<ApiState>, Query(q): Query<NodeParam>) -> Result<Json<Vec<String>>, ApiError> {
    let node = q.node.ok_or_else(|| bad("missing query parameter: node"))?;
    Ok(Json(s.store.metric_names(&node).await?))
}

/// Accepts RFC 3339 (`2026-11-24T06:00:00Z`) or Unix milliseconds.
fn parse_time(name: &str, v: Option<&str>, default: i64) -> Result<i64, ApiError> {
    let Some(v) = v else { return Ok(default) };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|d| d.timestamp_millis())
        .map_err(|e| bad(format!("{name}={v:?} is not an RFC 3339 time or Unix milliseconds: {e}")))
}

#[derive(Deserialize)]
struct SeriesParams {
    node: Option<String>,
    metric: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct PointOut {
    metric: String,
    labels: std::collections::BTreeMap<String, String>,
    timestamp: String,
    timestamp_ms: i64,
    value: f64,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|d| d.to_rfc3339()).unwrap_or_default()
}

const MAX_POINTS: usize = 1_000_000;

async fn series(State(s): State<ApiState>, Query(q): Query<SeriesParams>) -> Result<Json<Vec<PointOut>>, ApiError> {
    let now = chrono::Utc::now().timestamp_millis();
    let query = SeriesQuery {
        node: q.node.ok_or_else(|| bad("missing query parameter: node"))?,
        metric: q.metric.ok_or_else(|| bad("missing query parameter: metric"))?,
        from_ms: parse_time("from", q.from.as_deref(), now - 3_600_000)?,
        to_ms: parse_time("to", q.to.as_deref(), now)?,
        limit: q.limit.unwrap_or(100_000).min(MAX_POINTS),
    };
    if query.from_ms > query.to_ms {
        return Err(bad("from must not be after to"));
    }
    let points = s.store.series(&query).await?;
    Ok(Json(
        points
            .into_iter()
            .map(|p| PointOut {
                timestamp: rfc3339(p.timestamp_ms),
                metric: p.metric,
                labels: p.labels,
                timestamp_ms: p.timestamp_ms,
                value: p.value,
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
struct LogParams {
    node: Option<String>,
    level: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct LogOut {
    node: String,
    seq: u64,
    timestamp: String,
    timestamp_ms: i64,
    source: String,
    level: String,
    message: String,
    fields: std::collections::BTreeMap<String, String>,
}

/// Level names as users type them; ClickHouse's names are accepted too.
pub fn parse_level(s: &str) -> Option<i32> {
    use medic_proto::v1::LogLevel as L;
    let l = match s.to_ascii_lowercase().as_str() {
        "trace" => L::Trace,
        "debug" => L::Debug,
        "info" | "information" => L::Info,
        "notice" => L::Notice,
        "warn" | "warning" => L::Warning,
        "error" | "err" => L::Error,
        "critical" | "crit" => L::Critical,
        "fatal" => L::Fatal,
        _ => return None,
    };
    Some(l as i32)
}

pub fn level_name(l: i32) -> &'static str {
    use medic_proto::v1::LogLevel as L;
    match L::try_from(l).unwrap_or(L::Unspecified) {
        L::Unspecified => "unknown",
        L::Trace => "trace",
        L::Debug => "debug",
        L::Info => "info",
        L::Notice => "notice",
        L::Warning => "warning",
        L::Error => "error",
        L::Critical => "critical",
        L::Fatal => "fatal",
    }
}

async fn logs(State(s): State<ApiState>, Query(q): Query<LogParams>) -> Result<Json<Vec<LogOut>>, ApiError> {
    let now = chrono::Utc::now().timestamp_millis();
    let min_level = match q.level.as_deref() {
        None | Some("") => None,
        Some(l) => Some(parse_level(l).ok_or_else(|| {
            bad(format!("unknown level {l:?}; use trace, debug, info, notice, warning, error, critical or fatal"))
        })?),
    };
    let query = LogQuery {
        node: q.node.ok_or_else(|| bad("missing query parameter: node"))?,
        min_level,
        from_ms: parse_time("from", q.from.as_deref(), 0)?,
        to_ms: parse_time("to", q.to.as_deref(), now + 3_600_000)?,
        limit: q.limit.unwrap_or(100).min(10_000),
    };
    let logs = s.store.logs(&query).await?;
    Ok(Json(
        logs.into_iter()
            .map(|l| LogOut {
                node: l.node,
                seq: l.seq,
                timestamp: rfc3339(l.record.timestamp_ms),
                timestamp_ms: l.record.timestamp_ms,
                source: l.record.source,
                level: level_name(l.record.level).to_string(),
                message: l.record.message,
                fields: l.record.fields.into_iter().map(|f| (f.name, f.value)).collect(),
            })
            .collect(),
    ))
}

fn detection(s: &ApiState) -> Result<std::sync::RwLockReadGuard<'_, DetectionState>, ApiError> {
    s.detection.read().map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "detection state unavailable".into()))
}

/// Latest time-to-exhaustion forecast of every watched resource, soonest first.
async fn forecasts(State(s): State<ApiState>, Query(q): Query<NodeParam>) -> Result<Json<Vec<ForecastView>>, ApiError> {
    let st = detection(&s)?;
    let mut v: Vec<ForecastView> =
        st.forecasts.values().filter(|f| q.node.as_ref().is_none_or(|n| *n == f.node)).cloned().collect();
    v.sort_by(|a, b| {
        let key = |f: &ForecastView| f.pessimistic_seconds.or(f.exhaustion_seconds).unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b))
    });
    Ok(Json(v))
}

/// Nodes that currently differ from the peers of their role, with the metrics that differ.
async fn outliers(State(s): State<ApiState>) -> Result<Json<Vec<OutlierView>>, ApiError> {
    Ok(Json(detection(&s)?.outliers.clone()))
}

/// Recent changepoints, newest first.
async fn changepoints(
    State(s): State<ApiState>,
    Query(q): Query<NodeParam>,
) -> Result<Json<Vec<ChangepointView>>, ApiError> {
    let st = detection(&s)?;
    Ok(Json(st.changepoints.iter().rev().filter(|c| q.node.as_ref().is_none_or(|n| *n == c.node)).cloned().collect()))
}

/// The active rules (name, file:line, description) and the errors of a rejected reload.
async fn rules(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let Some(active) = &s.rules else {
        return Json(serde_json::json!({"rules_dir": null, "rules": [], "errors": []}));
    };
    let set = active.get();
    let failing = s.remediation.failing_rules();
    let rules: Vec<serde_json::Value> = set
        .rules
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.rule.name,
                "description": r.rule.description,
                "file": format!("{}:{}", r.file.display(), r.line),
                "dry_run": r.rule.guards.dry_run,
                "failing": failing.contains(&r.rule.name),
            })
        })
        .collect();
    Json(serde_json::json!({"rules": rules, "errors": active.last_errors()}))
}

#[derive(Deserialize)]
struct ActionParams {
    rule: Option<String>,
    limit: Option<usize>,
}

/// The audit log, newest first: every decision (acted, skipped and by which guard, dry-run,
/// waiting for approval, approved, verified, rolled back, escalated) with its evidence.
/// Rule conditions that hold now, pending (not yet held for `for`) or firing.
async fn conditions(State(s): State<ApiState>) -> Json<Vec<crate::decide::runner::ConditionView>> {
    Json(s.remediation.conditions.lock().map(|c| c.clone()).unwrap_or_default())
}

async fn actions(State(s): State<ApiState>, Query(q): Query<ActionParams>) -> Json<Vec<AuditEntry>> {
    Json(s.remediation.audit.list(q.rule.as_deref(), q.limit.unwrap_or(200).min(10_000)))
}

/// Releases an action that waits for approval.
async fn approve(
    State(s): State<ApiState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if s.remediation.approve(&id) {
        Ok(Json(serde_json::json!({"approved": id, "note": "it runs at the next remediation round"})))
    } else {
        Err(ApiError(StatusCode::NOT_FOUND, format!("no action {id} is waiting for approval")))
    }
}

/// Lets a rule that stopped after a failed verification act again.
async fn reenable(
    State(s): State<ApiState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if s.remediation.reenable(&name) {
        Ok(Json(serde_json::json!({"reenabled": name, "note": "it acts again from the next remediation round"})))
    } else {
        Err(ApiError(StatusCode::NOT_FOUND, format!("rule {name} is not stopped (GET /api/v1/rules shows which are)")))
    }
}

#[derive(Deserialize)]
struct AnomalyParams {
    node: Option<String>,
    metric: Option<String>,
    limit: Option<usize>,
}

/// Recent anomaly alerts (score ≥ 0.5), newest first, each with what was observed, what was
/// expected, and the evidence that fired.
/// Anomalies still going on: series that scored as an anomaly and have not come back near their
/// baseline since, longest first.
async fn open_anomalies(
    State(s): State<ApiState>,
    Query(q): Query<AnomalyParams>,
) -> Result<Json<Vec<crate::detect::engine::EpisodeView>>, ApiError> {
    let st = detection(&s)?;
    let mut open: Vec<_> = st
        .episodes
        .values()
        .filter(|a| q.node.as_ref().is_none_or(|n| *n == a.node) && q.metric.as_ref().is_none_or(|m| *m == a.metric))
        .cloned()
        .collect();
    open.sort_by_key(|e| e.since_ms);
    open.truncate(q.limit.unwrap_or(100).min(10_000));
    Ok(Json(open))
}

async fn anomalies(
    State(s): State<ApiState>,
    Query(q): Query<AnomalyParams>,
) -> Result<Json<Vec<AnomalyView>>, ApiError> {
    let st = detection(&s)?;
    Ok(Json(
        st.anomalies
            .iter()
            .rev()
            .filter(|a| {
                q.node.as_ref().is_none_or(|n| *n == a.node) && q.metric.as_ref().is_none_or(|m| *m == a.metric)
            })
            .take(q.limit.unwrap_or(100).min(10_000))
            .cloned()
            .collect(),
    ))
}
