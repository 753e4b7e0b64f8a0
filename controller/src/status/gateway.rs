//! What the status of switchboard's GatewayClasses, Gateways and HTTPRoutes should say.
//!
//! Pure: objects in, desired status out (conditions without `lastTransitionTime`, which
//! `conditions.rs` carries over or stamps when writing). Attachment uses the same functions the
//! HTTP table is compiled with (`tables::compile::{parent_selects, listener_admits,
//! intersect_hostnames}`), so what the status says is attached is what is served.
//!
//! - GatewayClass (ours: `controllerName` is switchboard's): `Accepted`.
//! - Gateway of one of our classes: `Accepted`, `Programmed`, `addresses`, and per listener
//!   `Accepted`, `Programmed`, `ResolvedRefs`, `Conflicted`, `supportedKinds`, `attachedRoutes`.
//! - HTTPRoute: one `parents[]` entry per parentRef naming a Gateway of ours, with `Accepted`
//!   (`NotAllowedByListeners`, `NoMatchingListenerHostname`, `NoMatchingParent`) and
//!   `ResolvedRefs` (`BackendNotFound`, `RefNotPermitted`, `InvalidKind`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::ResourceExt;
use serde_json::{json, Value};
use tables::compile::{
    intersect_hostnames, is_http_listener, listener_admits, parent_selects, NamespaceLabels,
};

use super::conditions::{cond, Address};
use super::{GatewayClassObj, GatewayObj, HttpRouteObj};
use crate::convert;
use crate::gateway_api as gw;
use tables::grants::Grants;
use tables::ports::PortState;

/// Everything the Gateway API status depends on.
pub struct World<'a> {
    pub controller: &'a str,
    pub classes: &'a [Arc<GatewayClassObj>],
    pub gateways: &'a [Arc<GatewayObj>],
    pub routes: &'a [Arc<HttpRouteObj>],
    /// Services and TLS Secrets that exist, as (namespace, name).
    pub services: &'a BTreeSet<(String, String)>,
    pub secrets: &'a BTreeSet<(String, String)>,
    pub grants: &'a Grants,
    /// Labels of each Namespace, for `allowedRoutes` selectors.
    pub namespaces: &'a NamespaceLabels,
    pub addresses: &'a [Address],
    /// The Gateway listener ports this replica opened or could not open (`None`: it runs no
    /// HTTP proxy, and ports are left out of the status).
    pub ports: Option<&'a BTreeMap<u16, PortState>>,
    /// The installed Gateway API bundle version (the CRDs' `bundle-version` annotation), when
    /// it could be read.
    pub bundle_version: Option<&'a str>,
}

/// Whether switchboard works with a Gateway API bundle version: it reads the `v1` API, which
/// exists from v1.0.0 on (tested with v1.3.0); a version that does not parse counts as
/// unsupported. Newer minor versions keep `v1` compatible, so they are supported.
pub fn supported_version(v: &str) -> bool {
    let mut parts = v.trim_start_matches('v').split(['.', '-']);
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    matches!((major, minor), (Some(m), Some(_)) if m >= 1)
}

/// The desired status of every object switchboard owns status for, keyed by (namespace, name)
/// (the empty namespace for GatewayClasses). For HTTPRoutes only our `parents[]` entries.
#[derive(Debug, Default)]
pub struct Desired {
    pub classes: BTreeMap<(String, String), Value>,
    pub gateways: BTreeMap<(String, String), Value>,
    pub routes: BTreeMap<(String, String), Vec<Value>>,
}

fn generation<K: ResourceExt>(o: &K) -> i64 {
    o.meta().generation.unwrap_or(0)
}

fn model_gateway(g: &GatewayObj) -> Option<tables::Gateway> {
    let obj = gw::Gateway {
        types: g.types.clone(),
        metadata: g.metadata.clone(),
        spec: g.spec.clone(),
        status: None,
    };
    convert::gateway(&obj, "default").ok()
}

