//! The seam between deciding and acting: one [`Executor`] per kind of target — the node's agent
//! (local service restarts), ClickHouse (statements) and Kubernetes (pods, scale) — and an
//! [`Executors`] set that gives each playbook step to the first executor that can carry it out
//! on that node.

use super::{ActError, agent, clickhouse as chx, kube as k8s};
use crate::ingest::nodes::NodeTable;
use crate::rules::model::{MoveTo, RestartHow, Step, TtlStep};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// What a step acts on.
pub struct Target<'a> {
    pub node: &'a str,
    /// Within the node: `database=db,table=t`, a resource, … (empty for the node itself).
    pub target: &'a str,
    /// The node's labels (role, shard, k8s_namespace, k8s_pod…).
    pub labels: &'a BTreeMap<String, String>,
    /// The evidence that made the rule fire, for messages.
    pub evidence: &'a str,
}

/// Something a step changed that can be put back, and the executor that knows how.
#[derive(Debug, Clone)]
pub enum Undo {
    Ttl { node: String, labels: BTreeMap<String, String>, step: TtlStep, change: Box<chx::TtlChange> },
    Scale(k8s::ScaleChange),
}

/// A shortened TTL waiting to be put back, as the audit log stores it: a controller that restarts
/// (or takes over as leader) still puts it back once the pressure is gone.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredTtlUndo {
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub database: String,
    pub table: String,
    pub column: String,
    pub min_secs: u64,
    pub max_secs: u64,
    pub factor: f64,
    pub restore_after_secs: u64,
    pub change: chx::TtlChange,
}

impl StoredTtlUndo {
    pub fn of(u: &Undo) -> Option<Self> {
        let Undo::Ttl { node, labels, step, change } = u else { return None };
        Some(Self {
            node: node.clone(),
            labels: labels.clone(),
            database: step.database.clone(),
            table: step.table.clone(),
            column: step.column.clone(),
            min_secs: step.min.as_secs(),
            max_secs: step.max.as_secs(),
            factor: step.factor,
            restore_after_secs: step.restore_after.as_secs(),
            change: (**change).clone(),
        })
    }

    pub fn undo(&self) -> Undo {
        Undo::Ttl {
            node: self.node.clone(),
            labels: self.labels.clone(),
            step: TtlStep {
                database: self.database.clone(),
                table: self.table.clone(),
                column: self.column.clone(),
                min: Duration::from_secs(self.min_secs),
                max: Duration::from_secs(self.max_secs),
                factor: self.factor,
                restore_after: Duration::from_secs(self.restore_after_secs),
            },
            change: Box::new(self.change.clone()),
        }
    }
}

/// What a step did.
pub struct Done {
    pub message: String,
    pub undo: Option<Undo>,
}

impl Done {
    fn msg(message: String) -> Self {
        Self { message, undo: None }
    }
}

