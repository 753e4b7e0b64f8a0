//! Protobuf lists, as kube-apiserver writes them to a client that asks for
//! `application/vnd.kubernetes.protobuf`: the 4 bytes `k8s\0`, then a `runtime.Unknown` whose
//! `raw` holds the `ServiceList` / `EndpointSliceList` (kube-rs's `k8s-pb` types).
//!
//! Served for Services and EndpointSlices (the two kinds switchboard lists in protobuf); every
//! other kind, and every error, is answered in JSON, as a server without protobuf for that kind
//! would. The stored JSON objects are encoded field by field: the fields a data plane reads
//! (metadata name, namespace, labels, annotations, uid, resourceVersion; the Service spec and
//! load-balancer status; the EndpointSlice address type, endpoints and ports), the fields Go
//! declares as values (not pointers) written even when empty, as kube-apiserver writes them.
//! [`Protobuf`] breaks the answer on purpose.

use std::collections::BTreeMap;

use k8s_pb::api::core::v1 as pb_core;
use k8s_pb::api::discovery::v1 as pb_discovery;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as pb_meta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::Value;

/// The protobuf media type.
pub(crate) const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// How lists asked for in protobuf are answered. Switch at run time with
/// [`crate::ApiServer::set_protobuf`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protobuf {
    /// Services and EndpointSlices in protobuf, as kube-apiserver does.
    #[default]
    Served,
    /// JSON whatever the client asks, as a server or proxy without protobuf.
    Refused,
    /// A protobuf content type whose body does not start with `k8s\0`.
    BadMagic,
    /// A valid protobuf list cut in the middle.
    Truncated,
}

/// Whether a list of `kind` asked for with `accept` is answered in protobuf.
pub(crate) fn wanted(accept: Option<&str>, kind: &str, mode: Protobuf) -> bool {
    mode != Protobuf::Refused
        && matches!(kind, "Service" | "EndpointSlice")
        && accept.is_some_and(|a| a.split(',').any(|t| t.trim().starts_with(PROTOBUF)))
}

/// The protobuf body of a list of `kind` (`Service` or `EndpointSlice`), broken as `mode` says.
pub(crate) fn list_body(
    kind: &str,
    api_version: &str,
    rv: &str,
    cont: Option<&str>,
    items: &[Value],
    mode: Protobuf,
) -> Vec<u8> {
    let metadata = Some(pb_meta::ListMeta {
        resource_version: Some(rv.to_string()),
        r#continue: cont.map(str::to_string),
        ..Default::default()
    });
    let raw = if kind == "Service" {
        pb_core::ServiceList {
            metadata,
            items: items.iter().map(service).collect(),
        }
        .encode_to_vec()
    } else {
        pb_discovery::EndpointSliceList {
            metadata,
            items: items.iter().map(endpoint_slice).collect(),
        }
        .encode_to_vec()
    };
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.to_string()),
            kind: Some(format!("{kind}List")),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut body = b"k8s\0".to_vec();
    unknown.encode(&mut body).expect("a Vec grows");
    match mode {
        Protobuf::BadMagic => body[..4].copy_from_slice(b"{\"ki"),
        Protobuf::Truncated => body.truncate(body.len() / 2),
        Protobuf::Served | Protobuf::Refused => {}
    }
    body
}

