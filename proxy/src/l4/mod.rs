//! The kube-proxy replacement: Service traffic over TCP and UDP, balanced over the endpoints of
//! the current `RouteTable` with kube-proxy's semantics.
//!
//! ```text
//!                        ┌─ bind mode ──────── one listener per VIP:port (local VIPs, no root)
//!  SnapshotCell ─ sync ──┤
//!  (polled; generation)  └─ nftables mode ──── table `inet switchboard`: verdict maps
//!                                               daddr . l4proto . dport  /  l4proto . dport
//!                                                 │ TCP: mark → nat redirect → one listener
//!                                                 │      (SO_ORIGINAL_DST)
//!                                                 │ UDP: mark → tproxy → one listener
//!                                                 │      (IP_RECVORIGDSTADDR per datagram)
//!                                                 └ none: reject (RST / ICMP), Local-only: drop
//!  per connection / flow: frontend → select.rs (ready, else serving+terminating; topology;
//!  traffic policy; ClientIP affinity) → tcp.rs (splice, PROXY v2) / udp.rs (flow table)
//! ```
//!
//! The sync task wakes on each generation the controller publishes (or, started without that
//! signal, polls the snapshot cell every few milliseconds) and brings the data plane to it: listeners in `bind`
//! mode, map elements in `nftables` mode (only the elements that changed, one transaction), and
//! the healthCheckNodePort servers. Connections and flows read the snapshot they start with;
//! established TCP connections are never touched by an update. A UDP flow re-checks its
//! endpoint when the generation changes and moves to a live endpoint if its own is gone.
//!
//! Backends see the node as the source of proxied traffic (the proxy connects from the node's
//! address towards the pod), like kube-proxy with masquerading. Services that need the client
//! address set the annotation `switchboard.dev/proxy-protocol: v2`.

mod bind;
mod conntrack;
mod exprs;
mod health;
pub mod kernel;
pub mod metrics;
pub mod netlink;
pub mod netlink_full;
pub mod netlink_update;
pub mod nft;
pub mod nft_run;
pub mod pick;
mod programmed;
pub mod proxy_protocol;
mod redirect;
pub mod rule;
pub mod select;
pub mod service_tables;
mod sockopt;
mod sync;
mod tcp;
mod udp;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tables::{FrontendKind, FrontendTarget, Protocol, RouteTable, SnapshotCell};
use tokio::task::JoinHandle;

use crate::endpoints::{NodeTopology, TrafficKind};

pub use metrics::Metrics;
pub use nft::NftConfig;

/// How Service traffic reaches the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One listener per frontend VIP:port; the VIPs must be local addresses.
    Bind,
    /// The `inet switchboard` nftables table steers VIP traffic to one TCP redirect listener and
    /// one UDP tproxy listener per address family. Needs CAP_NET_ADMIN.
    Nftables,
}

/// What the L4 proxy needs to know at start.
#[derive(Clone, Debug)]
pub struct L4Config {
    pub mode: Mode,
    /// This node's name and zone, for Local traffic policies and topology.
    pub node: NodeTopology,
    /// A UDP flow with no datagram in either direction for this long is forgotten.
    pub udp_idle_timeout: Duration,
    /// `/healthz` fails when a published snapshot has waited this long to be applied.
    pub sync_timeout: Duration,
    /// How often the snapshot cell is checked for a new generation when `published` is not
    /// given; with it, how often retries and housekeeping are looked at.
    pub poll_interval: Duration,
    /// Each generation the controller publishes: the sync task acts on it at once instead of
    /// polling the cell.
    pub published: Option<tokio::sync::watch::Receiver<u64>>,
    /// Remove the nftables table (and its policy routing) on shutdown.
    pub cleanup_on_exit: bool,
    /// Upstream connect timeout per attempt.
    pub connect_timeout: Duration,
    pub nft: NftConfig,
    /// The kernel path's masquerading choices (`--cluster-cidr`, `--masquerade-all`).
    pub kernel: kernel::KernelConfig,
}

impl Default for L4Config {
    fn default() -> Self {
        L4Config {
            mode: Mode::Bind,
            node: NodeTopology::default(),
            udp_idle_timeout: Duration::from_secs(30),
            sync_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(5),
            published: None,
            cleanup_on_exit: false,
            connect_timeout: Duration::from_secs(3),
            nft: NftConfig::default(),
            kernel: kernel::KernelConfig::default(),
        }
    }
}

