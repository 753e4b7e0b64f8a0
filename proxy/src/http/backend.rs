//! From a rule's backend to endpoints: resolve the service port in the current `RouteTable`, keep
//! the usable endpoints (`crate::endpoints::usable`), and cache one balancer per service port,
//! rebuilt only when the table publishes a new endpoint list for it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tables::{EndpointRoute, HttpBackend, PortRef, Protocol, RouteTable, ServiceKey};

use super::balance::{Algorithm, Selector};
use super::health::{EndpointState, HealthRegistry, OutlierConfig};

/// The per-Service annotation that chooses the balancing algorithm (see `balance::Algorithm`).
pub const LB_ANNOTATION: &str = "switchboard.dev/lb-algorithm";

/// The per-Service annotation that lets the fast path pipeline GET and HEAD requests to its
/// endpoints (HTTP/1.1 pipelining, RFC 9112 9.3.2): `"true"` (up to `PIPELINE_DEPTH` requests
/// in one write), a number of requests from 2 to 64, or `"false"`. See `fast::pipeline::Batch`.
pub const PIPELINING_ANNOTATION: &str = "switchboard.dev/upstream-pipelining";

/// Requests one upstream write may carry for `switchboard.dev/upstream-pipelining: "true"`.
pub const PIPELINE_DEPTH: usize = 8;

/// The pipelining depth an annotation value asks for: 0 (off) unless `true` or 2–64.
pub fn pipelining_depth(value: &str) -> Option<usize> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("true") {
        return Some(PIPELINE_DEPTH);
    }
    if v.eq_ignore_ascii_case("false") {
        return Some(0);
    }
    match v.parse::<usize>() {
        Ok(n) if (2..=64).contains(&n) => Some(n),
        Ok(0 | 1) => Some(0),
        _ => None,
    }
}

/// The usable endpoints of one service port with their balancer.
pub struct PortBalancer {
    /// `ns/name:port`, the `service` label of metrics and the log.
    pub label: Arc<str>,
    pub service: ServiceKey,
    /// The service port number.
    pub port: u16,
    pub algorithm: Algorithm,
    /// The service port's `appProtocol` asks for HTTP/2 without TLS (`kubernetes.io/h2c`, or
    /// `h2c`/`grpc`): endpoints are spoken to with HTTP/2 prior knowledge (gRPC backends).
    pub h2c: bool,
    /// Most requests one pipelined write to an endpoint may carry (`PIPELINING_ANNOTATION`);
    /// 0: no pipelining.
    pub pipelining: usize,
    pub endpoints: Vec<Arc<EndpointState>>,
    pub selector: Selector,
    /// The table's endpoint list this was built from (pointer identity = unchanged).
    source: Arc<[EndpointRoute]>,
}

impl PortBalancer {
    /// Whether ejecting one more endpoint stays within the cap.
    pub fn may_eject(&self, cfg: &OutlierConfig) -> bool {
        let n = self.endpoints.len();
        let ejected = self.endpoints.iter().filter(|e| e.is_ejected()).count();
        (ejected + 1) * 100 <= n * cfg.max_ejected_percent as usize
    }

    /// What a connection to `endpoint` for this service port is, for the upstream registries.
    pub fn target(&self, endpoint: std::net::SocketAddr) -> super::upstreams::Target {
        super::upstreams::Target {
            service: self.service.clone(),
            port: self.port,
            endpoint,
            label: self.label.clone(),
        }
    }

    /// The balancer's next endpoint for `hash` not in `tried`, skipping ejected ones unless
    /// every untried endpoint is ejected (then one of those anyway, rather than fail: Envoy's
    /// panic threshold). `None` when every endpoint was tried.
    pub fn choose(&self, hash: u64, tried: &[usize]) -> Option<usize> {
        use super::balance::BackendIter;
        let mut it = self.selector.iter(hash);
        let mut ejected_fallback = None;
        while let Some(i) = it.next() {
            if tried.contains(&i) {
                continue;
            }
            if self.endpoints[i].is_ejected() {
                ejected_fallback.get_or_insert(i);
                continue;
            }
            return Some(i);
        }
        ejected_fallback
    }
}

/// Why a backend has nowhere to send a request (the 503 body).
#[derive(Debug, thiserror::Error)]
pub enum NoEndpoints {
    #[error("service {0} not found")]
    NoService(ServiceKey),
    #[error("service {0} has no TCP port {1}")]
    NoPort(ServiceKey, String),
    #[error("service {0} port {1}: no ready endpoints")]
    Empty(ServiceKey, String),
}

