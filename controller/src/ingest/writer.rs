//! The single writer: every change to a node's delivery state goes through this task, in order,
//! and is stored together with the batches it accounts for (group commit).
//!
//! Why one writer: deduplication by (node, spool, seq) needs one authoritative view of each
//! node's last stored sequence number; serialising decisions here makes them trivially correct,
//! and grouping many agents' batches into one durable write keeps fsyncs off the per-batch path.

use super::nodes::NodeTable;
use crate::detect::engine::{EngineHandle, StoredBatch};
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
    Hello {
        node: String,
        spool_id: String,
        labels: Vec<(String, String)>,
        agent_version: String,
        reply: oneshot::Sender<u64>,
    },
    /// One batch to store; the ack goes straight to the session's outbound stream.
    Batch { node: String, spool_id: String, batch: Arc<Batch>, received: Instant, outbound: Outbound },
}

#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Most batches written in one durable write.
    pub max_group_batches: usize,
    /// Most samples + log records written in one durable write.
    pub max_group_items: usize,
    /// How often the store is pinged while no write tells how it is (nothing to write, or a write
    /// that hangs), so that `medic_store_up` and /healthz follow a store that goes away or comes
    /// back without traffic too.
    pub health_every: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self { max_group_batches: 512, max_group_items: 500_000, health_every: Duration::from_secs(2) }
    }
}

/// What the writes say about the store, for the health check.
#[derive(Default)]
struct Health {
    /// Bumped whenever a write or read of the delivery state succeeds or fails.
    outcomes: u64,
    last_outcome: Option<Instant>,
    /// When the store call now in flight started.
    busy_since: Option<Instant>,
    /// The last call failed: the writer retries it, and says how the store is itself.
    retrying: bool,
}

/// Aborts the task when dropped (the writer's helpers end with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct Writer {
    store: Arc<dyn Store>,
    nodes: NodeTable,
    metrics: Arc<Metrics>,
    opts: WriterOptions,
    /// Stored batches go on to detection (never blocking this task).
    detection: Option<EngineHandle>,
    health: std::sync::Mutex<Health>,
}

