//! Recording detection and remediation events in the store without ever blocking their
//! producers: a bounded queue drained by one task that writes in groups and retries while the
//! store is down (what does not fit in the queue meanwhile is counted, not buffered forever).

use super::{EventRecord, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Clone)]
pub struct EventLog {
    tx: mpsc::Sender<EventRecord>,
    pub dropped: Arc<AtomicU64>,
}

impl EventLog {
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, mut rx) = mpsc::channel::<EventRecord>(10_000);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some(e) = rx.recv().await {
                buf.push(e);
                while buf.len() < 1000 {
                    match rx.try_recv() {
                        Ok(e) => buf.push(e),
                        Err(_) => break,
                    }
                }
                let mut backoff = Duration::from_millis(200);
                loop {
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
            }
        });
        Self { tx, dropped: Arc::default() }
    }

    pub fn record(&self, e: EventRecord) {
        if self.tx.try_send(e).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
