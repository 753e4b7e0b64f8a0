//! The L7 ingress proxy: Ingress and Gateway API HTTPRoute rules from the current
//! `tables::RouteTable`, served on pingora.
//!
//! ```text
//!  --http / --https listeners (listener.rs: own accept loops, TLS by SNI from tls.rs)
//!        │  pingora HttpProxy (HTTP/1.1, h2c, h2 over TLS, upgrades)
//!        ▼
//!  service.rs  Ingress: ProxyHttp ── SnapshotCell.load() once per request
//!        │ route.rs   RouteIndex (per HttpTable): host → precedence-ordered matches → rule
//!        │ filters.rs redirects, header modifiers, rewrites
//!        │ backend.rs service port → usable endpoints → PortBalancer (per endpoint list)
//!        │ balance.rs least-request P2C / round robin / Maglev / Ketama
//!        ▼ health.rs  per-endpoint EWMA, in-flight, outlier ejection (survives table swaps)
//!  endpoint (pingora keep-alive pool)
//! ```
//!
//! Plain connections start on the HTTP/1.1 fast path (`fast/`, own pool in `pool.rs`) and move
//! to pingora and `service.rs` for the first request it does not take. The two paths never
//! import each other: what both use is in `shared.rs` (the state), `request.rs` (host, hash key,
//! request id, `Forwarded`), `retry.rs` (budget, failure accounting, deadlines), `worker.rs`
//! (which event loop a thread runs) and `config.rs` (`HttpConfig`).
//!
//! Start with [`HttpServer::start`] from inside a tokio runtime; it binds every listener before
//! returning (and logs `listening on http ADDR` / `listening on https ADDR` with the bound
//! address), then serves until [`HttpServer::shutdown`].
//!
//! Gateway listener ports (`gateway_listeners.rs`) are opened and closed after start-up, as our
//! Gateways come and go; each listener's connections see only their own rules (`views.rs`).

pub mod access_log;
pub mod backend;
pub mod balance;
pub mod config;
pub mod fast;
pub mod filters;
pub mod gateway_listeners;
pub mod guard;
pub mod health;
pub mod io;
pub mod limits;
pub mod listener;
pub mod log_line;
pub mod metrics;
pub mod pool;
pub mod request;
pub mod retry;
pub mod route;
pub mod service;
pub mod shared;
pub mod tls;
pub mod upstreams;
pub mod views;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pingora::listeners::tls::Acceptor;
use pingora::server::configuration::ServerConf;
use pingora::tls::ServerConfig;
use tables::SnapshotCell;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use balance::Algorithm;
pub use config::{ClientLimits, HttpConfig};
pub use health::OutlierConfig;

use listener::{AcceptLoop, App, Connections, ListenerCtx, Spread};
use metrics::HttpMetrics;
use service::Ingress;
use shared::Shared;
use views::Scope;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding {kind} listener {addr}: {source}")]
    Bind {
        kind: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS certificates: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("starting HTTP worker {worker}: {source}")]
    Worker {
        worker: usize,
        source: std::io::Error,
    },
}

/// The running proxy.
pub struct HttpServer {
    /// Bound addresses, `("http" | "https", addr)`.
    pub addrs: Vec<(&'static str, SocketAddr)>,
    shutdown: watch::Sender<bool>,
    apps: Vec<Arc<App>>,
    conns: Arc<Connections>,
    tasks: Vec<JoinHandle<()>>,
    grace: Duration,
    /// With `workers`: their threads, and the signal that ends their event loops.
    workers: Vec<std::thread::JoinHandle<()>>,
    finish: watch::Sender<bool>,
}

/// The pingora app serving one listener's connections (`scope`).
fn build_app(
    shared: &Arc<Shared>,
    scheme: &'static str,
    conf: &Arc<ServerConf>,
    scope: Scope,
) -> Arc<App> {
    let mut app = pingora::proxy::http_proxy(
        conf,
        Ingress {
            shared: shared.clone(),
            scheme,
            scope,
        },
    );
    let limits = &shared.config.client;
    let mut options = if scheme == "http" {
        listener::plain_options()
    } else {
        pingora::apps::HttpServerOptions::default()
    };
    // An h2 connection without streams closes like an idle HTTP/1 one.
    options.h2_idle_timeout = Some(limits.idle_timeout);
    app.server_options = Some(options);
    // pingora's defaults, with the header list bounded as an HTTP/1 head.
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32);
    app.h2_options = Some(h2);
    Arc::new(app)
}