#[async_trait]
pub trait Executor: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether this executor carries out `step` on this target.
    fn handles(&self, step: &Step, t: &Target<'_>) -> bool;
    async fn run(&self, step: &Step, t: &Target<'_>) -> Result<Done, ActError>;
    /// Puts back what one of this executor's steps changed; `None` when the undo is not its own.
    async fn undo(&self, u: &Undo) -> Option<Result<String, ActError>>;
}

async fn within<T>(t: Duration, fut: impl std::future::Future<Output = Result<T, ActError>>) -> Result<T, ActError> {
    match tokio::time::timeout(t, fut).await {
        Ok(r) => r,
        Err(_) => Err(ActError::Failed(format!("step did not finish within {t:?}"))),
    }
}

/// The labels part of a firing's target: `a=1,b=2`, or the inside of `metric{a=1,b=2}`.
fn target_labels(target: &str) -> &str {
    match (target.find('{'), target.strip_suffix('}')) {
        (Some(i), Some(t)) => &t[i + 1..],
        _ => target,
    }
}

/// `database=db,table=t` (or `metric{database=db,table=t}`) → ("db", "t").
fn table_of(target: &str) -> Option<(String, String)> {
    let labels = target_labels(target);
    let get = |k: &str| labels.split(',').find_map(|kv| kv.strip_prefix(&format!("{k}=")).map(str::to_string));
    Some((get("database")?, get("table")?))
}

/// The disk a firing names: `clickhouse_disk:NAME` (a forecast), or a `disk=NAME` label
/// (a threshold's `disk=default`, an anomaly's `metric{disk=default}`).
fn disk_of(target: &str) -> Option<String> {
    if let Some(d) = target.strip_prefix("clickhouse_disk:") {
        return Some(d.to_string());
    }
    target_labels(target)
        .split(',')
        .find_map(|kv| kv.strip_prefix("disk="))
        .filter(|d| !d.is_empty())
        .map(str::to_string)
}

/// `{node}` and `{label:NAME}` filled in; a label the node does not have becomes empty, which
/// makes a URL that fails loudly rather than one that reaches another node.
fn node_url(template: &str, node: &str, labels: &BTreeMap<String, String>) -> String {
    let mut url = template.replace("{node}", node);
    while let Some(start) = url.find("{label:") {
        let Some(len) = url[start..].find('}') else { break };
        let name = &url[start + 7..start + len];
        let value = labels.get(name).cloned().unwrap_or_default();
        url.replace_range(start..start + len + 1, &value);
    }
    url
}

/// Service restarts through the node's own agent (bare metal, VMs, local mode).
pub struct AgentExecutor {
    pub nodes: NodeTable,
    pub timeout: Duration,
}

#[async_trait]
impl Executor for AgentExecutor {
    fn name(&self) -> &'static str {
        "agent"
    }
    fn handles(&self, step: &Step, _: &Target<'_>) -> bool {
        matches!(step, Step::Restart(r) if matches!(r.how, RestartHow::Auto | RestartHow::Service))
    }
    async fn run(&self, step: &Step, t: &Target<'_>) -> Result<Done, ActError> {
        let Step::Restart(r) = step else { return Err(ActError::Refused("not a restart".into())) };
        agent::restart_service(&self.nodes, t.node, &r.service, self.timeout).await.map(Done::msg)
    }
    async fn undo(&self, _: &Undo) -> Option<Result<String, ActError>> {
        None
    }
}

/// ClickHouse statements on the node's server.
pub struct ClickHouseExecutor {
    /// The node's ClickHouse HTTP URL, `{node}` replaced by its name and `{label:NAME}` by the
    /// value of the node's label NAME (e.g. a port when several servers share a host).
    pub url_template: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub timeout: Duration,
}

impl ClickHouseExecutor {
    fn client(&self, node: &str, labels: &BTreeMap<String, String>) -> clickhouse::Client {
        let mut c = clickhouse::Client::default().with_url(node_url(&self.url_template, node, labels));
        if let Some(u) = &self.user {
            c = c.with_user(u);
        }
        if let Some(p) = &self.password {
            c = c.with_password(p);
        }
        c
    }
}

