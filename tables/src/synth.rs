//! Synthetic clusters for benchmarks and tests.
//!
//! `SynthCluster::generate` builds a deterministic set of Services and EndpointSlices shaped like
//! a real cluster: spread over namespaces, a share of headless services (half of them with
//! StatefulSet-style hostnames), one or two ports per service (named and unnamed, some UDP), one
//! EndpointSlice per service. ClusterIPs are unique and come from `10.96.0.0/12`; pod IPs are
//! unique and come from `10.0.0.0/8` (below `10.64.0.0`, so they never collide with ClusterIPs
//! or with `spare_pod_ip`).
//!
//! `SynthSpec::expected` computes, from the spec alone, the table sizes the cluster must compile
//! to; a generator that silently produced duplicates (same IP twice, same name twice) fails the
//! comparison instead of making a benchmark measure a smaller cluster than it claims.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use crate::compile::TableConfig;
use crate::intern::intern;
use crate::model::*;
use crate::snapshot::Snapshot;
use crate::state::{ClusterState, Origin, SourceId};

/// The size and shape of a synthetic cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthSpec {
    pub services: usize,
    /// Endpoints per service, all in the service's single EndpointSlice, all ready.
    pub endpoints_per_service: usize,
    /// Service `i` lives in namespace `i % namespaces`.
    pub namespaces: usize,
    /// Services `0, n, 2n, ...` are headless; 0 for none.
    pub headless_every: usize,
}

impl SynthSpec {
    /// `services` services with 10 endpoints each, over (at most) 100 namespaces, 10% headless.
    pub fn new(services: usize) -> Self {
        SynthSpec {
            services,
            endpoints_per_service: 10,
            namespaces: services.clamp(1, 100),
            headless_every: 10,
        }
    }

    pub fn endpoints(&self) -> usize {
        self.services * self.endpoints_per_service
    }

    pub fn is_headless(&self, i: usize) -> bool {
        self.headless_every != 0 && i.is_multiple_of(self.headless_every)
    }

    /// The ports of service `i`.
    pub fn shape(&self, i: usize) -> PortShape {
        PortShape::of(i)
    }

    pub fn namespace(&self, i: usize) -> String {
        format!("ns-{:03}", i % self.namespaces)
    }

    pub fn service_name(&self, i: usize) -> String {
        const APPS: [&str; 12] = [
            "api", "web", "auth", "cache", "search", "billing", "orders", "cart", "db", "queue",
            "metrics", "mail",
        ];
        format!(
            "{}-{:05}",
            APPS[(mix(i as u64) >> 8) as usize % APPS.len()],
            i
        )
    }

    /// The first service index (from `from`) that satisfies `pred(headless, shape)`.
    pub fn find(&self, from: usize, pred: impl Fn(bool, PortShape) -> bool) -> Option<usize> {
        (from..self.services).find(|&i| pred(self.is_headless(i), self.shape(i)))
    }

    /// What the cluster must compile to (independent of the generated objects).
    pub fn expected(&self) -> Expected {
        let mut e = Expected {
            services: self.services,
            // `<ns>.svc.<zone>` exists for every namespace with a service.
            dns_names: self.namespaces.min(self.services),
            frontends: 0,
            endpoint_routes: 0,
        };
        let eps = self.endpoints_per_service;
        for i in 0..self.services {
            let shape = self.shape(i);
            let ports = shape.ports().len();
            e.endpoint_routes += ports * eps;
            if self.is_headless(i) {
                if eps > 0 {
                    // Service name; per endpoint its own name and a PTR; SRV names.
                    e.dns_names += 1 + 2 * eps + shape.srv_names();
                }
            } else {
                // Service name, PTR of the ClusterIP, SRV names; one frontend per port.
                e.dns_names += 2 + shape.srv_names();
                e.frontends += ports;
            }
        }
        e
    }
}

/// Table sizes a synthetic cluster compiles to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Entries of `routes.services`.
    pub services: usize,
    /// Entries of `dns.names` (service, endpoint, SRV, PTR and namespace names).
    pub dns_names: usize,
    /// Entries of `routes.frontends` (one per port of each ClusterIP service).
    pub frontends: usize,
    /// Sum of `endpoints.len()` over every port of every service.
    pub endpoint_routes: usize,
}

