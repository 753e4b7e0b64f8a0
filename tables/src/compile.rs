//! Compiling objects into table entries: one Service (with its EndpointSlices) at a time, and
//! the HTTP table from Ingresses, Gateways and HTTPRoutes.
//!
//! Pure functions: same input, same output. `state.rs` decides what to recompile and splices the
//! results into the shared maps.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::model::*;
use crate::snapshot::*;

/// The Gateway API group, as ReferenceGrants name it.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Settings that shape compilation.
#[derive(Clone, Debug)]
pub struct TableConfig {
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// Ingresses with this `ingressClassName` (or legacy `kubernetes.io/ingress.class`
    /// annotation) are ours.
    pub ingress_class: String,
    /// GatewayClasses whose `controllerName` is this are ours.
    pub gateway_controller: String,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            cluster_domain: "cluster.local".into(),
            ingress_class: "switchboard".into(),
            gateway_controller: "switchboard.dev/gateway".into(),
        }
    }
}

/// A DNS name and the records one service has there.
pub type ServiceDnsName = (Arc<str>, Arc<[DnsRecord]>);

/// What one Service contributes to the tables.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompiledService {
    pub routes: Option<Arc<ServiceRoutes>>,
    /// DNS names with this service's records there (possibly none: an empty non-terminal),
    /// sorted by name (a boxed slice: a `BTreeMap` per service cost ~4 MiB at 10k services).
    pub dns: Box<[ServiceDnsName]>,
    pub frontends: Vec<(Frontend, FrontendKind, usize)>,
    pub node_ports: Vec<((Protocol, u16), usize)>,
}

impl CompiledService {
    /// This service's records at `name`.
    pub fn dns_at(&self, name: &str) -> Option<&Arc<[DnsRecord]>> {
        self.dns
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()
            .map(|i| &self.dns[i].1)
    }
}

/// The DNS label for an endpoint: its hostname, else its address with dashes (as CoreDNS).
pub fn endpoint_label(ep: &Endpoint, ip: IpAddr) -> String {
    match &ep.hostname {
        Some(h) if !h.is_empty() => h.to_ascii_lowercase(),
        _ => ip.to_string().replace(['.', ':'], "-"),
    }
}

fn ip_record(ip: IpAddr) -> DnsRecord {
    match ip {
        IpAddr::V4(v4) => DnsRecord::A(v4),
        IpAddr::V6(v6) => DnsRecord::Aaaa(v6),
    }
}

