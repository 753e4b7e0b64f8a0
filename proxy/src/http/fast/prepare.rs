//! A request head read on the fast path, parsed and routed: proxied here (the head to send
//! upstream), wait for more bytes, or hand the connection to pingora.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::bufs;
use super::h1::{put_header, request_role, tokens, Role, MAX_HEADERS};
use crate::http::backend::PortBalancer;
use crate::http::filters;
use crate::http::guard::too_large_code;
use crate::http::metrics::Series;
use crate::http::request::{forwarded_for, host_and_port, put_request_id, request_hash};
use crate::http::route::{visible_text, CompiledRule, Headers, RequestView};
use crate::http::shared::Shared;
use crate::http::views::Scope;

/// What the fast path remembers about one client connection between its requests.
pub(super) struct ConnState {
    pub(super) ip: IpAddr,
    /// The listener the connection came in on: which rules it is served (`views.rs`).
    pub(super) scope: Scope,
    /// The client address as text: X-Forwarded-For's element and the access log's `client=`.
    pub(super) ip_text: String,
    /// Its `for=` element of `Forwarded`.
    fwd_for: String,
    /// The last (generation, rule, backend) → balancer lookup: the next request on a
    /// connection usually takes the same rule, and `Balancers::get` hashes and locks.
    balancer: Option<(u64, Arc<CompiledRule>, usize, Arc<PortBalancer>)>,
    /// The last request's metric series.
    pub(super) series: Option<Arc<Series>>,
}

impl ConnState {
    pub(super) fn new(ip: IpAddr, scope: Scope) -> Self {
        ConnState {
            ip,
            scope,
            ip_text: ip.to_string(),
            fwd_for: forwarded_for(ip),
            balancer: None,
            series: None,
        }
    }
}

/// A request this path will proxy.
pub(super) struct Prepared {
    /// When its head was complete.
    pub(super) start: Instant,
    pub(super) head_len: usize,
    pub(super) method: http::Method,
    /// The host (lower-case, without a port), the target's path (without the query) and the
    /// request id, one after the other (one allocation for the three): see the methods.
    text: String,
    host_end: usize,
    path_end: usize,
    /// The client asked to close after this request.
    pub(super) close: bool,
    /// The head sent upstream (the same for every attempt).
    pub(super) upstream_head: Vec<u8>,
    pub(super) rule: Arc<CompiledRule>,
    pub(super) balancer: Arc<PortBalancer>,
    pub(super) hash: u64,
    pub(super) generation: u64,
}

impl Prepared {
    pub(super) fn host(&self) -> &str {
        &self.text[..self.host_end]
    }

    /// The request target's path, as received.
    pub(super) fn path(&self) -> &str {
        &self.text[self.host_end..self.path_end]
    }

    pub(super) fn request_id(&self) -> &str {
        &self.text[self.path_end..]
    }
}

pub(super) enum Prep {
    /// Not boxed: it moves into the request's future, which is (`exchange`).
    Ready(Prepared),
    /// The head is not complete yet.
    Partial,
    /// pingora's.
    Fallback,
    /// Over the head size limit: refused with this code (431, or 414 for a request line that
    /// does not end within it).
    TooLarge(u16),
}

/// Headers a `Connection` option may not name: the proxy cannot remove them as RFC 9110 7.6.1
/// would have it (Host) or sets them itself. pingora answers such a request 400 (as Envoy),
/// and so the fast path hands it there.
fn protected(token: &[u8]) -> bool {
    [
        &b"host"[..],
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
    ]
    .iter()
    .any(|h| token.eq_ignore_ascii_case(h))
}

/// An HTTP `token` (RFC 9110 5.6.2): what a `Connection` option must be.
fn is_token(t: &[u8]) -> bool {
    t.iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses the head in `buf` and decides: proxy here, wait for more, or hand to pingora.
pub(super) fn prepare(shared: &Shared, buf: &[u8], conn: &mut ConnState) -> Prep {
    let client_ip = conn.ip;
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hs);
    let max = shared.config.client.max_header_bytes;
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= max => n,
        Ok(httparse::Status::Complete(_)) => return Prep::TooLarge(431),
        Ok(httparse::Status::Partial) if buf.len() <= max => return Prep::Partial,
        Ok(httparse::Status::Partial) => return Prep::TooLarge(too_large_code(buf)),
        Err(_) => return Prep::Fallback,
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
    // By byte ('?' is ASCII): `split_once` with a `char` searched with ~80 instructions.
    let (path, query) = match target.bytes().position(|b| b == b'?') {
        Some(q) => (&target[..q], Some(&target[q + 1..])),
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
    let mut nominations = 0;
    let (mut xff, mut fwd, mut id) = (None, None, None);
    // Each header's role, worked out once for both passes over them.
    let mut roles = [Role::Other; MAX_HEADERS];
    for (h, role) in headers.iter().zip(roles.iter_mut()) {
        *role = request_role(h.name);
        match *role {
            Role::Host => {
                hosts += 1;
                host = Some(h.value);
            }
            // A body: pingora's.
            Role::ContentLength if h.value.trim_ascii() != b"0" => return Prep::Fallback,
            Role::Refused => return Prep::Fallback,
            Role::Connection => {
                for t in tokens(h.value) {
                    nominations += 1;
                    // What pingora refuses (400), it answers.
                    if nominations >= 10 || protected(t) || !is_token(t) {
                        return Prep::Fallback;
                    }
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        return Prep::Fallback;
                    } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                        conn_tokens.push(t);
                    }
                }
            }
            Role::RequestId if id.is_none() => id = Some(h.value),
            Role::ForwardedFor if xff.is_none() => xff = Some(h.value),
            Role::Forwarded if fwd.is_none() => fwd = Some(h.value),
            _ => {}
        }
    }
    let (1, Some(Ok(raw_host))) = (hosts, host.map(std::str::from_utf8)) else {
        return Prep::Fallback;
    };
    let (host, _port) = host_and_port(raw_host);
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
    let Some(matched) = index.find(conn.scope, &host, &view) else {
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

    let mut text = String::with_capacity(host.len() + path.len() + 32);
    text.push_str(&host);
    text.push_str(path);
    let (host_end, path_end) = (host.len(), host.len() + path.len());
    put_request_id(id.and_then(visible_text), &mut text);
    let request_id = &text[path_end..];
    let mut out = bufs::take(head_len + 256);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (h, role) in headers.iter().zip(roles) {
        // Hop-by-hop headers and those set below are not passed on, nor what `Connection`
        // names.
        if !role.forwarded()
            || (!conn_tokens.is_empty()
                && conn_tokens
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(h.name.as_bytes())))
        {
            continue;
        }
        put_header(&mut out, h.name, h.value);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prev) = xff.filter(|p| !p.is_empty()) {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(conn.ip_text.as_bytes());
    out.extend_from_slice(b"\r\nforwarded: ");
    if let Some(prev) = fwd.filter(|p| !p.is_empty()) {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(conn.fwd_for.as_bytes());
    // The fixed text between the values in one piece each: fewer copies.
    out.extend_from_slice(b";proto=http;host=\"");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\"\r\nx-forwarded-proto: http\r\nx-forwarded-host: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nx-request-id: ");
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");

    Prep::Ready(Prepared {
        start: Instant::now(),
        head_len,
        method,
        text,
        host_end,
        path_end,
        close,
        upstream_head: out,
        rule,
        balancer,
        hash,
        generation: snapshot.generation,
    })
}
