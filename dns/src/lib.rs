//! The cluster DNS server: answers the cluster zone (Kubernetes DNS spec 1.1.0 plus CoreDNS's
//! de-facto rules) from the published `Snapshot`, and forwards every other name to the
//! upstream servers through a cache.
//!
//! ```text
//!   SnapshotCell ──load() per query──┐
//!                                     v
//!  UDP worker threads ─> wire.rs ─> server.rs ─┬─> zone.rs (cluster zone, reverse names we hold)
//!  TCP tasks             (parse)   (templates) ├─> xfr.rs  (AXFR, allowed clients, TCP)
//!  (every --dns ADDR)                         └─> forward.rs ─> cache.rs, upstreams
//!  metrics.rs: coredns_* series in the process registry
//! ```
//!
//! In: a `DnsConfig`, the `SnapshotCell`, the process Prometheus `Registry`. Out: answers on the
//! wire, metrics, and a `DnsServer` handle whose `shutdown` runs the lame-duck period (still
//! answering) before the listeners close. Names in the cluster zone are never cached across
//! snapshot generations; forwarded names are (see `cache.rs`).
#![forbid(unsafe_code)]

pub mod cache;
pub mod config;
pub mod forward;
pub mod fuzzing;
pub mod metrics;
pub mod parse;
pub mod server;
pub mod tcplimit;
pub mod templates;
pub mod wire;
pub mod xfr;
pub mod zone;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use tables::SnapshotCell;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{parse_duration, Cidr, ConfigError, DnsConfig, PodsMode};

use crate::forward::Forwarder;
use crate::server::Shared;
use crate::zone::ZoneSettings;

/// Starting the server failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("binding dns/{proto} {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("registering DNS metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// One listener's bound addresses.
#[derive(Clone, Copy, Debug)]
pub struct Listener {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
}

/// A running DNS server.
pub struct DnsServer {
    pub listeners: Vec<Listener>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// UDP workers (OS threads, see `server::udp_worker`).
    threads: Vec<std::thread::JoinHandle<()>>,
    forwarder: Arc<Forwarder>,
}

impl DnsServer {
    /// Binds every listener (UDP and TCP on the same address; with port 0 the TCP listener takes
    /// the port UDP got), logs `listening on dns/udp ADDR` and `listening on dns/tcp ADDR`, and
    /// starts serving. Must run inside a tokio runtime.
    pub async fn spawn(
        cfg: DnsConfig,
        cell: SnapshotCell,
        registry: &Registry,
    ) -> Result<DnsServer, DnsError> {
        let metrics = metrics::Metrics::new(registry)?;
        let mut bound = Vec::new();
        for &addr in &cfg.listen {
            let (udp, tcp) = bind_pair(addr, cfg.udp_workers).await?;
            let udp_addr = udp[0].local_addr().map_err(|source| DnsError::Bind {
                proto: "udp",
                addr,
                source,
            })?;
            let tcp_addr = tcp.local_addr().map_err(|source| DnsError::Bind {
                proto: "tcp",
                addr,
                source,
            })?;
            tracing::info!("listening on dns/udp {udp_addr}");
            tracing::info!("listening on dns/tcp {tcp_addr}");
            bound.push((udp, tcp, udp_addr, tcp_addr));
        }
        let server_label = |a: SocketAddr| format!("dns://{a}");
        let first = bound
            .first()
            .map(|b| server_label(b.2))
            .unwrap_or_else(|| "dns://".into());
        let forwarder = Arc::new(Forwarder::new(&cfg, metrics.clone(), first));
        let shared = Arc::new(Shared {
            cell,
            settings: ZoneSettings {
                ttl: cfg.ttl,
                pods: cfg.pods,
                self_addrs: bound
                    .iter()
                    .map(|b| b.2.ip())
                    .filter(|ip| !ip.is_unspecified())
                    .collect(),
            },
            axfr_allow: cfg.axfr_allow.clone(),
            forwarder: forwarder.clone(),
            metrics,
            tcp_templates: Default::default(),
        });
        let tcp_limits = tcplimit::TcpLimits {
            max_connections: cfg.tcp_max_connections,
            max_per_client: cfg.tcp_max_per_client,
            idle_timeout: cfg.tcp_idle_timeout,
            write_timeout: cfg.tcp_write_timeout,
        };
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut threads = Vec::new();
        let mut listeners = Vec::new();
        for (udp, tcp, udp_addr, tcp_addr) in bound {
            for (worker, sock) in udp.into_iter().enumerate() {
                let (shared, label, stop) = (shared.clone(), server_label(udp_addr), stop.clone());
                let rt = tokio::runtime::Handle::current();
                let thread = std::thread::Builder::new()
                    .name(format!("dns-udp-{worker}"))
                    .spawn(move || server::udp_worker(shared, sock, (label, worker), stop, rt))
                    .map_err(|source| DnsError::Bind {
                        proto: "udp",
                        addr: udp_addr,
                        source,
                    })?;
                threads.push(thread);
            }
            let table = tcplimit::ConnTable::new(tcp_limits, shared.metrics.clone());
            tasks.push(tokio::spawn(server::tcp_acceptor(
                shared.clone(),
                tcp,
                server_label(tcp_addr),
                stop.clone(),
                table,
            )));
            listeners.push(Listener {
                udp: udp_addr,
                tcp: tcp_addr,
            });
        }
        if !cfg.upstreams.is_empty() || !listeners.is_empty() {
            tasks.push(tokio::spawn(forwarder.clone().run_background(
                cfg.loop_detect && !listeners.is_empty(),
                stop.clone(),
            )));
        }
        Ok(DnsServer {
            listeners,
            stop,
            tasks,
            threads,
            forwarder,
        })
    }

