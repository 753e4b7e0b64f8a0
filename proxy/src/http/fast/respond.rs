//! Answering the client on the fast path: the endpoint's response passed on with its framing,
//! this proxy's own error answers, and the request's metrics and access log line.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::sync::watch;

use super::bufs;
use super::h1::{Chunked, Framing, Head};
use super::io::{write_client, Limits};
use super::pipeline::{relay, Upstream};
use super::prepare::{ConnState, Prepared};
use crate::http::pool::disturbed;
use crate::http::shared::Shared;
use crate::http::upstreams;
use crate::http::{access_log, log_line};

/// Per-request bookkeeping for the log and metrics.
pub(super) struct Outcome {
    pub(super) code: u16,
    pub(super) retries: u32,
    pub(super) upstream: Option<SocketAddr>,
    pub(super) error: Option<&'static str>,
}

/// Passes the response on (its head came at `answered`). Returns whether the client connection
/// stays open.
#[allow(clippy::too_many_arguments)]
pub(super) async fn respond(
    shared: &Shared,
    client: &mut TcpStream,
    p: &Prepared,
    shutdown: &watch::Receiver<bool>,
    head: Head,
    up: Upstream,
    limits: &Limits,
    out: &mut Outcome,
    answered: Instant,
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
                return local_error(shared, client, p, out, 502, f.what()).await;
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
            if write_client(shared, client, &wbuf).await.is_err() {
                out.error = Some("client gone");
                return false;
            }
            return !close;
        }
    }
    if write_client(shared, client, &wbuf).await.is_err() {
        out.error = Some("client gone");
        return false;
    }
    bufs::give(wbuf);
    // Whether the body took reads after the head's.
    let more_reads = !done;
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
        if write_client(shared, client, &ubuf[..take]).await.is_err() {
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
        if snap.generation == p.generation || upstreams::usable_in(&snap.routes, lease.target()) {
            // Idle from its last read.
            lease.keep(if more_reads { Instant::now() } else { answered });
        }
    }
    bufs::give(ubuf);
    !close
}

/// Answers the client with an error of this proxy's own (no response has been sent yet).
///
/// Boxed: kept in the request's future (it is awaited in several places there), its strings and
/// write made every request's future larger, and that future is moved into its box once per
/// request (issue 17.5).
pub(super) fn local_error<'a>(
    shared: &'a Shared,
    client: &'a mut TcpStream,
    p: &'a Prepared,
    out: &'a mut Outcome,
    code: u16,
    what: &'a str,
) -> Pin<Box<impl Future<Output = bool> + 'a>> {
    Box::pin(answer_error(shared, client, p, out, code, what))
}

async fn answer_error(
    shared: &Shared,
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
        p.request_id()
    );
    let _ = write_client(shared, client, head.as_bytes()).await;
    // As pingora's path does after an error of its own: the connection is not reused.
    false
}

/// The request's metrics and access-log line, for a request that ended at `end`; `stopping`: the
/// proxy is shutting down (the line is written out at once).
pub(super) fn log_request(
    shared: &Shared,
    conn: &mut ConnState,
    p: &Prepared,
    o: &Outcome,
    end: Instant,
    stopping: bool,
) {
    let elapsed = end.saturating_duration_since(p.start);
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
    // The line `tracing::info!(target: "access", ...)` would write, written here into the
    // batch (`access_log.rs`, `log_line.rs`): one `write(2)` and the formatter per request
    // cost ~5 µs of CPU.
    let now = log_line::wall_time(end);
    access_log::append_with(stopping, |line| {
        log_line::line_start(line, now);
        line.extend_from_slice(b"client=");
        line.extend_from_slice(conn.ip_text.as_bytes());
        line.extend_from_slice(b" method=");
        log_line::put_safe(line, p.method.as_str());
        line.extend_from_slice(b" host=");
        log_line::put_safe(line, p.host());
        line.extend_from_slice(b" path=");
        log_line::put_safe(line, p.path());
        line.extend_from_slice(b" status=");
        log_line::put_u64(line, u64::from(o.code));
        line.push(b' ');
        log_line::put_str(line, "route", route);
        log_line::put_str(line, "service", service);
        line.extend_from_slice(b"upstream=\"");
        match o.upstream {
            Some(a) => log_line::put_socket_addr(line, a),
            None => line.push(b'-'),
        }
        line.extend_from_slice(b"\" retries=");
        log_line::put_u64(line, u64::from(o.retries));
        line.extend_from_slice(b" duration_ms=");
        log_line::put_millis(line, elapsed);
        line.extend_from_slice(b" request_id=");
        log_line::put_safe(line, p.request_id());
        line.extend_from_slice(b" error=");
        log_line::put_quoted(line, o.error.unwrap_or(""));
        line.push(b'\n');
    });
}
