//! The state both request paths (pingora's in `service.rs`, the fast path in `fast/`) share:
//! the snapshot, settings, metrics, balancers, retry budget, upstream connections and routing
//! index, and the fast path's pool and metric handles.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use prometheus::IntCounter;
use tables::{HttpTable, RouteTable, SnapshotCell};

use super::backend::Balancers;
use super::config::HttpConfig;
use super::limits::LimitHits;
use super::metrics::{HttpMetrics, SeriesCache};
use super::pool::FastPool;
use super::retry::RetryBudget;
use super::upstreams::{self, Target, UpstreamConns};
use super::views::RouteViews;

/// State shared by the http and https instances of the proxy.
pub struct Shared {
    pub cell: SnapshotCell,
    pub config: HttpConfig,
    pub metrics: HttpMetrics,
    pub balancers: Balancers,
    pub budget: RetryBudget,
    /// Upstream connections seen, to close idle ones to removed endpoints.
    pub upstreams: UpstreamConns,
    /// The HTTP/1.1 fast path's upstream pool and metric handles.
    pub fast: FastState,
    /// Client limits hit (counter and rate-limited log).
    pub limits: LimitHits,
    /// Service labels the pool gauge has series for.
    pool_labels: std::sync::Mutex<Vec<Arc<str>>>,
    index: ArcSwapOption<(Arc<HttpTable>, Arc<RouteViews>)>,
    /// The bound ports of the `--http` / `--https` listeners (set once they are bound; none
    /// before): Gateway listeners on these ports share their sockets (`views.rs`).
    pub ingress_ports: OnceLock<BTreeSet<u16>>,
}

impl Shared {
    pub fn new(cell: SnapshotCell, config: HttpConfig, metrics: HttpMetrics) -> Self {
        Shared {
            cell,
            balancers: Balancers::new(config.lb_algorithm.clone()),
            fast: FastState::new(&metrics, config.workers),
            limits: LimitHits::new(&metrics.limit_hits),
            config,
            metrics,
            budget: RetryBudget::default(),
            upstreams: UpstreamConns::default(),
            pool_labels: Default::default(),
            index: ArcSwapOption::empty(),
            ingress_ports: OnceLock::new(),
        }
    }

    /// Shuts down idle upstream connections to endpoints no longer usable in `table`.
    pub fn close_removed(&self, table: &RouteTable) {
        let keep = |t: &Target| upstreams::usable_in(table, t);
        let n = self.upstreams.close_idle(keep) + self.fast.pool.close_idle(keep);
        if n > 0 {
            tracing::info!(
                connections = n,
                "closed idle upstream connections to endpoints that left the table"
            );
        }
    }

    /// Sets `switchboard_http_upstream_pool_connections` from the connections still open.
    pub fn update_pool_gauge(&self) {
        let mut counts = self.upstreams.sweep();
        self.fast.pool.count_into(&mut counts);
        let gauge = &self.metrics.upstream_pool;
        let mut labels = self.pool_labels.lock().unwrap();
        for l in labels.iter() {
            if !counts.contains_key(l) {
                let _ = gauge.remove_label_values(&[l, "idle"]);
                let _ = gauge.remove_label_values(&[l, "busy"]);
            }
        }
        labels.clear();
        for (l, c) in counts {
            gauge.with_label_values(&[&*l, "idle"]).set(c.idle as i64);
            gauge.with_label_values(&[&*l, "busy"]).set(c.busy as i64);
            labels.push(l);
        }
    }

    /// The routing indexes for `table`, built on first use after the HTTP rules change.
    pub fn route_index(&self, table: &Arc<HttpTable>) -> Arc<RouteViews> {
        if let Some(cached) = self.index.load().as_ref() {
            if Arc::ptr_eq(&cached.0, table) {
                return cached.1.clone();
            }
        }
        let start = Instant::now();
        let ports = self.ingress_ports.get().cloned().unwrap_or_default();
        let index = Arc::new(if self.config.gateway_shared_ports {
            RouteViews::shared(table)
        } else {
            RouteViews::build(table, &ports)
        });
        self.metrics
            .route_index_build
            .observe(start.elapsed().as_secs_f64());
        for (rule, why) in &index.refused() {
            tracing::warn!(rule = %rule, reason = %why, "HTTP rule not served");
        }
        self.index
            .store(Some(Arc::new((table.clone(), index.clone()))));
        index
    }
}

/// The fast path's state in `Shared`.
pub struct FastState {
    pub pool: FastPool,
    pub(super) series: SeriesCache,
    pub(super) proxied: IntCounter,
    pub(super) handed_over: IntCounter,
    /// Requests sent upstream behind another on one connection that read their answer from it
    /// (`fast::pipeline`).
    pub(super) pipelined: IntCounter,
    /// `switchboard_http_upstream_connections_total` for new and reused connections.
    pub(super) new_conn: IntCounter,
    pub(super) reused_conn: IntCounter,
}

impl FastState {
    /// `workers`: the HTTP workers (`HttpConfig::workers`), one pool shard each.
    pub fn new(m: &HttpMetrics, workers: usize) -> Self {
        FastState {
            pool: FastPool::new(workers),
            series: SeriesCache::default(),
            proxied: m.fast_path.with_label_values(&["proxied"]),
            handed_over: m.fast_path.with_label_values(&["handed_over"]),
            pipelined: m.fast_path.with_label_values(&["pipelined"]),
            new_conn: m.upstream_connections.with_label_values(&["false"]),
            reused_conn: m.upstream_connections.with_label_values(&["true"]),
        }
    }
}