    /// True once an upstream was found to send our own queries back to us (it is then not
    /// asked any more; with none left, names outside the zone get SERVFAIL).
    pub fn loop_detected(&self) -> bool {
        self.forwarder.loop_detected()
    }

    /// Graceful stop: keeps answering for `lame_duck` (readiness should already report
    /// not-ready, so load balancers drain us), then closes the listeners and waits up to two
    /// seconds for the worker tasks. In-flight forwarded queries are abandoned.
    pub async fn shutdown(mut self, lame_duck: Duration) {
        if !lame_duck.is_zero() && !self.listeners.is_empty() {
            tracing::info!(?lame_duck, "dns: lame duck, still answering");
            tokio::time::sleep(lame_duck).await;
        }
        self.stop.cancel();
        let threads = std::mem::take(&mut self.threads);
        let tasks = std::mem::take(&mut self.tasks);
        let udp = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        let all = async move {
            futures_join(tasks).await;
            let _ = udp.await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), all).await;
        tracing::info!("dns: stopped");
    }
}

impl Drop for DnsServer {
    /// Dropping the handle stops the server (without the lame-duck period).
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// SO_RCVBUF asked for on every UDP socket.
const UDP_RECV_BUFFER: usize = 4 << 20;

/// One UDP socket with SO_REUSEPORT (so each UDP worker gets its own socket and the kernel
/// spreads clients over them, instead of every worker waking for every packet).
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    // Room for a burst (the kernel caps it at net.core.rmem_max): a full queue drops queries,
    // which clients only retry after seconds. NSD asks for 1 MiB; this asks for up to 4 MiB.
    if let Err(e) = s.set_recv_buffer_size(UDP_RECV_BUFFER) {
        tracing::debug!(error = %e, "dns/udp: cannot set SO_RCVBUF");
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// The TCP listener; IPv6 addresses are IPv6-only, as the UDP sockets (give `0.0.0.0:53` and
/// `[::]:53` for both families).
fn tcp_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    // As the UDP sockets: a `--takeover` restart binds beside the process it replaces (a start
    // without it is refused first when the address is in use: src/run.rs).
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// Binds `workers` UDP sockets and one TCP listener on the same address. With port 0 the TCP
/// listener takes the port UDP got; if that TCP port is taken, all are retried on a new port.
async fn bind_pair(
    addr: SocketAddr,
    workers: usize,
) -> Result<(Vec<std::net::UdpSocket>, TcpListener), DnsError> {
    let udp_err = |source| DnsError::Bind {
        proto: "udp",
        addr,
        source,
    };
    let mut attempts = 0;
    loop {
        let first = udp_socket(addr).map_err(udp_err)?;
        let udp_addr = first.local_addr().map_err(udp_err)?;
        let mut udp = vec![first];
        for _ in 1..workers.max(1) {
            udp.push(udp_socket(udp_addr).map_err(udp_err)?);
        }
        match tcp_listener(udp_addr) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && attempts < 20 => {
                tracing::debug!(%udp_addr, error = %e, "dns/tcp port taken, trying another");
                attempts += 1;
            }
            Err(source) => {
                return Err(DnsError::Bind {
                    proto: "tcp",
                    addr: udp_addr,
                    source,
                })
            }
        }
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}
