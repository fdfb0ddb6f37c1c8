//! The remediation loop: every round it evaluates the active rules on the current facts and
//! detections, asks the guards, runs what may run (off the loop), verifies that the condition
//! clears in time, and otherwise rolls back what can be undone and escalates — recording every
//! step in the audit log.

use super::audit::{Audit, AuditEntry, Outcome};
use super::conditions::{ConditionTracker, Firing, Signals};
use super::facts::Facts;
use super::guards::{Decision, Fleet, GlobalLimit, GuardState};
use crate::act::ActError;
use crate::act::executor::{Executors, StoredTtlUndo, Target, Undo};
use crate::detect::engine::DetectionState;
use crate::ingest::nodes::NodeTable;
use crate::publish::alertmanager::{Alert, Alerts};
use crate::publish::unhandled;
use crate::rules::load::LoadedRule;
use crate::rules::model::{Rule, Step};
use crate::rules::watch::ActiveRules;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

type Key = (String, String, String);

struct Verifying {
    id: String,
    key: Key,
    deadline_ms: i64,
    undo: Vec<Undo>,
    evidence: String,
    action: String,
    /// When the steps finished: the condition is judged on what the node reported after.
    since_ms: i64,
    /// Taken over from before a controller restart (its steps ran under another controller).
    recovered: bool,
}

/// A temporary change to undo once its condition has stayed clear long enough.
struct Restoration {
    id: String,
    key: Key,
    action: String,
    undo: Undo,
    after: Duration,
    due_ms: i64,
}

struct Pending {
    firing: Firing,
    rule: Rule,
    expires_ms: i64,
    approved: bool,
}

impl Pending {
    fn key(&self) -> Key {
        (self.firing.rule.clone(), self.firing.node.clone(), self.firing.target.clone())
    }
}

/// What an execution task reports back to the loop.
struct Executed {
    id: String,
    firing: Firing,
    rule: Rule,
    result: Result<Vec<Undo>, (ActError, Vec<Undo>)>,
    messages: Vec<String>,
}

/// A rule's condition that holds on a node now: `pending` until it has held for the rule's
/// `for`, then `firing`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConditionView {
    pub rule: String,
    pub node: String,
    pub target: String,
    pub state: &'static str,
    pub since: String,
    pub since_ms: i64,
    pub evidence: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

/// Shared with the API: the audit log, approvals, failing rules and the conditions that hold.
#[derive(Clone, Default)]
pub struct Remediation {
    pub audit: Audit,
    pub conditions: Arc<Mutex<Vec<ConditionView>>>,
    approvals: Arc<Mutex<HashSet<String>>>,
    pending_ids: Arc<Mutex<HashSet<String>>>,
    /// Rules stopped by a failed verification, as of the last round.
    failing: Arc<Mutex<BTreeSet<String>>>,
    reenable: Arc<Mutex<HashSet<String>>>,
    failing_gauge: Family<RuleLabel, Gauge>,
}

impl Remediation {
    pub fn with_audit(audit: Audit) -> Self {
        Self { audit, ..Default::default() }
    }

    /// Releases an action waiting for approval; false when there is no such action.
    pub fn approve(&self, id: &str) -> bool {
        let waiting = self.pending_ids.lock().map(|p| p.contains(id)).unwrap_or(false);
        if waiting && let Ok(mut a) = self.approvals.lock() {
            a.insert(id.to_string());
        }
        waiting
    }

    /// Rules that stopped acting after a failed verification and wait for a person.
    pub fn failing_rules(&self) -> BTreeSet<String> {
        self.failing.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Lets a stopped rule act again from the next round; false when the rule is not stopped.
    pub fn reenable(&self, rule: &str) -> bool {
        let stopped = self.failing.lock().map(|f| f.contains(rule)).unwrap_or(false);
        if stopped && let Ok(mut r) = self.reenable.lock() {
            r.insert(rule.to_string());
        }
        stopped
    }

    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "medic_rule_failing",
            "1 while a rule is stopped after a failed verification (re-enable it with `controller actions reenable RULE`)",
            self.failing_gauge.clone(),
        );
    }

    fn publish_failing(&self, now: BTreeSet<String>) {
        let Ok(mut f) = self.failing.lock() else { return };
        for gone in f.difference(&now) {
            self.failing_gauge.get_or_create(&RuleLabel { rule: gone.clone() }).set(0);
        }
        for rule in &now {
            self.failing_gauge.get_or_create(&RuleLabel { rule: rule.clone() }).set(1);
        }
        *f = now;
    }
}

