//! Gateway listener sockets: a socket for every port that the HTTP and HTTPS listeners of our
//! Gateways name, opened when the first such listener appears in the table and closed when
//! the last one goes (`docs/gateway-api.md`, "Listeners and ports").
//!
//! Runs as one task beside the data plane: it polls the published `HttpTable` (a pointer
//! comparison every 100 ms), so a table swap never waits for a bind, and a bind never holds up
//! a request. For each wanted port:
//! - the port of an `--http` / `--https` listener is shared: that socket serves the Gateway's
//!   routes too (`views.rs`), if the protocols agree; if not, the port is unavailable;
//! - any other port is bound on the IP addresses of the `--http` listeners (HTTP) or of the
//!   `--https` listeners (HTTPS; either list standing in for the other when empty), one socket
//!   per HTTP worker, as `--http` is; if one bind fails, none is kept and the port is reported
//!   unavailable with the error, and tried again every 5 s and at each table change;
//! - when Gateways ask for HTTP and HTTPS on one port, HTTP has it.
//!
//! The outcome goes to the `PortReport` after each pass (the status writer's `PortUnavailable`).
//! Closing a port stops its accept loops (the socket closes at once) and drains its
//! connections as shutdown does: in-flight requests finish, keep-alive connections close after
//! their current request, idle ones at once.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::listeners::tls::Acceptor;
use pingora::server::configuration::ServerConf;
use tables::ports::PortState;
use tables::HttpTable;
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::listener::{AcceptLoop, App, Connections, ListenerCtx, Spread};
use super::shared::Shared;
use super::views::Scope;

/// How often the table is looked at.
const POLL: Duration = Duration::from_millis(100);
/// How often a port that could not be bound is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// What opening a Gateway listener socket takes: the parts `HttpServer::start` built.
pub struct Opener {
    pub shared: Arc<Shared>,
    pub conf: Arc<ServerConf>,
    pub acceptor: Arc<Acceptor>,
    /// The event loops that run accept loops: one per HTTP worker, or the process runtime.
    pub loops: Vec<Handle>,
    pub spread: Option<Arc<Spread>>,
    pub conns: Arc<Connections>,
    /// Addresses HTTP and HTTPS listener ports are bound on.
    pub http_ips: Vec<IpAddr>,
    pub https_ips: Vec<IpAddr>,
    /// The bound `--http` (false) and `--https` (true) ports.
    pub fixed: BTreeMap<u16, bool>,
}

/// One open port.
struct Open {
    tls: bool,
    stop: watch::Sender<bool>,
    app: Arc<App>,
}

impl Opener {
    /// Binds every socket of `port` and starts its accept loops; on error nothing stays bound.
    fn open(&self, port: u16, tls: bool) -> std::io::Result<Open> {
        let ips = if tls { &self.https_ips } else { &self.http_ips };
        let mut bound = Vec::new();
        for &ip in ips {
            for i in 0..self.loops.len() {
                let addr = SocketAddr::new(ip, port);
                let l = super::bind_listener(addr, self.loops.len() > 1)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("{addr}: {e}")))?;
                bound.push((i, l));
            }
        }
        let (kind, scheme) = if tls {
            ("https", "https")
        } else {
            ("http", "http")
        };
        let scope = Scope::gateway(port);
        let app = super::build_app(&self.shared, scheme, &self.conf, scope);
        let (stop, stop_rx) = watch::channel(false);
        let ctx = Arc::new(ListenerCtx {
            app: app.clone(),
            scope,
            shared: self.shared.clone(),
            tls: tls.then(|| self.acceptor.clone()),
            shutdown: stop_rx,
            conns: self.conns.clone(),
            gauge: self
                .shared
                .metrics
                .active_connections
                .with_label_values(&[kind]),
        });
        for (i, listener) in bound {
            let a = AcceptLoop {
                kind,
                listener,
                ctx: ctx.clone(),
                spread: self.spread.clone().map(|s| (i, s)),
            };
            self.loops[i].spawn(async move {
                if let Err((e, addr)) = a.spawn() {
                    tracing::error!(%addr, error = %e, "Gateway listener socket");
                }
            });
        }
        for ip in ips {
            tracing::info!("listening on gateway {kind} {}", SocketAddr::new(*ip, port));
        }
        Ok(Open { tls, stop, app })
    }
}