#[async_trait]
impl Executor for ClickHouseExecutor {
    fn name(&self) -> &'static str {
        "clickhouse"
    }
    fn handles(&self, step: &Step, _: &Target<'_>) -> bool {
        match step {
            Step::Restart(r) => r.how == RestartHow::Replica,
            Step::Ttl(_) | Step::Sql(_) | Step::Rebalance(_) => true,
            _ => false,
        }
    }
    async fn run(&self, step: &Step, t: &Target<'_>) -> Result<Done, ActError> {
        let c = self.client(t.node, t.labels);
        let to = self.timeout;
        match step {
            Step::Restart(_) => {
                let (db, table) = table_of(t.target).ok_or_else(|| {
                    ActError::Refused(format!(
                        "restart {{ how: replica }} needs a firing that names a table (labels database and table, as clickhouse_replica_is_readonly has); this one names {:?}",
                        t.target
                    ))
                })?;
                within(to, chx::restart_replica(&c, &db, &table)).await.map(Done::msg)
            }
            Step::Ttl(s) => {
                let change = within(to, chx::shorten_ttl(&c, s)).await?;
                let message = format!(
                    "TTL of {}.{} {} s → {} s ({} → {}); expired rows deleted in the background from {} partition(s)",
                    s.database,
                    s.table,
                    change.previous.seconds.map_or("?".to_string(), |s| s.to_string()),
                    change.new_seconds,
                    change.previous.expression,
                    change.expression,
                    change.materialized.len()
                );
                Ok(Done {
                    message,
                    undo: Some(Undo::Ttl {
                        node: t.node.to_string(),
                        labels: t.labels.clone(),
                        step: s.clone(),
                        change: Box::new(change),
                    }),
                })
            }
            Step::Sql(s) => {
                within(to, chx::run_sql(&c, &s.statement)).await?;
                Ok(Done::msg(format!("ran {}", s.statement)))
            }
            Step::Rebalance(rb) => {
                let source = disk_of(t.target);
                let plan = within(to, chx::plan_rebalance(&c, rb, source.as_deref())).await?;
                let mut moved = Vec::new();
                for m in &plan {
                    let kind = if m.kind == MoveTo::Disk { "disk" } else { "volume" };
                    if let Err(e) = chx::move_partition(&c, m, to).await {
                        let done = if moved.is_empty() { "nothing".to_string() } else { moved.join(", ") };
                        return Err(ActError::Failed(format!(
                            "moving {}.{} partition {} to {kind} {}: {e} (moved before that: {done})",
                            m.database, m.table, m.partition_id, m.to
                        )));
                    }
                    moved.push(format!("{}.{} {} {}→{kind} {}", m.database, m.table, m.partition_id, m.from, m.to));
                }
                Ok(Done::msg(format!("moved {}", moved.join(", "))))
            }
            _ => Err(ActError::Refused("not a ClickHouse step".into())),
        }
    }
    async fn undo(&self, u: &Undo) -> Option<Result<String, ActError>> {
        let Undo::Ttl { node, labels, step, change } = u else { return None };
        let r = chx::restore_ttl(&self.client(node, labels), step, change).await;
        Some(r.map(|_| format!("TTL of {}.{} restored to {}", step.database, step.table, change.previous.expression)))
    }
}

/// The pod a node's restart deletes. Either the agent's labels name it — `k8s_pod` and
/// `k8s_namespace`, and `k8s_pod_uid` so that only the diagnosed pod is deleted, never its
/// successor (an agent running as a sidecar in the ClickHouse pod gets all three from the
/// downward API: `--label k8s_pod=$(POD_NAME)` with `POD_NAME` from `metadata.name`, and so on) —
/// or they name the Kubernetes node (`k8s_node`, set by the agent DaemonSet) and the pod is the
/// one there matching `kubernetes_pod_selector`. The namespace is never guessed: a default would
/// delete a same-named pod in the wrong namespace.
async fn pod_of(kube: &KubeExecutor, t: &Target<'_>) -> Result<k8s::PodRef, ActError> {
    let label = |k: &str| t.labels.get(k).filter(|v| !v.is_empty()).cloned();
    if let Some(name) = label("k8s_pod") {
        let Some(namespace) = label("k8s_namespace") else {
            return Err(ActError::Refused(format!(
                "node {} names pod {name} (label k8s_pod) but not its namespace: start its agent with \
                 --label k8s_namespace=NAMESPACE too",
                t.node
            )));
        };
        return Ok(k8s::PodRef { namespace, name, uid: label("k8s_pod_uid") });
    }
    let Some(node) = label("k8s_node") else {
        return Err(ActError::Unavailable(format!(
            "node {} has neither a k8s_pod nor a k8s_node label, so Medic cannot tell which pod to restart: \
             start its agent with --label k8s_node=$(MEDIC_NODE) (as deploy/kubernetes does), or with \
             --label k8s_pod=POD --label k8s_namespace=NAMESPACE",
            t.node
        )));
    };
    let Some(selector) = kube.pod_selector.as_deref().filter(|s| !s.is_empty()) else {
        return Err(ActError::Refused(format!(
            "node {} is Kubernetes node {node}, but no kubernetes_pod_selector says which of its pods is \
             ClickHouse: set it (--kubernetes-pod-selector) to their labels, e.g. app.kubernetes.io/name=clickhouse, \
             or clickhouse.altinity.com/chi for the Altinity operator",
            t.node
        )));
    };
    within(kube.timeout, k8s::pod_on_node(&kube.client, &node, selector)).await
}

