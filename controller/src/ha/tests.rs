//! The lease logic against kube-rs's tower-test mock: exact methods, paths and bodies.

use super::lease::{Attempt, LeaseClient, LeaseSettings};
use super::*;
use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Send = tower_test::mock::SendResponse<Response<Body>>;

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/medic/leases/medic-controller";
const COLLECTION: &str = "/apis/coordination.k8s.io/v1/namespaces/medic/leases";

fn client(identity: &str) -> (LeaseClient, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let settings = LeaseSettings {
        name: "medic-controller".into(),
        namespace: "medic".into(),
        identity: identity.into(),
        duration: Duration::from_secs(15),
    };
    (LeaseClient::new(kube::Client::new(svc, "default"), settings), handle)
}

fn micro(ms: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms).expect("valid time").to_string()
}

/// A MicroTime field as Unix milliseconds.
fn at(v: &Value) -> i64 {
    v.as_str().and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok()).map(|t| t.as_millisecond()).unwrap_or(-1)
}

fn lease(holder: &str, renewed_ms: i64, version: &str, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "medic-controller", "namespace": "medic", "resourceVersion": version,
                     "annotations": {ANNOTATION_HTTP_URL: format!("http://{holder}:7080")}},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "acquireTime": micro(renewed_ms - 60_000), "renewTime": micro(renewed_ms),
                 "leaseTransitions": transitions}
    })
}

fn respond(send: Send, status: u16, v: Value) {
    send.send_response(
        Response::builder().status(status).body(Body::from(serde_json::to_vec(&v).expect("json"))).expect("response"),
    );
}

fn status(code: u16, reason: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": reason, "reason": reason, "code": code})
}

async fn body(req: Request<Body>) -> Value {
    let bytes = req.into_body().collect_bytes().await.expect("request body");
    serde_json::from_slice(&bytes).expect("json body")
}

