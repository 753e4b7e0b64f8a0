//! API objects → the slim model. One module serves both sources (watched API and manifest
//! directory), so both are validated the same way and tested by the same cases.
//!
//! Every error names the field at fault (`spec.ports[1].port: 70000 is not a port`), so a user
//! can find it in their YAML.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tables::model as m;

use crate::gateway_api as gw;

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
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err("metadata.name", "is required"))?;
    let ns = meta
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| default_namespace.to_string());
    Ok((ns, name))
}

fn our_annotations(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("switchboard.dev/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn created(meta: &ObjectMeta) -> Option<String> {
    meta.creation_timestamp
        .as_ref()
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().map(str::to_string))
}

fn ip(field: &str, s: &str) -> Result<IpAddr> {
    s.parse()
        .map_err(|_| err(field, format!("{s:?} is not an IP address")))
}

fn port(field: &str, p: i32) -> Result<u16> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| err(field, format!("{p} is not a port (1-65535)")))
}

fn protocol(field: &str, p: Option<&str>) -> Result<m::Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(m::Protocol::Tcp),
        "UDP" => Ok(m::Protocol::Udp),
        "SCTP" => Ok(m::Protocol::Sctp),
        other => Err(err(field, format!("unknown protocol {other:?}"))),
    }
}

fn policy(field: &str, p: Option<&str>) -> Result<m::TrafficPolicy> {
    match p {
        None | Some("Cluster") => Ok(m::TrafficPolicy::Cluster),
        Some("Local") => Ok(m::TrafficPolicy::Local),
        Some(other) => Err(err(field, format!("unknown traffic policy {other:?}"))),
    }
}

