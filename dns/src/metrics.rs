//! Prometheus metrics with CoreDNS's names, labels and meanings, so dashboards built for
//! CoreDNS (`coredns_dns_*`, `coredns_cache_*`, `coredns_forward_*`) work unchanged.
//!
//! Labels follow CoreDNS with the stock Corefile (one server block `.:53`): `server` is
//! `dns://ADDR` of the listener, `zone` is always `.`; the `view` label (CoreDNS ≥ 1.11, empty
//! without views) is left out. `plugin` on `coredns_dns_responses_total` says who answered:
//! `kubernetes` (cluster zone), `cache` or `forward`, or empty for errors the server itself
//! answered (FORMERR, REFUSED, ...).
//!
//! The query loop resolves label sets once per worker (`Recorder`) and counts into
//! worker-local counters (prometheus' `Local*` types), added to the shared series by `flush`
//! (a UDP worker: at most every millisecond, and whenever its socket has nothing queued): the
//! UDP workers do not fight over the same cache lines for every query (five series, about
//! fourteen atomic read-modify-writes per query otherwise).

use std::collections::HashMap;

use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric of the DNS server.
#[derive(Clone)]
pub struct Metrics {
    pub requests: IntCounterVec,
    pub responses: IntCounterVec,
    pub duration: HistogramVec,
    pub response_size: HistogramVec,
    pub request_size: HistogramVec,
    pub cache_entries: IntGaugeVec,
    pub cache_hits: IntCounterVec,
    pub cache_misses: IntCounterVec,
    pub forward_requests: IntCounterVec,
    pub forward_responses: IntCounterVec,
    pub forward_duration: HistogramVec,
    pub forward_healthcheck_broken: IntCounter,
    pub forward_max_concurrent_rejects: IntCounter,
    pub forward_in_flight: IntGauge,
    pub served_stale: IntCounterVec,
    /// `switchboard_dns_tcp_limit_hits_total{limit}`: `per_client` (new connection closed: its
    /// address holds its share), `max_connections` (closed: all slots busy), `evicted` (an idle
    /// connection closed to admit a new one), `write_timeout` (a client that does not read).
    pub tcp_limit_hits: IntCounterVec,
    /// `switchboard_dns_tcp_connections`: TCP connections open now (all listeners).
    pub tcp_connections: IntGauge,
    /// `switchboard_dns_forward_loop_detected{to}`: 1 once our queries came back through `to`
    /// (forwarding to it is then off until restart).
    pub forward_loop_detected: IntGaugeVec,
    /// `switchboard_dns_udp_worker_datagrams_total{server,worker}`: datagrams each UDP worker
    /// (one socket and one thread each) took from its socket: shows that every worker is there
    /// and how evenly the kernel spreads clients over them.
    pub udp_worker_datagrams: IntCounterVec,
}

fn size_buckets() -> Vec<f64> {
    vec![
        0.0, 100.0, 200.0, 300.0, 400.0, 511.0, 1023.0, 2047.0, 4095.0, 8291.0, 16000.0, 32000.0,
        48000.0, 64000.0,
    ]
}

fn time_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.00025, 2.0, 16).expect("static buckets")
}

