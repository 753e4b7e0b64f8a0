//! The L7 proxy end to end (test target `http`): the shared fixture, and a module per concern.
//!
//! The real binary on a manifest directory, real backends (hyper servers on 127.0.0.1:0), real
//! clients (hyper's client and `curl`). No timed assertions: every wait is "until this holds, or
//! fail after a generous bound", and every load loop is bounded in count.

#[path = "../common/mod.rs"]
mod common;

mod fast_path;
mod httproute;
mod ingress;
mod protocols;
mod retries;
mod rolling;

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
    /// Requests sent with `x-hold: 1` are answered once this is set (`release`).
    held: watch::Sender<bool>,
}

async fn handle(
    name: Arc<str>,
    hits: Arc<AtomicU64>,
    in_flight: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
    mut held: watch::Receiver<bool>,
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
    if req.headers().contains_key("x-hold") {
        let _ = held.wait_for(|released| *released).await;
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
        let (held, held_rx) = watch::channel(false);
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
                let held_rx = held_rx.clone();
                let mut conn_stop = stop_rx.clone();
                let open = open.clone();
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(
                            n.clone(),
                            h.clone(),
                            f.clone(),
                            s.clone(),
                            held_rx.clone(),
                            req,
                        )
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
            held,
        }
    }

    /// Answers the requests held by `x-hold` (and every later one at once).
    fn release(&self) {
        let _ = self.held.send(true);
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
    // A request the backend holds until the test releases it (`x-hold`) waits as long as the
    // test takes to get there.
    let limit = if headers.iter().any(|(k, _)| *k == "x-hold") {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(10)
    };
    let resp = tokio::time::timeout(limit, c.request(req))
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

// ---------------------------------------------------------------- the fixture

/// The set-up every test repeats: a fresh manifest directory that `manifests` fills, the binary
/// started on it with `--http 127.0.0.1:0` and `args`, a client, and a wait until each
/// `(host, path)` of `served` answers 200 through the proxy.
struct Fixture {
    sb: Switchboard,
    c: HttpClient,
    /// The plain-HTTP listener.
    proxy: SocketAddr,
    /// The manifest directory, removed when dropped.
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(
        args: &[&str],
        served: &[(&str, &str)],
        manifests: impl FnOnce(&Path),
    ) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        manifests(dir.path());
        let sb = Switchboard::start_with_env(
            &http_args(dir.path(), args),
            &[(
                "RUST_LOG",
                "info,access=warn,controller=debug,kube=warn,hyper=warn",
            )],
        );
        let c = client();
        for (host, path) in served {
            wait_get(&sb, &c, host, path, "served", |a| a.status == 200).await;
        }
        Fixture {
            proxy: sb.listener("http"),
            sb,
            c,
            dir,
        }
    }
}

// ---------------------------------------------------------------- request tables

/// What an answer must show: one check of a [`Case`].
#[derive(Clone, Copy, Debug)]
enum Check {
    Status(u16),
    /// Served by this backend (its `x-backend`).
    By(&'static str),
    /// Served by one of these backends.
    ByOneOf(&'static [&'static str]),
    /// Not served by this backend (by another, or by the proxy itself).
    NotBy(&'static str),
    /// Answered by the proxy itself: no `x-backend`.
    ByProxy,
    Body(&'static str),
    BodyHas(&'static str),
    BodyEnds(&'static str),
    /// A response header with this value.
    Header(&'static str, &'static str),
    NoHeader(&'static str),
    /// A response header holding a number no smaller than this.
    HeaderAtLeast(&'static str, usize),
}

impl Check {
    fn on_headers(&self) -> bool {
        matches!(
            self,
            Check::Header(..) | Check::NoHeader(_) | Check::HeaderAtLeast(..)
        )
    }

    fn holds(self, a: &Answer) -> bool {
        match self {
            Check::Status(s) => a.status == s,
            Check::By(b) => a.header("x-backend") == Some(b),
            Check::ByOneOf(bs) => a.header("x-backend").is_some_and(|b| bs.contains(&b)),
            Check::NotBy(b) => a.header("x-backend") != Some(b),
            Check::ByProxy => a.header("x-backend").is_none(),
            Check::Body(b) => a.body == b,
            Check::BodyHas(b) => a.body.contains(b),
            Check::BodyEnds(b) => a.body.ends_with(b),
            Check::Header(k, v) => a.header(k) == Some(v),
            Check::NoHeader(k) => a.header(k).is_none(),
            Check::HeaderAtLeast(k, n) => a
                .header(k)
                .and_then(|v| v.parse::<usize>().ok())
                .is_some_and(|v| v >= n),
        }
    }
}

/// A row of a request table (the style of CoreDNS's `handler_test.go`): a request through the
/// proxy, sent `times` times, and the checks every answer must pass.
struct Case {
    method: &'static str,
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    /// More than once where one answer could pass by chance (a weighted rule).
    times: usize,
    checks: Vec<Check>,
}

impl Case {
    fn new(method: &'static str, host: &'static str, path: &'static str) -> Case {
        Case {
            method,
            host,
            path,
            headers: &[],
            times: 1,
            checks: Vec::new(),
        }
    }
    fn get(host: &'static str, path: &'static str) -> Case {
        Case::new("GET", host, path)
    }
    fn headers(self, headers: &'static [(&'static str, &'static str)]) -> Case {
        Case { headers, ..self }
    }
    fn times(self, times: usize) -> Case {
        Case { times, ..self }
    }
    fn expect<const N: usize>(self, checks: [Check; N]) -> Case {
        Case {
            checks: checks.to_vec(),
            ..self
        }
    }
}

/// Sends every case through `proxy` and returns every failure, each naming its request: the
/// checks an answer failed (a case stops at its first failing attempt), or the request's error.
async fn run_cases(c: &HttpClient, proxy: SocketAddr, cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let mut what = format!("{} {}{}", case.method, case.host, case.path);
        if !case.headers.is_empty() {
            what.push_str(&format!(" with {:?}", case.headers));
        }
        for attempt in 1..=case.times {
            let a = match request(c, case.method, proxy, case.host, case.path, case.headers).await {
                Ok(a) => a,
                Err(e) => {
                    failures.push(format!("{what}: {e}"));
                    break;
                }
            };
            let failed: Vec<Check> = case
                .checks
                .iter()
                .copied()
                .filter(|ch| !ch.holds(&a))
                .collect();
            if !failed.is_empty() {
                // The headers only where a check was on them: they are long.
                let headers = if failed.iter().any(Check::on_headers) {
                    format!(", headers {:?}", a.headers)
                } else {
                    String::new()
                };
                failures.push(format!(
                    "{what} (attempt {attempt} of {}): failed {failed:?}; got {} from {}{headers}, body {:?}",
                    case.times,
                    a.status,
                    a.backend(),
                    a.body,
                ));
                break;
            }
        }
    }
    failures
}

/// Panics listing every failure of a table, if there is any.
#[track_caller]
fn assert_table(table: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{table}: {} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------- shared by several files

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