/// Compiles one service with the EndpointSlices that carry its name.
pub fn compile_service(
    config: &TableConfig,
    svc: &Arc<Service>,
    slices: &[Arc<EndpointSlice>],
) -> CompiledService {
    let key = ServiceKey::new(&svc.namespace, &svc.name);
    let zone = crate::snapshot::normalize_name(&config.cluster_domain);
    let ns_name = format!("{}.svc.{}", svc.namespace, zone).to_ascii_lowercase();
    let svc_name: Arc<str> = format!("{}.{}", svc.name.to_ascii_lowercase(), ns_name).into();

    // Per service port: endpoints whose slice port has the same name and protocol. Every
    // port's route of an endpoint shares the object's `EndpointInfo` (docs/memory.md).
    let mut ports = Vec::with_capacity(svc.ports.len());
    for sp in &svc.ports {
        let mut eps: Vec<EndpointRoute> = Vec::new();
        for slice in slices {
            for ep_port in slice
                .ports
                .iter()
                .filter(|p| p.name == sp.name && p.protocol == sp.protocol)
            {
                for ep in &slice.endpoints {
                    // As kube-proxy: the first address stands for the endpoint.
                    let Some(&ip) = ep.addresses.first() else {
                        continue;
                    };
                    eps.push(EndpointRoute::new(
                        SocketAddr::new(ip, ep_port.port),
                        ep.conditions,
                        ep.info.clone(),
                    ));
                }
            }
        }
        // One entry per address; during slice migrations the same endpoint can appear twice:
        // keep the most usable copy (ready over not ready).
        eps.sort_by(|a, b| {
            a.addr()
                .cmp(&b.addr())
                .then(b.conditions.is_ready().cmp(&a.conditions.is_ready()))
        });
        eps.dedup_by(|later, first| later.addr() == first.addr());
        ports.push(PortRoutes {
            name: sp.name.as_str().into(),
            protocol: sp.protocol,
            port: sp.port,
            target_port: sp.target_port.clone(),
            node_port: sp.node_port,
            endpoints: eps.into(),
        });
    }
    let routes = Arc::new(ServiceRoutes {
        key: key.clone(),
        service: svc.clone(),
        ports,
        trigger_time: slices.iter().filter_map(|s| s.trigger_time).max(),
        slices: slices.into(),
    });

    let mut out = CompiledService::default();
    let mut dns: BTreeMap<Arc<str>, Vec<DnsRecord>> = BTreeMap::new();
    // `<ns>.svc.<zone>` exists as long as the namespace has a service; `ClusterState` keeps that
    // name by counting services per namespace (one entry shared by thousands of services would
    // make every change cost O(services in the namespace)).

    match svc.service_type {
        ServiceType::ExternalName => {
            if let Some(target) = &svc.external_name {
                let target = crate::snapshot::normalize_name(target);
                dns.entry(svc_name.clone())
                    .or_default()
                    .push(DnsRecord::Cname(target.into()));
            }
        }
        _ if svc.headless => {
            // One record per ready endpoint address (all of them with publishNotReadyAddresses),
            // endpoint names, SRV per named port and endpoint, PTR per address.
            let include =
                |ep: &Endpoint| svc.publish_not_ready_addresses || ep.conditions.is_ready();
            let mut seen_ip = BTreeSet::new();
            for slice in slices {
                for ep in slice.endpoints.iter().filter(|e| include(e)) {
                    for &ip in &ep.addresses {
                        if !seen_ip.insert(ip) {
                            continue;
                        }
                        let ep_name: Arc<str> =
                            format!("{}.{}", endpoint_label(ep, ip), svc_name).into();
                        dns.entry(svc_name.clone()).or_default().push(ip_record(ip));
                        dns.entry(ep_name.clone()).or_default().push(ip_record(ip));
                        dns.entry(reverse_name(ip).into())
                            .or_default()
                            .push(DnsRecord::Ptr(ep_name.clone()));
                        for sp in svc.ports.iter().filter(|p| !p.name.is_empty()) {
                            let port = slice
                                .ports
                                .iter()
                                .find(|p| p.name == sp.name && p.protocol == sp.protocol)
                                .map(|p| p.port);
                            let Some(port) = port else { continue };
                            let proto_name: Arc<str> =
                                format!("{}.{}", sp.protocol.srv_label(), svc_name).into();
                            dns.entry(proto_name).or_default();
                            dns.entry(
                                format!(
                                    "_{}.{}.{}",
                                    sp.name.to_ascii_lowercase(),
                                    sp.protocol.srv_label(),
                                    svc_name
                                )
                                .into(),
                            )
                            .or_default()
                            .push(DnsRecord::Srv {
                                priority: 0,
                                weight: 0, // set below, once the count is known
                                port,
                                target: ep_name.clone(),
                            });
                        }
                    }
                }
            }
        }
        _ => {
            for &ip in &svc.cluster_ips {
                dns.entry(svc_name.clone()).or_default().push(ip_record(ip));
                dns.entry(reverse_name(ip).into())
                    .or_default()
                    .push(DnsRecord::Ptr(svc_name.clone()));
            }
            if !svc.cluster_ips.is_empty() {
                for sp in svc.ports.iter().filter(|p| !p.name.is_empty()) {
                    dns.entry(format!("{}.{}", sp.protocol.srv_label(), svc_name).into())
                        .or_default();
                    dns.entry(
                        format!(
                            "_{}.{}.{}",
                            sp.name.to_ascii_lowercase(),
                            sp.protocol.srv_label(),
                            svc_name
                        )
                        .into(),
                    )
                    .or_default()
                    .push(DnsRecord::Srv {
                        priority: 0,
                        weight: 100,
                        port: sp.port,
                        target: svc_name.clone(),
                    });
                }
            }
        }
    }
    // SRV weights as CoreDNS: 100 split evenly between the records at a name.
    for records in dns.values_mut() {
        let n = records
            .iter()
            .filter(|r| matches!(r, DnsRecord::Srv { .. }))
            .count();
        if let Some(w) = 100usize.checked_div(n) {
            let w = w.max(1) as u16;
            for r in records.iter_mut() {
                if let DnsRecord::Srv { weight, .. } = r {
                    *weight = w;
                }
            }
        }
        records.sort();
        records.dedup();
    }
    out.dns = dns.into_iter().map(|(k, v)| (k, v.into())).collect();

    // L4 frontends.
    if svc.service_type != ServiceType::ExternalName {
        for (i, sp) in svc.ports.iter().enumerate() {
            for &ip in &svc.cluster_ips {
                out.frontends.push((
                    Frontend {
                        ip,
                        protocol: sp.protocol,
                        port: sp.port,
                    },
                    FrontendKind::ClusterIp,
                    i,
                ));
            }
            for &ip in &svc.external_ips {
                out.frontends.push((
                    Frontend {
                        ip,
                        protocol: sp.protocol,
                        port: sp.port,
                    },
                    FrontendKind::ExternalIp,
                    i,
                ));
            }
            if svc.service_type == ServiceType::LoadBalancer {
                for &ip in &svc.load_balancer_ips {
                    out.frontends.push((
                        Frontend {
                            ip,
                            protocol: sp.protocol,
                            port: sp.port,
                        },
                        FrontendKind::LoadBalancer,
                        i,
                    ));
                }
            }
            if matches!(
                svc.service_type,
                ServiceType::NodePort | ServiceType::LoadBalancer
            ) {
                if let Some(np) = sp.node_port {
                    out.node_ports.push(((sp.protocol, np), i));
                }
            }
        }
    }
    out.frontends.shrink_to_fit();
    out.node_ports.shrink_to_fit();
    out.routes = Some(routes);
    out
}