/// One group's decisions, waiting for its durable write.
struct Prepared {
    set: WriteSet,
    touched: HashMap<String, NodeRecord>,
    acks: Vec<PendingAck>,
    hello_replies: Vec<(oneshot::Sender<u64>, u64)>,
    dups: u64,
    gaps: u64,
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
        Self { store, nodes, metrics, opts, detection: None, health: Default::default() }
    }

    pub fn with_detection(mut self, engine: EngineHandle) -> Self {
        self.detection = Some(engine);
        self
    }

    /// Pipelined: while one group's durable write is in flight, the next group is gathered and
    /// its delivery decisions made (against the records the in-flight group will leave), so the
    /// store is never idle waiting for this task. Writes still commit one at a time, in order.
    pub async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let this = Arc::new(self);
        let mut group: Vec<Job> = Vec::new();
        let mut inflight: Option<tokio::task::JoinHandle<()>> = None;
        // The node records as the in-flight group leaves them (not yet in the NodeTable).
        let mut overlay: HashMap<String, NodeRecord> = HashMap::new();
        let _health = AbortOnDrop(tokio::spawn(this.clone().watch_store()));
        while let Some(job) = rx.recv().await {
            group.push(job);
            let mut items = 0;
            while group.len() < this.opts.max_group_batches && items < this.opts.max_group_items {
                match rx.try_recv() {
                    Ok(job) => {
                        if let Job::Batch { batch, .. } = &job {
                            items += batch.sample_count() + batch.logs.len();
                        }
                        group.push(job)
                    }
                    Err(_) => break,
                }
            }
            this.metrics.ingest_queue_batches.set(rx.len() as i64);
            // Controllers sharing a store: a node saying hello here may have been written by
            // another replica since (an agent that moved). Once our own write in flight is done,
            // its stored state wins over what we remember.
            let hellos: Vec<String> = group
                .iter()
                .filter_map(|j| if let Job::Hello { node, .. } = j { Some(node.clone()) } else { None })
                .collect();
            if !hellos.is_empty() {
                if let Some(previous) = inflight.take() {
                    let _ = previous.await;
                }
                let stored = this.refresh_until_read(&hellos).await;
                for r in &stored {
                    overlay.insert(r.node.clone(), r.clone());
                }
                this.nodes.update(stored);
            }
            let prepared = this.prepare(std::mem::take(&mut group), &overlay);
            if let Some(previous) = inflight.take() {
                let _ = previous.await;
            }
            overlay = prepared.touched.clone();
            let w = this.clone();
            inflight = Some(tokio::spawn(async move { w.finish(prepared).await }));
        }
        if let Some(last) = inflight {
            let _ = last.await;
        }
    }

    /// Delivery decisions for one group: dedup, gaps, what to write and whom to ack.
    fn prepare(&self, group: Vec<Job>, overlay: &HashMap<String, NodeRecord>) -> Prepared {
        let mut touched: HashMap<String, NodeRecord> = HashMap::new();
        let mut set = WriteSet::default();
        let mut acks: Vec<PendingAck> = Vec::new();
        let mut hello_replies: Vec<(oneshot::Sender<u64>, u64)> = Vec::new();
        let (mut dups, mut gaps) = (0u64, 0u64);
        let now = now_ms();

        for job in group {
            match job {
                Job::Hello { node, spool_id, labels, agent_version, reply } => {
                    let rec = touched.entry(node.clone()).or_insert_with(|| {
                        overlay.get(&node).cloned().unwrap_or_else(|| self.nodes.record_or_new(&node, now))
                    });
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
                    let rec = touched.entry(node.clone()).or_insert_with(|| {
                        overlay.get(&node).cloned().unwrap_or_else(|| self.nodes.record_or_new(&node, now))
                    });
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
                        rec.samples += batch.sample_count() as u64;
                        rec.log_records += batch.logs.len() as u64;
                        set.batches.push((node, batch));
                    }
                    acks.push(PendingAck { outbound, seq: rec.last_seq, received });
                }
            }
        }
        set.nodes = touched.values().cloned().collect();
        Prepared { set, touched, acks, hello_replies, dups, gaps }
    }

    /// Makes a prepared group durable, then hands it to detection, publishes the node records
    /// and acks.
    async fn finish(&self, p: Prepared) {
        let Prepared { set, touched, acks, hello_replies, dups, gaps } = p;
        let (samples, logs): (u64, u64) =
            set.batches.iter().fold((0, 0), |(s, l), (_, b)| (s + b.sample_count() as u64, l + b.logs.len() as u64));
        let stored_batches = set.batches.len() as u64;

        let for_detection: Vec<(String, Arc<Batch>)> =
            if self.detection.is_some() { set.batches.clone() } else { Vec::new() };
        self.write_until_stored(set).await;
        if let Some(engine) = &self.detection {
            for (node, batch) in for_detection {
                let labels = touched.get(&node).map(|r| r.labels.clone()).unwrap_or_default();
                engine.submit(StoredBatch { node, labels, batch });
            }
        }

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

    /// Keeps `medic_store_up` and the store error current while no write does: pings the store
    /// when nothing was written for a while, or when a write has been hanging for longer than a
    /// ping may take. A write that answers meanwhile knows better, and wins.
    async fn watch_store(self: Arc<Self>) {
        let limit = crate::store::clickhouse::PING_TIMEOUT;
        loop {
            tokio::time::sleep(self.opts.health_every).await;
            let outcomes = {
                let h = self.health.lock().unwrap_or_else(|p| p.into_inner());
                let hanging = h.busy_since.is_some_and(|t| t.elapsed() > limit);
                let idle = h.busy_since.is_none()
                    && !h.retrying
                    && h.last_outcome.is_none_or(|t| t.elapsed() >= self.opts.health_every);
                if !hanging && !idle {
                    continue;
                }
                h.outcomes
            };
            let result = match tokio::time::timeout(limit, self.store.ping()).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unavailable(format!("the store did not answer within {limit:?}"))),
            };
            if self.health.lock().unwrap_or_else(|p| p.into_inner()).outcomes != outcomes {
                continue;
            }
            let was_up = self.metrics.store_up.get() == 1;
            match result {
                Ok(()) => {
                    if !was_up {
                        tracing::info!("the store answers again");
                    }
                    self.metrics.store_up.set(1);
                    self.nodes.set_store_error(None);
                }
                Err(e) => {
                    if was_up {
                        tracing::error!(error = %e, "the store does not answer; agents are not acked until it does");
                    }
                    self.metrics.store_up.set(0);
                    self.nodes.set_store_error(Some(e.to_string()));
                }
            }
        }
    }

    fn store_call_started(&self) {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).busy_since = Some(Instant::now());
    }

    fn store_call_ended(&self, ok: bool) {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        h.busy_since = None;
        h.retrying = !ok;
        h.outcomes += 1;
        h.last_outcome = Some(Instant::now());
    }

    /// Retries until the store answers: acting on a stale delivery state would store a replay
    /// twice or count a gap that is none.
    async fn refresh_until_read(&self, nodes: &[String]) -> Vec<NodeRecord> {
        let mut backoff = Duration::from_millis(100);
        loop {
            self.store_call_started();
            let result = self.store.refresh_nodes(nodes).await;
            self.store_call_ended(result.is_ok());
            match result {
                Ok(r) => {
                    self.metrics.store_up.set(1);
                    return r;
                }
                Err(e) => {
                    self.metrics.store_up.set(0);
                    self.nodes.set_store_error(Some(e.to_string()));
                    tracing::error!(error = %e, retry_in = ?backoff, "cannot read the stored state of reconnecting agents; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Retries until the store takes the write. Meanwhile nothing is acked, so agents keep the
    /// batches in their spools, and the bounded queue in front of this task pushes back on them.
    async fn write_until_stored(&self, set: WriteSet) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            self.store_call_started();
            let result = self.store.write(set.clone()).await;
            self.store_call_ended(result.is_ok());
            match result {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{LogQuery, Point, SeriesQuery, StoredLog};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The embedded store, but the first `fail` writes are refused (a store that is down).
    struct Flaky {
        inner: EmbeddedStore,
        fail: AtomicUsize,
        writes: AtomicUsize,
        /// Pings fail while set (a store that is down while nothing is written).
        down: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Store for Flaky {
        fn kind(&self) -> &'static str {
            "flaky"
        }
        async fn load_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
            self.inner.load_nodes().await
        }
        async fn write(&self, set: WriteSet) -> Result<(), StoreError> {
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err(StoreError::Unavailable("down for the test".into()));
            }
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.inner.write(set).await
        }
        async fn metric_names(&self, node: &str) -> Result<Vec<String>, StoreError> {
            self.inner.metric_names(node).await
        }
        async fn series(&self, q: &SeriesQuery) -> Result<Vec<Point>, StoreError> {
            self.inner.series(q).await
        }
        async fn logs(&self, q: &LogQuery) -> Result<Vec<StoredLog>, StoreError> {
            self.inner.logs(q).await
        }
        async fn enforce_retention(&self, c: i64) -> Result<u64, StoreError> {
            self.inner.enforce_retention(c).await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("down for the test".into()));
            }
            Ok(())
        }
        async fn write_events(&self, e: Vec<crate::store::EventRecord>) -> Result<(), StoreError> {
            self.inner.write_events(e).await
        }
        async fn events(
            &self,
            k: crate::store::EventKind,
            n: usize,
        ) -> Result<Vec<crate::store::EventRecord>, StoreError> {
            self.inner.events(k, n).await
        }
    }

    struct Harness {
        jobs: mpsc::Sender<Job>,
        nodes: NodeTable,
        store: Arc<Flaky>,
        _dir: tempfile::TempDir,
    }

    fn harness(fail: usize) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Flaky {
            inner: EmbeddedStore::open(dir.path()).unwrap(),
            fail: AtomicUsize::new(fail),
            writes: AtomicUsize::new(0),
            down: Default::default(),
        });
        let nodes = NodeTable::default();
        let (jobs, rx) = mpsc::channel(64);
        let writer =
            Writer::new(store.clone(), nodes.clone(), Arc::new(Metrics::new("test")), WriterOptions::default());
        tokio::spawn(writer.run(rx));
        Harness { jobs, nodes, store, _dir: dir }
    }

    impl Harness {
        async fn hello(&self, node: &str, spool: &str) -> u64 {
            let (reply, rx) = oneshot::channel();
            let job = Job::Hello {
                node: node.into(),
                spool_id: spool.into(),
                labels: vec![],
                agent_version: "t".into(),
                reply,
            };
            self.jobs.send(job).await.unwrap();
            rx.await.unwrap()
        }

        /// Sends a batch with one sample and returns the ack.
        async fn batch(&self, node: &str, spool: &str, seq: u64) -> u64 {
            let (tx, mut rx) = mpsc::channel(4);
            let sample = medic_proto::v1::Sample {
                metric: "m".into(),
                timestamp_ms: now_ms(),
                value: seq as f64,
                ..Default::default()
            };
            let batch = Arc::new(Batch { seq, samples: vec![sample], ..Default::default() });
            let job =
                Job::Batch { node: node.into(), spool_id: spool.into(), batch, received: Instant::now(), outbound: tx };
            self.jobs.send(job).await.unwrap();
            match rx.recv().await.unwrap().unwrap().msg {
                Some(Msg::Ack(a)) => a.seq,
                other => panic!("expected an ack, got {other:?}"),
            }
        }

        fn record(&self, node: &str) -> NodeRecord {
            self.nodes.record_or_new(node, 0)
        }
    }

    #[tokio::test]
    async fn a_replayed_batch_is_acked_but_not_stored_twice() {
        let h = harness(0);
        assert_eq!(h.hello("n", "s1").await, 0);
        assert_eq!(h.batch("n", "s1", 1).await, 1);
        assert_eq!(h.batch("n", "s1", 2).await, 2);
        assert_eq!(h.batch("n", "s1", 1).await, 2, "a replay is acked with the highest stored seq");
        let r = h.record("n");
        assert_eq!((r.batches, r.duplicates, r.samples, r.seq_gaps), (2, 1, 2, 0));
        assert_eq!(h.hello("n", "s1").await, 2, "a reconnecting agent learns what is already stored");
    }

    #[tokio::test]
    async fn missing_sequence_numbers_are_counted_as_gaps() {
        let h = harness(0);
        h.hello("n", "s").await;
        h.batch("n", "s", 1).await;
        assert_eq!(h.batch("n", "s", 5).await, 5);
        let r = h.record("n");
        assert_eq!((r.batches, r.seq_gaps), (2, 3));
    }

    #[tokio::test]
    async fn a_new_spool_restarts_sequence_numbers_without_losing_history() {
        let h = harness(0);
        h.hello("n", "old").await;
        h.batch("n", "old", 1).await;
        h.batch("n", "old", 2).await;
        assert_eq!(h.hello("n", "new").await, 0, "a wiped spool starts over at seq 1");
        assert_eq!(h.batch("n", "new", 1).await, 1);
        let r = h.record("n");
        assert_eq!((r.batches, r.duplicates, r.seq_gaps), (3, 0, 0));
    }

    #[tokio::test]
    async fn a_batch_from_a_superseded_spool_is_refused() {
        let h = harness(0);
        h.hello("n", "old").await;
        h.hello("n", "new").await;
        let (tx, mut rx) = mpsc::channel(4);
        let job = Job::Batch {
            node: "n".into(),
            spool_id: "old".into(),
            batch: Arc::new(Batch { seq: 1, ..Default::default() }),
            received: Instant::now(),
            outbound: tx,
        };
        h.jobs.send(job).await.unwrap();
        let status = rx.recv().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Aborted);
        assert_eq!(h.record("n").batches, 0);
    }

    #[tokio::test]
    async fn nothing_is_acked_until_the_store_takes_the_write() {
        let h = harness(3);
        h.hello("n", "s").await; // retried until the store comes back
        assert_eq!(h.batch("n", "s", 1).await, 1);
        assert_eq!(h.store.fail.load(Ordering::SeqCst), 0, "all three failures were retried");
        assert_eq!(h.record("n").batches, 1);
        assert_eq!(h.nodes.store_error(), None, "recovered");
    }

    #[tokio::test]
    async fn state_survives_a_restart_of_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..2u64 {
            let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
            let nodes = NodeTable::default();
            nodes.load(store.load_nodes().await.unwrap());
            let (jobs, rx) = mpsc::channel(8);
            let task = tokio::spawn(
                Writer::new(store, nodes.clone(), Arc::new(Metrics::new("t")), WriterOptions::default()).run(rx),
            );
            let h = Harness {
                jobs,
                nodes,
                store: Arc::new(Flaky {
                    inner: EmbeddedStore::open(&dir.path().join("unused")).unwrap(),
                    fail: AtomicUsize::new(0),
                    writes: AtomicUsize::new(0),
                    down: Default::default(),
                }),
                _dir: tempfile::tempdir().unwrap(),
            };
            assert_eq!(h.hello("n", "s").await, round * 2);
            // Round 1 replays seq 1..=2 (as an agent would after a controller crash) then sends 3..=4.
            for seq in 1..=2 * (round + 1) {
                h.batch("n", "s", seq).await;
            }
            let r = h.record("n");
            assert_eq!((r.batches, r.last_seq, r.duplicates), (2 * (round + 1), 2 * (round + 1), round * 2));
            drop(h);
            task.abort();
            let _ = task.await;
        }
    }

    #[tokio::test]
    async fn with_nothing_to_write_the_store_state_still_follows_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Flaky {
            inner: EmbeddedStore::open(dir.path()).unwrap(),
            fail: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
            down: Default::default(),
        });
        let (nodes, metrics) = (NodeTable::default(), Arc::new(Metrics::new("t")));
        let opts = WriterOptions { health_every: Duration::from_millis(20), ..Default::default() };
        let (_jobs, rx) = mpsc::channel(8);
        let task = tokio::spawn(Writer::new(store.clone(), nodes.clone(), metrics.clone(), opts).run(rx));
        let until = |want: i64| {
            let (metrics, nodes) = (metrics.clone(), nodes.clone());
            async move {
                for _ in 0..500 {
                    if metrics.store_up.get() == want && nodes.store_error().is_some() == (want == 0) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("store_up never became {want} (error: {:?})", nodes.store_error());
            }
        };
        until(1).await;
        store.down.store(true, Ordering::SeqCst);
        until(0).await;
        store.down.store(false, Ordering::SeqCst);
        until(1).await;
        task.abort();
    }
}
