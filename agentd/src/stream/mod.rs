//! The agent's side of the gRPC stream: connect (with exponential backoff and jitter), say hello,
//! send spooled batches in order with a bounded window in flight, and delete them from the spool
//! when the controller acks. Replays after a reconnect come from the spool, so the controller may
//! see a batch twice; it drops the second copy by (spool id, seq).

use crate::entry::SpoolEntry;
use crate::spool::Spool;
use crate::telemetry::AgentMetrics;
use medic_proto::PROTOCOL_VERSION;
use medic_proto::v1::telemetry_client::TelemetryClient;
use medic_proto::v1::{AgentMessage, CommandStatus, Heartbeat, Hello, Label, agent_message, controller_message};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, Clone)]
pub struct StreamOptions {
    pub controller: String,
    pub node: String,
    pub labels: Vec<(String, String)>,
    pub capabilities: Vec<String>,
    pub max_in_flight: usize,
    pub max_message_bytes: usize,
    pub heartbeat: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// What this agent may do when the controller asks (remediation).
    pub commands: std::sync::Arc<crate::command::CommandOptions>,
    /// TLS trust, client certificate and token (see `security`).
    pub credentials: crate::security::Credentials,
}

impl StreamOptions {
    pub fn new(controller: String, node: String) -> Self {
        Self {
            controller,
            node,
            labels: Vec::new(),
            capabilities: vec!["host".into(), "logs".into()],
            max_in_flight: 256,
            max_message_bytes: 16 << 20,
            heartbeat: Duration::from_secs(10),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            commands: Default::default(),
            credentials: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("invalid controller URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("cannot reach the controller at {url}: {}", error_chain(.source))]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("controller refused the stream: {0}")]
    Refused(tonic::Status),
    #[error("stream broke: {0}")]
    Broken(tonic::Status),
    #[error("controller closed the stream")]
    Closed,
    #[error("spool: {0}")]
    Spool(#[from] crate::spool::SpoolError),
    #[error("the controller sent {0} first instead of a Welcome")]
    Protocol(&'static str),
}

/// An error with its causes: tonic's transport error alone says only "transport error", the
/// reason (refused, a certificate the agent does not trust…) is in its sources.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Everything the sender shares with the rest of the agent.
#[derive(Clone)]
pub struct Shared {
    pub spool: Arc<Mutex<Spool>>,
    /// Fired after every append so the sender wakes up at once.
    pub appended: Arc<Notify>,
    pub metrics: Arc<AgentMetrics>,
    /// Collection interval asked for by the controller (ConfigHint).
    pub interval_hint: watch::Sender<Option<Duration>>,
}

fn lock(spool: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    // The spool's own invariants are on disk; a panic elsewhere while holding the lock must not
    // stop the agent from shipping what it has.
    spool.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn update_spool_metrics(shared: &Shared, spool: &Spool) {
    let st = spool.stats();
    shared.metrics.spool_bytes.set(st.bytes as i64);
    shared.metrics.spool_batches.set(st.batches as i64);
    shared.metrics.spool_last_seq.set(st.next_seq.saturating_sub(1) as i64);
    shared.metrics.spool_acked_seq.set(st.acked_seq as i64);
    let m = &shared.metrics;
    if st.dropped_batches_total > m.spool_dropped_batches.get() {
        m.spool_dropped_batches.inc_by(st.dropped_batches_total - m.spool_dropped_batches.get());
    }
    if st.corrupt_records_total > m.spool_corrupt_records.get() {
        m.spool_corrupt_records.inc_by(st.corrupt_records_total - m.spool_corrupt_records.get());
    }
}

/// Runs until `stop` fires, reconnecting forever.
pub async fn run(opts: StreamOptions, shared: Shared, mut stop: watch::Receiver<bool>) {
    let mut backoff = opts.backoff_min;
    let mut attempt = 0u64;
    // Several controller URLs: the first, and after every failure the next (round robin).
    let urls = crate::security::controller_urls(&opts.controller);
    let mut next = 0usize;
    loop {
        if attempt > 0 {
            shared.metrics.reconnects.inc();
        }
        attempt += 1;
        let started = Instant::now();
        let url = urls.get(next % urls.len().max(1)).cloned().unwrap_or_else(|| opts.controller.clone());
        next += 1;
        let result = tokio::select! {
            r = session(&opts, &shared, &url) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        shared.metrics.connected.set(0);
        match &result {
            Err(StreamError::Refused(status)) => {
                tracing::error!(code = ?status.code(), message = status.message(), "the controller refused this agent; retrying with backoff")
            }
            Err(e) => tracing::warn!(error = %e, "stream to the controller ended"),
            Ok(()) => {}
        }
        // A session that lived a while was healthy: start the backoff over.
        if started.elapsed() > Duration::from_secs(30) {
            backoff = opts.backoff_min;
        }
        // Full jitter keeps a fleet that lost its controller from reconnecting in lockstep.
        let sleep = backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        backoff = (backoff * 2).min(opts.backoff_max);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn batch_message(seq: u64, payload: &[u8]) -> Option<AgentMessage> {
    match SpoolEntry::decode_bytes(payload) {
        Ok(entry) => {
            let mut batch = entry.batch.unwrap_or_default();
            batch.seq = seq;
            Some(AgentMessage { msg: Some(agent_message::Msg::Batch(batch)) })
        }
        Err(e) => {
            // The checksum passed, so this is a bug or a format change, not disk corruption.
            tracing::error!(seq, error = %e, "undecodable spool record; skipping it");
            None
        }
    }
}

async fn session(opts: &StreamOptions, shared: &Shared, url: &str) -> Result<(), StreamError> {
    let endpoint = opts
        .credentials
        .endpoint(url)
        .map_err(|message| StreamError::Url { url: url.to_string(), message })?
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let channel = endpoint.connect().await.map_err(|source| StreamError::Connect { url: url.to_string(), source })?;
    let mut client = TelemetryClient::new(channel)
        .max_decoding_message_size(opts.max_message_bytes)
        .max_encoding_message_size(opts.max_message_bytes);

    let spool_id = lock(&shared.spool).id().to_string();
    let (tx, rx) = mpsc::channel::<AgentMessage>(64);
    let hello = Hello {
        node: opts.node.clone(),
        labels: opts.labels.iter().map(|(n, v)| Label::new(n.clone(), v.clone())).collect(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: PROTOCOL_VERSION,
        capabilities: opts.capabilities.clone(),
        spool_id,
    };
    let _ = tx.send(AgentMessage { msg: Some(agent_message::Msg::Hello(hello)) }).await;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    opts.credentials.authorize(&mut request).map_err(|message| StreamError::Url { url: url.to_string(), message })?;
    let mut inbound = client.stream(request).await.map_err(StreamError::Refused)?.into_inner();
    let welcome = match inbound.message().await.map_err(StreamError::Refused)? {
        Some(m) => match m.msg {
            Some(controller_message::Msg::Welcome(w)) => w,
            Some(_) => return Err(StreamError::Protocol("another message")),
            None => return Err(StreamError::Protocol("an empty message")),
        },
        None => return Err(StreamError::Closed),
    };
    shared.metrics.connected.set(1);
    let mut acked = {
        let mut spool = lock(&shared.spool);
        // Whatever the controller already has (e.g. acks lost when the connection broke) need
        // not be sent again.
        spool.ack(welcome.last_stored_seq)?;
        update_spool_metrics(shared, &spool);
        spool.stats().acked_seq
    };
    tracing::info!(url, controller = %welcome.controller_id, last_stored_seq = welcome.last_stored_seq, "connected to the controller");

    let mut sent = acked;
    let mut heartbeat = tokio::time::interval(opts.heartbeat);
    heartbeat.tick().await;
    loop {
        // Top up the window from the spool before waiting for anything.
        if sent < acked + opts.max_in_flight as u64 {
            let room = (acked + opts.max_in_flight as u64 - sent) as usize;
            let records = {
                let spool = lock(&shared.spool);
                spool.read_after(sent, room.min(64), 4 << 20)?
            };
            if !records.is_empty() {
                for (seq, payload) in records {
                    sent = seq;
                    if let Some(msg) = batch_message(seq, &payload) {
                        if tx.send(msg).await.is_err() {
                            return Err(StreamError::Closed);
                        }
                        shared.metrics.batches_sent.inc();
                    }
                }
                continue;
            }
        }
        tokio::select! {
            msg = inbound.message() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => return Err(StreamError::Closed),
                    Err(status) => return Err(StreamError::Broken(status)),
                };
                match msg.msg {
                    Some(controller_message::Msg::Ack(ack)) => {
                        if ack.seq > acked {
                            let mut spool = lock(&shared.spool);
                            spool.ack(ack.seq)?;
                            update_spool_metrics(shared, &spool);
                            shared.metrics.batches_acked.inc_by(ack.seq - acked);
                            acked = ack.seq;
                        }
                    }
                    Some(controller_message::Msg::Command(cmd)) => {
                        // Run it beside the stream: a restart takes seconds and acks must keep flowing.
                        let (tx, opts) = (tx.clone(), opts.commands.clone());
                        tokio::spawn(async move {
                            let r = crate::command::run(&opts, &cmd).await;
                            if r.status != CommandStatus::Succeeded as i32 {
                                tracing::warn!(command = %r.id, status = r.status, message = %r.message, "command did not succeed");
                            }
                            let _ = tx.send(AgentMessage { msg: Some(agent_message::Msg::CommandResult(r)) }).await;
                        });
                    }
                    Some(controller_message::Msg::ConfigHint(h)) => {
                        let hint = (h.interval_ms > 0).then(|| Duration::from_millis(h.interval_ms));
                        let _ = shared.interval_hint.send(hint);
                    }
                    Some(controller_message::Msg::Welcome(_)) | None => {}
                }
            }
            _ = shared.appended.notified() => {}
            _ = heartbeat.tick() => {
                let st = lock(&shared.spool).stats();
                let hb = Heartbeat { unix_ms: chrono::Utc::now().timestamp_millis(), spool_batches: st.batches, spool_bytes: st.bytes };
                if tx.send(AgentMessage { msg: Some(agent_message::Msg::Heartbeat(hb)) }).await.is_err() {
                    return Err(StreamError::Closed);
                }
            }
        }
    }
}