/// Balancers by service port, shared by every request.
pub struct Balancers {
    /// By service, port and algorithm: two routes may balance one service differently.
    map: RwLock<HashMap<(ServiceKey, u16, Algorithm), Arc<PortBalancer>>>,
    pub health: HealthRegistry,
    default_algorithm: Algorithm,
}

impl Balancers {
    pub fn new(default_algorithm: Algorithm) -> Self {
        Balancers {
            map: RwLock::new(HashMap::new()),
            health: HealthRegistry::default(),
            default_algorithm,
        }
    }

    /// The balancer for `backend` in `table`. The algorithm is the route's (`route_algorithm`,
    /// from its `switchboard.dev/lb-algorithm` annotation), else the Service's annotation, else
    /// the default; an annotation that does not parse is ignored (logged at debug).
    pub fn get(
        &self,
        table: &RouteTable,
        backend: &HttpBackend,
        route_algorithm: Option<&str>,
    ) -> Result<Arc<PortBalancer>, NoEndpoints> {
        let svc = table
            .services
            .get(&backend.service)
            .ok_or_else(|| NoEndpoints::NoService(backend.service.clone()))?;
        let port = match &backend.port {
            Some(PortRef::Number(n)) => svc.port_by_number(*n),
            Some(PortRef::Name(name)) => svc.port_by_name(name),
            None if svc.ports.len() == 1 => svc.ports.first(),
            None => None,
        }
        .filter(|p| p.protocol == Protocol::Tcp)
        .ok_or_else(|| {
            NoEndpoints::NoPort(
                backend.service.clone(),
                backend
                    .port
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "(unnamed)".into()),
            )
        })?;
        let parsed = |s: &str| {
            s.parse::<Algorithm>()
                .map_err(|e| tracing::debug!(service = %backend.service, error = %e, "ignoring annotation"))
                .ok()
        };
        let algorithm = route_algorithm
            .and_then(parsed)
            .or_else(|| {
                svc.service
                    .annotations
                    .get(LB_ANNOTATION)
                    .and_then(|s| parsed(s))
            })
            .unwrap_or_else(|| self.default_algorithm.clone());
        let h2c = svc
            .service
            .ports
            .iter()
            .find(|p| p.port == port.port && p.protocol == Protocol::Tcp)
            .and_then(|p| p.app_protocol.as_deref())
            .is_some_and(is_h2c_app_protocol);
        let pipelining = svc
            .service
            .annotations
            .get(PIPELINING_ANNOTATION)
            .and_then(|v| {
                pipelining_depth(v).or_else(|| {
                    tracing::debug!(service = %backend.service, value = %v, "ignoring annotation {PIPELINING_ANNOTATION}");
                    None
                })
            })
            .unwrap_or(0);
        let key = (backend.service.clone(), port.port, algorithm.clone());
        if let Some(b) = self.map.read().unwrap().get(&key) {
            if Arc::ptr_eq(&b.source, &port.endpoints) && b.h2c == h2c && b.pipelining == pipelining
            {
                return non_empty(b.clone(), &backend.service, port.port);
            }
        }
        let endpoints: Vec<Arc<EndpointState>> = crate::endpoints::usable(&port.endpoints)
            .into_iter()
            .map(|e| self.health.get(e.addr()))
            .collect();
        let built = Arc::new(PortBalancer {
            label: format!("{}:{}", backend.service, port.port).into(),
            service: backend.service.clone(),
            port: port.port,
            selector: Selector::build(&algorithm, &endpoints),
            algorithm,
            h2c,
            pipelining,
            endpoints,
            source: port.endpoints.clone(),
        });
        {
            let mut map = self.map.write().unwrap();
            map.insert(key, built.clone());
            // Forget balancers of services that left the table, now and then.
            if map.len() > 64 && map.len() > 2 * table.services.len() {
                map.retain(|(k, _, _), _| table.services.get(k).is_some());
                drop(map);
                self.health.prune();
            }
        }
        non_empty(built, &backend.service, port.port)
    }

    /// Drops balancers (and their endpoint states) for services no longer in `table`.
    pub fn prune(&self, table: &RouteTable) {
        self.map
            .write()
            .unwrap()
            .retain(|(k, _, _), _| table.services.get(k).is_some());
        self.health.prune();
    }
}

/// `appProtocol` values that mean cleartext HTTP/2.
pub fn is_h2c_app_protocol(p: &str) -> bool {
    matches!(
        p.to_ascii_lowercase().as_str(),
        "kubernetes.io/h2c" | "h2c" | "grpc"
    )
}