fn str_of(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// A field Go declares as a value, not a pointer: kube-apiserver's protobuf writes it even when
/// it is empty (its JSON leaves it out), so clients must read `""` and `0` as absent.
fn go_str(v: &Value, key: &str) -> Option<String> {
    Some(str_of(v, key).unwrap_or_default())
}

fn go_int(v: &Value, key: &str) -> Option<i32> {
    Some(int_of(v, key).unwrap_or_default())
}

fn int_of(v: &Value, key: &str) -> Option<i32> {
    v.get(key)
        .and_then(Value::as_i64)
        .and_then(|n| i32::try_from(n).ok())
}

fn bool_of(v: &Value, key: &str) -> Option<bool> {
    v.get(key).and_then(Value::as_bool)
}

fn array<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    array(v, key)
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn map(v: &Value, key: &str) -> BTreeMap<String, String> {
    v.get(key)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

fn meta(obj: &Value) -> Option<pb_meta::ObjectMeta> {
    let m = obj.get("metadata")?;
    Some(pb_meta::ObjectMeta {
        name: go_str(m, "name"),
        namespace: go_str(m, "namespace"),
        uid: str_of(m, "uid"),
        resource_version: str_of(m, "resourceVersion"),
        labels: map(m, "labels"),
        annotations: map(m, "annotations"),
        ..Default::default()
    })
}

fn service(obj: &Value) -> pb_core::Service {
    let null = Value::Null;
    let spec = obj.get("spec").unwrap_or(&null);
    let ports = array(spec, "ports").map(|p| pb_core::ServicePort {
        name: go_str(p, "name"),
        protocol: go_str(p, "protocol"),
        app_protocol: str_of(p, "appProtocol"),
        port: int_of(p, "port"),
        target_port: p.get("targetPort").map(|t| match t {
            Value::String(s) => IntOrString {
                r#type: Some(1),
                int_val: None,
                str_val: Some(s.clone()),
            },
            n => IntOrString {
                r#type: Some(0),
                int_val: n.as_i64().and_then(|n| i32::try_from(n).ok()),
                str_val: None,
            },
        }),
        node_port: go_int(p, "nodePort"),
    });
    let ingress = obj
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|i| pb_core::LoadBalancerIngress {
            ip: go_str(i, "ip"),
            hostname: go_str(i, "hostname"),
            ..Default::default()
        });
    pb_core::Service {
        metadata: meta(obj),
        spec: Some(pb_core::ServiceSpec {
            ports: ports.collect(),
            selector: map(spec, "selector"),
            cluster_ip: go_str(spec, "clusterIP"),
            cluster_ips: strings(spec, "clusterIPs"),
            r#type: go_str(spec, "type"),
            external_ips: strings(spec, "externalIPs"),
            session_affinity: go_str(spec, "sessionAffinity"),
            load_balancer_source_ranges: strings(spec, "loadBalancerSourceRanges"),
            external_name: go_str(spec, "externalName"),
            external_traffic_policy: go_str(spec, "externalTrafficPolicy"),
            health_check_node_port: go_int(spec, "healthCheckNodePort"),
            publish_not_ready_addresses: Some(
                bool_of(spec, "publishNotReadyAddresses").unwrap_or_default(),
            ),
            session_affinity_config: spec.pointer("/sessionAffinityConfig/clientIP").map(|c| {
                pb_core::SessionAffinityConfig {
                    client_ip: Some(pb_core::ClientIpConfig {
                        timeout_seconds: int_of(c, "timeoutSeconds"),
                    }),
                }
            }),
            internal_traffic_policy: str_of(spec, "internalTrafficPolicy"),
            traffic_distribution: str_of(spec, "trafficDistribution"),
            ..Default::default()
        }),
        status: Some(pb_core::ServiceStatus {
            load_balancer: Some(pb_core::LoadBalancerStatus {
                ingress: ingress.collect(),
            }),
            ..Default::default()
        }),
    }
}

fn endpoint_slice(obj: &Value) -> pb_discovery::EndpointSlice {
    let endpoints = array(obj, "endpoints").map(|e| pb_discovery::Endpoint {
        addresses: strings(e, "addresses"),
        conditions: e
            .get("conditions")
            .map(|c| pb_discovery::EndpointConditions {
                ready: bool_of(c, "ready"),
                serving: bool_of(c, "serving"),
                terminating: bool_of(c, "terminating"),
            }),
        hostname: str_of(e, "hostname"),
        target_ref: e.get("targetRef").map(|t| pb_core::ObjectReference {
            kind: str_of(t, "kind"),
            namespace: str_of(t, "namespace"),
            name: str_of(t, "name"),
            uid: str_of(t, "uid"),
            ..Default::default()
        }),
        node_name: str_of(e, "nodeName"),
        zone: str_of(e, "zone"),
        hints: e.get("hints").map(|h| pb_discovery::EndpointHints {
            for_zones: array(h, "forZones")
                .map(|z| pb_discovery::ForZone {
                    name: str_of(z, "name"),
                })
                .collect(),
            for_nodes: array(h, "forNodes")
                .map(|n| pb_discovery::ForNode {
                    name: str_of(n, "name"),
                })
                .collect(),
        }),
        ..Default::default()
    });
    let ports = array(obj, "ports").map(|p| pb_discovery::EndpointPort {
        name: str_of(p, "name"),
        protocol: str_of(p, "protocol"),
        port: int_of(p, "port"),
        app_protocol: str_of(p, "appProtocol"),
    });
    pb_discovery::EndpointSlice {
        metadata: meta(obj),
        address_type: str_of(obj, "addressType"),
        endpoints: endpoints.collect(),
        ports: ports.collect(),
    }
}
