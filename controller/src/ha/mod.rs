//! Controller high availability: several replicas run, every one ingests (agents connect to any),
//! and one — the holder of a Kubernetes Lease — runs detection and remediation.
//!
//! Safety comes from timing, as in client-go: the leader renews every `renew_every`; if it has
//! not managed to for `renew_deadline` it stops acting, and another replica may take the lease
//! only once `lease_duration` has passed since the last renewal (15 s against 10 s by default),
//! so the old leader has stopped before a new one starts. On top of that every action step is
//! fenced: it runs only if the lease was renewed recently enough that it cannot expire in the
//! next `fence_margin` (see [`Leadership::may_act`]).
//!
//! Without `--leader-election` there is one controller and it is always the leader.

pub mod fence;
pub mod lease;
pub mod proxy;
pub mod relay;

use lease::{Annotations, Attempt, LeaseClient};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Annotation on the lease with the leader's HTTP API URL, for followers.
pub const ANNOTATION_HTTP_URL: &str = "medic.io/http-url";

#[derive(Debug, Clone, Default)]
struct State {
    leader: bool,
    /// When we last renewed (while leader).
    renewed: Option<Instant>,
    /// The current holder as last seen, and what it published.
    holder: Option<String>,
    annotations: Annotations,
}

/// This replica's leadership, shared by whatever must only run on the leader.
#[derive(Clone)]
pub struct Leadership {
    election: bool,
    identity: String,
    renew_deadline: Duration,
    fence_margin: Duration,
    state: Arc<watch::Sender<State>>,
    gauge: Gauge,
}

/// Leadership as /healthz shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LeaderView {
    pub leader: bool,
    /// False: a single controller, no election.
    pub election: bool,
    pub identity: String,
    pub holder: Option<String>,
    /// The leader's HTTP API, as it published it on the lease.
    pub leader_url: Option<String>,
}

impl Leadership {
    /// A single controller: always the leader, every step may run.
    pub fn single() -> Self {
        let me = Self::new(false, String::new(), Duration::MAX, Duration::ZERO);
        me.set(|s| s.leader = true);
        me
    }

    /// A replica taking part in an election; it starts as a follower.
    pub fn elected(identity: String, renew_deadline: Duration, fence_margin: Duration) -> Self {
        Self::new(true, identity, renew_deadline, fence_margin)
    }

    fn new(election: bool, identity: String, renew_deadline: Duration, fence_margin: Duration) -> Self {
        let (tx, _) = watch::channel(State::default());
        Self { election, identity, renew_deadline, fence_margin, state: Arc::new(tx), gauge: Gauge::default() }
    }

    fn set(&self, f: impl FnOnce(&mut State)) {
        self.state.send_modify(f);
        self.gauge.set(i64::from(self.state.borrow().leader));
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "medic_leader",
            "1 on the replica that runs detection and remediation, 0 on the others",
            self.gauge.clone(),
        );
    }

    pub fn is_leader(&self) -> bool {
        self.state.borrow().leader
    }

    /// Resolves once this replica's leadership is `leader`.
    pub async fn wait_for(&self, leader: bool) {
        let mut rx = self.state.subscribe();
        let _ = rx.wait_for(|s| s.leader == leader).await;
    }

    /// Fencing, right before an action step (or undo) runs: Ok only if this replica leads and
    /// its lease cannot run out in the next `fence_margin`.
    pub fn may_act(&self) -> Result<(), String> {
        let s = self.state.borrow();
        if !s.leader {
            return Err(format!(
                "this replica ({}) is not the leader (the leader is {}); only the leader acts",
                self.identity,
                s.holder.as_deref().unwrap_or("unknown")
            ));
        }
        if !self.election {
            return Ok(());
        }
        let since = s.renewed.map(|r| r.elapsed()).unwrap_or(Duration::MAX);
        if since.saturating_add(self.fence_margin) >= self.renew_deadline {
            return Err(format!(
                "the lease was last renewed {since:?} ago and may run out within {:?}; not acting",
                self.fence_margin
            ));
        }
        Ok(())
    }

    pub fn view(&self) -> LeaderView {
        let s = self.state.borrow();
        LeaderView {
            leader: s.leader,
            election: self.election,
            identity: self.identity.clone(),
            holder: if self.election { s.holder.clone() } else { None },
            leader_url: s.annotations.get(ANNOTATION_HTTP_URL).cloned(),
        }
    }
}

/// How often the election talks to the API server.
#[derive(Debug, Clone)]
pub struct ElectionTiming {
    /// The holder renews this often.
    pub renew_every: Duration,
    /// Followers try to acquire this often; a failed renewal is retried this often.
    pub retry_every: Duration,
    /// The holder stops leading when it could not renew for this long (< the lease duration).
    pub renew_deadline: Duration,
}

