//! Watches: live events, history replay, 410s, bookmarks, timeouts, broken
//! streams and restarts.

mod common;

use std::time::{Duration, Instant};

use apiserver::{ApiServer, Options};
use common::{get_json, rv_of, service, End, Watch, TIMEOUT};
use serde_json::json;

/// The query kube 5's watcher sends after its initial list (default config).
fn kube_watch(path: &str, rv: &str) -> String {
    format!("{path}?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion={rv}")
}

async fn list_rv(s: &ApiServer, path: &str) -> String {
    let (_, list) = get_json(s.addr(), path).await;
    list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn watch_delivers_added_modified_deleted() {
    let s = ApiServer::start(Options::default()).await.unwrap();
    s.apply(service("default", "old", "10.96.0.1"));
    let rv = list_rv(&s, "/api/v1/services?limit=500").await;
    let mut w = Watch::open(s.addr(), &kube_watch("/api/v1/services", &rv)).await;
    assert!(s.wait_until(TIMEOUT, |st| st.active_watches == 1).await);

    let added_rv = s.apply(service("default", "web", "10.96.0.10"));
    let obj = w.expect("ADDED").await;
    assert_eq!(obj["kind"], "Service");
    assert_eq!(obj["apiVersion"], "v1");
    assert_eq!(obj["metadata"]["name"], "web");
    assert_eq!(obj["metadata"]["resourceVersion"], added_rv.as_str());
    assert!(rv_of(&obj) > rv.parse().unwrap());

    // Other kinds do not show up on a Service watch.
    s.apply(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "s", "namespace": "default" } }));

    s.apply(service("default", "web", "10.96.0.11"));
    let obj = w.expect("MODIFIED").await;
    assert_eq!(obj["spec"]["clusterIP"], "10.96.0.11");

    assert!(s.delete("v1", "Service", Some("default"), "web"));
    let obj = w.expect("DELETED").await;
    assert_eq!(obj["metadata"]["name"], "web");
    assert_eq!(obj["metadata"]["resourceVersion"], s.resource_version());
    w.expect_silence(Duration::from_millis(100)).await;
    assert_eq!(s.stats().watches, 1);
}

#[tokio::test]
async fn namespaced_watch_only_sees_its_namespace() {
    let s = ApiServer::start(Options::default()).await.unwrap();
    let rv = s.resource_version();
    let mut w = Watch::open(
        s.addr(),
        &kube_watch("/api/v1/namespaces/web/services", &rv),
    )
    .await;
    s.apply(service("other", "a", "10.96.0.1"));
    s.apply(service("web", "b", "10.96.0.2"));
    let obj = w.expect("ADDED").await;
    assert_eq!(obj["metadata"]["namespace"], "web");
    assert_eq!(obj["metadata"]["name"], "b");
    w.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn watch_replays_history_from_older_version() {
    let s = ApiServer::start(Options::default()).await.unwrap();
    let rv0 = s.apply(service("default", "a", "10.96.0.1"));
    s.apply(service("default", "b", "10.96.0.2"));
    s.apply(service("default", "a", "10.96.0.3"));
    s.delete("v1", "Service", Some("default"), "b");
    let mut w = Watch::open(s.addr(), &kube_watch("/api/v1/services", &rv0)).await;
    assert_eq!(w.expect("ADDED").await["metadata"]["name"], "b");
    assert_eq!(w.expect("MODIFIED").await["spec"]["clusterIP"], "10.96.0.3");
    assert_eq!(w.expect("DELETED").await["metadata"]["name"], "b");
    // Live events follow the replay.
    s.apply(service("default", "c", "10.96.0.4"));
    assert_eq!(w.expect("ADDED").await["metadata"]["name"], "c");
}

#[tokio::test]
async fn watch_from_compacted_version_gets_410() {
    let s = ApiServer::start(Options::default()).await.unwrap();
    let old = s.apply(service("default", "a", "10.96.0.1"));
    s.apply(service("default", "a", "10.96.0.2"));
    s.compact();
    let mut w = Watch::open(s.addr(), &kube_watch("/api/v1/services", &old)).await;
    let status = w.expect("ERROR").await;
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "Expired");
    assert_eq!(status["code"], 410);
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains("too old resource version"));
    assert_eq!(w.next().await, Err(End::Clean));

    // From the current version it works.
    let now = s.resource_version();
    let mut w = Watch::open(s.addr(), &kube_watch("/api/v1/services", &now)).await;
    s.apply(service("default", "b", "10.96.0.3"));
    assert_eq!(w.expect("ADDED").await["metadata"]["name"], "b");
}

