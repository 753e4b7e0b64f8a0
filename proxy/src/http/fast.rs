//! The HTTP/1.1 fast path: plain-listener requests without a body, routed to a rule without
//! filters, proxied by switchboard's own code instead of pingora's generic HTTP proxy.
//!
//! Why: `perf` put pingora's per-request user time at ~12 µs (header maps, the downstream and
//! upstream task pair, its pool's idle-watch task per request, a `getpeername` per reuse)
//! against ~2 µs for nginx, which is the whole L7 gap (`docs/benchmarks.md`). This path parses
//! with `httparse`, reuses the routing index, balancers, endpoint health, retry budget and
//! metrics of `service.rs`, and keeps its own upstream keep-alive pool, so one request costs
//! the four socket calls nginx makes and little else.
//!
//! What it takes: HTTP/1.1 requests on `--http` listeners with exactly one `Host`, an
//! origin-form target without dot segments, no body (`Content-Length` absent or 0, no
//! `Transfer-Encoding`), no `Upgrade`/`Expect`, whose rule has no filters and whose backend is
//! an HTTP/1 service port with usable endpoints. Anything else (HTTP/1.0, h2c, bodies,
//! WebSockets, 404/503/redirects, filters, malformed requests) is handed to pingora with the
//! bytes read so far put back, and the connection stays on pingora from then on. Nothing has
//! been sent upstream when that decision is made, so it is always safe.
//!
//! Behaviour is the pingora path's (`service.rs`): same endpoint choice and ejection, connect
//! failures retried on another endpoint, idempotent requests retried on a reset or 502/503
//! within the budget, a stale pooled connection retried once on a fresh one, `timeouts.request`
//! / `backendRequest` deadlines and the upstream read timeout (504), X-Forwarded-*,
//! `Forwarded`, X-Request-Id, hop-by-hop headers removed, the same metrics and access log.
//! Responses are passed through with their framing (Content-Length, chunked, or
//! close-delimited, which closes the client connection after it).
//!
//! Services annotated `switchboard.dev/upstream-pipelining` get GETs and HEADs read in one
//! event-loop pass sent to an endpoint together, pipelined on one pooled connection (`Batch`,
//! `Upstream`; `docs/http.md`).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

use super::backend::PortBalancer;
use super::filters;
use super::health::EndpointState;
use super::metrics::Series;
use super::pool::{disturbed, Lease};
use super::request::{forwarded_for, request_hash, request_id, split_host_port};
use super::retry;
use super::route::{visible_text, CompiledRule, Headers, RequestView};
use super::shared::Shared;
use super::upstreams;
use super::worker::{requeue, worker, worker_saturated};
pub use super::worker::{set_worker, worker_unparked};

/// Most headers a request or response may have on this path (more: pingora's path).
const MAX_HEADERS: usize = 64;
/// Largest request head this path reads before handing the request to pingora.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Largest upstream response head accepted (larger: 502).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// How long a client connection may wait for its next request (as pingora's keep-alive).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// How a connection left the fast path.
pub enum Served {
    /// Closed (by either side, idle timeout, shutdown, or an error answered here).
    Closed,
    /// pingora takes over: the stream and the bytes already read from it.
    Fallback(TcpStream, Vec<u8>),
}

