//! Protobuf lists of Services and EndpointSlices: the kube-apiserver wire envelope, decoded with
//! kube-rs's prost types (`k8s-pb`), and each item moved into the k8s-openapi shape that
//! [`crate::convert`] reads.
//!
//! kube-apiserver answers a request with `Accept: application/vnd.kubernetes.protobuf` with the
//! 4 bytes `k8s\0` followed by a `runtime.Unknown` message whose `raw` field holds the object
//! (here the `ServiceList` / `EndpointSliceList`), and `Content-Type:
//! application/vnd.kubernetes.protobuf`; errors are a `metav1.Status` in the same envelope. At
//! 10k Services / 100k endpoints the two lists are 6.3 MB and 14 MB instead of 10 MB and 29 MB
//! of JSON, and cheaper for the API server to encode (docs/sources.md).
//!
//! Each item becomes a k8s-openapi object holding only the fields `convert::service` and
//! `convert::endpoint_slice` read, by moving the decoded strings, not copying them; the same
//! conversion then validates both encodings. Fields that Go declares as values, not pointers
//! (`nodePort`, `clusterIP`, `externalName`, ...), are written in protobuf even when empty, where
//! the JSON leaves them out: `""` and `0` read as absent there. The decoded list is consumed item by item, so
//! neither it nor the intermediate objects outlive the conversion.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_pb::api::core::v1 as pb_core;
use k8s_pb::api::discovery::v1 as pb_discovery;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as pb_meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;

/// The protobuf media type of kube-apiserver.
pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// The `Accept` header of the protobuf lists: protobuf first, JSON where the server has no
/// protobuf (as client-go's `ContentConfig{AcceptContentTypes: "application/vnd.kubernetes.protobuf,
/// application/json"}` and CoreDNS ask). A server that cannot encode the kind in protobuf (an
/// aggregated API, a proxy) answers JSON, which is read as such.
pub const ACCEPT: &str = "application/vnd.kubernetes.protobuf, application/json";

/// The first bytes of every protobuf body kube-apiserver writes.
const MAGIC: &[u8; 4] = b"k8s\0";

/// Why a protobuf body could not be read. The list is then read again as JSON.
#[derive(Debug, thiserror::Error)]
pub enum PbError {
    #[error("the body ({0} bytes) does not start with the protobuf magic k8s\\0")]
    BadMagic(usize),
    #[error("cannot decode the runtime.Unknown envelope: {0}")]
    Envelope(prost::DecodeError),
    #[error("the envelope holds no object")]
    NoRaw,
    #[error("the envelope's content encoding {0:?} is not supported")]
    Encoding(String),
    #[error("the envelope holds a {found}, not a {expected}")]
    WrongKind {
        found: String,
        expected: &'static str,
    },
    #[error("cannot decode the {kind}: {error}")]
    Decode {
        kind: &'static str,
        error: prost::DecodeError,
    },
}

/// The object inside a protobuf body: `(kind, raw bytes)`.
fn unwrap_envelope(body: &[u8]) -> Result<(String, Vec<u8>), PbError> {
    let rest = body
        .strip_prefix(MAGIC.as_slice())
        .ok_or(PbError::BadMagic(body.len()))?;
    let unknown = Unknown::decode(rest).map_err(PbError::Envelope)?;
    if let Some(e) = unknown.content_encoding.filter(|e| !e.is_empty()) {
        return Err(PbError::Encoding(e));
    }
    let kind = unknown.type_meta.and_then(|t| t.kind).unwrap_or_default();
    Ok((kind, unknown.raw.ok_or(PbError::NoRaw)?))
}

/// Decodes the message of kind `expected` from a protobuf body. An envelope without a kind is
/// taken for what was asked (kube-apiserver always writes it).
fn decode<M: Message + Default>(body: &[u8], expected: &'static str) -> Result<M, PbError> {
    let (kind, raw) = unwrap_envelope(body)?;
    if !kind.is_empty() && kind != expected {
        return Err(PbError::WrongKind {
            found: kind,
            expected,
        });
    }
    M::decode(raw.as_slice()).map_err(|error| PbError::Decode {
        kind: expected,
        error,
    })
}