impl Metrics {
    /// Creates and registers every metric. Fails if they are already registered.
    pub fn new(registry: &Registry) -> prometheus::Result<Metrics> {
        let m = Metrics {
            requests: IntCounterVec::new(
                Opts::new("coredns_dns_requests_total", "Counter of DNS requests made per zone, protocol and family."),
                &["server", "zone", "proto", "family", "type"],
            )?,
            responses: IntCounterVec::new(
                Opts::new("coredns_dns_responses_total", "Counter of response status codes."),
                &["server", "zone", "rcode", "plugin"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new("coredns_dns_request_duration_seconds", "Histogram of the time (in seconds) each request took per zone.")
                    .buckets(time_buckets()),
                &["server", "zone", "type"],
            )?,
            response_size: HistogramVec::new(
                HistogramOpts::new("coredns_dns_response_size_bytes", "Size of the returned response in bytes.")
                    .buckets(size_buckets()),
                &["server", "zone", "proto"],
            )?,
            request_size: HistogramVec::new(
                HistogramOpts::new("coredns_dns_request_size_bytes", "Size of the request in bytes.")
                    .buckets(size_buckets()),
                &["server", "zone", "proto"],
            )?,
            cache_entries: IntGaugeVec::new(
                Opts::new("coredns_cache_entries", "The number of elements in the cache."),
                &["server", "type", "zones"],
            )?,
            cache_hits: IntCounterVec::new(
                Opts::new("coredns_cache_hits_total", "The count of cache hits."),
                &["server", "type", "zones"],
            )?,
            cache_misses: IntCounterVec::new(
                Opts::new("coredns_cache_misses_total", "The count of cache misses. Deprecated, derive misses from cache hits/requests counters."),
                &["server", "zones"],
            )?,
            forward_requests: IntCounterVec::new(
                Opts::new("coredns_forward_requests_total", "Counter of requests made per upstream."),
                &["to"],
            )?,
            forward_responses: IntCounterVec::new(
                Opts::new("coredns_forward_responses_total", "Counter of responses received per upstream."),
                &["to", "rcode"],
            )?,
            forward_duration: HistogramVec::new(
                HistogramOpts::new("coredns_forward_request_duration_seconds", "Histogram of the time each request took.")
                    .buckets(time_buckets()),
                &["to", "rcode"],
            )?,
            forward_healthcheck_broken: IntCounter::new(
                "coredns_forward_healthcheck_broken_total",
                "Counter of the number of complete failures of the upstreams.",
            )?,
            forward_max_concurrent_rejects: IntCounter::new(
                "coredns_forward_max_concurrent_rejects_total",
                "Counter of the number of queries rejected because the concurrent queries were at maximum.",
            )?,
            forward_in_flight: IntGauge::new(
                "switchboard_dns_forward_in_flight",
                "Forwarded queries waiting for an upstream right now.",
            )?,
            served_stale: IntCounterVec::new(
                Opts::new("coredns_cache_served_stale_total", "The number of requests served from stale cache entries."),
                &["server", "zones"],
            )?,
            tcp_limit_hits: IntCounterVec::new(
                Opts::new("switchboard_dns_tcp_limit_hits_total", "DNS over TCP connections closed by a limit: per_client, max_connections, evicted (idle, to admit a new one), write_timeout."),
                &["limit"],
            )?,
            tcp_connections: IntGauge::new(
                "switchboard_dns_tcp_connections",
                "DNS over TCP connections open now.",
            )?,
            forward_loop_detected: IntGaugeVec::new(
                Opts::new("switchboard_dns_forward_loop_detected", "1 if queries forwarded to this upstream came back to us (forwarding to it is off)."),
                &["to"],
            )?,
            udp_worker_datagrams: IntCounterVec::new(
                Opts::new("switchboard_dns_udp_worker_datagrams_total", "Datagrams received by each UDP worker (one socket and thread each)."),
                &["server", "worker"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.responses.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.response_size.clone()))?;
        registry.register(Box::new(m.request_size.clone()))?;
        registry.register(Box::new(m.cache_entries.clone()))?;
        registry.register(Box::new(m.cache_hits.clone()))?;
        registry.register(Box::new(m.cache_misses.clone()))?;
        registry.register(Box::new(m.forward_requests.clone()))?;
        registry.register(Box::new(m.forward_responses.clone()))?;
        registry.register(Box::new(m.forward_duration.clone()))?;
        registry.register(Box::new(m.forward_healthcheck_broken.clone()))?;
        registry.register(Box::new(m.forward_max_concurrent_rejects.clone()))?;
        registry.register(Box::new(m.forward_in_flight.clone()))?;
        registry.register(Box::new(m.served_stale.clone()))?;
        registry.register(Box::new(m.tcp_limit_hits.clone()))?;
        registry.register(Box::new(m.tcp_connections.clone()))?;
        registry.register(Box::new(m.forward_loop_detected.clone()))?;
        registry.register(Box::new(m.udp_worker_datagrams.clone()))?;
        Ok(m)
    }
}

/// The `type` label: CoreDNS counts these types by name and the rest as `other`.
pub fn type_label(qtype: u16) -> &'static str {
    match qtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        43 => "DS",
        46 => "RRSIG",
        47 => "NSEC",
        48 => "DNSKEY",
        50 => "NSEC3",
        51 => "NSEC3PARAM",
        64 => "SVCB",
        65 => "HTTPS",
        251 => "IXFR",
        252 => "AXFR",
        255 => "ANY",
        _ => "other",
    }
}

