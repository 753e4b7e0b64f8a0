//! Ingress end to end: host/path routing, 404 and 503, readiness, forwarding, defaultBackend.

use super::*;

/// The Ingresses of `ingress_routing_404_503_and_readiness`: one of class switchboard, one
/// of another class.
const SITE_INGRESS: &str = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: site, namespace: default}
spec:
  ingressClassName: switchboard
  rules:
    - host: a.test
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}
          - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}
          - {path: /exact, pathType: Exact, backend: {service: {name: api, port: {number: 80}}}}
          - {path: /down, pathType: ImplementationSpecific, backend: {service: {name: empty, port: {number: 80}}}}
          - {path: /missing, pathType: Prefix, backend: {service: {name: nope, port: {number: 80}}}}
    - host: '*.b.test'
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: wild, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: other-class, namespace: default}
spec:
  ingressClassName: nginx
  rules:
    - host: c.test
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_routing_404_503_and_readiness() {
    let web1 = Backend::start("web1").await;
    let web2 = Backend::start("web2").await;
    let web_unready = Backend::start("web-unready").await;
    let api = Backend::start("api").await;
    let wild = Backend::start("wild").await;
    let dflt = Backend::start("default").await;
    let web = |eps: &[(SocketAddr, Cond)]| service_yaml("default", "web", "10.96.0.1", eps);
    let Fixture { sb, c, proxy, dir } = Fixture::start(&[], &[("a.test", "/")], |d| {
        write(
            d,
            "web.yaml",
            &web(&[
                (web1.addr, Cond::Ready),
                (web2.addr, Cond::Ready),
                (web_unready.addr, Cond::NotReady),
            ]),
        );
        write_service(d, "api", "10.96.0.2", &[&api]);
        write_service(d, "wild", "10.96.0.3", &[&wild]);
        write(
            d,
            "empty.yaml",
            &service_yaml(
                "default",
                "empty",
                "10.96.0.4",
                &[(web_unready.addr, Cond::NotReady)],
            ),
        );
        write(d, "ingress.yaml", SITE_INGRESS);
    })
    .await;
    let d = dir.path();

    // Host and path routing, element-wise prefixes, Exact, port by name and number; what no
    // rule matches; dot segments resolved before matching and forwarding; 503 with a clear body
    // when no endpoint is ready or the Service is missing.
    use Check::*;
    const WEB: Check = ByOneOf(&["web1", "web2"]);
    let cases = [
        Case::get("a.test", "/").expect([Status(200), WEB]),
        Case::get("A.TEST:80", "/index.html").expect([Status(200), WEB]),
        Case::get("a.test", "/api").expect([Status(200), By("api")]),
        Case::get("a.test", "/api/v1/x").expect([Status(200), By("api")]),
        Case::get("a.test", "/apix").expect([Status(200), WEB]),
        Case::get("a.test", "/exact").expect([Status(200), By("api")]),
        Case::get("a.test", "/exact/more").expect([Status(200), WEB]),
        Case::get("x.b.test", "/").expect([Status(200), By("wild")]),
        Case::get("y.x.b.test", "/").expect([Status(404), ByProxy]),
        Case::get("b.test", "/").expect([Status(404), ByProxy]),
        Case::get("c.test", "/").expect([Status(404), ByProxy]),
        Case::get("nothing.test", "/").expect([Status(404), ByProxy]),
        Case::get("nothing.test", "/x").expect([Status(404), ByProxy, BodyHas("no route")]),
        Case::get("a.test", "/api/../exact").expect([By("api"), Body("api /exact\n")]),
        Case::get("a.test", "/api/%2e%2e/x").expect([WEB, BodyEnds(" /x\n")]),
        Case::get("a.test", "/down").expect([
            Status(503),
            ByProxy,
            BodyHas("default/empty"),
            BodyHas("no ready endpoints"),
        ]),
        Case::get("a.test", "/missing").expect([Status(503), ByProxy, BodyHas("default/nope")]),
    ];
    assert_table("routing", &run_cases(&c, proxy, &cases).await);

    // Not-ready endpoints never get traffic; both ready ones do. Requests go on until each
    // ready backend has had some (bounded by 2000 requests and 20 s); how evenly sequential
    // requests spread is tests/balance.rs's subject.
    let (before1, before2) = (web1.hits(), web2.hits());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0u64;
    while web1.hits() == before1 || web2.hits() == before2 {
        assert!(
            sent < 2000 && Instant::now() < deadline,
            "a ready backend got nothing from {sent} requests: web1 {}, web2 {}",
            web1.hits() - before1,
            web2.hits() - before2
        );
        assert_eq!(get(&c, proxy, "a.test", "/").await.status, 200);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(web_unready.hits(), 0);
    let (got1, got2) = (web1.hits() - before1, web2.hits() - before2);
    assert_eq!(got1 + got2, sent, "every request reached a ready backend");

    // Forwarding headers and a request id reach the backend.
    let a = get(&c, proxy, "a.test", "/hdr").await;
    assert_eq!(a.header("x-echo-x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(a.header("x-echo-x-forwarded-proto"), Some("http"));
    assert_eq!(a.header("x-echo-x-forwarded-host"), Some("a.test"));
    assert!(a
        .header("x-echo-forwarded")
        .unwrap()
        .contains("for=127.0.0.1"));
    let id = a
        .header("x-request-id")
        .expect("request id in the response");
    assert_eq!(a.header("x-echo-x-request-id"), Some(id));

    // When no endpoint is ready, serving+terminating ones take the traffic (rolling update).
    let before = generation(&sb).await;
    write(
        d,
        "web.yaml",
        &web(&[
            (web1.addr, Cond::Terminating),
            (web_unready.addr, Cond::NotReady),
        ]),
    );
    // An answer from web1 could still come from the old table (web1 and web2 ready): wait for
    // the new table itself.
    wait_generation_after(&sb, before).await;
    for _ in 0..20 {
        assert_eq!(get(&c, proxy, "a.test", "/").await.backend(), "web1");
    }

    // defaultBackend takes what no rule matches.
    dflt.status.store(200, Ordering::SeqCst);
    write(
        d,
        "default.yaml",
        &service_yaml("default", "dflt", "10.96.0.5", &ready(&[&dflt])),
    );
    write(
        d,
        "ingress-default.yaml",
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: zz-default, namespace: default}
spec:
  ingressClassName: switchboard
  defaultBackend: {service: {name: dflt, port: {number: 80}}}
",
    );
    wait_get(&sb, &c, "nothing.test", "/", "default backend", |a| {
        a.backend() == "default"
    })
    .await;
    assert_eq!(get(&c, proxy, "a.test", "/api").await.backend(), "api");
}