/// One read that does not wait. Unlike `try_read_buf` it goes through tokio's `poll_read`,
/// which marks the socket drained when a read comes back shorter than the room it was given
/// (epoll is edge-triggered). After `try_read_buf` the socket stayed marked readable, so the
/// wait for the next request on a keep-alive connection returned at once, and its read failed
/// with EAGAIN: a third `recvfrom` per proxied request, beside the two that carry data.
async fn read_now(conn: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut read = std::pin::pin!(conn.read_buf(buf));
    std::future::poll_fn(|cx| match std::future::Future::poll(read.as_mut(), cx) {
        std::task::Poll::Pending => {
            std::task::Poll::Ready(Err(std::io::ErrorKind::WouldBlock.into()))
        }
        ready => ready,
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Upstream pipelining (Services annotated `switchboard.dev/upstream-pipelining: "true"`)
// ---------------------------------------------------------------------------------------------

/// Requests that go upstream behind a leader's on its pooled connection, gathered while the
/// leader waits for the rest of its event-loop pass (`requeue`), then written with the
/// leader's head in one send. Each response is read, in order, by its own request's task: the
/// connection goes down the line as an [`Upstream`].
#[derive(Default)]
struct Batch {
    heads: Vec<u8>,
    followers: Followers,
}

/// The requests pipelined behind one on its connection, in order: each waits for the
/// connection (`relay`), and one whose sender is dropped sends again on its own.
type Followers = VecDeque<oneshot::Sender<Upstream>>;

thread_local! {
    /// The batches open on this thread: id, endpoint, batch. Only HTTP workers batch
    /// (`worker() > 0`): each runs one current-thread runtime, so a leader resumes on the
    /// thread it opened on.
    static BATCHES: std::cell::RefCell<Vec<(u64, SocketAddr, Batch)>> =
        const { std::cell::RefCell::new(Vec::new()) };
    static NEXT_BATCH: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A batch a leader holds open; dropped unclosed (the leader's task went away), it takes the
/// batch with it and the followers send again.
struct OpenBatch(u64);

impl OpenBatch {
    /// Opens a batch for `endpoint`. A leader opens one after failing to join one, so any other
    /// batch open for the endpoint is full: requests past a batch's depth start the next.
    fn open(endpoint: SocketAddr) -> OpenBatch {
        let id = NEXT_BATCH.with(|n| {
            n.set(n.get() + 1);
            n.get()
        });
        BATCHES.with(|b| b.borrow_mut().push((id, endpoint, Batch::default())));
        OpenBatch(id)
    }

    /// Closes it: the requests that joined.
    fn close(self) -> Batch {
        let batch = take_batch(self.0);
        std::mem::forget(self);
        batch
    }
}

impl Drop for OpenBatch {
    fn drop(&mut self) {
        drop(take_batch(self.0));
    }
}

fn take_batch(id: u64) -> Batch {
    BATCHES.with(|b| {
        let mut b = b.borrow_mut();
        match b.iter().position(|(i, _, _)| *i == id) {
            Some(i) => b.swap_remove(i).2,
            None => Batch::default(),
        }
    })
}

/// Joins a batch open for `endpoint` that holds fewer than `depth` requests: the connection
/// comes on the receiver.
fn join_batch(
    endpoint: SocketAddr,
    depth: usize,
    head: &[u8],
) -> Option<oneshot::Receiver<Upstream>> {
    BATCHES.with(|b| {
        let mut b = b.borrow_mut();
        let (_, _, batch) = b
            .iter_mut()
            .find(|(_, e, batch)| *e == endpoint && batch.followers.len() + 1 < depth)?;
        let (tx, rx) = oneshot::channel();
        batch.heads.extend_from_slice(head);
        batch.followers.push_back(tx);
        Some(rx)
    })
}

/// Passes the connection, with the bytes read past the response before, to the next pipelined
/// request (if there is one and it still waits); otherwise the connection and the rest of the
/// line are dropped.
fn relay(lease: Lease, buf: Vec<u8>, mut followers: Followers) {
    if let Some(next) = followers.pop_front() {
        let _ = next.send(Upstream {
            lease,
            buf,
            followers,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// What the fast path remembers about one client connection between its requests.
struct ConnState {
    ip: IpAddr,
    /// The client address as X-Forwarded-For lists it.
    xff: String,
    /// Its `for=` element of `Forwarded`.
    fwd_for: String,
    /// The last (generation, rule, backend) → balancer lookup: the next request on a
    /// connection usually takes the same rule, and `Balancers::get` hashes and locks.
    balancer: Option<(u64, Arc<CompiledRule>, usize, Arc<PortBalancer>)>,
    /// The last request's metric series.
    series: Option<Arc<Series>>,
}

impl ConnState {
    fn new(ip: IpAddr) -> Self {
        ConnState {
            ip,
            xff: ip.to_string(),
            fwd_for: forwarded_for(ip),
            balancer: None,
            series: None,
        }
    }
}

/// A request this path will proxy.
struct Prepared {
    /// When its head was complete.
    start: Instant,
    head_len: usize,
    method: http::Method,
    host: String,
    /// The request target as received (path and query).
    target: String,
    request_id: String,
    /// The client asked to close after this request.
    close: bool,
    /// The head sent upstream (the same for every attempt).
    upstream_head: Vec<u8>,
    rule: Arc<CompiledRule>,
    balancer: Arc<PortBalancer>,
    hash: u64,
    generation: u64,
}

enum Prep {
    Ready(Box<Prepared>),
    /// The head is not complete yet.
    Partial,
    /// pingora's.
    Fallback,
}

/// Hop-by-hop headers (RFC 9110 7.6.1), never forwarded.
fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Headers this proxy sets itself on the upstream request.
fn replaced_upstream(name: &str) -> bool {
    [
        "x-forwarded-for",
        "forwarded",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

fn put_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The comma-separated tokens of a `Connection` header value, trimmed.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Parses the head in `buf` and decides: proxy here, wait for more, or hand to pingora.
fn prepare(shared: &Shared, buf: &[u8], conn: &mut ConnState) -> Prep {
    let client_ip = conn.ip;
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hs);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST_HEAD => return Prep::Partial,
        _ => return Prep::Fallback,
    };
    if req.version != Some(1) {
        return Prep::Fallback;
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Prep::Fallback;
    };
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return Prep::Fallback;
    };
    if method == http::Method::CONNECT || !target.starts_with('/') {
        return Prep::Fallback;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if filters::remove_dot_segments(path).is_some() {
        return Prep::Fallback;
    }
    let headers: &[httparse::Header<'_>] = req.headers;
    let mut host = None;
    let mut hosts = 0;
    let mut close = false;
    let mut conn_tokens: Vec<&[u8]> = Vec::new();
    let (mut xff, mut fwd, mut id) = (None, None, None);
    for h in headers {
        let n = h.name;
        if n.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = Some(h.value);
        } else if n.eq_ignore_ascii_case("content-length") {
            if h.value.trim_ascii() != b"0" {
                return Prep::Fallback;
            }
        } else if ["transfer-encoding", "upgrade", "expect", "http2-settings"]
            .iter()
            .any(|x| n.eq_ignore_ascii_case(x))
        {
            return Prep::Fallback;
        } else if n.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    return Prep::Fallback;
                } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                    conn_tokens.push(t);
                }
            }
        } else if n.eq_ignore_ascii_case("x-request-id") && id.is_none() {
            id = Some(h.value);
        } else if n.eq_ignore_ascii_case("x-forwarded-for") && xff.is_none() {
            xff = Some(h.value);
        } else if n.eq_ignore_ascii_case("forwarded") && fwd.is_none() {
            fwd = Some(h.value);
        }
    }
    let (1, Some(Ok(raw_host))) = (hosts, host.map(std::str::from_utf8)) else {
        return Prep::Fallback;
    };
    let (host, _port) = split_host_port(raw_host);
    if host.is_empty() {
        return Prep::Fallback;
    }

    let snapshot = shared.cell.load();
    let index = shared.route_index(&snapshot.routes.http);
    let view = RequestView {
        path,
        query,
        method: &method,
        headers: Headers::Raw(headers),
    };
    let Some(matched) = index.find(&host, &view) else {
        return Prep::Fallback;
    };
    let rule = matched.rule.clone();
    if !rule.rule.filters.is_empty() {
        return Prep::Fallback;
    }
    let Some(bi) = rule.pick_backend(fastrand::u64(..)) else {
        return Prep::Fallback;
    };
    let backend = &rule.rule.backends[bi];
    if rule.crosses_namespace(backend) {
        return Prep::Fallback;
    }
    let balancer = match &conn.balancer {
        Some((g, r, b, balancer))
            if *g == snapshot.generation && Arc::ptr_eq(r, &rule) && *b == bi =>
        {
            balancer.clone()
        }
        _ => {
            let Ok(balancer) =
                shared
                    .balancers
                    .get(&snapshot.routes, backend, rule.rule.lb_algorithm.as_deref())
            else {
                return Prep::Fallback;
            };
            conn.balancer = Some((snapshot.generation, rule.clone(), bi, balancer.clone()));
            balancer
        }
    };
    if balancer.h2c {
        return Prep::Fallback;
    }
    let hash = balancer
        .algorithm
        .hash_key()
        .map(|k| request_hash(k, Some(client_ip), Headers::Raw(headers)))
        .unwrap_or(0);

    let request_id = request_id(id.and_then(visible_text));
    let mut out = Vec::with_capacity(head_len + 256);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in headers {
        if hop_by_hop(h.name)
            || replaced_upstream(h.name)
            || conn_tokens
                .iter()
                .any(|t| t.eq_ignore_ascii_case(h.name.as_bytes()))
        {
            continue;
        }
        put_header(&mut out, h.name, h.value);
    }
    let mut v = Vec::with_capacity(128);
    if let Some(prev) = xff.filter(|p| !p.is_empty()) {
        v.extend_from_slice(prev);
        v.extend_from_slice(b", ");
    }
    v.extend_from_slice(conn.xff.as_bytes());
    put_header(&mut out, "x-forwarded-for", &v);
    v.clear();
    if let Some(prev) = fwd.filter(|p| !p.is_empty()) {
        v.extend_from_slice(prev);
        v.extend_from_slice(b", ");
    }
    v.extend_from_slice(conn.fwd_for.as_bytes());
    v.extend_from_slice(b";proto=http;host=\"");
    v.extend_from_slice(host.as_bytes());
    v.push(b'"');
    put_header(&mut out, "forwarded", &v);
    put_header(&mut out, "x-forwarded-proto", b"http");
    put_header(&mut out, "x-forwarded-host", host.as_bytes());
    put_header(&mut out, "x-request-id", request_id.as_bytes());
    out.extend_from_slice(b"\r\n");

    Prep::Ready(Box::new(Prepared {
        start: Instant::now(),
        head_len,
        method,
        host,
        target: target.to_string(),
        request_id,
        close,
        upstream_head: out,
        rule,
        balancer,
        hash,
        generation: snapshot.generation,
    }))
}

/// Serves requests on an accepted plain connection until it closes or a request needs pingora.
pub async fn serve(
    shared: &Shared,
    mut client: TcpStream,
    peer: SocketAddr,
    shutdown: &watch::Receiver<bool>,
) -> Served {
    let mut conn = ConnState::new(peer.ip());
    let mut buf: Vec<u8> = Vec::new();
    // One timer and one shutdown wait for the connection's life, not one per request: the
    // timer fires at most once per KEEPALIVE_IDLE and is pushed back if requests came since.
    let mut stop = shutdown.clone();
    let stopped = stop.wait_for(|s| *s);
    tokio::pin!(stopped);
    let idle = tokio::time::sleep(KEEPALIVE_IDLE);
    tokio::pin!(idle);
    let mut last_active = Instant::now();
    'requests: loop {
        // Wait for the next request holding no buffer: idle connections cost little.
        if buf.is_empty() {
            buf = Vec::new();
            loop {
                tokio::select! {
                    biased;
                    r = client.readable() => match r {
                        Ok(()) => break,
                        Err(_) => return Served::Closed,
                    },
                    _ = &mut idle => {
                        if last_active.elapsed() >= KEEPALIVE_IDLE {
                            return Served::Closed;
                        }
                        let at = tokio::time::Instant::from_std(last_active + KEEPALIVE_IDLE);
                        idle.as_mut().reset(at);
                    }
                    _ = &mut stopped => return Served::Closed,
                }
            }
            buf.reserve(4096);
        }
        let prepared = loop {
            if !buf.is_empty() {
                match prepare(shared, &buf, &mut conn) {
                    Prep::Ready(p) => break p,
                    Prep::Fallback => {
                        shared.fast.handed_over.inc();
                        return Served::Fallback(client, buf);
                    }
                    Prep::Partial => {}
                }
            }
            if buf.len() == buf.capacity() {
                buf.reserve(4096);
            }
            match read_now(&mut client, &mut buf).await {
                Ok(0) => return Served::Closed,
                Ok(_) => continue,
                // `readable()` may wake with nothing to read (it does at once for a new
                // connection): wait again without the buffer.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && buf.is_empty() => {
                    continue 'requests;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Served::Closed,
            }
            // The rest of a head that came in pieces: bounded like an idle wait.
            match tokio::time::timeout(KEEPALIVE_IDLE, client.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Served::Closed,
            }
        };
        buf.drain(..prepared.head_len);
        // The request's state lives in its own allocation while it runs, not in this task.
        let keep_open = Box::pin(exchange(
            shared,
            &mut client,
            &mut conn,
            &prepared,
            shutdown,
        ))
        .await;
        if !keep_open {
            return Served::Closed;
        }
        // Idle from the end of the answer: a long request (a long poll) does not count.
        last_active = Instant::now();
    }
}

/// What went wrong with an attempt, for the response code, the retry decision and the log.
#[derive(Debug)]
enum Failure {
    /// Nothing usable came back from the endpoint (reset, EOF, refused).
    Io(&'static str),
    /// A deadline or read timeout.
    Timeout(&'static str),
    /// The endpoint's answer was not HTTP/1 this path can pass on.
    Invalid(&'static str),
}

impl Failure {
    fn code(&self) -> u16 {
        match self {
            Failure::Timeout(_) => 504,
            _ => 502,
        }
    }
    fn what(&self) -> &'static str {
        match self {
            Failure::Io(w) | Failure::Timeout(w) | Failure::Invalid(w) => w,
        }
    }
}

/// The time limits of one attempt.
#[derive(Clone, Copy)]
struct Limits {
    deadline: Option<tokio::time::Instant>,
    per_read: Option<Duration>,
}

/// Runs `f` until `deadline` (if any); past it, `Failure::Timeout(what)`.
async fn until<T>(
    deadline: Option<tokio::time::Instant>,
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, f)
            .await
            .map_err(|_| Failure::Timeout(what))?,
        None => f.await,
    }
}

impl Limits {
    async fn read(&self, conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, Failure> {
        self.awaiting_answer(async {
            conn.read_buf(buf)
                .await
                .map_err(|_| Failure::Io("ReadError"))
        })
        .await
    }

    /// Runs `f`, a wait for the endpoint's answer, within the attempt's deadline and one
    /// upstream read timeout.
    async fn awaiting_answer<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        let per_read = self.per_read.map(|t| tokio::time::Instant::now() + t);
        until(
            self.deadline,
            "ReadTimedout",
            until(per_read, "ReadTimedout", f),
        )
        .await
    }

    async fn write(&self, conn: &mut TcpStream, data: &[u8]) -> Result<(), Failure> {
        let write = async {
            conn.write_all(data)
                .await
                .map_err(|_| Failure::Io("WriteError"))
        };
        until(self.deadline, "WriteTimedout", write).await
    }
}

/// The in-flight count of the endpoint an attempt went to, ended when the attempt is.
struct InFlight(Arc<EndpointState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// How the response body is delimited (RFC 9112 6.3).
#[derive(Debug, PartialEq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// A parsed upstream response head.
struct Head {
    len: usize,
    code: u16,
    /// The head to send the client (hop-by-hop headers removed, x-request-id set; without the
    /// final CRLF, so `Connection: close` can still be added).
    client_head: Vec<u8>,
    framing: Framing,
    /// The endpoint keeps the connection open after this response.
    upstream_keepalive: bool,
}

fn parse_head(buf: &[u8], head_only: bool, request_id: &str) -> Result<Option<Head>, Failure> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut hs);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => return Ok(None),
        _ => return Err(Failure::Invalid("InvalidHTTPHeader")),
    };
    let code = resp.code.unwrap_or(0);
    let version = resp.version.unwrap_or(0);
    let mut keepalive = version == 1;
    let mut conn_tokens: Vec<&[u8]> = Vec::new();
    let mut te = None;
    let mut length: Option<u64> = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    keepalive = false;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keepalive = true;
                } else {
                    conn_tokens.push(t);
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(Failure::Invalid("InvalidHTTPHeader"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Failure::Invalid("InvalidHTTPHeader"));
            }
            length = Some(n);
        }
    }
    let framing = if head_only || code < 200 || code == 204 || code == 304 {
        Framing::None
    } else if let Some(te) = te {
        let last = te.rsplit(|&b| b == b',').next().unwrap_or(b"").trim_ascii();
        if last.eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    let mut out = Vec::with_capacity(len + 64);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        if hop_by_hop(h.name)
            || h.name.eq_ignore_ascii_case("x-request-id")
            || (te.is_some() && h.name.eq_ignore_ascii_case("content-length"))
            || conn_tokens
                .iter()
                .any(|t| t.eq_ignore_ascii_case(h.name.as_bytes()))
        {
            continue;
        }
        put_header(&mut out, h.name, h.value);
    }
    if code >= 200 {
        put_header(&mut out, "x-request-id", request_id.as_bytes());
    }
    Ok(Some(Head {
        len,
        code,
        client_head: out,
        upstream_keepalive: keepalive && framing != Framing::Close,
        framing,
    }))
}

