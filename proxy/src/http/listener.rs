//! Listeners: our own accept loops feeding pingora's HTTP server app.
//!
//! pingora's `Server` builds its own runtimes, binds its own sockets and cannot report a port-0
//! address; so we bind with tokio, log the real address, accept on each HTTP worker's event loop
//! (or the process's runtime with `--http-workers 0`), and serve each connection on the HTTP/1.1
//! fast path or hand it to `HttpServerApp::process_new` of an `HttpProxy` built with
//! `pingora::proxy::http_proxy` (the documented way to drive it from a custom accept loop).
//! Plain listeners speak HTTP/1.1 and h2c (prior knowledge); TLS listeners negotiate h2 or
//! http/1.1 by ALPN.
//!
//! Shutdown: accept loops stop, pingora is told (keep-alive connections close after their
//! current request, idle ones at once), and in-flight connections get the grace period to finish.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora::proxy::HttpProxy;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::fast::{self, KEEPALIVE_IDLE};
use super::io::Buffered;
use super::metrics::HttpMetrics;
use super::service::Ingress;
use super::shared::Shared;

pub type App = HttpProxy<Ingress>;

/// Counts open client connections; wakes the shutdown when the last one closes.
#[derive(Default)]
pub struct Connections {
    open: AtomicUsize,
    idle: Notify,
}

pub struct ConnGuard {
    conns: Arc<Connections>,
    gauge: prometheus::IntGauge,
}

impl Connections {
    pub fn enter(self: &Arc<Self>, gauge: prometheus::IntGauge) -> ConnGuard {
        self.open.fetch_add(1, Ordering::SeqCst);
        gauge.inc();
        ConnGuard {
            conns: self.clone(),
            gauge,
        }
    }
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
    /// Resolves when no connection is open.
    pub async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.gauge.dec();
        if self.conns.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.conns.idle.notify_waiters();
        }
    }
}

/// pingora options for plain listeners: h2c on.
pub fn plain_options() -> HttpServerOptions {
    let mut o = HttpServerOptions::default();
    o.h2c = true;
    o
}

/// Wraps an accepted TCP connection for pingora, with the socket digest its own listener sets
/// (the client address comes from it).
fn l4_stream(tcp: tokio::net::TcpStream, peer: SocketAddr) -> L4Stream {
    use std::os::fd::AsRawFd;
    let mut s = L4Stream::from(tcp);
    let digest = SocketDigest::from_raw_fd(s.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    s.set_socket_digest(digest);
    s
}

/// What serving a connection of one listener takes; shared by the accept loops of every
/// worker, so a connection can be served by another worker than the one that accepted it.
pub struct ListenerCtx {
    pub app: Arc<App>,
    pub shared: Arc<Shared>,
    pub tls: Option<Arc<Acceptor>>,
    pub shutdown: watch::Receiver<bool>,
    pub conns: Arc<Connections>,
    pub gauge: prometheus::IntGauge,
}

/// One accept loop's parts, moved to the event loop that runs it.
pub struct AcceptLoop {
    /// "http" or "https", for errors.
    pub kind: &'static str,
    pub listener: std::net::TcpListener,
    pub ctx: Arc<ListenerCtx>,
    /// With several workers: this worker (0-based) and the spread of connections over them.
    pub spread: Option<(usize, Arc<Spread>)>,
}

/// Keeps the workers' open client connections even (`--http-workers` of 2 or more).
///
/// The kernel spreads new connections over the workers' SO_REUSEPORT sockets by a hash of the
/// addresses: the bench's 64 connections were split 25/39 and 28/36 in two of four runs, and a
/// few long-lived ones (gRPC, WebSockets) may all land on one worker, leaving the others' cores
/// unused for them. So a worker that accepts a connection while it serves more than `SLACK`
/// connections over the least busy worker hands it to that one, as Envoy's exact connection
/// balancer does. Connections do not move once served.
pub struct Spread {
    /// Open connections per worker, the `switchboard_http_worker_connections` gauges.
    open: Vec<prometheus::IntGauge>,
    handoffs: Vec<prometheus::IntCounter>,
    inbox: Vec<mpsc::UnboundedSender<Handoff>>,
}

/// A connection given to another worker.
pub struct Handoff {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    ctx: Arc<ListenerCtx>,
    guard: ConnGuard,
    seat: Seat,
}

/// One open connection, counted on its worker while it lives.
pub struct Seat {
    spread: Arc<Spread>,
    worker: usize,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.spread.open[self.worker].dec();
    }
}

