//! The L7 ingress proxy end to end: the real binary on a manifest directory, real backends
//! (hyper servers on 127.0.0.1:0), real clients (hyper's client and `curl`).
//!
//! No timed assertions: every wait is "until this holds, or fail after a generous bound", and
//! every load loop is bounded in count.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

// ---------------------------------------------------------------- backends

/// A stand-in pod: answers `NAME PATH` with the request's headers echoed as `x-echo-*`,
/// counts requests, can be told to answer with another status, and echoes bytes on upgraded
/// connections (WebSocket).
struct Backend {
    name: String,
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    in_flight: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
    /// Connections open now (the proxy's upstream connections to this pod).
    conns: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
}

async fn handle(
    name: Arc<str>,
    hits: Arc<AtomicU64>,
    in_flight: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    in_flight.fetch_add(1, Ordering::SeqCst);
    let is_upgrade = req
        .headers()
        .get(hyper::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if is_upgrade {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        in_flight.fetch_sub(1, Ordering::SeqCst);
        return Ok(Response::builder()
            .status(101)
            .header(hyper::header::UPGRADE, "websocket")
            .header(hyper::header::CONNECTION, "Upgrade")
            .header("x-backend", &*name)
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    let delay_ms: u64 = req
        .headers()
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let mut resp = Response::builder()
        .status(status.load(Ordering::SeqCst))
        .header("x-backend", &*name);
    for (k, v) in req.headers() {
        resp = resp.header(format!("x-echo-{k}"), v);
    }
    let body = format!(
        "{} {}\n",
        name,
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    in_flight.fetch_sub(1, Ordering::SeqCst);
    Ok(resp.body(Full::new(Bytes::from(body))).unwrap())
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

impl Backend {
    async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(AtomicU16::new(200));
        let conns = Arc::new(AtomicUsize::new(0));
        let (stop, mut stop_rx) = watch::channel(false);
        let n: Arc<str> = name.into();
        let (h, f, s) = (hits.clone(), in_flight.clone(), status.clone());
        let open = conns.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = stop_rx.changed() => break,
                };
                let (n, h, f, s) = (n.clone(), h.clone(), f.clone(), s.clone());
                let mut conn_stop = stop_rx.clone();
                let open = open.clone();
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(n.clone(), h.clone(), f.clone(), s.clone(), req)
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades();
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stopped(&mut conn_stop) => {
                            // Stop: finish the request in progress, then close.
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Backend {
            name: name.into(),
            addr,
            hits,
            in_flight,
            status,
            conns,
            stop,
        }
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes connections once their current request is answered.
    fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

// ---------------------------------------------------------------- manifests

#[derive(Clone, Copy)]
enum Cond {
    Ready,
    NotReady,
    Terminating,
}

/// A Service (port 80 named `http`) with one EndpointSlice per endpoint (each endpoint on its
/// own port: a slice gives all its endpoints one port).
fn service_yaml(ns: &str, name: &str, ip: &str, endpoints: &[(SocketAddr, Cond)]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
    );
    for (i, (addr, cond)) in endpoints.iter().enumerate() {
        let conditions = match cond {
            Cond::Ready => "{ready: true, serving: true, terminating: false}",
            Cond::NotReady => "{ready: false, serving: false, terminating: false}",
            Cond::Terminating => "{ready: false, serving: true, terminating: true}",
        };
        out.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{i}\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints:\n  - addresses: [\"{ip}\"]\n    conditions: {conditions}\n",
            port = addr.port(),
            ip = addr.ip(),
        ));
    }
    out
}

/// `yaml`, a `service_yaml` manifest of Service `default/NAME`, with the Service annotated
/// `KEY: "VALUE"`.
fn annotated(yaml: &str, name: &str, key: &str, value: &str) -> String {
    let plain = format!("metadata: {{name: {name}, namespace: default}}");
    assert!(yaml.contains(&plain), "no Service default/{name} in {yaml}");
    yaml.replacen(
        &plain,
        &format!(
            "metadata: {{name: {name}, namespace: default, annotations: {{{key}: \"{value}\"}}}}"
        ),
        1,
    )
}

fn ready(backends: &[&Backend]) -> Vec<(SocketAddr, Cond)> {
    backends.iter().map(|b| (b.addr, Cond::Ready)).collect()
}

/// `NAME.yaml`: Service `default/NAME` with every backend ready.
fn write_service(dir: &Path, name: &str, ip: &str, backends: &[&Backend]) {
    write(
        dir,
        &format!("{name}.yaml"),
        &service_yaml("default", name, ip, &ready(backends)),
    );
}

/// Writes a file atomically (rename), so the watcher never reads half a file.
fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sb}
spec: {controllerName: switchboard.dev/gateway}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: sb
  listeners: [{name: web, protocol: HTTP, port: 80}]
";

// ---------------------------------------------------------------- clients

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

impl Answer {
    fn backend(&self) -> &str {
        self.headers
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn request(
    c: &HttpClient,
    method: &str,
    proxy: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"))
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .map_err(|_| format!("{method} {host}{path}: timed out"))?
        .map_err(|e| format!("{method} {host}{path}: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{method} {host}{path}: body: {e}"))?
        .to_bytes();
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

async fn get(c: &HttpClient, proxy: SocketAddr, host: &str, path: &str) -> Answer {
    request(c, "GET", proxy, host, path, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Polls until `pred` holds for a GET, returning that answer.
async fn wait_get(
    sb: &Switchboard,
    c: &HttpClient,
    host: &str,
    path: &str,
    what: &str,
    pred: impl Fn(&Answer) -> bool,
) -> Answer {
    let proxy = sb.listener("http");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let a = request(c, "GET", proxy, host, path, &[]).await;
        match a {
            Ok(a) if pred(&a) => return a,
            other => {
                if Instant::now() > deadline {
                    let last = match other {
                        Ok(a) => format!("{} {} {}", a.status, a.backend(), a.body),
                        Err(e) => e,
                    };
                    panic!(
                        "GET {host}{path}: never {what}; last: {last}\n--- log:\n{}",
                        sb.log()
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start(dir: &Path, extra: &[&str]) -> Switchboard {
    let mut args = vec![
        "--manifests",
        dir.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Switchboard::start_with_env(
        &args,
        &[(
            "RUST_LOG",
            "info,access=warn,controller=debug,kube=warn,hyper=warn",
        )],
    )
}

// ---------------------------------------------------------------- Ingress

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_routing_404_503_and_readiness() {
    let web1 = Backend::start("web1").await;
    let web2 = Backend::start("web2").await;
    let web_unready = Backend::start("web-unready").await;
    let api = Backend::start("api").await;
    let wild = Backend::start("wild").await;
    let dflt = Backend::start("default").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "web.yaml",
        &service_yaml(
            "default",
            "web",
            "10.96.0.1",
            &[
                (web1.addr, Cond::Ready),
                (web2.addr, Cond::Ready),
                (web_unready.addr, Cond::NotReady),
            ],
        ),
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
    write(
        d,
        "ingress.yaml",
        "apiVersion: networking.k8s.io/v1
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
",
    );
    let sb = start(d, &[]);
    let proxy = sb.listener("http");
    let c = client();
    wait_get(&sb, &c, "a.test", "/", "served by web", |a| a.status == 200).await;

    // Host and path routing, element-wise prefixes, Exact, port by name and number.
    let cases = [
        ("a.test", "/", 200, "web"),
        ("A.TEST:80", "/index.html", 200, "web"),
        ("a.test", "/api", 200, "api"),
        ("a.test", "/api/v1/x", 200, "api"),
        ("a.test", "/apix", 200, "web"),
        ("a.test", "/exact", 200, "api"),
        ("a.test", "/exact/more", 200, "web"),
        ("x.b.test", "/", 200, "wild"),
        ("y.x.b.test", "/", 404, "-"),
        ("b.test", "/", 404, "-"),
        ("c.test", "/", 404, "-"),
        ("nothing.test", "/", 404, "-"),
    ];
    for (host, path, status, backend) in cases {
        let a = get(&c, proxy, host, path).await;
        assert_eq!(a.status, status, "{host}{path}: {}", a.body);
        assert!(
            a.backend().starts_with(backend),
            "{host}{path} went to {}",
            a.backend()
        );
    }
    let a = get(&c, proxy, "nothing.test", "/x").await;
    assert!(a.body.contains("no route"), "{}", a.body);
    // Dot segments are resolved before matching and forwarding.
    let a = get(&c, proxy, "a.test", "/api/../exact").await;
    assert_eq!((a.backend(), a.body.as_str()), ("api", "api /exact\n"));
    let a = get(&c, proxy, "a.test", "/api/%2e%2e/x").await;
    assert!(
        a.backend().starts_with("web") && a.body.ends_with(" /x\n"),
        "{} {}",
        a.backend(),
        a.body
    );
    // No ready endpoint: 503 with a clear body; a missing service too.
    let a = get(&c, proxy, "a.test", "/down").await;
    assert_eq!(a.status, 503);
    assert!(
        a.body.contains("default/empty") && a.body.contains("no ready endpoints"),
        "{}",
        a.body
    );
    let a = get(&c, proxy, "a.test", "/missing").await;
    assert_eq!(a.status, 503);
    assert!(a.body.contains("default/nope"), "{}", a.body);

    // Not-ready endpoints never get traffic; both ready ones do. The least-request balancer
    // keeps sending sequential requests to the faster endpoint until the other's latency score
    // decays (half-life 1 s), so requests go on until each ready backend has had some: bounded
    // by 2000 requests and 20 s.
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
        &service_yaml(
            "default",
            "web",
            "10.96.0.1",
            &[
                (web1.addr, Cond::Terminating),
                (web_unready.addr, Cond::NotReady),
            ],
        ),
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

// ---------------------------------------------------------------- HTTPRoute

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_matches_filters_and_weights() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let admin = Backend::start("admin").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "gw.yaml", GATEWAY);
    write_service(d, "stable", "10.96.1.1", &[&stable]);
    write_service(d, "canary", "10.96.1.2", &[&canary]);
    write_service(d, "admin", "10.96.1.3", &[&admin]);
    write(
        d,
        "route.yaml",
        "apiVersion: gateway.networking.k8s.io/v1
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
    - matches: [{path: {type: PathPrefix, value: /slow}}]
      timeouts: {backendRequest: 300ms}
      backendRefs: [{name: admin, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /prefix}}]
      filters:
        - type: URLRewrite
          urlRewrite: {hostname: inner.test, path: {type: ReplacePrefixMatch, replacePrefixMatch: /inner}}
      backendRefs: [{name: admin, port: 80}]
",
    );
    let sb = start(d, &[]);
    let proxy = sb.listener("http");
    let c = client();
    wait_get(&sb, &c, "shop.test", "/", "served", |a| a.status == 200).await;

    // Header, query and method matches outrank the plain rule.
    for _ in 0..10 {
        let a = request(&c, "GET", proxy, "shop.test", "/", &[("x-canary", "yes")])
            .await
            .unwrap();
        assert_eq!(a.backend(), "canary");
        assert_eq!(
            get(&c, proxy, "a.shop.test", "/p?x=2&beta=1")
                .await
                .backend(),
            "canary"
        );
    }
    let a = request(&c, "POST", proxy, "shop.test", "/admin", &[])
        .await
        .unwrap();
    assert_eq!(a.backend(), "admin");
    let a = get(&c, proxy, "shop.test", "/admin").await;
    assert_ne!(a.backend(), "admin", "GET /admin is not the POST rule");
    assert_eq!(get(&c, proxy, "other.test", "/").await.status, 404);

    // Filters.
    let a = request(
        &c,
        "GET",
        proxy,
        "shop.test",
        "/v2/items",
        &[("x-remove-me", "1")],
    )
    .await
    .unwrap();
    assert_eq!(a.backend(), "admin");
    assert_eq!(a.header("x-echo-x-version"), Some("versioned"));
    assert_eq!(a.header("x-echo-x-remove-me"), None);
    assert_eq!(a.header("x-served-by"), Some("switchboard"));
    let a = get(&c, proxy, "shop.test:8080", "/old/page?q=1").await;
    assert_eq!(a.status, 301);
    assert_eq!(a.header("location"), Some("https://new.test/old/page?q=1"));
    let a = get(&c, proxy, "shop.test", "/prefix/deep?z=1").await;
    assert_eq!(a.body, "admin /inner/deep?z=1\n");
    assert_eq!(a.header("x-echo-host"), Some("inner.test"));

    // A backendRef into another namespace (no ReferenceGrant support): refused, not followed.
    let a = get(&c, proxy, "shop.test", "/elsewhere").await;
    assert_eq!(a.status, 500);
    assert!(a.body.contains("ReferenceGrant"), "{}", a.body);

    // timeouts.backendRequest: a slow answer becomes 504; a quick one passes.
    let a = request(
        &c,
        "GET",
        proxy,
        "shop.test",
        "/slow",
        &[("x-delay-ms", "3000")],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 504, "{}", a.body);
    let a = request(
        &c,
        "GET",
        proxy,
        "shop.test",
        "/slow",
        &[("x-delay-ms", "10")],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);

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
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
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
    let sb = start(d, &[]);
    let proxy = sb.listener("http");
    let c = client();
    wait_get(&sb, &c, "sticky.test", "/", "served", |x| x.status == 200).await;
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

// ---------------------------------------------------------------- retries and ejection

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_on_another_endpoint() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let down = closed_port().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "svc.yaml",
        &service_yaml(
            "default",
            "web",
            "10.96.2.1",
            &[
                (a.addr, Cond::Ready),
                (down, Cond::Ready),
                (b.addr, Cond::Ready),
            ],
        ),
    );
    write(
        d,
        "ing.yaml",
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: r, namespace: default}
spec:
  ingressClassName: switchboard
  rules:
    - host: r.test
      http:
        paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]
",
    );
    // Round robin, so the dead endpoint is certainly picked, and ejection off the table for
    // long enough that it keeps being tried.
    let sb = start(d, &["--lb-algorithm", "round-robin"]);
    let proxy = sb.listener("http");
    let c = client();
    wait_get(&sb, &c, "r.test", "/", "served", |a| a.status == 200).await;
    let mut errors = Vec::new();
    for i in 0..300 {
        // Fresh connections too: half the requests on a new client.
        let fresh;
        let cl = if i % 2 == 0 {
            fresh = client();
            &fresh
        } else {
            &c
        };
        match request(cl, "GET", proxy, "r.test", "/", &[]).await {
            Ok(a) if a.status == 200 => {}
            Ok(a) => errors.push(format!("{} {}", a.status, a.body)),
            Err(e) => errors.push(e),
        }
    }
    assert!(
        errors.is_empty(),
        "client-visible errors: {errors:?}\n{}",
        sb.log()
    );
    assert!(a.hits() > 50 && b.hits() > 50);
    let connect_errors = sb
        .metric("switchboard_http_upstream_connect_errors_total{service=\"default/web:80\"}")
        .await
        .unwrap_or(0.0);
    assert!(connect_errors >= 1.0, "the dead endpoint was tried");
    assert!(
        sb.metric("switchboard_http_retries_total{reason=\"connect\",service=\"default/web:80\"}")
            .await
            >= Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_on_503_within_budget() {
    let good = Backend::start("good").await;
    let busy = Backend::start("busy").await;
    busy.status.store(503, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_service(d, "web", "10.96.9.1", &[&good, &busy]);
    write(d, "ing.yaml", &simple_ingress("b.test", "web"));
    // Ejection off (0): the 503 endpoint stays in the round robin, so every other request
    // meets it.
    let sb = start(
        d,
        &[
            "--lb-algorithm",
            "round-robin",
            "--outlier-ejection-ms",
            "0",
        ],
    );
    let proxy = sb.listener("http");
    let c = client();
    wait_get(&sb, &c, "b.test", "/", "served", |x| x.status == 200).await;
    // A few GETs: each one that meets the 503 endpoint goes on to the good one, so the client
    // sees only 200 (a handful, well within the budget's floor of 10 retries).
    for _ in 0..8 {
        let a = get(&c, proxy, "b.test", "/").await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.backend(), "good");
    }
    assert!(busy.hits() >= 1, "the 503 endpoint was tried");
    assert!(
        sb.metric("switchboard_http_retries_total{reason=\"status\",service=\"default/web:80\"}")
            .await
            >= Some(1.0)
    );
    // POST is not idempotent: its 503 reaches the client.
    let mut saw_503 = false;
    for _ in 0..10 {
        let a = request(&c, "POST", proxy, "b.test", "/", &[])
            .await
            .unwrap();
        saw_503 |= a.status == 503;
    }
    assert!(saw_503, "a POST met the 503 endpoint and was not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoint_is_ejected_and_readmitted() {
    let good1 = Backend::start("good1").await;
    let good2 = Backend::start("good2").await;
    let bad = Backend::start("bad").await;
    bad.status.store(500, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "svc.yaml",
        &service_yaml(
            "default",
            "web",
            "10.96.3.1",
            &ready(&[&good1, &good2, &bad]),
        ),
    );
    write(
        d,
        "ing.yaml",
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: e, namespace: default}
spec:
  ingressClassName: switchboard
  rules:
    - host: e.test
      http:
        paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]
",
    );
    // Long enough that the 30 GETs below always run inside it (they take well under a second);
    // the test fails, rather than skip the check, if they somehow do not.
    let ejection = Duration::from_secs(10);
    let ejection_ms = ejection.as_millis().to_string();
    let sb = start(
        d,
        &[
            "--lb-algorithm",
            "round-robin",
            "--outlier-ejection-ms",
            &ejection_ms,
        ],
    );
    let proxy = sb.listener("http");
    let c = client();
    wait_get(&sb, &c, "e.test", "/", "served", |a| a.status == 200).await;
    // POST is not retried, so the 500s reach the client and count toward ejection.
    let series = "switchboard_http_ejections_total{service=\"default/web:80\"}";
    let mut sent = 0;
    // The ejection starts after the last POST was sent: it lasts at least until then + ejection.
    let mut last_post = Instant::now();
    while sb.metric(series).await.unwrap_or(0.0) < 1.0 {
        sent += 1;
        assert!(
            sent < 200,
            "never ejected after {sent} requests:\n{}",
            sb.log()
        );
        last_post = Instant::now();
        let _ = request(&c, "POST", proxy, "e.test", "/", &[])
            .await
            .unwrap();
    }
    // Ejected: the next requests avoid it.
    let before = bad.hits();
    for _ in 0..30 {
        assert_eq!(get(&c, proxy, "e.test", "/").await.status, 200);
    }
    assert!(
        last_post.elapsed() < ejection,
        "the 30 GETs outlasted the {ejection:?} ejection ({:?}): the check below would not hold",
        last_post.elapsed()
    );
    assert_eq!(bad.hits(), before, "an ejected endpoint got requests");
    // Healthy again: re-admitted once the ejection ends.
    bad.status.store(200, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while bad.hits() == before {
        assert!(
            Instant::now() < deadline,
            "never re-admitted:\n{}",
            sb.log()
        );
        assert_eq!(get(&c, proxy, "e.test", "/").await.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- protocols

fn curl(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn simple_ingress(host: &str, service: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: {service}, namespace: default}}
spec:
  ingressClassName: switchboard
  rules:
    - host: {host}
      http:
        paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: {service}, port: {{number: 80}}}}}}}}]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_tls_with_two_sni_names() {
    let a = Backend::start("site-a").await;
    let b = Backend::start("site-b").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "a.yaml",
        &service_yaml("default", "site-a", "10.96.4.1", &ready(&[&a])),
    );
    write(
        d,
        "b.yaml",
        &service_yaml("default", "site-b", "10.96.4.2", &ready(&[&b])),
    );
    write(d, "ia.yaml", &simple_ingress("a.test", "site-a"));
    write(d, "ib.yaml", &simple_ingress("b.test", "site-b"));
    // Two certificates, each trusted on its own by the client: the wrong one fails verification.
    let certs = tempfile::tempdir().unwrap();
    for name in ["a.test", "b.test"] {
        cert_dir_entry(certs.path(), name);
    }
    let sb = start(
        d,
        &[
            "--https",
            "127.0.0.1:0",
            "--tls-cert-dir",
            certs.path().to_str().unwrap(),
        ],
    );
    let c = client();
    wait_get(&sb, &c, "a.test", "/", "served", |x| x.status == 200).await;
    wait_get(&sb, &c, "b.test", "/", "served", |x| x.status == 200).await;

    let http = sb.listener("http");
    let (ok, out) = curl(&[
        "--http2-prior-knowledge",
        "-w",
        " %{http_version}",
        "-H",
        "Host: a.test",
        &format!("http://{http}/h2c"),
    ]);
    assert!(ok, "{out}");
    assert_eq!(out, "site-a /h2c\n 2");
    // Over HTTP/2 the path is also resolved, and the authority survives the rewrite.
    let (ok, out) = curl(&[
        "--http2-prior-knowledge",
        "--path-as-is",
        "-H",
        "Host: a.test",
        &format!("http://{http}/x/../h2c"),
    ]);
    assert!(ok, "{out}");
    assert_eq!(out, "site-a /h2c\n");

    // A request shorter than the HTTP/2 preface (an HTTP/1.0 health check) is answered too.
    let mut raw = TcpStream::connect(http).await.unwrap();
    raw.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let head = read_head(&mut raw).await;
    assert!(
        head.starts_with("HTTP/1.0 404") || head.starts_with("HTTP/1.1 404"),
        "{head}"
    );

    let https = sb.listener("https");
    for (name, site) in [("a.test", "site-a"), ("b.test", "site-b")] {
        let ca = certs.path().join(name).join("tls.crt");
        for proto in ["--http1.1", "--http2"] {
            let (ok, out) = curl(&[
                proto,
                "--cacert",
                ca.to_str().unwrap(),
                "--resolve",
                &format!("{name}:{}:127.0.0.1", https.port()),
                "-w",
                " %{http_version}",
                &format!("https://{name}:{}/tls", https.port()),
            ]);
            assert!(ok, "{name} {proto}: {out}");
            let version = if proto == "--http2" { "2" } else { "1.1" };
            assert_eq!(out, format!("{site} /tls\n {version}"));
        }
    }
    // SNI chooses the certificate: each name is presented its own and never the other's. The
    // certificate is taken without verification, so this fails if the wrong one is chosen.
    for (name, other) in [("a.test", "b.test"), ("b.test", "a.test")] {
        let own = pem_der(&certs.path().join(name).join("tls.crt"));
        let theirs = pem_der(&certs.path().join(other).join("tls.crt"));
        let got = presented_certificate(https, name).await;
        assert!(got != theirs, "{name} was served {other}'s certificate");
        assert!(got == own, "{name} was served an unknown certificate");
    }
    // X-Forwarded-Proto says https.
    let (ok, out) = curl(&[
        "-i",
        "--cacert",
        certs.path().join("a.test/tls.crt").to_str().unwrap(),
        "--resolve",
        &format!("a.test:{}:127.0.0.1", https.port()),
        &format!("https://a.test:{}/", https.port()),
    ]);
    assert!(
        ok && out
            .to_ascii_lowercase()
            .contains("x-echo-x-forwarded-proto: https"),
        "{out}"
    );
}

/// Standard base64 with padding (for Secret `data`).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A self-signed certificate for `name`: its PEM (written to `ca_dir/FILE` for curl's
/// `--cacert`) and a `kubernetes.io/tls` Secret manifest carrying it.
fn tls_secret(secret: &str, name: &str, ca_dir: &Path, file: &str) -> (String, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let pem = ck.cert.pem();
    let ca = ca_dir.join(file);
    std::fs::write(&ca, &pem).unwrap();
    let yaml = format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: {secret}, namespace: default}}
type: kubernetes.io/tls
data:
  tls.crt: {}
  tls.key: {}
",
        base64(pem.as_bytes()),
        base64(ck.signing_key.serialize_pem().as_bytes())
    );
    (yaml, ca)
}

/// The DER bytes of the (single) certificate in the PEM file `path`.
fn pem_der(path: &Path) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

/// The leaf certificate the TLS listener `https` presents for SNI `name`. Nothing is verified
/// (the handshake signature aside), so the certificate the server chose is what is returned,
/// whichever it is.
async fn presented_certificate(https: SocketAddr, name: &str) -> Vec<u8> {
    use tokio_rustls::rustls::{
        self,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::CryptoProvider,
        pki_types::{CertificateDer, ServerName, UnixTime},
        DigitallySignedStruct, SignatureScheme,
    };
    #[derive(Debug)]
    struct Record(Arc<CryptoProvider>, std::sync::Mutex<Option<Vec<u8>>>);
    impl ServerCertVerifier for Record {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            *self.1.lock().unwrap() = Some(end_entity.to_vec());
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algs = &self.0.signature_verification_algorithms;
            rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algs = &self.0.signature_verification_algorithms;
            rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let record = Arc::new(Record(provider.clone(), Default::default()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(record.clone())
        .with_no_client_auth();
    let tcp = TcpStream::connect(https).await.unwrap();
    let sni = ServerName::try_from(name.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(Duration::from_secs(10), tls.connect(sni, tcp))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake");
    let got = record.1.lock().unwrap().take();
    got.expect("a certificate was presented")
}

/// `curl https://NAME:PORT/PATH` trusting only `ca`, with NAME resolved to the listener.
fn curl_tls(https: SocketAddr, name: &str, ca: &Path, path: &str) -> (bool, String) {
    curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &format!("{name}:{}:127.0.0.1", https.port()),
        &format!("https://{name}:{}{path}", https.port()),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificates_from_ingress_secrets() {
    let a = Backend::start("site-a").await;
    let b = Backend::start("site-b").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cas = tempfile::tempdir().unwrap();
    write(
        d,
        "a.yaml",
        &service_yaml("default", "site-a", "10.96.5.1", &ready(&[&a])),
    );
    write(
        d,
        "b.yaml",
        &service_yaml("default", "site-b", "10.96.5.2", &ready(&[&b])),
    );
    let (secret_a, ca_a) = tls_secret("cert-a", "a.test", cas.path(), "a1.crt");
    let (secret_b, ca_b) = tls_secret("cert-b", "b.test", cas.path(), "b.crt");
    write(d, "secret-a.yaml", &secret_a);
    write(d, "secret-b.yaml", &secret_b);
    write(
        d,
        "ingress.yaml",
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: secure, namespace: default}
spec:
  ingressClassName: switchboard
  tls:
  - hosts: [a.test]
    secretName: cert-a
  - hosts: [b.test]
    secretName: cert-b
  rules:
  - host: a.test
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: site-a, port: {number: 80}}}}]
  - host: b.test
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: site-b, port: {number: 80}}}}]
",
    );
    // No --tls-cert-dir: every certificate comes from the Secrets.
    let sb = start(d, &["--https", "127.0.0.1:0"]);
    let c = client();
    wait_get(&sb, &c, "a.test", "/", "served", |x| x.status == 200).await;
    wait_get(&sb, &c, "b.test", "/", "served", |x| x.status == 200).await;
    let https = sb.listener("https");

    // Each name verifies against its own certificate only (each is its own CA), and the request
    // reaches the backend the Ingress names.
    for (name, site, ca, wrong) in [
        ("a.test", "site-a", &ca_a, &ca_b),
        ("b.test", "site-b", &ca_b, &ca_a),
    ] {
        let (ok, out) = curl_tls(https, name, ca, "/secret");
        assert!(ok, "{name}: {out}");
        assert_eq!(out, format!("{site} /secret\n"));
        // Taken without verification, so this fails if SNI picks the other Secret's certificate.
        let got = presented_certificate(https, name).await;
        assert!(
            got != pem_der(wrong),
            "{name} was served the other certificate"
        );
        assert!(
            got == pem_der(ca),
            "{name} was served an unknown certificate"
        );
    }
    let hits_a = a.hits.load(Ordering::SeqCst);

    // A new certificate in Secret cert-a is served without a restart.
    let (secret_a2, ca_a2) = tls_secret("cert-a", "a.test", cas.path(), "a2.crt");
    write(d, "secret-a.yaml", &secret_a2);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out) = curl_tls(https, "a.test", &ca_a2, "/renewed");
        if ok {
            assert_eq!(out, "site-a /renewed\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new certificate for a.test not served: {out}\n{}",
            sb.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(a.hits.load(Ordering::SeqCst) > hits_a);
    let (ok, _) = curl_tls(https, "a.test", &ca_a, "/");
    assert!(!ok, "the replaced certificate must no longer be served");
    // b.test is untouched.
    let (ok, out) = curl_tls(https, "b.test", &ca_b, "/still");
    assert!(ok && out == "site-b /still\n", "{out}");
}

/// A backend on 127.0.0.1 that hands each accepted connection, numbered from 1, to `serve`.
async fn raw_backend<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream, u32) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0u32;
        while let Ok((stream, _)) = l.accept().await {
            n += 1;
            tokio::spawn(serve(stream, n));
        }
    });
    addr
}