/// v1 Service.
pub fn service(svc: &core::Service, default_namespace: &str) -> Result<m::Service> {
    let (namespace, name) = meta(&svc.metadata, default_namespace)?;
    let spec = svc.spec.clone().unwrap_or_default();
    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => m::ServiceType::ClusterIp,
        Some("NodePort") => m::ServiceType::NodePort,
        Some("LoadBalancer") => m::ServiceType::LoadBalancer,
        Some("ExternalName") => m::ServiceType::ExternalName,
        Some(other) => return Err(err("spec.type", format!("unknown service type {other:?}"))),
    };
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let mut cluster_ips = Vec::new();
    if service_type != m::ServiceType::ExternalName && !headless {
        match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => {
                for (i, s) in ips.iter().enumerate() {
                    if s != "None" {
                        cluster_ips.push(ip(&format!("spec.clusterIPs[{i}]"), s)?);
                    }
                }
            }
            _ => {
                if let Some(s) = spec.cluster_ip.as_deref().filter(|s| !s.is_empty()) {
                    cluster_ips.push(ip("spec.clusterIP", s)?);
                }
            }
        }
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let f = |n: &str| format!("spec.ports[{i}].{n}");
        let number = port(&f("port"), p.port)?;
        let target_port = match &p.target_port {
            None => m::PortRef::Number(number),
            Some(IntOrString::Int(n)) => m::PortRef::Number(port(&f("targetPort"), *n)?),
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => m::PortRef::Number(port(&f("targetPort"), n)?),
                Err(_) => m::PortRef::Name(s.clone()),
            },
        };
        ports.push(m::ServicePort {
            name: p.name.clone().unwrap_or_default(),
            protocol: protocol(&f("protocol"), p.protocol.as_deref())?,
            port: number,
            target_port,
            node_port: p.node_port.map(|n| port(&f("nodePort"), n)).transpose()?,
            app_protocol: p.app_protocol.clone(),
        });
    }
    let session_affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => Some(
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
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
    let traffic_distribution = match spec.traffic_distribution.as_deref() {
        None => None,
        Some("PreferClose") => Some(m::TrafficDistribution::PreferClose),
        Some("PreferSameZone") => Some(m::TrafficDistribution::PreferSameZone),
        Some("PreferSameNode") => Some(m::TrafficDistribution::PreferSameNode),
        // Unknown values are ignored by kube-proxy too (forward compatibility).
        Some(_) => None,
    };
    let mut external_ips = Vec::new();
    for (i, s) in spec.external_ips.iter().flatten().enumerate() {
        external_ips.push(ip(&format!("spec.externalIPs[{i}]"), s)?);
    }
    let mut load_balancer_ips = Vec::new();
    let lb_ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref());
    for (i, ing) in lb_ingress.into_iter().flatten().enumerate() {
        if let Some(s) = &ing.ip {
            load_balancer_ips.push(ip(&format!("status.loadBalancer.ingress[{i}].ip"), s)?);
        }
    }
    let mut load_balancer_source_ranges = Vec::new();
    for (i, s) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        let net = s.trim().parse::<ipnet::IpNet>().map_err(|_| {
            err(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("{s:?} is not a CIDR"),
            )
        })?;
        load_balancer_source_ranges.push(net.trunc());
    }
    let external_name = if service_type == m::ServiceType::ExternalName {
        Some(
            spec.external_name
                .clone()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| err("spec.externalName", "is required for type ExternalName"))?,
        )
    } else {
        None
    };
    Ok(m::Service {
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
            spec.external_traffic_policy.as_deref(),
        )?,
        internal_traffic_policy: policy(
            "spec.internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
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
        annotations: our_annotations(&svc.metadata),
    })
}

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// discovery.k8s.io/v1 EndpointSlice. FQDN slices are rejected (kube-proxy ignores them too).
pub fn endpoint_slice(
    slice: &discovery::EndpointSlice,
    default_namespace: &str,
) -> Result<m::EndpointSlice> {
    let (namespace, name) = meta(&slice.metadata, default_namespace)?;
    let address_type = match slice.address_type.as_str() {
        "IPv4" => m::AddressType::IPv4,
        "IPv6" => m::AddressType::IPv6,
        other => {
            return Err(err(
                "addressType",
                format!("{other:?} is not supported (IPv4 or IPv6)"),
            ))
        }
    };
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        // A port without a number means "all ports"; it is only valid with no endpoints.
        let Some(n) = p.port else { continue };
        ports.push(m::EndpointPort {
            name: p.name.clone().unwrap_or_default(),
            protocol: protocol(&format!("ports[{i}].protocol"), p.protocol.as_deref())?,
            port: port(&format!("ports[{i}].port"), n)?,
            app_protocol: p.app_protocol.clone(),
        });
    }
    let mut endpoints = Vec::new();
    for (i, e) in slice.endpoints.iter().enumerate() {
        let mut addresses = Vec::new();
        for (j, a) in e.addresses.iter().enumerate() {
            let addr = ip(&format!("endpoints[{i}].addresses[{j}]"), a)?;
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
        let c = e.conditions.clone().unwrap_or_default();
        let hints = e.hints.clone().unwrap_or_default();
        endpoints.push(m::Endpoint {
            addresses,
            hostname: e.hostname.clone(),
            node_name: e.node_name.clone(),
            zone: e.zone.clone(),
            hints_for_zones: hints
                .for_zones
                .into_iter()
                .flatten()
                .map(|z| z.name)
                .collect(),
            hints_for_nodes: hints
                .for_nodes
                .into_iter()
                .flatten()
                .map(|n| n.name)
                .collect(),
            conditions: m::Conditions {
                ready: c.ready,
                serving: c.serving,
                terminating: c.terminating,
            },
            target_ref: e.target_ref.as_ref().map(|t| m::TargetRef {
                kind: t.kind.clone().unwrap_or_default(),
                namespace: t.namespace.clone().unwrap_or_default(),
                name: t.name.clone().unwrap_or_default(),
            }),
        });
    }
    Ok(m::EndpointSlice {
        service_name: slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned(),
        namespace,
        name,
        address_type,
        ports,
        endpoints,
        // Unparsable times are ignored, as kube-proxy does.
        trigger_time: slice
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TRIGGER_TIME_ANNOTATION))
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(std::time::SystemTime::from),
    })
}

/// Set by the EndpointSlice controller: when the change a slice carries was triggered.
const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