/// Finds the end of a chunked body in the bytes fed to it, across reads.
#[derive(Debug, Default)]
struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u32,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    EndLf,
}

impl Chunked {
    /// Feeds `data`; `Ok(Some(n))` when the body ends after `n` of its bytes.
    fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, Failure> {
        let bad = || Failure::Invalid("InvalidChunk");
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).expect("hex digit") as u64;
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(bad());
                        }
                        self.size = self.size * 16 + d;
                    }
                    b';' | b' ' | b'\t' => self.state = ChunkState::Ext,
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.size_line_done().map_err(|_| bad())?,
                    _ => return Err(bad()),
                },
                ChunkState::Ext => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.size_line_done().map_err(|_| bad())?,
                    _ => {}
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(bad());
                    }
                    self.size_line_done().map_err(|_| bad())?;
                }
                ChunkState::Data => {
                    let take = (self.size).min((data.len() - i) as u64) as usize;
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => match b {
                    b'\r' => self.state = ChunkState::DataLf,
                    b'\n' => self.state = ChunkState::Size,
                    _ => return Err(bad()),
                },
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(bad());
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => match b {
                    b'\r' => self.state = ChunkState::EndLf,
                    b'\n' => return Ok(Some(i + 1)),
                    _ => self.state = ChunkState::TrailerLine,
                },
                ChunkState::TrailerLine => {
                    if b == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(bad());
                    }
                    return Ok(Some(i + 1));
                }
            }
            i += 1;
        }
        Ok(None)
    }

    fn size_line_done(&mut self) -> Result<(), ()> {
        if self.digits == 0 {
            return Err(());
        }
        self.digits = 0;
        self.state = if self.size == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        };
        Ok(())
    }
}

