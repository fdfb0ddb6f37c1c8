//! Keeps the active rule set current: reloads on file changes (notify) and on SIGHUP. A set that
//! fails to load is rejected whole; the last good one stays active, and the metrics say so.

use super::load::{RuleSet, load_dir};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

/// Reload bookkeeping, exposed as `medic_rules_*`.
#[derive(Clone, Default)]
pub struct RuleMetrics {
    reloads: Family<ResultLabel, Counter>,
    last_success: Gauge,
    loaded: Gauge,
}

impl RuleMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("medic_rules_reload", "Rule set reloads, by result (success|error)", self.reloads.clone());
        registry.register(
            "medic_rules_last_reload_success",
            "1 when the last reload of the rule files succeeded, 0 when it was rejected",
            self.last_success.clone(),
        );
        registry.register("medic_rules_loaded", "Rules in the active set", self.loaded.clone());
    }
}

/// The active rule set, shared with the decision loop and the API.
#[derive(Clone)]
pub struct ActiveRules {
    current: Arc<RwLock<Arc<RuleSet>>>,
    /// The errors of the last rejected reload, if the last reload was rejected.
    last_errors: Arc<RwLock<Vec<String>>>,
    dir: PathBuf,
    metrics: RuleMetrics,
}

impl ActiveRules {
    /// Loads `dir`. An invalid set at start leaves no rules active (the controller still ingests
    /// and detects); it is reported like any rejected reload.
    pub fn load(dir: &Path, metrics: RuleMetrics) -> Self {
        let me = Self {
            current: Arc::new(RwLock::new(Arc::new(RuleSet::default()))),
            last_errors: Arc::default(),
            dir: dir.to_path_buf(),
            metrics,
        };
        me.reload();
        me
    }

    pub fn get(&self) -> Arc<RuleSet> {
        self.current.read().map(|g| g.clone()).unwrap_or_default()
    }

    pub fn last_errors(&self) -> Vec<String> {
        self.last_errors.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// Loads the directory again; returns whether the new set was accepted.
    pub fn reload(&self) -> bool {
        match load_dir(&self.dir) {
            Ok(set) => {
                let n = set.rules.len();
                if let Ok(mut g) = self.current.write() {
                    *g = Arc::new(set);
                }
                if let Ok(mut g) = self.last_errors.write() {
                    g.clear();
                }
                self.metrics.reloads.get_or_create(&ResultLabel { result: "success".into() }).inc();
                self.metrics.last_success.set(1);
                self.metrics.loaded.set(n as i64);
                tracing::info!(dir = %self.dir.display(), rules = n, "rule set loaded");
                true
            }
            Err(errors) => {
                let msgs: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                for m in &msgs {
                    tracing::error!(error = %m, "rule file error");
                }
                tracing::error!(
                    errors = msgs.len(),
                    active = self.get().rules.len(),
                    "rule files rejected; the last good rule set stays active"
                );
                if let Ok(mut g) = self.last_errors.write() {
                    *g = msgs;
                }
                self.metrics.reloads.get_or_create(&ResultLabel { result: "error".into() }).inc();
                self.metrics.last_success.set(0);
                false
            }
        }
    }

    /// Reloads on changes in the directory (debounced) and on SIGHUP, until the task is dropped.
    pub async fn watch(self) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
        let notify_tx = tx.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok_and(|e| !e.kind.is_access()) {
                let _ = notify_tx.try_send(());
            }
        });
        let _watcher = match watcher {
            Ok(mut w) => {
                use notify::Watcher;
                if let Err(e) = w.watch(&self.dir, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!(error = %e, dir = %self.dir.display(), "cannot watch the rules directory; reload with SIGHUP");
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "file watching unavailable; reload rules with SIGHUP");
                None
            }
        };
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            tokio::select! {
                Some(()) = rx.recv() => {
                    // Editors write in several steps (temp file, rename): wait for quiet.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    while rx.try_recv().is_ok() {}
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading rules");
                }
                else => return,
            }
            self.reload();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "rules:\n  - name: a\n    when:\n      threshold: { metric: m, op: \">\", value: 1 }\n    do:\n      - notify: {}\n";

    #[tokio::test]
    async fn an_invalid_edit_is_rejected_and_the_last_good_set_stays_active() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.yaml"), ONE).unwrap();
        let metrics = RuleMetrics::default();
        let rules = ActiveRules::load(dir.path(), metrics.clone());
        assert_eq!(rules.get().rules.len(), 1);
        tokio::spawn(rules.clone().watch());
        tokio::time::sleep(Duration::from_millis(100)).await;

        std::fs::write(dir.path().join("r.yaml"), ONE.replace("value: 1", "value: one")).unwrap();
        for _ in 0..50 {
            if metrics.last_success.get() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(metrics.last_success.get(), 0, "the broken edit was noticed");
        assert_eq!(rules.get().rules.len(), 1, "the good set is still active");
        assert!(rules.last_errors()[0].contains("r.yaml:4:"), "{:?}", rules.last_errors());

        std::fs::write(dir.path().join("r.yaml"), ONE.replace("name: a", "name: b")).unwrap();
        for _ in 0..50 {
            if rules.get().get("b").is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(rules.get().get("b").is_some(), "the fixed set replaced it");
        assert_eq!(metrics.last_success.get(), 1);
        assert_eq!(metrics.reloads.get_or_create(&ResultLabel { result: "error".into() }).get(), 1);
    }
}