/// The `metav1.Status` of an error answered in protobuf, if the body is one.
pub fn status(body: &[u8]) -> Option<kube::core::Status> {
    let s: pb_meta::Status = decode(body, "Status").ok()?;
    let code = s.code.and_then(|c| u16::try_from(c).ok()).unwrap_or(0);
    Some(
        kube::core::Status::failure(
            s.message.as_deref().unwrap_or_default(),
            s.reason.as_deref().unwrap_or_default(),
        )
        .with_code(code),
    )
}

/// A kind read as a protobuf list: its list message and how an item becomes the k8s-openapi
/// object that `convert` reads.
pub trait ProtobufKind: Sized {
    /// The list message (`ServiceList`).
    type List: Message + Default;
    /// One item of it.
    type Item: Send;
    /// The list's `kind` in the envelope.
    const LIST_KIND: &'static str;
    /// The list's resource version and its items.
    fn split(list: Self::List) -> (Option<String>, Vec<Self::Item>);
    /// The item in the k8s-openapi shape, its fields moved.
    fn from_pb(item: Self::Item) -> Self;
}

/// A decoded list's items, each moved into the k8s-openapi shape when the iterator reaches it.
pub type Items<K> = std::iter::Map<
    std::vec::IntoIter<<K as ProtobufKind>::Item>,
    fn(<K as ProtobufKind>::Item) -> K,
>;

/// A decoded list: its resource version (to watch from) and its items.
pub struct List<K: ProtobufKind> {
    pub resource_version: String,
    pub items: Items<K>,
}

impl<K: ProtobufKind> List<K> {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decodes a protobuf list body of kind `K`.
pub fn list<K: ProtobufKind>(body: &[u8]) -> Result<List<K>, PbError> {
    let (rv, items) = K::split(decode(body, K::LIST_KIND)?);
    Ok(List {
        resource_version: rv.unwrap_or_default(),
        items: items.into_iter().map(K::from_pb as fn(K::Item) -> K),
    })
}

fn list_rv(meta: Option<pb_meta::ListMeta>) -> Option<String> {
    meta.and_then(|m| m.resource_version)
}

/// A string field that Go declares as a value, not a pointer (`Name string
/// \`json:"name,omitempty"\``): kube-apiserver's protobuf writes it even when empty, where its
/// JSON leaves it out. Empty is absent, as in the JSON.
fn text(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// A number field that Go declares as a value with `omitempty` (`NodePort int32`): 0 is absent.
fn number(n: Option<i32>) -> Option<i32> {
    n.filter(|n| *n != 0)
}

/// Empty in protobuf means absent in the JSON shape.
fn some_vec<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

fn some_map(m: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!m.is_empty()).then_some(m)
}

/// The metadata fields the conversion reads: name, namespace, labels, annotations.
fn meta(m: Option<pb_meta::ObjectMeta>) -> ObjectMeta {
    let m = m.unwrap_or_default();
    ObjectMeta {
        name: text(m.name),
        namespace: text(m.namespace),
        labels: some_map(m.labels),
        annotations: some_map(m.annotations),
        ..Default::default()
    }
}

impl ProtobufKind for core::Service {
    type List = pb_core::ServiceList;
    type Item = pb_core::Service;
    const LIST_KIND: &'static str = "ServiceList";

    fn split(list: Self::List) -> (Option<String>, Vec<Self::Item>) {
        (list_rv(list.metadata), list.items)
    }

