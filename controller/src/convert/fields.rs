//! The fields of a Service and an EndpointSlice that the model is built from, borrowed from
//! whichever encoding they were read in: a k8s-openapi object (JSON from the API's watches,
//! YAML from manifests) or a protobuf list item read straight from the received bytes
//! (`kubernetes_pb.rs`). [`super::service_of`] and [`super::endpoint_slice_of`] validate and
//! convert these, so every encoding is checked by the same code and builds the model in one
//! place.
//!
//! A field is `None` (a list empty) where the encoding leaves it out; each reader decides what
//! "left out" means in its encoding (protobuf writes Go's value fields even when empty).

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// `metadata`: name, namespace, and the labels and annotations as (key, value) pairs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Meta<'a> {
    pub name: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub labels: Vec<(&'a str, &'a str)>,
    pub annotations: Vec<(&'a str, &'a str)>,
}

impl<'a> Meta<'a> {
    pub fn of(m: &'a ObjectMeta) -> Self {
        let pairs = |map: &'a Option<std::collections::BTreeMap<String, String>>| {
            map.iter()
                .flatten()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect()
        };
        Meta {
            name: m.name.as_deref(),
            namespace: m.namespace.as_deref(),
            labels: pairs(&m.labels),
            annotations: pairs(&m.annotations),
        }
    }

    pub fn label(&self, key: &str) -> Option<&'a str> {
        find(&self.labels, key)
    }

    pub fn annotation(&self, key: &str) -> Option<&'a str> {
        find(&self.annotations, key)
    }
}

/// The value of the last pair with `key` (a map's entries are unique; protobuf lets a later
/// entry win).
fn find<'a>(pairs: &[(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    pairs.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// `spec.ports[].targetPort`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TargetPort<'a> {
    Number(i32),
    Name(&'a str),
}

/// `spec.ports[]` of a Service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServicePortFields<'a> {
    pub name: Option<&'a str>,
    pub protocol: Option<&'a str>,
    pub app_protocol: Option<&'a str>,
    pub port: i32,
    pub target_port: Option<TargetPort<'a>>,
    pub node_port: Option<i32>,
}

/// The fields of a v1 Service that [`super::service_of`] reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceFields<'a> {
    pub meta: Meta<'a>,
    /// `spec.type`.
    pub type_: Option<&'a str>,
    pub cluster_ip: Option<&'a str>,
    pub cluster_ips: Vec<&'a str>,
    pub ports: Vec<ServicePortFields<'a>>,
    pub session_affinity: Option<&'a str>,
    /// `spec.sessionAffinityConfig.clientIP.timeoutSeconds`.
    pub session_affinity_timeout: Option<i32>,
    pub traffic_distribution: Option<&'a str>,
    pub external_ips: Vec<&'a str>,
    /// `status.loadBalancer.ingress[].ip`, one entry per ingress (`None` for one without an
    /// address, such as a hostname only), so errors can name its index.
    pub load_balancer_ingress_ips: Vec<Option<&'a str>>,
    pub load_balancer_source_ranges: Vec<&'a str>,
    pub external_name: Option<&'a str>,
    pub external_traffic_policy: Option<&'a str>,
    pub internal_traffic_policy: Option<&'a str>,
    pub publish_not_ready_addresses: Option<bool>,
    pub health_check_node_port: Option<i32>,
}