/// Per-request bookkeeping for the log and metrics.
struct Outcome {
    code: u16,
    retries: u32,
    upstream: Option<SocketAddr>,
    error: Option<&'static str>,
}

/// One request: attempts on endpoints until a response can be passed on, then the response.
/// Returns whether the client connection stays open.
async fn exchange(
    shared: &Shared,
    client: &mut TcpStream,
    conn: &mut ConnState,
    p: &Prepared,
    shutdown: &watch::Receiver<bool>,
) -> bool {
    shared.budget.deposit();
    shared.fast.proxied.inc();
    let mut out = Outcome {
        code: 0,
        retries: 0,
        upstream: None,
        error: None,
    };
    let keep_open = attempts(shared, client, p, shutdown, &mut out).await;
    log_request(shared, conn, p, &out);
    keep_open
}

fn record_failure(shared: &Shared, b: &PortBalancer, state: &EndpointState) {
    retry::record_failure(&shared.config.outlier, &shared.metrics, b, state);
}

fn count_retry(shared: &Shared, b: &PortBalancer, reason: &str) {
    retry::count_retry(&shared.metrics, &b.label, reason);
}

async fn attempts(
    shared: &Shared,
    client: &mut TcpStream,
    p: &Prepared,
    shutdown: &watch::Receiver<bool>,
    out: &mut Outcome,
) -> bool {
    let start = p.start;
    let cfg = &shared.config;
    let b = &p.balancer;
    let idempotent = p.method.is_idempotent();
    let head_only = p.method == http::Method::HEAD;
    let mut tried: Vec<usize> = Vec::new();
    // After one stale pooled connection, the next attempt opens a fresh one.
    let mut fresh_only = false;
    // After a pipelined connection failed ahead of this request, it is sent on its own.
    let mut unpipelined = false;
    let can_try_another = |tried: &[usize], retries: u32| {
        retry::can_try_another(b, tried.len(), retries, cfg.max_retries)
    };
    let whole = retry::request_deadline(&p.rule.rule, start);
    loop {
        let Some(i) = b.choose(p.hash, &tried) else {
            return local_error(client, p, out, 502, "every endpoint was tried").await;
        };
        tried.push(i);
        let state = b.endpoints[i].clone();
        state.start_request();
        let _in_flight = InFlight(state.clone());
        out.upstream = Some(state.addr);
        // The first attempt starts with the request (one clock read fewer per request).
        let attempt_start = if out.retries == 0 {
            start
        } else {
            Instant::now()
        };
        let deadline = retry::attempt_deadline(&p.rule.rule, whole, Some(attempt_start));
        let limits = Limits {
            deadline: deadline.map(tokio::time::Instant::from_std),
            per_read: cfg.upstream_read_timeout,
        };

        // A request that may go upstream behind another on one connection: an idempotent
        // bodyless request to a Service that allows it, on an HTTP worker's event loop.
        let pipelinable = b.pipelining > 1
            && worker() > 0
            && !fresh_only
            && !unpipelined
            && out.retries == 0
            && matches!(p.method, http::Method::GET | http::Method::HEAD);
        let mut ubuf: Vec<u8> = Vec::new();
        let mut followers = VecDeque::new();
        let joined = pipelinable
            .then(|| join_batch(state.addr, b.pipelining, &p.upstream_head))
            .flatten();
        let relayed = match joined {
            // The wait is for the answers ahead of this one.
            Some(rx) => match limits
                .awaiting_answer(async { rx.await.map_err(|_| Failure::Io("PipelineBroken")) })
                .await
            {
                Ok(r) => Some(r),
                Err(Failure::Timeout(what)) => {
                    out.error = Some(what);
                    return local_error(client, p, out, 504, what).await;
                }
                Err(_) => {
                    // The connection ahead failed before this request's answer: send it again
                    // on a connection of its own (it is idempotent).
                    unpipelined = true;
                    tried.pop();
                    count_retry(shared, b, "pipeline");
                    continue;
                }
            },
            None => None,
        };
        let sent = relayed.is_some();
        let mut reused = sent;
        let mut lease = match relayed {
            Some(r) => {
                shared.fast.pipelined.inc();
                ubuf = r.buf;
                followers = r.followers;
                r.lease
            }
            None => {
                let pooled = if fresh_only {
                    None
                } else {
                    shared
                        .fast
                        .pool
                        .take(state.addr, cfg.upstream_idle_timeout, attempt_start)
                };
                reused = pooled.is_some();
                if reused {
                    shared.fast.reused_conn.inc();
                } else {
                    shared.fast.new_conn.inc();
                }
                match pooled {
                    Some(l) => l,
                    None => match connect(shared, b, &state, &limits).await {
                        Ok(l) => l,
                        Err(f) => {
                            shared
                                .metrics
                                .connect_errors
                                .with_label_values(&[&*b.label])
                                .inc();
                            record_failure(shared, b, &state);
                            if can_try_another(&tried, out.retries) {
                                out.retries += 1;
                                count_retry(shared, b, "connect");
                                continue;
                            }
                            out.error = Some(f.what());
                            return local_error(client, p, out, f.code(), f.what()).await;
                        }
                    },
                }
            }
        };

        // Send the request (unless it went in a batch) and read the response head.
        if ubuf.capacity() < 8192 {
            ubuf.reserve(8192 - ubuf.len());
        }
        let head = async {
            if !sent {
                // A batch only on a pooled connection: one known to keep alive.
                let lead = (pipelinable && reused).then_some(state.addr);
                followers = send_request(lease.conn(), p, lead, &limits).await?;
            }
            loop {
                if !ubuf.is_empty() {
                    if let Some(h) = parse_head(&ubuf, head_only, &p.request_id)? {
                        if h.code == 101 {
                            return Err(Failure::Invalid("InvalidHTTPHeader"));
                        }
                        if h.code >= 200 {
                            return Ok(h);
                        }
                        // 103 Early Hints and the like: pass on, then the final answer.
                        let mut info = h.client_head;
                        info.extend_from_slice(b"\r\n");
                        let _ = client.write_all(&info).await;
                        ubuf.drain(..h.len);
                        continue;
                    }
                }
                if ubuf.len() == ubuf.capacity() {
                    ubuf.reserve(8192);
                }
                if limits.read(lease.conn(), &mut ubuf).await? == 0 {
                    return Err(Failure::Io("ConnectionClosed"));
                }
            }
        }
        .await;
        let head = match head {
            Ok(h) => h,
            Err(f) => {
                drop(lease);
                drop(followers);
                let stale = reused && ubuf.is_empty() && matches!(f, Failure::Io(_));
                if matches!(f, Failure::Timeout(_)) {
                    out.error = Some(f.what());
                    return local_error(client, p, out, 504, f.what()).await;
                }
                if sent && matches!(f, Failure::Invalid(_)) {
                    // What came before this request's answer was not where it should end (an
                    // endpoint that sent a body with a HEAD, 204 or 304 answer): the line lost
                    // its place. Send it again on its own connection.
                    unpipelined = true;
                    tried.pop();
                    count_retry(shared, b, "pipeline");
                    continue;
                }
                if stale && idempotent && !fresh_only {
                    // A pooled connection the endpoint had closed: says nothing about it.
                    fresh_only = true;
                    tried.pop();
                    out.retries += 1;
                    count_retry(shared, b, "reset");
                    continue;
                }
                if !stale {
                    record_failure(shared, b, &state);
                }
                if retry::retry_on_reset(
                    idempotent && matches!(f, Failure::Io(_)),
                    can_try_another(&tried, out.retries),
                    false,
                    &shared.budget,
                ) {
                    out.retries += 1;
                    count_retry(shared, b, "reset");
                    continue;
                }
                out.error = Some(f.what());
                return local_error(client, p, out, f.code(), f.what()).await;
            }
        };
        state.observe_latency(attempt_start.elapsed());
        if head.code >= 500 {
            record_failure(shared, b, &state);
            if retry::retry_on_status(
                head.code,
                idempotent,
                can_try_another(&tried, out.retries),
                &shared.budget,
            ) {
                out.retries += 1;
                count_retry(shared, b, "status");
                continue;
            }
        } else {
            state.record_success();
        }
        out.code = head.code;
        let upstream = Upstream {
            lease,
            buf: ubuf,
            followers,
        };
        return respond(shared, client, p, shutdown, head, upstream, &limits, out).await;
    }
}

