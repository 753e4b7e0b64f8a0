//! The controller's Prometheus metrics. Registered once in the process registry the admin
//! listener serves.

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

#[derive(Clone)]
pub struct Metrics {
    pub generation: IntGauge,
    pub publishes: IntCounter,
    pub objects: IntGaugeVec,
    pub programming_latency: Histogram,
    pub watch_restarts: IntCounterVec,
    pub kube_lists: IntCounterVec,
    pub source_errors: IntCounterVec,
    pub ready: IntGauge,
    pub source_up: IntGaugeVec,
    pub source_last_sync: GaugeVec,
}

impl Metrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Metrics {
            generation: IntGauge::new(
                "switchboard_snapshot_generation",
                "Generation of the published snapshot (also the cluster zone's SOA serial).",
            )?,
            publishes: IntCounter::new(
                "switchboard_snapshot_publishes_total",
                "Snapshots published.",
            )?,
            objects: IntGaugeVec::new(
                Opts::new("switchboard_objects", "Objects in the cluster state, by source and kind."),
                &["source", "kind"],
            )?,
            programming_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "switchboard_programming_latency_seconds",
                    "Time from receiving a change from a source to publishing the snapshot that holds it.",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0,
                ]),
            )?,
            watch_restarts: IntCounterVec::new(
                Opts::new(
                    "switchboard_watch_restarts_total",
                    "Kubernetes watch restarts (errors, relists after 410 Gone or dropped streams), by kind.",
                ),
                &["kind", "reason"],
            )?,
            kube_lists: IntCounterVec::new(
                Opts::new(
                    "switchboard_kube_lists_total",
                    "Whole lists read from the Kubernetes API, by kind and encoding (protobuf or json).",
                ),
                &["kind", "encoding"],
            )?,
            source_errors: IntCounterVec::new(
                Opts::new(
                    "switchboard_source_errors_total",
                    "Objects or files rejected by a source: parse, validation or api errors.",
                ),
                &["source", "reason"],
            )?,
            ready: IntGauge::new(
                "switchboard_ready",
                "1 once every source has delivered its first complete state.",
            )?,
            source_up: IntGaugeVec::new(
                Opts::new(
                    "switchboard_source_up",
                    "1 while a source part reads its source without error; 0 while it serves its last good objects.",
                ),
                &["part"],
            )?,
            source_last_sync: GaugeVec::new(
                Opts::new(
                    "switchboard_source_last_sync_timestamp_seconds",
                    "Unix time of a source part's last complete, error-free read.",
                ),
                &["part"],
            )?,
        };
        registry.register(Box::new(m.generation.clone()))?;
        registry.register(Box::new(m.publishes.clone()))?;
        registry.register(Box::new(m.objects.clone()))?;
        registry.register(Box::new(m.programming_latency.clone()))?;
        registry.register(Box::new(m.watch_restarts.clone()))?;
        registry.register(Box::new(m.kube_lists.clone()))?;
        registry.register(Box::new(m.source_errors.clone()))?;
        registry.register(Box::new(m.ready.clone()))?;
        registry.register(Box::new(m.source_up.clone()))?;
        registry.register(Box::new(m.source_last_sync.clone()))?;
        Ok(m)
    }
}
