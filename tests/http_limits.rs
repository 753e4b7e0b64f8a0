//! Client limits of the HTTP listeners (issue 14, items 2, 3 and 9's HTTP parts), end to end
//! with raw TCP clients against the real binary: slowloris closed within the header deadline,
//! oversized heads refused before they are read whole, per-client and global connection caps,
//! the write timeout, and the request checks (Host, `Connection: host`, `Content-Length: 5, 5`,
//! access-log escaping, a request pipelined behind one pingora served).
//!
//! Both request paths are exercised: a plain connection starts on the fast path; after a request
//! the fast path does not take (a 404, HTTP/1.0) the connection is pingora's, so the next
//! request on it goes through pingora and the guard in `proxy/src/http/guard.rs`.
//!
//! No fixed sleep decides an outcome: every wait is "until the server does it, or fail after a
//! generous bound", and every loop is bounded in count and time.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------- backend and manifests

/// A raw HTTP/1.1 backend: answers `GET /big` with a 64 MiB body written as fast as the proxy
/// takes it, anything else with `ok`, after reading the request (and a Content-Length body);
/// records every request head it receives.
async fn backend(heads: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end);
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < len {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..len);
                    heads.lock().unwrap().push(head.clone());
                    if head.starts_with("GET /big ") {
                        let total = 64usize << 20;
                        let h = format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\n\r\n");
                        if s.write_all(h.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = vec![b'x'; 64 * 1024];
                        for _ in 0..total / chunk.len() {
                            if s.write_all(&chunk).await.is_err() {
                                return;
                            }
                        }
                    } else if s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Service `default/app` on `endpoint` and an Ingress for `a.test` to it.
fn manifests(dir: &Path, endpoint: SocketAddr) {
    let text = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: app, namespace: default}}
spec:
  clusterIP: 10.96.0.10
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-0
  namespace: default
  labels: {{kubernetes.io/service-name: app}}
addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints:
  - addresses: [\"{ip}\"]
    conditions: {{ready: true, serving: true, terminating: false}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: app, namespace: default}}
spec:
  ingressClassName: switchboard
  rules:
    - host: a.test
      http:
        paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}]
",
        port = endpoint.port(),
        ip = endpoint.ip(),
    );
    std::fs::write(dir.join("app.yaml"), text).unwrap();
}

