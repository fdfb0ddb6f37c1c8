//! Kubernetes actions: delete a pod so its controller recreates it (restart), and change a
//! StatefulSet's replicas through its scale subresource, within the rule's bounds. Only these
//! verbs on these resources — the RBAC in deploy/kubernetes grants exactly them.
//!
//! Every write is conditional on the object Medic looked at: a pod is deleted only while it is
//! still the pod that was chosen (its uid, from the agent's labels or from the pod found on the
//! node), and replicas are patched only while the StatefulSet is unchanged since they were read
//! (its resourceVersion), so Medic never deletes a pod's same-named successor nor overwrites
//! someone else's scaling.

use super::ActError;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};

/// Shown in the StatefulSet's managedFields, so `kubectl get -o yaml --show-managed-fields` tells
/// who set the replicas.
const FIELD_MANAGER: &str = "medic";

/// Reads before a scale gives up when the StatefulSet keeps changing under it (each status update
/// of a rolling StatefulSet bumps its resourceVersion, so one conflict is ordinary).
const SCALE_ATTEMPTS: u32 = 3;

/// The pod a restart deletes.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    /// The diagnosed pod's uid: the delete is refused by the API server once the pod was replaced
    /// (a StatefulSet's successor has the same name, but never the same uid).
    pub uid: Option<String>,
}

fn api_status(e: &kube::Error) -> Option<(u16, &str)> {
    match e {
        kube::Error::Api(s) => Some((s.code, s.message.as_str())),
        _ => None,
    }
}

