//! The L7 proxy's Prometheus series, registered in the process registry.
//!
//! Labels: `route` is the rule (`HTTPRoute ns/name#0`, or `-` when nothing matched), `service`
//! the backend `ns/name:port` (or `-`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub connect_errors: IntCounterVec,
    pub retries: IntCounterVec,
    pub ejections: IntCounterVec,
    pub active_connections: IntGaugeVec,
    pub upstream_connections: IntCounterVec,
    pub upstream_pool: IntGaugeVec,
    pub fast_path: IntCounterVec,
    pub worker_connections: IntGaugeVec,
    pub worker_handoffs: IntCounterVec,
    pub limit_hits: IntCounterVec,
    pub route_index_build: Histogram,
}

impl HttpMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = HttpMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "switchboard_http_requests_total",
                    "HTTP requests answered, by route, backend service and status code.",
                ),
                &["route", "service", "code"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "switchboard_http_request_duration_seconds",
                    "Time from request headers to the end of the response.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ]),
                &["route", "service"],
            )?,
            connect_errors: IntCounterVec::new(
                Opts::new(
                    "switchboard_http_upstream_connect_errors_total",
                    "Failed connects to endpoints, by backend service.",
                ),
                &["service"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "switchboard_http_retries_total",
                    "Requests sent again to another endpoint, by backend service and reason.",
                ),
                &["service", "reason"],
            )?,
            ejections: IntCounterVec::new(
                Opts::new(
                    "switchboard_http_ejections_total",
                    "Endpoints ejected by passive outlier detection, by backend service.",
                ),
                &["service"],
            )?,
            active_connections: IntGaugeVec::new(
                Opts::new(
                    "switchboard_http_active_connections",
                    "Open client connections, by listener kind (http, https).",
                ),
                &["listener"],
            )?,
            upstream_connections: IntCounterVec::new(
                Opts::new(
                    "switchboard_http_upstream_connections_total",
                    "Upstream connections used for requests, new or reused from the keep-alive pool.",
                ),
                &["reused"],
            )?,
            upstream_pool: IntGaugeVec::new(
                Opts::new(
                    "switchboard_http_upstream_pool_connections",
                    "Open upstream connections by backend service: idle in the keep-alive pool, or busy with a request (refreshed every 2 s).",
                ),
                &["service", "state"],
            )?,
            fast_path: IntCounterVec::new(
                Opts::new(
                    "switchboard_http_fast_path_total",
                    "Plain HTTP/1.1: requests proxied on the fast path, and connections handed over to the general path (pingora) for a request the fast path does not take; `pipelined`: requests sent behind another on one upstream connection (switchboard.dev/upstream-pipelining).",
                ),
                &["outcome"],
            )?,
            worker_connections: IntGaugeVec::new(
                Opts::new(
                    "switchboard_http_worker_connections",
                    "Open client connections by HTTP worker (--http-workers of 2 or more).",
                ),
                &["worker"],
            )?,
            worker_handoffs: IntCounterVec::new(
                Opts::new(
                    "switchboard_http_worker_handoffs_total",
                    "Accepted client connections a worker handed to the least busy worker to keep their counts even, by the worker that took them.",
                ),
                &["worker"],
            )?,
            limit_hits: IntCounterVec::new(
                Opts::new(
                    "switchboard_http_limit_hits_total",
                    "Client limits hit on the HTTP and HTTPS listeners: head_timeout (request head not whole within --http-header-timeout), head_size (larger than --http-max-header-bytes), connections (--http-max-connections reached), per_client (--http-max-connections-per-client reached), write_timeout (client not reading within --http-write-timeout).",
                ),
                &["limit"],
            )?,
            route_index_build: Histogram::with_opts(HistogramOpts::new(
                "switchboard_http_route_index_build_seconds",
                "Time to build the routing index after the HTTP rules changed.",
            ))?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.connect_errors.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.ejections.clone()))?;
        registry.register(Box::new(m.active_connections.clone()))?;
        registry.register(Box::new(m.upstream_connections.clone()))?;
        registry.register(Box::new(m.upstream_pool.clone()))?;
        registry.register(Box::new(m.fast_path.clone()))?;
        registry.register(Box::new(m.worker_connections.clone()))?;
        registry.register(Box::new(m.worker_handoffs.clone()))?;
        registry.register(Box::new(m.limit_hits.clone()))?;
        registry.register(Box::new(m.route_index_build.clone()))?;
        Ok(m)
    }
}

/// `with_label_values` hashes its labels and takes a lock per call; the fast path keeps the
/// handles of the series it has used (and each connection its last one).
#[derive(Default)]
pub struct SeriesCache {
    map: Mutex<HashMap<(usize, usize, u16), Arc<Series>>>,
}

/// `switchboard_http_requests_total` and `..._request_duration_seconds` for one route, service
/// and code.
pub(super) struct Series {
    route: Arc<str>,
    service: Arc<str>,
    code: u16,
    requests: IntCounter,
    duration: Histogram,
}

impl Series {
    pub(super) fn is(&self, route: &Arc<str>, service: &Arc<str>, code: u16) -> bool {
        self.code == code && Arc::ptr_eq(&self.route, route) && Arc::ptr_eq(&self.service, service)
    }
    pub(super) fn observe(&self, secs: f64) {
        self.requests.inc();
        self.duration.observe(secs);
    }
}

impl SeriesCache {
    pub(super) fn get(
        &self,
        m: &HttpMetrics,
        route: &Arc<str>,
        service: &Arc<str>,
        code: u16,
    ) -> Arc<Series> {
        let key = (
            Arc::as_ptr(route) as *const u8 as usize,
            Arc::as_ptr(service) as *const u8 as usize,
            code,
        );
        let mut map = self.map.lock().unwrap();
        if let Some(s) = map.get(&key) {
            // The cached Arcs keep these addresses from being reused by other labels.
            if s.is(route, service, code) {
                return s.clone();
            }
        }
        if map.len() >= 4096 {
            map.clear();
        }
        let s = Arc::new(Series {
            route: route.clone(),
            service: service.clone(),
            code,
            requests: m
                .requests
                .with_label_values(&[&**route, &**service, &code.to_string()]),
            duration: m.duration.with_label_values(&[&**route, &**service]),
        });
        map.insert(key, s.clone());
        s
    }
}