struct Setup {
    sb: Switchboard,
    proxy: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// The binary with `extra` flags, serving `a.test`, once a request to it is answered 200.
async fn setup(extra: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let endpoint = backend(heads.clone()).await;
    manifests(dir.path(), endpoint);
    let sb = Switchboard::start(&http_args(dir.path(), extra));
    let proxy = sb.listener("http");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut c = TcpStream::connect(proxy).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_end(&mut c, Duration::from_secs(5)).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a.test never served; last: {answer:?}\n{}",
            sb.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Setup {
        sb,
        proxy,
        heads,
        _dir: dir,
    }
}

// ---------------------------------------------------------------- client helpers

/// Everything until the server closes (or resets) the connection, within `bound`.
async fn read_to_end(c: &mut TcpStream, bound: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(bound, async {
        let mut buf = [0u8; 8192];
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response with a Content-Length body (the proxy's and this backend's answers), and
/// not a byte more: the head a byte at a time, then exactly the body, so a pipelined answer
/// right behind it stays in the socket for the next call.
async fn read_response(c: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let fail = |out: &[u8], e: &dyn std::fmt::Debug| -> ! {
        panic!(
            "no whole response ({e:?}); got {:?}",
            String::from_utf8_lossy(out)
        )
    };
    while !out.ends_with(b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.read_u8()).await {
            Ok(Ok(b)) => out.push(b),
            other => fail(&out, &other),
        }
    }
    let head = String::from_utf8_lossy(&out).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, c.read_exact(&mut body)).await {
        Ok(Ok(_)) => out.extend_from_slice(&body),
        other => fail(&out, &other),
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A connection that pingora serves: a request the fast path does not take (404) was
/// answered on it, with keep-alive.
async fn pingora_connection(proxy: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(b"GET /x HTTP/1.1\r\nHost: nothing.test\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut c).await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    c
}

/// Whether the server ends the connection (EOF, reset, or an answer then EOF) within
/// `bound`, while the client drips one byte of a header every `every`: the answer, or None.
async fn drip_until_closed(c: &mut TcpStream, every: Duration, bound: Duration) -> Option<String> {
    let start = Instant::now();
    let mut got = Vec::new();
    while start.elapsed() < bound {
        if c.write_all(b"a").await.is_err() {
            return Some(String::from_utf8_lossy(&got).into_owned());
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(every, c.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    None
}

/// Sends `prefix` then `fill` bytes in 8 KiB pieces, up to `total` bytes, looking for an
/// answer after each piece: the answer and how many bytes had been sent when it came.
async fn send_until_answered(c: &mut TcpStream, prefix: &[u8], total: usize) -> (String, usize) {
    c.write_all(prefix).await.unwrap();
    let mut sent = prefix.len();
    let piece = vec![b'a'; 8192];
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while sent < total {
        let write_failed = c.write_all(&piece).await.is_err();
        if !write_failed {
            sent += piece.len();
        }
        let wait = if write_failed {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(20)
        };
        match tokio::time::timeout(wait, c.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                got.extend_from_slice(&buf[..n]);
                break;
            }
            Ok(_) => break,
            Err(_) if write_failed => break,
            Err(_) => {}
        }
    }
    if !got.is_empty() {
        got.extend_from_slice(read_to_end(c, Duration::from_secs(5)).await.as_bytes());
    }
    (String::from_utf8_lossy(&got).into_owned(), sent)
}

/// A kept-alive connection with one request answered (so the proxy has accepted and counted
/// it), or the answer's failure: "closed" when the proxy closed it without an answer.
async fn held_connection(c: &mut TcpStream) -> Result<(), String> {
    if c.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .is_err()
    {
        return Err("closed".into());
    }
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err("closed".into()),
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.ends_with(b"ok\n") {
                    return Ok(());
                }
            }
            Err(_) => return Err(format!("no answer: {:?}", String::from_utf8_lossy(&got))),
        }
    }
}

fn status_of(s: &str) -> &str {
    s.get(9..12).unwrap_or("")
}

async fn limit_hits(sb: &Switchboard, limit: &str) -> f64 {
    sb.metric(&format!(
        "switchboard_http_limit_hits_total{{limit=\"{limit}\"}}"
    ))
    .await
    .unwrap_or(0.0)
}

fn vm(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

// ---------------------------------------------------------------- tests

/// A header dripped one byte every 200 ms is cut at the 1 s header deadline (408), on the
/// fast path (a connection's first request) and on pingora's (the next request on a
/// connection pingora served). Before: each byte restarted a 60 s read timeout, so the drip
/// went on for as long as the client liked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_closed_within_the_header_deadline() {
    let s = setup(&["--http-header-timeout", "1s"]).await;
    let every = Duration::from_millis(200);
    let bound = Duration::from_secs(8);

    let mut fast = TcpStream::connect(s.proxy).await.unwrap();
    fast.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Drip: ")
        .await
        .unwrap();
    let start = Instant::now();
    let answer = drip_until_closed(&mut fast, every, bound).await;
    let took = start.elapsed();
    let answer = answer.unwrap_or_else(|| {
        panic!(
            "fast path: still open after {bound:?} of dripping\n{}",
            s.sb.log()
        )
    });
    eprintln!("slowloris, fast path: closed after {took:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "fast path: {answer:?}");
    assert!(
        took < Duration::from_secs(4),
        "fast path: closed after {took:?}"
    );

    let mut slow = pingora_connection(s.proxy).await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Drip: ")
        .await
        .unwrap();
    let start = Instant::now();
    let answer = drip_until_closed(&mut slow, every, bound).await;
    let took = start.elapsed();
    let answer = answer.unwrap_or_else(|| {
        panic!(
            "pingora path: still open after {bound:?} of dripping\n{}",
            s.sb.log()
        )
    });
    eprintln!("slowloris, pingora path: closed after {took:?}");
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "pingora path: {answer:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "pingora path: closed after {took:?}"
    );

    assert!(limit_hits(&s.sb, "head_timeout").await >= 2.0);
    s.sb.wait_log("limit=\"head_timeout\"", Duration::from_secs(5))
        .await;

    // A head sent whole in time is still served on both paths.
    let mut c = pingora_connection(s.proxy).await;
    c.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut c).await.ends_with("ok\n"));
}

/// A never-ending header is refused with 431 once 32 KiB of it came, long before 1 MiB is
/// sent, on both paths; a request line that does not end gets 414; and 40 clients sending
/// 1 MiB headers at once do not raise the proxy's peak RSS by anything like 40 MiB. Before:
/// heads were buffered up to 1 MiB each and answered 400 only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_refused_early() {
    let s = setup(&[]).await;
    let total = 1 << 20;

    let mut c = TcpStream::connect(s.proxy).await.unwrap();
    let (answer, sent) =
        send_until_answered(&mut c, b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: ", total).await;
    eprintln!("1 MiB head, fast path: answered after {sent} bytes sent");
    assert_eq!(status_of(&answer), "431", "fast path: {answer:?}");
    assert!(sent < 256 * 1024, "fast path: answered after {sent} bytes");

    let mut c = pingora_connection(s.proxy).await;
    let (answer, sent) =
        send_until_answered(&mut c, b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: ", total).await;
    eprintln!("1 MiB head, pingora path: answered after {sent} bytes sent");
    assert_eq!(status_of(&answer), "431", "pingora path: {answer:?}");
    assert!(
        sent < 256 * 1024,
        "pingora path: answered after {sent} bytes"
    );

    let mut c = TcpStream::connect(s.proxy).await.unwrap();
    let (answer, _) = send_until_answered(&mut c, b"GET /", total).await;
    assert_eq!(status_of(&answer), "414", "{answer:?}");

    // A 30 KiB head is under the limit: served.
    let mut c = TcpStream::connect(s.proxy).await.unwrap();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n",
        "b".repeat(30 * 1024)
    );
    c.write_all(big.as_bytes()).await.unwrap();
    assert!(read_response(&mut c).await.ends_with("ok\n"));

    let pid = s.sb.pid();
    let before = vm(pid, "VmHWM:");
    let clients: Vec<_> = (0..40)
        .map(|_| {
            let proxy = s.proxy;
            tokio::spawn(async move {
                let mut c = TcpStream::connect(proxy).await.unwrap();
                send_until_answered(&mut c, b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: ", total)
                    .await
                    .0
            })
        })
        .collect();
    for c in clients {
        let answer = c.await.unwrap();
        assert_eq!(status_of(&answer), "431", "{answer:?}");
    }
    let after = vm(pid, "VmHWM:");
    let grown_kib = after.saturating_sub(before);
    eprintln!("40 x 1 MiB heads: VmHWM {before} -> {after} KiB");
    assert!(
        grown_kib < 16 * 1024,
        "peak RSS grew by {grown_kib} KiB for 40 clients sending 1 MiB heads"
    );
    assert!(limit_hits(&s.sb, "head_size").await >= 43.0);
}

/// One address may hold at most --http-max-connections-per-client connections; another
/// address is still served; past --http-max-connections nobody new is. Before: no limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_and_global_connection_caps() {
    let s = setup(&[
        "--http-max-connections",
        "7",
        "--http-max-connections-per-client",
        "4",
    ])
    .await;
    // setup's own connection is gone before counting starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s
        .sb
        .metric("switchboard_http_active_connections{listener=\"http\"}")
        .await
        .unwrap_or(0.0)
        > 0.0
    {
        assert!(
            Instant::now() < deadline,
            "setup's connection still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut held = Vec::new();
    for i in 0..4 {
        let mut c = TcpStream::connect(s.proxy).await.unwrap();
        held_connection(&mut c)
            .await
            .unwrap_or_else(|e| panic!("connection {i} from 127.0.0.1: {e}"));
        held.push(c);
    }
    let mut fifth = TcpStream::connect(s.proxy).await.unwrap();
    assert_eq!(
        held_connection(&mut fifth).await,
        Err("closed".into()),
        "a fifth connection from 127.0.0.1"
    );
    // Another client address is served while 127.0.0.1 is at its cap.
    for i in 0..2 {
        let mut c = connect_from("127.0.0.2", s.proxy).await.unwrap();
        held_connection(&mut c)
            .await
            .unwrap_or_else(|e| panic!("connection {i} from 127.0.0.2: {e}"));
        held.push(c);
    }
    assert!(limit_hits(&s.sb, "per_client").await >= 1.0);
    // 6 held + 1 more = the global cap of 7.
    let mut c = connect_from("127.0.0.3", s.proxy).await.unwrap();
    held_connection(&mut c).await.unwrap();
    held.push(c);
    let mut over = connect_from("127.0.0.4", s.proxy).await.unwrap();
    assert_eq!(
        held_connection(&mut over).await,
        Err("closed".into()),
        "past the global cap"
    );
    assert!(limit_hits(&s.sb, "connections").await >= 1.0);
    s.sb.wait_log(
        "per-client connection limit reached",
        Duration::from_secs(5),
    )
    .await;
    // Closing connections frees their places.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = TcpStream::connect(s.proxy).await.unwrap();
        if held_connection(&mut c).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "places never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client that asks for 64 MiB and never reads is dropped after the 1 s write timeout, on
/// both paths (HTTP/1.0 is pingora's). Before: nothing bounded the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_timeout_drops_a_client_that_never_reads() {
    let s = setup(&["--http-write-timeout", "1s"]).await;
    for (n, request) in [
        &b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n"[..],
        b"GET /big HTTP/1.0\r\nHost: a.test\r\n\r\n",
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = TcpStream::connect(s.proxy).await.unwrap();
        c.write_all(request).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while limit_hits(&s.sb, "write_timeout").await < (n + 1) as f64 {
            assert!(
                Instant::now() < deadline,
                "request {n}: no write timeout\n{}",
                s.sb.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The connection ends before the whole body.
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let read = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => got += k,
                }
            }
        })
        .await;
        assert!(read.is_ok(), "request {n}: connection still open");
        eprintln!("write timeout, request {n}: dropped after {got} bytes were read");
        assert!(
            got < 64 << 20,
            "request {n}: the whole body came ({got} bytes)"
        );
    }
}

/// A request to the proxy on a new connection: the first whole response.
async fn ask(proxy: SocketAddr, req: &str) -> String {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(req.as_bytes()).await.unwrap();
    read_response(&mut c).await
}

/// HTTP/1.1 without Host is 400 (RFC 9112 3.2); before: 404. HTTP/1.0 needs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_without_host_is_400() {
    let s = setup(&[]).await;
    let r = ask(s.proxy, "GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(status_of(&r), "400", "HTTP/1.1 without Host: {r}");
    let r = ask(s.proxy, "GET / HTTP/1.0\r\n\r\n").await;
    assert_ne!(status_of(&r), "400", "HTTP/1.0 needs no Host: {r}");
}

/// `Connection: host` is 400 on both paths (HTTP/1.0 is pingora's) and never reaches the
/// backend; before, the fast path removed Host and forwarded the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_naming_host_is_400_on_both_paths() {
    let s = setup(&[]).await;
    let seen = s.heads.lock().unwrap().len();
    for req in [
        "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: host\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, Host\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: a.test\r\nConnection: host\r\n\r\n",
    ] {
        let r = ask(s.proxy, req).await;
        assert_eq!(status_of(&r), "400", "{req:?}: {r}");
    }
    assert_eq!(
        s.heads.lock().unwrap().len(),
        seen,
        "a request whose Connection header names Host reached the backend"
    );
}

/// `Content-Length: 5, 5` and two `Content-Length: 5` lines go upstream as one
/// `Content-Length: 5`; differing values are 400. Before: forwarded as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_lists_are_normalised() {
    let s = setup(&[]).await;
    for req in [
        "POST /cl HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5, 5\r\n\r\nhello",
        "POST /cl HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    ] {
        let r = ask(s.proxy, req).await;
        assert_eq!(status_of(&r), "200", "{req:?}: {r}");
        let head = s.heads.lock().unwrap().last().cloned().unwrap();
        let lengths: Vec<&str> = head
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("content-length:"))
            .collect();
        assert_eq!(lengths.len(), 1, "{req:?} went upstream as:\n{head}");
        assert_eq!(lengths[0].split_once(':').unwrap().1.trim(), "5", "{head}");
    }
    let r = ask(
        s.proxy,
        "POST /cl HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5, 6\r\n\r\nhello",
    )
    .await;
    assert_eq!(status_of(&r), "400", "{r}");
}

