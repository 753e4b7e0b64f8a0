//! The Kubernetes source under faults, through the real `kube` client against the test API
//! server: 410 Gone and relist, dropped watches, 500/503 answers, an API server restart, and
//! absent Gateway API CRDs. Throughout, the published tables are kept and readiness is right.

mod common;

use std::time::Duration;

use apiserver::{ApiServer, Options};
use common::*;

fn svc(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: 80}}]\n"
    )
}

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sb}
spec: {controllerName: switchboard.dev/gateway}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: sb
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{name: gw}]
  hostnames: [r.example]
  rules: [{backendRefs: [{name: a, port: 80}]}]
";

struct Setup {
    api: ApiServer,
    sb: Switchboard,
    _dir: tempfile::TempDir,
}

async fn setup(opts: Options) -> Setup {
    setup_with(opts, &[], |_| {}).await
}

/// Starts the API server, lets `before` prepare it, then starts switchboard against it with
/// `args` added.
async fn setup_with(opts: Options, args: &[&str], before: impl FnOnce(&ApiServer)) -> Setup {
    let api = ApiServer::start(opts).await.unwrap();
    before(&api);
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kc).unwrap();
    let mut all = vec!["--kubeconfig", kc.to_str().unwrap()];
    all.extend_from_slice(args);
    let sb = Switchboard::start(&all);
    Setup { api, sb, _dir: dir }
}

/// The kinds switchboard watches: Service, EndpointSlice, Ingress, Secret, GatewayClass,
/// Gateway, HTTPRoute, ReferenceGrant, Namespace.
const KINDS: usize = 9;

async fn wait_watching(api: &ApiServer, n: usize) {
    assert!(
        api.wait_until(Duration::from_secs(15), |s| s.active_watches >= n)
            .await,
        "watchers did not start: {:?}",
        api.stats()
    );
}