fn ingress_backend(field: &str, b: &networking::IngressBackend) -> Result<m::IngressBackend> {
    let svc = b.service.as_ref().ok_or_else(|| {
        err(
            format!("{field}.service"),
            "is required (resource backends are not supported)",
        )
    })?;
    let p = svc
        .port
        .as_ref()
        .ok_or_else(|| err(format!("{field}.service.port"), "is required"))?;
    let port_ref = match (&p.number, &p.name) {
        (Some(n), _) => m::PortRef::Number(port(&format!("{field}.service.port.number"), *n)?),
        (None, Some(name)) if !name.is_empty() => m::PortRef::Name(name.clone()),
        _ => {
            return Err(err(
                format!("{field}.service.port"),
                "needs a number or a name",
            ))
        }
    };
    Ok(m::IngressBackend {
        service: svc.name.clone(),
        port: port_ref,
    })
}

/// networking.k8s.io/v1 Ingress.
pub fn ingress(ing: &networking::Ingress, default_namespace: &str) -> Result<m::Ingress> {
    let (namespace, name) = meta(&ing.metadata, default_namespace)?;
    let spec = ing.spec.clone().unwrap_or_default();
    let class_name = spec.ingress_class_name.clone().or_else(|| {
        ing.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/ingress.class"))
            .cloned()
    });
    let default_backend = spec
        .default_backend
        .as_ref()
        .map(|b| ingress_backend("spec.defaultBackend", b))
        .transpose()?;
    let mut rules = Vec::new();
    for (i, r) in spec.rules.iter().flatten().enumerate() {
        let mut paths = Vec::new();
        for (j, p) in r.http.iter().flat_map(|h| &h.paths).enumerate() {
            let f = format!("spec.rules[{i}].http.paths[{j}]");
            let path = p.path.clone().unwrap_or_else(|| "/".into());
            let path_type = match p.path_type.as_str() {
                "Exact" => m::IngressPathType::Exact,
                "Prefix" => m::IngressPathType::Prefix,
                "ImplementationSpecific" => m::IngressPathType::ImplementationSpecific,
                other => return Err(err(format!("{f}.pathType"), format!("unknown {other:?}"))),
            };
            if !path.starts_with('/') {
                return Err(err(
                    format!("{f}.path"),
                    format!("{path:?} must start with /"),
                ));
            }
            paths.push(m::IngressPath {
                path,
                path_type,
                backend: ingress_backend(&format!("{f}.backend"), &p.backend)?,
            });
        }
        rules.push(m::IngressRule {
            host: r.host.clone().filter(|h| !h.is_empty()),
            paths,
        });
    }
    let tls = spec
        .tls
        .iter()
        .flatten()
        .map(|t| m::IngressTls {
            hosts: t.hosts.clone().unwrap_or_default(),
            secret_name: t.secret_name.clone(),
        })
        .collect();
    Ok(m::Ingress {
        namespace,
        name,
        class_name,
        default_backend,
        rules,
        tls,
        annotations: our_annotations(&ing.metadata),
        created: created(&ing.metadata),
    })
}

/// The Secret type switchboard reads; other Secrets are never converted (nor watched).
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

pub fn is_tls_secret(s: &core::Secret) -> bool {
    s.type_.as_deref() == Some(TLS_SECRET_TYPE)
}

/// v1 Secret of type kubernetes.io/tls: `tls.crt` and `tls.key` (from `data`, or `stringData`
/// in manifests), which must look like PEM.
pub fn tls_secret(s: &core::Secret, default_namespace: &str) -> Result<m::TlsSecret> {
    let (namespace, name) = meta(&s.metadata, default_namespace)?;
    if !is_tls_secret(s) {
        return Err(err(
            "type",
            format!("only {TLS_SECRET_TYPE} Secrets are read"),
        ));
    }
    let field = |key: &str| -> Result<Vec<u8>> {
        let bytes = s
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .or_else(|| {
                s.string_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|v| v.as_bytes().to_vec())
            })
            .ok_or_else(|| err(format!("data[{key:?}]"), "is required"))?;
        if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(err(format!("data[{key:?}]"), "is not PEM"));
        }
        Ok(bytes)
    };
    Ok(m::TlsSecret {
        cert_pem: field("tls.crt")?.into(),
        key_pem: field("tls.key")?.into(),
        namespace,
        name,
    })
}

