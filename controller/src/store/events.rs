//! Recording detection and remediation events in the store without ever blocking their
//! producers: a bounded queue drained by one task that writes in groups and retries while the
//! store is down (what does not fit in the queue meanwhile is counted, not buffered forever).

use super::{EventRecord, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

#[derive(Clone)]
pub struct EventLog {
    tx: mpsc::Sender<Item>,
    pub dropped: Arc<AtomicU64>,
}

enum Item {
    Event(EventRecord),
    /// Answered once every event queued before it is stored.
    Flush(oneshot::Sender<()>),
}

impl EventLog {
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Item>(10_000);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut waiting = Vec::new();
            while let Some(first) = rx.recv().await {
                let mut next = Some(first);
                while let Some(item) = next.take() {
                    match item {
                        Item::Event(e) => buf.push(e),
                        Item::Flush(w) => waiting.push(w),
                    }
                    if buf.len() < 1000 {
                        next = rx.try_recv().ok();
                    }
                }
                let mut backoff = Duration::from_millis(200);
                while !buf.is_empty() {
                    match store.write_events(buf.clone()).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, events = buf.len(), "cannot record events; retrying");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                        }
                    }
                }
                buf.clear();
                for w in waiting.drain(..) {
                    let _ = w.send(());
                }
            }
        });
        Self { tx, dropped: Arc::default() }
    }

    pub fn record(&self, e: EventRecord) {
        if self.tx.try_send(Item::Event(e)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until every event recorded before this call is in the store.
    pub async fn flush(&self, timeout: Duration) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let wait = async {
            self.tx.send(Item::Flush(tx)).await.map_err(|_| "the event log has stopped".to_string())?;
            rx.await.map_err(|_| "the event log has stopped".to_string())
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(format!("the store did not take the events within {timeout:?}")),
        }
    }
}