impl HttpServer {
    /// Binds every listener, logs its address, and starts serving. Must run inside a tokio
    /// runtime.
    pub async fn start(
        config: HttpConfig,
        cell: SnapshotCell,
        registry: &prometheus::Registry,
    ) -> Result<HttpServer, StartError> {
        let metrics = HttpMetrics::new(registry)?;
        // Built whether or not there is an --https listener: HTTPS Gateway listeners need it.
        let tls_store = {
            pingora::tls::install_default_crypto_provider();
            let dir_store = match &config.tls_cert_dir {
                Some(dir) => {
                    let store = tls::CertStore::load_dir(dir)?;
                    tracing::info!(dir = %dir.display(), names = ?store.names, "TLS certificates loaded");
                    store
                }
                None => tls::CertStore::default(),
            };
            let resolver = Arc::new(tls::SniResolver::new(Some(cell.clone()), dir_store));
            resolver.refresh();
            Some((config.tls_cert_dir.clone(), resolver))
        };

        let conf = Arc::new(ServerConf {
            max_retries: config.max_retries as usize + 1,
            upstream_keepalive_pool_size: 1024,
            ..Default::default()
        });
        let grace = config.grace_period;
        let shared = Arc::new(Shared::new(cell, config.clone(), metrics.clone()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let conns = Arc::new(Connections::new(
            config.client.max_connections,
            config.client.max_connections_per_client,
        ));
        let mut server = HttpServer {
            addrs: vec![],
            shutdown,
            apps: vec![],
            conns,
            tasks: vec![],
            grace,
            workers: vec![],
            finish: watch::channel(false).0,
        };

        // One socket per listener, or with `workers` one SO_REUSEPORT socket per worker and
        // listener (bound to the first one's port when asked for port 0).
        let sockets = config.workers.max(1);
        let mut listeners: Vec<(&'static str, Vec<std::net::TcpListener>)> = Vec::new();
        for (kind, addrs) in [("http", &config.http), ("https", &config.https)] {
            for &addr in addrs {
                let bind_err = |source| StartError::Bind { kind, addr, source };
                let mut bound = Vec::new();
                let mut at = addr;
                for _ in 0..sockets {
                    let l = bind_listener(at, config.workers > 0).map_err(bind_err)?;
                    at = l.local_addr().map_err(bind_err)?;
                    bound.push(l);
                }
                tracing::info!("listening on {kind} {at}");
                server.addrs.push((kind, at));
                listeners.push((kind, bound));
            }
        }

        let _ = shared
            .ingress_ports
            .set(server.addrs.iter().map(|(_, a)| a.port()).collect());
        let acceptor = tls_store.as_ref().map(|(_, resolver)| {
            let mut sc = ServerConfig::builder()
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
            sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Arc::new(Acceptor::from_server_config(Arc::new(sc)))
        });
        // What one event loop serves: a socket of every listener; with several workers, also
        // the connections the others hand over to keep their counts even.
        let (spread, inboxes) = if config.workers > 1 {
            let (spread, inboxes) = Spread::new(config.workers, &metrics);
            (Some(spread), inboxes)
        } else {
            (None, vec![])
        };
        let mut loops: Vec<Vec<AcceptLoop>> = (0..sockets).map(|_| Vec::new()).collect();
        for (kind, bound) in listeners {
            let port = bound
                .first()
                .and_then(|l| l.local_addr().ok())
                .map_or(0, |a| a.port());
            let scope = Scope::ingress(port);
            let app = build_app(&shared, kind, &conf, scope);
            server.apps.push(app.clone());
            let tls = if kind == "https" {
                acceptor.clone()
            } else {
                None
            };
            let ctx = Arc::new(ListenerCtx {
                app,
                scope,
                shared: shared.clone(),
                tls,
                shutdown: shutdown_rx.clone(),
                conns: server.conns.clone(),
                gauge: metrics.active_connections.with_label_values(&[kind]),
            });
            for (i, l) in bound.into_iter().enumerate() {
                loops[i].push(AcceptLoop {
                    kind,
                    listener: l,
                    ctx: ctx.clone(),
                    spread: spread.clone().map(|s| (i, s)),
                });
            }
        }
        let mut inboxes = inboxes.into_iter();
        // The event loops Gateway listener sockets are served on, as the --http ones.
        let mut handles = Vec::new();
        if config.workers == 0 {
            handles.push(tokio::runtime::Handle::current());
            for a in loops.into_iter().flatten() {
                let kind = a.kind;
                let task =
                    a.spawn()
                        .map_err(|(source, addr)| StartError::Bind { kind, addr, source })?;
                server.tasks.push(task);
            }
        } else {
            let finish = server.finish.subscribe();
            for (i, accept) in loops.into_iter().enumerate() {
                let worker = i + 1;
                let inbox = inboxes.next();
                let stop = shutdown_rx.clone();
                let mut finish = finish.clone();
                let worker_err = |source| StartError::Worker { worker, source };
                // The runtime is built on its thread, which says whether that worked, so that a
                // failure stops start-up instead of leaving a worker out.
                let (built, started) = tokio::sync::oneshot::channel();
                let thread = std::thread::Builder::new()
                    .name(format!("http-worker-{worker}"))
                    .spawn(move || {
                        worker::set_worker(worker);
                        let rt = match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .on_thread_unpark(worker::worker_unparked)
                            .build()
                        {
                            Ok(rt) => rt,
                            Err(e) => {
                                let _ = built.send(Err(e));
                                return;
                            }
                        };
                        let _ = built.send(Ok(rt.handle().clone()));
                        rt.block_on(async move {
                            if let Some(inbox) = inbox {
                                inbox.spawn(stop);
                            }
                            for a in accept {
                                if let Err((e, addr)) = a.spawn() {
                                    tracing::error!(worker, %addr, error = %e, "HTTP worker listener");
                                }
                            }
                            // Until shutdown has drained what it could (`HttpServer::shutdown`);
                            // dropping the runtime then ends what is left.
                            let _ = finish.wait_for(|f| *f).await;
                        });
                    })
                    .map_err(worker_err)?;
                server.workers.push(thread);
                match started.await {
                    Ok(Ok(handle)) => handles.push(handle),
                    Ok(Err(e)) => return Err(worker_err(e)),
                    Err(_) => {
                        return Err(worker_err(std::io::Error::other("worker thread ended")));
                    }
                }
            }
        }
        if let Some(acceptor) = acceptor.filter(|_| !config.gateway_shared_ports) {
            let ips = |addrs: &[SocketAddr]| {
                let mut ips: Vec<_> = addrs.iter().map(|a| a.ip()).collect();
                ips.sort();
                ips.dedup();
                ips
            };
            let (http_ips, https_ips) = (ips(&config.http), ips(&config.https));
            let opener = gateway_listeners::Opener {
                shared: shared.clone(),
                conf: conf.clone(),
                acceptor,
                loops: handles,
                spread: spread.clone(),
                conns: server.conns.clone(),
                http_ips: if http_ips.is_empty() {
                    https_ips.clone()
                } else {
                    http_ips.clone()
                },
                https_ips: if https_ips.is_empty() {
                    http_ips
                } else {
                    https_ips
                },
                fixed: server
                    .addrs
                    .iter()
                    .map(|(kind, a)| (a.port(), *kind == "https"))
                    .collect(),
            };
            server.tasks.push(tokio::spawn(gateway_listeners::run(
                opener,
                shutdown_rx.clone(),
            )));
        }
        if let Some((dir, resolver)) = tls_store {
            server.tasks.push(tokio::spawn(reload_certificates(
                dir,
                resolver,
                shutdown_rx.clone(),
            )));
        }
        // After a table change, close idle pooled connections to endpoints that left it;
        // now and then refresh the pool gauge and forget endpoint state nobody uses.
        {
            let shared = shared.clone();
            let mut stop = shutdown_rx.clone();
            server.tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut generation = shared.cell.load().generation;
                let mut ticks: u64 = 0;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.changed() => if *stop.borrow() { break } else { continue },
                    }
                    ticks += 1;
                    let snap = shared.cell.load();
                    if snap.generation != generation {
                        generation = snap.generation;
                        shared.close_removed(&snap.routes);
                    }
                    if ticks.is_multiple_of(40) {
                        shared.fast.pool.expire(shared.config.upstream_idle_timeout);
                        shared.update_pool_gauge();
                    }
                    if ticks.is_multiple_of(600) {
                        shared.balancers.prune(&snap.routes);
                    }
                }
            }));
        }
        Ok(server)
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, then returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for app in &self.apps {
            // Wakes keep-alive connections waiting for their next request so they close.
            pingora::apps::ServerApp::cleanup(app.as_ref()).await;
        }
        let open = self.conns.open();
        if open > 0 {
            tracing::info!(connections = open, grace = ?self.grace, "draining HTTP connections");
        }
        if tokio::time::timeout(self.grace, self.conns.drained())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = self.conns.open(),
                "grace period over; closing HTTP connections still open"
            );
        }
        for t in self.tasks {
            t.abort();
        }
        let _ = self.finish.send(true);
        for w in self.workers {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
    }
}

/// A listening socket: SO_REUSEADDR as tokio's `TcpListener::bind`, and SO_REUSEPORT when
/// several workers each take one.
pub(crate) fn bind_listener(
    addr: SocketAddr,
    reuse_port: bool,
) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}

/// Every 2 s: rebuilds the Secrets' certificates if the snapshot changed them, and reloads the
/// fallback directory if its files changed.
async fn reload_certificates(
    dir: Option<PathBuf>,
    resolver: Arc<tls::SniResolver>,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen = dir.as_deref().map(tls::dir_fingerprint);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => if *stop.borrow() { return } else { continue },
        }
        resolver.refresh();
        let Some(dir) = &dir else { continue };
        let now = Some(tls::dir_fingerprint(dir));
        if now == seen {
            continue;
        }
        seen = now;
        match tls::CertStore::load_dir(dir) {
            Ok(store) => {
                tracing::info!(dir = %dir.display(), names = ?store.names, "TLS certificates reloaded");
                resolver.dir.store(Arc::new(store));
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificates not reloaded; keeping the old ones")
            }
        }
    }
}