/// gateway.networking.k8s.io/v1 GatewayClass (cluster-scoped).
pub fn gateway_class(c: &gw::GatewayClass) -> Result<m::GatewayClass> {
    let (_, name) = meta(&c.metadata, "")?;
    Ok(m::GatewayClass {
        name,
        controller_name: c.spec.controller_name.clone(),
    })
}

/// gateway.networking.k8s.io/v1 Gateway.
pub fn gateway(g: &gw::Gateway, default_namespace: &str) -> Result<m::Gateway> {
    let (namespace, name) = meta(&g.metadata, default_namespace)?;
    let mut listeners = Vec::new();
    for (i, l) in g.spec.listeners.iter().enumerate() {
        listeners.push(m::GatewayListener {
            name: l.name.clone(),
            hostname: l.hostname.clone(),
            port: port(&format!("spec.listeners[{i}].port"), l.port)?,
            protocol: l.protocol.clone(),
            certificate_refs: l
                .tls
                .iter()
                .flat_map(|t| &t.certificate_refs)
                .map(|r| {
                    (
                        r.namespace.clone().unwrap_or_else(|| namespace.clone()),
                        r.name.clone(),
                    )
                })
                .collect(),
            allowed_namespaces: allowed_namespaces(l),
            allows_http_route: allows_http_route(l),
        });
    }
    Ok(m::Gateway {
        namespace,
        name,
        class_name: g.spec.gateway_class_name.clone(),
        listeners,
    })
}

/// gateway.networking.k8s.io/v1beta1 ReferenceGrant.
pub fn reference_grant(
    g: &gw::ReferenceGrant,
    default_namespace: &str,
) -> Result<tables::grants::ReferenceGrant> {
    let (namespace, name) = meta(&g.metadata, default_namespace)?;
    Ok(tables::grants::ReferenceGrant {
        namespace,
        name,
        from: g
            .spec
            .from
            .iter()
            .map(|f| (f.group.clone(), f.kind.clone(), f.namespace.clone()))
            .collect(),
        to: g
            .spec
            .to
            .iter()
            .map(|t| (t.group.clone(), t.kind.clone(), t.name.clone()))
            .collect(),
    })
}

/// A listener's `allowedRoutes.namespaces`; an unknown `from` admits nothing.
pub fn allowed_namespaces(l: &gw::Listener) -> m::RouteNamespaces {
    let namespaces = l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    match namespaces.and_then(|n| n.from.as_deref()) {
        None | Some("Same") => m::RouteNamespaces::Same,
        Some("All") => m::RouteNamespaces::All,
        Some("Selector") => {
            let sel = namespaces
                .and_then(|n| n.selector.clone())
                .unwrap_or_default();
            m::RouteNamespaces::Selector(m::LabelSelector {
                match_labels: sel.match_labels.unwrap_or_default(),
                match_expressions: sel
                    .match_expressions
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| (e.key, e.operator, e.values.unwrap_or_default()))
                    .collect(),
            })
        }
        Some(_) => m::RouteNamespaces::None,
    }
}

/// v1 Namespace: its labels.
pub fn namespace(n: &core::Namespace) -> Result<m::Namespace> {
    let (_, name) = meta(&n.metadata, "")?;
    Ok(m::Namespace {
        name,
        labels: n.metadata.labels.clone().unwrap_or_default(),
    })
}

/// Whether a listener's `allowedRoutes.kinds` admits HTTPRoute (an empty list does).
pub fn allows_http_route(l: &gw::Listener) -> bool {
    let kinds = l.allowed_routes.iter().flat_map(|a| &a.kinds);
    let mut any = false;
    for k in kinds {
        any = true;
        if k.kind == "HTTPRoute" && k.group.as_deref().is_none_or(|g| g == gw::GROUP) {
            return true;
        }
    }
    !any
}

/// A Gateway API duration (`1h30m`, `500ms`, `10s`) in milliseconds.
pub fn parse_duration_ms(field: &str, s: &str) -> Result<u64> {
    let bad = || {
        err(
            field,
            format!("{s:?} is not a duration like 10s, 500ms, 1h30m"),
        )
    };
    let mut total = 0u64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (mult, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1000, 1)
        } else {
            return Err(bad());
        };
        total += n * mult;
        rest = &rest[len..];
    }
    Ok(total)
}

