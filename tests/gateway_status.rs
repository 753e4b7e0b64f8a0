//! Status write-back end to end (issue #16): the real binary, two replicas electing one writer
//! through a Lease, against the project's test API server and against a real kube-apiserver
//! with the vendored Gateway API v1.3.0 CRDs (`tests/gateway-api/`). One scenario, both
//! servers; each assertion waits (bounded) for the status to show up.
//!
//! Checked: GatewayClass `Accepted`; Gateway `Accepted`/`Programmed`, `addresses`, and per
//! listener `Accepted`/`Programmed`/`ResolvedRefs`/`Conflicted`, `supportedKinds`,
//! `attachedRoutes`; HTTPRoute `parents[]` with `Accepted` (`NoMatchingParent`,
//! `NotAllowedByListeners`, `NoMatchingListenerHostname`) and `ResolvedRefs`
//! (`BackendNotFound`, `RefNotPermitted`, `InvalidKind`), another controller's entry kept;
//! a ReferenceGrant granting and then revoking a cross-namespace backend; Ingress
//! `loadBalancer`; no second write for an unchanged status; the leader hand-over, both when
//! the leader stops (it gives the Lease up) and when it is killed (the Lease expires).

mod common;
#[path = "envtest/mod.rs"]
mod envtest;
#[path = "gateway_cluster/mod.rs"]
mod gateway_cluster;

use common::*;
use gateway_cluster::*;
use serde_json::{json, Value};

const OTHER: &str = "example.com/other-controller";

/// The objects of the scenario: namespaces, Services, our and another controller's
/// GatewayClass, Gateways (valid, conflicting, unsupported listeners), routes for each reason,
/// Ingresses of our class and another.
const SCENARIO: &str = include_str!("gateway-api/status-scenario.yaml");

const GRANT: &str = r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: routes-to-api, namespace: backends}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: apps}]
  to: [{group: "", kind: Service, name: api}]
"#;

/// Our `parents[]` entry of a route (and the whole status, for messages).
async fn route_parent(c: &Cluster, ns: &str, name: &str, gateway: &str) -> Result<Value, String> {
    let obj = c.get(GW, "HTTPRoute", ns, name).await.ok_or("no route")?;
    let parents = obj["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    parents
        .iter()
        .find(|p| {
            p["controllerName"] == "switchboard.dev/gateway" && p["parentRef"]["name"] == gateway
        })
        .cloned()
        .ok_or_else(|| {
            format!(
                "HTTPRoute {ns}/{name}: no parents entry of ours for {gateway}: {}",
                obj["status"]
            )
        })
}

async fn route_is(
    c: &Cluster,
    ns: &str,
    name: &str,
    accepted: (&str, &str),
    resolved: (&str, &str),
) {
    eventually(&format!("HTTPRoute {ns}/{name}"), || async {
        let p = route_parent(c, ns, name, "gw").await?;
        expect(&p["conditions"], "Accepted", accepted.0, accepted.1)?;
        expect(&p["conditions"], "ResolvedRefs", resolved.0, resolved.1)
    })
    .await;
}

fn listener<'a>(gw: &'a Value, name: &str) -> &'a Value {
    gw["status"]["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == name))
        .unwrap_or(&Value::Null)
}

/// Route apps/cross (a backendRef into `backends`): resolved while the grant exists.
async fn cross_resolves(c: &Cluster, granted: bool) {
    let resolved = if granted {
        ("True", "ResolvedRefs")
    } else {
        ("False", "RefNotPermitted")
    };
    route_is(c, "apps", "cross", ("True", "Accepted"), resolved).await;
}

async fn revoke_grant(c: &Cluster) {
    let (av, kind) = ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant");
    c.delete(av, kind, "backends", "routes-to-api").await;
}

async fn switchboard(c: &Cluster, pod: &str) -> Switchboard {
    let kc = c.kubeconfig();
    Switchboard::start_with_env(
        &[
            "--kubeconfig",
            kc.to_str().unwrap(),
            "--gateway-address",
            "192.0.2.10",
            "--leader-election-lease-duration",
            "3",
        ],
        &[("POD_NAME", pod), ("POD_NAMESPACE", "kube-system")],
    )
}

