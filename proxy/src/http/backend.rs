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

/// The usable endpoints of one service port with their balancer.
pub struct PortBalancer {
    /// `ns/name:port`, the `service` label of metrics and the log.
    pub label: Arc<str>,
    pub algorithm: Algorithm,
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
    map: RwLock<HashMap<(ServiceKey, u16), Arc<PortBalancer>>>,
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

    /// The balancer for `backend` in `table`.
    pub fn get(
        &self,
        table: &RouteTable,
        backend: &HttpBackend,
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
        let algorithm = match svc.service.annotations.get(LB_ANNOTATION) {
            Some(s) => s.parse().unwrap_or_else(|e| {
                tracing::debug!(service = %backend.service, error = %e, "ignoring annotation");
                self.default_algorithm.clone()
            }),
            None => self.default_algorithm.clone(),
        };
        let key = (backend.service.clone(), port.port);
        if let Some(b) = self.map.read().unwrap().get(&key) {
            if Arc::ptr_eq(&b.source, &port.endpoints) && b.algorithm == algorithm {
                return non_empty(b.clone(), &backend.service, port.port);
            }
        }
        let endpoints: Vec<Arc<EndpointState>> = crate::endpoints::usable(&port.endpoints)
            .into_iter()
            .map(|e| self.health.get(e.addr))
            .collect();
        let built = Arc::new(PortBalancer {
            label: format!("{}:{}", backend.service, port.port).into(),
            selector: Selector::build(&algorithm, &endpoints),
            algorithm,
            endpoints,
            source: port.endpoints.clone(),
        });
        {
            let mut map = self.map.write().unwrap();
            map.insert(key, built.clone());
            // Forget balancers of services that left the table, now and then.
            if map.len() > 64 && map.len() > 2 * table.services.len() {
                map.retain(|(k, _), _| table.services.get(k).is_some());
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
            .retain(|(k, _), _| table.services.get(k).is_some());
        self.health.prune();
    }
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
