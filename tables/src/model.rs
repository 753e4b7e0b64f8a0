//! Slim copies of the Kubernetes objects the data plane reads.
//!
//! Only the fields that DNS, L4 or L7 routing use are kept (CoreDNS keeps slim objects for the
//! same memory reason: at 100,000 endpoints the full API objects cost gigabytes). Conversion from
//! API types happens in `controller`; nothing here knows about kube, hickory or pingora.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::intern::intern;

/// The kinds of object the tables are built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Ingress,
    HttpRoute,
    Gateway,
    GatewayClass,
    /// Only `kubernetes.io/tls` Secrets.
    Secret,
    /// `gateway.networking.k8s.io/v1beta1`: allows cross-namespace references.
    ReferenceGrant,
    /// Labels, for listener `allowedRoutes` selectors.
    Namespace,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Ingress,
        Kind::HttpRoute,
        Kind::Gateway,
        Kind::GatewayClass,
        Kind::Secret,
        Kind::ReferenceGrant,
        Kind::Namespace,
    ];

    /// The Kubernetes `kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Ingress => "Ingress",
            Kind::HttpRoute => "HTTPRoute",
            Kind::Gateway => "Gateway",
            Kind::GatewayClass => "GatewayClass",
            Kind::Secret => "Secret",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::Namespace => "Namespace",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of one object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectKey {
    /// Namespace and name are interned (`crate::intern`): the state, the manifest source and
    /// the compiled tables each keep keys of the same objects, and every copy then shares one
    /// string (docs/memory.md).
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        ObjectKey {
            kind,
            namespace: intern(namespace),
            name: intern(name),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A Service by namespace and name: the unit of incremental compilation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceKey {
    /// Interned as `ObjectKey::new`: a Service's key and its object's share their strings.
    pub fn new(namespace: &str, name: &str) -> Self {
        ServiceKey {
            namespace: intern(namespace),
            name: intern(name),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Any object the tables accept.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    /// In its own block, shared with the compiled routes (`ServiceRoutes::service`).
    Service(Arc<Service>),
    EndpointSlice(EndpointSlice),
    Ingress(Ingress),
    HttpRoute(HttpRoute),
    Gateway(Gateway),
    GatewayClass(GatewayClass),
    Secret(TlsSecret),
    ReferenceGrant(crate::grants::ReferenceGrant),
    Namespace(Namespace),
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        let (kind, ns, name) = match self {
            Object::Service(o) => (Kind::Service, &o.namespace, &o.name),
            Object::EndpointSlice(o) => (Kind::EndpointSlice, &o.namespace, &o.name),
            Object::Ingress(o) => (Kind::Ingress, &o.namespace, &o.name),
            Object::HttpRoute(o) => (Kind::HttpRoute, &o.namespace, &o.name),
            Object::Gateway(o) => (Kind::Gateway, &o.namespace, &o.name),
            Object::GatewayClass(o) => (Kind::GatewayClass, &String::new(), &o.name),
            Object::Secret(o) => (Kind::Secret, &o.namespace, &o.name),
            Object::ReferenceGrant(o) => (Kind::ReferenceGrant, &o.namespace, &o.name),
            Object::Namespace(o) => (Kind::Namespace, &String::new(), &o.name),
        };
        ObjectKey::new(kind, ns, name)
    }

    pub fn kind(&self) -> Kind {
        self.key().kind
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
    /// The lower-case label used in SRV names (`_http._tcp`).
    pub fn srv_label(self) -> &'static str {
        match self {
            Protocol::Tcp => "_tcp",
            Protocol::Udp => "_udp",
            Protocol::Sctp => "_sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ServiceType {
    #[default]
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIp => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName => "ExternalName",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

impl TrafficPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficPolicy::Cluster => "Cluster",
            TrafficPolicy::Local => "Local",
        }
    }
}

/// `spec.trafficDistribution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficDistribution {
    /// `PreferClose` (an alias of `PreferSameZone` since Kubernetes 1.34).
    PreferClose,
    PreferSameZone,
    PreferSameNode,
}

impl TrafficDistribution {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficDistribution::PreferClose => "PreferClose",
            TrafficDistribution::PreferSameZone => "PreferSameZone",
            TrafficDistribution::PreferSameNode => "PreferSameNode",
        }
    }
}