/// A listener's problems with its certificate references, if any: (reason, message).
fn certificate_problem(w: &World, gw_ns: &str, l: &gw::Listener) -> Option<(&'static str, String)> {
    if l.protocol != "HTTPS" {
        return None;
    }
    let tls = l.tls.as_ref();
    if tls.and_then(|t| t.mode.as_deref()) == Some("Passthrough") {
        return None; // reported as an unsupported protocol mode instead
    }
    let refs = tls.map(|t| t.certificate_refs.as_slice()).unwrap_or(&[]);
    if refs.is_empty() {
        return Some((
            "InvalidCertificateRef",
            "an HTTPS listener needs tls.certificateRefs".into(),
        ));
    }
    for r in refs {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        if !group.is_empty() || kind != "Secret" {
            return Some((
                "InvalidCertificateRef",
                format!(
                    "certificateRef {kind}.{group} {:?}: only core Secrets",
                    r.name
                ),
            ));
        }
        let ns = r.namespace.as_deref().unwrap_or(gw_ns);
        if ns != gw_ns
            && !w.grants.permits(
                ("gateway.networking.k8s.io", "Gateway", gw_ns),
                ("", "Secret", ns, &r.name),
            )
        {
            return Some((
                "RefNotPermitted",
                format!(
                    "certificateRef to Secret {ns}/{} needs a ReferenceGrant in {ns}",
                    r.name
                ),
            ));
        }
        if !w.secrets.contains(&(ns.to_string(), r.name.clone())) {
            return Some((
                "InvalidCertificateRef",
                format!(
                    "Secret {ns}/{} does not exist or is not of type kubernetes.io/tls",
                    r.name
                ),
            ));
        }
    }
    None
}

/// Listeners of one Gateway that conflict, with the reason, by index.
fn conflicts(listeners: &[gw::Listener]) -> BTreeMap<usize, (&'static str, String)> {
    let mut out = BTreeMap::new();
    for (i, a) in listeners.iter().enumerate() {
        for (j, b) in listeners.iter().enumerate() {
            if i == j || a.port != b.port {
                continue;
            }
            if a.protocol != b.protocol {
                out.entry(i).or_insert((
                    "ProtocolConflict",
                    format!(
                        "listener {:?} uses port {} with protocol {}",
                        b.name, b.port, b.protocol
                    ),
                ));
            } else if a.hostname == b.hostname {
                out.entry(i).or_insert((
                    "HostnameConflict",
                    format!(
                        "listener {:?} has the same port, protocol and hostname",
                        b.name
                    ),
                ));
            }
        }
    }
    out
}

/// Whether listener `l`'s port is open for it, per the proxy's report: `Ok(true)` open,
/// `Ok(false)` not tried yet, `Err` why it is unavailable (`PortUnavailable`).
fn port_state(ports: &BTreeMap<u16, PortState>, l: &gw::Listener) -> Result<bool, String> {
    let tls = l.protocol == "HTTPS";
    let port = l.port as u16;
    match ports.get(&port) {
        None => Ok(false),
        Some(PortState::Open { tls: t }) if *t == tls => Ok(true),
        Some(PortState::Open { tls: t }) => Err(format!(
            "port {port} serves {} for another listener",
            if *t { "HTTPS" } else { "HTTP" }
        )),
        Some(PortState::Unavailable(why)) => Err(why.clone()),
    }
}

/// The route kinds a listener supports, and whether `allowedRoutes.kinds` named one that is
/// not supported.
fn supported_kinds(l: &gw::Listener) -> (Vec<Value>, bool) {
    if !matches!(l.protocol.as_str(), "HTTP" | "HTTPS") {
        return (vec![], false);
    }
    let http_route = json!({"group": gw::GROUP, "kind": "HTTPRoute"});
    let asked: Vec<&gw::RouteGroupKind> = l.allowed_routes.iter().flat_map(|a| &a.kinds).collect();
    if asked.is_empty() {
        return (vec![http_route], false);
    }
    let mut kinds = vec![];
    let mut invalid = false;
    for k in asked {
        if k.kind == "HTTPRoute" && k.group.as_deref().is_none_or(|g| g == gw::GROUP) {
            if kinds.is_empty() {
                kinds.push(http_route.clone());
            }
        } else {
            invalid = true;
        }
    }
    (kinds, invalid)
}

