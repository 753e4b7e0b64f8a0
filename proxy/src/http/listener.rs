//! Listeners: our own accept loops feeding pingora's HTTP server app.
//!
//! pingora's `Server` builds its own runtimes, binds its own sockets and cannot report a port-0
//! address; so we bind with tokio, log the real address, accept in the process's runtime, and
//! hand each connection to `HttpServerApp::process_new` of an `HttpProxy` built with
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
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::fast::{self, KEEPALIVE_IDLE};
use super::io::Buffered;
use super::service::{Ingress, Shared};

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

/// One accept loop's parts, moved to the event loop that runs it.
pub struct AcceptLoop {
    /// "http" or "https", for errors.
    pub kind: &'static str,
    pub listener: std::net::TcpListener,
    pub app: Arc<App>,
    pub shared: Arc<Shared>,
    pub tls: Option<Arc<Acceptor>>,
    pub shutdown: watch::Receiver<bool>,
    pub conns: Arc<Connections>,
    pub gauge: prometheus::IntGauge,
}

impl AcceptLoop {
    /// Registers the socket with the current runtime and runs the loop on it until
    /// `shutdown` turns true. Plain connections start on the HTTP/1.1 fast path (`fast.rs`)
    /// and move to pingora for the first request it does not take; TLS connections are
    /// pingora's.
    pub fn spawn(self) -> Result<JoinHandle<()>, (std::io::Error, SocketAddr)> {
        let AcceptLoop {
            kind: _,
            listener,
            app,
            shared,
            tls,
            shutdown,
            conns,
            gauge,
        } = self;
        let local = listener.local_addr().ok();
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| (e, local.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))))?;
        Ok(tokio::spawn(async move {
            let mut stop = shutdown.clone();
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
                let guard = conns.enter(gauge.clone());
                let app = app.clone();
                let shared = shared.clone();
                let tls = tls.clone();
                let shutdown = shutdown.clone();
                // Memory per idle connection (`bench/run idle`): the task holds only the fast
                // path's small state while a plain connection waits; the TLS handshake, pingora's
                // keep-alive loop and its request futures are boxed.
                tokio::spawn(async move {
                    let _guard = guard;
                    let stream: Stream = match tls {
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
                        None => match fast::serve(&shared, tcp, peer, &shutdown).await {
                            fast::Served::Closed => return,
                            fast::Served::Fallback(tcp, read) => {
                                let mut stream = l4_stream(tcp, peer);
                                stream.rewind(&read);
                                Box::new(Buffered::new(stream))
                            }
                        },
                    };
                    Box::pin(pingora_loop(app, stream, shutdown)).await;
                });
            }
            tracing::debug!(listener = ?local, "accept loop stopped");
        }))
    }
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