pub fn rcode_label(rcode: u16) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        16 => "BADVERS",
        _ => "other",
    }
}

/// Who produced an answer (`plugin` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Plugin {
    None,
    Kubernetes,
    Cache,
    Forward,
}

impl Plugin {
    fn label(self) -> &'static str {
        match self {
            Plugin::None => "",
            Plugin::Kubernetes => "kubernetes",
            Plugin::Cache => "cache",
            Plugin::Forward => "forward",
        }
    }
}

/// One answered query, as the metrics see it.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub tcp: bool,
    pub ipv6: bool,
    pub qtype: u16,
    pub rcode: u16,
    pub plugin: Plugin,
    pub request_size: usize,
    pub response_size: usize,
    pub seconds: f64,
}

struct Handles {
    requests: LocalIntCounter,
    responses: LocalIntCounter,
    duration: LocalHistogram,
    response_size: LocalHistogram,
    request_size: LocalHistogram,
}

impl Handles {
    fn flush(&self) {
        self.requests.flush();
        self.responses.flush();
        self.duration.flush();
        self.response_size.flush();
        self.request_size.flush();
    }
}

/// Per-worker cache of resolved label sets for one listener, counting locally until `flush`
/// (or drop).
pub struct Recorder {
    metrics: Metrics,
    server: String,
    handles: HashMap<(bool, bool, &'static str, &'static str, Plugin), Handles>,
}

impl Recorder {
    pub fn new(metrics: Metrics, server: String) -> Recorder {
        Recorder {
            metrics,
            server,
            handles: HashMap::new(),
        }
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn record(&mut self, s: Sample) {
        let key = (
            s.tcp,
            s.ipv6,
            type_label(s.qtype),
            rcode_label(s.rcode),
            s.plugin,
        );
        let m = &self.metrics;
        let server = &self.server;
        let h = self.handles.entry(key).or_insert_with(|| {
            let proto = if s.tcp { "tcp" } else { "udp" };
            Handles {
                requests: m
                    .requests
                    .with_label_values(&[
                        server.as_str(),
                        ".",
                        proto,
                        if s.ipv6 { "2" } else { "1" },
                        key.2,
                    ])
                    .local(),
                responses: m
                    .responses
                    .with_label_values(&[server.as_str(), ".", key.3, s.plugin.label()])
                    .local(),
                duration: m
                    .duration
                    .with_label_values(&[server.as_str(), ".", key.2])
                    .local(),
                response_size: m
                    .response_size
                    .with_label_values(&[server.as_str(), ".", proto])
                    .local(),
                request_size: m
                    .request_size
                    .with_label_values(&[server.as_str(), ".", proto])
                    .local(),
            }
        });
        h.requests.inc();
        h.responses.inc();
        h.duration.observe(s.seconds);
        h.response_size.observe(s.response_size as f64);
        h.request_size.observe(s.request_size as f64);
    }

    /// Adds what was counted since the last flush to the shared series (the registry).
    pub fn flush(&mut self) {
        for h in self.handles.values() {
            h.flush();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}