pub struct Runner {
    pub rules: ActiveRules,
    pub facts: Arc<RwLock<Facts>>,
    pub detection: Arc<RwLock<DetectionState>>,
    pub nodes: NodeTable,
    pub exec: Executors,
    pub remediation: Remediation,
    pub global: GlobalLimit,
    pub every: Duration,
    /// Where escalations, approvals and notify steps go.
    pub alerts: Alerts,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|d| d.to_rfc3339()).unwrap_or_default()
}

fn action_name(rule: &Rule) -> String {
    rule.steps
        .iter()
        .map(|s| match s {
            Step::Restart(_) => "restart",
            Step::Rebalance(_) => "rebalance",
            Step::Scale(_) => "scale",
            Step::Ttl(_) => "ttl",
            Step::Notify(_) => "notify",
            Step::Sql(_) => "sql",
        })
        .collect::<Vec<_>>()
        .join("+")
}

/// Adds a TTL to put back. A table shortened again before its first restoration gets one
/// restoration: to the TTL before the first change, over the TTL Medic set last.
fn add_restoration<'a>(
    restorations: &'a mut Vec<Restoration>,
    id: &str,
    key: &Key,
    action: &str,
    u: &Undo,
    due_ms: i64,
) -> &'a Restoration {
    let Undo::Ttl { node, step, change, .. } = u else {
        restorations.push(Restoration {
            id: id.into(),
            key: key.clone(),
            action: action.into(),
            undo: u.clone(),
            after: Duration::ZERO,
            due_ms,
        });
        return &restorations[restorations.len() - 1];
    };
    let same = |r: &Restoration| match &r.undo {
        Undo::Ttl { node: n, step: s, .. } => n == node && s.database == step.database && s.table == step.table,
        _ => false,
    };
    match restorations.iter().position(same) {
        Some(i) => {
            let r = &mut restorations[i];
            r.due_ms = r.due_ms.max(due_ms);
            r.after = r.after.max(step.restore_after);
            if let Undo::Ttl { change: first, .. } = &mut r.undo {
                first.expression = change.expression.clone();
                first.new_seconds = change.new_seconds;
                first.materialized.extend(change.materialized.iter().cloned());
            }
            &restorations[i]
        }
        None => {
            restorations.push(Restoration {
                id: id.into(),
                key: key.clone(),
                action: action.into(),
                undo: u.clone(),
                after: step.restore_after,
                due_ms,
            });
            &restorations[restorations.len() - 1]
        }
    }
}

/// The restorations still due according to the audit log (oldest first): each `verified` TTL
/// action adds (or merges into) one, and a `restored` or `nothing_to_do` entry of that
/// restoration ends it.
fn stored_restorations(history: &[AuditEntry]) -> Vec<Restoration> {
    let mut out: Vec<Restoration> = Vec::new();
    for e in history {
        match e.outcome {
            Outcome::Verified => {
                for s in &e.ttl_restore {
                    let key = (e.rule.clone(), e.node.clone(), e.target.clone());
                    let due_ms = e.at_ms + (s.restore_after_secs as i64) * 1000;
                    let u = s.undo();
                    // The entry already holds the merged TTL: replace, keeping the first id.
                    if let Some(r) = out.iter_mut().find(|r| {
                        StoredTtlUndo::of(&r.undo)
                            .is_some_and(|x| x.node == s.node && x.database == s.database && x.table == s.table)
                    }) {
                        r.undo = u;
                        r.due_ms = r.due_ms.max(due_ms);
                    } else {
                        add_restoration(&mut out, &e.action_id, &key, &e.action, &u, due_ms);
                    }
                }
            }
            Outcome::Restored | Outcome::NothingToDo => out.retain(|r| r.id != e.action_id),
            _ => {}
        }
    }
    out
}

/// A rule that only pages: it changes nothing, so it does not hold back other rules' actions,
/// and a condition that outlasts its window does not stop it (the page stays open until the
/// condition clears; a person has it).
fn notify_only(rule: &Rule) -> bool {
    rule.steps.iter().all(|s| matches!(s, Step::Notify(_)))
}

/// How long an action another controller started may still be running: its steps (each bounded
/// by the executors' timeout) and its verification window.
fn in_flight_window(rules: &ActiveRules, rule: &str) -> Duration {
    let set = rules.get();
    let r = set.rules.iter().find(|r| r.rule.name == rule);
    let steps = r.map(|r| r.rule.steps.len()).unwrap_or(1) as u32;
    let verify = r.map(|r| r.rule.verify.clears_within).unwrap_or(Duration::from_secs(3600));
    Duration::from_secs(120) * steps + verify
}