/// Sends the request's head. With `lead` (the endpoint; pipelining allowed) it first opens a
/// batch there, and the requests that join it while the rest of the pass runs go in the same
/// write: they are returned, in order.
async fn send_request(
    conn: &mut TcpStream,
    p: &Prepared,
    lead: Option<SocketAddr>,
    limits: &Limits,
) -> Result<Followers, Failure> {
    let batch = lead.map(OpenBatch::open);
    if batch.is_some() || worker_saturated() {
        // Let the worker finish the events it already has before this request goes upstream:
        // the requests read in one pass then reach a backend together and it answers them in
        // one wake-up, instead of one wake-up (and, on another core, one IPI) each. See
        // `worker_saturated`.
        requeue().await;
    }
    match batch.map(OpenBatch::close) {
        Some(batch) if !batch.followers.is_empty() => {
            let mut w = Vec::with_capacity(p.upstream_head.len() + batch.heads.len());
            w.extend_from_slice(&p.upstream_head);
            w.extend_from_slice(&batch.heads);
            limits.write(conn, &w).await?;
            Ok(batch.followers)
        }
        _ => {
            limits.write(conn, &p.upstream_head).await?;
            Ok(VecDeque::new())
        }
    }
}

async fn connect(
    shared: &Shared,
    b: &PortBalancer,
    state: &EndpointState,
    limits: &Limits,
) -> Result<Lease, Failure> {
    let connect = async {
        TcpStream::connect(state.addr).await.map_err(|e| {
            Failure::Io(match e.kind() {
                std::io::ErrorKind::ConnectionRefused => "ConnectRefused",
                _ => "ConnectError",
            })
        })
    };
    let timeout = tokio::time::Instant::now() + shared.config.connect_timeout;
    let conn = until(
        limits.deadline,
        "ConnectTimedout",
        until(Some(timeout), "ConnectTimedout", connect),
    )
    .await?;
    let _ = conn.set_nodelay(true);
    Ok(shared.fast.pool.lease(conn, b.target(state.addr)))
}

