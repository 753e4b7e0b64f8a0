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
use pingora::protocols::l4::listener::Listener;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::io::Buffered;
use super::service::Ingress;

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

/// How long a client connection may sit idle waiting for its next request (as pingora's
/// keep-alive timeout).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// Runs one accept loop until `shutdown` turns true.
pub fn spawn_accept_loop(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    tls: Option<Arc<Acceptor>>,
    shutdown: watch::Receiver<bool>,
    conns: Arc<Connections>,
    gauge: prometheus::IntGauge,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let local: Option<SocketAddr> = listener.local_addr().ok();
        let listener = Listener::from(listener);
        let mut stop = shutdown.clone();
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = stop.changed() => {
                    if *stop.borrow() { break; }
                    continue;
                }
            };
            let mut stream = match accepted {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = ?local, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay();
            let guard = conns.enter(gauge.clone());
            let app = app.clone();
            let tls = tls.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let _guard = guard;
                let stream: Stream = match tls {
                    Some(acceptor) => {
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
                    None => Box::new(Buffered::new(stream)),
                };
                // Memory per idle connection (`bench/run idle`): plain connections wait for
                // their next request here, in this small future, and pingora's request future
                // (and the TLS handshake's) are boxed so they do not size this task while idle:
                // 13.5 -> 6.3 KiB per connection before its first request.
                let mut next = Some(stream);
                let mut stop = shutdown.clone();
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
            });
        }
        tracing::debug!(listener = ?local, "accept loop stopped");
    })
}