/// Pods and StatefulSets through the Kubernetes API.
pub struct KubeExecutor {
    pub client: kube::Client,
    pub timeout: Duration,
    /// Label selector of the ClickHouse pods, for nodes whose agent names only its Kubernetes
    /// node (`k8s_node`): a restart deletes the one matching pod on that node.
    pub pod_selector: Option<String>,
}

#[async_trait]
impl Executor for KubeExecutor {
    fn name(&self) -> &'static str {
        "kube"
    }
    fn handles(&self, step: &Step, t: &Target<'_>) -> bool {
        match step {
            // The agent's labels name the node's ClickHouse pod (see [`pod_of`]); without them,
            // restarts go to the agent.
            Step::Restart(r) => {
                matches!(r.how, RestartHow::Auto | RestartHow::Pod)
                    && ["k8s_pod", "k8s_node"].iter().any(|k| t.labels.get(*k).is_some_and(|v| !v.is_empty()))
            }
            Step::Scale(_) => true,
            _ => false,
        }
    }
    async fn run(&self, step: &Step, t: &Target<'_>) -> Result<Done, ActError> {
        match step {
            Step::Restart(_) => {
                let pod = pod_of(self, t).await?;
                within(self.timeout, k8s::restart_pod(&self.client, &pod)).await.map(Done::msg)
            }
            Step::Scale(sc) => {
                let change = within(
                    self.timeout,
                    k8s::scale(&self.client, &sc.namespace, &sc.statefulset, sc.step, sc.min, sc.max),
                )
                .await?;
                let message = format!("{}/{} replicas {} → {}", sc.namespace, sc.statefulset, change.from, change.to);
                Ok(Done { message, undo: Some(Undo::Scale(change)) })
            }
            _ => Err(ActError::Refused("not a Kubernetes step".into())),
        }
    }
    async fn undo(&self, u: &Undo) -> Option<Result<String, ActError>> {
        let Undo::Scale(c) = u else { return None };
        let r = within(self.timeout, k8s::unscale(&self.client, c)).await;
        Some(r.map(|_| format!("{}/{} back to {} replicas", c.namespace, c.statefulset, c.from)))
    }
}

/// Notify steps: the message; the alert itself is raised by the remediation loop.
pub struct NotifyExecutor;

#[async_trait]
impl Executor for NotifyExecutor {
    fn name(&self) -> &'static str {
        "notify"
    }
    fn handles(&self, step: &Step, _: &Target<'_>) -> bool {
        matches!(step, Step::Notify(_))
    }
    async fn run(&self, step: &Step, t: &Target<'_>) -> Result<Done, ActError> {
        let Step::Notify(n) = step else { return Err(ActError::Refused("not a notify step".into())) };
        let text = if n.summary.is_empty() { t.evidence } else { &n.summary };
        Ok(Done::msg(format!("notified ({}): {text}", n.severity)))
    }
    async fn undo(&self, _: &Undo) -> Option<Result<String, ActError>> {
        None
    }
}