/// Errors that stop the L4 proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum L4Error {
    #[error("binding the {what} listener: {source}")]
    Bind {
        what: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Nft(#[from] nft::NftError),
    #[error("registering L4 metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Whether the data plane is keeping up with the published tables; read by `/healthz` and by
/// the healthCheckNodePort servers (`serviceProxyHealthy`).
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug)]
struct HealthInner {
    start: Instant,
    timeout: Duration,
    /// Milliseconds since `start` at which a not-yet-applied generation was first seen; 0 when
    /// everything seen has been applied.
    pending_since_ms: AtomicU64,
    applied_generation: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Health {
    fn new(timeout: Duration) -> Self {
        Health {
            inner: Arc::new(HealthInner {
                start: Instant::now(),
                timeout,
                pending_since_ms: AtomicU64::new(0),
                applied_generation: AtomicU64::new(0),
                last_error: Mutex::new(None),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.start.elapsed().as_millis() as u64 + 1
    }

    fn pending(&self) {
        let _ = self.inner.pending_since_ms.compare_exchange(
            0,
            self.now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn applied(&self, generation: u64) {
        self.inner.pending_since_ms.store(0, Ordering::Relaxed);
        self.inner
            .applied_generation
            .store(generation, Ordering::Relaxed);
        *self.inner.last_error.lock().unwrap() = None;
    }

    fn failed(&self, error: String) {
        self.pending();
        *self.inner.last_error.lock().unwrap() = Some(error);
    }

    /// The generation last applied to the data plane.
    pub fn applied_generation(&self) -> u64 {
        self.inner.applied_generation.load(Ordering::Relaxed)
    }

    /// `Err` with a reason when a snapshot has waited longer than the sync timeout.
    pub fn check(&self) -> Result<(), String> {
        let since = self.inner.pending_since_ms.load(Ordering::Relaxed);
        if since == 0 {
            return Ok(());
        }
        let waited = Duration::from_millis(self.now_ms().saturating_sub(since));
        if waited <= self.inner.timeout {
            return Ok(());
        }
        let err = self.inner.last_error.lock().unwrap().clone();
        Err(format!(
            "l4: tables not applied for {:.1}s (last applied generation {}){}",
            waited.as_secs_f64(),
            self.applied_generation(),
            err.map(|e| format!(": {e}")).unwrap_or_default()
        ))
    }
}

/// State shared by the listeners, connections, flows and the sync task.
pub(crate) struct Shared {
    pub cfg: L4Config,
    pub cell: SnapshotCell,
    pub picker: select::Picker,
    pub metrics: Metrics,
    pub health: Health,
    pub udp: udp::FlowTable,
    pub frontend_sockets: udp::FrontendSockets,
}

/// A frontend as a connection or datagram arrives at it, with what it leads to.
pub(crate) struct Resolved {
    pub frontend: SocketAddr,
    pub target: FrontendTarget,
}

impl Resolved {
    pub fn traffic(&self) -> TrafficKind {
        traffic_kind(self.target.kind)
    }
}

pub(crate) fn traffic_kind(kind: FrontendKind) -> TrafficKind {
    match kind {
        FrontendKind::ClusterIp => TrafficKind::Internal,
        _ => TrafficKind::External,
    }
}

/// Finds what `dst` (the address the client used) leads to: a ClusterIP, externalIP or
/// LoadBalancer frontend, else a NodePort (any other address that reached us is a node address).
pub(crate) fn resolve(
    routes: &RouteTable,
    protocol: Protocol,
    dst: SocketAddr,
) -> Option<Resolved> {
    let ip = canonical(dst.ip());
    let key = tables::Frontend {
        ip,
        protocol,
        port: dst.port(),
    };
    let target = routes
        .frontends
        .get(&key)
        .or_else(|| routes.node_ports.get(&(protocol, dst.port())))?;
    Some(Resolved {
        frontend: SocketAddr::new(ip, dst.port()),
        target: target.clone(),
    })
}

/// IPv4-mapped IPv6 addresses as plain IPv4.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Every proxied connection holds two descriptors and every UDP frontend one: raise the soft
/// limit on open files to the hard limit, as HAProxy and nginx do. Returns the soft limit in
/// force afterwards (`u64::MAX` when it cannot be read).
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return u64::MAX;
    };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::debug!(from = soft, to = hard, "raised the open files limit");
                return hard;
            }
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit")
            }
        }
    }
    soft
}

/// The running L4 proxy. Dropping it stops the sync task and listeners; call `shutdown` for an
/// orderly stop that also removes the nftables table when configured to.
pub struct L4 {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl L4 {
    /// Binds the listeners (and in `nftables` mode installs the table with the current
    /// snapshot's frontends), then keeps the data plane in step with the snapshot cell. Logs
    /// `listening on l4/NAME ADDR` per fixed listener.
    pub async fn start(
        cfg: L4Config,
        cell: SnapshotCell,
        registry: &prometheus::Registry,
    ) -> Result<L4, L4Error> {
        let metrics = Metrics::new(registry)?;
        let _ = raise_fd_limit();
        let health = Health::new(cfg.sync_timeout);
        let shared = Arc::new(Shared {
            picker: select::Picker::new(cfg.node.clone()),
            udp: udp::FlowTable::default(),
            frontend_sockets: udp::FrontendSockets::default(),
            cfg,
            cell,
            metrics,
            health,
        });
        let tasks = sync::start(shared.clone()).await?;
        Ok(L4 { shared, tasks })
    }

    pub fn health(&self) -> Health {
        self.shared.health.clone()
    }

    /// Stops listening; with `cleanup_on_exit`, removes the nftables table and its routing.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        if self.shared.cfg.mode == Mode::Nftables && self.shared.cfg.cleanup_on_exit {
            let cfg = self.shared.cfg.nft.clone();
            match tokio::task::spawn_blocking(move || nft_run::cleanup(&cfg)).await {
                Ok(Ok(removed)) => tracing::info!(removed, "l4: nftables table removed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "l4: removing the nftables table"),
                Err(e) => tracing::warn!(error = %e, "l4: cleanup task failed"),
            }
        }
    }
}

impl Drop for L4 {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
