//! Which endpoints of a service port may receive new traffic, as kube-proxy decides it
//! (pkg/proxy/topology.go): ready endpoints; when none is ready, the ones that are serving and
//! terminating (so a rolling update drains instead of failing); never the others.
//!
//! Shared by the L4 and L7 proxies. `usable` is the plain rule; `categorize` adds what the L4
//! proxy needs on top, as kube-proxy's `CategorizeEndpoints` does: topology hints
//! (trafficDistribution PreferClose / PreferSameZone / PreferSameNode) and
//! internal/externalTrafficPolicy Local.

use std::net::IpAddr;

use tables::{EndpointRoute, Service, ServiceType, TrafficPolicy};

/// Endpoints eligible for new connections or requests, in table order. Empty means "no
/// endpoints": TCP refuses, UDP answers ICMP unreachable, HTTP answers 503.
pub fn usable(endpoints: &[EndpointRoute]) -> Vec<&EndpointRoute> {
    eligible(endpoints.iter().collect())
}

/// As `usable`, restricted to one address family (a ClusterIP of one family routes to endpoints
/// of the same family, as kube-proxy programs each family separately).
pub fn usable_for_family(endpoints: &[EndpointRoute], family_of: IpAddr) -> Vec<&EndpointRoute> {
    eligible(
        endpoints
            .iter()
            .filter(|e| e.ip().is_ipv4() == family_of.is_ipv4())
            .collect(),
    )
}

/// The rule itself: the ready ones; if none is ready, the serving and terminating ones.
fn eligible(endpoints: Vec<&EndpointRoute>) -> Vec<&EndpointRoute> {
    if endpoints.iter().any(|e| e.conditions.is_ready()) {
        return endpoints
            .into_iter()
            .filter(|e| e.conditions.is_ready())
            .collect();
    }
    endpoints
        .into_iter()
        .filter(|e| e.conditions.is_serving() && e.conditions.is_terminating())
        .collect()
}

/// The node this proxy runs on, as topology sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeTopology {
    /// `--node-name`; endpoints with this `nodeName` are local.
    pub name: Option<String>,
    /// `--zone` (or the Node's `topology.kubernetes.io/zone` label).
    pub zone: Option<String>,
}

/// How the traffic reached the service: which traffic policy applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrafficKind {
    /// To a ClusterIP: `internalTrafficPolicy`.
    Internal,
    /// To a NodePort, externalIP or LoadBalancer IP: `externalTrafficPolicy`.
    External,
}

/// The topology mode chosen from the hints (kube-proxy's `topologyModeFromHints`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopologyMode {
    /// Every ready endpoint carries a node hint and one is for this node.
    SameNode,
    /// Every ready endpoint carries a zone hint and one is for this node's zone.
    SameZone,
}

/// The endpoint sets of one service port as this node sees them (kube-proxy's
/// `CategorizeEndpoints`). Each list is in table order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Categories<'a> {
    /// For traffic under a `Cluster` policy: ready endpoints narrowed by topology, else
    /// serving+terminating ones. Empty when no traffic uses the Cluster policy.
    pub cluster: Vec<&'a EndpointRoute>,
    /// For traffic under a `Local` policy: this node's ready endpoints, else its
    /// serving+terminating ones. Empty when no traffic uses the Local policy.
    pub local: Vec<&'a EndpointRoute>,
    /// Some endpoint anywhere is ready, or serving and terminating. When false, new
    /// connections are rejected (TCP RST, ICMP port unreachable); when true but the set for the
    /// traffic is empty (Local policy, no local endpoint), they are dropped, as kube-proxy does.
    pub has_any: bool,
    pub topology: Option<TopologyMode>,
}

impl<'a> Categories<'a> {
    /// The endpoints that traffic of `kind` to `service` may use.
    pub fn for_traffic(&self, service: &Service, kind: TrafficKind) -> &[&'a EndpointRoute] {
        if policy_local(service, kind) {
            &self.local
        } else {
            &self.cluster
        }
    }
}

/// A Service is reachable from outside the cluster network (kube-proxy's `ExternallyAccessible`).
pub fn externally_accessible(service: &Service) -> bool {
    matches!(
        service.service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    ) || !service.external_ips.is_empty()
        || !service.load_balancer_ips.is_empty()
}

/// `externalTrafficPolicy: Local` in force (only meaningful when externally accessible).
pub fn external_policy_local(service: &Service) -> bool {
    externally_accessible(service) && service.external_traffic_policy == TrafficPolicy::Local
}

