//! Between replicas: every replica ingests, but only the leader detects and acts — so a follower
//! relays to the leader what it needs about the agents connected to the follower, and carries
//! the leader's commands to them. Over the replicas' HTTP APIs (the addresses they publish with
//! `--advertise-url`), authenticated with the API token like every other mutating call:
//!
//! - `POST /internal/v1/relay` (to the leader): the batches a follower stored, as the same
//!   protobuf messages agents send — for each batch a `Hello` naming its node and labels, then
//!   the `Batch` — length-delimited. They feed the leader's detection (never stored again).
//!   Detection tolerates loss: what cannot be relayed at once is dropped and counted.
//! - `POST /internal/v1/presence` (to the leader): which agents are connected to the follower.
//!   The leader registers them as reachable through it, so commands find them.
//! - `POST /internal/v1/command?node=N` (to the follower): a `Command` for one of its agents;
//!   answered with the agent's `CommandResult`.

use super::Leadership;
use crate::detect::engine::{EngineHandle, StoredBatch};
use crate::ingest::nodes::NodeTable;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use medic_proto::v1::{AgentMessage, Command, CommandResult, Hello, Label, agent_message};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use prost::Message;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Batches waiting to be relayed; beyond this they are dropped (counted).
const QUEUE: usize = 4096;
/// Most bytes in one relay request.
const MAX_BODY: usize = 8 << 20;
/// A follower that has not reported its agents for this long has lost them.
const PRESENCE_TTL: Duration = Duration::from_secs(10);
const PRESENCE_EVERY: Duration = Duration::from_secs(2);
/// On a relay request: the follower's HTTP API, where its agents are reached.
const REPLICA: &str = "x-medic-replica";

#[derive(Clone)]
pub struct Relay {
    leadership: Leadership,
    nodes: NodeTable,
    engine: Option<EngineHandle>,
    token: Option<Arc<SecretString>>,
    /// This replica's HTTP API, as the leader reaches it.
    advertise: String,
    http: reqwest::Client,
    tx: mpsc::Sender<StoredBatch>,
    rx: Arc<Mutex<Option<mpsc::Receiver<StoredBatch>>>>,
    /// On the leader: agents reachable through followers, by node.
    remote: Arc<Mutex<HashMap<String, Remote>>>,
    relayed: Counter,
    dropped: Counter,
}

struct Remote {
    follower: String,
    session: u64,
    seen: Instant,
}

#[derive(Serialize, Deserialize)]
struct Presence {
    /// The follower's HTTP API.
    url: String,
    nodes: Vec<String>,
}

#[derive(Deserialize)]
struct NodeParam {
    node: String,
}

fn encode(b: &StoredBatch, out: &mut Vec<u8>) {
    let hello = AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            node: b.node.clone(),
            labels: b.labels.iter().map(|(n, v)| Label::new(n.clone(), v.clone())).collect(),
            ..Default::default()
        })),
    };
    let batch = AgentMessage { msg: Some(agent_message::Msg::Batch((*b.batch).clone())) };
    // Encoding into a Vec cannot fail.
    let _ = hello.encode_length_delimited(out);
    let _ = batch.encode_length_delimited(out);
}

fn decode(mut body: &[u8]) -> Result<Vec<StoredBatch>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let hello = AgentMessage::decode_length_delimited(&mut body).map_err(|e| e.to_string())?;
        let batch = AgentMessage::decode_length_delimited(&mut body).map_err(|e| e.to_string())?;
        match (hello.msg, batch.msg) {
            (Some(agent_message::Msg::Hello(h)), Some(agent_message::Msg::Batch(b))) => out.push(StoredBatch {
                node: h.node,
                labels: h.labels.into_iter().map(|l| (l.name, l.value)).collect(),
                batch: Arc::new(b),
            }),
            _ => return Err("expected a Hello and a Batch for every relayed batch".into()),
        }
    }
    Ok(out)
}

