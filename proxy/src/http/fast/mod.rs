//! The HTTP/1.1 fast path: plain-listener requests without a body, routed to a rule without
//! filters, proxied by switchboard's own code instead of pingora's generic HTTP proxy.
//!
//! Why: `perf` put pingora's per-request user time at ~12 µs (header maps, the downstream and
//! upstream task pair, its pool's idle-watch task per request, a `getpeername` per reuse)
//! against ~2 µs for nginx, which is the whole L7 gap (`docs/benchmarks.md`). This path parses
//! with `httparse`, reuses the routing index, balancers, endpoint health, retry budget and
//! metrics the pingora path (`service.rs`) uses (`shared.rs`, `retry.rs`), and keeps its own
//! upstream keep-alive pool (`pool.rs`), so one request costs the four socket calls nginx
//! makes and little else.
//!
//! What it takes: HTTP/1.1 requests on `--http` listeners with exactly one `Host`, an
//! origin-form target without dot segments, no body (`Content-Length` absent or 0, no
//! `Transfer-Encoding`), no `Upgrade`/`Expect`, whose rule has no filters and whose backend is
//! an HTTP/1 service port with usable endpoints. Anything else (HTTP/1.0, h2c, bodies,
//! WebSockets, 404/503/redirects, filters, malformed requests) is handed to pingora with the
//! bytes read so far put back, and the connection stays on pingora from then on. Nothing has
//! been sent upstream when that decision is made, so it is always safe. Heads over the size
//! limit or not whole within the header timeout are refused here (431/414, 408; `HttpConfig::
//! client`), never handed over.
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
//! event-loop pass sent to an endpoint together, pipelined on one pooled connection
//! (`pipeline.rs`; `docs/http.md`).
//!
//! Files, each using only those above it: `bufs.rs` (buffers kept per event loop), `io.rs`
//! (timed socket waits), `h1.rs` (framing), `prepare.rs` (request head → routed request or
//! pingora), `pipeline.rs` (batches on one upstream connection), `respond.rs` (the answer,
//! errors, log), `exchange.rs` (attempts and retries), and here the connection loop. The pool
//! is `../pool.rs`, retries `../retry.rs`.

mod bufs;
mod exchange;
pub mod fuzzing;
mod h1;
mod io;
mod pipeline;
mod prepare;
mod respond;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::http::limits::Limit;
use crate::http::shared::Shared;
use crate::http::views::Scope;
use exchange::exchange;
use io::{read_now, refuse};
use prepare::{prepare, ConnState, Prep};

pub use crate::http::worker::{set_worker, worker_unparked};

/// How a connection left the fast path.
pub enum Served {
    /// Closed (by either side, idle timeout, shutdown, a refused head, or an error answered
    /// here).
    Closed,
    /// pingora takes over: the stream, the bytes already read from it, and when the head they
    /// start must be whole (the header timeout).
    Fallback(TcpStream, Vec<u8>, tokio::time::Instant),
}

/// Serves requests on an accepted plain connection until it closes or a request needs pingora.
///
/// Client limits (`HttpConfig::client`): a new connection's first head must be whole within
/// the header timeout of the accept, a later one within the header timeout of its first byte;
/// between requests the connection may idle for the idle timeout; a head over the size limit
/// is refused (431/414) as soon as that many bytes came, one not whole in time gets 408.
pub async fn serve(
    shared: &Shared,
    mut client: TcpStream,
    peer: SocketAddr,
    scope: Scope,
    shutdown: &watch::Receiver<bool>,
) -> Served {
    let limits = &shared.config.client;
    let mut conn = ConnState::new(peer.ip(), scope);
    let mut buf: Vec<u8> = Vec::new();
    // One timer and one shutdown wait for the connection's life, not one per request: the
    // timer fires at most once per idle timeout and is pushed back if requests came since.
    let mut stop = shutdown.clone();
    let stopped = stop.wait_for(|s| *s);
    tokio::pin!(stopped);
    let accept_by = tokio::time::Instant::now() + limits.header_timeout;
    // When the head being read must be whole: for the first request, the header timeout from
    // the accept; for a later one, from its first byte, which `by_then` reads off the clock
    // when a deadline is first needed (a head that comes whole at once never needs one, so it
    // costs no clock reading).
    let mut head_by = Some(accept_by);
    let by_then = |head_by: &mut Option<tokio::time::Instant>| {
        *head_by.get_or_insert_with(|| tokio::time::Instant::now() + limits.header_timeout)
    };
    let idle = tokio::time::sleep_until(accept_by);
    tokio::pin!(idle);
    // None until the first request: until then the wait is bounded by the header timeout.
    let mut last_active: Option<Instant> = None;
    'requests: loop {
        // Wait for the next request holding no buffer: idle connections cost little.
        if buf.is_empty() {
            bufs::give(std::mem::take(&mut buf));
            loop {
                tokio::select! {
                    biased;
                    r = client.readable() => match r {
                        Ok(()) => break,
                        Err(_) => return Served::Closed,
                    },
                    _ = &mut idle => {
                        let until = match last_active {
                            Some(t) => tokio::time::Instant::from_std(t + limits.idle_timeout),
                            None => accept_by,
                        };
                        if tokio::time::Instant::now() >= until {
                            return Served::Closed;
                        }
                        idle.as_mut().reset(until);
                    }
                    _ = &mut stopped => {
                        // Lines still buffered go out before the process does.
                        crate::http::access_log::flush();
                        return Served::Closed;
                    }
                }
            }
            buf = bufs::take(bufs::SMALL);
        }
        let mut head_started = false;
        let prepared = loop {
            if !buf.is_empty() {
                if !std::mem::replace(&mut head_started, true) && last_active.is_some() {
                    head_by = None;
                }
                match prepare(shared, &buf, &mut conn) {
                    Prep::Ready(p) => break p,
                    Prep::Fallback => {
                        shared.fast.handed_over.inc();
                        return Served::Fallback(client, buf, by_then(&mut head_by));
                    }
                    Prep::TooLarge(code) => {
                        drop(buf);
                        Box::pin(refuse(shared, &mut client, code, Limit::HeadSize)).await;
                        return Served::Closed;
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
            // The rest of a head that came in pieces: whole by the header deadline.
            match tokio::time::timeout_at(by_then(&mut head_by), client.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Served::Closed,
                Err(_) => {
                    drop(buf);
                    Box::pin(refuse(shared, &mut client, 408, Limit::HeadTimeout)).await;
                    return Served::Closed;
                }
            }
        };
        buf.drain(..prepared.head_len);
        // The request's state (`prepared` with it) lives in its own allocation while it runs,
        // not in this task.
        let (keep_open, end) =
            Box::pin(exchange(shared, &mut client, &mut conn, prepared, shutdown)).await;
        if !keep_open {
            return Served::Closed;
        }
        // Idle from the end of the answer: a long request (a long poll) does not count.
        last_active = Some(end);
    }
}
