//! Lists, gets, discovery, faults and the kubeconfig.

mod common;

use std::time::{Duration, Instant};

use apiserver::{ApiServer, Options};
use common::{get_json, rv_of, service};
use hyper::StatusCode;
use serde_json::json;

async fn server() -> ApiServer {
    ApiServer::start(Options::default()).await.expect("start")
}

fn names(list: &serde_json::Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            format!(
                "{}/{}",
                i["metadata"]["namespace"].as_str().unwrap_or(""),
                i["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn list_returns_items_and_resource_version() {
    let s = server().await;
    let (status, empty) = get_json(s.addr(), "/api/v1/services?limit=500").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(empty["kind"], "ServiceList");
    assert_eq!(empty["items"], json!([]));
    let empty_rv: u64 = empty["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let rv1 = s.apply(service("default", "web", "10.96.0.10"));
    let rv2 = s.apply(service("kube-system", "kube-dns", "10.96.0.53"));
    assert!(rv1.parse::<u64>().unwrap() > empty_rv);
    assert!(rv2.parse::<u64>().unwrap() > rv1.parse::<u64>().unwrap());
    s.apply(json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": "node-a" } }));

    let (status, list) = get_json(s.addr(), "/api/v1/services?limit=500").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["metadata"]["resourceVersion"], s.resource_version());
    assert_eq!(names(&list), ["default/web", "kube-system/kube-dns"]);
    let web = &list["items"][0];
    // Built-in list items carry no type meta, like a real API server.
    assert!(web.get("kind").is_none() && web.get("apiVersion").is_none());
    assert_eq!(web["metadata"]["resourceVersion"], rv1.as_str());
    assert!(web["metadata"]["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty()));
    assert!(web["metadata"]["creationTimestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert_eq!(web["spec"]["clusterIP"], "10.96.0.10");

    let (_, namespaced) = get_json(s.addr(), "/api/v1/namespaces/kube-system/services").await;
    assert_eq!(names(&namespaced), ["kube-system/kube-dns"]);

    let (_, nodes) = get_json(
        s.addr(),
        "/api/v1/nodes?resourceVersion=0&resourceVersionMatch=NotOlderThan",
    )
    .await;
    assert_eq!(nodes["kind"], "NodeList");
    assert_eq!(names(&nodes), ["/node-a"]);

    // Selectors are accepted (and ignored).
    let (status, _) = get_json(
        s.addr(),
        "/api/v1/services?labelSelector=app%3Dweb&fieldSelector=metadata.name%3Dweb",
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let (status, obj) = get_json(s.addr(), "/api/v1/namespaces/default/services/web").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(obj["kind"], "Service");
    assert_eq!(obj["metadata"]["name"], "web");
    let (status, missing) = get_json(s.addr(), "/api/v1/namespaces/default/services/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["kind"], "Status");
    assert_eq!(missing["reason"], "NotFound");
    assert_eq!(missing["code"], 404);

    // Replacing keeps uid and creationTimestamp and bumps the version.
    let uid = web["metadata"]["uid"].clone();
    let rv3 = s.apply(service("default", "web", "10.96.0.11"));
    let stored = s
        .get("v1", "Service", Some("default"), "web")
        .expect("stored");
    assert_eq!(stored["metadata"]["uid"], uid);
    assert_eq!(rv_of(&stored), rv3.parse::<u64>().unwrap());
    assert!(s.stats().lists >= 4);
}

#[tokio::test]
async fn pagination_is_a_consistent_snapshot() {
    let s = server().await;
    for i in 0..5 {
        s.apply(service("default", &format!("svc-{i}"), "10.96.0.1"));
    }
    let rv_at_list = s.resource_version();
    let (_, page1) = get_json(s.addr(), "/api/v1/services?limit=2").await;
    assert_eq!(names(&page1), ["default/svc-0", "default/svc-1"]);
    assert_eq!(page1["metadata"]["remainingItemCount"], 3);
    let token = page1["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_string();

    // Changes between pages do not leak into the paged list.
    s.delete("v1", "Service", Some("default"), "svc-3");
    s.apply(service("default", "svc-9", "10.96.0.9"));

    let mut got = names(&page1);
    let mut token = Some(token);
    while let Some(t) = token {
        let (status, page) =
            get_json(s.addr(), &format!("/api/v1/services?limit=2&continue={t}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page["metadata"]["resourceVersion"], rv_at_list.as_str());
        got.extend(names(&page));
        token = page["metadata"]["continue"].as_str().map(str::to_string);
    }
    assert_eq!(
        got,
        [
            "default/svc-0",
            "default/svc-1",
            "default/svc-2",
            "default/svc-3",
            "default/svc-4"
        ]
    );
}

#[tokio::test]
async fn continue_token_expires_on_compaction() {
    let s = server().await;
    for i in 0..3 {
        s.apply(service("default", &format!("svc-{i}"), "10.96.0.1"));
    }
    let (_, page1) = get_json(s.addr(), "/api/v1/services?limit=1").await;
    let token = page1["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_string();
    s.apply(service("default", "svc-new", "10.96.0.2"));
    s.compact();
    let (status, body) = get_json(
        s.addr(),
        &format!("/api/v1/services?limit=1&continue={token}"),
    )
    .await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(body["reason"], "Expired");
    assert_eq!(body["code"], 410);
}

#[tokio::test]
async fn fail_next_injects_errors_then_recovers() {
    let s = server().await;
    s.fail_next(500, 2);
    for _ in 0..2 {
        let (status, body) = get_json(s.addr(), "/api/v1/services").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["kind"], "Status");
        assert_eq!(body["status"], "Failure");
        assert_eq!(body["reason"], "InternalError");
        assert_eq!(body["code"], 500);
    }
    let (status, _) = get_json(s.addr(), "/api/v1/services").await;
    assert_eq!(status, StatusCode::OK);

    s.fail_next(503, 1);
    let resp = common::request(s.addr(), "/api/v1/services?watch=true&resourceVersion=1").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(s.stats().errors_injected, 3);
}

#[tokio::test]
async fn delay_slows_every_answer() {
    let s = server().await;
    s.set_delay(Duration::from_millis(300));
    let started = Instant::now();
    let (status, _) = get_json(s.addr(), "/api/v1/services").await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    s.set_delay(Duration::ZERO);
    let started = Instant::now();
    get_json(s.addr(), "/api/v1/services").await;
    assert!(started.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn gateway_crds_can_be_missing_and_installed() {
    let s = ApiServer::start(Options {
        gateway_crds: false,
        ..Options::default()
    })
    .await
    .expect("start");
    s.apply_yaml(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: switchboard\nspec:\n  controllerName: example.com/switchboard\n",
    );
    for path in [
        "/apis/gateway.networking.k8s.io/v1/httproutes",
        "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways",
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses?watch=true&resourceVersion=1",
        "/apis/gateway.networking.k8s.io/v1",
    ] {
        let (status, body) = get_json(s.addr(), path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["reason"], "NotFound", "{path}");
    }
    let (_, groups) = get_json(s.addr(), "/apis").await;
    assert!(!groups.to_string().contains("gateway.networking.k8s.io"));
    assert_eq!(s.stats().not_found, 4);

    s.set_gateway_crds(true);
    assert!(s.gateway_crds());
    let (status, list) = get_json(
        s.addr(),
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["kind"], "GatewayClassList");
    assert_eq!(list["apiVersion"], "gateway.networking.k8s.io/v1");
    // CRD list items keep their type meta.
    assert_eq!(list["items"][0]["kind"], "GatewayClass");
    assert_eq!(list["items"][0]["metadata"]["name"], "switchboard");
    let (status, _) = get_json(
        s.addr(),
        "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, groups) = get_json(s.addr(), "/apis").await;
    assert!(groups.to_string().contains("gateway.networking.k8s.io"));
}

#[tokio::test]
async fn discovery_and_unknown_paths() {
    let s = server().await;
    let (status, version) = get_json(s.addr(), "/version").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version["major"], "1");
    let (_, api) = get_json(s.addr(), "/api").await;
    assert_eq!(api["versions"], json!(["v1"]));
    let (_, core) = get_json(s.addr(), "/api/v1").await;
    let core_names: Vec<&str> = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(core_names, ["services", "secrets", "nodes", "namespaces"]);
    let (_, disc) = get_json(s.addr(), "/apis/discovery.k8s.io/v1").await;
    assert_eq!(disc["resources"][0]["kind"], "EndpointSlice");

    for path in [
        "/api/v1/pods",
        "/apis/apps/v1/deployments",
        "/healthz",
        "/api/v1/namespaces/default/nodes",
        "/api/v1/services/web",
    ] {
        let (status, body) = get_json(s.addr(), path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["kind"], "Status", "{path}");
    }
    let (status, _) = get_json(
        s.addr(),
        "/apis/networking.k8s.io/v1/namespaces/default/ingresses",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get_json(s.addr(), "/api/v1/namespaces/default/secrets").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn apply_yaml_handles_documents_and_lists() {
    let s = server().await;
    let rvs = s.apply_yaml(
        r#"
apiVersion: v1
kind: Service
metadata: { name: a }
spec: { clusterIP: 10.96.0.1 }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: a-1, namespace: default, labels: { kubernetes.io/service-name: a } }
addressType: IPv4
endpoints: [{ addresses: [10.0.0.1] }]
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Secret
  metadata: { name: tls, namespace: web }
- apiVersion: networking.k8s.io/v1
  kind: Ingress
  metadata: { name: web, namespace: web }
"#,
    );
    assert_eq!(rvs.len(), 4);
    // Without a namespace, a namespaced object lands in "default".
    assert!(s.get("v1", "Service", None, "a").is_some());
    assert!(s.get("v1", "Secret", Some("web"), "tls").is_some());
    let (_, slices) = get_json(s.addr(), "/apis/discovery.k8s.io/v1/endpointslices").await;
    assert_eq!(
        slices["items"][0]["endpoints"][0]["addresses"][0],
        "10.0.0.1"
    );
    assert!(s
        .try_apply(json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "x" } }))
        .is_err());
    assert!(s.delete("v1", "Secret", Some("web"), "tls"));
    assert!(!s.delete("v1", "Secret", Some("web"), "tls"));
}

#[tokio::test]
async fn kubeconfig_points_at_the_server() {
    let s = server().await;
    let dir = std::env::temp_dir().join(format!("apiserver-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config");
    s.write_kubeconfig(&path).expect("write");
    let config: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).expect("yaml");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(config["kind"], "Config");
    let current = config["current-context"].as_str().unwrap();
    let context = config["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == current)
        .expect("context");
    assert_eq!(context["context"]["namespace"], "default");
    let cluster_name = context["context"]["cluster"].as_str().unwrap();
    let cluster = config["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster_name)
        .expect("cluster");
    assert_eq!(cluster["cluster"]["server"], s.url());
    assert!(s.url().starts_with("http://127.0.0.1:"));
    let user_name = context["context"]["user"].as_str().unwrap();
    assert!(config["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == user_name));
}

#[tokio::test]
async fn bad_parameters_are_rejected_with_status() {
    let s = server().await;
    s.apply(service("default", "a", "10.96.0.1"));
    for path in [
        "/api/v1/services?limit=many",
        "/api/v1/services?watch=true&resourceVersion=abc",
        "/api/v1/services?watch=true&timeoutSeconds=-1",
        "/api/v1/services?limit=1&continue=bogus",
    ] {
        let (status, body) = get_json(s.addr(), path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(body["reason"], "BadRequest", "{path}");
    }
    let (status, body) = get_json(
        s.addr(),
        "/api/v1/services?watch=true&sendInitialEvents=true",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["reason"], "Invalid");
    let too_large = s.resource_version().parse::<u64>().unwrap() + 10;
    let path =
        format!("/api/v1/services?resourceVersion={too_large}&resourceVersionMatch=NotOlderThan");
    let (status, body) = get_json(s.addr(), &path).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .starts_with("Too large resource version"));
    // A continue token only works for the collection it came from.
    s.apply(service("default", "b", "10.96.0.2"));
    let (_, page) = get_json(s.addr(), "/api/v1/services?limit=1").await;
    let token = page["metadata"]["continue"].as_str().unwrap();
    let (status, _) = get_json(
        s.addr(),
        &format!("/api/v1/secrets?limit=1&continue={token}"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