impl Spread {
    /// How many more connections a worker may hold than the least busy one before it hands
    /// new ones over: a hand-over costs a wake-up of the other worker, so small differences
    /// stay.
    pub const SLACK: i64 = 1;

    /// A spread over `workers` workers (gauges labelled 1..=workers), with each worker's inbox
    /// to run on its event loop.
    pub fn new(workers: usize, metrics: &HttpMetrics) -> (Arc<Spread>, Vec<Inbox>) {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let label = |w: usize| (w + 1).to_string();
        let spread = Arc::new(Spread {
            open: (0..workers)
                .map(|w| metrics.worker_connections.with_label_values(&[&label(w)]))
                .collect(),
            handoffs: (0..workers)
                .map(|w| metrics.worker_handoffs.with_label_values(&[&label(w)]))
                .collect(),
            inbox: tx,
        });
        (spread, rx.into_iter().map(Inbox).collect())
    }

    /// The worker that serves a connection worker `me` (0-based) accepted, its seat taken.
    pub fn place(self: &Arc<Self>, me: usize) -> Seat {
        let mine = self.open[me].get();
        let (least, fewest) = self
            .open
            .iter()
            .map(|o| o.get())
            .enumerate()
            .min_by_key(|&(_, n)| n)
            .unwrap_or((me, mine));
        let worker = if mine > fewest + Self::SLACK {
            self.handoffs[least].inc();
            least
        } else {
            me
        };
        self.open[worker].inc();
        Seat {
            spread: self.clone(),
            worker,
        }
    }
}

/// A worker's side of the hand-overs: the connections other workers gave it.
pub struct Inbox(mpsc::UnboundedReceiver<Handoff>);

impl Inbox {
    /// Serves what arrives until `shutdown` turns true; runs on the worker's event loop.
    pub fn spawn(self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let Inbox(mut rx) = self;
        tokio::spawn(async move {
            let mut stop = shutdown;
            loop {
                let h = tokio::select! {
                    h = rx.recv() => match h { Some(h) => h, None => break },
                    _ = stop.wait_for(|s| *s) => break,
                };
                match tokio::net::TcpStream::from_std(h.tcp) {
                    Ok(tcp) => serve(h.ctx, tcp, h.peer, h.guard, Some(h.seat)),
                    Err(e) => {
                        tracing::warn!(peer = %h.peer, error = %e, "taking over a connection")
                    }
                }
            }
        })
    }
}

impl AcceptLoop {
    /// Registers the socket with the current runtime and runs the loop on it until
    /// `shutdown` turns true. Each connection is served by `serve`, on this event loop or,
    /// with a `spread`, on the least busy worker's.
    pub fn spawn(self) -> Result<JoinHandle<()>, (std::io::Error, SocketAddr)> {
        let AcceptLoop {
            kind: _,
            listener,
            ctx,
            spread,
        } = self;
        let local = listener.local_addr().ok();
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| (e, local.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))))?;
        Ok(tokio::spawn(async move {
            let mut stop = ctx.shutdown.clone();
            loop {
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = stop.changed() => {
                        if *stop.borrow() { break; }
                        continue;
                    }
                };
                let (tcp, peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(listener = ?local, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let guard = ctx.conns.enter(ctx.gauge.clone());
                let Some((me, spread)) = &spread else {
                    serve(ctx.clone(), tcp, peer, guard, None);
                    continue;
                };
                let seat = spread.place(*me);
                if seat.worker == *me {
                    serve(ctx.clone(), tcp, peer, guard, Some(seat));
                    continue;
                }
                let to = seat.worker;
                let handoff = match tcp.into_std() {
                    Ok(tcp) => Handoff {
                        tcp,
                        peer,
                        ctx: ctx.clone(),
                        guard,
                        seat,
                    },
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "handing a connection over");
                        continue;
                    }
                };
                // If that worker has stopped (shutdown), the connection is closed, as a stopped
                // accept loop's would be.
                let _ = spread.inbox[to].send(handoff);
            }
            tracing::debug!(listener = ?local, "accept loop stopped");
        }))
    }
}