impl<'a> ServiceFields<'a> {
    pub fn of(svc: &'a core::Service) -> Self {
        let meta = Meta::of(&svc.metadata);
        let Some(spec) = svc.spec.as_ref() else {
            return ServiceFields {
                meta,
                load_balancer_ingress_ips: lb_ingress_ips(svc),
                ..Default::default()
            };
        };
        let strs = |v: &'a Option<Vec<String>>| v.iter().flatten().map(String::as_str).collect();
        let ports = spec.ports.iter().flatten().map(|p| ServicePortFields {
            name: p.name.as_deref(),
            protocol: p.protocol.as_deref(),
            app_protocol: p.app_protocol.as_deref(),
            port: p.port,
            target_port: p.target_port.as_ref().map(|t| match t {
                IntOrString::Int(n) => TargetPort::Number(*n),
                IntOrString::String(s) => TargetPort::Name(s),
            }),
            node_port: p.node_port,
        });
        ServiceFields {
            meta,
            type_: spec.type_.as_deref(),
            cluster_ip: spec.cluster_ip.as_deref(),
            cluster_ips: strs(&spec.cluster_ips),
            ports: ports.collect(),
            session_affinity: spec.session_affinity.as_deref(),
            session_affinity_timeout: spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds),
            traffic_distribution: spec.traffic_distribution.as_deref(),
            external_ips: strs(&spec.external_ips),
            load_balancer_ingress_ips: lb_ingress_ips(svc),
            load_balancer_source_ranges: strs(&spec.load_balancer_source_ranges),
            external_name: spec.external_name.as_deref(),
            external_traffic_policy: spec.external_traffic_policy.as_deref(),
            internal_traffic_policy: spec.internal_traffic_policy.as_deref(),
            publish_not_ready_addresses: spec.publish_not_ready_addresses,
            health_check_node_port: spec.health_check_node_port,
        }
    }
}

fn lb_ingress_ips(svc: &core::Service) -> Vec<Option<&str>> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .map(|i| i.ip.as_deref())
        .collect()
}

/// `ports[]` of an EndpointSlice.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointPortFields<'a> {
    pub name: Option<&'a str>,
    pub protocol: Option<&'a str>,
    /// Absent means "all ports" (only valid with no endpoints).
    pub port: Option<i32>,
    pub app_protocol: Option<&'a str>,
}

/// `endpoints[]` of an EndpointSlice.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointFields<'a> {
    pub addresses: Vec<&'a str>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub hostname: Option<&'a str>,
    pub node_name: Option<&'a str>,
    pub zone: Option<&'a str>,
    /// `targetRef.name`: `Some("")` for a reference without a name, `None` without a reference.
    pub target_name: Option<&'a str>,
    /// `hints.forZones[].name` and `hints.forNodes[].name`.
    pub hint_zones: Vec<&'a str>,
    pub hint_nodes: Vec<&'a str>,
}

/// The fields of a discovery.k8s.io/v1 EndpointSlice that [`super::endpoint_slice_of`] reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointSliceFields<'a> {
    pub meta: Meta<'a>,
    pub address_type: &'a str,
    pub ports: Vec<EndpointPortFields<'a>>,
    pub endpoints: Vec<EndpointFields<'a>>,
}

impl<'a> EndpointSliceFields<'a> {
    pub fn of(slice: &'a discovery::EndpointSlice) -> Self {
        let ports = slice.ports.iter().flatten().map(|p| EndpointPortFields {
            name: p.name.as_deref(),
            protocol: p.protocol.as_deref(),
            port: p.port,
            app_protocol: p.app_protocol.as_deref(),
        });
        let endpoints = slice.endpoints.iter().map(|e| {
            let c = e.conditions.as_ref();
            let hints = e.hints.as_ref();
            EndpointFields {
                addresses: e.addresses.iter().map(String::as_str).collect(),
                ready: c.and_then(|c| c.ready),
                serving: c.and_then(|c| c.serving),
                terminating: c.and_then(|c| c.terminating),
                hostname: e.hostname.as_deref(),
                node_name: e.node_name.as_deref(),
                zone: e.zone.as_deref(),
                target_name: e
                    .target_ref
                    .as_ref()
                    .map(|t| t.name.as_deref().unwrap_or_default()),
                hint_zones: hints
                    .and_then(|h| h.for_zones.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|z| z.name.as_str())
                    .collect(),
                hint_nodes: hints
                    .and_then(|h| h.for_nodes.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|n| n.name.as_str())
                    .collect(),
            }
        });
        EndpointSliceFields {
            meta: Meta::of(&slice.metadata),
            address_type: &slice.address_type,
            ports: ports.collect(),
            endpoints: endpoints.collect(),
        }
    }
}