/// Computes the desired status of everything ours.
pub fn desired(w: &World) -> Desired {
    let mut out = Desired::default();
    let our_classes: BTreeSet<String> = w
        .classes
        .iter()
        .filter(|c| c.spec.controller_name == w.controller)
        .map(|c| c.name_any())
        .collect();
    for c in w
        .classes
        .iter()
        .filter(|c| our_classes.contains(&c.name_any()))
    {
        let g = generation(c.as_ref());
        let conditions = match w.bundle_version {
            // Unknown (the CRD could not be read): no SupportedVersion condition.
            None => vec![cond(
                "Accepted",
                true,
                "Accepted",
                "handled by switchboard",
                g,
            )],
            Some(v) if supported_version(v) => vec![
                cond("Accepted", true, "Accepted", "handled by switchboard", g),
                cond(
                    "SupportedVersion",
                    true,
                    "SupportedVersion",
                    &format!("Gateway API {v}"),
                    g,
                ),
            ],
            Some(v) => {
                let msg =
                    format!("Gateway API {v} is not supported; switchboard needs v1.0.0 or later");
                vec![
                    cond("Accepted", false, "UnsupportedVersion", &msg, g),
                    cond("SupportedVersion", false, "UnsupportedVersion", &msg, g),
                ]
            }
        };
        out.classes.insert(
            (String::new(), c.name_any()),
            json!({ "conditions": conditions }),
        );
    }
    let ours: Vec<(&GatewayObj, tables::Gateway)> = w
        .gateways
        .iter()
        .filter(|g| our_classes.contains(&g.spec.gateway_class_name))
        .filter_map(|g| model_gateway(g).map(|m| (g.as_ref(), m)))
        .collect();

    // Route attachments first: listeners count the routes attached to them.
    let mut attached: BTreeMap<(String, String, String), BTreeSet<(String, String)>> =
        BTreeMap::new();
    for r in w.routes {
        let route_ns = r.namespace().unwrap_or_else(|| "default".into());
        let mut parents = vec![];
        for p in &r.spec.parent_refs {
            let group = p.group.as_deref().unwrap_or(gw::GROUP);
            let kind = p.kind.as_deref().unwrap_or("Gateway");
            if group != gw::GROUP || kind != "Gateway" {
                continue;
            }
            let ns = p.namespace.clone().unwrap_or_else(|| route_ns.clone());
            let Some((_, gwm)) = ours
                .iter()
                .find(|(_, m)| m.namespace == ns && m.name == p.name)
            else {
                continue; // not a Gateway of ours (or not there): another controller's business
            };
            let (accepted, on) = route_accepted(r, &route_ns, p, gwm, w.namespaces);
            for l in on {
                attached
                    .entry((ns.clone(), p.name.clone(), l))
                    .or_default()
                    .insert((route_ns.clone(), r.name_any()));
            }
            let resolved = route_resolved(w, r, &route_ns);
            let g = generation(r.as_ref());
            let mut parent_ref = json!({"group": group, "kind": kind, "name": p.name});
            if let Some(ns) = &p.namespace {
                parent_ref["namespace"] = json!(ns);
            }
            if let Some(s) = &p.section_name {
                parent_ref["sectionName"] = json!(s);
            }
            if let Some(port) = p.port {
                parent_ref["port"] = json!(port);
            }
            parents.push(json!({
                "parentRef": parent_ref,
                "controllerName": w.controller,
                "conditions": [
                    cond("Accepted", accepted.0, accepted.1, &accepted.2, g),
                    cond("ResolvedRefs", resolved.0, resolved.1, &resolved.2, g),
                ],
            }));
        }
        if !parents.is_empty() {
            out.routes.insert((route_ns, r.name_any()), parents);
        }
    }

    for (g, _) in &ours {
        let ns = g.namespace().unwrap_or_else(|| "default".into());
        let gen = generation(*g);
        let conflicted = conflicts(&g.spec.listeners);
        let mut listeners = vec![];
        let mut any_valid = false;
        for (i, l) in g.spec.listeners.iter().enumerate() {
            let (kinds, invalid_kinds) = supported_kinds(l);
            let passthrough = l.tls.as_ref().and_then(|t| t.mode.as_deref()) == Some("Passthrough");
            let supported = matches!(l.protocol.as_str(), "HTTP" | "HTTPS") && !passthrough;
            let cert = certificate_problem(w, &ns, l);
            let conflict = conflicted.get(&i);
            // Whether the port is open for this listener: `Err` = why not; `Ok(false)` = not
            // tried yet.
            let port = match (supported && conflict.is_none(), w.ports) {
                (true, Some(ports)) => port_state(ports, l),
                _ => Ok(true),
            };
            let accepted = if let Err(why) = &port {
                cond("Accepted", false, "PortUnavailable", why, gen)
            } else if supported {
                cond("Accepted", true, "Accepted", "", gen)
            } else {
                let what = if passthrough {
                    "TLS mode Passthrough".to_string()
                } else {
                    format!("protocol {}", l.protocol)
                };
                cond(
                    "Accepted",
                    false,
                    "UnsupportedProtocol",
                    &format!("{what} is not supported; HTTP and HTTPS are"),
                    gen,
                )
            };
            let resolved = match (&cert, invalid_kinds) {
                (Some((reason, msg)), _) => cond("ResolvedRefs", false, reason, msg, gen),
                (None, true) => cond(
                    "ResolvedRefs",
                    false,
                    "InvalidRouteKinds",
                    "only HTTPRoute is supported",
                    gen,
                ),
                (None, false) => cond("ResolvedRefs", true, "ResolvedRefs", "", gen),
            };
            let conflicted_cond = match conflict {
                Some((reason, msg)) => cond("Conflicted", true, reason, msg, gen),
                None => cond("Conflicted", false, "NoConflicts", "", gen),
            };
            let ok = supported && cert.is_none() && conflict.is_none() && port.is_ok();
            any_valid |= supported;
            let programmed = if ok && port == Ok(false) {
                cond(
                    "Programmed",
                    false,
                    "Pending",
                    "the listener's port is not open yet",
                    gen,
                )
            } else if ok {
                cond("Programmed", true, "Programmed", "", gen)
            } else {
                cond(
                    "Programmed",
                    false,
                    "Invalid",
                    "see the Accepted, ResolvedRefs and Conflicted conditions",
                    gen,
                )
            };
            let count = attached
                .get(&(ns.clone(), g.name_any(), l.name.clone()))
                .map_or(0, |s| s.len());
            listeners.push(json!({
                "name": l.name,
                "supportedKinds": kinds,
                "attachedRoutes": count,
                "conditions": [accepted, programmed, resolved, conflicted_cond],
            }));
        }
        let accepted = if any_valid || g.spec.listeners.is_empty() {
            cond("Accepted", true, "Accepted", "", gen)
        } else {
            cond(
                "Accepted",
                false,
                "ListenersNotValid",
                "no listener has a supported protocol",
                gen,
            )
        };
        let programmed = if w.addresses.is_empty() {
            cond(
                "Programmed",
                false,
                "AddressNotAssigned",
                "no address: set --gateway-address or --publish-service",
                gen,
            )
        } else if any_valid {
            cond("Programmed", true, "Programmed", "", gen)
        } else {
            cond("Programmed", false, "Invalid", "no valid listener", gen)
        };
        let addresses: Vec<Value> = w.addresses.iter().map(Address::gateway_json).collect();
        out.gateways.insert(
            (ns, g.name_any()),
            json!({"addresses": addresses, "conditions": [accepted, programmed], "listeners": listeners}),
        );
    }
    out
}