/// Traffic of `kind` is restricted to this node's endpoints.
pub fn policy_local(service: &Service, kind: TrafficKind) -> bool {
    match kind {
        TrafficKind::Internal => service.internal_traffic_policy == TrafficPolicy::Local,
        TrafficKind::External => external_policy_local(service),
    }
}

fn uses_cluster_endpoints(service: &Service) -> bool {
    service.internal_traffic_policy != TrafficPolicy::Local
        || (externally_accessible(service) && !external_policy_local(service))
}

fn uses_local_endpoints(service: &Service) -> bool {
    service.internal_traffic_policy == TrafficPolicy::Local || external_policy_local(service)
}

/// Hints of one endpoint: the EndpointSlice's own hints when any ready endpoint of the port has
/// some; otherwise, when the Service sets `trafficDistribution`, the hints the EndpointSlice
/// controller would have written (its zone for PreferClose/PreferSameZone; its node and zone for
/// PreferSameNode), so manifests without hints behave as a cluster would.
struct Hints {
    synthesize: Option<tables::TrafficDistribution>,
}

impl Hints {
    fn new(endpoints: &[&EndpointRoute], service: &Service) -> Self {
        let any_explicit = endpoints.iter().any(|e| {
            e.conditions.is_ready()
                && (!e.endpoint.hints_for_zones().is_empty()
                    || !e.endpoint.hints_for_nodes().is_empty())
        });
        Hints {
            synthesize: if any_explicit {
                None
            } else {
                service.traffic_distribution
            },
        }
    }

    fn has_zone(&self, e: &EndpointRoute) -> bool {
        match self.synthesize {
            None => !e.endpoint.hints_for_zones().is_empty(),
            Some(_) => e.endpoint.zone.is_some(),
        }
    }

    fn zone_hint_is(&self, e: &EndpointRoute, zone: &str) -> bool {
        match self.synthesize {
            None => e.endpoint.hints_for_zones().iter().any(|z| &**z == zone),
            Some(_) => e.endpoint.zone.as_deref() == Some(zone),
        }
    }

    fn has_node(&self, e: &EndpointRoute) -> bool {
        match self.synthesize {
            None => !e.endpoint.hints_for_nodes().is_empty(),
            Some(tables::TrafficDistribution::PreferSameNode) => e.endpoint.node_name.is_some(),
            Some(_) => false,
        }
    }

    fn node_hint_is(&self, e: &EndpointRoute, node: &str) -> bool {
        match self.synthesize {
            None => e.endpoint.hints_for_nodes().iter().any(|n| &**n == node),
            Some(tables::TrafficDistribution::PreferSameNode) => {
                e.endpoint.node_name.as_deref() == Some(node)
            }
            Some(_) => false,
        }
    }
}

fn topology_mode(
    endpoints: &[&EndpointRoute],
    hints: &Hints,
    node: &NodeTopology,
) -> Option<TopologyMode> {
    let (mut all_node, mut for_node, mut all_zone, mut for_zone) = (true, false, true, false);
    let mut any_ready = false;
    for e in endpoints.iter().filter(|e| e.conditions.is_ready()) {
        any_ready = true;
        if !hints.has_zone(e) {
            all_zone = false;
        } else if node
            .zone
            .as_deref()
            .is_some_and(|z| hints.zone_hint_is(e, z))
        {
            for_zone = true;
        }
        if !hints.has_node(e) {
            all_node = false;
        } else if node
            .name
            .as_deref()
            .is_some_and(|n| hints.node_hint_is(e, n))
        {
            for_node = true;
        }
    }
    if !any_ready {
        return None;
    }
    if all_node && for_node {
        Some(TopologyMode::SameNode)
    } else if all_zone && for_zone {
        Some(TopologyMode::SameZone)
    } else {
        None
    }
}

