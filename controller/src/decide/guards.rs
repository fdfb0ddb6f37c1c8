//! Guard rails between a firing rule and an action: what may run now, and why not otherwise.
//! Checked in order, the first that objects decides: a failing rule stops retrying; one action
//! per target at a time; cooldown per target; rate limit per rule and for the whole controller;
//! blast radius (nodes at once, share of a role, never two replicas of one shard); then dry-run
//! and approval.

use super::audit::{AuditEntry, Outcome};
use super::conditions::Firing;
use crate::rules::model::Guards;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

/// Controller-wide limit on actions, across all rules.
#[derive(Debug, Clone)]
pub struct GlobalLimit {
    pub max: u32,
    pub per: Duration,
}

impl Default for GlobalLimit {
    fn default() -> Self {
        Self { max: 10, per: Duration::from_secs(600) }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Go ahead.
    Act,
    /// Record what would have been done, do nothing.
    DryRun,
    /// Hold until approved (or expired).
    AwaitApproval,
    /// A guard said no.
    Skip { guard: &'static str, reason: String },
}

#[derive(Debug, Clone)]
struct Active {
    rule: String,
    node: String,
    target: String,
    /// Its steps only page: it changes nothing on the node, so it does not count towards other
    /// rules' share of a role or shard (it still does for its own rule's limits).
    pages_only: bool,
}

/// What the guards remember between decisions.
#[derive(Debug, Default)]
pub struct GuardState {
    global: GlobalLimit,
    last_action: HashMap<(String, String, String), i64>,
    per_rule: HashMap<String, VecDeque<i64>>,
    all: VecDeque<i64>,
    active: HashMap<String, Active>,
    failing: HashSet<String>,
}

/// Node labels of the fleet, for blast radius.
pub type Fleet = BTreeMap<String, BTreeMap<String, String>>;

impl GuardState {
    pub fn new(global: GlobalLimit) -> Self {
        Self { global, ..Default::default() }
    }

    pub fn decide(&self, f: &Firing, g: &Guards, fleet: &Fleet, now_ms: i64) -> Decision {
        let skip = |guard, reason: String| Decision::Skip { guard, reason };
        if self.failing.contains(&f.rule) {
            return skip(
                "rule_failing",
                format!("rule {} failed verification earlier and does not retry until re-enabled", f.rule),
            );
        }
        // One action of a rule per node at a time: a second one could not be told apart when
        // verifying, and stacking fixes on one node is how remediation makes things worse.
        if let Some(a) = self.active.values().find(|a| a.rule == f.rule && a.node == f.node) {
            return skip(
                "in_progress",
                format!("an action of this rule on {} ({}) is still being verified", a.node, a.target),
            );
        }
        let key = (f.rule.clone(), f.node.clone(), f.target.clone());
        if let Some(last) = self.last_action.get(&key) {
            let left = g.cooldown.as_millis() as i64 - (now_ms - last);
            if left > 0 {
                return skip(
                    "cooldown",
                    format!("last action on this target {} s ago; cooldown {:?}", (now_ms - last) / 1000, g.cooldown),
                );
            }
        }
        if let Some(rl) = &g.rate_limit {
            let n = self.per_rule.get(&f.rule).map(|q| recent(q, now_ms, rl.per)).unwrap_or(0);
            if n >= rl.max as usize {
                return skip(
                    "rate_limit",
                    format!("{n} actions of this rule in the last {:?} (max {})", rl.per, rl.max),
                );
            }
        }
        let n = recent(&self.all, now_ms, self.global.per);
        if n >= self.global.max as usize {
            return skip(
                "global_rate_limit",
                format!("{n} actions in the last {:?} across all rules (max {})", self.global.per, self.global.max),
            );
        }
        let b = &g.blast_radius;
        let busy_nodes: HashSet<&str> =
            self.active.values().filter(|a| a.rule == f.rule).map(|a| a.node.as_str()).collect();
        if !busy_nodes.contains(f.node.as_str()) && busy_nodes.len() as u32 >= b.max_nodes {
            return skip(
                "blast_radius",
                format!("{} nodes already under action for this rule (max {})", busy_nodes.len(), b.max_nodes),
            );
        }
        let labels = fleet.get(&f.node);
        // What is under action on the nodes: pages of other rules change nothing there.
        let changing = || self.active.values().filter(|a| !a.pages_only || a.rule == f.rule);
        if let Some(role) = labels.and_then(|l| l.get("role")) {
            let in_role = fleet.values().filter(|l| l.get("role") == Some(role)).count().max(1);
            let busy_in_role = changing()
                .map(|a| a.node.as_str())
                .chain(std::iter::once(f.node.as_str()))
                .collect::<HashSet<_>>()
                .into_iter()
                .filter(|n| fleet.get(*n).and_then(|l| l.get("role")) == Some(role))
                .count();
            let pct = 100.0 * busy_in_role as f64 / in_role as f64;
            // One node may always be acted on, however small the role: a percentage must not
            // forbid fixing a two-node cluster.
            if busy_in_role > 1 && pct > b.max_percent {
                return skip(
                    "blast_radius",
                    format!(
                        "{busy_in_role} of {in_role} {role} nodes would be under action ({pct:.0} % > {} %)",
                        b.max_percent
                    ),
                );
            }
        }
        if b.one_replica_per_shard
            && let Some(shard) = labels.and_then(|l| l.get("shard"))
        {
            let sibling =
                changing().find(|a| a.node != f.node && fleet.get(&a.node).and_then(|l| l.get("shard")) == Some(shard));
            if let Some(s) = sibling {
                return skip("shard", format!("{} (same shard {shard}) is under action by {}", s.node, s.rule));
            }
        }
        if g.dry_run {
            return Decision::DryRun;
        }
        if g.approval.is_some() {
            return Decision::AwaitApproval;
        }
        Decision::Act
    }

    /// The decision for an action a person approved: every guard still applies (what was true
    /// when it was proposed may not be now: another replica of its shard may be under action),
    /// but not the approval itself, nor dry-run (which never asks for one).
    pub fn decide_approved(&self, f: &Firing, g: &Guards, fleet: &Fleet, now_ms: i64) -> Decision {
        let g = Guards { approval: None, dry_run: false, ..g.clone() };
        self.decide(f, &g, fleet, now_ms)
    }

    /// An action started (after approval, if one was needed).
    pub fn started(&mut self, id: &str, f: &Firing, now_ms: i64) {
        self.last_action.insert((f.rule.clone(), f.node.clone(), f.target.clone()), now_ms);
        self.per_rule.entry(f.rule.clone()).or_default().push_back(now_ms);
        self.all.push_back(now_ms);
        self.active.insert(
            id.to_string(),
            Active { rule: f.rule.clone(), node: f.node.clone(), target: f.target.clone(), pages_only: false },
        );
        let horizon = now_ms - 86_400_000;
        for q in self.per_rule.values_mut().chain(std::iter::once(&mut self.all)) {
            while q.front().is_some_and(|t| *t < horizon) {
                q.pop_front();
            }
        }
    }

    /// Marks a started action as one that only pages (see `Active::pages_only`).
    pub fn pages_only(&mut self, id: &str) {
        if let Some(a) = self.active.get_mut(id) {
            a.pages_only = true;
        }
    }

    /// An action's verification finished; a failure stops the rule.
    pub fn finished(&mut self, id: &str, succeeded: bool) {
        if let Some(a) = self.active.remove(id)
            && !succeeded
        {
            self.failing.insert(a.rule);
        }
    }

    /// Rebuilds what the guards remember from the audit log (oldest first), so a controller that
    /// takes over — or restarts — neither repeats an action within its cooldown or rate limit,
    /// nor starts a second one while the first may still be running: an action started but not
    /// finished counts as in progress until `in_flight_for(rule)` after its start. Rules that
    /// failed stay stopped.
    pub fn restore(&mut self, history: &[AuditEntry], now_ms: i64, in_flight_for: impl Fn(&str) -> Duration) {
        let mut started_at: HashMap<&str, (i64, &str)> = HashMap::new();
        for e in history {
            let f = Firing {
                rule: e.rule.clone(),
                node: e.node.clone(),
                target: e.target.clone(),
                evidence: e.evidence.clone(),
                since_ms: 0,
            };
            match e.outcome {
                Outcome::Started => {
                    self.started(&e.action_id, &f, e.at_ms);
                    started_at.insert(&e.action_id, (e.at_ms, &e.rule));
                }
                // Written by controllers that did not record starts yet.
                Outcome::Acted if !started_at.contains_key(e.action_id.as_str()) => {
                    self.started(&e.action_id, &f, e.at_ms);
                    started_at.insert(&e.action_id, (e.at_ms, &e.rule));
                }
                // Nothing could be done: not the rule's failure (it stays active).
                Outcome::Verified | Outcome::NothingToDo => self.finished(&e.action_id, true),
                Outcome::Reenabled => self.reenable(&e.rule),
                Outcome::Failed | Outcome::Escalated => self.finished(&e.action_id, false),
                _ => {}
            }
        }
        // Nobody is left to verify what the previous leader started: once it would have been
        // decided anyway, it stops blocking the rule (its cooldown still applies).
        self.active.retain(|id, _| {
            started_at.get(id.as_str()).is_none_or(|(at, rule)| *at + in_flight_for(rule).as_millis() as i64 > now_ms)
        });
    }

    /// Whether an action (by id) counts as in progress.
    pub fn in_progress(&self, id: &str) -> bool {
        self.active.contains_key(id)
    }

    pub fn reenable(&mut self, rule: &str) {
        self.failing.remove(rule);
    }

    pub fn failing_rules(&self) -> impl Iterator<Item = &String> {
        self.failing.iter()
    }
}

fn recent(q: &VecDeque<i64>, now_ms: i64, per: Duration) -> usize {
    let since = now_ms - per.as_millis() as i64;
    q.iter().filter(|t| **t > since).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::model::{Approval, BlastRadius, RateLimit};

    fn firing(rule: &str, node: &str) -> Firing {
        Firing { rule: rule.into(), node: node.into(), target: String::new(), evidence: "e".into(), since_ms: 0 }
    }

    fn fleet(n: usize, shards: usize) -> Fleet {
        (0..n)
            .map(|i| {
                let l = [("role", "clickhouse".to_string()), ("shard", format!("s{}", i % shards))]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                (format!("n{i}"), l)
            })
            .collect()
    }

    const MIN: i64 = 60_000;

    #[test]
    fn cooldown_applies_per_target_and_expires() {
        let mut s = GuardState::new(GlobalLimit { max: 100, per: Duration::from_secs(60) });
        let g = Guards { cooldown: Duration::from_secs(600), ..Default::default() };
        let f = firing("r", "n0");
        let fl = fleet(3, 3);
        assert_eq!(s.decide(&f, &g, &fl, 0), Decision::Act);
        s.started("a1", &f, 0);
        s.finished("a1", true);
        assert!(matches!(s.decide(&f, &g, &fl, 5 * MIN), Decision::Skip { guard: "cooldown", .. }));
        assert_eq!(s.decide(&firing("r", "n1"), &g, &fl, 5 * MIN), Decision::Act, "another target is not cooled down");
        assert_eq!(s.decide(&f, &g, &fl, 11 * MIN), Decision::Act);
    }

    #[test]
    fn a_failed_action_stops_the_rule_until_re_enabled() {
        let mut s = GuardState::new(GlobalLimit::default());
        let g = Guards::default();
        let fl = fleet(3, 3);
        s.started("a1", &firing("r", "n0"), 0);
        assert!(matches!(s.decide(&firing("r", "n0"), &g, &fl, 1), Decision::Skip { guard: "in_progress", .. }));
        s.finished("a1", false);
        assert!(matches!(s.decide(&firing("r", "n1"), &g, &fl, 2), Decision::Skip { guard: "rule_failing", .. }));
        s.reenable("r");
        assert_eq!(s.decide(&firing("r", "n1"), &g, &fl, 3), Decision::Act);
    }

    #[test]
    fn never_two_replicas_of_one_shard_and_dry_run_and_approval_come_last() {
        let mut s = GuardState::new(GlobalLimit::default());
        let g = Guards {
            blast_radius: BlastRadius { max_nodes: 10, max_percent: 100.0, one_replica_per_shard: true },
            ..Default::default()
        };
        let fl = fleet(4, 2); // n0,n2 in s0; n1,n3 in s1
        s.started("a", &firing("other-rule", "n0"), 0);
        assert!(matches!(s.decide(&firing("r", "n2"), &g, &fl, 1), Decision::Skip { guard: "shard", .. }));
        assert_eq!(s.decide(&firing("r", "n1"), &g, &fl, 1), Decision::Act);
        let dry = Guards { dry_run: true, ..g.clone() };
        assert_eq!(s.decide(&firing("r", "n1"), &dry, &fl, 1), Decision::DryRun);
        let appr = Guards { approval: Some(Approval { expires_after: Duration::from_secs(60) }), ..g };
        assert_eq!(s.decide(&firing("r", "n1"), &appr, &fl, 1), Decision::AwaitApproval);
    }

    #[test]
    fn at_most_a_share_of_a_role_is_under_action_at_once() {
        let mut s = GuardState::new(GlobalLimit { max: 100, per: Duration::from_secs(60) });
        let g = Guards {
            blast_radius: BlastRadius { max_nodes: 10, max_percent: 20.0, one_replica_per_shard: false },
            ..Default::default()
        };
        let fl = fleet(10, 10);
        for n in ["n0", "n1"] {
            assert_eq!(s.decide(&firing("r", n), &g, &fl, 0), Decision::Act, "{n}: 2 of 10 is 20 %");
            s.started(n, &firing("r", n), 0);
        }
        match s.decide(&firing("r", "n2"), &g, &fl, 0) {
            Decision::Skip { guard: "blast_radius", reason } => assert!(reason.contains("30 % > 20 %"), "{reason}"),
            d => panic!("a third node is 30 % of the role: {d:?}"),
        }
        s.finished("n0", true);
        assert_eq!(s.decide(&firing("r", "n2"), &g, &fl, 1), Decision::Act, "room again once one is done");
    }

    #[test]
    fn a_page_holds_back_its_own_rule_but_not_other_rules_changes() {
        let mut s = GuardState::new(GlobalLimit::default());
        let g = Guards {
            blast_radius: BlastRadius { max_nodes: 1, max_percent: 50.0, one_replica_per_shard: true },
            ..Default::default()
        };
        let fl = fleet(4, 2); // n0,n2 in s0
        s.started("page", &firing("pager", "n0"), 0);
        s.pages_only("page");
        assert_eq!(s.decide(&firing("restarter", "n2"), &g, &fl, 1), Decision::Act, "same shard, but only a page");
        assert!(matches!(s.decide(&firing("pager", "n2"), &g, &fl, 1), Decision::Skip { guard: "blast_radius", .. }));
        s.started("restart", &firing("restarter", "n2"), 1);
        assert!(matches!(s.decide(&firing("other", "n0"), &g, &fl, 2), Decision::Skip { guard: "shard", .. }));
    }

    #[test]
    fn an_approved_action_still_obeys_every_guard_but_approval() {
        let mut s = GuardState::new(GlobalLimit::default());
        let g = Guards {
            blast_radius: BlastRadius { max_nodes: 10, max_percent: 100.0, one_replica_per_shard: true },
            approval: Some(Approval { expires_after: Duration::from_secs(60) }),
            ..Default::default()
        };
        let fl = fleet(4, 2); // n0,n2 in s0
        assert_eq!(s.decide(&firing("r", "n0"), &g, &fl, 0), Decision::AwaitApproval);
        assert_eq!(s.decide_approved(&firing("r", "n0"), &g, &fl, 0), Decision::Act);
        s.started("a", &firing("r", "n0"), 0);
        assert!(matches!(s.decide_approved(&firing("r", "n2"), &g, &fl, 1), Decision::Skip { guard: "shard", .. }));
    }

    #[test]
    fn nothing_to_do_does_not_stop_a_rule_and_a_reenabled_rule_stays_enabled_after_a_restart() {
        let history = [
            entry("a1", "r", "n0", Outcome::Started, 1_000),
            entry("a1", "r", "n0", Outcome::NothingToDo, 1_100),
            entry("a1", "r", "n0", Outcome::Escalated, 1_200),
            entry("a2", "q", "n0", Outcome::Started, 1_300),
            entry("a2", "q", "n0", Outcome::Failed, 1_400),
            entry("a2", "q", "n0", Outcome::Escalated, 1_500),
        ];
        let mut s = GuardState::new(GlobalLimit::default());
        s.restore(&history, 10 * MIN, |_| Duration::from_secs(60));
        assert_eq!(s.failing_rules().collect::<Vec<_>>(), ["q"], "only the failed verification stops its rule");
        let mut later = history.to_vec();
        later.push(entry("a3", "q", "", Outcome::Reenabled, 1_600));
        let mut s = GuardState::new(GlobalLimit::default());
        s.restore(&later, 10 * MIN, |_| Duration::from_secs(60));
        assert_eq!(s.failing_rules().count(), 0);
    }

    fn entry(id: &str, rule: &str, node: &str, outcome: Outcome, at_ms: i64) -> AuditEntry {
        AuditEntry {
            action_id: id.into(),
            at: String::new(),
            at_ms,
            rule: rule.into(),
            node: node.into(),
            target: String::new(),
            action: "restart".into(),
            outcome,
            guard: None,
            evidence: "e".into(),
            message: String::new(),
            ttl_restore: Vec::new(),
        }
    }

    #[test]
    fn a_new_leader_restores_cooldowns_in_flight_actions_and_stopped_rules_from_the_audit_log() {
        let g = Guards { cooldown: Duration::from_secs(3600), ..Default::default() };
        let fl = fleet(4, 4);
        let history = vec![
            // Done and verified 10 min ago: cooled down for 50 more minutes.
            entry("a1", "r", "n0", Outcome::Started, 0),
            entry("a1", "r", "n0", Outcome::Acted, 1),
            entry("a1", "r", "n0", Outcome::Verified, 2),
            // Started 1 min ago by the old leader, which died before it finished.
            entry("a2", "r", "n1", Outcome::Started, 9 * MIN),
            // Failed and escalated: the rule stopped.
            entry("a3", "broken", "n2", Outcome::Started, 0),
            entry("a3", "broken", "n2", Outcome::Failed, 1),
            entry("a3", "broken", "n2", Outcome::Escalated, 2),
        ];
        let mut s = GuardState::new(GlobalLimit { max: 100, per: Duration::from_secs(60) });
        s.restore(&history, 10 * MIN, |_| Duration::from_secs(600));
        let now = 10 * MIN;
        assert!(matches!(s.decide(&firing("r", "n0"), &g, &fl, now), Decision::Skip { guard: "cooldown", .. }));
        assert!(matches!(s.decide(&firing("r", "n1"), &g, &fl, now), Decision::Skip { guard: "in_progress", .. }));
        assert!(s.in_progress("a2"));
        assert!(matches!(
            s.decide(&firing("broken", "n3"), &g, &fl, now),
            Decision::Skip { guard: "rule_failing", .. }
        ));
        assert!(
            matches!(s.decide(&firing("r", "n3"), &g, &fl, now), Decision::Skip { guard: "blast_radius", .. }),
            "the unfinished action counts against the blast radius (one node at a time by default)"
        );

        // Long after: the unfinished action no longer blocks (its cooldown has passed too).
        let mut later = GuardState::new(GlobalLimit { max: 100, per: Duration::from_secs(60) });
        later.restore(&history, 80 * MIN, |_| Duration::from_secs(600));
        assert!(!later.in_progress("a2"));
        assert_eq!(later.decide(&firing("r", "n1"), &g, &fl, 80 * MIN), Decision::Act);
    }

    /// 100 simultaneous anomalies on 20 nodes: no more actions than the guards allow.
    #[test]
    fn a_storm_yields_no_more_actions_than_the_guards_allow() {
        let mut s = GuardState::new(GlobalLimit { max: 10, per: Duration::from_secs(600) });
        let fl = fleet(20, 10);
        let g = Guards {
            cooldown: Duration::from_secs(1800),
            rate_limit: Some(RateLimit { max: 5, per: Duration::from_secs(3600) }),
            blast_radius: BlastRadius { max_nodes: 3, max_percent: 25.0, one_replica_per_shard: true },
            ..Default::default()
        };
        let mut acted = Vec::new();
        let mut skipped: BTreeMap<&'static str, usize> = BTreeMap::new();
        for i in 0..100 {
            let f = Firing { target: format!("series-{}", i / 20), ..firing("storm", &format!("n{}", i % 20)) };
            match s.decide(&f, &g, &fl, i) {
                Decision::Act => {
                    s.started(&format!("a{i}"), &f, i);
                    acted.push(f.node.clone());
                }
                Decision::Skip { guard, .. } => *skipped.entry(guard).or_default() += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(acted.len(), 3, "blast radius: at most 3 nodes at once; acted on {acted:?}, skipped {skipped:?}");
        let shards: HashSet<String> = acted.iter().map(|n| fl[n]["shard"].clone()).collect();
        assert_eq!(shards.len(), acted.len(), "never two replicas of one shard");
        // Verified fine: the next wave is bounded by the rule's rate limit (5 per hour) in total.
        for i in 0..3 {
            s.finished(&format!("a{i}"), true);
        }
        let mut total = acted.len();
        for i in 100..200 {
            let f = Firing { target: format!("series-{}", i / 20), ..firing("storm", &format!("n{}", i % 20)) };
            if s.decide(&f, &g, &fl, i) == Decision::Act {
                s.started(&format!("b{i}"), &f, i);
                total += 1;
            }
        }
        assert_eq!(total, 5, "rate limit: 5 per hour in all");
    }
}
