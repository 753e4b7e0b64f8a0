//! Ingress, TLS Secrets and the Gateway API kinds → the slim model: the objects the HTTP
//! proxy routes by. Field paths in errors are as in `mod.rs`.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use tables::model as m;

use super::{created, err, meta, our_annotations, port, Result};
use crate::gateway_api as gw;

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
