//! Which endpoints of a service port may receive new traffic, as kube-proxy decides it
//! (pkg/proxy/topology.go): ready endpoints; when none is ready, the ones that are serving and
//! terminating (so a rolling update drains instead of failing); never the others.
//!
//! Shared by the L4 and L7 proxies. Topology and traffic policies narrow this set further in the
//! L4 proxy.

use std::net::IpAddr;

use tables::EndpointRoute;

/// Endpoints eligible for new connections or requests, in table order. Empty means "no
/// endpoints": TCP refuses, UDP answers ICMP unreachable, HTTP answers 503.
pub fn usable(endpoints: &[EndpointRoute]) -> Vec<&EndpointRoute> {
    let ready: Vec<&EndpointRoute> = endpoints
        .iter()
        .filter(|e| e.conditions.is_ready())
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .iter()
        .filter(|e| e.conditions.is_serving() && e.conditions.is_terminating())
        .collect()
}

/// As `usable`, restricted to one address family (a ClusterIP of one family routes to endpoints
/// of the same family, as kube-proxy programs each family separately).
pub fn usable_for_family(endpoints: &[EndpointRoute], family_of: IpAddr) -> Vec<&EndpointRoute> {
    let filtered: Vec<&EndpointRoute> = endpoints
        .iter()
        .filter(|e| e.addr.ip().is_ipv4() == family_of.is_ipv4())
        .collect();
    let ready: Vec<&EndpointRoute> = filtered
        .iter()
        .copied()
        .filter(|e| e.conditions.is_ready())
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    filtered
        .into_iter()
        .filter(|e| e.conditions.is_serving() && e.conditions.is_terminating())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tables::Conditions;

    fn ep(addr: &str, ready: bool, serving: bool, terminating: bool) -> EndpointRoute {
        EndpointRoute {
            addr: addr.parse().unwrap(),
            conditions: Conditions {
                ready: Some(ready),
                serving: Some(serving),
                terminating: Some(terminating),
            },
            node_name: None,
            zone: None,
            hints_for_zones: vec![],
            hints_for_nodes: vec![],
            target: None,
        }
    }

    #[test]
    fn ready_first_then_serving_terminating_never_others() {
        let eps = vec![
            ep("10.0.0.1:80", false, true, true),
            ep("10.0.0.2:80", true, true, false),
            ep("10.0.0.3:80", false, false, false),
        ];
        let u: Vec<_> = usable(&eps).iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(u, ["10.0.0.2:80"]);
        let draining = vec![
            ep("10.0.0.1:80", false, true, true),
            ep("10.0.0.3:80", false, false, true),
        ];
        let u: Vec<_> = usable(&draining)
            .iter()
            .map(|e| e.addr.to_string())
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
        assert!(v6[0].addr.is_ipv6());
    }
}