impl Expected {
    /// The same sizes, counted in a snapshot.
    pub fn of(snap: &Snapshot) -> Expected {
        Expected {
            services: snap.routes.services.len(),
            dns_names: snap.dns.names.len(),
            frontends: snap.routes.frontends.len(),
            endpoint_routes: snap
                .routes
                .services
                .iter()
                .flat_map(|(_, r)| r.ports.iter())
                .map(|p| p.endpoints.len())
                .sum(),
        }
    }
}

/// The port sets services are drawn from (3/8, 2/8, 1/8, 1/8, 1/8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortShape {
    /// One unnamed TCP port 80 -> 8080.
    UnnamedTcp,
    /// One TCP port `http` 80 -> targetPort `http` (8080).
    NamedHttp,
    /// `http` TCP 80 -> 8080 and `metrics` TCP 9090 -> 9090.
    HttpAndMetrics,
    /// `dns` UDP 53 and `dns-tcp` TCP 53, both -> 5353.
    Dns,
    /// One unnamed UDP port 514 -> 5514.
    UnnamedUdp,
}

/// One service port: name, protocol, port, targetPort, and the port the endpoints listen on.
pub type PortSpec = (&'static str, Protocol, u16, PortRef, u16);

impl PortShape {
    fn of(i: usize) -> Self {
        match mix(i as u64) % 8 {
            0..=2 => PortShape::UnnamedTcp,
            3 | 4 => PortShape::NamedHttp,
            5 => PortShape::HttpAndMetrics,
            6 => PortShape::Dns,
            _ => PortShape::UnnamedUdp,
        }
    }

    pub fn ports(self) -> Vec<PortSpec> {
        use Protocol::*;
        match self {
            PortShape::UnnamedTcp => vec![("", Tcp, 80, PortRef::Number(8080), 8080)],
            PortShape::NamedHttp => vec![("http", Tcp, 80, PortRef::Name("http".into()), 8080)],
            PortShape::HttpAndMetrics => vec![
                ("http", Tcp, 80, PortRef::Number(8080), 8080),
                ("metrics", Tcp, 9090, PortRef::Number(9090), 9090),
            ],
            PortShape::Dns => vec![
                ("dns", Udp, 53, PortRef::Number(5353), 5353),
                ("dns-tcp", Tcp, 53, PortRef::Number(5353), 5353),
            ],
            PortShape::UnnamedUdp => vec![("", Udp, 514, PortRef::Number(5514), 5514)],
        }
    }

    /// DNS names the named ports add: one `_<proto>` name per protocol and one
    /// `_<port>._<proto>` name per named port.
    pub fn srv_names(self) -> usize {
        match self {
            PortShape::UnnamedTcp | PortShape::UnnamedUdp => 0,
            PortShape::NamedHttp => 2,
            PortShape::HttpAndMetrics => 3,
            PortShape::Dns => 4,
        }
    }
}

/// The generated objects.
#[derive(Clone, Debug)]
pub struct SynthCluster {
    pub spec: SynthSpec,
    /// Service `i` is `services[i]`.
    pub services: Vec<Service>,
    /// The EndpointSlice of service `i` is `slices[i]`.
    pub slices: Vec<EndpointSlice>,
}

impl SynthCluster {
    pub fn generate(spec: &SynthSpec) -> Self {
        assert!(spec.namespaces > 0, "at least one namespace");
        assert!(
            spec.services < CLUSTER_IP_SLOTS as usize,
            "at most {CLUSTER_IP_SLOTS} services fit 10.96.0.0/12"
        );
        assert!(
            spec.endpoints() < POD_IP_SLOTS as usize,
            "at most {POD_IP_SLOTS} pod IPs"
        );
        let services = (0..spec.services).map(|i| service(spec, i)).collect();
        let slices = (0..spec.services).map(|i| slice(spec, i)).collect();
        SynthCluster {
            spec: spec.clone(),
            services,
            slices,
        }
    }

    /// Every object, services first (as two informers listing one after the other).
    pub fn objects(&self) -> Vec<Object> {
        self.services
            .iter()
            .cloned()
            .map(|s| Object::Service(s.into()))
            .chain(self.slices.iter().cloned().map(Object::EndpointSlice))
            .collect()
    }

    /// Every object, services first, without copying.
    pub fn into_objects(self) -> Vec<Object> {
        self.services
            .into_iter()
            .map(|s| Object::Service(s.into()))
            .chain(self.slices.into_iter().map(Object::EndpointSlice))
            .collect()
    }

    /// Builds a state from these objects: `apply` of each object from its kind's source (as
    /// the Kubernetes source names them), `set_synced`, `commit`.
    pub fn build(&self, config: TableConfig) -> (ClusterState, Arc<Snapshot>) {
        build(config, self.objects())
    }
}

/// `ClusterState::new`, `apply` of every object from `source_of(kind)`, `set_synced(true)`,
/// `commit`.
pub fn build(config: TableConfig, objects: Vec<Object>) -> (ClusterState, Arc<Snapshot>) {
    let mut state = ClusterState::new(config);
    let services = source_of(Kind::Service);
    let slices = source_of(Kind::EndpointSlice);
    for obj in objects {
        let source = match obj {
            Object::EndpointSlice(_) => &slices,
            _ => &services,
        };
        state.apply(source, obj);
    }
    state.set_synced(true);
    let snap = state.commit().expect("a first commit always publishes");
    (state, snap)
}

/// The source the Kubernetes watcher uses for one kind.
pub fn source_of(kind: Kind) -> SourceId {
    SourceId::new(Origin::Kubernetes, kind.as_str())
}

const CLUSTER_IP_BASE: u32 = u32::from_be_bytes([10, 96, 0, 0]);
/// Addresses of 10.96.0.0/12 above the first 16.
const CLUSTER_IP_SLOTS: u32 = (1 << 20) - 16;
const POD_IP_BASE: u32 = u32::from_be_bytes([10, 1, 0, 0]);
/// Pod IPs stay below 10.64.0.0.
const POD_IP_SLOTS: u32 = u32::from_be_bytes([10, 64, 0, 0]) - POD_IP_BASE;
const SPARE_IP_BASE: u32 = u32::from_be_bytes([10, 64, 0, 0]);

/// The ClusterIP of service `i`: unique in 10.96.0.0/12 for `i < 2^20 - 16`, scattered (7919
/// is coprime to the slot count, so `i -> i * 7919 mod slots` is a bijection).
pub fn cluster_ip(i: usize) -> IpAddr {
    let slot = ((i as u64 * 7919) % CLUSTER_IP_SLOTS as u64) as u32;
    IpAddr::V4(Ipv4Addr::from(CLUSTER_IP_BASE + 16 + slot))
}

/// The pod IP of endpoint `j` of service `i`.
pub fn pod_ip(spec: &SynthSpec, i: usize, j: usize) -> IpAddr {
    let g = (i * spec.endpoints_per_service + j) as u32;
    IpAddr::V4(Ipv4Addr::from(POD_IP_BASE + g))
}

/// Pod IPs no generated endpoint uses (10.64.0.0 upwards), for changes that move an endpoint.
pub fn spare_pod_ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(SPARE_IP_BASE + (n % (1 << 20))))
}

