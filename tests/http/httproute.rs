//! HTTPRoute end to end: matches, filters, weights, timeouts; balancing chosen by annotation.

use super::*;

/// The HTTPRoute of `httproute_matches_filters_and_weights`: a weighted default rule, matches,
/// filters, a backend request timeout.
const SHOP_ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: web}]
  hostnames: [shop.test, '*.shop.test']
  rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
      backendRefs:
        - {name: stable, port: 80, weight: 80}
        - {name: canary, port: 80, weight: 20}
    - matches: [{path: {type: PathPrefix, value: /}, headers: [{name: X-Canary, value: 'yes'}]}]
      backendRefs: [{name: canary, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /}, queryParams: [{name: beta, value: '1'}]}]
      backendRefs: [{name: canary, port: 80}]
    - matches: [{path: {type: Exact, value: /admin}, method: POST}]
      backendRefs: [{name: admin, port: 80}]
    - matches: [{path: {type: RegularExpression, value: '/v[0-9]+/.*'}}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: X-Version, value: versioned}]
            remove: [X-Remove-Me]
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            add: [{name: X-Served-By, value: switchboard}]
      backendRefs: [{name: admin, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /old}}]
      filters:
        - type: RequestRedirect
          requestRedirect: {scheme: https, hostname: new.test, statusCode: 301}
    - matches: [{path: {type: PathPrefix, value: /elsewhere}}]
      backendRefs: [{name: stable, namespace: other, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /granted}}]
      backendRefs: [{name: shared, namespace: granted, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /slow}}]
      timeouts: {backendRequest: 300ms}
      backendRefs: [{name: admin, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /prefix}}]
      filters:
        - type: URLRewrite
          urlRewrite: {hostname: inner.test, path: {type: ReplacePrefixMatch, replacePrefixMatch: /inner}}
      backendRefs: [{name: admin, port: 80}]
";