fn non_empty(
    b: Arc<PortBalancer>,
    svc: &ServiceKey,
    port: u16,
) -> Result<Arc<PortBalancer>, NoEndpoints> {
    if b.endpoints.is_empty() {
        Err(NoEndpoints::Empty(svc.clone(), port.to_string()))
    } else {
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::balance::HashKey;
    use std::collections::BTreeMap;
    use tables::{Conditions, EndpointRoute, PortRoutes, Service, ServicePort, ServiceRoutes};

    fn table(annotations: &[(&str, &str)], app_protocol: Option<&str>) -> RouteTable {
        let ep = |a: &str, ready: bool| {
            EndpointRoute::new(
                a.parse().unwrap(),
                Conditions {
                    ready: Some(ready),
                    serving: Some(ready),
                    terminating: Some(false),
                },
                Default::default(),
            )
        };
        let svc = Service {
            namespace: "d".into(),
            name: "web".into(),
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: PortRef::Number(8080),
                node_port: None,
                app_protocol: app_protocol.map(str::to_string),
            }],
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ..Default::default()
        };
        let routes = ServiceRoutes {
            trigger_time: None,
            slices: Default::default(),
            key: ServiceKey::new("d", "web"),
            service: Arc::new(svc),
            ports: vec![PortRoutes {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: PortRef::Number(8080),
                node_port: None,
                endpoints: vec![ep("10.0.0.1:8080", true), ep("10.0.0.2:8080", false)].into(),
            }],
        };
        let mut t = RouteTable::default();
        t.services
            .insert(ServiceKey::new("d", "web"), Arc::new(routes));
        t
    }

    fn backend(port: Option<PortRef>) -> HttpBackend {
        HttpBackend {
            service: ServiceKey::new("d", "web"),
            port,
            weight: 1,
            permitted: true,
        }
    }

    #[test]
    fn pipelining_annotation_values() {
        assert_eq!(pipelining_depth("true"), Some(PIPELINE_DEPTH));
        assert_eq!(pipelining_depth(" True "), Some(PIPELINE_DEPTH));
        assert_eq!(pipelining_depth("false"), Some(0));
        assert_eq!(pipelining_depth("16"), Some(16));
        assert_eq!(pipelining_depth("1"), Some(0));
        assert_eq!(pipelining_depth("65"), None);
        assert_eq!(pipelining_depth("yes"), None);
    }

    #[test]
    fn resolves_ports_and_keeps_usable_endpoints() {
        let b = Balancers::new(Algorithm::LeastRequest);
        let t = table(&[], None);
        for port in [
            Some(PortRef::Number(80)),
            Some(PortRef::Name("http".into())),
            None,
        ] {
            let pb = b.get(&t, &backend(port), None).unwrap();
            assert_eq!(&*pb.label, "d/web:80");
            let addrs: Vec<_> = pb.endpoints.iter().map(|e| e.addr.to_string()).collect();
            assert_eq!(addrs, ["10.0.0.1:8080"]);
            assert!(!pb.h2c);
        }
        assert!(matches!(
            b.get(&t, &backend(Some(PortRef::Number(81))), None),
            Err(NoEndpoints::NoPort(..))
        ));
        let mut other = backend(None);
        other.service = ServiceKey::new("d", "nope");
        assert!(matches!(
            b.get(&t, &other, None),
            Err(NoEndpoints::NoService(_))
        ));
    }

    #[test]
    fn algorithm_route_then_service_then_default_and_cache() {
        let b = Balancers::new(Algorithm::LeastRequest);
        let t = table(&[(LB_ANNOTATION, "round-robin")], Some("kubernetes.io/h2c"));
        let svc = b.get(&t, &backend(None), None).unwrap();
        assert_eq!(svc.algorithm, Algorithm::RoundRobin);
        assert!(svc.h2c);
        let route = b.get(&t, &backend(None), Some("maglev")).unwrap();
        assert_eq!(route.algorithm, Algorithm::Maglev(HashKey::ClientIp));
        // A route value that does not parse falls back to the Service's.
        let bad = b.get(&t, &backend(None), Some("fastest")).unwrap();
        assert_eq!(bad.algorithm, Algorithm::RoundRobin);
        // Same table, same algorithm: the cached balancer.
        assert!(Arc::ptr_eq(&svc, &b.get(&t, &backend(None), None).unwrap()));
        let plain = table(&[], None);
        let d = b.get(&plain, &backend(None), None).unwrap();
        assert_eq!(d.algorithm, Algorithm::LeastRequest);
    }
}