/// `spec.ports[].targetPort`: a number, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(s) => f.write_str(s),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServicePort {
    /// Empty for the single unnamed port a Service may have.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: PortRef,
    pub node_port: Option<u16>,
    pub app_protocol: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub service_type: ServiceType,
    /// `spec.clusterIPs` (both families for dual-stack). Empty for headless and ExternalName.
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.clusterIP: None`.
    pub headless: bool,
    pub ports: Vec<ServicePort>,
    pub external_name: Option<String>,
    /// `sessionAffinity: ClientIP` with its `timeoutSeconds` (default 10800); `None` for `None`.
    pub session_affinity_timeout: Option<u32>,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    pub traffic_distribution: Option<TrafficDistribution>,
    pub publish_not_ready_addresses: bool,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`: when set, traffic to the LoadBalancer IPs from other
    /// sources is dropped.
    pub load_balancer_source_ranges: Vec<ipnet::IpNet>,
    pub health_check_node_port: Option<u16>,
    /// Only annotations under `switchboard.dev/` are kept.
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressType {
    IPv4,
    IPv6,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EndpointPort {
    /// Matches `ServicePort::name` (empty for the unnamed port).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub app_protocol: Option<String>,
}

/// `endpoints[].conditions`; `None` means the field was absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Conditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

impl Conditions {
    /// Ready as the API defines it: absent means ready.
    pub fn is_ready(&self) -> bool {
        self.ready.unwrap_or(true)
    }
    /// Serving: absent means the same as ready.
    pub fn is_serving(&self) -> bool {
        self.serving.unwrap_or_else(|| self.is_ready())
    }
    pub fn is_terminating(&self) -> bool {
        self.terminating.unwrap_or(false)
    }
}

/// `endpoints[].addresses`: almost always one address, kept inline; reads as a slice.
pub type Addresses = crate::few::OneOrMany<IpAddr>;

/// `endpoints[].hints`: absent in most clusters, so both lists live in one optional block.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Hints {
    pub for_zones: Box<[Arc<str>]>,
    pub for_nodes: Box<[Arc<str>]>,
}

/// What the routes of an endpoint read besides its address and conditions: its node, zone
/// and hints. One block shared by every endpoint with the same three (`crate::intern::
/// intern_info`: the endpoints of a node share it), by the object and by the compiled route of
/// every port of its service (`EndpointRoute::endpoint`). Node names, zones and hints are
/// interned strings too (docs/memory.md).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct EndpointInfo {
    pub node_name: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    /// `None` when the endpoint has no hints (or only empty lists).
    pub hints: Option<Box<Hints>>,
}

impl EndpointInfo {
    /// The shared copy of this information (`crate::intern::intern_info`).
    pub fn shared(self) -> Arc<EndpointInfo> {
        crate::intern::intern_info(self)
    }

    /// `hints.forZones` names (empty when absent).
    pub fn hints_for_zones(&self) -> &[Arc<str>] {
        self.hints.as_ref().map_or(&[], |h| &h.for_zones)
    }

    /// `hints.forNodes` names (empty when absent).
    pub fn hints_for_nodes(&self) -> &[Arc<str>] {
        self.hints.as_ref().map_or(&[], |h| &h.for_nodes)
    }
}

/// One entry of `endpoints[]` (72 B, its target name and a block shared with the other
/// endpoints of its node; docs/memory.md).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Endpoint {
    pub addresses: Addresses,
    pub hostname: Option<Box<str>>,
    pub conditions: Conditions,
    /// Node, zone and hints: build it with `EndpointInfo::shared`.
    pub info: Arc<EndpointInfo>,
    /// `targetRef.name` (the pod), for logs, checks and dumps. The reference's kind and
    /// namespace are not kept: no table reads them.
    pub target_name: Option<Box<str>>,
}

impl Endpoint {
    /// The `targetRef` name (the pod).
    pub fn target(&self) -> Option<&str> {
        self.target_name.as_deref()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    /// The `kubernetes.io/service-name` label; slices without it belong to no Service.
    pub service_name: Option<String>,
    pub address_type: AddressType,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
    /// The `endpoints.kubernetes.io/last-change-trigger-time` annotation: when the change this
    /// version carries was triggered (a Pod became ready, ...), for network programming latency.
    pub trigger_time: Option<std::time::SystemTime>,
}

// ---- Ingress (networking.k8s.io/v1) ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngressPathType {
    Exact,
    Prefix,
    ImplementationSpecific,
}

#[derive(Clone, Debug, PartialEq)]
pub struct IngressBackend {
    pub service: String,
    pub port: PortRef,
}

#[derive(Clone, Debug, PartialEq)]
pub struct IngressPath {
    pub path: String,
    pub path_type: IngressPathType,
    pub backend: IngressBackend,
}

