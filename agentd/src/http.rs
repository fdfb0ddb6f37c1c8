//! /healthz and /metrics.

use crate::telemetry::AgentMetrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;

pub fn router(metrics: Arc<AgentMetrics>) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics_handler)).with_state(metrics)
}

/// The agent is healthy while it can spool: being disconnected from the controller is normal
/// (it buffers), so it does not fail the probe — restarting the agent would not help.
async fn healthz(State(m): State<Arc<AgentMetrics>>) -> Response {
    let body = serde_json::json!({
        "status": "ok",
        "connected": m.connected.get() == 1,
        "spool_batches": m.spool_batches.get(),
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn metrics_handler(State(m): State<Arc<AgentMetrics>>) -> Response {
    match m.encode() {
        Ok(body) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed").into_response(),
    }
}
