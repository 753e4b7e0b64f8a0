//! One request on the fast path: attempts on endpoints (pooled, new or pipelined connections,
//! retries, deadlines) until a response can be passed on.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::sync::watch;

use super::bufs;
use super::h1::parse_head;
use super::io::{until, write_client, Failure, Limits};
use super::pipeline::{join_batch, send_request, Upstream};
use super::prepare::{ConnState, Prepared};
use super::respond::{local_error, log_request, respond, Outcome};
use crate::http::backend::PortBalancer;
use crate::http::health::EndpointState;
use crate::http::pool::Lease;
use crate::http::retry;
use crate::http::shared::Shared;
use crate::http::worker::worker;

/// The in-flight count of the endpoint an attempt went to, ended when the attempt is.
struct InFlight(Arc<EndpointState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// One request: attempts on endpoints until a response can be passed on, then the response.
/// Returns whether the client connection stays open, and when the request ended.
pub(super) async fn exchange(
    shared: &Shared,
    client: &mut TcpStream,
    conn: &mut ConnState,
    p: Prepared,
    shutdown: &watch::Receiver<bool>,
) -> (bool, Instant) {
    shared.budget.deposit();
    shared.fast.proxied.inc();
    let mut out = Outcome {
        code: 0,
        retries: 0,
        upstream: None,
        error: None,
    };
    let keep_open = attempts(shared, client, &p, shutdown, &mut out).await;
    let end = Instant::now();
    log_request(shared, conn, &p, &out, end, *shutdown.borrow());
    bufs::give(p.upstream_head);
    (keep_open, end)
}

/// The endpoints a request was sent to, by index, in order: the first few inline (most
/// requests make one attempt, and a `Vec` cost an allocation each).
#[derive(Default)]
struct Tried {
    first: [usize; 4],
    len: usize,
    /// All of them, once there are more than `first` holds.
    spilled: Option<Vec<usize>>,
}

impl Tried {
    fn as_slice(&self) -> &[usize] {
        match &self.spilled {
            Some(v) => v,
            None => &self.first[..self.len],
        }
    }

    fn push(&mut self, i: usize) {
        match &mut self.spilled {
            Some(v) => v.push(i),
            None if self.len < self.first.len() => {
                self.first[self.len] = i;
                self.len += 1;
            }
            None => {
                let mut v = self.first.to_vec();
                v.push(i);
                self.spilled = Some(v);
            }
        }
    }

    fn pop(&mut self) {
        match &mut self.spilled {
            Some(v) => {
                v.pop();
            }
            None => self.len = self.len.saturating_sub(1),
        }
    }
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
    let mut tried = Tried::default();
    // After one stale pooled connection, the next attempt opens a fresh one.
    let mut fresh_only = false;
    // After a pipelined connection failed ahead of this request, it is sent on its own.
    let mut unpipelined = false;
    let can_try_another = |tried: &[usize], retries: u32| {
        retry::can_try_another(b, tried.len(), retries, cfg.max_retries)
    };
    let whole = retry::request_deadline(&p.rule.rule, start);
    loop {
        let Some(i) = b.choose(p.hash, tried.as_slice()) else {
            return local_error(shared, client, p, out, 502, "every endpoint was tried").await;
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
                    return local_error(shared, client, p, out, 504, what).await;
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
                    // Boxed: only a new connection needs it, and in this future it would make
                    // every request's larger (issue 17.5).
                    None => match Box::pin(connect(shared, b, &state, &limits)).await {
                        Ok(l) => l,
                        Err(f) => {
                            shared
                                .metrics
                                .connect_errors
                                .with_label_values(&[&*b.label])
                                .inc();
                            record_failure(shared, b, &state);
                            if can_try_another(tried.as_slice(), out.retries) {
                                out.retries += 1;
                                count_retry(shared, b, "connect");
                                continue;
                            }
                            out.error = Some(f.what());
                            return local_error(shared, client, p, out, f.code(), f.what()).await;
                        }
                    },
                }
            }
        };

        // Send the request (unless it went in a batch) and read the response head.
        if ubuf.capacity() == 0 {
            ubuf = bufs::take(bufs::LARGE);
        } else if ubuf.capacity() < bufs::LARGE {
            ubuf.reserve(bufs::LARGE - ubuf.len());
        }
        let head = async {
            if !sent {
                // A batch only on a pooled connection: one known to keep alive.
                let lead = (pipelinable && reused).then_some(state.addr);
                followers = send_request(lease.conn(), p, lead, &limits, attempt_start).await?;
            }
            loop {
                if !ubuf.is_empty() {
                    if let Some(h) = parse_head(&ubuf, head_only, p.request_id())? {
                        if h.code == 101 {
                            return Err(Failure::Invalid("InvalidHTTPHeader"));
                        }
                        if h.code >= 200 {
                            return Ok(h);
                        }
                        // 103 Early Hints and the like: pass on, then the final answer.
                        let mut info = h.client_head;
                        info.extend_from_slice(b"\r\n");
                        let _ = write_client(shared, client, &info).await;
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
                    return local_error(shared, client, p, out, 504, f.what()).await;
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
                    can_try_another(tried.as_slice(), out.retries),
                    false,
                    &shared.budget,
                ) {
                    out.retries += 1;
                    count_retry(shared, b, "reset");
                    continue;
                }
                out.error = Some(f.what());
                return local_error(shared, client, p, out, f.code(), f.what()).await;
            }
        };
        // One clock reading for the latency sample, the pool's idle-since and the balancer.
        let answered = Instant::now();
        state.observe_latency_at(answered.saturating_duration_since(attempt_start), answered);
        if head.code >= 500 {
            record_failure(shared, b, &state);
            if retry::retry_on_status(
                head.code,
                idempotent,
                can_try_another(tried.as_slice(), out.retries),
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
        return respond(
            shared, client, p, shutdown, head, upstream, &limits, out, answered,
        )
        .await;
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
    let by = limits.deadline.map_or(timeout, |d| d.min(timeout));
    let conn = until(Some(by), "ConnectTimedout", connect).await?;
    let _ = conn.set_nodelay(true);
    Ok(shared.fast.pool.lease(conn, b.target(state.addr)))
}

#[cfg(test)]
mod tests {
    use super::Tried;

    #[test]
    fn tried_keeps_its_order_past_the_inline_ones() {
        let mut t = Tried::default();
        for i in 0..6 {
            t.push(i * 10);
            t.push(99);
            t.pop();
        }
        assert_eq!(t.as_slice(), [0, 10, 20, 30, 40, 50]);
        let mut t = Tried::default();
        t.push(7);
        t.pop();
        t.pop();
        assert!(t.as_slice().is_empty());
    }
}