/// The upstream side of a response: its connection, what was read from it so far, and the
/// pipelined requests waiting behind it there. A pipelined request gets its own from the one
/// ahead (`relay`); dropped, it closes the connection and the requests behind send again.
struct Upstream {
    lease: Lease,
    buf: Vec<u8>,
    followers: Followers,
}

/// Passes the response on. Returns whether the client connection stays open.
#[allow(clippy::too_many_arguments)]
async fn respond(
    shared: &Shared,
    client: &mut TcpStream,
    p: &Prepared,
    shutdown: &watch::Receiver<bool>,
    head: Head,
    up: Upstream,
    limits: &Limits,
    out: &mut Outcome,
) -> bool {
    let Upstream {
        mut lease,
        buf: mut ubuf,
        followers,
    } = up;
    // Pipelined requests behind this one: the connection goes on to them, not to the pool.
    let mut followers = Some(followers).filter(|f| !f.is_empty());
    let close = p.close || head.framing == Framing::Close || *shutdown.borrow();
    let mut wbuf = head.client_head;
    if close {
        wbuf.extend_from_slice(b"connection: close\r\n");
    }
    wbuf.extend_from_slice(b"\r\n");
    let body = &ubuf[head.len..];
    let mut chunked = Chunked::default();
    // Body bytes still to come with a Content-Length, whether the body is complete, and how
    // much of what was read is this response's (the rest: the next pipelined response's, or
    // bytes nobody asked for).
    let (mut left, mut done, end) = match head.framing {
        Framing::None => (0, true, 0),
        Framing::Length(n) => {
            let have = (body.len() as u64).min(n);
            wbuf.extend_from_slice(&body[..have as usize]);
            (n - have, have == n, have as usize)
        }
        Framing::Chunked => match chunked.feed(body) {
            Ok(Some(end)) => {
                wbuf.extend_from_slice(&body[..end]);
                (0, true, end)
            }
            Ok(None) => {
                wbuf.extend_from_slice(body);
                (0, false, body.len())
            }
            Err(f) => {
                out.error = Some(f.what());
                return local_error(client, p, out, 502, f.what()).await;
            }
        },
        Framing::Close => {
            wbuf.extend_from_slice(body);
            (0, false, body.len())
        }
    };
    let mut rest = body[end..].to_vec();
    if done {
        if let Some(f) = followers.take() {
            // The whole response is here: the next request reads its own before this one's
            // client has taken this one.
            if head.upstream_keepalive {
                relay(lease, rest, f);
            }
            if client.write_all(&wbuf).await.is_err() {
                out.error = Some("client gone");
                return false;
            }
            return !close;
        }
    }
    if client.write_all(&wbuf).await.is_err() {
        out.error = Some("client gone");
        return false;
    }
    drop(wbuf);
    while !done {
        ubuf.clear();
        if ubuf.capacity() < 16 * 1024 {
            ubuf.reserve(16 * 1024);
        }
        let n = match limits.read(lease.conn(), &mut ubuf).await {
            Ok(n) => n,
            Err(f) => {
                // The response is cut short: the client sees its connection close.
                out.error = Some(f.what());
                return false;
            }
        };
        if n == 0 {
            if head.framing == Framing::Close {
                break;
            }
            out.error = Some("ConnectionClosed");
            return false;
        }
        let take = match head.framing {
            Framing::Length(_) => {
                let take = (n as u64).min(left);
                left -= take;
                done = left == 0;
                take as usize
            }
            Framing::Chunked => match chunked.feed(&ubuf) {
                Ok(Some(end)) => {
                    done = true;
                    end
                }
                Ok(None) => n,
                Err(f) => {
                    out.error = Some(f.what());
                    return false;
                }
            },
            _ => n,
        };
        rest.extend_from_slice(&ubuf[take..]);
        if client.write_all(&ubuf[..take]).await.is_err() {
            out.error = Some("client gone");
            return false;
        }
    }
    if let Some(f) = followers {
        if done && head.upstream_keepalive {
            relay(lease, rest, f);
        }
        return !close;
    }
    // Nothing more may wait on it: nothing read past the response, and this read must find
    // nothing, which also leaves the runtime's readiness clear while it sits in the pool.
    if done && head.upstream_keepalive && rest.is_empty() && !disturbed(lease.conn()) {
        // Keep it unless its endpoint left the table while the request ran.
        let snap = shared.cell.load();
        if snap.generation == p.generation || upstreams::usable_in(&snap.routes, &lease.target) {
            lease.keep();
        }
    }
    !close
}