fn alert(name: &str, severity: &str, f: &Firing, summary: String, description: String, runbook: &str) -> Alert {
    let labels = [
        ("alertname", name.to_string()),
        ("severity", severity.to_string()),
        ("component", "medic".to_string()),
        ("rule", f.rule.clone()),
        ("node", f.node.clone()),
        ("target", f.target.clone()),
    ];
    let annotations = [
        ("summary", summary),
        ("description", description),
        ("runbook_url", format!("deploy/prometheus/runbooks.md#{runbook}")),
    ];
    Alert {
        labels: labels.into_iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.to_string(), v)).collect(),
        annotations: annotations.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    }
}

fn key_labels(k: &Key) -> std::collections::BTreeMap<String, String> {
    [("rule", &k.0), ("node", &k.1), ("target", &k.2)]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect()
}

impl Runner {
    pub async fn run(self) {
        let mut tracker = ConditionTracker::default();
        let mut guards = GuardState::new(self.global.clone());
        // What was already done (by this controller before a restart, or by the leader before a
        // failover) still counts: cooldowns, rate limits, actions that may still be running.
        guards.restore(&self.remediation.audit.history(), now_ms(), |rule| in_flight_window(&self.rules, rule));
        let mut verifying: Vec<Verifying> = Vec::new();
        let started_ms = now_ms();
        self.recover(&mut guards, &mut verifying);
        let mut pending: HashMap<String, Pending> = HashMap::new();
        // Shortened TTLs the audit log says are still to be put back (by this controller before
        // a restart, or by the previous leader).
        let mut restorations = stored_restorations(&self.remediation.audit.history());
        // The last decision recorded per key, so a blocked rule is audited once, not every round.
        let mut last_decision: HashMap<Key, String> = HashMap::new();
        // Actions whose steps are running now.
        let mut running: HashSet<Key> = HashSet::new();
        let (done_tx, mut done_rx) = mpsc::channel::<Executed>(64);
        let mut tick = tokio::time::interval(self.every);
        loop {
            tick.tick().await;
            let now = now_ms();
            let set = self.rules.get();
            let by_name: HashMap<&str, &LoadedRule> = set.rules.iter().map(|r| (r.rule.name.as_str(), r)).collect();

            // Executions that finished since the last round.
            while let Ok(ex) = done_rx.try_recv() {
                let key: Key = (ex.firing.rule.clone(), ex.firing.node.clone(), ex.firing.target.clone());
                running.remove(&key);
                let action = action_name(&ex.rule);
                match ex.result {
                    Ok(undo) => {
                        self.entry(&ex.id, &ex.firing, &action, Outcome::Acted, None, ex.messages.join("; "));
                        for step in &ex.rule.steps {
                            if let Step::Notify(n) = step {
                                let summary =
                                    if n.summary.is_empty() { ex.firing.evidence.clone() } else { n.summary.clone() };
                                let description =
                                    format!("{} on {}: {}", ex.rule.name, ex.firing.node, ex.firing.evidence);
                                self.alerts.fire(alert(
                                    &ex.rule.name,
                                    &n.severity,
                                    &ex.firing,
                                    summary,
                                    description,
                                    "medicremediationfailed",
                                ));
                            }
                        }
                        let deadline_ms = now + ex.rule.verify.clears_within.as_millis() as i64;
                        verifying.push(Verifying {
                            id: ex.id,
                            key,
                            deadline_ms,
                            undo,
                            evidence: ex.firing.evidence,
                            action,
                            since_ms: now,
                            recovered: false,
                        });
                    }
                    Err((ActError::NothingToDo(why), undo)) => {
                        self.nothing_to_do(&ex.id, &ex.rule, &action, &ex.firing, &undo, &why, &mut guards).await;
                    }
                    Err((e, undo)) => {
                        self.entry(
                            &ex.id,
                            &ex.firing,
                            &action,
                            Outcome::Failed,
                            None,
                            format!("{}; {e}", ex.messages.join("; ")),
                        );
                        self.fail(&ex.id, &ex.rule, &action, &ex.firing, &undo, &mut guards).await;
                    }
                }
            }

            // Stopped rules a person re-enabled.
            let reenable: HashSet<String> =
                self.remediation.reenable.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
            for rule in reenable {
                if guards.failing_rules().any(|r| *r == rule) {
                    guards.reenable(&rule);
                    let f = Firing {
                        rule: rule.clone(),
                        node: String::new(),
                        target: String::new(),
                        evidence: String::new(),
                        since_ms: 0,
                    };
                    let id = uuid::Uuid::new_v4().to_string();
                    let action = by_name.get(rule.as_str()).map(|r| action_name(&r.rule)).unwrap_or_default();
                    self.entry(&id, &f, &action, Outcome::Reenabled, None, "re-enabled by a person".into());
                    last_decision.retain(|k, _| k.0 != rule);
                }
            }

            let round = {
                let facts = match self.facts.read() {
                    Ok(f) => f,
                    Err(_) => continue,
                };
                let signals = self.signals();
                tracker.round(set.rules.iter().map(|r| &r.rule), &facts, &signals, now)
            };
            self.publish_conditions(&round.holding, &round.firing);
            let resolved: HashSet<Key> = round.resolved.into_iter().collect();
            for k in &resolved {
                last_decision.remove(k);
                // The problem is gone: whatever Medic raised about it is resolved too.
                self.alerts.resolve(&key_labels(k));
            }
            // An action still waiting for approval is for a problem that is gone: a rule acts
            // on a firing condition only, so an approval that comes now must not run it.
            pending.retain(|id, p| {
                if !resolved.contains(&p.key()) {
                    return true;
                }
                self.entry(
                    id,
                    &p.firing,
                    &action_name(&p.rule),
                    Outcome::Skipped,
                    Some("resolved"),
                    "the condition cleared before the action ran; nothing was done".into(),
                );
                false
            });

            // Verification: cleared in time, or not.
            let holding: HashSet<Key> =
                round.holding.iter().map(|f| (f.rule.clone(), f.node.clone(), f.target.clone())).collect();
            let mut still = Vec::new();
            for v in verifying.drain(..) {
                let firing = Firing {
                    rule: v.key.0.clone(),
                    node: v.key.1.clone(),
                    target: v.key.2.clone(),
                    evidence: v.evidence.clone(),
                    since_ms: 0,
                };
                // Judged on the condition's state, not on a "resolved" event: the condition may
                // have cleared while the steps were still running. It must have been looked at
                // again: a node that reports nothing does not prove a fix.
                let since = if v.recovered { started_ms.max(v.since_ms) } else { v.since_ms };
                let cleared = !holding.contains(&v.key) && self.observed_since(&by_name, &v.key, since);
                if cleared {
                    let mut stored = Vec::new();
                    for u in &v.undo {
                        if let Undo::Ttl { step, .. } = u {
                            let due_ms = now + step.restore_after.as_millis() as i64;
                            let r = add_restoration(&mut restorations, &v.id, &v.key, &v.action, u, due_ms);
                            stored.extend(StoredTtlUndo::of(&r.undo));
                        }
                    }
                    self.record(
                        &v.id,
                        &firing,
                        &v.action,
                        Outcome::Verified,
                        None,
                        "the condition cleared".into(),
                        stored,
                    );
                    guards.finished(&v.id, true);
                } else if now >= v.deadline_ms {
                    let pages = by_name.get(v.key.0.as_str()).is_some_and(|r| notify_only(&r.rule));
                    if !pages {
                        self.entry(
                            &v.id,
                            &firing,
                            &v.action,
                            Outcome::Failed,
                            None,
                            "the condition did not clear within the verification window".into(),
                        );
                    }
                    match by_name.get(v.key.0.as_str()) {
                        // The page is out and stays open until the condition clears: the rule
                        // is not wrong because a person has not fixed it yet.
                        Some(r) if notify_only(&r.rule) => guards.finished(&v.id, true),
                        Some(r) => self.fail(&v.id, &r.rule, &v.action, &firing, &v.undo, &mut guards).await,
                        None => guards.finished(&v.id, false),
                    }
                } else {
                    still.push(v);
                }
            }
            verifying = still;

            // Temporary changes whose condition stayed clear: put back. A condition that fires
            // again keeps the change and restarts the wait.
            let firing_now: HashSet<Key> =
                round.firing.iter().map(|f| (f.rule.clone(), f.node.clone(), f.target.clone())).collect();
            let mut waiting = Vec::new();
            for mut r in restorations.drain(..) {
                if firing_now.contains(&r.key) {
                    r.due_ms = now + r.after.as_millis() as i64;
                    waiting.push(r);
                } else if now >= r.due_ms {
                    let f = Firing {
                        rule: r.key.0.clone(),
                        node: r.key.1.clone(),
                        target: r.key.2.clone(),
                        evidence: format!("clear for {:?}", r.after),
                        since_ms: 0,
                    };
                    match self.exec.undo(&r.undo).await {
                        Ok(m) => self.entry(&r.id, &f, &r.action, Outcome::Restored, None, m),
                        // Final: a person changed the TTL since (it is theirs now), or there is
                        // nothing left to put back.
                        Err(e @ (ActError::Refused(_) | ActError::NothingToDo(_))) => {
                            self.entry(&r.id, &f, &r.action, Outcome::NothingToDo, None, format!("not restored: {e}"))
                        }
                        Err(e) => {
                            self.entry(
                                &r.id,
                                &f,
                                &r.action,
                                Outcome::Failed,
                                None,
                                format!("restoring failed: {e}; will retry"),
                            );
                            r.due_ms = now + self.every.as_millis() as i64 * 6;
                            waiting.push(r);
                        }
                    }
                } else {
                    waiting.push(r);
                }
            }
            restorations = waiting;

            // Approvals: released, or expired.
            let approved: HashSet<String> =
                self.remediation.approvals.lock().map(|mut a| std::mem::take(&mut *a)).unwrap_or_default();
            let mut to_run: Vec<(String, Firing, Rule)> = Vec::new();
            let fleet: Fleet = self
                .facts
                .read()
                .map(|f| f.nodes.iter().map(|(n, nf)| (n.clone(), nf.labels.clone())).collect())
                .unwrap_or_default();
            pending.retain(|id, p| {
                if approved.contains(id) {
                    p.approved = true;
                    self.entry(id, &p.firing, &action_name(&p.rule), Outcome::Approved, None, "approved".into());
                }
                if p.approved || now >= p.expires_ms {
                    let mut l = key_labels(&p.key());
                    l.insert("alertname".into(), "MedicApprovalRequired".into());
                    self.alerts.resolve(&l);
                }
                if p.approved {
                    // Approved is not exempt from the guards: they are checked now, when it
                    // would run, and an approved action waits (until it expires) for them.
                    match guards.decide_approved(&p.firing, &p.rule.guards, &fleet, now) {
                        Decision::Act => {
                            guards.started(id, &p.firing, now);
                            to_run.push((id.clone(), p.firing.clone(), p.rule.clone()));
                            return false;
                        }
                        Decision::Skip { guard, reason } if now < p.expires_ms => {
                            let tag = format!("approved, held by {guard}");
                            if last_decision.get(&p.key()) != Some(&tag) {
                                self.entry(
                                    id,
                                    &p.firing,
                                    &action_name(&p.rule),
                                    Outcome::Skipped,
                                    Some(guard),
                                    format!("approved; waits until {guard} allows it: {reason}"),
                                );
                                last_decision.insert(p.key(), tag);
                            }
                            return true;
                        }
                        _ => {}
                    }
                }
                if now >= p.expires_ms {
                    self.entry(
                        id,
                        &p.firing,
                        &action_name(&p.rule),
                        Outcome::Expired,
                        None,
                        "nobody approved it in time".into(),
                    );
                    false
                } else {
                    true
                }
            });

            // New decisions on firing conditions.
            let busy: HashSet<Key> = verifying
                .iter()
                // A recovered action is left to the guards, which say it is in progress (audited).
                .filter(|v| !v.recovered)
                .map(|v| v.key.clone())
                .chain(
                    pending.values().map(|p| (p.firing.rule.clone(), p.firing.node.clone(), p.firing.target.clone())),
                )
                // Approved this round: about to run, not to be decided again.
                .chain(to_run.iter().map(|(_, f, _)| (f.rule.clone(), f.node.clone(), f.target.clone())))
                .chain(running.iter().cloned())
                .collect();
            for f in round.firing {
                let key: Key = (f.rule.clone(), f.node.clone(), f.target.clone());
                if busy.contains(&key) {
                    continue;
                }
                let Some(lr) = by_name.get(f.rule.as_str()) else { continue };
                let rule = &lr.rule;
                let decision = guards.decide(&f, &rule.guards, &fleet, now);
                let tag = format!("{decision:?}");
                let fresh = last_decision.get(&key) != Some(&tag);
                let id = uuid::Uuid::new_v4().to_string();
                match decision {
                    Decision::Skip { guard, reason } => {
                        if fresh {
                            self.entry(&id, &f, &action_name(rule), Outcome::Skipped, Some(guard), reason);
                        }
                    }
                    Decision::DryRun => {
                        if fresh {
                            self.entry(
                                &id,
                                &f,
                                &action_name(rule),
                                Outcome::DryRun,
                                None,
                                format!("would run {}", action_name(rule)),
                            );
                        }
                    }
                    Decision::AwaitApproval => {
                        let expires =
                            rule.guards.approval.as_ref().map(|a| a.expires_after).unwrap_or(Duration::from_secs(3600));
                        self.entry(
                            &id,
                            &f,
                            &action_name(rule),
                            Outcome::AwaitingApproval,
                            None,
                            format!("approve with POST /api/v1/actions/{id}/approve within {expires:?}"),
                        );
                        self.alerts.fire(alert(
                            "MedicApprovalRequired",
                            "warning",
                            &f,
                            format!("{} on {} waits for approval", action_name(rule), f.node),
                            format!(
                                "Rule {} wants to run {} on {} ({}). Approve within {expires:?} with `controller actions approve {id}` or POST /api/v1/actions/{id}/approve; otherwise it expires and nothing is done.",
                                rule.name,
                                action_name(rule),
                                f.node,
                                f.evidence
                            ),
                            "medicapprovalrequired",
                        ));
                        pending.insert(
                            id,
                            Pending {
                                firing: f.clone(),
                                rule: rule.clone(),
                                expires_ms: now + expires.as_millis() as i64,
                                approved: false,
                            },
                        );
                    }
                    Decision::Act => {
                        // Counted at once, so the next firing of this same round is judged with
                        // this one under way (blast radius, shard, rate limits).
                        guards.started(&id, &f, now);
                        to_run.push((id, f.clone(), rule.clone()));
                    }
                }
                last_decision.insert(key, tag);
            }
            self.remediation.publish_failing(guards.failing_rules().cloned().collect());
            if let Ok(mut ids) = self.remediation.pending_ids.lock() {
                *ids = pending.keys().cloned().collect();
            }
            self.remediation.audit.pending_approval.set(pending.len() as i64);

            for (id, f, rule) in to_run {
                if notify_only(&rule) {
                    guards.pages_only(&id);
                }
                running.insert((f.rule.clone(), f.node.clone(), f.target.clone()));
                self.entry(
                    &id,
                    &f,
                    &action_name(&rule),
                    Outcome::Started,
                    None,
                    format!("running {}", action_name(&rule)),
                );
                let (exec, tx) = (self.exec.clone(), done_tx.clone());
                let labels = fleet.get(&f.node).cloned().unwrap_or_default();
                let audit = self.remediation.audit.clone();
                tokio::spawn(async move {
                    let mut undo = Vec::new();
                    let mut messages = Vec::new();
                    let mut err = None;
                    // Nothing changes before the start is stored (see Outcome::Started).
                    if let Err(e) = audit.flushed(Duration::from_secs(10)).await {
                        err = Some(ActError::Unavailable(format!(
                            "cannot record the action's start, so not acting: {e}"
                        )));
                    }
                    let target = Target { node: &f.node, target: &f.target, labels: &labels, evidence: &f.evidence };
                    for step in rule.steps.iter().take(if err.is_some() { 0 } else { usize::MAX }) {
                        match exec.run(step, &target).await {
                            Ok(done) => {
                                messages.push(done.message);
                                undo.extend(done.undo);
                            }
                            Err(e) => {
                                err = Some(e);
                                break;
                            }
                        }
                    }
                    let result = match err {
                        None => Ok(undo),
                        Some(e) => Err((e, undo)),
                    };
                    let _ = tx.send(Executed { id, firing: f, rule, result, messages }).await;
                });
            }
        }
    }

