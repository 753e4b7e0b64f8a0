//! The sync task: keeps the data plane (bind listeners or nftables maps, and the
//! healthCheckNodePort servers) in step with the published snapshot.
//!
//! It wakes on each generation the controller publishes (`L4Config::published`; without it,
//! it polls the cell every `poll_interval`: one `load()` and a generation compare). On a new
//! generation it computes the verdict of every frontend — reusing the previous verdict when the
//! frontend's `ServiceRoutes` is the same `Arc` as last time, so the cost of a change is
//! proportional to the services that changed plus one pass over the frontend map — then applies
//! the difference. A failed nftables update is retried with a full table replacement; until one
//! succeeds, `/healthz` turns unhealthy once the sync timeout has passed.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tables::{Protocol, ServiceRoutes, Snapshot};
use tokio::task::JoinHandle;

use super::bind::BindListeners;
use super::conntrack;
use super::health::HealthServers;
use super::kernel::{chain_body, chain_name, ChainOps, Chains, KernelConfig};
use super::nft::{self, Change, Element, Ports, Target};
use super::select::{verdict_and_no_local, Verdict};
use super::{netlink, netlink_full, netlink_update, nft_run};
use super::{redirect, traffic_kind, L4Error, Mode, Shared};
use crate::endpoints::{NodeTopology, TrafficKind};

/// The verdict of every frontend as of the last snapshot, with the service it was computed
/// from, so the next snapshot recomputes only frontends whose `ServiceRoutes` changed; and,
/// for the kernel path, the chains those verdicts jump to.
#[derive(Default)]
pub(crate) struct VerdictCache {
    entries: HashMap<Element, Entry>,
    chains: Chains,
    stamp: u64,
    /// The services whose frontends the last update recomputed (one entry per service).
    recomputed: Vec<Arc<ServiceRoutes>>,
}

struct Entry {
    service: Arc<ServiceRoutes>,
    port_index: usize,
    kind: TrafficKind,
    /// A Local policy finds no endpoint on this node (for the metric).
    no_local: bool,
    target: Target,
    stamp: u64,
}