async fn expect(handle: &mut Handle, method: Method, path: &str) -> (Request<Body>, Send) {
    let (req, send) = handle.next_request().await.expect("a request");
    assert_eq!((req.method(), req.uri().path()), (&method, path));
    (req, send)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn ours() -> Annotations {
    [(ANNOTATION_HTTP_URL.to_string(), "http://10.0.0.1:7080".to_string())].into_iter().collect()
}

#[tokio::test]
async fn a_free_lease_is_acquired_by_creating_it() {
    let (c, mut h) = client("pod-a");
    let server = tokio::spawn(async move {
        let (_, send) = expect(&mut h, Method::GET, PATH).await;
        respond(send, 404, status(404, "NotFound"));
        let (req, send) = expect(&mut h, Method::POST, COLLECTION).await;
        let b = body(req).await;
        assert_eq!(b["spec"]["holderIdentity"], "pod-a");
        assert_eq!(b["spec"]["leaseDurationSeconds"], 15);
        assert!(b["spec"]["renewTime"].is_string() && b["spec"]["acquireTime"].is_string());
        assert_eq!(b["metadata"]["annotations"][ANNOTATION_HTTP_URL], "http://10.0.0.1:7080");
        respond(send, 201, b);
    });
    assert_eq!(c.try_acquire_or_renew(now(), &ours()).await.unwrap(), Attempt::Held { acquired: true });
    server.await.unwrap();
}

#[tokio::test]
async fn the_holder_renews_with_the_resource_version_it_read() {
    let (c, mut h) = client("pod-a");
    let t = now();
    let server = tokio::spawn(async move {
        let (_, send) = expect(&mut h, Method::GET, PATH).await;
        respond(send, 200, lease("pod-a", t - 5_000, "41", 3));
        let (req, send) = expect(&mut h, Method::PUT, PATH).await;
        let b = body(req).await;
        assert_eq!(b["metadata"]["resourceVersion"], "41", "optimistic concurrency: the version that was read");
        assert_eq!(b["spec"]["holderIdentity"], "pod-a");
        assert_eq!(at(&b["spec"]["renewTime"]), t, "renewed now");
        assert_eq!(at(&b["spec"]["acquireTime"]), t - 65_000, "still the original acquisition");
        assert_eq!(b["spec"]["leaseTransitions"], 3, "a renewal is no transition");
        respond(send, 200, b);
    });
    assert_eq!(c.try_acquire_or_renew(t, &ours()).await.unwrap(), Attempt::Held { acquired: false });
    server.await.unwrap();
}

#[tokio::test]
async fn a_lease_another_replica_renewed_recently_is_left_alone() {
    let (c, mut h) = client("pod-b");
    let t = now();
    let server = tokio::spawn(async move {
        let (_, send) = expect(&mut h, Method::GET, PATH).await;
        respond(send, 200, lease("pod-a", t - 14_000, "41", 3));
        // Nothing is written: the next request would be a PUT.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), h.next_request()).await.is_err(),
            "no write to a lease someone else holds"
        );
    });
    match c.try_acquire_or_renew(t, &ours()).await.unwrap() {
        Attempt::HeldByOther { holder, annotations } => {
            assert_eq!(holder, "pod-a");
            assert_eq!(annotations[ANNOTATION_HTTP_URL], "http://pod-a:7080", "followers learn where the leader is");
        }
        other => panic!("{other:?}"),
    }
    server.await.unwrap();
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_counted_as_a_transition() {
    let (c, mut h) = client("pod-b");
    let t = now();
    let server = tokio::spawn(async move {
        let (_, send) = expect(&mut h, Method::GET, PATH).await;
        respond(send, 200, lease("pod-a", t - 16_000, "41", 3));
        let (req, send) = expect(&mut h, Method::PUT, PATH).await;
        let b = body(req).await;
        assert_eq!(b["metadata"]["resourceVersion"], "41");
        assert_eq!(b["spec"]["holderIdentity"], "pod-b");
        assert_eq!(at(&b["spec"]["acquireTime"]), t);
        assert_eq!(b["spec"]["leaseTransitions"], 4);
        assert_eq!(b["metadata"]["annotations"][ANNOTATION_HTTP_URL], "http://10.0.0.1:7080", "ours replaces theirs");
        respond(send, 200, b);
    });
    assert_eq!(c.try_acquire_or_renew(t, &ours()).await.unwrap(), Attempt::Held { acquired: true });
    server.await.unwrap();
}

#[tokio::test]
async fn a_conflict_means_another_replica_wrote_first_and_nobody_holds_it_twice() {
    let (c, mut h) = client("pod-b");
    let t = now();
    let server = tokio::spawn(async move {
        let (_, send) = expect(&mut h, Method::GET, PATH).await;
        respond(send, 200, lease("pod-a", t - 16_000, "41", 3));
        let (_, send) = expect(&mut h, Method::PUT, PATH).await;
        respond(send, 409, status(409, "Conflict"));
        // Reading again shows who won.
        let (_, send) = expect(&mut h, Method::GET, PATH).await;
        respond(send, 200, lease("pod-c", t, "42", 4));
    });
    assert_eq!(c.try_acquire_or_renew(t, &ours()).await.unwrap(), Attempt::Conflict);
    assert!(
        matches!(c.try_acquire_or_renew(t, &ours()).await.unwrap(), Attempt::HeldByOther { holder, .. } if holder == "pod-c")
    );
    server.await.unwrap();
}

#[tokio::test]
async fn forbidden_says_which_rbac_the_controller_needs() {
    let (c, mut h) = client("pod-a");
    let server = tokio::spawn(async move {
        let (_, send) = expect(&mut h, Method::GET, PATH).await;
        respond(send, 403, status(403, "Forbidden"));
    });
    let e = c.try_acquire_or_renew(now(), &ours()).await.unwrap_err().to_string();
    assert!(e.contains("get, create and update on leases"), "{e}");
    server.await.unwrap();
}

fn timing() -> ElectionTiming {
    ElectionTiming {
        renew_every: Duration::from_secs(5),
        retry_every: Duration::from_secs(2),
        renew_deadline: Duration::from_secs(10),
    }
}

/// The whole loop, with the clock paused: it leads, renews, and when the API server stops
/// answering it stops acting before the deadline and steps down at it — before the lease (15 s)
/// could pass to anyone else.
#[tokio::test(start_paused = true)]
async fn the_leader_stops_acting_and_steps_down_when_it_cannot_renew_in_time() {
    let (c, mut h) = client("pod-a");
    let leadership = Leadership::elected("pod-a".into(), Duration::from_secs(10), Duration::from_secs(2));
    let (stop_tx, stop_rx) = watch::channel(false);
    let l = leadership.clone();
    let election = tokio::spawn(run_election(c, timing(), ours(), l, stop_rx));

    let (_, send) = expect(&mut h, Method::GET, PATH).await;
    respond(send, 404, status(404, "NotFound"));
    let (req, send) = expect(&mut h, Method::POST, COLLECTION).await;
    respond(send, 201, body(req).await);
    leadership.wait_for(true).await;
    let acquired = Instant::now();
    assert!(leadership.may_act().is_ok());
    assert_eq!(leadership.view().leader_url.as_deref(), Some("http://10.0.0.1:7080"));

    // One renewal, 5 s later.
    let (_, send) = expect(&mut h, Method::GET, PATH).await;
    assert_eq!(acquired.elapsed(), Duration::from_secs(5));
    let renewed = Instant::now();
    respond(send, 200, lease("pod-a", now(), "2", 0));
    let (req, send) = expect(&mut h, Method::PUT, PATH).await;
    respond(send, 200, body(req).await);

    // From now on the API server fails every request.
    let failing = tokio::spawn(async move {
        while let Some((_, send)) = h.next_request().await {
            respond(send, 500, status(500, "InternalError"));
        }
    });
    tokio::time::sleep_until(renewed + Duration::from_millis(7_900)).await;
    assert!(leadership.is_leader(), "still the leader within the deadline");
    assert!(leadership.may_act().is_ok());
    tokio::time::sleep_until(renewed + Duration::from_millis(8_100)).await;
    let refused = leadership.may_act().unwrap_err();
    assert!(refused.contains("may run out"), "fenced 2 s before the deadline: {refused}");
    leadership.wait_for(false).await;
    let stepped_down = renewed.elapsed();
    assert!(stepped_down <= Duration::from_secs(10), "stepped down at the renew deadline, after {stepped_down:?}");
    assert!(leadership.may_act().is_err());
    let _ = stop_tx.send(true);
    election.await.unwrap();
    failing.abort();
}

#[tokio::test(start_paused = true)]
async fn a_follower_takes_over_once_the_leader_stops_renewing_and_releases_it_at_shutdown() {
    let (c, mut h) = client("pod-b");
    let leadership = Leadership::elected("pod-b".into(), Duration::from_secs(10), Duration::from_secs(2));
    let (stop_tx, stop_rx) = watch::channel(false);
    let election = tokio::spawn(run_election(c, timing(), ours(), leadership.clone(), stop_rx));
    // pod-a renewed 1 s ago (by the wall clock), then died. pod-b retries every 2 s (paused
    // clock) and sees the same lease until, by the wall clock, it has expired.
    let died = now() - 1_000;
    let mut tries = 0;
    loop {
        let (_, send) = expect(&mut h, Method::GET, PATH).await;
        tries += 1;
        if tries < 3 {
            respond(send, 200, lease("pod-a", died, "7", 0));
            assert!(!leadership.is_leader());
            continue;
        }
        // Expired now.
        respond(send, 200, lease("pod-a", died - 15_000, "7", 0));
        let (req, send) = expect(&mut h, Method::PUT, PATH).await;
        let b = body(req).await;
        assert_eq!(b["spec"]["holderIdentity"], "pod-b");
        respond(send, 200, b);
        break;
    }
    leadership.wait_for(true).await;
    assert_eq!(leadership.view().holder.as_deref(), Some("pod-b"));
    let _ = stop_tx.send(true);
    let (_, send) = expect(&mut h, Method::GET, PATH).await;
    respond(send, 200, lease("pod-b", now(), "9", 1));
    let (req, send) = expect(&mut h, Method::PUT, PATH).await;
    let b = body(req).await;
    assert!(b["spec"]["holderIdentity"].is_null(), "released: {b}");
    respond(send, 200, b);
    election.await.unwrap();
    assert!(!leadership.is_leader());
}

#[test]
fn a_single_controller_is_always_the_leader() {
    let l = Leadership::single();
    assert!(l.is_leader());
    assert!(l.may_act().is_ok());
    assert!(!l.view().election);
}
