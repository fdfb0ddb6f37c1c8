//! Shared view of the fleet: stored delivery state (owned by the writer) plus live connection
//! state (owned by the sessions). The API reads it.

use crate::store::NodeRecord;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::writer::Outbound;

#[derive(Default)]
struct Inner {
    records: HashMap<String, NodeRecord>,
    sessions: HashMap<String, Session>,
    store_error: Option<String>,
    next_session: u64,
    /// Commands sent to agents, waiting for their result.
    pending: HashMap<String, tokio::sync::oneshot::Sender<medic_proto::v1::CommandResult>>,
}

struct Session {
    id: u64,
    connected_since_ms: i64,
    last_seen_ms: i64,
    outbound: Outbound,
    /// Dropping this ends the session's read loop (a newer connection replaced it).
    _kick: tokio::sync::oneshot::Sender<()>,
}

#[derive(Clone, Default)]
pub struct NodeTable {
    inner: Arc<Mutex<Inner>>,
}

/// One row of `GET /api/v1/nodes`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub connected: bool,
    pub last_seen: Option<String>,
    pub connected_since: Option<String>,
    pub batches: u64,
    pub last_seq: u64,
    pub seq_gaps: u64,
    pub duplicates: u64,
    pub samples: u64,
    pub log_records: u64,
    pub spool_id: String,
    pub agent_version: String,
    pub labels: std::collections::BTreeMap<String, String>,
}

fn rfc3339(ms: i64) -> Option<String> {
    (ms > 0).then(|| chrono::DateTime::from_timestamp_millis(ms).map(|d| d.to_rfc3339()))?
}

impl NodeTable {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that
        // matters more than losing the whole view, so recover the guard instead of propagating.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn load(&self, records: Vec<NodeRecord>) {
        let mut g = self.lock();
        for r in records {
            g.records.insert(r.node.clone(), r);
        }
    }

    pub fn record_or_new(&self, node: &str, now_ms: i64) -> NodeRecord {
        self.lock().records.get(node).cloned().unwrap_or_else(|| NodeRecord {
            node: node.to_string(),
            first_seen_ms: now_ms,
            ..Default::default()
        })
    }

    pub fn update(&self, records: impl IntoIterator<Item = NodeRecord>) {
        let mut g = self.lock();
        g.store_error = None;
        for r in records {
            g.records.insert(r.node.clone(), r);
        }
    }

    pub fn set_store_error(&self, e: Option<String>) {
        self.lock().store_error = e;
    }

    pub fn store_error(&self) -> Option<String> {
        self.lock().store_error.clone()
    }

    /// Registers a new session for `node`, replacing (and kicking) any older one.
    /// Returns the session id and a receiver that fires when this session is replaced.
    pub fn connect(&self, node: &str, outbound: Outbound, now_ms: i64) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        let (kick, kicked) = tokio::sync::oneshot::channel();
        let mut g = self.lock();
        g.next_session += 1;
        let id = g.next_session;
        let old = g.sessions.insert(
            node.to_string(),
            Session { id, connected_since_ms: now_ms, last_seen_ms: now_ms, outbound, _kick: kick },
        );
        if old.is_some() {
            tracing::info!(node, "a new connection replaces the node's previous stream");
        }
        (id, kicked)
    }

    /// Ends every agent stream (at shutdown: agents reconnect elsewhere or later and replay
    /// whatever was not acked).
    pub fn disconnect_all(&self) {
        self.lock().sessions.clear();
    }

    pub fn disconnect(&self, node: &str, session: u64) {
        let mut g = self.lock();
        if g.sessions.get(node).is_some_and(|s| s.id == session) {
            g.sessions.remove(node);
        }
    }

    pub fn touch(&self, node: &str, session: u64, now_ms: i64) {
        if let Some(s) = self.lock().sessions.get_mut(node).filter(|s| s.id == session) {
            s.last_seen_ms = now_ms;
        }
    }

    /// Nodes with an open stream, by name.
    pub fn connected_nodes(&self) -> Vec<String> {
        self.lock().sessions.keys().cloned().collect()
    }

    /// The id of the node's current session, if connected.
    pub fn session_id(&self, node: &str) -> Option<u64> {
        self.lock().sessions.get(node).map(|s| s.id)
    }

    pub fn connected_count(&self) -> usize {
        self.lock().sessions.len()
    }

    /// The outbound stream of a connected node, for commands.
    pub fn outbound(&self, node: &str) -> Option<Outbound> {
        self.lock().sessions.get(node).map(|s| s.outbound.clone())
    }

    /// Sends a command to a connected node; the receiver gets the agent's result.
    pub fn send_command(
        &self,
        node: &str,
        cmd: medic_proto::v1::Command,
    ) -> Result<tokio::sync::oneshot::Receiver<medic_proto::v1::CommandResult>, String> {
        use medic_proto::v1::{ControllerMessage, controller_message::Msg};
        let mut g = self.lock();
        let out = g.sessions.get(node).map(|s| s.outbound.clone()).ok_or_else(|| format!("{node} is not connected"))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id = cmd.id.clone();
        out.try_send(Ok(ControllerMessage { msg: Some(Msg::Command(cmd)) }))
            .map_err(|e| format!("cannot queue the command for {node}: {e}"))?;
        g.pending.insert(id, tx);
        Ok(rx)
    }

    /// An agent answered a command.
    pub fn command_done(&self, r: medic_proto::v1::CommandResult) {
        if let Some(tx) = self.lock().pending.remove(&r.id) {
            let _ = tx.send(r);
        } else {
            tracing::warn!(command = %r.id, "result for a command nobody waits for (timed out, or sent before a restart)");
        }
    }

    pub fn status(&self) -> Vec<NodeStatus> {
        let g = self.lock();
        let mut names: Vec<&String> = g.records.keys().chain(g.sessions.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let rec = g.records.get(name).cloned().unwrap_or_default();
                let sess = g.sessions.get(name);
                let last_seen = sess.map(|s| s.last_seen_ms).unwrap_or(0).max(rec.last_seen_ms);
                NodeStatus {
                    node: name.clone(),
                    connected: sess.is_some(),
                    last_seen: rfc3339(last_seen),
                    connected_since: sess.and_then(|s| rfc3339(s.connected_since_ms)),
                    batches: rec.batches,
                    last_seq: rec.last_seq,
                    seq_gaps: rec.seq_gaps,
                    duplicates: rec.duplicates,
                    samples: rec.samples,
                    log_records: rec.log_records,
                    spool_id: rec.spool_id,
                    agent_version: rec.agent_version,
                    labels: rec.labels.into_iter().collect(),
                }
            })
            .collect()
    }
}