impl VerdictCache {
    /// Brings the cache to `snap`; returns the elements whose target changed (appeared,
    /// changed, went away) and what the kernel chains need. One pass over the frontend maps
    /// with a pointer compare per frontend; categorisation only for changed services. `kernel`
    /// is the kernel path's configuration, `None` where traffic always goes to the relay.
    pub fn update(
        &mut self,
        snap: &Snapshot,
        node: &NodeTopology,
        kernel: Option<&KernelConfig>,
    ) -> (Vec<Change>, ChainOps) {
        self.stamp += 1;
        let stamp = self.stamp;
        let mut changes = Vec::new();
        let mut seen = 0usize;
        let entries = &mut self.entries;
        let recomputed = &mut self.recomputed;
        recomputed.clear();
        let mut recomputed_ptrs = std::collections::HashSet::new();
        let mut batch = self.chains.batch();
        let mut one = |element: Element,
                       target: &tables::FrontendTarget,
                       kind: TrafficKind,
                       family: IpAddr| {
            seen += 1;
            let old = match entries.get_mut(&element) {
                Some(e)
                    if Arc::ptr_eq(&e.service, &target.service)
                        && e.port_index == target.port_index =>
                {
                    e.stamp = stamp;
                    return;
                }
                Some(e) => Some(e.target.clone()),
                None => None,
            };
            if recomputed_ptrs.insert(Arc::as_ptr(&target.service)) {
                recomputed.push(target.service.clone());
            }
            let (v, no_local) = verdict_and_no_local(target, kind, family, node, kernel);
            let chain = match (v, kernel) {
                (Verdict::Kernel, Some(cfg)) => {
                    let name = chain_name(target, kind, family.is_ipv6());
                    if let Some(body) = chain_body(target, kind, family.is_ipv6(), node, cfg) {
                        batch.set_body(&name, body);
                    }
                    Some(name)
                }
                _ => None,
            };
            let new = Target::new(v, chain);
            if let Some(name) = old.as_ref().and_then(|t| t.chain.as_ref()) {
                batch.release(name);
            }
            if let Some(name) = &new.chain {
                batch.reference(name);
            }
            if old.as_ref() != Some(&new) {
                changes.push(Change {
                    element,
                    old,
                    new: Some(new.clone()),
                });
            }
            entries.insert(
                element,
                Entry {
                    service: target.service.clone(),
                    port_index: target.port_index,
                    kind,
                    no_local,
                    target: new,
                    stamp,
                },
            );
        };
        for (fe, target) in snap.routes.frontends.iter() {
            if fe.protocol == Protocol::Sctp {
                continue;
            }
            let elem = Element::Service {
                ip: fe.ip,
                protocol: fe.protocol,
                port: fe.port,
            };
            one(elem, target, traffic_kind(target.kind), fe.ip);
        }
        for ((protocol, port), target) in snap.routes.node_ports.iter() {
            if *protocol == Protocol::Sctp {
                continue;
            }
            for (v6, family) in [
                (false, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                (true, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            ] {
                let elem = Element::NodePort {
                    v6,
                    protocol: *protocol,
                    port: *port,
                };
                one(elem, target, TrafficKind::External, family);
            }
        }
        // Frontends not seen this time went away (skip the scan when every entry was seen).
        if entries.len() > seen {
            entries.retain(|element, e| {
                if e.stamp == stamp {
                    return true;
                }
                if let Some(name) = &e.target.chain {
                    batch.release(name);
                }
                changes.push(Change {
                    element: *element,
                    old: Some(e.target.clone()),
                    new: None,
                });
                false
            });
        }
        let ops = batch.finish();
        (changes, ops)
    }

    /// Every element with its target.
    pub fn targets(&self) -> HashMap<Element, Target> {
        self.entries
            .iter()
            .map(|(k, e)| (*k, e.target.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Service ports (not elements: a NodePort has one per family) whose traffic of each kind
    /// is dropped for want of a local endpoint: (internal, external).
    pub fn no_local_endpoints(&self) -> (usize, usize) {
        let mut seen = std::collections::HashSet::new();
        for e in self.entries.values() {
            if e.no_local {
                seen.insert((Arc::as_ptr(&e.service), e.port_index, e.kind));
            }
        }
        let internal = seen
            .iter()
            .filter(|(_, _, k)| *k == TrafficKind::Internal)
            .count();
        (internal, seen.len() - internal)
    }

    /// The services whose frontends the last update recomputed.
    pub fn recomputed(&self) -> &[Arc<ServiceRoutes>] {
        &self.recomputed
    }

    /// The kernel chains, for a full table.
    pub fn chains(&self) -> &Chains {
        &self.chains
    }
}

enum Plane {
    Bind(BindListeners),
    Nft {
        sockets: BindListeners,
        /// The next update must replace the whole table (start, or after a failure).
        full: bool,
        /// A whole table sent over netlink failed: the next goes through `nft -f`, whose
        /// errors name the line at fault.
        full_via_nft: bool,
        ports: Ports,
        /// The netlink socket batches go through, kept open (netlink.rs `Socket`: closing one
        /// costs an RCU grace period); dropped after a failure and opened again.
        netlink: Option<netlink::Socket>,
    },
}

struct Syncer {
    shared: Arc<Shared>,
    plane: Plane,
    cache: VerdictCache,
    health_servers: HealthServers,
    generation: Option<u64>,
    retry_at: Option<Instant>,
    /// The nftables table waits for every source to have synced (see `start`).
    awaiting_sources: bool,
}

/// Starts the listeners, brings the data plane to the current snapshot, and spawns the sync
/// loop. Fails if a fixed listener cannot be bound or the first nftables transaction fails.
pub(crate) async fn start(shared: Arc<Shared>) -> Result<Vec<JoinHandle<()>>, L4Error> {
    let mut tasks = Vec::new();
    let plane = match shared.cfg.mode {
        Mode::Bind => Plane::Bind(BindListeners::bind_mode()),
        Mode::Nftables => {
            let (ports, t) = redirect::start(&shared)?;
            tasks.extend(t);
            let cfg = shared.cfg.nft.clone();
            let (v4, v6) = tokio::task::spawn_blocking(move || nft_run::install_routing(&cfg))
                .await
                .expect("routing setup does not panic");
            v4?;
            if let Err(e) = v6 {
                tracing::warn!(error = %e, "l4: no IPv6 policy routing; IPv6 UDP services are not served");
            }
            Plane::Nft {
                sockets: BindListeners::frontend_sockets(),
                full: true,
                full_via_nft: false,
                ports,
                netlink: None,
            }
        }
    };
    let mut syncer = Syncer {
        shared: shared.clone(),
        plane,
        cache: VerdictCache::default(),
        health_servers: HealthServers::default(),
        generation: None,
        retry_at: None,
        awaiting_sources: false,
    };
    let mut snap = shared.cell.load_full();
    // As kube-proxy, the table is programmed from complete sources only: until every source
    // has synced, a table left by the previous run keeps serving (a restart drops no Service
    // traffic), and a node without one gets an empty table now (which also shows that nft
    // works) and its first full table once the sources are in.
    if let (Plane::Nft { .. }, false) = (&syncer.plane, snap.synced) {
        syncer.awaiting_sources = true;
        let cfg = shared.cfg.nft.clone();
        let kept = tokio::task::spawn_blocking(move || nft_run::table_exists(&cfg))
            .await
            .unwrap_or(false);
        if kept {
            tracing::info!(
                table = %shared.cfg.nft.table,
                "l4: keeping the table of the previous run until every source has synced"
            );
            tasks.push(tokio::spawn(syncer.run()));
            return Ok(tasks);
        }
        snap = Arc::new(Snapshot::empty(&snap.dns.zone));
    }
    if let Err(e) = syncer.sync(&snap).await {
        if let Plane::Nft { .. } = syncer.plane {
            // Without a first table, nothing is intercepted: refuse to start.
            for t in &tasks {
                t.abort();
            }
            return Err(e.into());
        }
    }
    if let Plane::Nft { .. } = &syncer.plane {
        tracing::info!(
            table = %shared.cfg.nft.table,
            elements = syncer.cache.len(),
            "l4: nftables table installed"
        );
    }
    tasks.push(tokio::spawn(syncer.run()));
    Ok(tasks)
}

impl Syncer {
    fn kernel_config(&self) -> KernelConfig {
        KernelConfig {
            masquerade_mark: self.shared.cfg.nft.masquerade_mark,
            ..self.shared.cfg.kernel.clone()
        }
    }

    async fn run(mut self) {
        let mut published = self.shared.cfg.published.clone();
        // Told of each publish, the loop wakes for it and otherwise only for retries and
        // housekeeping; else it polls the cell.
        let period = match published {
            Some(_) => RETRY_CHECK.max(self.shared.cfg.poll_interval),
            None => self.shared.cfg.poll_interval,
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = Instant::now();
        let mut rejected_seen = 0u64;
        loop {
            match published.as_mut() {
                Some(rx) => {
                    tokio::select! {
                        changed = rx.changed() => {
                            if changed.is_err() {
                                // The controller is gone (shutdown): poll from now on.
                                published = None;
                            }
                        }
                        _ = tick.tick() => {}
                    }
                }
                None => {
                    tick.tick().await;
                }
            }
            let snap = self.shared.cell.load_full();
            let retry_due = self.retry_at.is_some_and(|t| Instant::now() >= t);
            if self.awaiting_sources {
                if !snap.synced {
                    continue;
                }
                // The first complete snapshot replaces the table in one transaction.
                self.awaiting_sources = false;
                if let Plane::Nft { full, .. } = &mut self.plane {
                    *full = true;
                }
                tracing::info!(
                    generation = snap.generation,
                    "l4: every source has synced; installing the full table"
                );
                let _ = self.sync(&snap).await;
            } else if Some(snap.generation) != self.generation || retry_due {
                let _ = self.sync(&snap).await;
            }
            if housekeeping.elapsed() >= Duration::from_secs(2) {
                housekeeping = Instant::now();
                self.shared.picker.expire_affinity();
                if let Plane::Nft { .. } = self.plane {
                    let cfg = self.shared.cfg.nft.clone();
                    if let Ok(Some(n)) =
                        tokio::task::spawn_blocking(move || nft_run::rejected_packets(&cfg)).await
                    {
                        if n >= rejected_seen {
                            self.shared.metrics.nft_rejects.inc_by(n - rejected_seen);
                        }
                        rejected_seen = n;
                    }
                }
            }
        }
    }

    /// Applies `snap`; on failure schedules a retry and reports it to the health state.
    async fn sync(&mut self, snap: &Arc<Snapshot>) -> Result<(), nft::NftError> {
        let seen = Instant::now();
        self.shared.health.pending();
        let kernel = match self.plane {
            Plane::Nft { .. } => Some(self.kernel_config()),
            Plane::Bind(_) => None,
        };
        let (mut changes, mut ops) =
            self.cache
                .update(snap, &self.shared.cfg.node, kernel.as_ref());
        let computed = seen.elapsed();
        // The time the transaction itself took, and its CPU time, for the log.
        let mut applying = Duration::ZERO;
        let mut applying_cpu: Option<Duration> = None;
        // The nft commands (or netlink messages) of this sync's one transaction, for the log.
        let mut commands = 0usize;
        let mut via = "";
        let result = match &mut self.plane {
            Plane::Bind(listeners) => {
                let (opened, closed) = listeners.reconcile(&self.shared, &changes);
                if opened + closed > 0 {
                    tracing::info!(
                        generation = snap.generation,
                        listeners = listeners.len(),
                        opened,
                        closed,
                        "l4: bind listeners updated"
                    );
                }
                self.shared.metrics.frontends.set(listeners.len() as i64);
                Ok(())
            }
            Plane::Nft {
                sockets,
                full,
                full_via_nft,
                ports,
                netlink: socket,
            } => {
                // Sockets first: a datagram steered by the new elements finds its socket.
                sockets.reconcile(&self.shared, &changes);
                let cfg = &self.shared.cfg.nft;
                // Over netlink where every part has an encoding (netlink_update.rs for
                // changes, netlink_full.rs for a whole table); the rest through `nft -f`.
                let (netlink, script) = if *full {
                    // The whole table is written from the chains' state: the change lists
                    // (on the first sync, a copy of every element, chain and rule) go first,
                    // so they and the table's batch are never in memory together.
                    drop(std::mem::take(&mut changes));
                    ops = ChainOps {
                        endpoints_gone: std::mem::take(&mut ops.endpoints_gone),
                        ..ChainOps::default()
                    };
                    let (chains, hairpin, pick_maps, picks) = self.cache.chains().all();
                    let kernel = nft::KernelChains {
                        chains,
                        hairpin,
                        pick_maps,
                        picks,
                        cluster_cidrs: self.shared.cfg.kernel.cluster_cidrs.clone(),
                    };
                    let targets = self.cache.targets();
                    match netlink_full::full_batch(cfg, ports, &targets, &kernel) {
                        Some(b) if !*full_via_nft && !cfg.full_table_via_nft => (Some(b), None),
                        _ => (None, Some(nft::full_script(cfg, ports, &targets, &kernel))),
                    }
                } else {
                    match netlink_update::batch(cfg, &changes, &ops) {
                        Some(b) => (Some(b), None),
                        None => (None, nft::change_script(cfg, &changes, &ops)),
                    }
                };
                via = if netlink.is_some() { "netlink" } else { "nft" };
                commands = script
                    .as_ref()
                    .map_or(0, |s| s.lines().count())
                    .max(netlink.as_ref().map_or(0, |b| b.messages()));
                let t = Instant::now();
                let r = match (script, netlink) {
                    (Some(script), _) => {
                        // nft's own CPU time (user and system, the kernel's share included),
                        // from the children's usage: syncs run one at a time.
                        let (r, cpu) = tokio::task::spawn_blocking(move || {
                            let before = children_cpu();
                            let r = nft_run::apply(&script);
                            (r, children_cpu().saturating_sub(before))
                        })
                        .await
                        .expect("nft runner does not panic");
                        applying_cpu = Some(cpu);
                        r
                    }
                    (None, Some(batch)) => {
                        // The kernel applies the batch in the sending thread, so that thread's
                        // CPU time is the transaction's cost, whatever else runs on the node.
                        let (r, cpu) = commit(socket, batch).await;
                        applying_cpu = Some(cpu);
                        r.map_err(nft::NftError::Netlink)
                    }
                    (None, None) => Ok(()),
                };
                applying = t.elapsed();
                match r {
                    Ok(()) => {
                        if *full && via == "nft" {
                            *full_via_nft = false;
                        }
                        *full = false;
                        conntrack::forget_udp(&ops.endpoints_gone).await;
                        self.shared.metrics.frontends.set(self.cache.len() as i64);
                        Ok(())
                    }
                    Err(e) => {
                        if *full && via == "netlink" {
                            *full_via_nft = true;
                        }
                        *full = true;
                        Err(e)
                    }
                }
            }
        };
        self.health_servers.reconcile(&self.shared, snap);
        let m = &self.shared.metrics;
        let took = seen.elapsed().as_secs_f64();
        match &result {
            Ok(()) => {
                m.sync_duration.observe(took);
                // From the source event (API watch event, file change) to the data plane.
                let since_event = snap.received_at.map_or(took, |t| t.elapsed().as_secs_f64());
                m.programming_latency.observe(since_event);
                m.syncs.with_label_values(&["ok"]).inc();
                m.last_applied_generation.set(snap.generation as i64);
                // kube-proxy's network programming duration: from the change's trigger time
                // (the EndpointSlice annotation) to the data plane serving it.
                let now = std::time::SystemTime::now();
                for svc in self.cache.recomputed() {
                    if let Some(d) = svc.trigger_time.and_then(|t| now.duration_since(t).ok()) {
                        m.network_programming_duration.observe(d.as_secs_f64());
                    }
                }
                m.last_sync.set(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs_f64(),
                );
                m.kernel_chains.set(self.cache.chains().len() as i64);
                let (internal, external) = self.cache.no_local_endpoints();
                m.no_local_endpoints
                    .with_label_values(&["internal"])
                    .set(internal as i64);
                m.no_local_endpoints
                    .with_label_values(&["external"])
                    .set(external as i64);
                self.generation = Some(snap.generation);
                self.retry_at = None;
                self.shared.health.applied(snap.generation);
                tracing::debug!(
                    generation = snap.generation,
                    seconds = took,
                    commands,
                    via,
                    compute_ms = computed.as_secs_f64() * 1e3,
                    apply_ms = applying.as_secs_f64() * 1e3,
                    apply_cpu_ms = applying_cpu.map(|d| d.as_secs_f64() * 1e3),
                    chains = self.cache.chains().len(),
                    "l4: synced"
                );
            }
            Err(e) => {
                m.syncs.with_label_values(&["error"]).inc();
                self.shared.health.failed(e.to_string());
                self.generation = Some(snap.generation);
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                tracing::warn!(generation = snap.generation, error = %e, "l4: applying the tables failed; retrying with a full table in 1s");
            }
        }
        result
    }
}

/// How often the loop looks at retries and housekeeping when publishes wake it.
const RETRY_CHECK: Duration = Duration::from_millis(100);

/// Sends `batch` on the kept netlink socket (opened if there is none; dropped after a
/// failure), in a blocking thread; with the sending thread's CPU time, which is the
/// transaction's: the kernel applies a batch in the thread that sends it.
async fn commit(
    socket: &mut Option<netlink::Socket>,
    batch: netlink::Batch,
) -> (std::io::Result<()>, Duration) {
    let kept = socket.take();
    let (r, cpu) = tokio::task::spawn_blocking(move || {
        let before = thread_cpu();
        let r = match kept {
            Some(s) => Ok(s),
            None => netlink::Socket::open(),
        }
        .and_then(|mut s| batch.commit_on(&mut s).map(|()| s));
        (r, thread_cpu().saturating_sub(before))
    })
    .await
    .expect("netlink runner does not panic");
    (r.map(|s| *socket = Some(s)), cpu)
}

/// The CPU time (user and system) of this process's children that have ended.
fn children_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_CHILDREN)
        .map(|u| {
            let d = |t: nix::sys::time::TimeVal| {
                Duration::from_secs(t.tv_sec().max(0) as u64)
                    + Duration::from_micros(t.tv_usec().max(0) as u64)
            };
            d(u.user_time()) + d(u.system_time())
        })
        .unwrap_or_default()
}

/// This thread's CPU time (user and system).
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}
