//! The single writer: every change to a node's delivery state goes through this task, in order,
//! and is stored together with the batches it accounts for (group commit).
//!
//! Why one writer: deduplication by (node, spool, seq) needs one authoritative view of each
//! node's last stored sequence number; serialising decisions here makes them trivially correct,
//! and grouping many agents' batches into one durable write keeps fsyncs off the per-batch path.

use super::nodes::NodeTable;
use crate::store::{NodeRecord, Store, StoreError, WriteSet};
use crate::telemetry::Metrics;
use medic_proto::v1::{Ack, Batch, ControllerMessage, controller_message::Msg};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

pub type Outbound = mpsc::Sender<Result<ControllerMessage, Status>>;

pub enum Job {
    /// A (re)connecting agent: adopt its spool incarnation and say what is already stored.
    Hello { node: String, spool_id: String, labels: Vec<(String, String)>, agent_version: String, reply: oneshot::Sender<u64> },
    /// One batch to store; the ack goes straight to the session's outbound stream.
    Batch { node: String, spool_id: String, batch: Arc<Batch>, received: Instant, outbound: Outbound },
}

#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Most batches written in one durable write.
    pub max_group_batches: usize,
    /// Most samples + log records written in one durable write.
    pub max_group_items: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self { max_group_batches: 512, max_group_items: 500_000 }
    }
}

pub struct Writer {
    store: Arc<dyn Store>,
    nodes: NodeTable,
    metrics: Arc<Metrics>,
    opts: WriterOptions,
}

/// What to tell a batch's sender once its group is durable.
struct PendingAck {
    outbound: Outbound,
    seq: u64,
    received: Instant,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Writer {
    pub fn new(store: Arc<dyn Store>, nodes: NodeTable, metrics: Arc<Metrics>, opts: WriterOptions) -> Self {
        Self { store, nodes, metrics, opts }
    }

    pub async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let mut group: Vec<Job> = Vec::new();
        while let Some(job) = rx.recv().await {
            group.push(job);
            let mut items = 0;
            while group.len() < self.opts.max_group_batches && items < self.opts.max_group_items {
                match rx.try_recv() {
                    Ok(job) => {
                        if let Job::Batch { batch, .. } = &job {
                            items += batch.samples.len() + batch.logs.len();
                        }
                        group.push(job)
                    }
                    Err(_) => break,
                }
            }
            self.metrics.ingest_queue_batches.set(rx.len() as i64);
            self.process(std::mem::take(&mut group)).await;
        }
    }

    async fn process(&self, group: Vec<Job>) {
        let mut touched: HashMap<String, NodeRecord> = HashMap::new();
        let mut set = WriteSet::default();
        let mut acks: Vec<PendingAck> = Vec::new();
        let mut hello_replies: Vec<(oneshot::Sender<u64>, u64)> = Vec::new();
        let (mut dups, mut gaps) = (0u64, 0u64);
        let now = now_ms();

        for job in group {
            match job {
                Job::Hello { node, spool_id, labels, agent_version, reply } => {
                    let rec = touched.entry(node.clone()).or_insert_with(|| self.nodes.record_or_new(&node, now));
                    if rec.spool_id != spool_id {
                        if !rec.spool_id.is_empty() {
                            tracing::info!(node = %node, old = %rec.spool_id, new = %spool_id, "agent started a new spool; sequence numbers restart");
                        }
                        rec.spool_id = spool_id;
                        rec.last_seq = 0;
                    }
                    rec.labels = labels;
                    rec.agent_version = agent_version;
                    rec.last_seen_ms = now;
                    hello_replies.push((reply, rec.last_seq));
                }
                Job::Batch { node, spool_id, batch, received, outbound } => {
                    let rec = touched.entry(node.clone()).or_insert_with(|| self.nodes.record_or_new(&node, now));
                    if rec.spool_id != spool_id {
                        // A newer session of this node switched spools; this one is stale.
                        let _ = outbound.try_send(Err(Status::aborted(
                            "this stream was superseded by a newer connection of the same node",
                        )));
                        continue;
                    }
                    rec.last_seen_ms = now;
                    if batch.seq <= rec.last_seq {
                        rec.duplicates += 1;
                        dups += 1;
                    } else {
                        let gap = batch.seq - rec.last_seq - 1;
                        if gap > 0 {
                            tracing::warn!(node = %node, from = rec.last_seq + 1, to = batch.seq - 1, "batches missing from this node (agent spool dropped them)");
                        }
                        rec.seq_gaps += gap;
                        gaps += gap;
                        rec.last_seq = batch.seq;
                        rec.batches += 1;
                        rec.samples += batch.samples.len() as u64;
                        rec.log_records += batch.logs.len() as u64;
                        set.batches.push((node, batch));
                    }
                    acks.push(PendingAck { outbound, seq: rec.last_seq, received });
                }
            }
        }
        set.nodes = touched.values().cloned().collect();
        let (samples, logs): (u64, u64) = set
            .batches
            .iter()
            .fold((0, 0), |(s, l), (_, b)| (s + b.samples.len() as u64, l + b.logs.len() as u64));
        let stored_batches = set.batches.len() as u64;

        self.write_until_stored(set).await;

        self.nodes.update(touched.into_values());
        self.metrics.batches_stored.inc_by(stored_batches);
        self.metrics.samples_stored.inc_by(samples);
        self.metrics.log_records_stored.inc_by(logs);
        self.metrics.duplicate_batches.inc_by(dups);
        self.metrics.seq_gaps.inc_by(gaps);
        for (reply, seq) in hello_replies {
            let _ = reply.send(seq);
        }
        for a in acks {
            self.metrics.ack_latency_seconds.observe(a.received.elapsed().as_secs_f64());
            // Acks are cumulative: if this session's queue is full a later ack covers this one.
            let _ = a.outbound.try_send(Ok(ControllerMessage { msg: Some(Msg::Ack(Ack { seq: a.seq })) }));
        }
    }

    /// Retries until the store takes the write. Meanwhile nothing is acked, so agents keep the
    /// batches in their spools, and the bounded queue in front of this task pushes back on them.
    async fn write_until_stored(&self, set: WriteSet) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            match self.store.write(set.clone()).await {
                Ok(()) => {
                    self.metrics.store_write_seconds.observe(started.elapsed().as_secs_f64());
                    self.metrics.store_up.set(1);
                    return;
                }
                Err(e) => {
                    self.metrics.store_write_errors.inc();
                    self.metrics.store_up.set(0);
                    self.nodes.set_store_error(Some(e.to_string()));
                    log_store_error(&e, backoff);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn log_store_error(e: &StoreError, retry_in: Duration) {
    tracing::error!(error = %e, retry_in = ?retry_in, "cannot store telemetry; holding acks so agents keep it spooled");
}
