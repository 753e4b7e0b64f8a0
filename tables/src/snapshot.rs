//! The compiled, immutable tables that DNS and the proxy read.
//!
//! A `Snapshot` is published whole through one `ArcSwap`, so DNS and proxy never see two
//! generations at once. Readers `load()` once per query or connection and keep that view.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crate::few::OneOrMany;
use crate::model::{
    Conditions, EndpointInfo, EndpointSlice, HttpRouteFilter, HttpRouteMatch, Kind, ObjectKey,
    PortRef, Protocol, Service, ServiceKey,
};
use crate::sharded::ShardedMap;

/// One published generation of every table.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Increases by one with every publish; also the SOA serial of the cluster zone.
    pub generation: u64,
    /// True once every source has delivered its first complete state.
    pub synced: bool,
    /// When the earliest source event folded into this generation was received (set by the
    /// controller on publish): consumers measure network-programming latency from here.
    pub received_at: Option<std::time::Instant>,
    pub dns: DnsTable,
    pub routes: RouteTable,
}

impl Snapshot {
    /// The empty snapshot published before any source has spoken.
    pub fn empty(cluster_domain: &str) -> Self {
        Snapshot {
            generation: 0,
            synced: false,
            received_at: None,
            dns: DnsTable {
                zone: normalize_name(cluster_domain).into(),
                names: ShardedMap::new(),
            },
            routes: RouteTable::default(),
        }
    }
}

/// A DNS record as the cluster zone serves it. Names are lower-case, absolute, without the
/// trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DnsRecord {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(Arc<str>),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: Arc<str>,
    },
    Ptr(Arc<str>),
    Txt(Arc<str>),
}

impl DnsRecord {
    pub fn type_name(&self) -> &'static str {
        match self {
            DnsRecord::A(_) => "A",
            DnsRecord::Aaaa(_) => "AAAA",
            DnsRecord::Cname(_) => "CNAME",
            DnsRecord::Srv { .. } => "SRV",
            DnsRecord::Ptr(_) => "PTR",
            DnsRecord::Txt(_) => "TXT",
        }
    }
}

/// Everything known at one DNS name. A name with no records still exists (an empty
/// non-terminal such as `default.svc.cluster.local`): it answers NODATA, not NXDOMAIN.
/// Stored inline in the name map, the one part of the common one-service name too.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DnsEntry {
    /// Records per contributing Service, sorted by service key (a PTR name can be shared by
    /// headless services selecting the same pod).
    pub parts: OneOrMany<(ServiceKey, Arc<[DnsRecord]>)>,
}

impl DnsEntry {
    pub fn records(&self) -> impl Iterator<Item = &DnsRecord> {
        self.parts.iter().flat_map(|(_, r)| r.iter())
    }
}

/// Names of the cluster zone and of the reverse zones for service and endpoint addresses.
#[derive(Clone, Debug)]
pub struct DnsTable {
    /// The cluster domain, e.g. `cluster.local`.
    pub zone: Arc<str>,
    pub names: ShardedMap<Arc<str>, DnsEntry>,
}

impl DnsTable {
    /// Looks up a name that is already lower-case and has no trailing dot.
    pub fn lookup(&self, name: &str) -> Option<&DnsEntry> {
        self.names.get(name)
    }
}

/// One endpoint of one service port, with what the balancers need to choose it (32 B: the
/// address and port apart, not a 32 B `SocketAddr`; the endpoint's node, zone and hints are a
/// block shared with the other endpoints of its node and by every port; its target stays in
/// the slice; docs/memory.md).
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointRoute {
    ip: IpAddr,
    port: u16,
    pub conditions: Conditions,
    pub endpoint: Arc<EndpointInfo>,
}

impl EndpointRoute {
    pub fn new(addr: SocketAddr, conditions: Conditions, endpoint: Arc<EndpointInfo>) -> Self {
        EndpointRoute {
            ip: addr.ip(),
            port: addr.port(),
            conditions,
            endpoint,
        }
    }

    /// The endpoint's address and the port of this route.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// One port of a service with its endpoints (targetPort already resolved per EndpointSlice).
#[derive(Clone, Debug, PartialEq)]
pub struct PortRoutes {
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: PortRef,
    pub node_port: Option<u16>,
    /// Every endpoint, ready or not, both address families; sorted by address. Choosing among
    /// them (ready first, serving+terminating as a fallback, topology) is the proxy's job.
    pub endpoints: Arc<[EndpointRoute]>,
}

/// A service as the proxies see it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRoutes {
    pub key: ServiceKey,
    pub service: Arc<Service>,
    pub ports: Vec<PortRoutes>,
    /// The latest `last-change-trigger-time` of the service's EndpointSlices, if any carries one.
    pub trigger_time: Option<std::time::SystemTime>,
    /// The EndpointSlices the routes were compiled from (the state's own blocks, shared): what
    /// the routes do not copy, such as each endpoint's target, for dumps.
    pub slices: Box<[Arc<EndpointSlice>]>,
}

impl ServiceRoutes {
    pub fn port_by_number(&self, port: u16) -> Option<&PortRoutes> {
        self.ports.iter().find(|p| p.port == port)
    }
    pub fn port_by_name(&self, name: &str) -> Option<&PortRoutes> {
        self.ports.iter().find(|p| &*p.name == name)
    }
}

/// How a packet addressed to a frontend reached it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FrontendKind {
    ClusterIp,
    ExternalIp,
    LoadBalancer,
    NodePort,
}

impl FrontendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::ExternalIp => "externalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
            FrontendKind::NodePort => "NodePort",
        }
    }
}

