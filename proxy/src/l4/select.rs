//! Choosing the endpoint for a new connection or UDP flow.
//!
//! The candidate set is `endpoints::categorize` for this node (ready, else serving+terminating;
//! topology hints; Local traffic policies), restricted to the frontend's address family. Among
//! candidates the choice is uniformly random, as kube-proxy's nftables mode (`numgen random`)
//! does; with `sessionAffinity: ClientIP` a client keeps its endpoint while that endpoint stays a
//! candidate and the client comes back within the timeout (each new connection refreshes it).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tables::{FrontendTarget, Protocol, ServiceKey};

use crate::endpoints::{categorize, NodeTopology, TrafficKind};

/// The outcome of a choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    Endpoint(SocketAddr),
    /// No endpoint anywhere: reject (TCP RST, ICMP port unreachable).
    NoEndpoints,
    /// Endpoints exist, but the Local policy allows none on this node: drop, as kube-proxy does.
    NoLocalEndpoints,
}

/// The verdict for a frontend as a whole, for the nftables maps and the `bind` listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Proxy it in userspace (the relay).
    Proxy,
    /// DNAT it in the kernel (`--l4 nftables`' default path): the element jumps to the chain
    /// of its service port (`kernel.rs`).
    Kernel,
    /// No endpoints: reject new connections.
    Reject,
    /// Local policy and no local endpoint: drop.
    Drop,
}

/// The verdict for traffic of `kind` to `target`, for a frontend of `family`, and whether a
/// Local traffic policy finds no endpoint on this node while some exist elsewhere (kube-proxy's
/// "no local endpoints"). With `kernel` (the kernel path's configuration), traffic with
/// endpoints is DNATed in the kernel unless the Service goes to the relay
/// (`kernel::relay_reason`).
pub fn verdict_and_no_local(
    target: &FrontendTarget,
    kind: TrafficKind,
    family: IpAddr,
    node: &NodeTopology,
    kernel: Option<&super::kernel::KernelConfig>,
) -> (Verdict, bool) {
    let svc = &target.service.service;
    let c = categorize(&target.port().endpoints, svc, node, Some(family));
    let chosen = c.for_traffic(svc, kind);
    let local = crate::endpoints::policy_local(svc, kind);
    let no_local = local && chosen.is_empty() && c.has_any;
    let in_kernel = kernel.is_some_and(|k| super::kernel::relay_reason(svc, k).is_none());
    let v = if !chosen.is_empty() {
        if in_kernel {
            Verdict::Kernel
        } else {
            Verdict::Proxy
        }
    } else if in_kernel && local && kind == TrafficKind::External && !c.cluster.is_empty() {
        // The node itself and pods still reach every endpoint (kube-proxy's short-circuit);
        // the chain drops the rest.
        Verdict::Kernel
    } else if c.has_any {
        Verdict::Drop
    } else {
        Verdict::Reject
    };
    (v, no_local)
}

