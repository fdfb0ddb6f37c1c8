//! A stand-in for the Kubernetes API server's Lease endpoints (coordination.k8s.io/v1), on a
//! loopback port, for end-to-end tests of leader election between real controller processes:
//! GET, create and replace of leases with the API server's optimistic concurrency (a replace
//! whose resourceVersion is not the current one is answered 409 Conflict, a create of an
//! existing lease 409 AlreadyExists). The API server itself cannot run here.

use anyhow::Result;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Leases = Arc<Mutex<HashMap<(String, String), Value>>>;

pub struct FakeKubeApi {
    pub port: u16,
    leases: Leases,
    task: tokio::task::JoinHandle<()>,
}

fn status(code: StatusCode, reason: &str, message: String) -> (StatusCode, Json<Value>) {
    (
        code,
        Json(
            json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()}),
        ),
    )
}

fn version(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

async fn get_lease(State(l): State<Leases>, Path((ns, name)): Path<(String, String)>) -> (StatusCode, Json<Value>) {
    match l.lock().unwrap_or_else(|p| p.into_inner()).get(&(ns, name.clone())) {
        Some(v) => (StatusCode::OK, Json(v.clone())),
        None => status(StatusCode::NOT_FOUND, "NotFound", format!("leases \"{name}\" not found")),
    }
}

async fn create_lease(
    State(l): State<Leases>,
    Path(ns): Path<String>,
    Json(mut v): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let name = v["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let mut m = l.lock().unwrap_or_else(|p| p.into_inner());
    if m.contains_key(&(ns.clone(), name.clone())) {
        return status(StatusCode::CONFLICT, "AlreadyExists", format!("leases \"{name}\" already exists"));
    }
    v["metadata"]["resourceVersion"] = json!("1");
    v["metadata"]["namespace"] = json!(ns);
    m.insert((ns, name), v.clone());
    (StatusCode::CREATED, Json(v))
}

async fn replace_lease(
    State(l): State<Leases>,
    Path((ns, name)): Path<(String, String)>,
    Json(mut v): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mut m = l.lock().unwrap_or_else(|p| p.into_inner());
    let Some(current) = m.get(&(ns.clone(), name.clone())) else {
        return status(StatusCode::NOT_FOUND, "NotFound", format!("leases \"{name}\" not found"));
    };
    if version(&v) != version(current) {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!("Operation cannot be fulfilled on leases \"{name}\": the object has been modified"),
        );
    }
    v["metadata"]["resourceVersion"] = json!((version(current) + 1).to_string());
    m.insert((ns, name), v.clone());
    (StatusCode::OK, Json(v))
}

impl FakeKubeApi {
    pub async fn start() -> Result<Self> {
        let leases: Leases = Arc::default();
        let app = Router::new()
            .route("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", axum::routing::post(create_lease))
            .route("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}", get(get_lease).put(replace_lease))
            .with_state(leases.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { port, leases, task })
    }

    /// A kubeconfig pointing at this server, namespace `namespace`.
    pub fn kubeconfig(&self, dir: &std::path::Path, namespace: &str) -> Result<std::path::PathBuf> {
        let p = dir.join("kubeconfig");
        std::fs::write(
            &p,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{}\n\
                 contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: {namespace}\n\
                 current-context: test\nusers:\n- name: test\n  user: {{}}\n",
                self.port
            ),
        )?;
        Ok(p)
    }

    /// The lease's current holder.
    pub fn holder(&self, namespace: &str, name: &str) -> Option<String> {
        let m = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&(namespace.to_string(), name.to_string()))
            .and_then(|v| v["spec"]["holderIdentity"].as_str().map(str::to_string))
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}