/// The access log quotes client-chosen values (the host on pingora's line, the request id on
/// the fast path's), so they cannot forge fields. Before: written as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_cannot_be_forged() {
    let s = setup(&[]).await;
    let r = ask(
        s.proxy,
        "GET / HTTP/1.1\r\nHost: x.test status=599 forged=1\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&r), "404", "{r}");
    let r = ask(
        s.proxy,
        "GET /id HTTP/1.1\r\nHost: a.test\r\nX-Request-Id: r1 status=598\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&r), "200", "{r}");
    s.sb.wait_log(
        "host=\"x.test status=599 forged=1\"",
        Duration::from_secs(5),
    )
    .await;
    s.sb.wait_log("request_id=\"r1 status=598\"", Duration::from_secs(5))
        .await;
    let log = s.sb.log();
    assert!(
        !log.contains("host=x.test status=599") && !log.contains("request_id=r1 status=598"),
        "unquoted client values in the access log:\n{log}"
    );
}

/// The fast path writes its access-log lines itself, in batches (`proxy/src/http/access_log.rs`):
/// each request still gets one line, shaped as pingora's `tracing` line (same prefix, the same
/// fields in the same order), with the client's request id, within the test's wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_match_on_both_paths() {
    let s = setup(&[]).await;
    let r = ask(s.proxy, "GET /x HTTP/1.1\r\nHost: nothing.test\r\n\r\n").await;
    assert_eq!(status_of(&r), "404", "{r}");
    for i in 0..3 {
        let r = ask(
            s.proxy,
            &format!("GET /id HTTP/1.1\r\nHost: a.test\r\nX-Request-Id: fast-{i}\r\n\r\n"),
        )
        .await;
        assert_eq!(status_of(&r), "200", "{r}");
    }
    for needle in ["host=nothing.test", "request_id=fast-2 "] {
        s.sb.wait_log(needle, Duration::from_secs(5)).await;
    }
    let log = s.sb.log();
    let fields = [
        "  INFO access: client=",
        " method=",
        " host=",
        " path=",
        " status=",
        " route=",
        " service=",
        " upstream=",
        " retries=",
        " duration_ms=",
        " request_id=",
        " error=",
    ];
    let mut failures = Vec::new();
    for needle in [
        "host=nothing.test",
        "request_id=fast-0 ",
        "request_id=fast-1 ",
        "request_id=fast-2 ",
    ] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
        if lines.len() != 1 {
            failures.push(format!("{needle}: {} lines", lines.len()));
            continue;
        }
        let mut at = 0;
        for f in fields {
            match lines[0][at..].find(f) {
                Some(i) => at += i + f.len(),
                None => failures.push(format!(
                    "{needle}: no {f:?} after byte {at} in {:?}",
                    lines[0]
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n{log}");
}

/// A request pipelined behind one pingora answers (no route: 404) is answered on the same
/// connection, and so is one behind a POST with a body. Before: the connection closed after
/// the first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pipelined_behind_pingora_answers_are_served() {
    let s = setup(&[]).await;
    let mut c = TcpStream::connect(s.proxy).await.unwrap();
    c.write_all(
        b"GET /x HTTP/1.1\r\nHost: nothing.test\r\n\r\nGET /second HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await
    .unwrap();
    let first = read_response(&mut c).await;
    assert_eq!(status_of(&first), "404", "{first}");
    let second = read_response(&mut c).await;
    assert_eq!(status_of(&second), "200", "{second}");
    c.write_all(
        b"POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n\r\nhiGET /third HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status_of(&read_response(&mut c).await), "200");
    assert_eq!(status_of(&read_response(&mut c).await), "200");
}
