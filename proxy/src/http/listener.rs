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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Ssl, Stream, ALPN};
use pingora::proxy::HttpProxy;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::fast;
use super::guard::{Guarded, Start};
use super::io::Buffered;
use super::limits::Limit;
use super::metrics::HttpMetrics;
use super::service::Ingress;
use super::shared::Shared;
use super::views::Scope;

pub type App = HttpProxy<Ingress>;

/// Counts open client connections, in all and per client address, within their limits; wakes
/// the shutdown when the last one closes.
pub struct Connections {
    open: AtomicUsize,
    idle: Notify,
    max: usize,
    per_client: usize,
    by_client: Mutex<HashMap<IpAddr, usize>>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections::new(usize::MAX, 0)
    }
}

pub struct ConnGuard {
    conns: Arc<Connections>,
    gauge: prometheus::IntGauge,
    client: Option<IpAddr>,
}

impl Connections {
    /// At most `max` connections, and `per_client` from one address (0: no such limit).
    pub fn new(max: usize, per_client: usize) -> Self {
        Connections {
            open: AtomicUsize::new(0),
            idle: Notify::new(),
            max,
            per_client,
            by_client: Mutex::new(HashMap::new()),
        }
    }

    /// A new connection from `client`, or the limit it is over.
    pub fn enter(
        self: &Arc<Self>,
        client: IpAddr,
        gauge: prometheus::IntGauge,
    ) -> Result<ConnGuard, Limit> {
        if self.open.fetch_add(1, Ordering::SeqCst) >= self.max {
            self.leave();
            return Err(Limit::Connections);
        }
        let mut tracked = None;
        if self.per_client > 0 {
            let mut by = self.by_client.lock().unwrap();
            let n = by.entry(client).or_insert(0);
            if *n >= self.per_client {
                drop(by);
                self.leave();
                return Err(Limit::PerClient);
            }
            *n += 1;
            tracked = Some(client);
        }
        gauge.inc();
        Ok(ConnGuard {
            conns: self.clone(),
            gauge,
            client: tracked,
        })
    }

    fn leave(&self) {
        if self.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Open connections from `client` (tests).
    pub fn from_client(&self, client: IpAddr) -> usize {
        self.by_client
            .lock()
            .unwrap()
            .get(&client)
            .copied()
            .unwrap_or(0)
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
        if let Some(client) = self.client {
            let mut by = self.conns.by_client.lock().unwrap();
            if let Some(n) = by.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    by.remove(&client);
                }
            }
        }
        self.conns.leave();
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
    /// Which rules its connections are served (`views.rs`).
    pub scope: Scope,
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
                let guard = match ctx.conns.enter(peer.ip(), ctx.gauge.clone()) {
                    Ok(g) => g,
                    Err(limit) => {
                        // Over a limit: closed at once, before anything is read or allocated.
                        ctx.shared.limits.hit(limit, Some(peer.ip()));
                        drop(tcp);
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
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
        let limits = &ctx.shared.config.client;
        let (stream, h2, head_by): (Stream, bool, tokio::time::Instant) = match &ctx.tls {
            Some(acceptor) => {
                let stream = l4_stream(tcp, peer);
                // The handshake is bounded like a request head (nginx: client_header_timeout).
                match tokio::time::timeout(
                    limits.header_timeout,
                    Box::pin(acceptor.tls_handshake(Buffered::new(stream))),
                )
                .await
                {
                    Ok(Ok(s)) => {
                        let h2 = matches!(s.selected_alpn_proto(), Some(ALPN::H2));
                        let by = tokio::time::Instant::now() + limits.header_timeout;
                        (Box::new(s), h2, by)
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                }
            }
            None => match fast::serve(&ctx.shared, tcp, peer, ctx.scope, &ctx.shutdown).await {
                fast::Served::Closed => return,
                fast::Served::Fallback(tcp, read, head_by) => {
                    // The fast path read the head; the h2c preface is the one thing it fails
                    // on that is not HTTP/1.
                    let h2 = read.starts_with(b"PRI * HTTP/2");
                    let mut stream = l4_stream(tcp, peer);
                    stream.rewind(&read);
                    (Box::new(Buffered::new(stream)), h2, head_by)
                }
            },
        };
        let start = if h2 { Start::Off } else { Start::Head(head_by) };
        let stream: Stream = Box::new(Guarded::new(stream, ctx.shared.clone(), peer.ip(), start));
        if h2 {
            Box::pin(ctx.app.process_new(stream, &ctx.shutdown)).await;
        } else {
            let idle = limits.idle_timeout;
            Box::pin(h1_loop(ctx.app.clone(), stream, ctx.shutdown.clone(), idle)).await;
        }
    });
}

/// pingora's HTTP/1 keep-alive loop for one connection (what `ServerApp::process_new` runs), with
/// the connection's guard armed before each request, so that pingora only ever reads whole
/// heads within the limits (`guard.rs`). Pipelining is on: a request that came behind another
/// is served after it (RFC 9112 9.3.2) instead of the connection being closed with it unread.
async fn h1_loop(
    app: Arc<App>,
    mut stream: Stream,
    shutdown: watch::Receiver<bool>,
    idle: Duration,
) {
    let mut settings: Option<HttpPersistentSettings> = None;
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            if let Some(g) = Guarded::of(&stream) {
                g.arm();
            }
        }
        let mut session = ServerSession::new_http1(stream);
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(idle.as_secs().max(1)));
        }
        session.set_pipelining_enabled(true);
        if let Some(s) = settings.take() {
            s.apply_to_session(&mut session);
        }
        match Box::pin(app.process_new_http(session, &shutdown)).await {
            Some(reused) => {
                let (s, st) = reused.consume();
                stream = s;
                settings = st;
            }
            None => return,
        }
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