fn is_our_ingress(config: &TableConfig, ing: &Ingress) -> bool {
    ing.class_name.as_deref() == Some(config.ingress_class.as_str())
}

fn lower(s: &str) -> Arc<str> {
    s.to_ascii_lowercase().into()
}

/// A route's attachment on one listener port: the host names it serves there (`None` = any
/// host) and the listeners it is attached to.
type PortAttachment = (Option<BTreeSet<String>>, Vec<Arc<str>>);

/// Compiles every Ingress of our class and every HTTPRoute attached to a Gateway of ours.
pub fn compile_http<'a>(
    config: &TableConfig,
    ingresses: impl Iterator<Item = &'a Ingress>,
    routes: impl Iterator<Item = &'a HttpRoute>,
    gateways: impl Iterator<Item = &'a Gateway>,
    classes: impl Iterator<Item = &'a GatewayClass>,
    grants: &crate::grants::Grants,
    namespaces: &NamespaceLabels,
) -> HttpTable {
    let mut table = HttpTable::default();

    let mut ingresses: Vec<_> = ingresses.collect();
    ingresses.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for ing in ingresses {
        let source = ObjectKey::new(Kind::Ingress, &ing.namespace, &ing.name);
        if !is_our_ingress(config, ing) {
            table.ignored.push((
                source,
                format!(
                    "ingressClassName {:?} is not {:?}",
                    ing.class_name.as_deref().unwrap_or(""),
                    config.ingress_class
                ),
            ));
            continue;
        }
        let lb: Option<Arc<str>> = ing
            .annotations
            .get("switchboard.dev/lb-algorithm")
            .map(|v| v.as_str().into());
        let created: Option<Arc<str>> = ing.created.as_deref().map(Arc::from);
        let backend = |b: &IngressBackend| HttpBackend {
            service: ServiceKey::new(&ing.namespace, &b.service),
            port: Some(b.port.clone()),
            weight: 1,
            permitted: true,
        };
        let mut index = 0;
        for rule in &ing.rules {
            for p in &rule.paths {
                let match_type = match p.path_type {
                    IngressPathType::Exact => PathMatchType::Exact,
                    IngressPathType::Prefix | IngressPathType::ImplementationSpecific => {
                        PathMatchType::PathPrefix
                    }
                };
                table.rules.push(HttpRule {
                    source: source.clone(),
                    rule_index: index,
                    hostnames: rule.host.iter().map(|h| lower(h)).collect(),
                    matches: vec![HttpRouteMatch {
                        path: Some(PathMatch {
                            match_type,
                            value: p.path.clone(),
                        }),
                        ..Default::default()
                    }],
                    filters: vec![],
                    backends: vec![backend(&p.backend)],
                    request_timeout_ms: None,
                    backend_request_timeout_ms: None,
                    attachments: vec![],
                    port: None,
                    is_default: false,
                    lb_algorithm: lb.clone(),
                    created: created.clone(),
                });
                index += 1;
            }
        }
        if let Some(b) = &ing.default_backend {
            table.rules.push(HttpRule {
                source: source.clone(),
                rule_index: index,
                hostnames: vec![],
                matches: vec![],
                filters: vec![],
                backends: vec![backend(b)],
                request_timeout_ms: None,
                backend_request_timeout_ms: None,
                attachments: vec![],
                port: None,
                is_default: true,
                lb_algorithm: lb.clone(),
                created: created.clone(),
            });
        }
    }

    let our_classes: BTreeSet<&str> = classes
        .filter(|c| c.controller_name == config.gateway_controller)
        .map(|c| c.name.as_str())
        .collect();
    let our_gateways: HashMap<(&str, &str), &Gateway> = gateways
        .filter(|g| our_classes.contains(g.class_name.as_str()))
        .map(|g| ((g.namespace.as_str(), g.name.as_str()), g))
        .collect();

    let mut listeners: Vec<GatewayPort> = our_gateways
        .values()
        .flat_map(|gw| {
            gw.listeners
                .iter()
                .filter(|l| is_http_listener(l))
                .map(|l| GatewayPort {
                    port: l.port,
                    tls: l.protocol == "HTTPS",
                    gateway: format!("{}/{}", gw.namespace, gw.name).into(),
                    listener: l.name.as_str().into(),
                })
        })
        .collect();
    listeners.sort();
    table.listeners = listeners;

    let mut routes: Vec<_> = routes.collect();
    routes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for route in routes {
        let source = ObjectKey::new(Kind::HttpRoute, &route.namespace, &route.name);
        // Per listener port: the host names the route serves there (`None` = any host) and
        // the listeners it is attached to.
        let mut by_port: BTreeMap<u16, PortAttachment> = BTreeMap::new();
        let route_hosts: Vec<String> = route
            .hostnames
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        for parent in &route.parent_refs {
            let ns = parent.namespace.as_deref().unwrap_or(&route.namespace);
            let Some(gw) = our_gateways.get(&(ns, parent.name.as_str())) else {
                continue;
            };
            for l in gw.listeners.iter().filter(|l| {
                parent_selects(parent, l) && listener_admits(gw, l, &route.namespace, namespaces)
            }) {
                // The Gateway API's hostname intersection of listener and route.
                let served: Option<Vec<String>> = match (&l.hostname, route_hosts.is_empty()) {
                    (None, true) => None,
                    (None, false) => Some(route_hosts.clone()),
                    (Some(lh), true) => Some(vec![lh.to_ascii_lowercase()]),
                    (Some(lh), false) => {
                        Some(intersect_hostnames(&lh.to_ascii_lowercase(), &route_hosts))
                    }
                };
                if served.as_ref().is_some_and(|v| v.is_empty()) {
                    continue; // no host in common: not attached to this listener
                }
                let (hosts, attachments) = by_port
                    .entry(l.port)
                    .or_insert_with(|| (Some(BTreeSet::new()), Vec::new()));
                match (served, hosts.as_mut()) {
                    (None, _) => *hosts = None,
                    (Some(v), Some(set)) => set.extend(v),
                    (Some(_), None) => {}
                }
                attachments.push(format!("{}/{}/{}:{}", ns, parent.name, l.name, l.port).into());
            }
        }
        if by_port.is_empty() {
            table.ignored.push((
                source,
                "no parentRef names an HTTP(S) listener of a Gateway of our GatewayClass with a hostname in common".into(),
            ));
            continue;
        }
        let lb: Option<Arc<str>> = route
            .annotations
            .get("switchboard.dev/lb-algorithm")
            .map(|v| v.as_str().into());
        let created: Option<Arc<str>> = route.created.as_deref().map(Arc::from);
        for (port, (hosts, mut attachments)) in by_port {
            attachments.sort();
            attachments.dedup();
            let hostnames: Vec<Arc<str>> = hosts
                .map(|set| set.into_iter().map(|h| h.into()).collect())
                .unwrap_or_default();
            for (i, rule) in route.rules.iter().enumerate() {
                table.rules.push(HttpRule {
                    source: source.clone(),
                    rule_index: i,
                    hostnames: hostnames.clone(),
                    matches: rule.matches.clone(),
                    filters: rule.filters.clone(),
                    backends: rule
                        .backend_refs
                        .iter()
                        .filter(|b| b.unsupported_kind.is_none())
                        .map(|b| {
                            let ns = b.namespace.as_deref().unwrap_or(&route.namespace);
                            HttpBackend {
                                service: ServiceKey::new(ns, &b.name),
                                port: b.port.map(PortRef::Number),
                                weight: b.weight,
                                permitted: grants.permits(
                                    (GATEWAY_GROUP, "HTTPRoute", &route.namespace),
                                    ("", "Service", ns, &b.name),
                                ),
                            }
                        })
                        .collect(),
                    request_timeout_ms: rule.request_timeout_ms,
                    backend_request_timeout_ms: rule.backend_request_timeout_ms,
                    attachments: attachments.clone(),
                    port: Some(port),
                    is_default: false,
                    lb_algorithm: lb.clone(),
                    created: created.clone(),
                });
            }
        }
    }
    table
}