/// Service `i` of the cluster `spec` describes.
pub fn service(spec: &SynthSpec, i: usize) -> Service {
    let headless = spec.is_headless(i);
    Service {
        namespace: spec.namespace(i),
        name: spec.service_name(i),
        service_type: ServiceType::ClusterIp,
        cluster_ips: if headless {
            vec![]
        } else {
            vec![cluster_ip(i)]
        },
        headless,
        ports: spec
            .shape(i)
            .ports()
            .into_iter()
            .map(|(name, protocol, port, target_port, _)| ServicePort {
                name: name.into(),
                protocol,
                port,
                target_port,
                node_port: None,
                app_protocol: None,
            })
            .collect(),
        ..Default::default()
    }
}

/// The EndpointSlice of service `i`.
pub fn slice(spec: &SynthSpec, i: usize) -> EndpointSlice {
    let svc = spec.service_name(i);
    let namespace = spec.namespace(i);
    // Half of the headless services name their endpoints (StatefulSet pods).
    let hostnames = spec.is_headless(i) && (i / spec.headless_every.max(1)) % 2 == 1;
    let pod_hash = mix(i as u64 ^ 0x5eed) as u32;
    let endpoints = (0..spec.endpoints_per_service)
        .map(|j| {
            let g = (i * spec.endpoints_per_service + j) as u64;
            let node = mix(g) % 1000;
            let pod = if hostnames {
                format!("{svc}-{j}")
            } else {
                format!("{svc}-{pod_hash:08x}-{:05x}", mix(g ^ 0xbeef) & 0xfffff)
            };
            Endpoint {
                addresses: pod_ip(spec, i, j).into(),
                hostname: hostnames.then(|| pod.as_str().into()),
                conditions: Conditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                },
                info: EndpointInfo {
                    node_name: Some(intern(&format!("node-{node:04}"))),
                    zone: Some(intern(&format!(
                        "zone-{}",
                        ["a", "b", "c"][node as usize % 3]
                    ))),
                    ..Default::default()
                }
                .shared(),
                target_name: Some(pod.into()),
            }
        })
        .collect();
    EndpointSlice {
        trigger_time: None,
        name: format!("{svc}-{:05x}", mix(i as u64 ^ 0x511ce) & 0xfffff),
        namespace,
        service_name: Some(svc),
        address_type: AddressType::IPv4,
        ports: spec
            .shape(i)
            .ports()
            .into_iter()
            .map(|(name, protocol, _, _, port)| EndpointPort {
                name: name.into(),
                protocol,
                port,
                app_protocol: None,
            })
            .collect(),
        endpoints,
    }
}

