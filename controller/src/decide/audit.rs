//! The audit log: every decision and what became of it, with its evidence. Kept in memory for
//! the API (bounded) and counted in `medic_actions_total{rule,action,outcome}`.

use crate::store::events::EventLog;
use crate::store::{EventKind, EventRecord};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A guard said no (see `guard`).
    Skipped,
    DryRun,
    AwaitingApproval,
    Approved,
    Expired,
    /// The steps are starting (recorded first, so that a controller that takes over knows the
    /// action was begun even if its controller died before it finished).
    Started,
    /// The steps ran.
    Acted,
    /// A step could not run.
    Failed,
    /// The condition cleared within the verification window.
    Verified,
    /// It did not: what could be undone was undone.
    RolledBack,
    /// People were told, with the evidence.
    Escalated,
    /// A temporary change (a shortened TTL) was undone once the pressure was gone.
    Restored,
    /// The executor found nothing it could do on this target (no disk with more room, a TTL
    /// already at its minimum, a scale at its bound): people are told, the rule stays active.
    NothingToDo,
    /// A rule stopped by a failed verification was re-enabled by a person.
    Reenabled,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Skipped => "skipped",
            Outcome::DryRun => "dry_run",
            Outcome::AwaitingApproval => "awaiting_approval",
            Outcome::Approved => "approved",
            Outcome::Expired => "expired",
            Outcome::Started => "started",
            Outcome::Acted => "acted",
            Outcome::Failed => "failed",
            Outcome::Verified => "verified",
            Outcome::RolledBack => "rolled_back",
            Outcome::Escalated => "escalated",
            Outcome::Restored => "restored",
            Outcome::NothingToDo => "nothing_to_do",
            Outcome::Reenabled => "reenabled",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The action this entry belongs to (several entries per action: decided, acted, verified…).
    pub action_id: String,
    pub at: String,
    pub at_ms: i64,
    pub rule: String,
    pub node: String,
    pub target: String,
    /// Step kinds of the playbook, e.g. "ttl" or "restart+sql".
    pub action: String,
    pub outcome: Outcome,
    /// The guard that decided a skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
    pub evidence: String,
    pub message: String,
    /// On a `verified` TTL action: the shortened TTLs to put back once the pressure is gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ttl_restore: Vec<crate::act::executor::StoredTtlUndo>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    rule: String,
    action: String,
    outcome: String,
}

const KEEP: usize = 10_000;

#[derive(Clone, Default)]
pub struct Audit {
    entries: Arc<Mutex<VecDeque<AuditEntry>>>,
    counts: Family<ActionLabels, Counter>,
    pub pending_approval: Gauge,
    /// Where entries are stored durably (the telemetry store).
    log: Option<EventLog>,
    /// The time of the latest entry, so the next one is later.
    last_ms: Arc<std::sync::atomic::AtomicI64>,
}

impl Audit {
    /// An audit log that also stores every entry, starting from the `history` already stored
    /// (oldest first), so the log survives restarts.
    pub fn stored(log: EventLog, history: Vec<AuditEntry>) -> Self {
        let a = Self { log: Some(log), ..Default::default() };
        a.replace_history(history);
        a
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "medic_actions",
            "Remediation decisions and their outcomes, by rule and action",
            self.counts.clone(),
        );
        r.register("medic_actions_pending_approval", "Actions waiting for approval", self.pending_approval.clone());
    }

    pub fn record(&self, mut e: AuditEntry) {
        // Strictly increasing times: several entries of one round (approved, started) fall in
        // the same millisecond, and the stored log is read back in time order (after a restart,
        // by a new leader), which must be the order they happened in.
        let prev = self.last_ms.fetch_max(e.at_ms, std::sync::atomic::Ordering::SeqCst);
        if e.at_ms <= prev {
            e.at_ms = prev + 1;
            self.last_ms.fetch_max(e.at_ms, std::sync::atomic::Ordering::SeqCst);
            e.at = chrono::DateTime::from_timestamp_millis(e.at_ms).map(|d| d.to_rfc3339()).unwrap_or(e.at);
        }
        self.counts
            .get_or_create(&ActionLabels {
                rule: e.rule.clone(),
                action: e.action.clone(),
                outcome: e.outcome.label().into(),
            })
            .inc();
        if let (Some(log), Ok(body)) = (&self.log, serde_json::to_value(&e)) {
            log.record(EventRecord { kind: EventKind::Action, ts_ms: e.at_ms, node: e.node.clone(), body });
        }
        tracing::info!(action_id = %e.action_id, rule = %e.rule, node = %e.node, target = %e.target, outcome = e.outcome.label(), guard = ?e.guard, message = %e.message, "remediation");
        if let Ok(mut q) = self.entries.lock() {
            q.push_back(e);
            while q.len() > KEEP {
                q.pop_front();
            }
        }
    }

    /// Waits until every entry recorded so far is stored: an action's start must be on record
    /// before it changes anything, so a controller that takes over knows of it.
    pub async fn flushed(&self, timeout: std::time::Duration) -> Result<(), String> {
        match &self.log {
            Some(log) => log.flush(timeout).await,
            None => Ok(()),
        }
    }

    /// Replaces the remembered entries with `history` (oldest first), as stored by whichever
    /// replica led before: a new leader starts from what was really done.
    pub fn replace_history(&self, history: Vec<AuditEntry>) {
        if let Some(latest) = history.iter().map(|e| e.at_ms).max() {
            self.last_ms.fetch_max(latest, std::sync::atomic::Ordering::SeqCst);
        }
        if let Ok(mut q) = self.entries.lock() {
            *q = history.into();
            while q.len() > KEEP {
                q.pop_front();
            }
        }
    }

    /// Every remembered entry, oldest first.
    pub fn history(&self) -> Vec<AuditEntry> {
        self.entries.lock().map(|q| q.iter().cloned().collect()).unwrap_or_default()
    }

    /// Newest first, optionally only one rule's.
    pub fn list(&self, rule: Option<&str>, limit: usize) -> Vec<AuditEntry> {
        self.entries
            .lock()
            .map(|q| q.iter().rev().filter(|e| rule.is_none_or(|r| e.rule == r)).take(limit).cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(outcome: Outcome, at_ms: i64) -> AuditEntry {
        AuditEntry {
            action_id: "a".into(),
            at: String::new(),
            at_ms,
            rule: "r".into(),
            node: "n".into(),
            target: String::new(),
            action: "restart".into(),
            outcome,
            guard: None,
            evidence: String::new(),
            message: String::new(),
            ttl_restore: Vec::new(),
        }
    }

    #[test]
    fn entries_of_the_same_millisecond_keep_their_order_in_time() {
        let a = Audit::default();
        a.replace_history(vec![entry(Outcome::Acted, 1_000)]);
        a.record(entry(Outcome::Approved, 900));
        a.record(entry(Outcome::Started, 900));
        let times: Vec<i64> = a.history().iter().map(|e| e.at_ms).collect();
        assert_eq!(times, [1_000, 1_001, 1_002], "after what is already on record, one ms apart");
        assert!(a.history()[2].at.starts_with("1970-01-01T00:00:01.002"), "{}", a.history()[2].at);
    }
}
