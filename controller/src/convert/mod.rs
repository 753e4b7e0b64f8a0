//! API objects → the slim model. One module serves both sources (watched API and manifest
//! directory), so both are validated the same way and tested by the same cases.
//!
//! Every error names the field at fault (`spec.ports[1].port: 70000 is not a port`), so a user
//! can find it in their YAML.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tables::intern::intern;
use tables::model as m;

use crate::gateway_api as gw;

mod fields;
mod http;

pub use fields::*;
pub use http::*;

/// A field of an object that cannot be turned into the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConvertError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConvertError {
    ConvertError {
        field: field.into(),
        message: message.into(),
    }
}

type Result<T> = std::result::Result<T, ConvertError>;

/// Kinds of API object we read, typed.
#[derive(Clone, Debug)]
pub enum ApiObject {
    Service(Box<core::Service>),
    EndpointSlice(Box<discovery::EndpointSlice>),
    Ingress(Box<networking::Ingress>),
    HttpRoute(Box<gw::HttpRoute>),
    Gateway(Box<gw::Gateway>),
    GatewayClass(Box<gw::GatewayClass>),
    /// Only `kubernetes.io/tls` Secrets are read (see `is_tls_secret`).
    Secret(Box<core::Secret>),
    ReferenceGrant(Box<gw::ReferenceGrant>),
    Namespace(Box<core::Namespace>),
}

impl ApiObject {
    /// The object's metadata, whatever its kind.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            ApiObject::Service(o) => &o.metadata,
            ApiObject::EndpointSlice(o) => &o.metadata,
            ApiObject::Ingress(o) => &o.metadata,
            ApiObject::HttpRoute(o) => &o.metadata,
            ApiObject::Gateway(o) => &o.metadata,
            ApiObject::GatewayClass(o) => &o.metadata,
            ApiObject::Secret(o) => &o.metadata,
            ApiObject::ReferenceGrant(o) => &o.metadata,
            ApiObject::Namespace(o) => &o.metadata,
        }
    }
}

/// Converts any supported object. `default_namespace` fills an absent `metadata.namespace`
/// (as `kubectl apply` does for manifests).
pub fn convert(obj: &ApiObject, default_namespace: &str) -> Result<m::Object> {
    Ok(match obj {
        ApiObject::Service(o) => m::Object::Service(service(o, default_namespace)?),
        ApiObject::EndpointSlice(o) => {
            m::Object::EndpointSlice(endpoint_slice(o, default_namespace)?)
        }
        ApiObject::Ingress(o) => m::Object::Ingress(ingress(o, default_namespace)?),
        ApiObject::HttpRoute(o) => m::Object::HttpRoute(http_route(o, default_namespace)?),
        ApiObject::Gateway(o) => m::Object::Gateway(gateway(o, default_namespace)?),
        ApiObject::GatewayClass(o) => m::Object::GatewayClass(gateway_class(o)?),
        ApiObject::Secret(o) => m::Object::Secret(tls_secret(o, default_namespace)?),
        ApiObject::ReferenceGrant(o) => {
            m::Object::ReferenceGrant(reference_grant(o, default_namespace)?)
        }
        ApiObject::Namespace(o) => m::Object::Namespace(namespace(o)?),
    })
}

fn meta(meta: &ObjectMeta, default_namespace: &str) -> Result<(String, String)> {
    name_and_namespace(
        meta.name.as_deref(),
        meta.namespace.as_deref(),
        default_namespace,
    )
}

fn names(meta: &Meta, default_namespace: &str) -> Result<(String, String)> {
    name_and_namespace(meta.name, meta.namespace, default_namespace)
}

/// `(namespace, name)`: the name is required, an empty or absent namespace is
/// `default_namespace`.
fn name_and_namespace(
    name: Option<&str>,
    namespace: Option<&str>,
    default_namespace: &str,
) -> Result<(String, String)> {
    let name = name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err("metadata.name", "is required"))?;
    let ns = namespace
        .filter(|n| !n.is_empty())
        .unwrap_or(default_namespace);
    Ok((ns.to_string(), name.to_string()))
}

/// The annotations under `switchboard.dev/`, the only ones the model keeps.
fn is_ours(key: &str) -> bool {
    key.starts_with("switchboard.dev/")
}