fn value_match(field: &str, v: &gw::ValueMatch) -> Result<m::ValueMatch> {
    let match_type = match v.type_.as_deref() {
        None | Some("Exact") => m::ValueMatchType::Exact,
        Some("RegularExpression") => m::ValueMatchType::RegularExpression,
        Some(other) => return Err(err(format!("{field}.type"), format!("unknown {other:?}"))),
    };
    Ok(m::ValueMatch {
        match_type,
        name: v.name.clone(),
        value: v.value.clone(),
    })
}

fn path_modifier(field: &str, p: &gw::PathModifier) -> Result<m::PathModifier> {
    match p.type_.as_str() {
        "ReplaceFullPath" => Ok(m::PathModifier::ReplaceFullPath(
            p.replace_full_path.clone().unwrap_or_default(),
        )),
        "ReplacePrefixMatch" => Ok(m::PathModifier::ReplacePrefixMatch(
            p.replace_prefix_match.clone().unwrap_or_default(),
        )),
        other => Err(err(format!("{field}.type"), format!("unknown {other:?}"))),
    }
}

fn header_modifier(h: &gw::HeaderModifier) -> m::HeaderModifier {
    m::HeaderModifier {
        set: h
            .set
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        add: h
            .add
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        remove: h.remove.clone(),
    }
}