/// Whether a parentRef's `sectionName` and `port` select listener `l` of its Gateway.
pub fn parent_selects(parent: &ParentRef, l: &GatewayListener) -> bool {
    parent.section_name.as_deref().is_none_or(|s| s == l.name)
        && parent.port.is_none_or(|p| p == l.port)
}

/// Labels of each Namespace, by name.
pub type NamespaceLabels = BTreeMap<String, BTreeMap<String, String>>;

/// Whether listener `l` of `gw` takes HTTPRoutes from `route_namespace`: an HTTP or HTTPS
/// listener whose `allowedRoutes` admit the kind and the namespace (`Same` is the default;
/// `Selector` matches the namespace's labels, none when the Namespace is unknown).
pub fn listener_admits(
    gw: &Gateway,
    l: &GatewayListener,
    route_namespace: &str,
    namespaces: &NamespaceLabels,
) -> bool {
    is_http_listener(l)
        && l.allows_http_route
        && match &l.allowed_namespaces {
            RouteNamespaces::Same => gw.namespace == route_namespace,
            RouteNamespaces::All => true,
            RouteNamespaces::Selector(sel) => namespaces
                .get(route_namespace)
                .is_some_and(|labels| sel.matches(labels)),
            RouteNamespaces::None => false,
        }
}

