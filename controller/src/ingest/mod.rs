//! Ingest: the gRPC side of the agent stream. Each agent gets one session task that validates
//! what it sends and hands batches to the single [`writer`], which stores them durably and acks.

pub mod nodes;
pub mod writer;

use crate::telemetry::Metrics;
use medic_proto::v1::telemetry_server::{Telemetry, TelemetryServer};
use medic_proto::v1::{
    AgentMessage, ConfigHint, ControllerMessage, Hello, Welcome, agent_message, controller_message::Msg,
};
use medic_proto::{MIN_SUPPORTED_PROTOCOL_VERSION, PROTOCOL_VERSION};
use nodes::NodeTable;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use writer::Job;

#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Largest message an agent may send; larger ones end that agent's stream with an error.
    pub max_message_bytes: usize,
    /// How long a new stream may take to send its Hello.
    pub hello_timeout: Duration,
    /// Samples stamped further in the future than this are dropped (a broken agent clock).
    pub max_future_skew: Duration,
    /// Samples older than this are dropped: they would land in already-expired storage.
    pub max_age: Duration,
    /// Collection interval to ask agents for; None leaves each agent's own setting.
    pub interval_hint: Option<Duration>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 << 20,
            hello_timeout: Duration::from_secs(10),
            max_future_skew: Duration::from_secs(3600),
            max_age: Duration::from_secs(7 * 86400),
            interval_hint: None,
        }
    }
}

#[derive(Clone)]
pub struct IngestService {
    jobs: mpsc::Sender<Job>,
    nodes: NodeTable,
    metrics: Arc<Metrics>,
    opts: IngestOptions,
    controller_id: String,
    /// Who may speak for which node; None lets every agent in.
    auth: Option<crate::security::agents::AgentAuth>,
}