/// Whether a route attaches through parentRef `p` to Gateway `gwm`: (ok, reason, message) and
/// the names of the listeners it attaches to.
fn route_accepted(
    r: &HttpRouteObj,
    route_ns: &str,
    p: &gw::ParentReference,
    gwm: &tables::Gateway,
    namespaces: &NamespaceLabels,
) -> ((bool, &'static str, String), Vec<String>) {
    let parent = tables::ParentRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        section_name: p.section_name.clone(),
        port: p.port.and_then(|p| u16::try_from(p).ok()),
    };
    let selected: Vec<&tables::GatewayListener> = gwm
        .listeners
        .iter()
        .filter(|l| parent_selects(&parent, l))
        .collect();
    if selected.is_empty() {
        let msg = "no listener matches the parentRef's sectionName and port".to_string();
        return ((false, "NoMatchingParent", msg), vec![]);
    }
    let admitted: Vec<&&tables::GatewayListener> = selected
        .iter()
        .filter(|l| listener_admits(gwm, l, route_ns, namespaces))
        .collect();
    if admitted.is_empty() {
        let why = if selected.iter().all(|l| !is_http_listener(l)) {
            "no selected listener is HTTP or HTTPS"
        } else {
            "the listeners' allowedRoutes do not admit this route's namespace or kind"
        };
        return ((false, "NotAllowedByListeners", why.into()), vec![]);
    }
    let route_hosts: Vec<String> = r
        .spec
        .hostnames
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let on: Vec<String> = admitted
        .iter()
        .filter(|l| match &l.hostname {
            None => true,
            Some(_) if route_hosts.is_empty() => true,
            Some(h) => !intersect_hostnames(&h.to_ascii_lowercase(), &route_hosts).is_empty(),
        })
        .map(|l| l.name.clone())
        .collect();
    if on.is_empty() {
        let msg = "no listener hostname intersects the route's hostnames".to_string();
        return ((false, "NoMatchingListenerHostname", msg), vec![]);
    }
    ((true, "Accepted", String::new()), on)
}