#[tokio::test]
async fn bounded_history_expires_old_versions() {
    let s = ApiServer::start(Options {
        history: 2,
        ..Options::default()
    })
    .await
    .unwrap();
    let first = s.apply(service("default", "a", "10.96.0.1"));
    for i in 2..=5 {
        s.apply(service("default", "a", &format!("10.96.0.{i}")));
    }
    let mut w = Watch::open(s.addr(), &kube_watch("/api/v1/services", &first)).await;
    assert_eq!(w.expect("ERROR").await["code"], 410);
    // The last two events are still there.
    let recent = (rv_of(&s.get("v1", "Service", None, "a").unwrap()) - 2).to_string();
    let mut w = Watch::open(s.addr(), &kube_watch("/api/v1/services", &recent)).await;
    assert_eq!(w.expect("MODIFIED").await["spec"]["clusterIP"], "10.96.0.4");
    assert_eq!(w.expect("MODIFIED").await["spec"]["clusterIP"], "10.96.0.5");
}

#[tokio::test]
async fn drop_watches_breaks_streams_mid_body() {
    let s = ApiServer::start(Options::default()).await.unwrap();
    let rv = s.resource_version();
    let mut w1 = Watch::open(s.addr(), &kube_watch("/api/v1/services", &rv)).await;
    let mut w2 = Watch::open(s.addr(), &kube_watch("/api/v1/nodes", &rv)).await;
    s.apply(service("default", "a", "10.96.0.1"));
    w1.expect("ADDED").await;
    assert!(s.wait_until(TIMEOUT, |st| st.active_watches == 2).await);
    s.drop_watches();
    assert_eq!(w1.next().await, Err(End::Broken));
    assert_eq!(w2.next().await, Err(End::Broken));
    assert!(s.wait_until(TIMEOUT, |st| st.active_watches == 0).await);

    // close_watches ends them cleanly instead.
    let mut w3 = Watch::open(
        s.addr(),
        &kube_watch("/api/v1/services", &s.resource_version()),
    )
    .await;
    s.close_watches();
    assert_eq!(w3.next().await, Err(End::Clean));
}

#[tokio::test]
async fn watch_honours_timeout_seconds() {
    let s = ApiServer::start(Options::default()).await.unwrap();
    let started = Instant::now();
    let path = format!(
        "/api/v1/services?watch=true&timeoutSeconds=1&resourceVersion={}",
        s.resource_version()
    );
    let mut w = Watch::open(s.addr(), &path).await;
    assert_eq!(w.next().await, Err(End::Clean));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn bookmarks_are_periodic_and_on_demand() {
    let s = ApiServer::start(Options {
        bookmark_interval: Some(Duration::from_millis(100)),
        ..Options::default()
    })
    .await
    .unwrap();
    let rv = s.apply(service("default", "a", "10.96.0.1"));
    let path = "/apis/discovery.k8s.io/v1/endpointslices";
    let mut w = Watch::open(s.addr(), &kube_watch(path, &rv)).await;
    let bookmark = w.expect("BOOKMARK").await;
    assert_eq!(bookmark["kind"], "EndpointSlice");
    assert_eq!(bookmark["apiVersion"], "discovery.k8s.io/v1");
    assert_eq!(bookmark["metadata"]["resourceVersion"], rv.as_str());

    // Without allowWatchBookmarks there are none.
    let mut quiet = Watch::open(s.addr(), &format!("{path}?watch=true&resourceVersion={rv}")).await;
    quiet.expect_silence(Duration::from_millis(300)).await;

    let s = ApiServer::start(Options {
        bookmark_interval: None,
        ..Options::default()
    })
    .await
    .unwrap();
    let mut w = Watch::open(
        s.addr(),
        &kube_watch("/api/v1/nodes", &s.resource_version()),
    )
    .await;
    w.expect_silence(Duration::from_millis(200)).await;
    s.apply(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "x" } }));
    s.send_bookmarks();
    let bookmark = w.expect("BOOKMARK").await;
    assert_eq!(bookmark["kind"], "Node");
    assert_eq!(
        bookmark["metadata"]["resourceVersion"],
        s.resource_version()
    );
}