/// Answers the client with an error of this proxy's own (no response has been sent yet).
async fn local_error(
    client: &mut TcpStream,
    p: &Prepared,
    out: &mut Outcome,
    code: u16,
    what: &str,
) -> bool {
    out.code = code;
    let body = format!("service {}: {what}\n", p.balancer.label);
    let reason = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|c| c.canonical_reason())
        .unwrap_or("");
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nx-request-id: {}\r\nconnection: close\r\n\r\n{body}",
        body.len(),
        p.request_id
    );
    let _ = client.write_all(head.as_bytes()).await;
    // As pingora's path does after an error of its own: the connection is not reused.
    false
}

fn log_request(shared: &Shared, conn: &mut ConnState, p: &Prepared, o: &Outcome) {
    let elapsed = p.start.elapsed();
    let (route, service) = (&p.rule.label, &p.balancer.label);
    match &conn.series {
        Some(s) if s.is(route, service, o.code) => s.observe(elapsed.as_secs_f64()),
        _ => {
            let s = shared
                .fast
                .series
                .get(&shared.metrics, route, service, o.code);
            s.observe(elapsed.as_secs_f64());
            conn.series = Some(s);
        }
    }
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    let path = p.target.split('?').next().unwrap_or("");
    tracing::info!(
        target: "access",
        client = %conn.ip,
        method = %p.method,
        host = %p.host,
        path,
        status = o.code,
        route = &**route,
        service = &**service,
        upstream = o.upstream.map(|a| a.to_string()).as_deref().unwrap_or("-"),
        retries = o.retries,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        request_id = p.request_id.as_str(),
        error = o.error.unwrap_or(""),
    );
}

#[cfg(test)]
mod tests {
    use super::super::pool::FastPool;
    use super::super::upstreams::Target;
    use super::*;