/// Serves one accepted connection on the current event loop. Plain connections start on the
/// HTTP/1.1 fast path (`fast/`) and move to pingora for the first request it does not take;
/// TLS connections are pingora's.
fn serve(
    ctx: Arc<ListenerCtx>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
    seat: Option<Seat>,
) {
    // Memory per idle connection (`bench/run idle`): the task holds only the fast path's small
    // state while a plain connection waits; the TLS handshake, pingora's keep-alive loop and
    // its request futures are boxed.
    tokio::spawn(async move {
        let _guard = (guard, seat);
        let stream: Stream = match &ctx.tls {
            Some(acceptor) => {
                let stream = l4_stream(tcp, peer);
                match tokio::time::timeout(
                    Duration::from_secs(10),
                    Box::pin(acceptor.tls_handshake(Buffered::new(stream))),
                )
                .await
                {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                }
            }
            None => match fast::serve(&ctx.shared, tcp, peer, &ctx.shutdown).await {
                fast::Served::Closed => return,
                fast::Served::Fallback(tcp, read) => {
                    let mut stream = l4_stream(tcp, peer);
                    stream.rewind(&read);
                    Box::new(Buffered::new(stream))
                }
            },
        };
        Box::pin(pingora_loop(ctx.app.clone(), stream, ctx.shutdown.clone())).await;
    });
}

/// pingora's keep-alive loop for one connection: plain connections wait for their next request
/// outside pingora (`Buffered::wait_for_request`), and each request runs in a boxed future.
async fn pingora_loop(app: Arc<App>, stream: Stream, shutdown: watch::Receiver<bool>) {
    let mut stop = shutdown.clone();
    let mut next = Some(stream);
    while let Some(mut s) = next {
        if (*s).as_any().is::<Buffered>() {
            let mut b = s
                .into_any()
                .downcast::<Buffered>()
                .expect("type checked just above");
            let ready = tokio::select! {
                r = tokio::time::timeout(KEEPALIVE_IDLE, b.wait_for_request()) => {
                    matches!(r, Ok(Ok(true)))
                }
                _ = stop.wait_for(|s| *s) => false,
            };
            if !ready {
                break;
            }
            s = b;
        }
        next = Box::pin(app.process_new(s, &shutdown)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(workers: usize) -> Arc<Spread> {
        let metrics = HttpMetrics::new(&prometheus::Registry::new()).unwrap();
        Spread::new(workers, &metrics).0
    }

    fn open(s: &Spread) -> Vec<i64> {
        s.open.iter().map(|g| g.get()).collect()
    }

    #[test]
    fn connections_accepted_by_one_worker_spread_over_all() {
        let s = spread(3);
        // Every connection lands on worker 0, as SO_REUSEPORT's hash may have it.
        let seats: Vec<Seat> = (0..30).map(|_| s.place(0)).collect();
        let counts = open(&s);
        assert_eq!(counts.iter().sum::<i64>(), 30);
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= Spread::SLACK + 1, "{counts:?}");
        let handed: u64 = s.handoffs.iter().map(|c| c.get()).sum();
        assert_eq!(handed as i64, 30 - counts[0], "{counts:?}");
        // Seats free their count when the connection ends.
        drop(seats);
        assert_eq!(open(&s), vec![0, 0, 0]);
    }

    #[test]
    fn small_differences_stay_where_they_were_accepted() {
        let s = spread(2);
        let a = s.place(0);
        let b = s.place(0);
        assert_eq!(
            (a.worker, b.worker),
            (0, 0),
            "within the slack: no hand-over"
        );
        let c = s.place(0);
        assert_eq!(c.worker, 1, "over the slack: to the least busy worker");
        drop((a, b));
        // Worker 1 now holds one more than worker 0: still within the slack.
        let d = s.place(1);
        assert_eq!(d.worker, 1);
        assert_eq!(open(&s), vec![0, 2]);
    }
}