    fn publish_conditions(&self, holding: &[Firing], firing: &[Firing]) {
        let fired: HashSet<(&str, &str, &str)> =
            firing.iter().map(|f| (f.rule.as_str(), f.node.as_str(), f.target.as_str())).collect();
        let views = holding
            .iter()
            .map(|h| ConditionView {
                rule: h.rule.clone(),
                node: h.node.clone(),
                target: h.target.clone(),
                state: if fired.contains(&(h.rule.as_str(), h.node.as_str(), h.target.as_str())) {
                    "firing"
                } else {
                    "pending"
                },
                since: rfc3339(h.since_ms),
                since_ms: h.since_ms,
                evidence: h.evidence.clone(),
            })
            .collect();
        if let Ok(mut c) = self.remediation.conditions.lock() {
            *c = views;
        }
    }

    fn signals(&self) -> Signals {
        match self.detection.read() {
            Ok(d) => Signals {
                forecasts: d.forecasts.values().cloned().collect(),
                outliers: d.outliers.clone(),
                anomalies: unhandled::signals_anomalies(&unhandled::current_scores(&d, now_ms())),
            },
            Err(_) => Signals::default(),
        }
    }

    /// Actions a stop interrupted (started or acted, never verified nor failed, still in progress
    /// for the guards after `restore`) are verified by this controller, so each gets an outcome:
    /// `verified` once the condition no longer holds after the node reported again, `failed` and
    /// escalated at the end of their window. They are never run again.
    fn recover(&self, guards: &mut GuardState, verifying: &mut Vec<Verifying>) {
        let history = self.remediation.audit.history();
        let mut last: HashMap<&str, Outcome> = HashMap::new();
        let mut first: Vec<&AuditEntry> = Vec::new();
        for e in &history {
            if matches!(e.outcome, Outcome::Started | Outcome::Acted) && !last.contains_key(e.action_id.as_str()) {
                first.push(e);
            }
            if e.outcome != Outcome::Restored {
                last.insert(e.action_id.as_str(), e.outcome);
            }
        }
        for e in first {
            let open = matches!(last.get(e.action_id.as_str()), Some(Outcome::Started | Outcome::Acted));
            if !open || !guards.in_progress(&e.action_id) {
                continue;
            }
            if self.rules.get().rules.iter().any(|r| r.rule.name == e.rule && notify_only(&r.rule)) {
                guards.pages_only(&e.action_id);
            }
            tracing::warn!(action_id = %e.action_id, rule = %e.rule, node = %e.node, "an action was interrupted by a controller stop; verifying it, not running it again");
            verifying.push(Verifying {
                id: e.action_id.clone(),
                key: (e.rule.clone(), e.node.clone(), e.target.clone()),
                deadline_ms: e.at_ms + in_flight_window(&self.rules, &e.rule).as_millis() as i64,
                undo: Vec::new(),
                evidence: e.evidence.clone(),
                action: e.action.clone(),
                since_ms: e.at_ms,
                recovered: true,
            });
        }
    }