fn status(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

impl Relay {
    pub fn new(leadership: Leadership, nodes: NodeTable, token: Option<SecretString>, advertise: String) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(150)).build().unwrap_or_default();
        Self {
            leadership,
            nodes,
            engine: None,
            token: token.map(Arc::new),
            advertise,
            http,
            tx,
            rx: Arc::new(Mutex::new(Some(rx))),
            remote: Arc::default(),
            relayed: Counter::default(),
            dropped: Counter::default(),
        }
    }

    /// Where relayed batches go on the leader.
    pub fn with_engine(mut self, engine: EngineHandle) -> Self {
        self.engine = Some(engine);
        self
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "medic_relay_batches",
            "Stored batches a follower passed on to the leader's detection",
            self.relayed.clone(),
        );
        r.register(
            "medic_relay_batches_dropped",
            "Stored batches a follower could not pass on to the leader's detection (no leader, queue full, leader unreachable)",
            self.dropped.clone(),
        );
    }

    /// A batch this follower stored, for the leader's detection. Never blocks ingest.
    pub fn forward(&self, b: StoredBatch) {
        if self.tx.try_send(b).is_err() {
            self.dropped.inc();
        }
    }

    fn request(&self, url: String) -> reqwest::RequestBuilder {
        let mut r = self.http.post(url);
        if let Some(t) = &self.token {
            r = r.bearer_auth(t.expose_secret());
        }
        r
    }

    /// The leader's HTTP API, when another replica leads.
    fn leader(&self) -> Option<String> {
        if self.leadership.is_leader() {
            return None;
        }
        self.leadership.view().leader_url.filter(|u| *u != self.advertise)
    }

    /// Follower side: relays stored batches and reports connected agents, while following.
    pub async fn run(self) {
        let Some(mut rx) = self.rx.lock().ok().and_then(|mut g| g.take()) else { return };
        let mut presence = tokio::time::interval(PRESENCE_EVERY);
        let mut buf = Vec::new();
        loop {
            let first = tokio::select! {
                b = rx.recv() => match b { Some(b) => Some(b), None => return },
                _ = presence.tick() => None,
            };
            let Some(first) = first else {
                self.report_presence().await;
                continue;
            };
            let mut n = 1;
            buf.clear();
            encode(&first, &mut buf);
            while buf.len() < MAX_BODY {
                match rx.try_recv() {
                    Ok(b) => {
                        encode(&b, &mut buf);
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            let Some(leader) = self.leader() else {
                self.dropped.inc_by(n);
                continue;
            };
            let sent = self
                .request(format!("{}/internal/v1/relay", leader.trim_end_matches('/')))
                .header(header::CONTENT_TYPE, "application/x-protobuf")
                .header(REPLICA, self.advertise.as_str())
                .body(buf.clone())
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .and_then(|r| r.error_for_status());
            match sent {
                Ok(_) => {
                    self.relayed.inc_by(n);
                }
                Err(e) => {
                    self.dropped.inc_by(n);
                    tracing::warn!(leader = %leader, error = %e, batches = n, "cannot relay stored batches to the leader's detection");
                }
            }
        }
    }

    async fn report_presence(&self) {
        let Some(leader) = self.leader() else { return };
        let body = Presence { url: self.advertise.clone(), nodes: self.nodes.connected_nodes() };
        let sent = self
            .request(format!("{}/internal/v1/presence", leader.trim_end_matches('/')))
            .json(&body)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .and_then(|r| r.error_for_status());
        if let Err(e) = sent {
            tracing::warn!(leader = %leader, error = %e, "cannot tell the leader which agents are connected here");
        }
    }

    /// Leader side: an agent reachable through `follower`. Commands for it go there.
    fn adopt(&self, node: &str, follower: &str) {
        let mut remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.nodes.session_id(node);
        if let Some(r) = remote.get_mut(node)
            && current == Some(r.session)
            && r.follower == follower
        {
            r.seen = Instant::now();
            return;
        }
        if current.is_some() && remote.get(node).is_none_or(|r| Some(r.session) != current) {
            // Connected to this replica itself: that stream wins.
            return;
        }
        let (tx, mut rx) = mpsc::channel::<Result<medic_proto::v1::ControllerMessage, tonic::Status>>(64);
        let (session, _kicked) = self.nodes.connect(node, tx, chrono::Utc::now().timestamp_millis());
        remote.insert(node.to_string(), Remote { follower: follower.to_string(), session, seen: Instant::now() });
        tracing::info!(node, follower, "agent reachable through a follower");
        let (me, node, follower) = (self.clone(), node.to_string(), follower.to_string());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = rx.recv().await {
                let Some(medic_proto::v1::controller_message::Msg::Command(cmd)) = msg.msg else { continue };
                let (me, node, follower) = (me.clone(), node.clone(), follower.clone());
                tokio::spawn(async move {
                    let result = me.command_at(&follower, &node, &cmd).await.unwrap_or_else(|e| CommandResult {
                        id: cmd.id.clone(),
                        status: medic_proto::v1::CommandStatus::Failed as i32,
                        message: format!("relaying the command to {node} through {follower} failed: {e}"),
                        finished_unix_ms: chrono::Utc::now().timestamp_millis(),
                    });
                    me.nodes.command_done(result);
                });
            }
        });
    }

    async fn command_at(&self, follower: &str, node: &str, cmd: &Command) -> Result<CommandResult, String> {
        let resp = self
            .request(format!("{}/internal/v1/command", follower.trim_end_matches('/')))
            .query(&[("node", node)])
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(cmd.encode_to_vec())
            .timeout(Duration::from_millis(u64::from(cmd.timeout_ms)) + Duration::from_secs(20))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        CommandResult::decode(body.as_ref()).map_err(|e| e.to_string())
    }

    /// A replica that stopped leading forgets the agents it reached through followers.
    pub fn forget_remote(&self) {
        let mut remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
        for (node, r) in remote.drain() {
            self.nodes.disconnect(&node, r.session);
        }
    }

    fn expire(&self) {
        let mut remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
        remote.retain(|node, r| {
            let keep = r.seen.elapsed() < PRESENCE_TTL;
            if !keep {
                self.nodes.disconnect(node, r.session);
            }
            keep
        });
    }

    /// The internal routes, on every replica.
    pub fn router(self) -> Router {
        Router::new()
            .route("/internal/v1/relay", post(relay))
            .route("/internal/v1/presence", post(presence))
            .route("/internal/v1/command", post(command))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY + (1 << 20)))
            .with_state(self)
    }
}