    /// A connected loopback pair: (our end, the peer's end).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (l.accept().await.unwrap().0, peer)
    }

    async fn stays_quiet(conn: &TcpStream) -> bool {
        tokio::time::timeout(Duration::from_millis(50), conn.readable())
            .await
            .is_err()
    }

    #[tokio::test]
    async fn a_short_read_leaves_the_next_wait_asleep() {
        let (mut ours, mut peer) = pair().await;
        peer.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        ours.readable().await.unwrap();
        let mut buf = Vec::with_capacity(4096);
        assert_eq!(read_now(&mut ours, &mut buf).await.unwrap(), 18);
        assert!(
            stays_quiet(&ours).await,
            "the wait for the next request must sleep, not return to a read that fails"
        );
        // Nothing came: a read now does not wait either.
        let e = read_now(&mut ours, &mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        // The next request wakes it.
        peer.write_all(b"GET /2 HTTP/1.1\r\n\r\n").await.unwrap();
        ours.readable().await.unwrap();
        assert_eq!(read_now(&mut ours, &mut buf).await.unwrap(), 19);

        // What it replaced: after `try_read_buf` the wait returns at once with nothing to read.
        peer.write_all(b"x").await.unwrap();
        ours.readable().await.unwrap();
        assert_eq!(ours.try_read_buf(&mut buf).unwrap(), 1);
        assert!(!stays_quiet(&ours).await);
    }

    /// A batch takes requests up to its depth (the next request then leads a batch of its
    /// own), gives them to the leader in order when closed, and, dropped unclosed, lets the
    /// waiting requests know.
    #[tokio::test]
    async fn a_batch_takes_followers_up_to_its_depth_and_lets_them_go_when_dropped() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        assert!(join_batch(a, 3, b"x").is_none(), "no batch open");
        let open = OpenBatch::open(a);
        let other = OpenBatch::open(b);
        let mut r1 = join_batch(a, 3, b"one;").unwrap();
        let _r2 = join_batch(a, 3, b"two;").unwrap();
        assert!(
            join_batch(a, 3, b"three;").is_none(),
            "leader + 2 = depth 3"
        );
        let next = OpenBatch::open(a);
        let _r3 = join_batch(a, 3, b"four;").unwrap();
        let batch = open.close();
        assert_eq!(batch.heads, b"one;two;");
        assert_eq!(batch.followers.len(), 2);
        let batch2 = next.close();
        assert_eq!(
            (batch2.heads.as_slice(), batch2.followers.len()),
            (&b"four;"[..], 1)
        );
        assert!(join_batch(a, 3, b"x").is_none(), "closed");
        // The first follower gets the connection; the others stay in line behind it.
        let (ours, _peer) = pair().await;
        let lease = FastPool::new(0).lease(ours, test_target(a));
        relay(lease, b"rest".to_vec(), batch.followers);
        let got = r1.try_recv().unwrap();
        assert_eq!((got.buf.as_slice(), got.followers.len()), (&b"rest"[..], 1));

        // A leader that goes away without closing its batch drops the followers' line.
        let r4 = join_batch(b, 3, b"x").unwrap();
        drop(other);
        assert!(r4.await.is_err());
        assert!(join_batch(b, 3, b"x").is_none());
    }

    fn test_target(endpoint: SocketAddr) -> Target {
        Target {
            service: tables::ServiceKey::new("d", "web"),
            port: 80,
            endpoint,
            label: "d/web:80".into(),
        }
    }

    /// What an idle keep-alive connection costs is mostly this future (`bench/run idle`): it
    /// must stay small, with request state boxed (`exchange`).
    #[tokio::test]
    async fn an_idle_connection_holds_a_small_future() {
        let shared = shared();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (_tx, rx) = watch::channel(false);
        let fut = serve(&shared, client, addr, &rx);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1024, "fast::serve future is {size} bytes");
    }

    fn shared() -> Shared {
        let registry = prometheus::Registry::new();
        let metrics = super::super::metrics::HttpMetrics::new(&registry).unwrap();
        Shared::new(
            tables::new_cell("cluster.local"),
            super::super::HttpConfig::default(),
            metrics,
        )
    }

    fn decide(shared: &Shared, req: &[u8]) -> &'static str {
        let mut conn = ConnState::new("10.0.0.1".parse().unwrap());
        match prepare(shared, req, &mut conn) {
            Prep::Ready(_) => "ready",
            Prep::Partial => "partial",
            Prep::Fallback => "fallback",
        }
    }

    /// Heads this path does not take go to pingora (which answers them), incomplete ones wait,
    /// and no input makes it panic.
    #[test]
    fn requests_it_does_not_take_fall_back_and_garbage_is_harmless() {
        let s = shared();
        assert_eq!(decide(&s, b"GET / HTTP/1.1\r\nHost: a.test\r\n"), "partial");
        // Nothing routes in an empty table: pingora answers 404.
        assert_eq!(
            decide(&s, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"),
            "fallback"
        );
        for req in [
            &b"GET / HTTP/1.0\r\nHost: a.test\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET /a/../b HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
        ] {
            assert_eq!(
                decide(&s, req),
                "fallback",
                "{:?}",
                String::from_utf8_lossy(req)
            );
        }
        let mut big = b"GET / HTTP/1.1\r\nHost: a.test\r\nX: ".to_vec();
        big.resize(MAX_REQUEST_HEAD + 10, b'a');
        assert_eq!(
            decide(&s, &big),
            "fallback",
            "an over-long head is pingora's"
        );
        // Random bytes and random cuts of valid heads: an answer, never a panic.
        let valid = b"GET /p?q=1 HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, x\r\nCookie: a=b\r\n\r\n";
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let mut b = valid.to_vec();
            for _ in 0..rng.usize(0..4) {
                let i = rng.usize(..b.len());
                b[i] = rng.u8(..);
            }
            b.truncate(rng.usize(..=b.len()));
            decide(&s, &b);
            let noise: Vec<u8> = (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect();
            decide(&s, &noise);
            let _ = Chunked::default().feed(&noise);
            let _ = parse_head(&noise, false, "id");
        }
    }

    fn whole(body: &[u8]) -> Result<Option<usize>, Failure> {
        Chunked::default().feed(body)
    }

    #[test]
    fn chunked_end_is_found_in_one_piece_and_byte_by_byte() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nX-Trailer: a\r\n\r\nGET /next";
        let end = body.len() - b"GET /next".len();
        assert_eq!(whole(body).unwrap(), Some(end));
        let mut c = Chunked::default();
        for (i, b) in body.iter().enumerate() {
            match c.feed(std::slice::from_ref(b)).unwrap() {
                Some(1) => {
                    assert_eq!(i + 1, end);
                    return;
                }
                Some(n) => panic!("ended after {n} of one byte"),
                None => {}
            }
        }
        panic!("end not found");
    }

    #[test]
    fn chunked_without_trailers_and_malformed() {
        assert_eq!(whole(b"0\r\n\r\n").unwrap(), Some(5));
        assert_eq!(whole(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap(), Some(20));
        assert_eq!(whole(b"3\r\nabc\r\n").unwrap(), None);
        assert!(whole(b"zz\r\n").is_err());
        assert!(whole(b"\r\n").is_err(), "a size line needs digits");
        assert!(whole(b"3\r\nabcX").is_err(), "data must end with CRLF");
        assert!(whole(b"1000000000000000\r\n").is_err(), "size overflow");
    }

    #[test]
    fn response_framing() {
        let f = |head: &str, head_only| {
            parse_head(head.as_bytes(), head_only, "id")
                .unwrap()
                .unwrap()
                .framing
        };
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
            Framing::Length(5)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true),
            Framing::None
        );
        assert_eq!(f("HTTP/1.1 204 No Content\r\n\r\n", false), Framing::None);
        assert_eq!(f("HTTP/1.1 304 Not Modified\r\n\r\n", false), Framing::None);
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n",
                false
            ),
            Framing::Chunked
        );
        assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n", false), Framing::Close);
        assert!(parse_head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            false,
            "id"
        )
        .is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nconte", false, "id")
            .unwrap()
            .is_none());
    }

    #[test]
    fn response_head_for_the_client() {
        let h = parse_head(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: t=5\r\n\
              X-Request-Id: theirs\r\nContent-Length: 2\r\nX-Kept: yes\r\n\r\nok",
            false,
            "ours",
        )
        .unwrap()
        .unwrap();
        let text = String::from_utf8(h.client_head).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("X-Kept: yes\r\n"), "{text}");
        assert!(text.contains("Content-Length: 2\r\n"), "{text}");
        assert!(text.contains("x-request-id: ours\r\n"), "{text}");
        for gone in ["Connection", "X-Hop", "Keep-Alive", "theirs"] {
            assert!(!text.contains(gone), "{gone} in {text}");
        }
        assert!(h.upstream_keepalive, "HTTP/1.0 with keep-alive");
        let close = parse_head(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            false,
            "i",
        )
        .unwrap()
        .unwrap();
        assert!(!close.upstream_keepalive);
    }
}