    fn from_pb(s: pb_core::Service) -> Self {
        let spec = s.spec.unwrap_or_default();
        let ports = spec.ports.into_iter().map(|p| core::ServicePort {
            name: text(p.name),
            protocol: text(p.protocol),
            app_protocol: p.app_protocol,
            port: p.port.unwrap_or_default(),
            // IntOrString: type 0 is the number, 1 the name.
            target_port: p.target_port.map(|t| match t.r#type {
                Some(1) => IntOrString::String(t.str_val.unwrap_or_default()),
                _ => IntOrString::Int(t.int_val.unwrap_or_default()),
            }),
            node_port: number(p.node_port),
        });
        let ingress = s
            .status
            .and_then(|s| s.load_balancer)
            .map(|l| l.ingress)
            .unwrap_or_default()
            .into_iter()
            .map(|i| core::LoadBalancerIngress {
                ip: text(i.ip),
                hostname: text(i.hostname),
                ..Default::default()
            });
        core::Service {
            metadata: meta(s.metadata),
            spec: Some(core::ServiceSpec {
                ports: some_vec(ports.collect()),
                cluster_ip: text(spec.cluster_ip),
                cluster_ips: some_vec(spec.cluster_ips),
                type_: text(spec.r#type),
                external_ips: some_vec(spec.external_ips),
                session_affinity: text(spec.session_affinity),
                load_balancer_source_ranges: some_vec(spec.load_balancer_source_ranges),
                external_name: text(spec.external_name),
                external_traffic_policy: text(spec.external_traffic_policy),
                health_check_node_port: number(spec.health_check_node_port),
                publish_not_ready_addresses: spec.publish_not_ready_addresses,
                session_affinity_config: spec.session_affinity_config.map(|c| {
                    core::SessionAffinityConfig {
                        client_ip: c.client_ip.map(|c| core::ClientIPConfig {
                            timeout_seconds: c.timeout_seconds,
                        }),
                    }
                }),
                internal_traffic_policy: spec.internal_traffic_policy,
                traffic_distribution: spec.traffic_distribution,
                ..Default::default()
            }),
            status: Some(core::ServiceStatus {
                load_balancer: Some(core::LoadBalancerStatus {
                    ingress: some_vec(ingress.collect()),
                }),
                ..Default::default()
            }),
        }
    }
}

impl ProtobufKind for discovery::EndpointSlice {
    type List = pb_discovery::EndpointSliceList;
    type Item = pb_discovery::EndpointSlice;
    const LIST_KIND: &'static str = "EndpointSliceList";

    fn split(list: Self::List) -> (Option<String>, Vec<Self::Item>) {
        (list_rv(list.metadata), list.items)
    }

    fn from_pb(s: pb_discovery::EndpointSlice) -> Self {
        let endpoints = s.endpoints.into_iter().map(|e| discovery::Endpoint {
            addresses: e.addresses,
            conditions: e.conditions.map(|c| discovery::EndpointConditions {
                ready: c.ready,
                serving: c.serving,
                terminating: c.terminating,
            }),
            hostname: e.hostname,
            node_name: e.node_name,
            zone: e.zone,
            target_ref: e.target_ref.map(|t| core::ObjectReference {
                kind: text(t.kind),
                namespace: text(t.namespace),
                name: text(t.name),
                ..Default::default()
            }),
            hints: e.hints.map(|h| discovery::EndpointHints {
                for_zones: some_vec(
                    h.for_zones
                        .into_iter()
                        .map(|z| discovery::ForZone {
                            name: z.name.unwrap_or_default(),
                        })
                        .collect(),
                ),
                for_nodes: some_vec(
                    h.for_nodes
                        .into_iter()
                        .map(|n| discovery::ForNode {
                            name: n.name.unwrap_or_default(),
                        })
                        .collect(),
                ),
            }),
            deprecated_topology: None,
        });
        let ports = s.ports.into_iter().map(|p| discovery::EndpointPort {
            name: p.name,
            protocol: p.protocol,
            port: p.port,
            app_protocol: p.app_protocol,
        });
        discovery::EndpointSlice {
            metadata: meta(s.metadata),
            address_type: s.address_type.unwrap_or_default(),
            endpoints: endpoints.collect(),
            ports: some_vec(ports.collect()),
        }
    }
}

#[cfg(test)]
#[path = "kubernetes_pb_tests.rs"]
mod tests;