/// Sorts the endpoints of one service port (optionally of one address family) into the sets
/// kube-proxy would program on this node. Runs per connection in `bind` mode and per table
/// update for the nftables verdicts; cost is linear in the endpoints of the port.
pub fn categorize<'a>(
    endpoints: &'a [EndpointRoute],
    service: &Service,
    node: &NodeTopology,
    family: Option<IpAddr>,
) -> Categories<'a> {
    let eps: Vec<&'a EndpointRoute> = endpoints
        .iter()
        .filter(|e| family.is_none_or(|f| e.ip().is_ipv4() == f.is_ipv4()))
        .collect();
    let is_local = |e: &EndpointRoute| {
        node.name.is_some() && e.endpoint.node_name.as_deref() == node.name.as_deref()
    };
    let serving_terminating =
        |e: &EndpointRoute| e.conditions.is_serving() && e.conditions.is_terminating();
    let mut out = Categories::default();
    if uses_cluster_endpoints(service) {
        let hints = Hints::new(&eps, service);
        out.topology = topology_mode(&eps, &hints, node);
        out.cluster = eps
            .iter()
            .copied()
            .filter(|e| {
                e.conditions.is_ready()
                    && match out.topology {
                        None => true,
                        Some(TopologyMode::SameNode) => node
                            .name
                            .as_deref()
                            .is_some_and(|n| hints.node_hint_is(e, n)),
                        Some(TopologyMode::SameZone) => node
                            .zone
                            .as_deref()
                            .is_some_and(|z| hints.zone_hint_is(e, z)),
                    }
            })
            .collect();
        if out.cluster.is_empty() {
            out.cluster = eps
                .iter()
                .copied()
                .filter(|e| serving_terminating(e))
                .collect();
        }
        out.has_any = !out.cluster.is_empty();
    }
    if !uses_local_endpoints(service) {
        return out;
    }
    let (mut local_ready, mut local_st) = (false, false);
    for e in &eps {
        if e.conditions.is_ready() {
            out.has_any = true;
            local_ready |= is_local(e);
        } else if serving_terminating(e) {
            out.has_any = true;
            local_st |= is_local(e);
        }
    }
    if local_ready {
        out.local = eps
            .iter()
            .copied()
            .filter(|e| is_local(e) && e.conditions.is_ready())
            .collect();
    } else if local_st {
        out.local = eps
            .iter()
            .copied()
            .filter(|e| is_local(e) && serving_terminating(e))
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tables::{Conditions, EndpointInfo};

    fn ep(addr: &str, ready: bool, serving: bool, terminating: bool) -> EndpointRoute {
        EndpointRoute::new(
            addr.parse().unwrap(),
            Conditions {
                ready: Some(ready),
                serving: Some(serving),
                terminating: Some(terminating),
            },
            Default::default(),
        )
    }

    #[test]
    fn ready_first_then_serving_terminating_never_others() {
        let eps = vec![
            ep("10.0.0.1:80", false, true, true),
            ep("10.0.0.2:80", true, true, false),
            ep("10.0.0.3:80", false, false, false),
        ];
        let u: Vec<_> = usable(&eps).iter().map(|e| e.addr().to_string()).collect();
        assert_eq!(u, ["10.0.0.2:80"]);
        let draining = vec![
            ep("10.0.0.1:80", false, true, true),
            ep("10.0.0.3:80", false, false, true),
        ];
        let u: Vec<_> = usable(&draining)
            .iter()
            .map(|e| e.addr().to_string())
            .collect();
        assert_eq!(u, ["10.0.0.1:80"]);
        assert!(usable(&[ep("10.0.0.3:80", false, false, false)]).is_empty());
    }

    #[test]
    fn family_filter() {
        let eps = vec![
            ep("10.0.0.1:80", true, true, false),
            ep("[fd00::1]:80", true, true, false),
        ];
        let v6 = usable_for_family(&eps, "fd00::10".parse().unwrap());
        assert_eq!(v6.len(), 1);
        assert!(v6[0].addr().is_ipv6());
    }

    fn at(addr: &str, node: &str, zone: &str, zones: &[&str], nodes: &[&str]) -> EndpointRoute {
        let mut e = ep(addr, true, true, false);
        e.endpoint = Arc::new(EndpointInfo {
            node_name: Some(node.into()),
            zone: Some(zone.into()),
            hints: (!zones.is_empty() || !nodes.is_empty()).then(|| {
                Box::new(tables::Hints {
                    for_zones: zones.iter().map(|z| (*z).into()).collect(),
                    for_nodes: nodes.iter().map(|n| (*n).into()).collect(),
                })
            }),
        });
        e
    }

    fn node(name: &str, zone: &str) -> NodeTopology {
        NodeTopology {
            name: Some(name.into()),
            zone: Some(zone.into()),
        }
    }

    fn addrs(eps: &[&EndpointRoute]) -> Vec<String> {
        eps.iter().map(|e| e.addr().to_string()).collect()
    }

    #[test]
    fn zone_hints_narrow_cluster_endpoints() {
        let eps = vec![
            at("10.0.0.1:80", "n1", "a", &["a"], &[]),
            at("10.0.0.2:80", "n2", "b", &["b"], &[]),
        ];
        let svc = Service::default();
        let c = categorize(&eps, &svc, &node("n1", "a"), None);
        assert_eq!(c.topology, Some(TopologyMode::SameZone));
        assert_eq!(addrs(&c.cluster), ["10.0.0.1:80"]);
        // No endpoint hinted for zone c: hints are ignored.
        let c = categorize(&eps, &svc, &node("n3", "c"), None);
        assert_eq!(c.topology, None);
        assert_eq!(c.cluster.len(), 2);
        // One endpoint without hints: hints are ignored.
        let mut partial = eps.clone();
        partial.push(at("10.0.0.3:80", "n3", "c", &[], &[]));
        assert_eq!(
            categorize(&partial, &svc, &node("n1", "a"), None)
                .cluster
                .len(),
            3
        );
    }

    #[test]
    fn node_hints_win_over_zone_hints() {
        let eps = vec![
            at("10.0.0.1:80", "n1", "a", &["a"], &["n1"]),
            at("10.0.0.2:80", "n2", "a", &["a"], &["n2"]),
        ];
        let c = categorize(&eps, &Service::default(), &node("n2", "a"), None);
        assert_eq!(c.topology, Some(TopologyMode::SameNode));
        assert_eq!(addrs(&c.cluster), ["10.0.0.2:80"]);
    }

    #[test]
    fn traffic_distribution_without_hints_uses_endpoint_zone_and_node() {
        let eps = vec![
            at("10.0.0.1:80", "n1", "a", &[], &[]),
            at("10.0.0.2:80", "n2", "b", &[], &[]),
        ];
        let mut svc = Service {
            traffic_distribution: Some(tables::TrafficDistribution::PreferClose),
            ..Default::default()
        };
        let c = categorize(&eps, &svc, &node("n9", "b"), None);
        assert_eq!(addrs(&c.cluster), ["10.0.0.2:80"]);
        svc.traffic_distribution = Some(tables::TrafficDistribution::PreferSameNode);
        let c = categorize(&eps, &svc, &node("n1", "b"), None);
        assert_eq!(addrs(&c.cluster), ["10.0.0.1:80"]);
        // No endpoint on this node: falls back to the zone.
        let c = categorize(&eps, &svc, &node("n9", "b"), None);
        assert_eq!(addrs(&c.cluster), ["10.0.0.2:80"]);
        svc.traffic_distribution = None;
        assert_eq!(
            categorize(&eps, &svc, &node("n1", "b"), None).cluster.len(),
            2
        );
    }

    #[test]
    fn local_policies() {
        let eps = vec![
            at("10.0.0.1:80", "n1", "a", &[], &[]),
            at("10.0.0.2:80", "n2", "a", &[], &[]),
        ];
        let svc = Service {
            service_type: ServiceType::NodePort,
            external_traffic_policy: TrafficPolicy::Local,
            ..Default::default()
        };
        let c = categorize(&eps, &svc, &node("n1", "a"), None);
        assert_eq!(
            addrs(c.for_traffic(&svc, TrafficKind::External)),
            ["10.0.0.1:80"]
        );
        assert_eq!(c.for_traffic(&svc, TrafficKind::Internal).len(), 2);
        let c = categorize(&eps, &svc, &node("n3", "a"), None);
        assert!(c.for_traffic(&svc, TrafficKind::External).is_empty());
        assert!(
            c.has_any,
            "no local endpoint but some elsewhere: drop, not reject"
        );

        let itp = Service {
            internal_traffic_policy: TrafficPolicy::Local,
            ..Default::default()
        };
        let c = categorize(&eps, &itp, &node("n2", "a"), None);
        assert_eq!(
            addrs(c.for_traffic(&itp, TrafficKind::Internal)),
            ["10.0.0.2:80"]
        );
        assert!(c.cluster.is_empty());
        // Local serving+terminating endpoints are used when no local one is ready.
        let mut draining = eps.clone();
        draining[1].conditions = Conditions {
            ready: Some(false),
            serving: Some(true),
            terminating: Some(true),
        };
        let c = categorize(&draining, &itp, &node("n2", "a"), None);
        assert_eq!(addrs(&c.local), ["10.0.0.2:80"]);
        let none: Vec<EndpointRoute> = vec![ep("10.0.0.9:80", false, false, false)];
        assert!(!categorize(&none, &itp, &node("n2", "a"), None).has_any);
    }
}