/// The source's request that reads the whole of Services: a streaming list (a watch with
/// `sendInitialEvents=true`). The status writer's watch of Service metadata lists plainly, so a
/// plain list of Services is not evidence that the source relists.
fn streams_services(request: &str) -> bool {
    request.starts_with("GET /api/v1/services?") && request.contains("sendInitialEvents=true")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_relists_and_keeps_tables() {
    let Setup { api, sb, .. } = setup(Options::default()).await;
    api.apply_yaml(&svc("a", "10.0.0.1"));
    sb.wait_tables("a", |t| t.contains("service default/a "))
        .await;
    wait_watching(&api, 6).await;
    let gone = r#"switchboard_watch_restarts_total{kind="Service",reason="gone"}"#;
    let relists = r#"switchboard_watch_restarts_total{kind="Service",reason="relist"}"#;
    assert_eq!(sb.metric(gone).await.unwrap_or(0.0), 0.0);

    // The watches end (cleanly, as at the server's timeout); while requests are held, `b` is
    // written and history compacted, so re-watching from the old resourceVersion gets 410
    // Gone and the watcher must relist. (An abrupt drop is an error, after which the source
    // relists without resuming: dropped_watch_resumes.)
    let seen = api.requests().len();
    api.set_delay(Duration::from_secs(3));
    api.close_watches();
    api.apply_yaml(&svc("b", "10.0.0.2"));
    api.compact();
    // Evidence that the 410 was met and the source is relisting: its streaming list of
    // Services reached the API server, where the delay holds it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let relisting = || {
        api.requests()
            .iter()
            .skip(seen)
            .any(|r| streams_services(r))
    };
    while !relisting() {
        assert!(
            std::time::Instant::now() < deadline,
            "no relist of Services: {:?}\n{}",
            &api.requests()[seen..],
            sb.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = sb.tables().await;
    assert!(
        t.contains("service default/a "),
        "kept while relisting:\n{t}"
    );
    // Still inside the relist: `b` comes only with its answer.
    assert!(!t.contains("service default/b "), "checked too late:\n{t}");
    api.set_delay(Duration::ZERO);
    sb.wait_tables("b after relist", |t| {
        t.contains("service default/b ") && t.contains("service default/a ")
    })
    .await;
    assert!(
        sb.metric(gone).await.unwrap_or(0.0) >= 1.0
            && sb.metric(relists).await.unwrap_or(0.0) >= 1.0,
        "410 and relist counted:\n{}",
        sb.admin_get("/metrics").await.1
    );
    sb.wait_admin("/readyz", Duration::from_secs(5), "ready", |c, _| c == 200)
        .await;
}

/// An API server that does not serve streaming lists: every kind falls back to whole lists
/// once, at start, without an outage; ready and the first complete table come as with them; a
/// later relist (after 410 Gone) lists whole at once, without asking for a stream again.
/// One case per way real servers refuse (`apiserver::StreamingLists`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streaming_lists_fall_back_to_whole_lists_once_per_kind() {
    use apiserver::StreamingLists;
    for (mode, reason) in [
        (StreamingLists::Invalid, "streaming_refused"),
        (StreamingLists::NoWatchProgress, "streaming_refused"),
        (StreamingLists::Ignored, "streaming_incomplete"),
    ] {
        let Setup { api, sb, .. } = setup_with(
            Options {
                streaming_lists: mode,
                ..Options::default()
            },
            &[],
            |api| {
                api.apply_yaml(&svc("a", "10.0.0.1"));
            },
        )
        .await;
        if mode == StreamingLists::Ignored {
            // Served as plain watches, which never say that the initial events are complete:
            // no kind syncs until its watch ends (at its timeout, or here when the test closes
            // the watches; again until every kind's first watch was among those closed).
            assert!(
                api.wait_until(Duration::from_secs(15), |s| s.active_watches >= KINDS)
                    .await
            );
            assert_eq!(
                sb.admin_get("/readyz").await.0,
                503,
                "not ready without the end bookmark"
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while sb.admin_get("/readyz").await.0 != 200 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never ready\n{}",
                    sb.log()
                );
                api.close_watches();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        sb.wait_admin("/readyz", Duration::from_secs(15), "ready", |c, _| c == 200)
            .await;
        sb.wait_log("ready: every source has synced", Duration::from_secs(5))
            .await;
        assert!(sb.tables().await.contains("service default/a "), "{mode:?}");
        // The two big kinds were listed whole in protobuf (kubernetes_list.rs).
        for kind in ["Service", "EndpointSlice"] {
            let pb =
                format!(r#"switchboard_kube_lists_total{{encoding="protobuf",kind="{kind}"}}"#);
            assert_eq!(sb.metric(&pb).await, Some(1.0), "{mode:?} {kind}");
        }
        assert_eq!(api.stats().protobuf_lists, 2, "{mode:?}");
        let fell_back =
            format!(r#"switchboard_watch_restarts_total{{kind="Service",reason="{reason}"}}"#);
        assert_eq!(sb.metric(&fell_back).await, Some(1.0), "{mode:?}");
        let message = "does not serve streaming lists of this kind";
        assert_eq!(
            sb.log_count(message),
            KINDS,
            "{mode:?}: once per kind\n{}",
            sb.log()
        );
        // The API answered: not an outage, not an API error.
        assert!(
            !sb.log_contains("source cannot be read"),
            "{mode:?}\n{}",
            sb.log()
        );
        assert_eq!(
            sb.metric(r#"switchboard_source_errors_total{reason="api",source="kubernetes"}"#)
                .await
                .unwrap_or(0.0),
            0.0,
            "{mode:?}"
        );

        // A relist after 410 Gone lists whole at once: the fallback is remembered. The
        // watches end while requests are held, so the resumed watches arrive after `b` and the
        // compaction, and meet the 410.
        let seen = api.requests().len();
        api.set_delay(Duration::from_millis(500));
        api.close_watches();
        api.apply_yaml(&svc("b", "10.0.0.2"));
        api.compact();
        api.set_delay(Duration::ZERO);
        sb.wait_tables("b after the relist", |t| {
            t.contains("service default/b ") && t.contains("service default/a ")
        })
        .await;
        let relists = r#"switchboard_watch_restarts_total{kind="Service",reason="relist"}"#;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sb.metric(relists).await.unwrap_or(0.0) < 1.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{mode:?}: no relist\n{}",
                sb.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let asked: Vec<String> = api.requests()[seen..]
            .iter()
            .filter(|r| streams_services(r))
            .cloned()
            .collect();
        assert!(
            asked.is_empty(),
            "{mode:?}: asked for a stream again: {asked:?}"
        );
        assert_eq!(
            sb.metric(&fell_back).await,
            Some(1.0),
            "{mode:?}: paid once"
        );
        assert_eq!(sb.log_count(message), KINDS, "{mode:?}");
    }
}

/// Whole lists of Services and EndpointSlices ask for protobuf and take JSON: a server that
/// answers JSON is read as JSON, and a protobuf body that cannot be read (bad magic, cut short)
/// is logged with the reason and listed again as JSON. Either way the kind syncs, the watch
/// that follows carries changes, and no outage is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_lists_fall_back_to_json() {
    use apiserver::{Protobuf, StreamingLists};
    const SLICE: &str = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a-1, namespace: default, labels: {kubernetes.io/service-name: a}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.1], conditions: {ready: true}}]
ports: [{name: http, port: 8080}]
";
    let unreadable = "cannot read the protobuf list; listing this kind as JSON instead";
    // mode, JSON lists per kind, unreadable bodies logged
    for (mode, json, logged) in [
        (Protobuf::Served, 0.0, 0),
        (Protobuf::Refused, 1.0, 0),
        (Protobuf::BadMagic, 1.0, 2),
        (Protobuf::Truncated, 1.0, 2),
    ] {
        let opts = Options {
            streaming_lists: StreamingLists::Invalid,
            protobuf: mode,
            ..Options::default()
        };
        let Setup { api, sb, .. } = setup_with(opts, &[], |api| {
            api.apply_yaml(&svc("a", "10.0.0.1"));
            api.apply_yaml(SLICE);
        })
        .await;
        sb.wait_tables("a with its endpoint", |t| {
            t.contains("service default/a ") && t.contains("10.1.0.1")
        })
        .await;
        for kind in ["Service", "EndpointSlice"] {
            let count = |encoding: &str| {
                format!(r#"switchboard_kube_lists_total{{encoding="{encoding}",kind="{kind}"}}"#)
            };
            let pb = sb.metric(&count("protobuf")).await.unwrap_or(0.0);
            let js = sb.metric(&count("json")).await.unwrap_or(0.0);
            assert_eq!(
                (pb, js),
                (1.0 - json, json),
                "{mode:?} {kind}\n{}",
                sb.log()
            );
        }
        assert_eq!(sb.log_count(unreadable), logged, "{mode:?}\n{}", sb.log());
        // The watch from the list's resource version carries the next change.
        api.apply_yaml(&svc("b", "10.0.0.2"));
        sb.wait_tables("b through the watch", |t| t.contains("service default/b "))
            .await;
        assert!(
            !sb.log_contains("source cannot be read"),
            "{mode:?}: not an outage\n{}",
            sb.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watch_resumes() {
    let Setup { api, sb, .. } = setup(Options::default()).await;
    api.apply_yaml(&svc("a", "10.0.0.1"));
    sb.wait_tables("a", |t| t.contains("service default/a "))
        .await;
    wait_watching(&api, 6).await;
    let watches = api.stats().watches;
    api.drop_watches();
    assert!(
        api.wait_until(Duration::from_secs(15), |s| s.watches > watches
            && s.active_watches >= 6)
            .await,
        "re-watched: {:?}",
        api.stats()
    );
    api.apply_yaml(&svc("a", "10.0.0.9"));
    sb.wait_tables("a changed", |t| {
        t.contains("service default/a ClusterIP clusterIPs=10.0.0.9")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_keep_tables_and_readiness_waits_for_first_list() {
    // The lists fail until the test lifts the fault: not ready until every kind has listed.
    // (A fixed number of failures would leave it to the retry backoff whether the first
    // look at /readyz comes before the lists succeed.)
    let Setup { api, sb, .. } = setup_with(Options::default(), &[], |api| {
        api.apply_yaml(&svc("a", "10.0.0.1"));
        api.fail_next(500, usize::MAX);
    })
    .await;
    assert!(
        api.wait_until(Duration::from_secs(15), |s| s.errors_injected
            >= KINDS as u64)
            .await,
        "every kind's first list failed: {:?}",
        api.stats()
    );
    let (code, _) = sb.admin_get("/readyz").await;
    assert_eq!(code, 503, "not ready before the first complete list");
    api.fail_next(500, 0);
    sb.wait_admin(
        "/readyz",
        Duration::from_secs(30),
        "ready after retries",
        |c, _| c == 200,
    )
    .await;
    assert!(sb.tables().await.contains("service default/a "));
    assert!(
        sb.metric("switchboard_source_errors_total{reason=\"api\",source=\"kubernetes\"}")
            .await
            .unwrap_or(0.0)
            >= KINDS as f64,
        "API errors counted (at least one failed list per kind)"
    );

    // Later 503s on every request, with the watches dropped: tables and readiness stay.
    // Every kind's watch is open first, so the drop reaches all of them and the failures go to
    // their re-watches; then the test waits until all six failures were served (not for a
    // guessed time) before looking, and until every kind watches again before writing `c`.
    wait_watching(&api, KINDS).await;
    let before = api.stats();
    api.fail_next(503, 6);
    api.drop_watches();
    assert!(
        api.wait_until(Duration::from_secs(15), |s| s.errors_injected
            == before.errors_injected + 6)
            .await,
        "the re-watches got the 503s: {:?}",
        api.stats()
    );
    assert!(sb.tables().await.contains("service default/a "));
    assert_eq!(sb.admin_get("/readyz").await.0, 200);
    assert!(
        api.wait_until(Duration::from_secs(30), |s| s.watches
            >= before.watches + KINDS as u64
            && s.active_watches >= KINDS)
            .await,
        "every kind watches again after the errors: {:?}",
        api.stats()
    );
    assert!(sb.tables().await.contains("service default/a "));
    assert_eq!(sb.admin_get("/readyz").await.0, 200);
    api.apply_yaml(&svc("c", "10.0.0.3"));
    sb.wait_tables("c after errors", |t| t.contains("service default/c "))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restart() {
    let Setup { api, sb, .. } = setup(Options::default()).await;
    api.apply_yaml(&svc("a", "10.0.0.1"));
    sb.wait_tables("a", |t| t.contains("service default/a "))
        .await;
    wait_watching(&api, 6).await;
    let addr = api.addr();
    let state = api.shutdown().await;

    // While the API server is down, everything keeps being served.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(sb.tables().await.contains("service default/a "));
    assert_eq!(sb.admin_get("/readyz").await.0, 200);
    assert_eq!(sb.admin_get("/healthz").await.0, 200);

    let api = ApiServer::start_with_state(addr, Options::default(), state)
        .await
        .unwrap();
    api.apply_yaml(&svc("b", "10.0.0.2"));
    api.delete("v1", "Service", Some("default"), "a");
    sb.wait_tables("b and not a after restart", |t| {
        t.contains("service default/b ") && !t.contains("service default/a ")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_crds_absent_then_installed() {
    let Setup { api, sb, .. } = setup(Options {
        gateway_crds: false,
        ..Options::default()
    })
    .await;
    api.apply_yaml(&svc("a", "10.0.0.1"));
    api.apply_yaml(ROUTE); // stored, but not served while the CRDs are absent
    sb.wait_admin(
        "/readyz",
        Duration::from_secs(15),
        "ready without Gateway API",
        |c, _| c == 200,
    )
    .await;
    // Ready means every kind has listed once; "a" may still arrive by its watch event (it was
    // applied after the start), so wait for it rather than expect it already.
    sb.wait_tables("a", |t| t.contains("service default/a "))
        .await;
    assert!(!sb.tables().await.contains("HTTPRoute"));
    sb.wait_log("Gateway API CRD not installed", Duration::from_secs(5))
        .await;
    // Logged once per kind, not once per retry.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sb.log_count("Gateway API CRD not installed"),
        4, // GatewayClass, Gateway, HTTPRoute, ReferenceGrant
        "{}",
        sb.log()
    );

    api.set_gateway_crds(true);
    let t = sb
        .wait_tables("the route once the CRDs exist", |t| {
            t.contains("http HTTPRoute default/r#0")
        })
        .await;
    assert!(t.contains("hosts=r.example"), "{t}");
    assert!(t.contains("via default/gw"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_zone_comes_from_the_node_object() {
    // As kube-proxy: without --zone, the L4 proxy's zone is the Node's topology label.
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels: {topology.kubernetes.io/zone: zone-b}\n";
    let Setup { sb, api, _dir } = setup_with(
        Options::default(),
        &["--node-name", "n1", "--l4", "bind"],
        |api| {
            api.apply_yaml(node);
        },
    )
    .await;
    sb.wait_log("node zone from the Node object", Duration::from_secs(15))
        .await;
    assert!(
        sb.log_contains("zone=\"zone-b\"") || sb.log_contains("zone=zone-b"),
        "{}",
        sb.log()
    );

    // An explicit --zone wins and the Node object is not read.
    let kc = _dir.path().join("kubeconfig");
    let sb2 = Switchboard::start(&[
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--node-name",
        "n1",
        "--l4",
        "bind",
        "--zone",
        "zone-c",
    ]);
    sb2.wait_admin("/readyz", Duration::from_secs(15), "ready", |c, _| c == 200)
        .await;
    assert!(!sb2.log_contains("node zone from the Node object"));
    drop(api);
}