    fn observed_since(&self, rules: &HashMap<&str, &LoadedRule>, key: &Key, since_ms: i64) -> bool {
        let Some(cond) = rules.get(key.0.as_str()).and_then(|r| r.rule.when.condition()) else { return false };
        self.facts
            .read()
            .map(|f| f.nodes.get(&key.1).is_some_and(|nf| super::conditions::observed_since(&cond, nf, since_ms)))
            .unwrap_or(false)
    }

    fn entry(&self, id: &str, f: &Firing, action: &str, outcome: Outcome, guard: Option<&str>, message: String) {
        self.record(id, f, action, outcome, guard, message, Vec::new())
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        id: &str,
        f: &Firing,
        action: &str,
        outcome: Outcome,
        guard: Option<&str>,
        message: String,
        ttl_restore: Vec<StoredTtlUndo>,
    ) {
        let now = now_ms();
        self.remediation.audit.record(AuditEntry {
            action_id: id.to_string(),
            at: rfc3339(now),
            at_ms: now,
            rule: f.rule.clone(),
            node: f.node.clone(),
            target: f.target.clone(),
            action: action.to_string(),
            outcome,
            guard: guard.map(str::to_string),
            evidence: f.evidence.clone(),
            message,
            ttl_restore,
        });
    }

    /// The executor found nothing it could do (no disk with more room, a TTL at its minimum, a
    /// scale at its bound): what earlier steps changed is undone, people are told, and the rule
    /// stays active for other targets and after its cooldown — this target needs a person, the
    /// rule is not wrong.
    #[allow(clippy::too_many_arguments)]
    async fn nothing_to_do(
        &self,
        id: &str,
        rule: &Rule,
        action: &str,
        f: &Firing,
        undo: &[Undo],
        why: &str,
        guards: &mut GuardState,
    ) {
        self.entry(id, f, action, Outcome::NothingToDo, None, why.to_string());
        if rule.on_failure.rollback {
            self.roll_back(id, f, action, undo).await;
        }
        guards.finished(id, true);
        if rule.on_failure.escalate {
            self.escalate(
                id,
                f,
                action,
                format!("nothing Medic can do here ({why}); a person must act. Evidence: {}", f.evidence),
                format!("{action} of rule {} on {}: nothing Medic can do", rule.name, f.node),
                format!(
                    "The condition holds and the playbook has nothing left to do on this target: {why}. Evidence: {}. The rule stays active and tries again after its cooldown. Audit: /api/v1/actions?rule={}",
                    f.evidence, rule.name
                ),
            );
        }
    }

