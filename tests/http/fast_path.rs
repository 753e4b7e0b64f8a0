//! The HTTP/1.1 fast path: workers, framings, pipelining both ways, hand-over to pingora.

use super::*;

#[tokio::test]
async fn http_workers_serve_both_paths_and_drain_on_shutdown() {
    let slow = Backend::start("slow").await;
    let Fixture {
        sb,
        c,
        proxy,
        dir: _dir,
    } = Fixture::start(&["--http-workers", "2"], &[("w.test", "/")], |d| {
        write_service(d, "slow", "10.96.7.2", &[&slow]);
        write(d, "ing.yaml", &simple_ingress("w.test", "slow"));
    })
    .await;

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

/// TLS connections handed from one worker to the other finish their handshake and are served
/// there: raw connections are opened and held until the `Spread` hands one over (the counter
/// moves), and that very connection then speaks TLS.
#[tokio::test]
async fn tls_connections_handed_between_workers_are_served() {
    use tokio_rustls::rustls;
    let site = Backend::start("site").await;
    let certs = tempfile::tempdir().unwrap();
    let ck = cert_dir_entry(certs.path(), "h.test");
    // The fixture's client stays alive: dropped, its pooled connection would close while the
    // loop below counts open connections, and the count it waits for would never come.
    let Fixture {
        sb,
        dir: _dir,
        c: _client,
        ..
    } = Fixture::start(
        &[
            "--http-workers",
            "2",
            "--https",
            "127.0.0.1:0",
            "--tls-cert-dir",
            certs.path().to_str().unwrap(),
        ],
        &[("h.test", "/")],
        |d| {
            write_service(d, "site", "10.96.7.3", &[&site]);
            write(d, "ing.yaml", &simple_ingress("h.test", "site"));
        },
    )
    .await;
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

/// What the bytes read in a step of a [`Script`] must show.
#[derive(Clone, Copy, Debug)]
enum Out {
    StartsWith(&'static str),
    EndsWith(&'static str),
    Has(&'static str),
    Lacks(&'static str),
    /// This many occurrences.
    Count(&'static str, usize),
    /// Both, the first before the second.
    InOrder(&'static str, &'static str),
}

impl Out {
    fn holds(self, t: &str) -> bool {
        match self {
            Out::StartsWith(x) => t.starts_with(x),
            Out::EndsWith(x) => t.ends_with(x),
            Out::Has(x) => t.contains(x),
            Out::Lacks(x) => !t.contains(x),
            Out::Count(x, n) => t.matches(x).count() == n,
            Out::InOrder(a, b) => matches!((t.find(a), t.find(b)), (Some(i), Some(j)) if i < j),
        }
    }
}

enum Step {
    /// Sends nothing for this many milliseconds: the proxy meets a silent connection or half a
    /// head (what it does then is checked by the next `Read`, not by the pause).
    Pause(u64),
    Send(&'static str),
    /// Reads until `until` holds (or 5 s), then requires `until` and every check.
    Read {
        until: Out,
        checks: &'static [Out],
    },
}

/// A row of the raw-socket table: one client connection, written and read step by step.
struct Script {
    what: &'static str,
    steps: &'static [Step],
}

/// The raw-socket table of `fast_path_framings_pipelining_stale_connections_and_handover`.
const SCRIPTS: &[Script] = &[
    Script {
        what: "103 Early Hints, then the answer",
        steps: &[
            Step::Send("GET /hint HTTP/1.1\r\nHost: fast.test\r\n\r\n"),
            Step::Read {
                until: Out::EndsWith("\r\n\r\nok"),
                checks: &[
                    Out::StartsWith("HTTP/1.1 103"),
                    Out::Has("link: </s.css>"),
                    Out::Count("HTTP/1.1 ", 2),
                ],
            },
        ],
    },
    Script {
        // The proxy sees a spurious wake-up on it at accept; both waits end in an answer.
        what: "silent at first, then a head in two pieces",
        steps: &[
            Step::Pause(300),
            Step::Send("GET /slow HTTP/1.1\r\nHo"),
            Step::Pause(150),
            Step::Send("st: fast.test\r\n\r\n"),
            Step::Read {
                until: Out::Has("GET /slow body=0"),
                checks: &[Out::StartsWith("HTTP/1.1 200 OK")],
            },
        ],
    },
    Script {
        what: "three pipelined in one write, answered in order (the HEAD without a body); then \
               a request with a body moves the connection to the general path, which serves \
               the next GET too",
        steps: &[
            Step::Send(
                "GET /one HTTP/1.1\r\nHost: fast.test\r\n\r\n\
                 HEAD /two HTTP/1.1\r\nHost: fast.test\r\n\r\n\
                 GET /three HTTP/1.1\r\nHost: fast.test\r\n\r\n",
            ),
            Step::Read {
                until: Out::Has("GET /three"),
                checks: &[
                    Out::InOrder("GET /one body=0", "GET /three body=0"),
                    Out::Count("HTTP/1.1 200 OK", 3),
                    Out::Lacks("HEAD /two"),
                ],
            },
            Step::Send("POST /form HTTP/1.1\r\nHost: fast.test\r\nContent-Length: 4\r\n\r\ndata"),
            Step::Read {
                until: Out::Has("POST /form body=4"),
                checks: &[],
            },
            Step::Send("GET /after HTTP/1.1\r\nHost: fast.test\r\nConnection: close\r\n\r\n"),
            Step::Read {
                until: Out::Has("GET /after body=0"),
                checks: &[],
            },
        ],
    },
];

/// Plays every script on its own connection to `proxy`; returns every failure, each naming its
/// script and step (a script stops at its first failing step).
async fn run_scripts(proxy: SocketAddr, scripts: &[Script]) -> Vec<String> {
    let mut failures = Vec::new();
    for script in scripts {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        for (i, step) in script.steps.iter().enumerate() {
            let failed = match step {
                Step::Pause(ms) => {
                    tokio::time::sleep(Duration::from_millis(*ms)).await;
                    None
                }
                Step::Send(text) => s
                    .write_all(text.as_bytes())
                    .await
                    .err()
                    .map(|e| format!("send failed: {e}")),
                Step::Read { until, checks } => {
                    let out = read_until(&mut s, |t| until.holds(t)).await;
                    let failed: Vec<Out> = std::iter::once(until)
                        .chain(checks.iter())
                        .copied()
                        .filter(|o| !o.holds(&out))
                        .collect();
                    (!failed.is_empty()).then(|| format!("failed {failed:?}; read {out:?}"))
                }
            };
            if let Some(f) = failed {
                failures.push(format!("{} (step {}): {f}", script.what, i + 1));
                break;
            }
        }
    }
    failures
}

/// The plain-HTTP/1.1 fast path (`proxy/src/http/fast.rs`) passes every response framing on,
/// answers pipelined requests in order, survives pooled connections the backend closed, and
/// hands a connection to the general path for a request with a body, which is then served too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_framings_pipelining_stale_connections_and_handover() {
    let backend = scripted_backend().await;
    let Fixture {
        sb,
        c,
        proxy,
        dir: _dir,
    } = Fixture::start(&[], &[("fast.test", "/")], |d| {
        write(d, "ing.yaml", &simple_ingress("fast.test", "raw"));
        write(
            d,
            "svc.yaml",
            &service_yaml("default", "raw", "10.96.9.1", &[(backend, Cond::Ready)]),
        );
    })
    .await;

    // Every response framing passes: chunked with a trailer, ended by the close, no content,
    // 103 Early Hints before the answer (hyper's client skips the 103; the script of SCRIPTS
    // sees it), and HEAD with the length a GET would get ("HEAD /h body=0 conn=K") but no body.
    use Check::*;
    let framings = [
        Case::get("fast.test", "/chunked").expect([Status(200), Body("hello world")]),
        Case::get("fast.test", "/close").expect([Status(200), Body("until close")]),
        Case::get("fast.test", "/nocontent").expect([Status(204), Body("")]),
        Case::get("fast.test", "/hint").expect([Status(200), Body("ok")]),
        Case::new("HEAD", "fast.test", "/h").expect([
            Status(200),
            Body(""),
            HeaderAtLeast("content-length", "HEAD /h body=0 conn=1".len()),
        ]),
    ];
    assert_table("framings", &run_cases(&c, proxy, &framings).await);

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

    assert_table("raw-socket scripts", &run_scripts(proxy, SCRIPTS).await);

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
    let Fixture { sb, dir: _dir, .. } = Fixture::start(
        &["--http-workers", "2"],
        &[("pipe.test", "/"), ("bad.test", "/")],
        |d| {
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
        },
    )
    .await;

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