/// Node names end up in storage keys, metric labels and file names: keep them boring.
pub fn validate_node_name(node: &str) -> Result<(), String> {
    if node.is_empty() || node.len() > 253 {
        return Err(format!("node name must be 1 to 253 characters, got {}", node.len()));
    }
    if let Some(c) = node.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))) {
        return Err(format!("node name {node:?} contains {c:?}; use letters, digits, '.', '-' and '_'"));
    }
    Ok(())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl IngestService {
    pub fn new(jobs: mpsc::Sender<Job>, nodes: NodeTable, metrics: Arc<Metrics>, opts: IngestOptions) -> Self {
        Self { jobs, nodes, metrics, opts, controller_id: uuid::Uuid::new_v4().to_string(), auth: None }
    }

    /// Agents must prove which node they are (client certificate or token).
    pub fn with_auth(mut self, auth: crate::security::agents::AgentAuth) -> Self {
        self.auth = Some(auth);
        self
    }

    pub fn into_server(self) -> TelemetryServer<Self> {
        let max = self.opts.max_message_bytes;
        TelemetryServer::new(self).max_decoding_message_size(max).max_encoding_message_size(max)
    }

    fn refuse(&self, reason: &str, status: Status) -> Status {
        self.metrics.reject(&self.metrics.streams_rejected, reason);
        tracing::warn!(reason, message = status.message(), "refused an agent stream");
        status
    }

    fn check_hello(&self, hello: &Hello) -> Result<(), Status> {
        if hello.protocol_version < MIN_SUPPORTED_PROTOCOL_VERSION || hello.protocol_version > PROTOCOL_VERSION {
            return Err(self.refuse(
                "protocol_version",
                Status::failed_precondition(format!(
                    "agent speaks protocol version {}, this controller supports {}..={}; upgrade the older side",
                    hello.protocol_version, MIN_SUPPORTED_PROTOCOL_VERSION, PROTOCOL_VERSION
                )),
            ));
        }
        validate_node_name(&hello.node).map_err(|e| self.refuse("bad_hello", Status::invalid_argument(e)))?;
        if hello.spool_id.is_empty() || hello.spool_id.len() > 128 {
            return Err(self.refuse("bad_hello", Status::invalid_argument("hello.spool_id must be 1 to 128 bytes")));
        }
        Ok(())
    }

    /// Drops samples and log records that cannot be stored sensibly; returns how many went.
    fn sanitize(&self, batch: &mut medic_proto::v1::Batch) -> usize {
        let now = now_ms();
        let max_ts = now + self.opts.max_future_skew.as_millis() as i64;
        let min_ts = now - self.opts.max_age.as_millis() as i64;
        let before = batch.samples.len() + batch.logs.len();
        batch.samples.retain(|s| s.timestamp_ms >= min_ts && s.timestamp_ms <= max_ts && !s.metric.is_empty());
        batch.logs.retain(|l| l.timestamp_ms >= min_ts && l.timestamp_ms <= max_ts);
        let mut dropped = before - batch.samples.len() - batch.logs.len();
        batch.series.retain_mut(|s| {
            let n = s.timestamps_ms.len().max(s.values.len());
            if s.metric.is_empty() || s.timestamps_ms.len() != s.values.len() {
                // Points without a name, or values without their times: nothing to store.
                dropped += n;
                return false;
            }
            if s.timestamps_ms.iter().any(|t| *t < min_ts || *t > max_ts) {
                let (ts, vs): (Vec<i64>, Vec<f64>) = s
                    .timestamps_ms
                    .iter()
                    .copied()
                    .zip(s.values.iter().copied())
                    .filter(|(t, _)| *t >= min_ts && *t <= max_ts)
                    .unzip();
                dropped += n - ts.len();
                s.timestamps_ms = ts;
                s.values = vs;
            }
            !s.timestamps_ms.is_empty()
        });
        dropped
    }

    async fn session(
        self,
        node: String,
        spool_id: String,
        mut inbound: Streaming<AgentMessage>,
        outbound: writer::Outbound,
        session: u64,
        mut kicked: oneshot::Receiver<()>,
    ) {
        loop {
            let msg = tokio::select! {
                m = inbound.message() => m,
                _ = &mut kicked => {
                    let _ = outbound.try_send(Err(Status::aborted("replaced by a newer connection of the same node")));
                    break;
                }
            };
            let msg = match msg {
                Ok(Some(m)) => m,
                Ok(None) => {
                    tracing::info!("agent closed its stream");
                    break;
                }
                Err(status) => {
                    let reason = match status.code() {
                        tonic::Code::ResourceExhausted | tonic::Code::OutOfRange => "oversized",
                        tonic::Code::Internal | tonic::Code::InvalidArgument => "malformed",
                        _ => "stream_error",
                    };
                    self.metrics.reject(&self.metrics.streams_rejected, reason);
                    tracing::warn!(code = ?status.code(), message = status.message(), "agent stream ended with an error");
                    let _ = outbound.try_send(Err(status));
                    break;
                }
            };
            self.nodes.touch(&node, session, now_ms());
            match msg.msg {
                Some(agent_message::Msg::Batch(mut batch)) => {
                    if batch.seq == 0 {
                        self.metrics.reject(&self.metrics.streams_rejected, "malformed");
                        let _ = outbound.try_send(Err(Status::invalid_argument("batch.seq must start at 1")));
                        break;
                    }
                    let dropped = self.sanitize(&mut batch);
                    if dropped > 0 {
                        self.metrics
                            .samples_rejected
                            .get_or_create(&crate::telemetry::ReasonLabels { reason: "timestamp".into() })
                            .inc_by(dropped as u64);
                    }
                    let job = Job::Batch {
                        node: node.clone(),
                        spool_id: spool_id.clone(),
                        batch: Arc::new(batch),
                        received: Instant::now(),
                        outbound: outbound.clone(),
                    };
                    // A full queue waits here, which stops reading this stream, which lets HTTP/2
                    // flow control slow the agent down: back-pressure instead of buffering.
                    if self.jobs.send(job).await.is_err() {
                        let _ = outbound.try_send(Err(Status::unavailable("controller is shutting down")));
                        break;
                    }
                }
                Some(agent_message::Msg::Heartbeat(_)) => {}
                Some(agent_message::Msg::CommandResult(r)) => {
                    tracing::info!(command = %r.id, status = r.status, message = %r.message, "command result");
                    self.nodes.command_done(r);
                }
                Some(agent_message::Msg::Hello(_)) => {
                    self.metrics.reject(&self.metrics.streams_rejected, "malformed");
                    let _ = outbound.try_send(Err(Status::invalid_argument("hello may only be sent once per stream")));
                    break;
                }
                None => {
                    self.metrics.reject(&self.metrics.streams_rejected, "malformed");
                    let _ = outbound.try_send(Err(Status::invalid_argument("empty agent message")));
                    break;
                }
            }
        }
        self.nodes.disconnect(&node, session);
        self.metrics.agents_connected.set(self.nodes.connected_count() as i64);
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<ControllerMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Telemetry for IngestService {
    type StreamStream = OutStream;

    async fn stream(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::StreamStream>, Status> {
        // Credentials are checked before the hello is even read; the node it names after.
        let principal = match &self.auth {
            Some(auth) => {
                let certs = request.peer_certs();
                let authorization = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
                Some(auth.authenticate(certs.as_deref().map(Vec::as_slice), authorization)?)
            }
            None => None,
        };
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(self.opts.hello_timeout, inbound.message()).await {
            Err(_) => {
                return Err(self.refuse("hello_timeout", Status::deadline_exceeded("no hello within the timeout")));
            }
            Ok(Err(status)) => return Err(self.refuse("malformed", status)),
            Ok(Ok(None)) => {
                return Err(self.refuse("bad_hello", Status::invalid_argument("stream closed before hello")));
            }
            Ok(Ok(Some(m))) => m,
        };
        let Some(agent_message::Msg::Hello(hello)) = first.msg else {
            return Err(self.refuse("bad_hello", Status::invalid_argument("the first message must be a Hello")));
        };
        self.check_hello(&hello)?;
        if let (Some(auth), Some(p)) = (&self.auth, &principal) {
            auth.authorize(p, &hello.node)?;
        }

        let (reply_tx, reply_rx) = oneshot::channel();
        let labels = hello.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect();
        self.jobs
            .send(Job::Hello {
                node: hello.node.clone(),
                spool_id: hello.spool_id.clone(),
                labels,
                agent_version: hello.agent_version.clone(),
                reply: reply_tx,
            })
            .await
            .map_err(|_| Status::unavailable("controller is shutting down"))?;
        let last_stored_seq = reply_rx.await.map_err(|_| Status::unavailable("controller is shutting down"))?;

        let (tx, rx) = mpsc::channel(1024);
        let welcome =
            Welcome { protocol_version: PROTOCOL_VERSION, controller_id: self.controller_id.clone(), last_stored_seq };
        let _ = tx.try_send(Ok(ControllerMessage { msg: Some(Msg::Welcome(welcome)) }));
        if let Some(i) = self.opts.interval_hint {
            let hint = ConfigHint { interval_ms: i.as_millis() as u64 };
            let _ = tx.try_send(Ok(ControllerMessage { msg: Some(Msg::ConfigHint(hint)) }));
        }
        let (session, kicked) = self.nodes.connect(&hello.node, tx.clone(), now_ms());
        self.metrics.streams_opened.inc();
        self.metrics.agents_connected.set(self.nodes.connected_count() as i64);
        tracing::info!(node = %hello.node, version = %hello.agent_version, last_stored_seq, "agent connected");
        let span = tracing::info_span!("session", node = %hello.node, session);
        tokio::spawn(self.clone().session(hello.node, hello.spool_id, inbound, tx, session, kicked).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medic_proto::v1::{Batch, Label, Sample, Series};

    fn service() -> IngestService {
        let (tx, _rx) = mpsc::channel(1);
        IngestService::new(tx, NodeTable::default(), Arc::new(Metrics::new("test")), IngestOptions::default())
    }

    #[test]
    fn points_outside_the_accepted_window_and_malformed_series_are_dropped_and_counted() {
        let now = now_ms();
        let old = now - 365 * 86_400_000;
        let mut b = Batch {
            samples: vec![Sample { metric: "m".into(), timestamp_ms: old, value: 1.0, ..Default::default() }],
            series: vec![
                Series {
                    metric: "ok".into(),
                    labels: vec![Label::new("a", "b")],
                    timestamps_ms: vec![old, now, now + 1],
                    values: vec![1.0, 2.0, 3.0],
                    ..Default::default()
                },
                Series {
                    metric: "ragged".into(),
                    timestamps_ms: vec![now, now],
                    values: vec![1.0],
                    ..Default::default()
                },
                Series { metric: String::new(), timestamps_ms: vec![now], values: vec![1.0], ..Default::default() },
                Series { metric: "all-old".into(), timestamps_ms: vec![old], values: vec![1.0], ..Default::default() },
            ],
            ..Default::default()
        };
        let dropped = service().sanitize(&mut b);
        assert_eq!(
            dropped,
            1 + 1 + 2 + 1 + 1,
            "the old sample, the old point, the ragged and nameless series, all-old"
        );
        assert!(b.samples.is_empty());
        assert_eq!(b.series.len(), 1);
        assert_eq!(
            (b.series[0].timestamps_ms.clone(), b.series[0].values.clone()),
            (vec![now, now + 1], vec![2.0, 3.0])
        );
    }
}