    /// Tells people: the audit entry, and a critical MedicRemediationFailed page.
    fn escalate(&self, id: &str, f: &Firing, action: &str, entry: String, summary: String, description: String) {
        self.entry(id, f, action, Outcome::Escalated, None, entry);
        self.alerts.fire(alert(
            "MedicRemediationFailed",
            "critical",
            f,
            summary,
            description,
            "medicremediationfailed",
        ));
    }

    /// Undoes what the steps changed, last first.
    async fn roll_back(&self, id: &str, f: &Firing, action: &str, undo: &[Undo]) {
        for u in undo.iter().rev() {
            match self.exec.undo(u).await {
                Ok(m) => self.entry(id, f, action, Outcome::RolledBack, None, m),
                // Not an error: what Medic changed was changed again since (a person
                // rescaled), so it is left as it is.
                Err(ActError::NothingToDo(m)) => {
                    self.entry(id, f, action, Outcome::NothingToDo, None, format!("not rolled back: {m}"))
                }
                Err(e) => self.entry(id, f, action, Outcome::Failed, None, format!("rollback failed: {e}")),
            }
        }
    }

    /// After a failed step or verification: undo what can be undone, tell people, stop the rule.
    async fn fail(&self, id: &str, rule: &Rule, action: &str, f: &Firing, undo: &[Undo], guards: &mut GuardState) {
        if rule.on_failure.rollback {
            self.roll_back(id, f, action, undo).await;
        }
        if rule.on_failure.escalate {
            self.escalate(
                id,
                f,
                action,
                format!(
                    "rule {} stops acting until a person re-enables it (`controller actions reenable {}`); evidence: {}",
                    rule.name, rule.name, f.evidence
                ),
                format!("{action} of rule {} on {} did not fix the problem", rule.name, f.node),
                format!(
                    "Medic acted and verification failed; reversible changes were rolled back and the rule stopped. Evidence: {}. Audit: /api/v1/actions?rule={}. Once fixed, re-enable the rule with `controller actions reenable {}`.",
                    f.evidence, rule.name, rule.name
                ),
            );
        }
        guards.finished(id, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::clickhouse::{TableTtl, TtlChange};

    fn stored(previous: &str, now: &str) -> StoredTtlUndo {
        StoredTtlUndo {
            node: "ch-1".into(),
            labels: Default::default(),
            database: "analytics".into(),
            table: "events".into(),
            column: "ts".into(),
            min_secs: 86_400,
            max_secs: 30 * 86_400,
            factor: 0.5,
            restore_after_secs: 60,
            change: TtlChange {
                previous: TableTtl { expression: previous.into(), seconds: None },
                new_seconds: 0,
                expression: now.into(),
                materialized: Vec::new(),
            },
        }
    }

    fn entry(id: &str, outcome: Outcome, at_ms: i64, ttl_restore: Vec<StoredTtlUndo>) -> AuditEntry {
        AuditEntry {
            action_id: id.into(),
            at: String::new(),
            at_ms,
            rule: "ttl".into(),
            node: "ch-1".into(),
            target: String::new(),
            action: "ttl".into(),
            outcome,
            guard: None,
            evidence: String::new(),
            message: String::new(),
            ttl_restore,
        }
    }

    fn change(r: &Restoration) -> (String, String) {
        match &r.undo {
            Undo::Ttl { change, .. } => (change.previous.expression.clone(), change.expression.clone()),
            _ => (String::new(), String::new()),
        }
    }

    #[test]
    fn a_table_shortened_twice_is_put_back_once_to_its_first_ttl_over_the_last_one_medic_set() {
        let mut rs = Vec::new();
        let key: Key = ("ttl".into(), "ch-1".into(), String::new());
        add_restoration(&mut rs, "a1", &key, "ttl", &stored("30 DAY", "15 DAY").undo(), 1_000);
        add_restoration(&mut rs, "a2", &key, "ttl", &stored("15 DAY", "7 DAY").undo(), 5_000);
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].id, "a1");
        assert_eq!(change(&rs[0]), ("30 DAY".into(), "7 DAY".into()));
        assert_eq!(rs[0].due_ms, 5_000, "due once the later one is");
    }

    #[test]
    fn restorations_still_due_are_rebuilt_from_the_audit_log() {
        let history = [
            entry("a1", Outcome::Started, 0, vec![]),
            entry("a1", Outcome::Verified, 1_000, vec![stored("30 DAY", "15 DAY")]),
            // The second action's entry carries the merged TTL.
            entry("a2", Outcome::Verified, 2_000, vec![stored("30 DAY", "7 DAY")]),
        ];
        let rs = stored_restorations(&history);
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].id, "a1");
        assert_eq!(change(&rs[0]), ("30 DAY".into(), "7 DAY".into()));
        assert_eq!(rs[0].due_ms, 62_000);
        let mut done = history.to_vec();
        done.push(entry("a1", Outcome::Restored, 70_000, vec![]));
        assert!(stored_restorations(&done).is_empty(), "restored: nothing left to do");
        let mut refused = history.to_vec();
        refused.push(entry("a1", Outcome::NothingToDo, 70_000, vec![]));
        assert!(stored_restorations(&refused).is_empty(), "a person changed it since: theirs now");
    }
}