/// `switchboard_status_writes_total`, summed over kinds and results.
async fn writes(sb: &Switchboard) -> f64 {
    let body = sb.admin_get("/metrics").await.1;
    body.lines()
        .filter(|l| l.starts_with("switchboard_status_writes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The Lease that elects the status writer.
async fn lease(c: &Cluster) -> Option<Value> {
    let (av, ns) = ("coordination.k8s.io/v1", "kube-system");
    c.get(av, "Lease", ns, "switchboard-status").await
}

async fn lease_holder(c: &Cluster) -> Option<String> {
    let lease = lease(c).await?;
    lease["spec"]["holderIdentity"].as_str().map(String::from)
}

async fn wait_leader(sb: &Switchboard, c: &Cluster, pod: &str) {
    eventually(&format!("{pod} leads"), || async {
        let gauge = sb.metric("switchboard_leader").await;
        let holder = lease_holder(c).await;
        if gauge == Some(1.0) && holder.as_deref() == Some(pod) {
            Ok(())
        } else {
            Err(format!(
                "switchboard_leader {gauge:?}, Lease holder {holder:?}\n{}",
                sb.log()
            ))
        }
    })
    .await;
}

async fn scenario(c: Cluster) {
    c.apply(SCENARIO).await;
    // Another controller's entry on a route of ours: it must survive our writes.
    let theirs = json!({"parents": [{
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "foreign"},
        "controllerName": OTHER,
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }]});
    c.patch_status(GW, "HTTPRoute", "apps", "ok", theirs).await;

    let mut a = switchboard(&c, "sb-a").await;
    wait_leader(&a, &c, "sb-a").await;
    let b = switchboard(&c, "sb-b").await;
    assert_eq!(
        b.metric("switchboard_leader").await,
        Some(0.0),
        "{}",
        b.log()
    );

    // GatewayClass: ours Accepted; another controller's untouched.
    eventually("GatewayClass sb", || async {
        let gc = c.get(GW, "GatewayClass", "", "sb").await.ok_or("none")?;
        expect(&gc["status"]["conditions"], "Accepted", "True", "Accepted")?;
        let gen = gc["metadata"]["generation"].as_i64();
        let seen = gc["status"]["conditions"][0]["observedGeneration"].as_i64();
        (gen == seen)
            .then_some(())
            .ok_or(format!("observedGeneration {seen:?} != {gen:?}"))
    })
    .await;
    if let Cluster::Real(..) = c {
        // The vendored CRDs carry bundle-version v1.3.0.
        let gc = c.get(GW, "GatewayClass", "", "sb").await.unwrap();
        let conds = &gc["status"]["conditions"];
        expect(conds, "SupportedVersion", "True", "SupportedVersion").unwrap();
    }
    let theirs_class = c.get(GW, "GatewayClass", "", "theirs").await.unwrap();
    assert!(
        condition(&theirs_class["status"]["conditions"], "Accepted")
            .is_none_or(|(s, _)| s == "Unknown"),
        "{theirs_class}"
    );

    // Routes, each reason.
    route_is(
        &c,
        "apps",
        "ok",
        ("True", "Accepted"),
        ("True", "ResolvedRefs"),
    )
    .await;
    route_is(
        &c,
        "apps",
        "nohost",
        ("False", "NoMatchingListenerHostname"),
        ("True", "ResolvedRefs"),
    )
    .await;
    route_is(
        &c,
        "apps",
        "nosection",
        ("False", "NoMatchingParent"),
        ("True", "ResolvedRefs"),
    )
    .await;
    route_is(
        &c,
        "apps",
        "absent",
        ("True", "Accepted"),
        ("False", "BackendNotFound"),
    )
    .await;
    route_is(
        &c,
        "apps",
        "badkind",
        ("True", "Accepted"),
        ("False", "InvalidKind"),
    )
    .await;
    cross_resolves(&c, false).await;
    route_is(
        &c,
        "other",
        "intruder",
        ("False", "NotAllowedByListeners"),
        ("False", "BackendNotFound"),
    )
    .await;
    route_is(
        &c,
        "other",
        "guest",
        ("True", "Accepted"),
        ("True", "ResolvedRefs"),
    )
    .await;
    // allowedRoutes from: Selector: the labelled namespace is admitted, the other is not.
    let resolved = ("True", "ResolvedRefs");
    route_is(&c, "other", "member", ("True", "Accepted"), resolved).await;
    let refused = ("False", "NotAllowedByListeners");
    route_is(&c, "backends", "stranger", refused, resolved).await;
    // The other controller's entry is still there, and we wrote none for its Gateway.
    let ok = c.get(GW, "HTTPRoute", "apps", "ok").await.unwrap();
    let parents = ok["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 2, "{}", ok["status"]);
    assert!(
        parents.iter().any(|p| p["controllerName"] == OTHER),
        "{}",
        ok["status"]
    );

    // Gateway: conditions, address, listeners.
    eventually("Gateway apps/gw", || async {
        let gw = c.get(GW, "Gateway", "apps", "gw").await.ok_or("none")?;
        let st = &gw["status"];
        expect(&st["conditions"], "Accepted", "True", "Accepted")?;
        expect(&st["conditions"], "Programmed", "True", "Programmed")?;
        if st["addresses"] != json!([{"type": "IPAddress", "value": "192.0.2.10"}]) {
            return Err(format!("addresses {}", st["addresses"]));
        }
        let web = listener(&gw, "web");
        expect(&web["conditions"], "Accepted", "True", "Accepted")?;
        expect(&web["conditions"], "Programmed", "True", "Programmed")?;
        expect(&web["conditions"], "ResolvedRefs", "True", "ResolvedRefs")?;
        expect(&web["conditions"], "Conflicted", "False", "NoConflicts")?;
        // ok, absent, badkind, cross (accepted on web); guest on open; member on picky.
        let attached = |name| listener(&gw, name)["attachedRoutes"].as_i64();
        if web["attachedRoutes"] != 4 || attached("open") != Some(1) || attached("picky") != Some(1)
        {
            return Err(format!("attachedRoutes: {}", st["listeners"]));
        }
        if web["supportedKinds"]
            != json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}])
        {
            return Err(format!("supportedKinds {}", web["supportedKinds"]));
        }
        let secure = listener(&gw, "secure");
        expect(
            &secure["conditions"],
            "ResolvedRefs",
            "False",
            "InvalidCertificateRef",
        )?;
        expect(&secure["conditions"], "Programmed", "False", "Invalid")?;
        let raw = listener(&gw, "raw");
        expect(
            &raw["conditions"],
            "Accepted",
            "False",
            "UnsupportedProtocol",
        )?;
        if raw["supportedKinds"] != json!([]) {
            return Err(format!("raw supportedKinds {}", raw["supportedKinds"]));
        }
        Ok(())
    })
    .await;
    eventually("Gateway apps/clash", || async {
        let gw = c.get(GW, "Gateway", "apps", "clash").await.ok_or("none")?;
        expect(
            &listener(&gw, "plain")["conditions"],
            "Conflicted",
            "True",
            "ProtocolConflict",
        )?;
        expect(
            &listener(&gw, "tls")["conditions"],
            "Conflicted",
            "True",
            "ProtocolConflict",
        )
    })
    .await;
    let foreign = c.get(GW, "Gateway", "apps", "foreign").await.unwrap();
    assert!(
        foreign["status"]["addresses"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{foreign}"
    );

    // Ingress: ours gets the address, the other class's does not.
    eventually("Ingress apps/ing", || async {
        let ing = c
            .get("networking.k8s.io/v1", "Ingress", "apps", "ing")
            .await
            .ok_or("none")?;
        let lb = &ing["status"]["loadBalancer"]["ingress"];
        (lb == &json!([{"ip": "192.0.2.10"}]))
            .then_some(())
            .ok_or(format!("{lb}"))
    })
    .await;
    let notours = c
        .get("networking.k8s.io/v1", "Ingress", "apps", "notours")
        .await
        .unwrap();
    assert!(notours["status"]["loadBalancer"]["ingress"]
        .as_array()
        .is_none_or(|a| a.is_empty()));

    // No rewrite of an unchanged status: one new route (refused by the listener, so no
    // Gateway's attachedRoutes changes) costs exactly one write.
    let before = writes(&a).await;
    c.apply(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: marker, namespace: other}\nspec:\n  parentRefs: [{name: gw, namespace: apps, sectionName: web}]\n",
    )
    .await;
    route_is(
        &c,
        "other",
        "marker",
        ("False", "NotAllowedByListeners"),
        ("True", "ResolvedRefs"),
    )
    .await;
    // The route's status can be read before the writer has counted its write (the counter
    // moves when the API call returns): wait for the count, then it must be exactly one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while writes(&a).await - before < 1.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(writes(&a).await - before, 1.0, "{}", a.log());

    // ReferenceGrant: granted, then revoked.
    c.apply(GRANT).await;
    cross_resolves(&c, true).await;
    revoke_grant(&c).await;
    cross_resolves(&c, false).await;

    // Hand-over: the leader stops (and gives the Lease up); the standby takes over and writes.
    assert_eq!(b.metric("switchboard_leader").await, Some(0.0));
    a.terminate();
    wait_leader(&b, &c, "sb-b").await;
    c.apply(GRANT).await;
    cross_resolves(&c, true).await;

    // A leader that dies without giving the Lease up (SIGKILL): a standby takes over once the
    // Lease has not been renewed for its duration (3 s here), and writes.
    let c_sb = switchboard(&c, "sb-c").await;
    assert_eq!(c_sb.metric("switchboard_leader").await, Some(0.0));
    drop(b); // kills the process
    wait_leader(&c_sb, &c, "sb-c").await;
    revoke_grant(&c).await;
    cross_resolves(&c, false).await;
    let lease = lease(&c).await.unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 2, "{lease}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_against_the_test_apiserver() {
    scenario(Cluster::test().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_against_kube_apiserver() {
    let Some(c) = Cluster::real("status_against_kube_apiserver").await else {
        return;
    };
    scenario(c).await;
}

/// `--publish-service`: the addresses of the Service in front of switchboard go into Ingress
/// and Gateway status, and follow it when its load balancer address changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_follow_the_published_service() {
    let c = Cluster::test().await;
    let kc = c.kubeconfig();
    let published = |ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: front, namespace: kube-system}}\nspec: {{type: LoadBalancer, clusterIP: 10.96.0.50, ports: [{{port: 80}}]}}\nstatus: {{loadBalancer: {{ingress: [{{ip: {ip}}}]}}}}\n"
        )
    };
    c.apply(SCENARIO).await;
    c.apply(&published("203.0.113.5")).await;
    let _sb = Switchboard::start_with_env(
        &[
            "--kubeconfig",
            kc.to_str().unwrap(),
            "--publish-service",
            "kube-system/front",
        ],
        &[("POD_NAME", "sb-p"), ("POD_NAMESPACE", "kube-system")],
    );
    for ip in ["203.0.113.5", "203.0.113.6"] {
        c.apply(&published(ip)).await;
        eventually(&format!("addresses {ip}"), || async {
            let ing = c
                .get("networking.k8s.io/v1", "Ingress", "apps", "ing")
                .await
                .ok_or("no Ingress")?;
            let lb = &ing["status"]["loadBalancer"]["ingress"];
            if lb != &json!([{ "ip": ip }]) {
                return Err(format!("Ingress {lb}"));
            }
            let gw = c
                .get(GW, "Gateway", "apps", "gw")
                .await
                .ok_or("no Gateway")?;
            let want = json!([{"type": "IPAddress", "value": ip}]);
            if gw["status"]["addresses"] != want {
                return Err(format!("Gateway {}", gw["status"]["addresses"]));
            }
            expect(
                &gw["status"]["conditions"],
                "Programmed",
                "True",
                "Programmed",
            )
        })
        .await;
    }
}