/// HTTP and HTTPS listeners carry HTTPRoutes; other protocols are not served.
pub fn is_http_listener(l: &GatewayListener) -> bool {
    matches!(l.protocol.as_str(), "HTTP" | "HTTPS")
}

/// Compiles the certificates of our Ingresses' `tls` entries and our Gateways' HTTPS listeners.
pub fn compile_tls<'a>(
    config: &TableConfig,
    ingresses: impl Iterator<Item = &'a Ingress>,
    gateways: impl Iterator<Item = &'a Gateway>,
    classes: impl Iterator<Item = &'a GatewayClass>,
    secret: impl Fn(&str, &str) -> Option<&'a TlsSecret>,
    grants: &crate::grants::Grants,
) -> TlsTable {
    let mut table = TlsTable::default();
    // `permitted`: false for a reference into another namespace that no ReferenceGrant allows;
    // such a Secret is not served (and is listed as missing).
    let mut add = |hostnames: Vec<Arc<str>>, ns: &str, name: &str, by: ObjectKey, permitted| {
        let key = ObjectKey::new(Kind::Secret, ns, name);
        match secret(ns, name).filter(|_| permitted) {
            Some(s) => table.certs.push(TlsCert {
                hostnames,
                secret: key,
                referenced_by: by,
                cert_pem: s.cert_pem.clone(),
                key_pem: s.key_pem.clone(),
            }),
            None => table.missing.push((key, by)),
        }
    };
    for ing in ingresses.filter(|i| is_our_ingress(config, i)) {
        let by = ObjectKey::new(Kind::Ingress, &ing.namespace, &ing.name);
        for t in &ing.tls {
            if let Some(name) = &t.secret_name {
                add(
                    t.hosts.iter().map(|h| lower(h)).collect(),
                    &ing.namespace,
                    name,
                    by.clone(),
                    true,
                );
            }
        }
    }
    let our_classes: BTreeSet<&str> = classes
        .filter(|c| c.controller_name == config.gateway_controller)
        .map(|c| c.name.as_str())
        .collect();
    for gw in gateways.filter(|g| our_classes.contains(g.class_name.as_str())) {
        let by = ObjectKey::new(Kind::Gateway, &gw.namespace, &gw.name);
        for l in gw.listeners.iter().filter(|l| l.protocol == "HTTPS") {
            for (ns, name) in &l.certificate_refs {
                let from = (GATEWAY_GROUP, "Gateway", gw.namespace.as_str());
                add(
                    l.hostname.iter().map(|h| lower(h)).collect(),
                    ns,
                    name,
                    by.clone(),
                    grants.permits(from, ("", "Secret", ns, name)),
                );
            }
        }
    }
    table
}