/// `slice` with endpoint `j`'s `ready` and `serving` conditions set to `ready`.
pub fn with_ready(slice: &EndpointSlice, j: usize, ready: bool) -> EndpointSlice {
    let mut s = slice.clone();
    s.endpoints[j].conditions.ready = Some(ready);
    s.endpoints[j].conditions.serving = Some(ready);
    s
}

/// `slice` with endpoint `j` moved to address `ip` (a replaced pod).
pub fn with_address(slice: &EndpointSlice, j: usize, ip: IpAddr) -> EndpointSlice {
    let mut s = slice.clone();
    s.endpoints[j].addresses = ip.into();
    s
}

/// `svc` with port `k` changed to `port`.
pub fn with_port(svc: &Service, k: usize, port: u16) -> Service {
    let mut s = svc.clone();
    s.ports[k].port = port;
    s
}

/// SplitMix64: a cheap, well-mixed, deterministic hash for per-object choices.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_cluster_compiles_to_expected_sizes() {
        for n in [1, 10, 100, 1000] {
            let spec = SynthSpec::new(n);
            let (_, snap) = SynthCluster::generate(&spec).build(TableConfig::default());
            assert_eq!(Expected::of(&snap), spec.expected(), "{n} services");
        }
    }

    #[test]
    fn addresses_are_unique_and_in_range() {
        let spec = SynthSpec::new(2000);
        let c = SynthCluster::generate(&spec);
        let mut seen = std::collections::HashSet::new();
        for s in &c.services {
            for ip in &s.cluster_ips {
                let o = match ip {
                    IpAddr::V4(v4) => v4.octets(),
                    _ => unreachable!(),
                };
                assert!(o[0] == 10 && (96..112).contains(&o[1]), "{ip}");
                assert!(seen.insert(*ip), "{ip} twice");
            }
        }
        for e in c.slices.iter().flat_map(|s| &s.endpoints) {
            let ip = e.addresses[0];
            assert!(ip < spare_pod_ip(0), "{ip} is not below the spare range");
            assert!(seen.insert(ip), "{ip} twice");
        }
        assert_eq!(seen.len(), spec.endpoints() + c.services.len() * 9 / 10);
    }
}
