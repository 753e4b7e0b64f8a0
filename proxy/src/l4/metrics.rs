//! The L4 proxy's Prometheus metrics, in kube-proxy's spirit, registered in the process registry
//! the admin listener serves.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    /// Time to bring the data plane to one snapshot (nft transaction, listener reconcile).
    pub sync_duration: Histogram,
    /// From noticing a new snapshot generation to the data plane serving it.
    pub programming_latency: Histogram,
    pub syncs: IntCounterVec,
    /// nftables map elements or `bind` listeners currently programmed.
    pub frontends: IntGauge,
    pub active_connections: IntGaugeVec,
    pub connections: IntCounterVec,
    pub active_flows: IntGaugeVec,
    pub connect_errors: IntCounterVec,
    pub no_endpoint_rejects: IntCounterVec,
    /// Packets rejected by the nftables table for frontends without endpoints (no per-service
    /// label: the kernel counts them in one counter).
    pub nft_rejects: IntCounter,
    pub last_applied_generation: IntGauge,
    /// Unix time of the last successful sync (kube-proxy's
    /// `sync_proxy_rules_last_timestamp_seconds`).
    pub last_sync: prometheus::Gauge,
    /// Service ports whose Local traffic policy finds no endpoint on this node, by traffic
    /// (kube-proxy's `sync_proxy_rules_no_local_endpoints_total`).
    pub no_local_endpoints: IntGaugeVec,
    /// Service-port chains on the kernel path.
    pub kernel_chains: IntGauge,
    /// kube-proxy's `network_programming_duration_seconds`: from the trigger time an
    /// EndpointSlice carries to the data plane serving the change.
    pub network_programming_duration: Histogram,
    /// UDP datagrams from clients by the socket they arrived on: `tproxy` (the one listener) or
    /// `frontend` (a socket bound to the frontend: `bind` mode, or `nftables` mode when a
    /// bridge with br_netfilter dropped the tproxy assignment).
    pub udp_datagrams: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl Metrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let svc = &["service", "port"];
        let m = Metrics {
            sync_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "switchboard_l4_sync_duration_seconds",
                    "Time to apply one snapshot to the L4 data plane (nftables transaction or bind listeners).",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            programming_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "switchboard_l4_network_programming_latency_seconds",
                    "Network programming latency: time from receiving the source event (API watch event or manifest change) to the L4 data plane serving it.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            syncs: IntCounterVec::new(
                Opts::new("switchboard_l4_syncs_total", "L4 data plane syncs by result."),
                &["result"],
            )?,
            frontends: IntGauge::new(
                "switchboard_l4_frontends",
                "Frontends programmed in the L4 data plane (nftables map elements or bind listeners).",
            )?,
            active_connections: IntGaugeVec::new(
                Opts::new(
                    "switchboard_l4_active_connections",
                    "Proxied TCP connections open now, by service and port.",
                ),
                svc,
            )?,
            connections: IntCounterVec::new(
                Opts::new(
                    "switchboard_l4_connections_total",
                    "TCP connections proxied, by service and port.",
                ),
                svc,
            )?,
            active_flows: IntGaugeVec::new(
                Opts::new(
                    "switchboard_l4_active_flows",
                    "UDP flows (client, frontend) tracked now, by service and port.",
                ),
                svc,
            )?,
            connect_errors: IntCounterVec::new(
                Opts::new(
                    "switchboard_l4_connect_errors_total",
                    "Failed connection attempts to endpoints, by service and port.",
                ),
                svc,
            )?,
            no_endpoint_rejects: IntCounterVec::new(
                Opts::new(
                    "switchboard_l4_no_endpoint_rejects_total",
                    "Connections or datagrams refused by the proxy because the service had no usable endpoint, by service, port and reason (no_endpoints, no_local_endpoints, all_failed).",
                ),
                &["service", "port", "reason"],
            )?,
            nft_rejects: IntCounter::new(
                "switchboard_l4_nft_no_endpoint_rejects_total",
                "Packets the nftables table rejected or dropped because their frontend had no usable endpoint.",
            )?,
            udp_datagrams: IntCounterVec::new(
                Opts::new(
                    "switchboard_l4_udp_datagrams_total",
                    "UDP datagrams received from clients, by the socket they arrived on (tproxy or frontend).",
                ),
                &["path"],
            )?,
            last_sync: prometheus::Gauge::new(
                "switchboard_l4_last_sync_timestamp_seconds",
                "Unix time of the last successful L4 data plane sync.",
            )?,
            no_local_endpoints: IntGaugeVec::new(
                Opts::new(
                    "switchboard_l4_no_local_endpoints",
                    "Service ports whose Local traffic policy finds no endpoint on this node (their traffic is dropped).",
                ),
                &["traffic"],
            )?,
            network_programming_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "switchboard_l4_network_programming_duration_seconds",
                    "From an EndpointSlice's endpoints.kubernetes.io/last-change-trigger-time to the L4 data plane serving the change (kube-proxy's network_programming_duration_seconds).",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0,
                ]),
            )?,
            kernel_chains: IntGauge::new(
                "switchboard_l4_kernel_chains",
                "Service-port chains programmed on the kernel path.",
            )?,
            last_applied_generation: IntGauge::new(
                "switchboard_l4_applied_generation",
                "Snapshot generation last applied to the L4 data plane.",
            )?,
        };
        registry.register(Box::new(m.sync_duration.clone()))?;
        registry.register(Box::new(m.last_sync.clone()))?;
        registry.register(Box::new(m.no_local_endpoints.clone()))?;
        registry.register(Box::new(m.kernel_chains.clone()))?;
        registry.register(Box::new(m.network_programming_duration.clone()))?;
        registry.register(Box::new(m.programming_latency.clone()))?;
        registry.register(Box::new(m.syncs.clone()))?;
        registry.register(Box::new(m.frontends.clone()))?;
        registry.register(Box::new(m.active_connections.clone()))?;
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.active_flows.clone()))?;
        registry.register(Box::new(m.connect_errors.clone()))?;
        registry.register(Box::new(m.no_endpoint_rejects.clone()))?;
        registry.register(Box::new(m.nft_rejects.clone()))?;
        registry.register(Box::new(m.last_applied_generation.clone()))?;
        registry.register(Box::new(m.udp_datagrams.clone()))?;
        Ok(m)
    }
}