/// An L4 frontend: a virtual address, protocol and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub ip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

/// What a frontend leads to.
#[derive(Clone, Debug, PartialEq)]
pub struct FrontendTarget {
    pub kind: FrontendKind,
    pub service: Arc<ServiceRoutes>,
    /// Index into `service.ports`.
    pub port_index: usize,
}

impl FrontendTarget {
    pub fn port(&self) -> &PortRoutes {
        &self.service.ports[self.port_index]
    }
}

/// A backend of an HTTP rule: a service port, weighted.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpBackend {
    pub service: ServiceKey,
    /// Ingress may name the port; HTTPRoute gives a number.
    pub port: Option<PortRef>,
    pub weight: u32,
    /// False for an HTTPRoute backendRef into another namespace that no ReferenceGrant there
    /// allows: requests that pick it are answered 500, never sent to it.
    pub permitted: bool,
}

/// One HTTP routing rule, compiled from an Ingress path or an HTTPRoute rule.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpRule {
    /// The Ingress or HTTPRoute this came from.
    pub source: ObjectKey,
    /// Index of the rule within its source (HTTPRoute rule, or Ingress rule/path).
    pub rule_index: usize,
    /// Host names this rule serves (lower-case; `*.example.com` wildcards); empty = any host.
    pub hostnames: Vec<Arc<str>>,
    /// Any one of these must match; empty = match everything.
    pub matches: Vec<HttpRouteMatch>,
    pub filters: Vec<HttpRouteFilter>,
    pub backends: Vec<HttpBackend>,
    pub request_timeout_ms: Option<u64>,
    pub backend_request_timeout_ms: Option<u64>,
    /// Gateway listeners this rule is attached to (`namespace/gateway[/section][:port]`);
    /// empty for Ingress rules.
    pub attachments: Vec<Arc<str>>,
    /// The Gateway listener port this rule is served on; `None` for Ingress rules, served on
    /// the `--http` / `--https` listeners. An HTTPRoute attached to listeners of several ports
    /// has one copy of each rule per port, each with the hostnames of that port's listeners.
    pub port: Option<u16>,
    /// The Ingress `defaultBackend`: used only when no other rule matches.
    pub is_default: bool,
    /// The source's `switchboard.dev/lb-algorithm` annotation, if any.
    pub lb_algorithm: Option<Arc<str>>,
    /// The source's `metadata.creationTimestamp` (RFC 3339): older wins precedence ties.
    pub created: Option<Arc<str>>,
}

/// All HTTP rules of the Ingresses of our class and the HTTPRoutes attached to our Gateways.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HttpTable {
    pub rules: Vec<HttpRule>,
    /// The HTTP and HTTPS listeners of our Gateways, by port: where the proxy opens sockets.
    pub listeners: Vec<GatewayPort>,
    /// Objects that were skipped and why (wrong class, unattached, invalid), for `/debug/tables`.
    pub ignored: Vec<(ObjectKey, String)>,
}

impl HttpTable {
    pub fn source_kinds() -> [Kind; 7] {
        [
            Kind::Ingress,
            Kind::HttpRoute,
            Kind::Gateway,
            Kind::GatewayClass,
            Kind::Secret,
            Kind::ReferenceGrant,
            Kind::Namespace,
        ]
    }
}

/// One HTTP or HTTPS listener of a Gateway of ours: the port the proxy opens for it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GatewayPort {
    pub port: u16,
    /// HTTPS (TLS terminated here) rather than HTTP.
    pub tls: bool,
    /// `namespace/name` of the Gateway, and the listener's name.
    pub gateway: Arc<str>,
    pub listener: Arc<str>,
}

/// A certificate to serve for some SNI names.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsCert {
    /// Lower-case SNI names (`*.example.com` wildcards); empty = the default certificate, for
    /// clients that send no SNI or a name no other certificate covers.
    pub hostnames: Vec<Arc<str>>,
    /// The Secret (`namespace/name`) and who referenced it (`Ingress ns/name`, `Gateway ns/name`).
    pub secret: ObjectKey,
    pub referenced_by: ObjectKey,
    pub cert_pem: Arc<[u8]>,
    pub key_pem: Arc<[u8]>,
}

/// Certificates for the HTTPS listeners, from Ingress `tls` entries and Gateway HTTPS listeners.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsTable {
    pub certs: Vec<TlsCert>,
    /// References to Secrets that do not exist (or are not `kubernetes.io/tls`), and who made them.
    pub missing: Vec<(ObjectKey, ObjectKey)>,
}

/// Routing tables for the L4 and L7 proxies.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    pub services: ShardedMap<ServiceKey, Arc<ServiceRoutes>>,
    /// ClusterIP, externalIP and LoadBalancer frontends.
    pub frontends: ShardedMap<Frontend, FrontendTarget>,
    /// NodePorts by protocol and port, valid on every node address.
    pub node_ports: ShardedMap<(Protocol, u16), FrontendTarget>,
    pub http: Arc<HttpTable>,
    pub tls: Arc<TlsTable>,
}

impl RouteTable {
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<ServiceRoutes>> {
        self.services.get(&ServiceKey::new(namespace, name))
    }
}

/// Lower-cases a DNS name and strips a trailing dot.
pub fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The reverse-lookup name of an address (`4.3.2.1.in-addr.arpa`, nibbles for IPv6).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for b in v6.octets().iter().rev() {
                use std::fmt::Write;
                let _ = write!(s, "{:x}.{:x}.", b & 0xf, b >> 4);
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name("10.0.0.1".parse().unwrap()),
            "1.0.0.10.in-addr.arpa"
        );
        assert_eq!(
            reverse_name("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }
}