/// Lets HTTPRoutes in `default` use the Service `granted/shared` (and nothing else there).
const GRANT: &str = "apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-default, namespace: granted}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}]
  to: [{group: '', kind: Service, name: shared}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_matches_filters_and_weights() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let admin = Backend::start("admin").await;
    let Fixture {
        sb: _sb,
        c,
        proxy,
        dir: _dir,
    } = Fixture::start(&["--gateway-shared-ports"], &[("shop.test", "/")], |d| {
        write(d, "gw.yaml", GATEWAY);
        write_service(d, "stable", "10.96.1.1", &[&stable]);
        write_service(d, "canary", "10.96.1.2", &[&canary]);
        write_service(d, "admin", "10.96.1.3", &[&admin]);
        write(d, "route.yaml", SHOP_ROUTE);
        write(
            d,
            "granted.yaml",
            &service_yaml("granted", "shared", "10.96.1.4", &ready(&[&admin])),
        );
        write(d, "grant.yaml", GRANT);
    })
    .await;

    // Header, query and method matches outrank the plain weighted rule (ten times each, so
    // that the rule's 20% to canary cannot pass them by chance); filters; a backendRef into
    // another namespace is refused (500) without a ReferenceGrant there, and followed with one;
    // timeouts.backendRequest turns a slow answer into 504 and lets a quick one pass.
    use Check::*;
    let cases = [
        Case::get("shop.test", "/")
            .headers(&[("x-canary", "yes")])
            .times(10)
            .expect([Status(200), By("canary")]),
        Case::get("a.shop.test", "/p?x=2&beta=1")
            .times(10)
            .expect([Status(200), By("canary")]),
        Case::new("POST", "shop.test", "/admin").expect([Status(200), By("admin")]),
        // GET /admin is not the POST rule.
        Case::get("shop.test", "/admin").expect([Status(200), NotBy("admin")]),
        Case::get("other.test", "/").expect([Status(404), ByProxy]),
        Case::get("shop.test", "/v2/items")
            .headers(&[("x-remove-me", "1")])
            .expect([
                Status(200),
                By("admin"),
                Header("x-echo-x-version", "versioned"),
                NoHeader("x-echo-x-remove-me"),
                Header("x-served-by", "switchboard"),
            ]),
        Case::get("shop.test:8080", "/old/page?q=1").expect([
            Status(301),
            ByProxy,
            Header("location", "https://new.test/old/page?q=1"),
        ]),
        Case::get("shop.test", "/prefix/deep?z=1").expect([
            Status(200),
            Body("admin /inner/deep?z=1\n"),
            Header("x-echo-host", "inner.test"),
        ]),
        Case::get("shop.test", "/elsewhere").expect([
            Status(500),
            ByProxy,
            BodyHas("ReferenceGrant"),
        ]),
        Case::get("shop.test", "/granted").expect([Status(200), By("admin")]),
        Case::get("shop.test", "/slow")
            .headers(&[("x-delay-ms", "3000")])
            .expect([Status(504), ByProxy]),
        Case::get("shop.test", "/slow")
            .headers(&[("x-delay-ms", "10")])
            .expect([Status(200), By("admin")]),
    ];
    assert_table(
        "matches, filters and timeouts",
        &run_cases(&c, proxy, &cases).await,
    );

    // Weights 80/20 over n = 7000 requests (8 clients at once). Canary's count is binomial:
    // at p = 0.20 mean 1400, sd √(7000·0.2·0.8) ≈ 33.5, and the window 1233..=1567 is ±5 sd
    // (a false failure about 6 in 10^7). A 75/25 split (mean 1750, sd ≈ 36.2) lands above
    // 1567 except with probability about 2·10^-7, an 85/15 one (mean 1050, sd ≈ 29.9) below
    // 1233 except with about 10^-9; with 500 requests the old ±5 sd window passed both.
    let (before, before_stable) = (canary.hits(), stable.hits());
    let (clients, each) = (8, 875);
    let n = clients * each;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..each {
                assert_eq!(get(&c, proxy, "shop.test", "/w").await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let canary_share = canary.hits() - before;
    let stable_share = stable.hits() - before_stable;
    assert_eq!(
        canary_share + stable_share,
        n as u64,
        "every request reached one of them"
    );
    assert!(
        (1233..=1567).contains(&canary_share),
        "canary got {canary_share} of {n}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_chosen_by_service_annotation() {
    let pods = [
        Backend::start("p0").await,
        Backend::start("p1").await,
        Backend::start("p2").await,
    ];
    let Fixture { sb, c, proxy, dir } = Fixture::start(&[], &[("sticky.test", "/")], |d| {
        write(
            d,
            "svc.yaml",
            &annotated(
                &service_yaml(
                    "default",
                    "sticky",
                    "10.96.8.1",
                    &ready(&pods.iter().collect::<Vec<_>>()),
                ),
                "sticky",
                "switchboard.dev/lb-algorithm",
                "maglev:header:x-user",
            ),
        );
        write(d, "ing.yaml", &simple_ingress("sticky.test", "sticky"));
    })
    .await;
    let d = dir.path();
    let mut owners = std::collections::BTreeSet::new();
    for user in 0..30 {
        let user = format!("user{user}");
        let first = request(&c, "GET", proxy, "sticky.test", "/", &[("x-user", &user)])
            .await
            .unwrap()
            .backend()
            .to_string();
        for _ in 0..5 {
            let a = request(&c, "GET", proxy, "sticky.test", "/", &[("x-user", &user)])
                .await
                .unwrap();
            assert_eq!(a.backend(), first, "{user} moved");
        }
        owners.insert(first);
    }
    assert_eq!(
        owners.len(),
        3,
        "30 users spread over every pod: {owners:?}"
    );

    // The route's own annotation wins over the Service's: this Ingress balances round robin.
    write(
        d,
        "ing-rr.yaml",
        &simple_ingress("rr.test", "sticky").replace(
            "metadata: {name: sticky, namespace: default}",
            "metadata:\n  name: sticky-rr\n  namespace: default\n  annotations: {switchboard.dev/lb-algorithm: round-robin}",
        ),
    );
    wait_get(&sb, &c, "rr.test", "/", "served", |x| x.status == 200).await;
    let before: Vec<u64> = pods.iter().map(|p| p.hits()).collect();
    for _ in 0..30 {
        let a = request(&c, "GET", proxy, "rr.test", "/", &[("x-user", "alice")])
            .await
            .unwrap();
        assert_eq!(a.status, 200);
    }
    let counts: Vec<u64> = pods
        .iter()
        .zip(&before)
        .map(|(p, b)| p.hits() - b)
        .collect();
    assert_eq!(
        counts,
        [10, 10, 10],
        "round robin, whatever the x-user header"
    );
}

/// The backend of the request-timeout test, answering by path. `GET /late`: headers only once
/// the test calls `release` (so a 504 cannot come from the backend's answer). `GET /bounded`:
/// headers, then a body one byte per 100 ms that does not end on its own (for 10 000 s; only a
/// proxy cutting it ends it). Any other path: headers and a 20-byte body, one byte per 100 ms
/// (2 s in all, each gap far below any read timeout).
struct Trickle {
    addr: SocketAddr,
    /// `/late` requests received.
    late_seen: Arc<AtomicUsize>,
    /// `/late` answers sent.
    late_answered: Arc<AtomicUsize>,
    /// `/bounded` bodies whose connection was closed before the body ended.
    bounded_cut: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

impl Trickle {
    async fn start() -> Trickle {
        let late_seen = Arc::new(AtomicUsize::new(0));
        let late_answered = Arc::new(AtomicUsize::new(0));
        let bounded_cut = Arc::new(AtomicUsize::new(0));
        let (release, _) = watch::channel(false);
        let (seen, answered, cut, rel) = (
            late_seen.clone(),
            late_answered.clone(),
            bounded_cut.clone(),
            release.clone(),
        );
        let addr = raw_backend(move |mut s, _| {
            let (seen, answered, cut) = (seen.clone(), answered.clone(), cut.clone());
            let mut released = rel.subscribe();
            async move {
                let head = read_head(&mut s).await;
                if head.starts_with("GET /late") {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let _ = released.wait_for(|r| *r).await;
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlate")
                        .await
                        .is_ok()
                    {
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    return;
                }
                let len = if head.starts_with("GET /bounded") {
                    100_000
                } else {
                    20
                };
                let headers = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
                if s.write_all(headers.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..len {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if s.write_all(b"x").await.is_err() {
                        if len > 20 {
                            cut.fetch_add(1, Ordering::SeqCst);
                        }
                        return;
                    }
                }
            }
        })
        .await;
        Trickle {
            addr,
            late_seen,
            late_answered,
            bounded_cut,
            release,
        }
    }
}

/// `timeouts.request` bounds the whole exchange: late headers get a 504 and a body that trickles
/// past the deadline is cut off. Neither can be the backend's doing: the late answer is held
/// until the 504 has arrived, and the trickle does not end on its own. Without a timeout a
/// 20-byte trickle (2 s, longer than the 700 ms timeouts) completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_bounds_the_whole_exchange() {
    let trickle = Trickle::start().await;
    let Fixture {
        sb,
        c,
        proxy,
        dir: _dir,
    } = Fixture::start(&["--gateway-shared-ports"], &[("t.test", "/free")], |d| {
        write(d, "gw.yaml", GATEWAY);
        write(
            d,
            "svc.yaml",
            &service_yaml(
                "default",
                "trickle",
                "10.96.8.1",
                &[(trickle.addr, Cond::Ready)],
            ),
        );
        write(
            d,
            "route.yaml",
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: t, namespace: default}
spec:
  parentRefs: [{name: gw}]
  hostnames: [t.test]
  rules:
    - matches: [{path: {type: PathPrefix, value: /bounded}}]
      timeouts: {request: 700ms}
      backendRefs: [{name: trickle, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /late}}]
      timeouts: {request: 700ms}
      backendRefs: [{name: trickle, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /free}}]
      backendRefs: [{name: trickle, port: 80}]
",
        );
    })
    .await;

    // The backend holds its answer until the 504 is here: a proxy that waited for it would
    // never answer (the client gives up after 10 s and the test fails).
    let a = get(&c, proxy, "t.test", "/late").await;
    assert_eq!(a.status, 504, "{}", a.body);
    assert_eq!(
        trickle.late_seen.load(Ordering::SeqCst),
        1,
        "reached the backend"
    );
    assert_eq!(
        trickle.late_answered.load(Ordering::SeqCst),
        0,
        "the 504 came before the backend answered"
    );
    trickle.release.send_replace(true);

    // The body never ends on its own: only the proxy can end this exchange, with an error (the
    // 30 s bound is for a proxy that does not, far beyond the 700 ms timeout).
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        request(&c, "GET", proxy, "t.test", "/bounded", &[]),
    )
    .await
    .unwrap_or_else(|_| panic!("the trickling body was never cut off:\n{}", sb.log()));
    assert!(
        r.is_err(),
        "the trickling body must be cut off, got {:?}",
        r.map(|a| (a.status, a.body))
    );
    // The proxy closed the upstream connection too.
    eventually(&sb, "the backend saw its body cut off", || {
        trickle.bounded_cut.load(Ordering::SeqCst) == 1
    })
    .await;

    let a = get(&c, proxy, "t.test", "/free").await;
    assert_eq!((a.status, a.body.len()), (200, 20));
}
