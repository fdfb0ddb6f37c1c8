//! Kubernetes actions: delete a pod so its controller recreates it (restart), and change a
//! StatefulSet's replicas through its scale subresource, within the rule's bounds. Only these
//! verbs on these resources — the RBAC in deploy/kubernetes grants exactly them.

use super::ActError;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

fn kube_err(e: kube::Error) -> ActError {
    match e {
        kube::Error::Api(s) if s.code == 404 => ActError::Refused(format!("not found: {}", s.message)),
        kube::Error::Api(s) if s.code == 403 => {
            ActError::Refused(format!("forbidden (check Medic's RBAC): {}", s.message))
        }
        other => ActError::Failed(other.to_string()),
    }
}

/// Deletes the pod; its StatefulSet/Deployment brings up a fresh one.
pub async fn restart_pod(client: &Client, namespace: &str, pod: &str) -> Result<String, ActError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    api.delete(pod, &DeleteParams::default()).await.map_err(kube_err)?;
    Ok(format!("deleted pod {namespace}/{pod}; its controller recreates it"))
}

/// The replica change a scale step made, for rolling it back.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleChange {
    pub namespace: String,
    pub statefulset: String,
    pub from: i32,
    pub to: i32,
}

/// Adds `step` replicas (negative: removes), clamped to [min, max].
pub async fn scale(
    client: &Client,
    namespace: &str,
    statefulset: &str,
    step: i32,
    min: u32,
    max: u32,
) -> Result<ScaleChange, ActError> {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let current = api.get_scale(statefulset).await.map_err(kube_err)?.spec.and_then(|s| s.replicas).unwrap_or(0);
    let to = (current + step).clamp(min as i32, max as i32);
    if to == current {
        return Err(ActError::NothingToDo(format!(
            "{namespace}/{statefulset} is at {current} replicas, the bound of [{min}, {max}]"
        )));
    }
    set_replicas(&api, statefulset, to).await?;
    Ok(ScaleChange { namespace: namespace.into(), statefulset: statefulset.into(), from: current, to })
}

pub async fn unscale(client: &Client, change: &ScaleChange) -> Result<(), ActError> {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), &change.namespace);
    set_replicas(&api, &change.statefulset, change.from).await
}

async fn set_replicas(api: &Api<StatefulSet>, name: &str, replicas: i32) -> Result<(), ActError> {
    let patch = serde_json::json!({ "spec": { "replicas": replicas } });
    api.patch_scale(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(kube_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn mock() -> (Client, Handle) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(svc, "default"), handle)
    }

    async fn body_json(req: Request<Body>) -> serde_json::Value {
        let bytes = req.into_body().collect_bytes().await.expect("request body");
        if bytes.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(&bytes).expect("json body") }
    }

    fn respond(handle_send: tower_test::mock::SendResponse<Response<Body>>, v: serde_json::Value) {
        handle_send.send_response(
            Response::builder().body(Body::from(serde_json::to_vec(&v).expect("json"))).expect("response"),
        );
    }

    fn scale_obj(replicas: i32) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {"name": "chi", "namespace": "ch"},
            "spec": {"replicas": replicas}, "status": {"replicas": replicas}
        })
    }

    #[tokio::test]
    async fn restart_deletes_exactly_that_pod() {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("a request");
            assert_eq!(req.method(), Method::DELETE);
            assert_eq!(req.uri().path(), "/api/v1/namespaces/ch/pods/chi-0-0");
            respond(
                send,
                serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "chi-0-0", "namespace": "ch"}}),
            );
        });
        let msg = restart_pod(&client, "ch", "chi-0-0").await.unwrap();
        assert!(msg.contains("deleted pod ch/chi-0-0"));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn scale_reads_the_scale_subresource_and_merge_patches_within_bounds() {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("get scale");
            assert_eq!(req.method(), Method::GET);
            assert_eq!(req.uri().path(), "/apis/apps/v1/namespaces/ch/statefulsets/chi/scale");
            respond(send, scale_obj(3));
            let (req, send) = handle.next_request().await.expect("patch scale");
            assert_eq!(req.method(), Method::PATCH);
            assert_eq!(req.uri().path(), "/apis/apps/v1/namespaces/ch/statefulsets/chi/scale");
            assert_eq!(req.headers()["content-type"], "application/merge-patch+json");
            assert_eq!(body_json(req).await, serde_json::json!({"spec": {"replicas": 4}}));
            respond(send, scale_obj(4));
        });
        let change = scale(&client, "ch", "chi", 2, 1, 4).await.unwrap();
        assert_eq!((change.from, change.to), (3, 4), "3 + 2 clamped to max 4");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn at_its_bound_nothing_is_patched_and_forbidden_says_check_rbac() {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.expect("get scale");
            respond(send, scale_obj(4));
            let (_, send) = handle.next_request().await.expect("delete");
            send.send_response(
                Response::builder()
                    .status(403)
                    .body(Body::from(
                        serde_json::to_vec(&serde_json::json!({
                            "apiVersion": "v1", "kind": "Status", "status": "Failure",
                            "message": "pods is forbidden", "reason": "Forbidden", "code": 403
                        }))
                        .unwrap(),
                    ))
                    .unwrap(),
            );
        });
        assert!(matches!(scale(&client, "ch", "chi", 1, 1, 4).await, Err(ActError::NothingToDo(_))));
        match restart_pod(&client, "ch", "x").await {
            Err(ActError::Refused(m)) => assert!(m.contains("RBAC"), "{m}"),
            other => panic!("{other:?}"),
        }
        server.await.unwrap();
    }
}