#[tokio::test]
async fn watch_without_version_starts_with_current_objects() {
    let s = ApiServer::start(Options::default()).await.unwrap();
    s.apply(service("default", "a", "10.96.0.1"));
    s.apply(service("default", "b", "10.96.0.2"));

    // kube's streaming-list mode (InitialListStrategy::StreamingList).
    let path = "/api/v1/services?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0";
    let mut w = Watch::open(s.addr(), path).await;
    assert_eq!(w.expect("ADDED").await["metadata"]["name"], "a");
    assert_eq!(w.expect("ADDED").await["metadata"]["name"], "b");
    let end = w.expect("BOOKMARK").await;
    assert_eq!(
        end["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(end["metadata"]["resourceVersion"], s.resource_version());
    s.apply(service("default", "c", "10.96.0.3"));
    assert_eq!(w.expect("ADDED").await["metadata"]["name"], "c");

    // Plain watch without a version: synthetic ADDED events, no end marker.
    let mut w = Watch::open(s.addr(), "/api/v1/services?watch=true").await;
    for name in ["a", "b", "c"] {
        assert_eq!(w.expect("ADDED").await["metadata"]["name"], name);
    }
    w.expect_silence(Duration::from_millis(100)).await;
}

/// Streaming lists refused the ways real servers refuse them (`StreamingLists`), and served
/// again after `set_streaming_lists(Served)`.
#[tokio::test]
async fn streaming_lists_can_be_refused() {
    use apiserver::StreamingLists;
    let streaming = "/api/v1/services?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0";
    let s = ApiServer::start(Options {
        streaming_lists: StreamingLists::Invalid,
        ..Options::default()
    })
    .await
    .unwrap();
    s.apply(service("default", "a", "10.96.0.1"));

    // kube-apiserver with the WatchList gate off: 422 at once.
    let (status, body) = get_json(s.addr(), streaming).await;
    assert_eq!(status, 422);
    assert_eq!(body["reason"], "Invalid");
    assert!(body["message"].as_str().unwrap().contains(
        "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled"
    ));

    // kube-apiserver on an etcd without RequestWatchProgress: 200, one ERROR event, the end.
    s.set_streaming_lists(StreamingLists::NoWatchProgress);
    let mut w = Watch::open(s.addr(), streaming).await;
    let error = w.expect("ERROR").await;
    assert_eq!(error["code"], 500);
    assert_eq!(error["reason"], "InternalError");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("RequestWatchProgress is disabled"));
    assert_eq!(w.next().await, Err(End::Clean));

    // A server that ignores the parameter: the objects, but no end bookmark.
    s.set_streaming_lists(StreamingLists::Ignored);
    let mut w = Watch::open(s.addr(), streaming).await;
    assert_eq!(w.expect("ADDED").await["metadata"]["name"], "a");
    w.expect_silence(Duration::from_millis(100)).await;

    s.set_streaming_lists(StreamingLists::Served);
    let mut w = Watch::open(s.addr(), streaming).await;
    assert_eq!(w.expect("ADDED").await["metadata"]["name"], "a");
    let end = w.expect("BOOKMARK").await;
    assert_eq!(
        end["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );

    // As on kube-apiserver, a streaming list needs resourceVersionMatch=NotOlderThan.
    let (status, _) = get_json(
        s.addr(),
        "/api/v1/services?watch=true&allowWatchBookmarks=true&sendInitialEvents=true",
    )
    .await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn gateway_watches_end_when_crds_are_removed() {
    let s = ApiServer::start(Options::default()).await.unwrap();
    let path = kube_watch(
        "/apis/gateway.networking.k8s.io/v1/httproutes",
        &s.resource_version(),
    );
    let mut routes = Watch::open(s.addr(), &path).await;
    let mut services = Watch::open(
        s.addr(),
        &kube_watch("/api/v1/services", &s.resource_version()),
    )
    .await;
    s.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": { "name": "r", "namespace": "default" },
        "spec": { "parentRefs": [{ "name": "gw" }] },
    }));
    assert_eq!(routes.expect("ADDED").await["kind"], "HTTPRoute");
    s.set_gateway_crds(false);
    assert_eq!(routes.next().await, Err(End::Clean));
    let resp = common::request(s.addr(), &path).await;
    assert_eq!(resp.status(), hyper::StatusCode::NOT_FOUND);
    // Core watches are untouched.
    s.apply(service("default", "a", "10.96.0.1"));
    services.expect("ADDED").await;
}

#[tokio::test]
async fn restart_on_same_address_keeps_objects_and_versions() {
    let s = ApiServer::start(Options::default()).await.unwrap();
    let addr = s.addr();
    s.apply(service("default", "a", "10.96.0.1"));
    let rv_before = s.apply(service("default", "b", "10.96.0.2"));
    let mut w = Watch::open(addr, &kube_watch("/api/v1/services", &rv_before)).await;
    assert!(s.wait_until(TIMEOUT, |st| st.active_watches == 1).await);

    let state = s.shutdown().await;
    assert_eq!(state.resource_version(), rv_before);
    assert_eq!(state.object_count(), 2);
    // The open watch breaks off like a dying API server's would.
    assert_eq!(w.next().await, Err(End::Broken));

    let s = ApiServer::start_with_state(addr, Options::default(), state)
        .await
        .expect("restart");
    assert_eq!(s.addr(), addr);
    let (_, list) = get_json(addr, "/api/v1/services").await;
    assert_eq!(list["metadata"]["resourceVersion"], rv_before.as_str());
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    // Resuming from the pre-restart version works, and the counter continued.
    let mut w = Watch::open(addr, &kube_watch("/api/v1/services", &rv_before)).await;
    let rv_after = s.apply(service("default", "c", "10.96.0.3"));
    assert!(rv_after.parse::<u64>().unwrap() > rv_before.parse::<u64>().unwrap());
    assert_eq!(
        w.expect("ADDED").await["metadata"]["resourceVersion"],
        rv_after.as_str()
    );

    // A server that was shut down refuses connections; start_on gives an empty one.
    let state = s.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert_eq!(state.object_count(), 3);
    let empty = ApiServer::start_on(addr, Options::default())
        .await
        .expect("start_on");
    let (_, list) = get_json(addr, "/api/v1/services").await;
    assert_eq!(list["items"], json!([]));
    drop(empty);
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let s = ApiServer::start(Options::default()).await.unwrap();
    let addr = s.addr();
    let clone = s.clone();
    drop(s);
    // A clone keeps it alive.
    let (status, _) = get_json(addr, "/version").await;
    assert_eq!(status, hyper::StatusCode::OK);
    drop(clone);
    let deadline = Instant::now() + TIMEOUT;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "server still accepting after drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