/// The configured executors, in order of preference (Kubernetes before the agent for restarts
/// of pods that have one).
#[derive(Clone, Default)]
pub struct Executors(pub Vec<Arc<dyn Executor>>);

impl Executors {
    pub async fn run(&self, step: &Step, t: &Target<'_>) -> Result<Done, ActError> {
        match self.0.iter().find(|e| e.handles(step, t)) {
            Some(e) => e.run(step, t).await,
            None => Err(ActError::Unavailable(format!(
                "no executor can run this step on {}: ClickHouse steps need --clickhouse-node-url, pod and scale steps a Kubernetes API (--kubernetes) and k8s_pod labels",
                t.node
            ))),
        }
    }

    pub async fn undo(&self, u: &Undo) -> Result<String, ActError> {
        for e in &self.0 {
            if let Some(r) = e.undo(u).await {
                return r;
            }
        }
        Err(ActError::Unavailable("the executor that made this change is not configured any more".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::model::{NotifyStep, RestartStep, SqlStep};

    #[test]
    fn a_rebalance_starts_from_the_disk_the_firing_names() {
        assert_eq!(disk_of("disk=default").as_deref(), Some("default"), "threshold on clickhouse_disk_free_ratio");
        assert_eq!(disk_of("clickhouse_disk:hot-1").as_deref(), Some("hot-1"), "forecast");
        assert_eq!(disk_of("clickhouse_disk_free_ratio{disk=cold,path=/x}").as_deref(), Some("cold"), "anomaly");
        assert_eq!(disk_of("database=db,table=t"), None);
        assert_eq!(disk_of(""), None, "no disk named: the fullest one");
    }

    #[test]
    fn a_node_url_is_filled_from_the_node_name_and_its_labels() {
        let labels: BTreeMap<String, String> = [("ch_port".to_string(), "18123".to_string())].into();
        assert_eq!(node_url("http://{node}:8123", "ch-1", &labels), "http://ch-1:8123");
        assert_eq!(node_url("http://127.0.0.1:{label:ch_port}", "ch-1", &labels), "http://127.0.0.1:18123");
        assert_eq!(node_url("http://{node}:{label:missing}", "ch-1", &labels), "http://ch-1:");
    }

    fn restart(how: RestartHow) -> Step {
        Step::Restart(RestartStep { how, service: "clickhouse-server".into() })
    }

    fn executors(with_kube: bool) -> Executors {
        let mut v: Vec<Arc<dyn Executor>> = Vec::new();
        if with_kube {
            let (svc, _handle) =
                tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
            v.push(Arc::new(KubeExecutor {
                client: kube::Client::new(svc, "default"),
                timeout: Duration::from_secs(1),
                pod_selector: None,
            }));
        }
        v.push(Arc::new(AgentExecutor { nodes: NodeTable::default(), timeout: Duration::from_secs(1) }));
        v.push(Arc::new(NotifyExecutor));
        Executors(v)
    }

    fn chosen(ex: &Executors, step: &Step, labels: &BTreeMap<String, String>) -> Option<&'static str> {
        let t = Target { node: "n1", target: "", labels, evidence: "e" };
        ex.0.iter().find(|e| e.handles(step, &t)).map(|e| e.name())
    }

    #[tokio::test]
    async fn each_step_goes_to_the_executor_for_its_target() {
        let pod: BTreeMap<String, String> = [("k8s_pod".to_string(), "chi-0".to_string())].into_iter().collect();
        let bare = BTreeMap::new();
        let ex = executors(true);
        assert_eq!(
            chosen(&ex, &restart(RestartHow::Auto), &pod),
            Some("kube"),
            "a pod is restarted through Kubernetes"
        );
        assert_eq!(chosen(&ex, &restart(RestartHow::Auto), &bare), Some("agent"), "elsewhere through the agent");
        assert_eq!(chosen(&ex, &restart(RestartHow::Service), &pod), Some("agent"));
        assert_eq!(
            chosen(&ex, &Step::Notify(NotifyStep { severity: "info".into(), summary: String::new() }), &bare),
            Some("notify")
        );
        assert_eq!(chosen(&executors(false), &restart(RestartHow::Pod), &pod), None, "no Kubernetes API configured");
    }

    fn kube_executor()
    -> (KubeExecutor, tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<kube::client::Body>>)
    {
        let (svc, handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        (
            KubeExecutor {
                client: kube::Client::new(svc, "default"),
                timeout: Duration::from_secs(5),
                pod_selector: Some("app.kubernetes.io/name=clickhouse".into()),
            },
            handle,
        )
    }

    fn reply(send: tower_test::mock::SendResponse<http::Response<kube::client::Body>>, v: serde_json::Value) {
        let body = kube::client::Body::from(serde_json::to_vec(&v).expect("json"));
        send.send_response(http::Response::builder().body(body).expect("response"));
    }

    async fn body_of(req: http::Request<kube::client::Body>) -> serde_json::Value {
        serde_json::from_slice(&req.into_body().collect_bytes().await.expect("body")).expect("json body")
    }

    #[tokio::test]
    async fn a_pod_restart_deletes_the_pod_the_nodes_labels_name_only_while_it_has_their_uid() {
        let (ex, mut handle) = kube_executor();
        let labels: BTreeMap<String, String> =
            [("k8s_pod", "chi-0-0"), ("k8s_namespace", "ch"), ("k8s_pod_uid", "u-1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("delete");
            assert_eq!(req.method(), http::Method::DELETE);
            assert_eq!(req.uri().path(), "/api/v1/namespaces/ch/pods/chi-0-0");
            assert_eq!(body_of(req).await, serde_json::json!({"preconditions": {"uid": "u-1"}}));
            reply(send, serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "chi-0-0"}}));
        });
        let t = Target { node: "n1", target: "", labels: &labels, evidence: "e" };
        let done = ex.run(&restart(RestartHow::Pod), &t).await.expect("restarted");
        assert_eq!(done.message, "deleted pod ch/chi-0-0; its controller recreates it");
        assert!(done.undo.is_none(), "a deleted pod cannot be put back");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_pod_label_without_a_namespace_is_refused_before_any_request() {
        let (ex, mut handle) = kube_executor();
        let labels: BTreeMap<String, String> = [("k8s_pod".to_string(), "chi-0-0".to_string())].into();
        let t = Target { node: "n1", target: "", labels: &labels, evidence: "e" };
        assert!(ex.handles(&restart(RestartHow::Auto), &t), "the pod label makes it a Kubernetes restart");
        match ex.run(&restart(RestartHow::Auto), &t).await {
            Err(ActError::Refused(m)) => assert!(m.contains("--label k8s_namespace=NAMESPACE"), "{m}"),
            Err(e) => panic!("{e}"),
            Ok(d) => panic!("{}", d.message),
        }
        drop(ex);
        assert!(handle.next_request().await.is_none(), "nothing was sent");
    }

    #[tokio::test]
    async fn a_restart_on_a_kubernetes_node_deletes_the_one_clickhouse_pod_found_there() {
        let (ex, mut handle) = kube_executor();
        let labels: BTreeMap<String, String> = [("k8s_node".to_string(), "node-a".to_string())].into();
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("list");
            assert_eq!(req.method(), http::Method::GET);
            assert_eq!(
                req.uri().to_string(),
                "/api/v1/pods?&fieldSelector=spec.nodeName%3Dnode-a&labelSelector=app.kubernetes.io%2Fname%3Dclickhouse"
            );
            reply(
                send,
                serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                    {"metadata": {"name": "chi-0-0", "namespace": "ch", "uid": "u-1"}, "status": {"phase": "Running"}}
                ]}),
            );
            let (req, send) = handle.next_request().await.expect("delete");
            assert_eq!(req.method(), http::Method::DELETE);
            assert_eq!(req.uri().path(), "/api/v1/namespaces/ch/pods/chi-0-0");
            assert_eq!(body_of(req).await, serde_json::json!({"preconditions": {"uid": "u-1"}}));
            reply(send, serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "chi-0-0"}}));
        });
        let t = Target { node: "node-a", target: "", labels: &labels, evidence: "e" };
        assert!(ex.handles(&restart(RestartHow::Auto), &t));
        let done = ex.run(&restart(RestartHow::Auto), &t).await.expect("restarted");
        assert_eq!(done.message, "deleted pod ch/chi-0-0; its controller recreates it");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_kubernetes_node_without_a_pod_selector_says_to_set_one() {
        let (mut ex, mut handle) = kube_executor();
        ex.pod_selector = None;
        let labels: BTreeMap<String, String> = [("k8s_node".to_string(), "node-a".to_string())].into();
        let t = Target { node: "node-a", target: "", labels: &labels, evidence: "e" };
        match ex.run(&restart(RestartHow::Auto), &t).await {
            Err(ActError::Refused(m)) => assert!(m.contains("--kubernetes-pod-selector"), "{m}"),
            Err(e) => panic!("{e}"),
            Ok(d) => panic!("{}", d.message),
        }
        drop(ex);
        assert!(handle.next_request().await.is_none(), "nothing was sent");
    }

    #[tokio::test]
    async fn a_scale_step_reports_the_change_and_its_undo_restores_it() {
        use crate::rules::model::ScaleStep;
        let (ex, mut handle) = kube_executor();
        let scale_obj = |replicas: i32, rv: &str| {
            serde_json::json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": "chi", "namespace": "ch", "resourceVersion": rv}, "spec": {"replicas": replicas}})
        };
        let server = tokio::spawn(async move {
            let mut patches = Vec::new();
            for (read, written) in [((2, "5"), (3, "6")), ((3, "6"), (2, "7"))] {
                let (_, send) = handle.next_request().await.expect("get scale");
                reply(send, scale_obj(read.0, read.1));
                let (req, send) = handle.next_request().await.expect("patch scale");
                assert_eq!(req.method(), http::Method::PATCH);
                assert_eq!(req.uri().path(), "/apis/apps/v1/namespaces/ch/statefulsets/chi/scale");
                patches.push(body_of(req).await);
                reply(send, scale_obj(written.0, written.1));
            }
            patches
        });
        let step =
            Step::Scale(ScaleStep { statefulset: "chi".into(), namespace: "ch".into(), step: 1, min: 1, max: 5 });
        let labels = BTreeMap::new();
        let t = Target { node: "n1", target: "", labels: &labels, evidence: "e" };
        let done = ex.run(&step, &t).await.expect("scaled");
        assert_eq!(done.message, "ch/chi replicas 2 → 3");
        let undo = done.undo.expect("a scale can be undone");
        assert_eq!(ex.undo(&undo).await.expect("ours").expect("restored"), "ch/chi back to 2 replicas");
        assert_eq!(
            server.await.expect("server"),
            vec![
                serde_json::json!({"metadata": {"resourceVersion": "5"}, "spec": {"replicas": 3}}),
                serde_json::json!({"metadata": {"resourceVersion": "6"}, "spec": {"replicas": 2}}),
            ]
        );
    }

    #[tokio::test]
    async fn a_step_no_executor_can_run_says_what_to_configure() {
        let step = Step::Sql(SqlStep { statement: "SYSTEM FLUSH LOGS".into() });
        let labels = BTreeMap::new();
        let t = Target { node: "n1", target: "", labels: &labels, evidence: "e" };
        match executors(false).run(&step, &t).await {
            Err(ActError::Unavailable(m)) => assert!(m.contains("--clickhouse-node-url"), "{m}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("no ClickHouse executor is configured"),
        }
    }
}