/// Whether every backendRef of the route resolves: (ok, reason, message) of the first problem.
fn route_resolved(w: &World, r: &HttpRouteObj, route_ns: &str) -> (bool, &'static str, String) {
    for rule in &r.spec.rules {
        for b in &rule.backend_refs {
            let group = b.group.as_deref().unwrap_or("");
            let kind = b.kind.as_deref().unwrap_or("Service");
            if !group.is_empty() || kind != "Service" {
                return (
                    false,
                    "InvalidKind",
                    format!("backendRef {kind}.{group} {:?}: only core Services", b.name),
                );
            }
            let ns = b.namespace.as_deref().unwrap_or(route_ns);
            if ns != route_ns
                && !w.grants.permits(
                    (gw::GROUP, "HTTPRoute", route_ns),
                    ("", "Service", ns, &b.name),
                )
            {
                return (
                    false,
                    "RefNotPermitted",
                    format!(
                        "backendRef to Service {ns}/{} needs a ReferenceGrant in {ns}",
                        b.name
                    ),
                );
            }
            if !w.services.contains(&(ns.to_string(), b.name.clone())) {
                return (
                    false,
                    "BackendNotFound",
                    format!("Service {ns}/{} does not exist", b.name),
                );
            }
        }
    }
    (true, "ResolvedRefs", String::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj<T: serde::de::DeserializeOwned>(v: Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn conds<'a>(v: &'a Value, t: &str) -> (&'a str, &'a str) {
        let c = v
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .unwrap();
        (c["status"].as_str().unwrap(), c["reason"].as_str().unwrap())
    }

    /// What the API server's validation refuses (two listeners alike) and no address: the
    /// status still says what is wrong.
    #[test]
    fn hostname_conflict_and_no_address() {
        let class: Arc<GatewayClassObj> = obj(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "sb", "generation": 3},
            "spec": {"controllerName": "switchboard.dev/gateway"}}));
        let gw: Arc<GatewayObj> = obj(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "apps", "generation": 2},
            "spec": {"gatewayClassName": "sb", "listeners": [
                {"name": "a", "port": 80, "protocol": "HTTP", "hostname": "x.example"},
                {"name": "b", "port": 80, "protocol": "HTTP", "hostname": "x.example"},
                {"name": "c", "port": 81, "protocol": "HTTP",
                 "allowedRoutes": {"kinds": [{"kind": "TCPRoute"}]}}]}}));
        let route: Arc<HttpRouteObj> = obj(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "apps", "generation": 1},
            "spec": {"parentRefs": [{"name": "gw", "port": 81}, {"name": "elsewhere"}]}}));
        let (empty, grants, ns) = (BTreeSet::new(), Grants::default(), NamespaceLabels::new());
        let d = desired(&World {
            controller: "switchboard.dev/gateway",
            classes: &[class],
            gateways: &[gw],
            routes: &[route],
            services: &empty,
            secrets: &empty,
            grants: &grants,
            namespaces: &ns,
            addresses: &[],
            ports: None,
            bundle_version: None,
        });
        let class = &d.classes[&(String::new(), "sb".to_string())];
        assert_eq!(
            conds(&class["conditions"], "Accepted"),
            ("True", "Accepted")
        );
        assert_eq!(class["conditions"][0]["observedGeneration"], 3);
        let g = &d.gateways[&("apps".to_string(), "gw".to_string())];
        assert_eq!(
            conds(&g["conditions"], "Programmed"),
            ("False", "AddressNotAssigned")
        );
        for l in 0..2 {
            let c = &g["listeners"][l]["conditions"];
            assert_eq!(conds(c, "Conflicted"), ("True", "HostnameConflict"));
            assert_eq!(conds(c, "Programmed"), ("False", "Invalid"));
        }
        let c = &g["listeners"][2];
        assert_eq!(
            conds(&c["conditions"], "ResolvedRefs"),
            ("False", "InvalidRouteKinds")
        );
        assert_eq!(c["supportedKinds"], json!([]));
        // The route's parentRef by port selects listener c, whose kinds refuse HTTPRoute; the
        // Gateway that does not exist gets no entry.
        let parents = &d.routes[&("apps".to_string(), "r".to_string())];
        assert_eq!(parents.len(), 1);
        let p = &parents[0];
        assert_eq!(
            p["parentRef"],
            json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw", "port": 81})
        );
        assert_eq!(
            conds(&p["conditions"], "Accepted"),
            ("False", "NotAllowedByListeners")
        );
        assert_eq!(c["attachedRoutes"], 0);
    }

    #[test]
    fn bundle_versions() {
        use super::supported_version as ok;
        assert!(ok("v1.3.0") && ok("v1.0.0") && ok("v1.5.0-rc.1") && ok("v2.0.0"));
        assert!(!ok("v0.8.1") && !ok("") && !ok("main"));
    }
}