fn our_annotations(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.annotations
        .iter()
        .flatten()
        .filter(|(k, _)| is_ours(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn annotations_of(meta: &Meta) -> BTreeMap<String, String> {
    meta.annotations
        .iter()
        .filter(|(k, _)| is_ours(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn created(meta: &ObjectMeta) -> Option<String> {
    meta.creation_timestamp
        .as_ref()
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().map(str::to_string))
}

/// The name of a field, for an error: a string, or a closure that formats it
/// (`spec.ports[3].port`) only when there is an error. At 100,000 endpoints, the names formatted
/// for every valid address and port were about a tenth of the conversion's CPU.
trait FieldName {
    fn name(self) -> String;
}

impl FieldName for &str {
    fn name(self) -> String {
        self.to_string()
    }
}

impl FieldName for &String {
    fn name(self) -> String {
        self.clone()
    }
}

impl<F: FnOnce() -> String> FieldName for F {
    fn name(self) -> String {
        self()
    }
}

fn ip(field: impl FieldName, s: &str) -> Result<IpAddr> {
    s.parse()
        .map_err(|_| err(field.name(), format!("{s:?} is not an IP address")))
}

fn port(field: impl FieldName, p: i32) -> Result<u16> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| err(field.name(), format!("{p} is not a port (1-65535)")))
}

fn protocol(field: impl FieldName, p: Option<&str>) -> Result<m::Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(m::Protocol::Tcp),
        "UDP" => Ok(m::Protocol::Udp),
        "SCTP" => Ok(m::Protocol::Sctp),
        other => Err(err(field.name(), format!("unknown protocol {other:?}"))),
    }
}

fn policy(field: &str, p: Option<&str>) -> Result<m::TrafficPolicy> {
    match p {
        None | Some("Cluster") => Ok(m::TrafficPolicy::Cluster),
        Some("Local") => Ok(m::TrafficPolicy::Local),
        Some(other) => Err(err(field, format!("unknown traffic policy {other:?}"))),
    }
}

/// v1 Service, in its own block: the state's object and the compiled routes share it.
pub fn service(svc: &core::Service, default_namespace: &str) -> Result<Arc<m::Service>> {
    service_of(&ServiceFields::of(svc), default_namespace)
}

/// A Service from its fields, whatever they were read from (k8s-openapi or protobuf).
pub fn service_of(spec: &ServiceFields, default_namespace: &str) -> Result<Arc<m::Service>> {
    let (namespace, name) = names(&spec.meta, default_namespace)?;
    let service_type = match spec.type_ {
        None | Some("ClusterIP") => m::ServiceType::ClusterIp,
        Some("NodePort") => m::ServiceType::NodePort,
        Some("LoadBalancer") => m::ServiceType::LoadBalancer,
        Some("ExternalName") => m::ServiceType::ExternalName,
        Some(other) => return Err(err("spec.type", format!("unknown service type {other:?}"))),
    };
    // `clusterIP` wins over a `clusterIPs[0]` that disagrees (see `cluster_ip_mismatch`).
    let primary = spec.cluster_ip.filter(|s| !s.is_empty());
    let listed = &spec.cluster_ips;
    let headless = primary.or(listed.first().copied()) == Some("None");
    // Every list is allocated at its length (here and in `endpoint_slice`): a `Vec` grown by
    // `push` keeps up to twice the room, and these live as long as the object (docs/memory.md).
    let mut cluster_ips = Vec::with_capacity(listed.len().max(usize::from(primary.is_some())));
    if service_type != m::ServiceType::ExternalName && !headless {
        let rest = match primary {
            Some(s) => {
                cluster_ips.push(ip("spec.clusterIP", s)?);
                1
            }
            None => 0,
        };
        for (i, s) in listed.iter().enumerate().skip(rest) {
            if *s != "None" {
                cluster_ips.push(ip(|| format!("spec.clusterIPs[{i}]"), s)?);
            }
        }
    }
    let mut ports = Vec::with_capacity(spec.ports.len());
    for (i, p) in spec.ports.iter().enumerate() {
        let f = |n: &str| format!("spec.ports[{i}].{n}");
        let number = port(|| f("port"), p.port)?;
        let target_port = match p.target_port {
            None => m::PortRef::Number(number),
            Some(TargetPort::Number(n)) => m::PortRef::Number(port(|| f("targetPort"), n)?),
            Some(TargetPort::Name(s)) => match s.parse::<i32>() {
                Ok(n) => m::PortRef::Number(port(|| f("targetPort"), n)?),
                Err(_) => m::PortRef::Name(s.to_string()),
            },
        };
        ports.push(m::ServicePort {
            name: p.name.unwrap_or_default().to_string(),
            protocol: protocol(|| f("protocol"), p.protocol)?,
            port: number,
            target_port,
            node_port: p.node_port.map(|n| port(|| f("nodePort"), n)).transpose()?,
            app_protocol: p.app_protocol.map(str::to_string),
        });
    }
    let session_affinity_timeout = match spec.session_affinity {
        None | Some("None") => None,
        Some("ClientIP") => Some(
            spec.session_affinity_timeout
                .map(|t| {
                    u32::try_from(t)
                        .ok()
                        .filter(|t| *t > 0 && *t <= 86400)
                        .ok_or_else(|| {
                            err(
                                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                                format!("{t} is not within 1..86400"),
                            )
                        })
                })
                .transpose()?
                .unwrap_or(10800),
        ),
        Some(other) => {
            return Err(err(
                "spec.sessionAffinity",
                format!("unknown session affinity {other:?}"),
            ))
        }
    };
    let traffic_distribution = match spec.traffic_distribution {
        None => None,
        Some("PreferClose") => Some(m::TrafficDistribution::PreferClose),
        Some("PreferSameZone") => Some(m::TrafficDistribution::PreferSameZone),
        Some("PreferSameNode") => Some(m::TrafficDistribution::PreferSameNode),
        // Unknown values are ignored by kube-proxy too (forward compatibility).
        Some(_) => None,
    };
    let mut external_ips = Vec::with_capacity(spec.external_ips.len());
    for (i, s) in spec.external_ips.iter().enumerate() {
        external_ips.push(ip(|| format!("spec.externalIPs[{i}]"), s)?);
    }
    let mut load_balancer_ips = Vec::new();
    for (i, s) in spec.load_balancer_ingress_ips.iter().enumerate() {
        if let Some(s) = s {
            load_balancer_ips.push(ip(|| format!("status.loadBalancer.ingress[{i}].ip"), s)?);
        }
    }
    let mut load_balancer_source_ranges = Vec::new();
    for (i, s) in spec.load_balancer_source_ranges.iter().enumerate() {
        let net = s.trim().parse::<ipnet::IpNet>().map_err(|_| {
            err(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("{s:?} is not a CIDR"),
            )
        })?;
        load_balancer_source_ranges.push(net.trunc());
    }
    cluster_ips.shrink_to_fit();
    load_balancer_ips.shrink_to_fit();
    load_balancer_source_ranges.shrink_to_fit();
    let external_name = if service_type == m::ServiceType::ExternalName {
        Some(
            spec.external_name
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .ok_or_else(|| err("spec.externalName", "is required for type ExternalName"))?,
        )
    } else {
        None
    };
    Ok(Arc::new(m::Service {
        namespace,
        name,
        service_type,
        cluster_ips,
        headless,
        ports,
        external_name,
        session_affinity_timeout,
        external_traffic_policy: policy(
            "spec.externalTrafficPolicy",
            spec.external_traffic_policy,
        )?,
        internal_traffic_policy: policy(
            "spec.internalTrafficPolicy",
            spec.internal_traffic_policy,
        )?,
        traffic_distribution,
        publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
        external_ips,
        load_balancer_ips,
        load_balancer_source_ranges,
        health_check_node_port: spec
            .health_check_node_port
            .map(|p| port("spec.healthCheckNodePort", p))
            .transpose()?,
        annotations: annotations_of(&spec.meta),
    }))
}

/// `spec.clusterIP` and `spec.clusterIPs[0]` when both are set and differ. An API server refuses
/// such a Service, but a manifest can say it, typically after an edit of one of the two: the
/// demo's Services set both, and changing only `clusterIP` used to be ignored without a word
/// (#18). `clusterIP` wins, followed by the rest of `clusterIPs`; [`warnings`] says so.
fn cluster_ip_mismatch(spec: &core::ServiceSpec) -> Option<(&str, &str)> {
    let primary = spec.cluster_ip.as_deref().filter(|s| !s.is_empty())?;
    let first = spec.cluster_ips.as_ref()?.first()?.as_str();
    (primary != first).then_some((primary, first))
}

/// What an object that converts says that is not served as it reads (the field at fault and
/// why); the manifest source logs these and `switchboard check` lists them. Empty for almost
/// every object.
pub fn warnings(obj: &ApiObject) -> Vec<ConvertError> {
    let mut out = Vec::new();
    if let ApiObject::Service(svc) = obj {
        if let Some((primary, first)) = svc.spec.as_ref().and_then(cluster_ip_mismatch) {
            out.push(err(
                "spec.clusterIP",
                format!(
                    "{primary} differs from spec.clusterIPs[0] {first} (an API server refuses \
                     this); serving {primary}: update spec.clusterIPs to match"
                ),
            ));
        }
    }
    out
}

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// discovery.k8s.io/v1 EndpointSlice. FQDN slices are rejected (kube-proxy ignores them too).
pub fn endpoint_slice(
    slice: &discovery::EndpointSlice,
    default_namespace: &str,
) -> Result<m::EndpointSlice> {
    endpoint_slice_of(&EndpointSliceFields::of(slice), default_namespace)
}

/// An EndpointSlice from its fields, whatever they were read from (k8s-openapi or protobuf).
pub fn endpoint_slice_of(
    slice: &EndpointSliceFields,
    default_namespace: &str,
) -> Result<m::EndpointSlice> {
    let (namespace, name) = names(&slice.meta, default_namespace)?;
    let address_type = match slice.address_type {
        "IPv4" => m::AddressType::IPv4,
        "IPv6" => m::AddressType::IPv6,
        other => {
            return Err(err(
                "addressType",
                format!("{other:?} is not supported (IPv4 or IPv6)"),
            ))
        }
    };
    let mut ports = Vec::with_capacity(slice.ports.len());
    for (i, p) in slice.ports.iter().enumerate() {
        // A port without a number means "all ports"; it is only valid with no endpoints.
        let Some(n) = p.port else { continue };
        ports.push(m::EndpointPort {
            name: p.name.unwrap_or_default().to_string(),
            protocol: protocol(|| format!("ports[{i}].protocol"), p.protocol)?,
            port: port(|| format!("ports[{i}].port"), n)?,
            app_protocol: p.app_protocol.map(str::to_string),
        });
    }
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for (i, e) in slice.endpoints.iter().enumerate() {
        let mut addresses = Vec::with_capacity(e.addresses.len());
        for (j, a) in e.addresses.iter().enumerate() {
            let addr = ip(|| format!("endpoints[{i}].addresses[{j}]"), a)?;
            let family_ok = match address_type {
                m::AddressType::IPv4 => addr.is_ipv4(),
                m::AddressType::IPv6 => addr.is_ipv6(),
            };
            if !family_ok {
                return Err(err(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!("{a} does not match addressType {}", slice.address_type),
                ));
            }
            addresses.push(addr);
        }
        // Node, zone, hints, target kind and namespace repeat across thousands of endpoints:
        // one shared copy each (docs/memory.md).
        endpoints.push(m::Endpoint {
            addresses: addresses.into(),
            hostname: e.hostname.map(Into::into),
            conditions: m::Conditions {
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
            },
            info: m::EndpointInfo {
                node_name: e.node_name.map(intern),
                zone: e.zone.map(intern),
                hints: endpoint_hints(&e.hint_zones, &e.hint_nodes),
            }
            .shared(),
            target_name: e.target_name.map(Into::into),
        });
    }
    Ok(m::EndpointSlice {
        service_name: slice.meta.label(SERVICE_NAME_LABEL).map(str::to_string),
        namespace,
        name,
        address_type,
        ports,
        endpoints,
        // Unparsable times are ignored, as kube-proxy does.
        trigger_time: slice
            .meta
            .annotation(TRIGGER_TIME_ANNOTATION)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(std::time::SystemTime::from),
    })
}

/// An endpoint's hints, interned, in one block; `None` when both lists are empty.
fn endpoint_hints(for_zones: &[&str], for_nodes: &[&str]) -> Option<Box<m::Hints>> {
    let h = m::Hints {
        for_zones: for_zones.iter().copied().map(intern).collect(),
        for_nodes: for_nodes.iter().copied().map(intern).collect(),
    };
    (!h.for_zones.is_empty() || !h.for_nodes.is_empty()).then(|| Box::new(h))
}

/// Set by the EndpointSlice controller: when the change a slice carries was triggered.
const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