/// A backend that speaks only HTTP/2 without TLS (as gRPC servers do), answering its protocol
/// version.
async fn h2c_backend() -> SocketAddr {
    raw_backend(|stream, _| async move {
        let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
            let body = format!("h2c {:?} {}\n", req.version(), req.uri().path());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_backends_by_app_protocol() {
    let grpc = h2c_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "svc.yaml",
        &service_yaml("default", "grpc", "10.96.10.1", &[(grpc, Cond::Ready)]).replace(
            "ports: [{name: http, port: 80, targetPort: 8080}]",
            "ports: [{name: http, port: 80, targetPort: 8080, appProtocol: kubernetes.io/h2c}]",
        ),
    );
    write(d, "ing.yaml", &simple_ingress("grpc.test", "grpc"));
    let sb = start(d, &[]);
    let c = client();
    // An HTTP/1.1 client reaches an HTTP/2-only backend; so does an h2c client.
    let a = wait_get(
        &sb,
        &c,
        "grpc.test",
        "/svc/Method",
        "served over h2c",
        |x| x.status == 200,
    )
    .await;
    assert_eq!(a.body, "h2c HTTP/2.0 /svc/Method\n");
    let (ok, out) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: grpc.test",
        &format!("http://{}/x", sb.listener("http")),
    ]);
    assert!(ok, "{out}");
    assert_eq!(out, "h2c HTTP/2.0 /x\n");
}