/// Takes part in the election until `stop` fires; then gives the lease up if it holds it.
pub async fn run_election(
    client: LeaseClient,
    timing: ElectionTiming,
    annotations: Annotations,
    leadership: Leadership,
    mut stop: watch::Receiver<bool>,
) {
    let identity = client.settings().identity.clone();
    let lease = format!("{}/{}", client.settings().namespace, client.settings().name);
    let step_down = |why: &str| {
        if leadership.is_leader() {
            tracing::warn!(lease = %lease, identity = %identity, "stepping down: {why}; detection and remediation stop here");
        }
        leadership.set(|s| {
            s.leader = false;
            s.renewed = None;
        });
    };
    loop {
        let started = Instant::now();
        let deadline = leadership.state.borrow().renewed.map(|r| r + timing.renew_deadline);
        let now_ms = chrono::Utc::now().timestamp_millis();
        let attempt = tokio::time::timeout(timing.renew_deadline, client.try_acquire_or_renew(now_ms, &annotations));
        // While leading, the deadline interrupts a request that hangs: stepping down must not
        // wait for the API server.
        let result = match deadline {
            Some(d) => tokio::select! {
                r = attempt => Some(r),
                _ = tokio::time::sleep_until(d) => None,
            },
            None => Some(attempt.await),
        };
        let mut ok = false;
        match result {
            None => step_down("could not renew the lease before the renew deadline"),
            Some(Err(_)) => tracing::warn!(lease = %lease, "the Kubernetes API did not answer in time; retrying"),
            Some(Ok(Err(e))) => tracing::warn!(lease = %lease, error = %e, "lease request failed; retrying"),
            Some(Ok(Ok(Attempt::Held { acquired }))) => {
                ok = true;
                if acquired || !leadership.is_leader() {
                    tracing::info!(lease = %lease, identity = %identity, "became the leader: running detection and remediation");
                }
                let annotations = annotations.clone();
                leadership.set(|s| {
                    s.leader = true;
                    s.renewed = Some(started);
                    s.holder = Some(identity.clone());
                    s.annotations = annotations;
                });
            }
            Some(Ok(Ok(Attempt::HeldByOther { holder, annotations }))) => {
                ok = true;
                if leadership.is_leader() {
                    step_down(&format!("{holder} holds the lease now"));
                } else if leadership.state.borrow().holder.as_deref() != Some(holder.as_str()) {
                    tracing::info!(lease = %lease, leader = %holder, "following the leader");
                }
                leadership.set(|s| {
                    s.holder = Some(holder);
                    s.annotations = annotations;
                });
            }
            Some(Ok(Ok(Attempt::Conflict))) => {
                tracing::debug!(lease = %lease, "the lease changed while we wrote it; reading it again");
            }
        }
        // Sleep until the next attempt, but wake at the renew deadline if that comes first:
        // stepping down happens on time, not at the next attempt.
        let wait = if ok && leadership.is_leader() { timing.renew_every } else { timing.retry_every };
        let deadline = leadership.state.borrow().renewed.map(|r| r + timing.renew_deadline);
        let next = Instant::now() + wait;
        let wake = deadline.filter(|d| *d < next).unwrap_or(next);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            step_down("could not renew the lease before the renew deadline");
        }
    }
    if leadership.is_leader() {
        leadership.set(|s| s.leader = false);
        match tokio::time::timeout(Duration::from_secs(3), client.release()).await {
            Ok(Ok(())) => tracing::info!(lease = %lease, "released the lease"),
            Ok(Err(e)) => {
                tracing::warn!(lease = %lease, error = %e, "could not release the lease; it expires by itself")
            }
            Err(_) => tracing::warn!(lease = %lease, "releasing the lease timed out; it expires by itself"),
        }
    }
}

/// The election this replica takes part in, if any.
pub struct Election {
    pub leadership: Leadership,
    task: Option<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Election {
    /// With `leader_election`: joins the election on the configured Lease. Without: a single
    /// controller that always leads.
    pub async fn start(cfg: &crate::config::ControllerConfig) -> anyhow::Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        if !cfg.leader_election {
            return Ok(Self { leadership: Leadership::single(), task: None, stop });
        }
        cfg.check_leader_election()?;
        let client = kube::Client::try_default().await.map_err(|e| {
            anyhow::anyhow!("--leader-election needs the Kubernetes API (in-cluster config or a kubeconfig): {e}")
        })?;
        let namespace = cfg.lease_namespace().unwrap_or_else(|| client.default_namespace().to_string());
        let identity = crate::config::ControllerConfig::replica_identity();
        let settings = lease::LeaseSettings {
            name: cfg.lease_name.clone(),
            namespace,
            identity: identity.clone(),
            duration: cfg.lease_duration,
        };
        let timing = ElectionTiming {
            renew_every: cfg.lease_renew_interval,
            retry_every: cfg.lease_retry_interval,
            renew_deadline: cfg.lease_renew_deadline,
        };
        // Steps are fenced a retry interval before the deadline: one more failed renewal and
        // the lease could be gone.
        let leadership = Leadership::elected(identity.clone(), cfg.lease_renew_deadline, cfg.lease_retry_interval);
        let annotations: Annotations = [(ANNOTATION_HTTP_URL.to_string(), cfg.advertise_url())].into_iter().collect();
        tracing::info!(lease = %format!("{}/{}", settings.namespace, settings.name), identity = %identity, advertise = %cfg.advertise_url(), "joining the leader election");
        let task = tokio::spawn(run_election(
            LeaseClient::new(client, settings),
            timing,
            annotations,
            leadership.clone(),
            stop_rx,
        ));
        Ok(Self { leadership, task: Some(task), stop })
    }

    /// Leaves the election, giving the lease up if held (so a follower takes over at once).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// Runs `work()` for as long as this replica leads, every time it becomes the leader, after
/// `acquired()`; aborts it when leadership is lost.
pub async fn while_leading<A, AF, W, WF>(leadership: Leadership, acquired: A, work: W)
where
    A: Fn() -> AF,
    AF: std::future::Future<Output = ()>,
    W: Fn() -> WF,
    WF: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        leadership.wait_for(true).await;
        acquired().await;
        let task = tokio::spawn(work());
        leadership.wait_for(false).await;
        task.abort();
    }
}

/// Calls `f` every time this replica stops leading.
pub async fn on_step_down(leadership: Leadership, f: impl Fn()) {
    loop {
        leadership.wait_for(true).await;
        leadership.wait_for(false).await;
        f();
    }
}

#[cfg(test)]
mod tests;
