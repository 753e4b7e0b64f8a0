//! HTTP balancing as a person sees it at low load, with the real binary: sequential requests
//! over two equal endpoints are shared evenly by the default balancer (least-request), not
//! stuck on the one whose connection happens to be warm (#18: 86–99% went to one of two pods).
//!
//! With a fair coin per request, each of two endpoints gets Binomial(100, ½) of 100 requests;
//! outside 30..=70 happens with probability 3·10⁻⁵, while a balancer that sends 86% or more to
//! one endpoint fails the bound every time.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Requests per run, and the fair share's bounds (see the module comment).
const REQUESTS: usize = 100;
const FAIR: std::ops::RangeInclusive<usize> = 30..=70;

/// An HTTP/1.1 backend that answers every request with its name and counts them.
async fn backend(name: &'static str, hits: Arc<AtomicUsize>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let hits = hits.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 1024];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    hits.fetch_add(1, Ordering::SeqCst);
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}",
                        name.len()
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Service `default/web` with one EndpointSlice per endpoint (each its own port), and an
/// Ingress for `web.test` to it.
fn manifests(dir: &Path, endpoints: &[SocketAddr]) {
    let mut text = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: default}
spec:
  ingressClassName: switchboard
  rules:
  - host: web.test
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]
"
    .to_string();
    for (i, e) in endpoints.iter().enumerate() {
        text.push_str(&format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-{i}
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints:
- addresses: [\"{ip}\"]
  conditions: {{ready: true, serving: true, terminating: false}}
",
            port = e.port(),
            ip = e.ip(),
        ));
    }
    std::fs::write(dir.join("web.yaml"), text).unwrap();
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<hyper::body::Bytes>,
>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// One `GET /` for `web.test` through `proxy`, which must answer 200.
async fn get(client: &Client, proxy: SocketAddr) {
    let request = http::Request::get(format!("http://{proxy}/"))
        .header(http::header::HOST, "web.test")
        .body(http_body_util::Empty::new())
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), client.request(request))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    assert_eq!(answer.status(), 200);
    http_body_util::BodyExt::collect(answer.into_body())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_are_shared_by_two_equal_endpoints() {
    let hits = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let endpoints = [
        backend("a", hits[0].clone()).await,
        backend("b", hits[1].clone()).await,
    ];
    let dir = tempfile::tempdir().unwrap();
    manifests(dir.path(), &endpoints);
    let sb = Switchboard::start(&[
        "--manifests",
        dir.path().to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
    ]);
    sb.wait_tables("both endpoints and the rule", |t| {
        endpoints
            .iter()
            .all(|e| t.contains(&format!("endpoint {e} ready")))
            && t.contains("hosts=web.test")
    })
    .await;
    let proxy = sb.listener("http");

    // As `curl` in a shell loop: a new client (and connection) per request; then as a browser
    // or a client library: one client, its connection kept alive for all of them.
    for reuse in [false, true] {
        let before: Vec<usize> = hits.iter().map(|h| h.load(Ordering::SeqCst)).collect();
        let kept = client();
        for _ in 0..REQUESTS {
            let fresh = client();
            get(if reuse { &kept } else { &fresh }, proxy).await;
        }
        let got: Vec<usize> = hits
            .iter()
            .zip(&before)
            .map(|(h, b)| h.load(Ordering::SeqCst) - b)
            .collect();
        assert_eq!(got.iter().sum::<usize>(), REQUESTS, "{got:?}");
        assert!(
            got.iter().all(|n| FAIR.contains(n)),
            "{REQUESTS} sequential requests (connection reused: {reuse}) split {got:?}; a fair \
             balancer stays within {FAIR:?} but for a 3·10⁻⁵ chance"
        );
    }
}