/// Reads an HTTP/1.1 response head from a raw stream.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("response head in time")
            .unwrap();
        assert!(
            n == 1,
            "connection closed in the response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_survives_100_table_swaps() {
    let ws = Backend::start("ws").await;
    let extra = Backend::start("extra").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_service(d, "ws", "10.96.5.1", &[&ws]);
    write(d, "ing.yaml", &simple_ingress("ws.test", "ws"));
    let sb = start(d, &[]);
    let c = client();
    wait_get(&sb, &c, "ws.test", "/", "served", |x| x.status == 200).await;

    let mut s = TcpStream::connect(sb.listener("http")).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    let generation = || async {
        sb.metric("switchboard_snapshot_generation")
            .await
            .unwrap_or(0.0)
    };
    for i in 0..100 {
        // Swap the tables: the websocket's own service gains and loses an endpoint, and the
        // Ingress changes, every round.
        let g = generation().await;
        let eps = if i % 2 == 0 {
            ready(&[&ws, &extra])
        } else {
            ready(&[&ws])
        };
        write(
            d,
            "ws.yaml",
            &service_yaml("default", "ws", "10.96.5.1", &eps),
        );
        write(
            d,
            "ing.yaml",
            &simple_ingress("ws.test", "ws").replace("path: /,", &format!("path: /r{i},")),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while generation().await <= g {
            assert!(
                Instant::now() < deadline,
                "no new generation:\n{}",
                sb.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let msg = format!("message {i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .unwrap_or_else(|e| panic!("round {i}: {e}\n{}", sb.log()));
        assert_eq!(String::from_utf8(buf).unwrap(), msg);
    }
}

// ---------------------------------------------------------------- rolling update

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_replacement_under_load_fails_no_request() {
    rolling_replacement(None, 4).await;
}

/// The same with the Service's requests pipelined to its endpoints: requests waiting behind
/// another on a connection to a pod that goes away are sent again, and none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_replacement_with_upstream_pipelining_fails_no_request() {
    rolling_replacement(Some("true"), 12).await;
}

/// Replaces all three pods of a Service one by one under the load of `clients` looping
/// clients, with `pipelining` as the Service's `switchboard.dev/upstream-pipelining`.
async fn rolling_replacement(pipelining: Option<&str>, clients: usize) {
    let mut pods: Vec<Backend> = Vec::new();
    for i in 0..3 {
        pods.push(Backend::start(&format!("old{i}")).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let svc = |eps: &[(SocketAddr, Cond)]| {
        let yaml = service_yaml("default", "web", "10.96.6.1", eps);
        match pipelining {
            Some(v) => annotated(&yaml, "web", "switchboard.dev/upstream-pipelining", v),
            None => yaml,
        }
    };
    write(
        d,
        "svc.yaml",
        &svc(&ready(&pods.iter().collect::<Vec<_>>())),
    );
    write(d, "ing.yaml", &simple_ingress("roll.test", "web"));
    let sb = start(d, &[]);
    let proxy = sb.listener("http");
    let c = client();
    wait_get(&sb, &c, "roll.test", "/", "served", |x| x.status == 200).await;

    // Load: the clients, each a bounded loop of GETs (some slow) until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let served = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    let mut load = Vec::new();
    for w in 0..clients {
        let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            for i in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let delay = if (i + w) % 10 == 0 { "30" } else { "0" };
                match request(&c, "GET", proxy, "roll.test", "/", &[("x-delay-ms", delay)]).await {
                    Ok(a) if a.status == 200 => {
                        *served
                            .lock()
                            .unwrap()
                            .entry(a.backend().to_string())
                            .or_default() += 1;
                    }
                    Ok(a) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{} {}", a.status, a.body)),
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }

    // Replace every pod, one at a time, as a Deployment's rolling update does: start the new
    // pod, add it ready, mark the old one terminating, remove it, then stop it.
    let mut current: Vec<Backend> = pods;
    for i in 0..3 {
        let new = Backend::start(&format!("new{i}")).await;
        let mut eps: Vec<(SocketAddr, Cond)> =
            current.iter().map(|b| (b.addr, Cond::Ready)).collect();
        eps.push((new.addr, Cond::Ready));
        write(d, "svc.yaml", &svc(&eps));
        let deadline = Instant::now() + Duration::from_secs(15);
        while new.hits() == 0 {
            assert!(
                Instant::now() < deadline,
                "new pod never served:\n{}",
                sb.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let old = current.remove(0);
        let mut eps: Vec<(SocketAddr, Cond)> = vec![(old.addr, Cond::Terminating)];
        eps.extend(current.iter().map(|b| (b.addr, Cond::Ready)));
        eps.push((new.addr, Cond::Ready));
        write(d, "svc.yaml", &svc(&eps));
        let old_ep = format!("endpoint {} ready", old.addr);
        sb.wait_tables("old pod terminating", |t| !t.contains(&old_ep))
            .await;
        current.push(new);
        write(
            d,
            "svc.yaml",
            &svc(&current
                .iter()
                .map(|b| (b.addr, Cond::Ready))
                .collect::<Vec<_>>()),
        );
        let gone = format!("endpoint {} ", old.addr);
        sb.wait_tables("old pod removed", |t| !t.contains(&gone))
            .await;
        // The pod gets SIGTERM: it finishes what it has and closes its connections.
        old.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while old.in_flight.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Let the load run against the new set for a moment.
        let seen = current.last().unwrap().hits();
        let deadline = Instant::now() + Duration::from_secs(10);
        while current.last().unwrap().hits() < seen + 50 {
            assert!(
                Instant::now() < deadline,
                "no load on the new pod:\n{}",
                sb.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    let served = std::mem::take(&mut *served.lock().unwrap());
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}\nserved: {served:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let total: u64 = served.values().sum();
    assert!(total > 300, "load too small: {served:?}");
    for b in &current {
        assert!(served.get(&b.name).copied().unwrap_or(0) > 0, "{served:?}");
    }
    if pipelining.is_some() {
        let pipelined = sb
            .metric("switchboard_http_fast_path_total{outcome=\"pipelined\"}")
            .await
            .unwrap_or(0.0);
        assert!(pipelined > 0.0, "no request was pipelined (of {total})");
    }
}

// ---------------------------------------------------------------- shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let slow = Backend::start("slow").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_service(d, "slow", "10.96.7.1", &[&slow]);
    write(d, "ing.yaml", &simple_ingress("slow.test", "slow"));
    // Served on the process runtime, not on dedicated workers (the default): that mode's drain.
    let sb = start(d, &["--http-workers", "0"]);
    let proxy = sb.listener("http");
    let c = client();
    wait_get(&sb, &c, "slow.test", "/", "served", |x| x.status == 200).await;
    terminate_with_a_request_in_flight(sb, &c, &slow, proxy, "slow.test").await;
}

/// SIGTERMs switchboard while a 1.5 s request through `proxy` to `slow` is in flight: the
/// request is answered in full and the process exits 0.
async fn terminate_with_a_request_in_flight(
    mut sb: Switchboard,
    c: &HttpClient,
    slow: &Backend,
    proxy: SocketAddr,
    host: &'static str,
) {
    let c2 = c.clone();
    let inflight = tokio::spawn(async move {
        request(&c2, "GET", proxy, host, "/slow", &[("x-delay-ms", "1500")]).await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.in_flight.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = tokio::task::spawn_blocking(move || {
        let s = sb.terminate();
        (s, sb)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "{}", status.1.log());
    let a = inflight
        .await
        .unwrap()
        .expect("the in-flight request finished");
    assert_eq!((a.status, a.body.as_str()), (200, "slow /slow\n"));
}

#[tokio::test]
async fn http_workers_serve_both_paths_and_drain_on_shutdown() {
    let slow = Backend::start("slow").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_service(d, "slow", "10.96.7.2", &[&slow]);
    write(d, "ing.yaml", &simple_ingress("w.test", "slow"));
    let sb = start(d, &["--http-workers", "2"]);
    let proxy = sb.listener("http");
    let c = client();
    wait_get(&sb, &c, "w.test", "/", "served", |x| x.status == 200).await;

    // Two event-loop threads, each with its own socket on the one port.
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", sb.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    for w in ["http-worker-1", "http-worker-2"] {
        assert!(threads.iter().any(|t| t == w), "{threads:?}");
    }

    // New connections (the kernel spreads them over the two sockets): bodyless requests on
    // the fast path, and requests with a body handed over to pingora, on either worker.
    for i in 0..30 {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        let req = if i % 3 == 0 {
            w_request("POST", &format!("/p{i}"), "Connection: close\r\n")
        } else {
            w_request("GET", &format!("/g{i}"), "Connection: close\r\n")
        };
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .expect("answered in time")
            .unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200"),
            "request {i}: {out}\n{}",
            sb.log()
        );
        assert!(
            out.ends_with(&format!(
                "slow /{}{i}\n",
                if i % 3 == 0 { "p" } else { "g" }
            )),
            "{out}"
        );
    }
    let handed = sb
        .metric("switchboard_http_fast_path_total{outcome=\"handed_over\"}")
        .await
        .unwrap_or(0.0);
    // Exactly the 10 POSTs (every third of the 30); the GETs stay on the fast path.
    assert_eq!(handed, 10.0, "handed over {handed}");

    // Connections held open stay even over the workers (`Spread`): the kernel's hash alone
    // splits 40 connections further apart than 19/21 about two times in three. Each answers
    // on whichever worker took it, on the fast path and through pingora.
    let mut held = Vec::new();
    for i in 0..40 {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        let method = if i % 4 == 0 { "POST" } else { "GET" };
        s.write_all(w_request(method, &format!("/k{i}"), "").as_bytes())
            .await
            .unwrap();
        let want = format!("slow /k{i}\n");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).ends_with(&want) {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("held connection {i}: no answer\n{}", sb.log()))
                .unwrap();
            assert!(
                n > 0,
                "held connection {i} closed: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        held.push(s);
    }
    let [w1, w2] = per_worker(&sb, "switchboard_http_worker_connections").await;
    assert!(w1 + w2 >= 40.0, "worker connections {w1} + {w2}");
    assert!((w1 - w2).abs() <= 2.0, "uneven: {w1} and {w2}");
    drop(held);

    // SIGTERM with a request in flight on a worker: it finishes, then the process exits 0.
    terminate_with_a_request_in_flight(sb, &c, &slow, proxy, "w.test").await;
}

/// A self-signed certificate for `name`, written as `dir/NAME/tls.crt` and `tls.key` (the
/// `--tls-cert-dir` layout).
fn cert_dir_entry(dir: &Path, name: &str) -> rcgen::CertifiedKey<rcgen::KeyPair> {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let sub = dir.join(name);
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("tls.crt"), ck.cert.pem()).unwrap();
    std::fs::write(sub.join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
    ck
}

/// TLS connections handed from one worker to the other finish their handshake and are served
/// there: raw connections are opened and held until the `Spread` hands one over (the counter
/// moves), and that very connection then speaks TLS.
#[tokio::test]
async fn tls_connections_handed_between_workers_are_served() {
    use tokio_rustls::rustls;
    let site = Backend::start("site").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_service(d, "site", "10.96.7.3", &[&site]);
    write(d, "ing.yaml", &simple_ingress("h.test", "site"));
    let certs = tempfile::tempdir().unwrap();
    let ck = cert_dir_entry(certs.path(), "h.test");
    let sb = start(
        d,
        &[
            "--http-workers",
            "2",
            "--https",
            "127.0.0.1:0",
            "--tls-cert-dir",
            certs.path().to_str().unwrap(),
        ],
    );
    wait_get(&sb, &client(), "h.test", "/", "served", |x| x.status == 200).await;
    let https = sb.listener("https");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    let sb_ref = &sb;
    let sum = |series| async move { per_worker(sb_ref, series).await.iter().sum::<f64>() };
    let handoffs = || sum("switchboard_http_worker_handoffs_total");
    let open = || sum("switchboard_http_worker_connections");

    let (handed_before, open_before) = (handoffs().await, open().await);
    let mut held = Vec::new();
    let handed = loop {
        assert!(
            held.len() < 200,
            "no hand-over in 200 connections\n{}",
            sb.log()
        );
        let s = TcpStream::connect(https).await.unwrap();
        // Accepting is asynchronous: wait until the new connection is counted somewhere.
        let deadline = Instant::now() + Duration::from_secs(5);
        while open().await < open_before + (held.len() + 1) as f64 {
            assert!(
                Instant::now() < deadline,
                "connection not counted\n{}",
                sb.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if handoffs().await > handed_before {
            break s;
        }
        held.push(s);
    };
    let name = rustls::pki_types::ServerName::try_from("h.test").unwrap();
    let mut s = tls.connect(name, handed).await.expect("TLS handshake");
    s.write_all(b"GET /handed HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("answered in time")
        .ok();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{}", sb.log());
    assert!(out.ends_with("site /handed\n"), "{out}");
}

/// A per-worker series of a switchboard run with `--http-workers 2`: worker 1's and worker 2's
/// values (0 where not exported yet).
async fn per_worker(sb: &Switchboard, series: &str) -> [f64; 2] {
    let mut v = [0.0; 2];
    for (w, x) in v.iter_mut().enumerate() {
        let name = format!("{series}{{worker=\"{}\"}}", w + 1);
        *x = sb.metric(&name).await.unwrap_or(0.0);
    }
    v
}

/// A request to host `w.test`: a POST carries the body "hi" (so pingora takes it), a GET none
/// (so the fast path does); `extra` are more header lines.
fn w_request(method: &str, path: &str, extra: &str) -> String {
    let body = if method == "POST" { "hi" } else { "" };
    let length = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    format!("{method} {path} HTTP/1.1\r\nHost: w.test\r\n{length}{extra}\r\n{body}")
}

/// The published snapshot's generation (`/debug/tables`).
async fn generation(sb: &Switchboard) -> u64 {
    let body = sb.admin_get("/debug/tables").await.1;
    body.strip_prefix("# generation ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no generation in /debug/tables: {body:.200}"))
}

/// Waits until a snapshot newer than `before` is published.
async fn wait_generation_after(sb: &Switchboard, before: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while generation(sb).await <= before {
        assert!(
            Instant::now() < deadline,
            "no new snapshot after {before}\n{}",
            sb.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits up to 5 s for `pred`, panicking with `what` and the log otherwise.
async fn eventually(sb: &Switchboard, what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pred() {
        if Instant::now() > deadline {
            panic!("never: {what}\n--- log:\n{}", sb.log());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After an endpoint leaves the table: its idle pooled connections are closed at once (not after
/// the 60 s pool idle timeout), a request in flight on it finishes, and its connection is closed
/// when that request is done. The pool gauge shows the pooled connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_connections_to_a_removed_endpoint_are_closed() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ing.yaml", &simple_ingress("pool.test", "web"));
    write_service(dir.path(), "web", "10.96.7.1", &[&old]);
    let sb = start(dir.path(), &[]);
    let proxy = sb.listener("http");
    let c = client();
    wait_get(&sb, &c, "pool.test", "/", "reached old", |a| {
        a.backend() == "old"
    })
    .await;
    for _ in 0..5 {
        assert_eq!(get(&c, proxy, "pool.test", "/").await.backend(), "old");
    }
    assert!(old.conns() >= 1);
    let gauge =
        "switchboard_http_upstream_pool_connections{service=\"default/web:80\",state=\"idle\"}";
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sb.metric(gauge).await.is_some_and(|v| v >= 1.0) {
        assert!(Instant::now() < deadline, "{gauge} never >= 1");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A slow request holds the pooled connection; a second request meanwhile opens another,
    // which then idles in the pool.
    let slow = {
        let c = c.clone();
        tokio::spawn(async move {
            request(
                &c,
                "GET",
                proxy,
                "pool.test",
                "/slow",
                &[("x-delay-ms", "3000")],
            )
            .await
        })
    };
    eventually(&sb, "the slow request reached old", || {
        old.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(get(&c, proxy, "pool.test", "/").await.backend(), "old");
    assert!(old.conns() >= 2);

    // old leaves the table.
    write_service(dir.path(), "web", "10.96.7.1", &[&new]);
    wait_get(&sb, &c, "pool.test", "/", "reached new", |a| {
        a.backend() == "new"
    })
    .await;
    eventually(&sb, "the idle connections to old closed", || {
        old.conns() == 1
    })
    .await;
    assert_eq!(
        old.in_flight.load(Ordering::SeqCst),
        1,
        "the slow request is still in flight"
    );
    let a = slow.await.unwrap().expect("the in-flight request finishes");
    assert_eq!((a.status, a.backend()), (200, "old"));
    eventually(
        &sb,
        "the finished request's connection to old closed",
        || old.conns() == 0,
    )
    .await;
    assert!(new.conns() >= 1);
    assert!(
        sb.log().contains("closed idle upstream connections"),
        "{}",
        sb.log()
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
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
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
    let sb = start(d, &[]);
    let proxy = sb.listener("http");
    let c = client();
    wait_get(&sb, &c, "t.test", "/free", "served", |a| a.status == 200).await;

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

/// A backend written byte by byte, for the response framings a hyper backend does not produce.
/// By path: `/chunked` (chunked with a trailer), `/close` (no length: ends when the connection
/// closes), `/nocontent` (204), `/hint` (103 Early Hints, then 200), `/drop` (answers, then
/// closes the kept-alive connection 50 ms later without saying so, as a backend's idle timeout
/// does), `/dropnow` (the same at once), `/then-close` (answers, then closes the connection
/// when the next request arrives on it, unanswered); anything else echoes `METHOD PATH body=N conn=K` with Content-Length (no body for
/// HEAD). Each accepted connection gets the next number K.
async fn scripted_backend() -> SocketAddr {
    raw_backend(|mut s, k| async move {
        let mut close_next = false;
        loop {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match s.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            if close_next {
                return;
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            if s.read_exact(&mut body).await.is_err() {
                return;
            }
            let mut words = head.split_whitespace();
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let out: Vec<u8> = match path {
                "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                    5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"
                    .to_vec(),
                "/close" => {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil ").await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = s.write_all(b"close").await;
                    return;
                }
                "/nocontent" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
                "/hint" => b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n\
                    HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    .to_vec(),
                _ => {
                    let text = format!("{method} {path} body={len} conn={k}");
                    let mut r =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", text.len())
                            .into_bytes();
                    // `/hb...`: a body even for HEAD, as some servers do.
                    if method != "HEAD" || path.starts_with("/hb") {
                        r.extend_from_slice(text.as_bytes());
                    }
                    r
                }
            };
            if s.write_all(&out).await.is_err() {
                return;
            }
            if path == "/drop" {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
            if path == "/dropnow" {
                return;
            }
            close_next = path == "/then-close";
        }
    })
    .await
}

/// Reads from `s` until `want` responses' worth of text has arrived (`done` says so) or 5 s.
async fn read_until(s: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done(&String::from_utf8_lossy(&got)) {
        let mut buf = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The plain-HTTP/1.1 fast path (`proxy/src/http/fast.rs`) passes every response framing on,
/// answers pipelined requests in order, survives pooled connections the backend closed, and
/// hands a connection to the general path for a request with a body, which is then served too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_framings_pipelining_stale_connections_and_handover() {
    let backend = scripted_backend().await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ing.yaml", &simple_ingress("fast.test", "raw"));
    write(
        dir.path(),
        "svc.yaml",
        &service_yaml("default", "raw", "10.96.9.1", &[(backend, Cond::Ready)]),
    );
    let sb = start(dir.path(), &[]);
    let proxy = sb.listener("http");
    let c = client();
    wait_get(&sb, &c, "fast.test", "/", "served", |a| a.status == 200).await;

    let a = get(&c, proxy, "fast.test", "/chunked").await;
    assert_eq!((a.status, a.body.as_str()), (200, "hello world"));
    let a = get(&c, proxy, "fast.test", "/close").await;
    assert_eq!((a.status, a.body.as_str()), (200, "until close"));
    let a = get(&c, proxy, "fast.test", "/nocontent").await;
    assert_eq!((a.status, a.body.as_str()), (204, ""));
    let (ok, out) = curl(&[
        "-i",
        "-H",
        "Host: fast.test",
        &format!("http://{proxy}/hint"),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("HTTP/1.1 103"), "{out}");
    assert!(out.contains("link: </s.css>"), "{out}");
    assert!(out.ends_with("\r\n\r\nok"), "{out}");
    let a = request(&c, "HEAD", proxy, "fast.test", "/h", &[])
        .await
        .unwrap();
    // "HEAD /h body=0 conn=K": the length of the body a GET would get, and no body.
    let len: usize = a.header("content-length").unwrap().parse().unwrap();
    assert_eq!((a.status, a.body.as_str()), (200, ""));
    assert!(len >= "HEAD /h body=0 conn=1".len(), "{len}");

    // The backend closes each /drop connection after answering; the next requests find it in
    // the pool and must still succeed.
    for i in 0..10 {
        let a = get(&c, proxy, "fast.test", "/drop").await;
        assert_eq!(a.status, 200, "round {i}: {}", a.body);
        tokio::time::sleep(Duration::from_millis(if i % 2 == 0 { 100 } else { 55 })).await;
    }
    // The pooled connection is closed as the next request arrives on it: that request is sent
    // again on a fresh connection.
    for i in 0..5 {
        assert_eq!(get(&c, proxy, "fast.test", "/then-close").await.status, 200);
        let a = get(&c, proxy, "fast.test", "/next").await;
        assert_eq!(
            (a.status, a.body.starts_with("GET /next")),
            (200, true),
            "round {i}: {}\n--- log:\n{}",
            a.body,
            sb.log()
        );
    }
    // Closed right after the answer: the next request races the close.
    for i in 0..30 {
        let a = get(&c, proxy, "fast.test", "/dropnow").await;
        assert_eq!(a.status, 200, "round {i}: {}", a.body);
    }

    // A connection silent at first (the proxy sees a spurious wake-up on it at accept), then
    // a head in two pieces: both waits end in an answer from the fast path.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(b"GET /slow HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.write_all(b"st: fast.test\r\n\r\n").await.unwrap();
    let out = read_until(&mut s, |t| t.contains("GET /slow body=0")).await;
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    drop(s);

    // Pipelined: three requests in one write, answered in order; then a request with a body
    // moves the connection to the general path, and a last GET is served there.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: fast.test\r\n\r\n\
          HEAD /two HTTP/1.1\r\nHost: fast.test\r\n\r\n\
          GET /three HTTP/1.1\r\nHost: fast.test\r\n\r\n",
    )
    .await
    .unwrap();
    let out = read_until(&mut s, |t| t.contains("GET /three")).await;
    let one = out.find("GET /one body=0").expect(&out);
    let three = out.find("GET /three body=0").expect(&out);
    assert!(one < three, "{out}");
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
    assert!(
        !out.contains("HEAD /two"),
        "a HEAD answer has no body: {out}"
    );
    s.write_all(b"POST /form HTTP/1.1\r\nHost: fast.test\r\nContent-Length: 4\r\n\r\ndata")
        .await
        .unwrap();
    let out = read_until(&mut s, |t| t.contains("POST /form body=4")).await;
    assert!(out.contains("POST /form body=4"), "{out}");
    s.write_all(b"GET /after HTTP/1.1\r\nHost: fast.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut s, |t| t.contains("GET /after body=0")).await;
    assert!(out.contains("GET /after body=0"), "{out}");

    let proxied = sb
        .metric("switchboard_http_fast_path_total{outcome=\"proxied\"}")
        .await
        .unwrap_or(0.0);
    let handed = sb
        .metric("switchboard_http_fast_path_total{outcome=\"handed_over\"}")
        .await
        .unwrap_or(0.0);
    assert!(proxied >= 58.0, "fast path proxied {proxied}");
    assert!(handed >= 1.0, "handed over {handed}");
    // Requests on both paths land in the same series.
    let metrics = sb.admin_get("/metrics").await.1;
    let served: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("switchboard_http_requests_total{")
                && l.contains("code=\"200\"")
                && l.contains("service=\"default/raw:80\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(served >= 60.0, "{served} requests counted\n{metrics}");
}

/// A backend that keeps connections alive but does not handle pipelining: when one read brings
/// more than one request, it answers the first and closes the connection. `saw` is set then.
async fn unpipelined_backend(saw: Arc<AtomicBool>) -> SocketAddr {
    raw_backend(move |mut s, _| {
        let saw = saw.clone();
        async move {
            let mut buf = vec![0u8; 16384];
            loop {
                let n = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let got = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = got.split_whitespace().nth(1).unwrap_or("").to_string();
                let text = format!("unpiped {path}");
                let r = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                    text.len()
                );
                if s.write_all(r.as_bytes()).await.is_err() {
                    return;
                }
                if got.matches("\r\n\r\n").count() > 1 {
                    saw.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    })
    .await
}

/// A Service manifest with `switchboard.dev/upstream-pipelining: VALUE`.
fn pipelined_service(name: &str, ip: &str, endpoint: SocketAddr, value: &str) -> String {
    let yaml = service_yaml("default", name, ip, &[(endpoint, Cond::Ready)]);
    annotated(&yaml, name, "switchboard.dev/upstream-pipelining", value)
}

/// Rounds of one request on each of `conns` keep-alive connections, written back to back so
/// that the proxy's workers read several in one pass, until `pipelined` requests have been
/// counted past `before` and at least `min_rounds` are done (at most 200 rounds). Each answer
/// must be the one `expect` describes for its connection and round; returns the requests sent.
async fn pipelining_rounds(
    sb: &Switchboard,
    host: &str,
    conns: usize,
    min_rounds: usize,
    request: impl Fn(usize, usize) -> String,
    expect: impl Fn(usize, usize, &str) -> bool,
    done: impl Fn(usize, usize, &str) -> bool,
) -> usize {
    let series = "switchboard_http_fast_path_total{outcome=\"pipelined\"}";
    let before = sb.metric(series).await.unwrap_or(0.0);
    let proxy = sb.listener("http");
    let mut socks = Vec::new();
    for _ in 0..conns {
        socks.push(TcpStream::connect(proxy).await.unwrap());
    }
    let mut sent = 0;
    for round in 0..200 {
        for (i, s) in socks.iter_mut().enumerate() {
            let r = request(i, round).replace("HOST", host);
            s.write_all(r.as_bytes()).await.unwrap();
            sent += 1;
        }
        for (i, s) in socks.iter_mut().enumerate() {
            let out = read_until(s, |t| done(i, round, t)).await;
            assert!(
                expect(i, round, &out),
                "connection {i}, round {round}: {out:?}\n--- log:\n{}",
                sb.log()
            );
        }
        let now = sb.metric(series).await.unwrap_or(0.0);
        if round + 1 >= min_rounds && now > before {
            return sent;
        }
    }
    panic!("no request was pipelined in 200 rounds of {conns}");
}

/// With `switchboard.dev/upstream-pipelining`, GET and HEAD requests read in one pass go to an
/// endpoint in one write on one pooled connection, and each client still gets its own answer
/// in every framing (length, chunked, none, 103 before the answer); an endpoint that drops
/// what came after the first request costs retries, never an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_pipelining_answers_each_client_and_survives_an_endpoint_without_it() {
    let good = scripted_backend().await;
    let saw = Arc::new(AtomicBool::new(false));
    let bad = unpipelined_backend(saw.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "raw.yaml",
        &pipelined_service("raw", "10.96.9.5", good, "true"),
    );
    write(
        d,
        "bad.yaml",
        &pipelined_service("bad", "10.96.9.6", bad, "4"),
    );
    write(d, "ing-raw.yaml", &simple_ingress("pipe.test", "raw"));
    write(d, "ing-bad.yaml", &simple_ingress("bad.test", "bad"));
    let sb = start(d, &["--http-workers", "2"]);
    let c = client();
    wait_get(&sb, &c, "pipe.test", "/", "served", |a| a.status == 200).await;
    wait_get(&sb, &c, "bad.test", "/", "served", |a| a.status == 200).await;

    // Five kinds of request, by connection: each answer is whole and is its own. The HEADs go
    // to a path where the backend wrongly sends a body too: a request pipelined behind one
    // finds that body where its answer should start, and is sent again on its own.
    let request = |i: usize, r: usize| match i % 5 {
        0 => format!("GET /x?c={i}&r={r} HTTP/1.1\r\nHost: HOST\r\n\r\n"),
        1 => format!("HEAD /hb?c={i}&r={r} HTTP/1.1\r\nHost: HOST\r\n\r\n"),
        2 => "GET /chunked HTTP/1.1\r\nHost: HOST\r\n\r\n".to_string(),
        3 => "GET /nocontent HTTP/1.1\r\nHost: HOST\r\n\r\n".to_string(),
        _ => "GET /hint HTTP/1.1\r\nHost: HOST\r\n\r\n".to_string(),
    };
    let done = |i: usize, r: usize, t: &str| match i % 5 {
        0 => t.contains(&format!("GET /x?c={i}&r={r} body=0")),
        1 | 3 => t.ends_with("\r\n\r\n"),
        2 => t.contains(" world\r\n0\r\n") && t.ends_with("\r\n\r\n"),
        _ => t.ends_with("\r\n\r\nok"),
    };
    let expect = |i: usize, r: usize, t: &str| {
        let one = |status: &str| t.starts_with(status) && t.matches("HTTP/1.1 ").count() == 1;
        match i % 5 {
            0 => {
                one("HTTP/1.1 200 OK")
                    && t.contains(&format!("\r\n\r\nGET /x?c={i}&r={r} body=0 conn="))
            }
            // The length a GET would get, and no body.
            1 => {
                let want = format!("HEAD /hb?c={i}&r={r} body=0").len();
                one("HTTP/1.1 200 OK")
                    && t.to_ascii_lowercase().contains("content-length: ")
                    && t.ends_with("\r\n\r\n")
                    && t.len() > want
                    && !t.contains("HEAD /hb")
            }
            2 => one("HTTP/1.1 200 OK") && t.ends_with("0\r\nx-trailer: t\r\n\r\n"),
            3 => one("HTTP/1.1 204"),
            _ => {
                t.starts_with("HTTP/1.1 103")
                    && t.matches("HTTP/1.1 ").count() == 2
                    && t.ends_with("\r\n\r\nok")
            }
        }
    };
    pipelining_rounds(&sb, "pipe.test", 20, 20, request, expect, done).await;

    // The endpoint that cannot take it: it answers the first request of a write and closes,
    // and the requests behind it are sent again.
    let simple = |i: usize, r: usize| format!("GET /y?c={i}&r={r} HTTP/1.1\r\nHost: HOST\r\n\r\n");
    let answered = |i: usize, r: usize, t: &str| t.ends_with(&format!("unpiped /y?c={i}&r={r}"));
    let exact = |i: usize, r: usize, t: &str| {
        t.starts_with("HTTP/1.1 200 OK") && t.matches("HTTP/1.1 ").count() == 1 && answered(i, r, t)
    };
    for _ in 0..20 {
        pipelining_rounds(&sb, "bad.test", 20, 1, simple, exact, answered).await;
        if saw.load(Ordering::SeqCst) {
            break;
        }
    }
    assert!(
        saw.load(Ordering::SeqCst),
        "no pipelined write reached the endpoint"
    );
    let retried = sb
        .metric("switchboard_http_retries_total{reason=\"pipeline\",service=\"default/bad:80\"}")
        .await
        .unwrap_or(0.0)
        + sb.metric("switchboard_http_retries_total{reason=\"reset\",service=\"default/bad:80\"}")
            .await
            .unwrap_or(0.0);
    assert!(retried > 0.0, "{}", sb.admin_get("/metrics").await.1);
}