/// Stops a port's accept loops (closing its sockets) and drains its connections.
fn close(port: u16, o: Open) {
    o.stop.send_replace(true);
    tokio::spawn(async move {
        // Wakes its keep-alive connections waiting for a request, so they close.
        pingora::apps::ServerApp::cleanup(o.app.as_ref()).await;
    });
    tracing::info!(
        port,
        "closed the Gateway listener port: no listener of ours names it"
    );
}

/// The ports the table's Gateway listeners want, with their protocol (HTTP first on a port).
fn wanted(table: &HttpTable) -> BTreeMap<u16, bool> {
    let mut want = BTreeMap::new();
    for l in &table.listeners {
        // Sorted by port, then HTTP before HTTPS: the first one sets the protocol.
        want.entry(l.port).or_insert(l.tls);
    }
    want
}

fn proto(tls: bool) -> &'static str {
    if tls {
        "HTTPS"
    } else {
        "HTTP"
    }
}

/// Opens and closes ports until `shutdown` turns true, then closes them all.
pub async fn run(opener: Opener, mut shutdown: watch::Receiver<bool>) {
    let mut open: BTreeMap<u16, Open> = BTreeMap::new();
    // Ports that could not be bound, and the error last logged.
    let mut failed: BTreeMap<u16, String> = BTreeMap::new();
    let mut seen: Option<Arc<HttpTable>> = None;
    let mut last_try = Instant::now();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break } else { continue },
        }
        let table = opener.shared.cell.load().routes.http.clone();
        let changed = !seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, &table));
        let retry = !failed.is_empty() && last_try.elapsed() >= RETRY;
        if !changed && !retry {
            continue;
        }
        seen = Some(table.clone());
        last_try = Instant::now();

        let want = wanted(&table);
        let gone: Vec<u16> = open
            .iter()
            .filter(|(p, o)| want.get(p) != Some(&o.tls))
            .map(|(p, _)| *p)
            .collect();
        for p in gone {
            if let Some(o) = open.remove(&p) {
                close(p, o);
            }
        }
        failed.retain(|p, _| want.contains_key(p));
        let mut report = BTreeMap::new();
        for (&port, &tls) in &want {
            let state = if let Some(&fixed) = opener.fixed.get(&port) {
                if fixed == tls {
                    PortState::Open { tls }
                } else {
                    PortState::Unavailable(format!(
                        "port {port} is switchboard's --{} listener ({})",
                        proto(fixed).to_ascii_lowercase(),
                        proto(fixed)
                    ))
                }
            } else if let std::collections::btree_map::Entry::Vacant(slot) = open.entry(port) {
                match opener.open(port, tls) {
                    Ok(o) => {
                        failed.remove(&port);
                        slot.insert(o);
                        PortState::Open { tls }
                    }
                    Err(e) => {
                        let msg = format!("cannot listen on port {port}: {e}");
                        if failed.get(&port) != Some(&msg) {
                            tracing::warn!(port, error = %e, "cannot open a Gateway listener port; trying again every {RETRY:?}");
                        }
                        failed.insert(port, msg.clone());
                        PortState::Unavailable(msg)
                    }
                }
            } else {
                PortState::Open { tls }
            };
            report.insert(port, state);
        }
        opener.shared.config.ports.set(report);
    }
    for (p, o) in std::mem::take(&mut open) {
        close(p, o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tables::GatewayPort;

    #[test]
    fn http_has_a_port_both_protocols_want() {
        let l = |port, tls, gw: &str| GatewayPort {
            port,
            tls,
            gateway: gw.into(),
            listener: "l".into(),
        };
        let mut listeners = vec![
            l(9000, true, "a/x"),
            l(9000, false, "z/y"),
            l(9443, true, "a/x"),
        ];
        listeners.sort();
        let table = HttpTable {
            listeners,
            ..Default::default()
        };
        assert_eq!(
            wanted(&table),
            BTreeMap::from([(9000, false), (9443, true)])
        );
    }
}