/// Whether `client` may use `target`: traffic to a LoadBalancer IP must come from the
/// Service's `loadBalancerSourceRanges` when it has any (kube-proxy drops the rest).
pub fn source_allowed(target: &FrontendTarget, client: IpAddr) -> bool {
    let ranges = &target.service.service.load_balancer_source_ranges;
    target.kind != tables::FrontendKind::LoadBalancer
        || ranges.is_empty()
        || ranges.iter().any(|n| n.contains(&super::canonical(client)))
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct AffinityKey {
    service: ServiceKey,
    port: u16,
    protocol: Protocol,
    client: IpAddr,
}

/// (endpoint, last use, timeout)
type AffinityEntry = (SocketAddr, Instant, Duration);

const SHARDS: usize = 16;

/// Picks endpoints; owns the ClientIP affinity table.
pub struct Picker {
    node: NodeTopology,
    affinity: Vec<Mutex<HashMap<AffinityKey, AffinityEntry>>>,
}

impl Picker {
    pub fn new(node: NodeTopology) -> Self {
        Picker {
            node,
            affinity: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    pub fn node(&self) -> &NodeTopology {
        &self.node
    }

    fn shard(&self, key: &AffinityKey) -> &Mutex<HashMap<AffinityKey, AffinityEntry>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.affinity[(h.finish() as usize) % SHARDS]
    }

    /// Chooses an endpoint for a new connection or flow from `client` to a frontend of `family`
    /// reached as `kind`, avoiding `exclude` (endpoints that just failed to connect) while
    /// others remain.
    pub fn pick(
        &self,
        target: &FrontendTarget,
        kind: TrafficKind,
        family: IpAddr,
        client: IpAddr,
        exclude: &[SocketAddr],
    ) -> Pick {
        let svc = &target.service.service;
        let port = target.port();
        let c = categorize(&port.endpoints, svc, &self.node, Some(family));
        let candidates = c.for_traffic(svc, kind);
        if candidates.is_empty() {
            return if c.has_any {
                Pick::NoLocalEndpoints
            } else {
                Pick::NoEndpoints
            };
        }
        let affinity = svc.session_affinity_timeout.map(|t| {
            (
                AffinityKey {
                    service: target.service.key.clone(),
                    port: port.port,
                    protocol: port.protocol,
                    client: super::canonical(client),
                },
                Duration::from_secs(t.into()),
            )
        });
        let now = Instant::now();
        if let Some((key, timeout)) = &affinity {
            let mut map = self.shard(key).lock().unwrap();
            if let Some((addr, last, _)) = map.get_mut(key) {
                if now.duration_since(*last) <= *timeout
                    && !exclude.contains(addr)
                    && candidates.iter().any(|e| e.addr() == *addr)
                {
                    *last = now;
                    return Pick::Endpoint(*addr);
                }
            }
        }
        let open: Vec<SocketAddr> = candidates
            .iter()
            .map(|e| e.addr())
            .filter(|a| !exclude.contains(a))
            .collect();
        let chosen = if open.is_empty() {
            candidates[fastrand::usize(..candidates.len())].addr()
        } else {
            open[fastrand::usize(..open.len())]
        };
        if let Some((key, timeout)) = affinity {
            self.shard(&key)
                .lock()
                .unwrap()
                .insert(key, (chosen, now, timeout));
        }
        Pick::Endpoint(chosen)
    }

    /// True when `endpoint` may still take traffic of `kind` to `target` (a UDP flow keeps its
    /// endpoint while this holds).
    pub fn still_candidate(
        &self,
        target: &FrontendTarget,
        kind: TrafficKind,
        family: IpAddr,
        endpoint: SocketAddr,
    ) -> bool {
        let svc = &target.service.service;
        let c = categorize(&target.port().endpoints, svc, &self.node, Some(family));
        c.for_traffic(svc, kind)
            .iter()
            .any(|e| e.addr() == endpoint)
    }

    /// Forgets affinity entries whose timeout has passed.
    pub fn expire_affinity(&self) {
        let now = Instant::now();
        for shard in &self.affinity {
            shard
                .lock()
                .unwrap()
                .retain(|_, (_, last, timeout)| now.duration_since(*last) <= *timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tables::{
        Conditions, EndpointRoute, FrontendKind, PortRef, PortRoutes, Service, ServiceRoutes,
    };

    fn target(addrs: &[&str], affinity: Option<u32>) -> FrontendTarget {
        let endpoints: Vec<EndpointRoute> = addrs
            .iter()
            .map(|a| {
                EndpointRoute::new(
                    a.parse().unwrap(),
                    Conditions::default(),
                    Default::default(),
                )
            })
            .collect();
        FrontendTarget {
            kind: FrontendKind::ClusterIp,
            service: Arc::new(ServiceRoutes {
                trigger_time: None,
                slices: Default::default(),
                key: ServiceKey::new("default", "web"),
                service: Arc::new(Service {
                    session_affinity_timeout: affinity,
                    ..Default::default()
                }),
                ports: vec![PortRoutes {
                    name: "".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    target_port: PortRef::Number(8080),
                    node_port: None,
                    endpoints: endpoints.into(),
                }],
            }),
            port_index: 0,
        }
    }

    const V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 1));

    #[test]
    fn load_balancer_source_ranges_apply_to_load_balancer_traffic_only() {
        let with = |kind: FrontendKind, ranges: &[&str]| {
            let mut t = target(&["10.0.0.1:80"], None);
            let mut svc = (*t.service.service).clone();
            svc.load_balancer_source_ranges = ranges.iter().map(|r| r.parse().unwrap()).collect();
            let mut routes = (*t.service).clone();
            routes.service = Arc::new(svc);
            t.service = Arc::new(routes);
            t.kind = kind;
            t
        };
        let cases: &[(FrontendKind, &[&str], &str, bool)] = &[
            (
                FrontendKind::LoadBalancer,
                &["192.0.2.0/24"],
                "192.0.2.7",
                true,
            ),
            (
                FrontendKind::LoadBalancer,
                &["192.0.2.0/24"],
                "198.51.100.7",
                false,
            ),
            (
                FrontendKind::LoadBalancer,
                &["192.0.2.0/24"],
                "::ffff:192.0.2.7",
                true,
            ),
            (FrontendKind::LoadBalancer, &[], "198.51.100.7", true),
            (
                FrontendKind::NodePort,
                &["192.0.2.0/24"],
                "198.51.100.7",
                true,
            ),
            (
                FrontendKind::ExternalIp,
                &["192.0.2.0/24"],
                "198.51.100.7",
                true,
            ),
        ];
        let mut failures = Vec::new();
        for (kind, ranges, client, want) in cases {
            let got = source_allowed(&with(*kind, ranges), client.parse().unwrap());
            if got != *want {
                failures.push(format!(
                    "{kind:?} {ranges:?} from {client}: {got}, want {want}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn affinity_sticks_per_client_and_follows_removal() {
        let p = Picker::new(NodeTopology::default());
        let t = target(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], Some(60));
        let a: IpAddr = "10.1.0.1".parse().unwrap();
        let first = p.pick(&t, TrafficKind::Internal, V4, a, &[]);
        for _ in 0..50 {
            assert_eq!(p.pick(&t, TrafficKind::Internal, V4, a, &[]), first);
        }
        let Pick::Endpoint(chosen) = first else {
            panic!()
        };
        let rest: Vec<String> = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
            .into_iter()
            .filter(|s| s.parse::<SocketAddr>().unwrap() != chosen)
            .map(String::from)
            .collect();
        let rest: Vec<&str> = rest.iter().map(|s| s.as_str()).collect();
        let t2 = target(&rest, Some(60));
        let Pick::Endpoint(moved) = p.pick(&t2, TrafficKind::Internal, V4, a, &[]) else {
            panic!()
        };
        assert_ne!(moved, chosen);
        for _ in 0..20 {
            assert_eq!(
                p.pick(&t2, TrafficKind::Internal, V4, a, &[]),
                Pick::Endpoint(moved)
            );
        }
    }

    #[test]
    fn without_affinity_spreads_and_honours_exclude() {
        let p = Picker::new(NodeTopology::default());
        let t = target(&["10.0.0.1:80", "10.0.0.2:80"], None);
        let a: IpAddr = "10.1.0.1".parse().unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            if let Pick::Endpoint(e) = p.pick(&t, TrafficKind::Internal, V4, a, &[]) {
                seen.insert(e);
            }
        }
        assert_eq!(seen.len(), 2);
        let ex: SocketAddr = "10.0.0.1:80".parse().unwrap();
        for _ in 0..50 {
            assert_eq!(
                p.pick(&t, TrafficKind::Internal, V4, a, &[ex]),
                Pick::Endpoint("10.0.0.2:80".parse().unwrap())
            );
        }
        assert_eq!(
            p.pick(&target(&[], None), TrafficKind::Internal, V4, a, &[]),
            Pick::NoEndpoints
        );
        // Family: an IPv6 frontend does not use IPv4 endpoints.
        assert_eq!(
            p.pick(
                &t,
                TrafficKind::Internal,
                "fd00::1".parse().unwrap(),
                a,
                &[]
            ),
            Pick::NoEndpoints
        );
    }
}