#[derive(Clone, Debug, PartialEq)]
pub struct IngressRule {
    pub host: Option<String>,
    pub paths: Vec<IngressPath>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct IngressTls {
    pub hosts: Vec<String>,
    pub secret_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Ingress {
    pub namespace: String,
    pub name: String,
    pub class_name: Option<String>,
    pub default_backend: Option<IngressBackend>,
    pub rules: Vec<IngressRule>,
    pub tls: Vec<IngressTls>,
    /// Only annotations under `switchboard.dev/` are kept.
    pub annotations: BTreeMap<String, String>,
    /// `metadata.creationTimestamp` (RFC 3339), for precedence ties.
    pub created: Option<String>,
}

// ---- Gateway API (gateway.networking.k8s.io/v1) ----

#[derive(Clone, Debug, PartialEq, Default)]
pub struct GatewayClass {
    pub name: String,
    pub controller_name: String,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct GatewayListener {
    pub name: String,
    pub hostname: Option<String>,
    pub port: u16,
    pub protocol: String,
    /// `tls.certificateRefs[]` as (namespace, name) of Secrets.
    pub certificate_refs: Vec<(String, String)>,
    /// `allowedRoutes.namespaces.from`.
    pub allowed_namespaces: RouteNamespaces,
    /// Whether `allowedRoutes.kinds` admits HTTPRoute (an empty list does, for HTTP and HTTPS).
    pub allows_http_route: bool,
}

/// Which namespaces' routes a Gateway listener accepts (`allowedRoutes.namespaces.from`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum RouteNamespaces {
    /// The Gateway's own namespace (the Gateway API default).
    #[default]
    Same,
    All,
    /// Namespaces whose labels match (`from: Selector`).
    Selector(LabelSelector),
    /// A `from` value this version does not know: admits nothing.
    None,
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`, all must hold).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    /// (key, operator `In`/`NotIn`/`Exists`/`DoesNotExist`, values).
    pub match_expressions: Vec<(String, String, Vec<String>)>,
}

impl LabelSelector {
    /// Whether `labels` satisfy the selector; an unknown operator matches nothing.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|(k, op, values)| {
                let value = labels.get(k);
                match op.as_str() {
                    "In" => value.is_some_and(|v| values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

/// A Namespace: only its labels matter (listener `allowedRoutes` selectors).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Gateway {
    pub namespace: String,
    pub name: String,
    pub class_name: String,
    pub listeners: Vec<GatewayListener>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct ParentRef {
    pub namespace: Option<String>,
    pub name: String,
    pub section_name: Option<String>,
    pub port: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathMatchType {
    Exact,
    PathPrefix,
    RegularExpression,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueMatchType {
    Exact,
    RegularExpression,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PathMatch {
    pub match_type: PathMatchType,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ValueMatch {
    pub match_type: ValueMatchType,
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct HttpRouteMatch {
    pub path: Option<PathMatch>,
    pub headers: Vec<ValueMatch>,
    pub query_params: Vec<ValueMatch>,
    pub method: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct HeaderModifier {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PathModifier {
    ReplaceFullPath(String),
    ReplacePrefixMatch(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum HttpRouteFilter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestRedirect {
        scheme: Option<String>,
        hostname: Option<String>,
        path: Option<PathModifier>,
        port: Option<u16>,
        status_code: u16,
    },
    UrlRewrite {
        hostname: Option<String>,
        path: Option<PathModifier>,
    },
    /// A filter type this data plane does not implement (kept so the rule can be refused).
    Unsupported(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct BackendRef {
    pub namespace: Option<String>,
    pub name: String,
    pub port: Option<u16>,
    pub weight: u32,
    /// `group`/`kind` other than core Service.
    pub unsupported_kind: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct HttpRouteRule {
    pub matches: Vec<HttpRouteMatch>,
    pub filters: Vec<HttpRouteFilter>,
    pub backend_refs: Vec<BackendRef>,
    /// `timeouts.request` / `timeouts.backendRequest` in milliseconds.
    pub request_timeout_ms: Option<u64>,
    pub backend_request_timeout_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct HttpRoute {
    pub namespace: String,
    pub name: String,
    /// Only annotations under `switchboard.dev/` are kept.
    pub annotations: BTreeMap<String, String>,
    /// `metadata.creationTimestamp` (RFC 3339), for precedence ties.
    pub created: Option<String>,
    pub parent_refs: Vec<ParentRef>,
    pub hostnames: Vec<String>,
    pub rules: Vec<HttpRouteRule>,
}

/// A `kubernetes.io/tls` Secret: PEM certificate chain and private key.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct TlsSecret {
    pub namespace: String,
    pub name: String,
    pub cert_pem: Arc<[u8]>,
    pub key_pem: Arc<[u8]>,
}

impl fmt::Debug for TlsSecret {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSecret")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("cert_pem_len", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}