async fn relay(State(r): State<Relay>, headers: axum::http::HeaderMap, body: Bytes) -> Response {
    if !r.leadership.is_leader() {
        return status(StatusCode::MISDIRECTED_REQUEST, "this replica is not the leader");
    }
    match decode(&body) {
        Ok(batches) => {
            // The agents are reachable through the follower before their data can make a rule
            // fire here.
            if let Some(follower) = headers.get(REPLICA).and_then(|v| v.to_str().ok()) {
                let mut seen = std::collections::HashSet::new();
                for b in &batches {
                    if seen.insert(b.node.as_str()) {
                        r.adopt(&b.node, follower);
                    }
                }
            }
            if let Some(engine) = &r.engine {
                for b in batches {
                    engine.submit(b);
                }
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => status(StatusCode::BAD_REQUEST, format!("undecodable relay body: {e}")),
    }
}

async fn presence(State(r): State<Relay>, Json(p): Json<Presence>) -> Response {
    if !r.leadership.is_leader() {
        return status(StatusCode::MISDIRECTED_REQUEST, "this replica is not the leader");
    }
    for node in &p.nodes {
        r.adopt(node, &p.url);
    }
    // Agents the follower no longer has, and followers that went quiet.
    {
        let mut remote = r.remote.lock().unwrap_or_else(|p| p.into_inner());
        remote.retain(|node, rem| {
            let gone = rem.follower == p.url && !p.nodes.contains(node);
            if gone {
                r.nodes.disconnect(node, rem.session);
            }
            !gone
        });
    }
    r.expire();
    StatusCode::NO_CONTENT.into_response()
}

async fn command(State(r): State<Relay>, Query(q): Query<NodeParam>, body: Bytes) -> Response {
    let cmd = match Command::decode(body.as_ref()) {
        Ok(c) => c,
        Err(e) => return status(StatusCode::BAD_REQUEST, format!("undecodable command: {e}")),
    };
    let timeout = Duration::from_millis(u64::from(cmd.timeout_ms)) + Duration::from_secs(10);
    let rx = match r.nodes.send_command(&q.node, cmd) {
        Ok(rx) => rx,
        Err(e) => return status(StatusCode::NOT_FOUND, e),
    };
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(result)) => ([(header::CONTENT_TYPE, "application/x-protobuf")], result.encode_to_vec()).into_response(),
        Ok(Err(_)) => status(StatusCode::BAD_GATEWAY, format!("{}'s stream closed before it answered", q.node)),
        Err(_) => status(StatusCode::GATEWAY_TIMEOUT, format!("{} did not answer in time", q.node)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_batches_decode_to_what_was_encoded() {
        let b = |node: &str, seq| StoredBatch {
            node: node.into(),
            labels: vec![("role".into(), "clickhouse".into())],
            batch: Arc::new(medic_proto::v1::Batch { seq, ..Default::default() }),
        };
        let mut buf = Vec::new();
        encode(&b("n1", 7), &mut buf);
        encode(&b("n2", 8), &mut buf);
        let back = decode(&buf).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!((back[1].node.as_str(), back[1].batch.seq), ("n2", 8));
        assert_eq!(back[0].labels, vec![("role".to_string(), "clickhouse".to_string())]);
        assert!(decode(&buf[..buf.len() - 1]).is_err(), "a cut body is refused");
    }
}