/// gateway.networking.k8s.io/v1 HTTPRoute.
pub fn http_route(r: &gw::HttpRoute, default_namespace: &str) -> Result<m::HttpRoute> {
    let (namespace, name) = meta(&r.metadata, default_namespace)?;
    let spec = &r.spec;
    let parent_refs = spec
        .parent_refs
        .iter()
        .enumerate()
        .filter(|(_, p)| p.kind.as_deref().is_none_or(|k| k == "Gateway"))
        .map(|(i, p)| {
            Ok(m::ParentRef {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                section_name: p.section_name.clone(),
                port: p
                    .port
                    .map(|n| port(&format!("spec.parentRefs[{i}].port"), n))
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut rules = Vec::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let f = |n: &str| format!("spec.rules[{i}].{n}");
        let mut matches = Vec::new();
        for (j, mt) in rule.matches.iter().enumerate() {
            let path = match &mt.path {
                None => Some(m::PathMatch {
                    match_type: m::PathMatchType::PathPrefix,
                    value: "/".into(),
                }),
                Some(p) => Some(m::PathMatch {
                    match_type: match p.type_.as_deref() {
                        None | Some("PathPrefix") => m::PathMatchType::PathPrefix,
                        Some("Exact") => m::PathMatchType::Exact,
                        Some("RegularExpression") => m::PathMatchType::RegularExpression,
                        Some(other) => {
                            return Err(err(
                                f(&format!("matches[{j}].path.type")),
                                format!("unknown {other:?}"),
                            ))
                        }
                    },
                    value: p.value.clone().unwrap_or_else(|| "/".into()),
                }),
            };
            matches.push(m::HttpRouteMatch {
                path,
                headers: mt
                    .headers
                    .iter()
                    .enumerate()
                    .map(|(k, h)| value_match(&f(&format!("matches[{j}].headers[{k}]")), h))
                    .collect::<Result<_>>()?,
                query_params: mt
                    .query_params
                    .iter()
                    .enumerate()
                    .map(|(k, q)| value_match(&f(&format!("matches[{j}].queryParams[{k}]")), q))
                    .collect::<Result<_>>()?,
                method: mt.method.clone(),
            });
        }
        if matches.is_empty() {
            // The spec's default: a prefix match on "/".
            matches.push(m::HttpRouteMatch {
                path: Some(m::PathMatch {
                    match_type: m::PathMatchType::PathPrefix,
                    value: "/".into(),
                }),
                ..Default::default()
            });
        }
        let mut filters = Vec::new();
        for (j, fl) in rule.filters.iter().enumerate() {
            let ff = f(&format!("filters[{j}]"));
            filters.push(match fl.type_.as_str() {
                "RequestHeaderModifier" => m::HttpRouteFilter::RequestHeaderModifier(
                    header_modifier(fl.request_header_modifier.as_ref().ok_or_else(|| {
                        err(format!("{ff}.requestHeaderModifier"), "is required")
                    })?),
                ),
                "ResponseHeaderModifier" => m::HttpRouteFilter::ResponseHeaderModifier(
                    header_modifier(fl.response_header_modifier.as_ref().ok_or_else(|| {
                        err(format!("{ff}.responseHeaderModifier"), "is required")
                    })?),
                ),
                "RequestRedirect" => {
                    let rr = fl
                        .request_redirect
                        .as_ref()
                        .ok_or_else(|| err(format!("{ff}.requestRedirect"), "is required"))?;
                    m::HttpRouteFilter::RequestRedirect {
                        scheme: rr.scheme.clone(),
                        hostname: rr.hostname.clone(),
                        path: rr
                            .path
                            .as_ref()
                            .map(|p| path_modifier(&format!("{ff}.requestRedirect.path"), p))
                            .transpose()?,
                        port: rr
                            .port
                            .map(|p| port(&format!("{ff}.requestRedirect.port"), p))
                            .transpose()?,
                        status_code: match rr.status_code.unwrap_or(302) {
                            c @ (301 | 302 | 303 | 307 | 308) => c as u16,
                            c => {
                                return Err(err(
                                    format!("{ff}.requestRedirect.statusCode"),
                                    format!("{c} is not a redirect status"),
                                ))
                            }
                        },
                    }
                }
                "URLRewrite" => {
                    let u = fl
                        .url_rewrite
                        .as_ref()
                        .ok_or_else(|| err(format!("{ff}.urlRewrite"), "is required"))?;
                    m::HttpRouteFilter::UrlRewrite {
                        hostname: u.hostname.clone(),
                        path: u
                            .path
                            .as_ref()
                            .map(|p| path_modifier(&format!("{ff}.urlRewrite.path"), p))
                            .transpose()?,
                    }
                }
                other => m::HttpRouteFilter::Unsupported(other.to_string()),
            });
        }
        let mut backend_refs = Vec::new();
        for (j, b) in rule.backend_refs.iter().enumerate() {
            let bf = f(&format!("backendRefs[{j}]"));
            let group = b.group.as_deref().unwrap_or("");
            let kind = b.kind.as_deref().unwrap_or("Service");
            let unsupported_kind = (!group.is_empty() || kind != "Service").then(|| {
                if group.is_empty() {
                    kind.to_string()
                } else {
                    format!("{kind}.{group}")
                }
            });
            let weight = b.weight.unwrap_or(1);
            if !(0..=1_000_000).contains(&weight) {
                return Err(err(
                    format!("{bf}.weight"),
                    format!("{weight} is not within 0..1000000"),
                ));
            }
            backend_refs.push(m::BackendRef {
                namespace: b.namespace.clone(),
                name: b.name.clone(),
                port: b.port.map(|p| port(&format!("{bf}.port"), p)).transpose()?,
                weight: weight as u32,
                unsupported_kind,
            });
        }
        let timeouts = rule.timeouts.clone().unwrap_or_default();
        rules.push(m::HttpRouteRule {
            matches,
            filters,
            backend_refs,
            request_timeout_ms: timeouts
                .request
                .as_deref()
                .map(|d| parse_duration_ms(&f("timeouts.request"), d))
                .transpose()?,
            backend_request_timeout_ms: timeouts
                .backend_request
                .as_deref()
                .map(|d| parse_duration_ms(&f("timeouts.backendRequest"), d))
                .transpose()?,
        });
    }
    Ok(m::HttpRoute {
        annotations: our_annotations(&r.metadata),
        created: created(&r.metadata),
        namespace,
        name,
        parent_refs,
        hostnames: spec.hostnames.clone(),
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("f", "10s").unwrap(), 10_000);
        assert_eq!(parse_duration_ms("f", "1h30m").unwrap(), 5_400_000);
        assert_eq!(parse_duration_ms("f", "250ms").unwrap(), 250);
        assert!(parse_duration_ms("f", "10").is_err());
        assert!(parse_duration_ms("f", "s").is_err());
        assert!(parse_duration_ms("f", "").is_err());
    }
}