/// The ClickHouse pod on Kubernetes node `node`: the one pod matching `selector` there, in any
/// namespace, that is running and not already terminating. Never a guess: none, or several,
/// is an error that says what to set.
pub async fn pod_on_node(client: &Client, node: &str, selector: &str) -> Result<PodRef, ActError> {
    // A node name is a DNS subdomain; anything else would change the field selector's meaning.
    if node.is_empty() || !node.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.') {
        return Err(ActError::Refused(format!("{node:?} is not a Kubernetes node name (label k8s_node)")));
    }
    let api: Api<Pod> = Api::all(client.clone());
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}")).labels(selector);
    let pods = api.list(&lp).await.map_err(|e| match api_status(&e) {
        Some((403, m)) => ActError::Refused(format!(
            "forbidden: {m}. Medic's service account needs `list` on pods to find node {node}'s ClickHouse pod \
             (ClusterRole medic-controller-remediate in deploy/kubernetes/base/controller-rbac.yaml)"
        )),
        Some((400, m)) => ActError::Refused(format!(
            "kubernetes_pod_selector {selector:?} is not a valid label selector ({m}); e.g. \
             app.kubernetes.io/name=clickhouse"
        )),
        _ => ActError::Failed(format!("listing the pods on node {node}: {e}")),
    })?;
    let pod_ref = |p: &Pod| PodRef {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        uid: p.metadata.uid.clone(),
    };
    let terminating = |p: &&Pod| p.metadata.deletion_timestamp.is_some();
    let finished =
        |p: &&Pod| matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded") | Some("Failed"));
    let live: Vec<PodRef> = pods.items.iter().filter(|p| !terminating(p) && !finished(p)).map(pod_ref).collect();
    match live.as_slice() {
        [one] => Ok(one.clone()),
        [] => match pods.items.iter().find(terminating) {
            Some(p) => {
                let p = pod_ref(p);
                Err(ActError::NothingToDo(format!(
                    "pod {}/{} on node {node} is already terminating; its controller recreates it",
                    p.namespace, p.name
                )))
            }
            None => Err(ActError::Unavailable(format!(
                "no running pod matches {selector:?} on Kubernetes node {node}: set kubernetes_pod_selector to \
                 your ClickHouse pods' labels (see `kubectl get pods -A -o wide --show-labels --field-selector \
                 spec.nodeName={node}`)"
            ))),
        },
        many => Err(ActError::Refused(format!(
            "{} running pods match {selector:?} on node {node} ({}); Medic does not pick one: narrow \
             kubernetes_pod_selector so that it matches only ClickHouse servers",
            many.len(),
            many.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Deletes the pod; its StatefulSet/Deployment brings up a fresh one. No grace period is set, so
/// the pod's own `terminationGracePeriodSeconds` lets ClickHouse shut down cleanly.
pub async fn restart_pod(client: &Client, pod: &PodRef) -> Result<String, ActError> {
    let PodRef { namespace: ns, name, uid } = pod;
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        preconditions: uid.as_ref().map(|uid| Preconditions { uid: Some(uid.clone()), resource_version: None }),
        ..DeleteParams::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(format!("deleted pod {ns}/{name}; its controller recreates it")),
        Err(e) => Err(match api_status(&e) {
            Some((404, _)) => ActError::NothingToDo(format!(
                "pod {ns}/{name} does not exist, so nothing was deleted: it was already deleted (its controller \
                 recreates it), or the node's labels k8s_namespace/k8s_pod name no pod (check with \
                 `kubectl -n {ns} get pod {name}`)"
            )),
            Some((409, m)) if uid.is_some() => ActError::NothingToDo(format!(
                "pod {ns}/{name} was replaced since it was diagnosed (uid {} is gone: {m}); its successor is left \
                 alone",
                uid.as_deref().unwrap_or_default()
            )),
            Some((403, m)) => ActError::Refused(format!(
                "forbidden: {m}. Medic's service account needs `delete` on pods in namespace {ns} (ClusterRole \
                 medic-controller-remediate in deploy/kubernetes/base/controller-rbac.yaml, bound there)"
            )),
            Some((code, m)) if (400..500).contains(&code) => {
                ActError::Refused(format!("deleting pod {ns}/{name} was refused ({code}): {m}"))
            }
            _ => ActError::Failed(format!("deleting pod {ns}/{name}: {e}")),
        }),
    }
}

/// The replica change a scale step made, for rolling it back.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleChange {
    pub namespace: String,
    pub statefulset: String,
    pub from: i32,
    pub to: i32,
}

/// The replica count a step of `step` moves `current` to, within [min, max], or why it moves
/// nothing. A step only ever moves in its own direction: when the StatefulSet is already past the
/// bound on that side (someone scaled it by hand, or the rule's bounds changed), clamping would
/// move it the other way, so that is nothing to do rather than a scale-down from a scale-up.
pub fn plan_scale(current: i32, step: i32, min: u32, max: u32) -> Result<i32, String> {
    let (lo, hi) = (i32::try_from(min).unwrap_or(i32::MAX), i32::try_from(max).unwrap_or(i32::MAX));
    if lo > hi {
        return Err(format!("the rule's min ({min}) is above its max ({max}): fix the rule"));
    }
    let to = current.saturating_add(step).clamp(lo, hi);
    match step {
        0 => Err("the step is 0, which changes nothing: use a positive step to scale up, a negative one down".into()),
        s if s > 0 && to <= current => Err(format!(
            "it has {current} replicas, already at or above the rule's max {max}; a scale-up never removes replicas \
             (raise max to allow more)"
        )),
        s if s < 0 && to >= current => Err(format!(
            "it has {current} replicas, already at or below the rule's min {min}; a scale-down never adds replicas \
             (lower min to allow fewer)"
        )),
        _ => Ok(to),
    }
}

/// Adds `step` replicas (negative: removes), within [min, max] and never against the step's
/// direction (see [`plan_scale`]).
pub async fn scale(
    client: &Client,
    namespace: &str,
    statefulset: &str,
    step: i32,
    min: u32,
    max: u32,
) -> Result<ScaleChange, ActError> {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let what = format!("StatefulSet {namespace}/{statefulset}");
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (current, rv) = read_replicas(&api, namespace, statefulset, &what).await?;
        let to = plan_scale(current, step, min, max).map_err(|why| ActError::NothingToDo(format!("{what}: {why}")))?;
        match patch_replicas(&api, statefulset, rv, to).await {
            Ok(()) => {
                return Ok(ScaleChange {
                    namespace: namespace.into(),
                    statefulset: statefulset.into(),
                    from: current,
                    to,
                });
            }
            Err(e) if is_conflict(&e) && attempt < SCALE_ATTEMPTS => continue,
            Err(e) => return Err(scale_err(e, &what, namespace)),
        }
    }
}

/// Puts back the replica count a scale step replaced — only while the StatefulSet still has the
/// count Medic set: if someone (or something) rescaled it since, theirs is the newer decision.
pub async fn unscale(client: &Client, change: &ScaleChange) -> Result<(), ActError> {
    let ScaleChange { namespace, statefulset, from, to } = change;
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let what = format!("StatefulSet {namespace}/{statefulset}");
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (current, rv) = read_replicas(&api, namespace, statefulset, &what).await?;
        if current != *to {
            return Err(ActError::NothingToDo(format!(
                "{what} has {current} replicas, not the {to} Medic set: it was rescaled since, so Medic leaves it \
                 (set it back to {from} by hand if that is still wanted)"
            )));
        }
        match patch_replicas(&api, statefulset, rv, *from).await {
            Ok(()) => return Ok(()),
            Err(e) if is_conflict(&e) && attempt < SCALE_ATTEMPTS => continue,
            Err(e) => return Err(scale_err(e, &what, namespace)),
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(api_status(e), Some((409, _)))
}

fn scale_err(e: kube::Error, what: &str, ns: &str) -> ActError {
    match api_status(&e) {
        Some((404, _)) => ActError::Refused(format!(
            "{what} not found: check the rule's scale.namespace and scale.statefulset (`kubectl -n {ns} get \
             statefulsets`)"
        )),
        Some((403, m)) => ActError::Refused(format!(
            "forbidden: {m}. Medic's service account needs `get` and `patch` on statefulsets/scale in namespace \
             {ns} (ClusterRole medic-controller-remediate in deploy/kubernetes/base/controller-rbac.yaml, bound \
             there)"
        )),
        Some((409, m)) => ActError::Failed(format!(
            "{what} kept changing while Medic scaled it ({SCALE_ATTEMPTS} attempts, last: {m}); something else is \
             scaling it (an operator, an autoscaler or a person), so Medic changed nothing"
        )),
        Some((code, m)) if (400..500).contains(&code) => {
            ActError::Refused(format!("scaling {what} was refused ({code}): {m}"))
        }
        _ => ActError::Failed(format!("scaling {what}: {e}")),
    }
}

/// The scale subresource's replicas and the resourceVersion they were read at.
async fn read_replicas(
    api: &Api<StatefulSet>,
    ns: &str,
    name: &str,
    what: &str,
) -> Result<(i32, Option<String>), ActError> {
    let s = api.get_scale(name).await.map_err(|e| scale_err(e, what, ns))?;
    // The API omits replicas when they are 0.
    Ok((s.spec.and_then(|s| s.replicas).unwrap_or(0), s.metadata.resource_version))
}

/// A merge patch carrying the resourceVersion that was read, so the API server applies it only
/// to that version (409 Conflict otherwise).
async fn patch_replicas(
    api: &Api<StatefulSet>,
    name: &str,
    resource_version: Option<String>,
    replicas: i32,
) -> Result<(), kube::Error> {
    let mut patch = serde_json::json!({ "spec": { "replicas": replicas } });
    if let Some(rv) = resource_version {
        patch["metadata"] = serde_json::json!({ "resourceVersion": rv });
    }
    let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    api.patch_scale(name, &pp, &Patch::Merge(&patch)).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock::SendResponse;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    const POD: &str = "/api/v1/namespaces/ch/pods/chi-0-0";
    const SCALE: &str = "/apis/apps/v1/namespaces/ch/statefulsets/chi/scale";

    fn mock() -> (Client, Handle) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(svc, "default"), handle)
    }

    /// What reached the API server: method, path, query, content type and JSON body (Null when empty).
    #[derive(Debug, PartialEq)]
    struct Sent {
        method: Method,
        path: String,
        query: String,
        content_type: String,
        body: Value,
    }

    fn sent(method: Method, path: &str, query: &str, content_type: &str, body: Value) -> Sent {
        Sent { method, path: path.into(), query: query.into(), content_type: content_type.into(), body }
    }

    async fn next(handle: &mut Handle) -> (Sent, SendResponse<Response<Body>>) {
        let (req, send) = handle.next_request().await.expect("a request");
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("json body") };
        let header = |h| parts.headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let sent = Sent {
            method: parts.method,
            path: parts.uri.path().into(),
            query: parts.uri.query().unwrap_or_default().into(),
            content_type: header(http::header::CONTENT_TYPE),
            body,
        };
        (sent, send)
    }

    /// The client was dropped without sending anything more.
    async fn no_more(handle: &mut Handle) {
        if let Some((req, _)) = handle.next_request().await {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }

    fn reply(send: SendResponse<Response<Body>>, code: u16, v: Value) {
        let body = Body::from(serde_json::to_vec(&v).expect("json"));
        send.send_response(Response::builder().status(code).body(body).expect("response"));
    }

    fn failure(code: u16, reason: &str, message: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": message, "reason": reason, "code": code})
    }

    fn pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "chi-0-0", "namespace": "ch", "uid": "u-1"}})
    }

    fn scale_obj(replicas: i32, rv: &str) -> Value {
        json!({
            "apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {"name": "chi", "namespace": "ch", "resourceVersion": rv},
            "spec": {"replicas": replicas}, "status": {"replicas": replicas}
        })
    }

    fn get_scale() -> Sent {
        sent(Method::GET, SCALE, "", "", Value::Null)
    }

    fn patch_scale(rv: &str, replicas: i32) -> Sent {
        sent(
            Method::PATCH,
            SCALE,
            // kube-rs's query builder leaves an empty first pair; the API server skips it.
            "&fieldManager=medic",
            "application/merge-patch+json",
            json!({"metadata": {"resourceVersion": rv}, "spec": {"replicas": replicas}}),
        )
    }

    fn diagnosed(uid: Option<&str>) -> PodRef {
        PodRef { namespace: "ch".into(), name: "chi-0-0".into(), uid: uid.map(str::to_string) }
    }

    /// Runs `scale(ch/chi, step, min, max)` against an API server that answers `replies` in turn,
    /// and returns its result with every request it sent.
    async fn scale_against(
        step: i32,
        min: u32,
        max: u32,
        replies: Vec<(u16, Value)>,
    ) -> (Result<ScaleChange, ActError>, Vec<Sent>) {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for (code, v) in replies {
                let (s, send) = next(&mut handle).await;
                seen.push(s);
                reply(send, code, v);
            }
            no_more(&mut handle).await;
            seen
        });
        let r = scale(&client, "ch", "chi", step, min, max).await;
        drop(client);
        (r, server.await.expect("server"))
    }

    async fn unscale_against(change: &ScaleChange, replies: Vec<(u16, Value)>) -> (Result<(), ActError>, Vec<Sent>) {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for (code, v) in replies {
                let (s, send) = next(&mut handle).await;
                seen.push(s);
                reply(send, code, v);
            }
            no_more(&mut handle).await;
            seen
        });
        let r = unscale(&client, change).await;
        drop(client);
        (r, server.await.expect("server"))
    }

    async fn restart_against(target: PodRef, code: u16, v: Value) -> (Result<String, ActError>, Sent) {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            let (s, send) = next(&mut handle).await;
            reply(send, code, v);
            no_more(&mut handle).await;
            s
        });
        let r = restart_pod(&client, &target).await;
        drop(client);
        (r, server.await.expect("server"))
    }

    fn change(from: i32, to: i32) -> ScaleChange {
        ScaleChange { namespace: "ch".into(), statefulset: "chi".into(), from, to }
    }

    #[tokio::test]
    async fn restart_deletes_exactly_the_diagnosed_pod_on_condition_it_still_has_its_uid() {
        let (r, req) = restart_against(diagnosed(Some("u-1")), 200, pod()).await;
        assert_eq!(req, sent(Method::DELETE, POD, "", "application/json", json!({"preconditions": {"uid": "u-1"}})));
        assert_eq!(r.expect("deleted"), "deleted pod ch/chi-0-0; its controller recreates it");
    }

    #[tokio::test]
    async fn without_a_known_uid_the_delete_sends_empty_options_so_the_pods_own_grace_period_applies() {
        let (r, req) = restart_against(diagnosed(None), 200, pod()).await;
        assert_eq!(req, sent(Method::DELETE, POD, "", "application/json", json!({})));
        assert!(r.is_ok(), "{r:?}");
    }

    #[tokio::test]
    async fn a_pod_replaced_since_it_was_diagnosed_is_left_alone() {
        let conflict =
            failure(409, "Conflict", "Precondition failed: UID in precondition: u-1, UID in object meta: u-2");
        match restart_against(diagnosed(Some("u-1")), 409, conflict).await.0 {
            Err(ActError::NothingToDo(m)) => {
                assert!(m.contains("pod ch/chi-0-0 was replaced since it was diagnosed (uid u-1 is gone"), "{m}");
                assert!(m.contains("its successor is left alone"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_pod_that_is_already_gone_deletes_nothing_and_says_what_to_check() {
        match restart_against(diagnosed(Some("u-1")), 404, failure(404, "NotFound", "pods \"chi-0-0\" not found"))
            .await
            .0
        {
            Err(ActError::NothingToDo(m)) => {
                assert!(m.contains("pod ch/chi-0-0 does not exist, so nothing was deleted"), "{m}");
                assert!(m.contains("kubectl -n ch get pod chi-0-0"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_forbidden_delete_names_the_permission_and_where_it_is_granted() {
        let forbidden = failure(403, "Forbidden", "pods \"chi-0-0\" is forbidden: User cannot delete resource");
        match restart_against(diagnosed(None), 403, forbidden).await.0 {
            Err(ActError::Refused(m)) => {
                assert!(m.contains("needs `delete` on pods in namespace ch"), "{m}");
                assert!(m.contains("controller-rbac.yaml"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    fn listed(name: &str, ns: &str, uid: &str, phase: &str, terminating: bool) -> Value {
        let mut p = json!({
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "status": {"phase": phase}
        });
        if terminating {
            p["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        p
    }

    async fn find_against(items: Vec<Value>) -> (Result<PodRef, ActError>, Sent) {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            let (s, send) = next(&mut handle).await;
            reply(send, 200, json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}));
            no_more(&mut handle).await;
            s
        });
        let r = pod_on_node(&client, "node-a", "app.kubernetes.io/name=clickhouse").await;
        drop(client);
        (r, server.await.expect("server"))
    }

    #[tokio::test]
    async fn the_nodes_clickhouse_pod_is_found_by_node_name_and_selector_with_its_uid() {
        let (r, req) = find_against(vec![
            listed("chi-0-0", "ch", "u-old", "Failed", false),
            listed("chi-0-0", "ch", "u-1", "Running", false),
        ])
        .await;
        assert_eq!(
            req,
            sent(
                Method::GET,
                "/api/v1/pods",
                "&fieldSelector=spec.nodeName%3Dnode-a&labelSelector=app.kubernetes.io%2Fname%3Dclickhouse",
                "",
                Value::Null
            )
        );
        assert_eq!(r.expect("found"), diagnosed(Some("u-1")), "the failed pod is not the running server");
    }

    #[tokio::test]
    async fn several_matching_pods_on_a_node_are_refused_rather_than_guessed() {
        let (r, _) = find_against(vec![
            listed("chi-0-0", "ch", "u-1", "Running", false),
            listed("chi-other-0-0", "ch2", "u-2", "Pending", false),
        ])
        .await;
        match r {
            Err(ActError::Refused(m)) => {
                assert!(m.contains("2 running pods match \"app.kubernetes.io/name=clickhouse\" on node node-a"), "{m}");
                assert!(m.contains("(ch/chi-0-0, ch2/chi-other-0-0)"), "{m}");
                assert!(m.contains("narrow kubernetes_pod_selector"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn no_matching_pod_on_a_node_says_how_to_find_the_right_selector() {
        match find_against(vec![]).await.0 {
            Err(ActError::Unavailable(m)) => {
                assert!(m.contains(
                    "no running pod matches \"app.kubernetes.io/name=clickhouse\" on Kubernetes node node-a"
                ));
                assert!(m.contains("kubectl get pods -A -o wide --show-labels --field-selector spec.nodeName=node-a"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_pod_that_is_already_terminating_is_not_deleted_again() {
        match find_against(vec![listed("chi-0-0", "ch", "u-1", "Running", true)]).await.0 {
            Err(ActError::NothingToDo(m)) => {
                assert_eq!(m, "pod ch/chi-0-0 on node node-a is already terminating; its controller recreates it")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_node_name_that_could_alter_the_field_selector_is_refused_before_any_request() {
        let (client, mut handle) = mock();
        let r = pod_on_node(&client, "node-a,metadata.name=x", "app=clickhouse").await;
        assert!(matches!(r, Err(ActError::Refused(_))), "{r:?}");
        drop(client);
        no_more(&mut handle).await;
    }

    #[tokio::test]
    async fn a_scale_up_reads_the_scale_subresource_and_patches_it_clamped_to_max() {
        let (r, reqs) = scale_against(2, 1, 4, vec![(200, scale_obj(3, "7")), (200, scale_obj(4, "8"))]).await;
        assert_eq!(reqs, vec![get_scale(), patch_scale("7", 4)]);
        assert_eq!(r.expect("scaled"), change(3, 4), "3 + 2 clamped to max 4");
    }

    #[tokio::test]
    async fn a_scale_down_patches_it_clamped_to_min() {
        let (r, reqs) = scale_against(-2, 2, 6, vec![(200, scale_obj(3, "7")), (200, scale_obj(2, "8"))]).await;
        assert_eq!(reqs, vec![get_scale(), patch_scale("7", 2)]);
        assert_eq!(r.expect("scaled"), change(3, 2), "3 - 2 clamped to min 2");
    }

    #[tokio::test]
    async fn a_scale_up_of_a_statefulset_already_above_max_removes_nothing() {
        let (r, reqs) = scale_against(1, 1, 4, vec![(200, scale_obj(6, "7"))]).await;
        assert_eq!(reqs, vec![get_scale()], "no patch");
        match r {
            Err(ActError::NothingToDo(m)) => assert_eq!(
                m,
                "StatefulSet ch/chi: it has 6 replicas, already at or above the rule's max 4; a scale-up never \
                 removes replicas (raise max to allow more)"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_scale_down_of_a_statefulset_already_below_min_adds_nothing() {
        let (r, reqs) = scale_against(-1, 2, 4, vec![(200, scale_obj(1, "7"))]).await;
        assert_eq!(reqs, vec![get_scale()], "no patch");
        match r {
            Err(ActError::NothingToDo(m)) => assert_eq!(
                m,
                "StatefulSet ch/chi: it has 1 replicas, already at or below the rule's min 2; a scale-down never \
                 adds replicas (lower min to allow fewer)"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_step_moves_replicas_only_in_its_own_direction_and_within_bounds() {
        // (current, step, min, max) → replicas after
        for (current, step, min, max, to) in [
            (3, 1, 1, 5, 4),
            (3, 5, 1, 5, 5), // up, clamped to max
            (0, 1, 2, 5, 2), // up from below min: to min, still up
            (3, -1, 1, 5, 2),
            (3, -5, 1, 5, 1), // down, clamped to min
            (9, -1, 1, 5, 5), // down from above max: to max, still down
            (i32::MAX, -1, 0, u32::MAX, i32::MAX - 1),
        ] {
            assert_eq!(plan_scale(current, step, min, max), Ok(to), "{current} {step:+} in [{min}, {max}]");
        }
        for (current, step, min, max) in [(5, 1, 1, 5), (6, 1, 1, 5), (1, -1, 1, 5), (0, -1, 1, 5), (3, 0, 1, 5)] {
            assert!(plan_scale(current, step, min, max).is_err(), "{current} {step:+} in [{min}, {max}] moves nothing");
        }
        assert!(plan_scale(3, 1, 5, 1).unwrap_err().contains("min (5) is above its max (1)"));
    }

    #[tokio::test]
    async fn a_scale_that_conflicts_rereads_and_plans_again_from_the_new_count() {
        let conflict =
            failure(409, "Conflict", "the object has been modified; please apply your changes to the latest version");
        let (r, reqs) = scale_against(
            1,
            1,
            5,
            vec![(200, scale_obj(3, "7")), (409, conflict), (200, scale_obj(4, "9")), (200, scale_obj(5, "10"))],
        )
        .await;
        assert_eq!(reqs, vec![get_scale(), patch_scale("7", 4), get_scale(), patch_scale("9", 5)]);
        assert_eq!(r.expect("scaled"), change(4, 5), "the rollback restores what the successful write replaced");
    }

    #[tokio::test]
    async fn a_scale_that_keeps_conflicting_gives_up_after_three_attempts_having_changed_nothing() {
        let conflict = || (409, failure(409, "Conflict", "the object has been modified"));
        let (r, reqs) = scale_against(
            1,
            1,
            5,
            vec![
                (200, scale_obj(3, "7")),
                conflict(),
                (200, scale_obj(3, "8")),
                conflict(),
                (200, scale_obj(3, "9")),
                conflict(),
            ],
        )
        .await;
        assert_eq!(
            reqs,
            vec![get_scale(), patch_scale("7", 4), get_scale(), patch_scale("8", 4), get_scale(), patch_scale("9", 4)]
        );
        match r {
            Err(ActError::Failed(m)) => {
                assert!(m.contains("StatefulSet ch/chi kept changing while Medic scaled it (3 attempts"), "{m}");
                assert!(m.contains("so Medic changed nothing"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_statefulset_names_the_rule_fields_to_check() {
        let (r, reqs) =
            scale_against(1, 1, 5, vec![(404, failure(404, "NotFound", "statefulsets.apps \"chi\" not found"))]).await;
        assert_eq!(reqs, vec![get_scale()]);
        match r {
            Err(ActError::Refused(m)) => {
                assert!(
                    m.contains("StatefulSet ch/chi not found: check the rule's scale.namespace and scale.statefulset")
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_forbidden_scale_names_the_permission_and_where_it_is_granted() {
        let forbidden = failure(403, "Forbidden", "statefulsets.apps \"chi\" is forbidden");
        let (r, reqs) = scale_against(1, 1, 5, vec![(200, scale_obj(3, "7")), (403, forbidden)]).await;
        assert_eq!(reqs, vec![get_scale(), patch_scale("7", 4)]);
        match r {
            Err(ActError::Refused(m)) => {
                assert!(m.contains("needs `get` and `patch` on statefulsets/scale in namespace ch"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn rollback_restores_the_previous_replica_count_with_a_conditional_patch() {
        let (r, reqs) =
            unscale_against(&change(3, 4), vec![(200, scale_obj(4, "12")), (200, scale_obj(3, "13"))]).await;
        assert_eq!(reqs, vec![get_scale(), patch_scale("12", 3)]);
        assert!(r.is_ok(), "{r:?}");
    }

    #[tokio::test]
    async fn rollback_of_a_scale_down_adds_the_removed_replicas_back() {
        let (r, reqs) =
            unscale_against(&change(5, 3), vec![(200, scale_obj(3, "12")), (200, scale_obj(5, "13"))]).await;
        assert_eq!(reqs, vec![get_scale(), patch_scale("12", 5)]);
        assert!(r.is_ok(), "{r:?}");
    }

    #[tokio::test]
    async fn rollback_leaves_a_statefulset_that_was_rescaled_since() {
        let (r, reqs) = unscale_against(&change(3, 4), vec![(200, scale_obj(6, "12"))]).await;
        assert_eq!(reqs, vec![get_scale()], "no patch");
        match r {
            Err(ActError::NothingToDo(m)) => assert_eq!(
                m,
                "StatefulSet ch/chi has 6 replicas, not the 4 Medic set: it was rescaled since, so Medic leaves it \
                 (set it back to 3 by hand if that is still wanted)"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_rollback_that_conflicts_rereads_before_writing_again() {
        let conflict = failure(409, "Conflict", "the object has been modified");
        let (r, reqs) = unscale_against(
            &change(3, 4),
            vec![(200, scale_obj(4, "12")), (409, conflict), (200, scale_obj(4, "14")), (200, scale_obj(3, "15"))],
        )
        .await;
        assert_eq!(reqs, vec![get_scale(), patch_scale("12", 3), get_scale(), patch_scale("14", 3)]);
        assert!(r.is_ok(), "{r:?}");
    }
}