/// Hostnames of a route that a listener with hostname `listener` serves, per the Gateway API:
/// exact names must match (or fall under a listener wildcard); a route wildcard matching the
/// listener's name yields the listener's name; two wildcards yield the narrower one.
pub fn intersect_hostnames(listener: &str, route: &[String]) -> Vec<String> {
    fn covers(wild: &str, name: &str) -> bool {
        // `*.example.com` covers `a.example.com` and `a.b.example.com`, not `example.com`.
        wild.strip_prefix('*')
            .is_some_and(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
    }
    let mut out = Vec::new();
    for r in route {
        let hit = if r == listener || covers(listener, r) {
            Some(r.clone())
        } else if covers(r, listener) {
            Some(listener.to_string())
        } else {
            None
        };
        if let Some(h) = hit {
            if !out.contains(&h) {
                out.push(h);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_intersection() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            intersect_hostnames("a.example.com", &r(&["a.example.com", "b.example.com"])),
            r(&["a.example.com"])
        );
        assert_eq!(
            intersect_hostnames(
                "*.example.com",
                &r(&["a.example.com", "example.com", "x.org"])
            ),
            r(&["a.example.com"])
        );
        assert_eq!(
            intersect_hostnames("a.example.com", &r(&["*.example.com"])),
            r(&["a.example.com"])
        );
        assert_eq!(
            intersect_hostnames("*.a.example.com", &r(&["*.example.com"])),
            r(&["*.a.example.com"])
        );
        assert!(intersect_hostnames("a.example.com", &r(&["b.example.com"])).is_empty());
    }

    /// Gateway `NS/gw` of class `sb` with one HTTP listener `web` on port 80.
    fn one_listener_gateway(namespace: &str, allowed: RouteNamespaces) -> Gateway {
        Gateway {
            namespace: namespace.into(),
            name: "gw".into(),
            class_name: "sb".into(),
            listeners: vec![GatewayListener {
                name: "web".into(),
                port: 80,
                protocol: "HTTP".into(),
                allowed_namespaces: allowed,
                allows_http_route: true,
                ..Default::default()
            }],
        }
    }

    #[test]
    fn cross_namespace_backends_follow_reference_grants() {
        let class = GatewayClass {
            name: "sb".into(),
            controller_name: TableConfig::default().gateway_controller,
        };
        let gw = one_listener_gateway("apps", RouteNamespaces::Same);
        let route = HttpRoute {
            namespace: "apps".into(),
            name: "r".into(),
            parent_refs: vec![ParentRef {
                name: "gw".into(),
                ..Default::default()
            }],
            rules: vec![HttpRouteRule {
                backend_refs: vec![BackendRef {
                    namespace: Some("backends".into()),
                    name: "api".into(),
                    port: Some(80),
                    weight: 1,
                    unsupported_kind: None,
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let grant = crate::grants::ReferenceGrant {
            namespace: "backends".into(),
            name: "g".into(),
            from: vec![(GATEWAY_GROUP.into(), "HTTPRoute".into(), "apps".into())],
            to: vec![("".into(), "Service".into(), None)],
        };
        let compile = |route: &HttpRoute, grants: &crate::grants::Grants| {
            compile_http(
                &TableConfig::default(),
                std::iter::empty(),
                [route].into_iter(),
                [&gw].into_iter(),
                [&class].into_iter(),
                grants,
                &NamespaceLabels::new(),
            )
        };
        let permitted =
            |grants: &crate::grants::Grants| compile(&route, grants).rules[0].backends[0].permitted;
        assert!(!permitted(&crate::grants::Grants::default()));
        assert!(permitted(&crate::grants::Grants::new([grant])));
        // A route in another namespace than the Gateway's: not attached (allowedRoutes Same).
        let mut elsewhere = route.clone();
        elsewhere.namespace = "other".into();
        let t = compile(&elsewhere, &crate::grants::Grants::default());
        assert!(t.rules.is_empty(), "{:?}", t.ignored);
    }

    #[test]
    fn listener_selectors_admit_namespaces_by_label() {
        let selector = |labels: &[(&str, &str)], exprs: Vec<(String, String, Vec<String>)>| {
            RouteNamespaces::Selector(LabelSelector {
                match_labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                match_expressions: exprs,
            })
        };
        let gw = |allowed| one_listener_gateway("infra", allowed);
        let mut namespaces = NamespaceLabels::new();
        namespaces.insert(
            "apps".into(),
            [("team".to_string(), "a".to_string())].into(),
        );
        namespaces.insert("other".into(), Default::default());
        let admits = |g: &Gateway, ns: &str| listener_admits(g, &g.listeners[0], ns, &namespaces);
        let by_label = gw(selector(&[("team", "a")], vec![]));
        assert!(admits(&by_label, "apps"));
        assert!(!admits(&by_label, "other"));
        assert!(!admits(&by_label, "unknown"));
        let exists = gw(selector(
            &[],
            vec![("team".into(), "Exists".into(), vec![])],
        ));
        assert!(admits(&exists, "apps") && !admits(&exists, "other"));
        let not_in = gw(selector(
            &[],
            vec![("team".into(), "NotIn".into(), vec!["a".into()])],
        ));
        assert!(!admits(&not_in, "apps") && admits(&not_in, "other"));
        let bad_op = gw(selector(&[], vec![("team".into(), "Near".into(), vec![])]));
        assert!(!admits(&bad_op, "apps"));
        assert!(admits(&gw(RouteNamespaces::Same), "infra"));
        assert!(!admits(&gw(RouteNamespaces::Same), "apps"));
        assert!(admits(&gw(RouteNamespaces::All), "other"));
        assert!(!admits(&gw(RouteNamespaces::None), "infra"));
    }
}
