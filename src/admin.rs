//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz` (503 until every
//! source has synced once; then 200, naming in its body any source serving stale objects),
//! `/debug/tables` (the text dump of the published snapshot; 404 under `--no-debug-endpoints`).

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};
use tables::SnapshotCell;
use tokio::net::TcpListener;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub registry: Registry,
    pub cell: SnapshotCell,
    /// Checks `/healthz` runs; any `Err` makes it answer 503 with the reasons.
    pub health_checks: HealthChecks,
    /// What the sources report of their reads: `/readyz` names the failing ones.
    pub sources: controller::SourceHealth,
    /// Set on shutdown: `/readyz` answers 503 while the DNS server's lame-duck period runs.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Serve `/debug/tables`: it shows every Service, endpoint and route, so it can be turned
    /// off (`--no-debug-endpoints`) where the admin address is reachable by others.
    pub debug_endpoints: bool,
}

/// A named liveness check (e.g. the L4 proxy applying tables in time).
pub type HealthCheck = (String, Box<dyn Fn() -> Result<(), String> + Send + Sync>);
/// The checks of `/healthz`, filled in by the parts as they start.
pub type HealthChecks = Arc<std::sync::Mutex<Vec<HealthCheck>>>;

/// Adds a check to `/healthz`.
pub fn add_health_check(
    checks: &HealthChecks,
    name: &str,
    check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
) {
    checks
        .lock()
        .unwrap()
        .push((name.to_string(), Box::new(check)));
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

/// Answers one admin request.
pub fn handle(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => {
            let mut buf = Vec::new();
            let encoder = TextEncoder::new();
            match encoder.encode(&state.registry.gather(), &mut buf) {
                Ok(()) => Response::builder()
                    .header("content-type", encoder.format_type())
                    .body(Full::new(buf.into()))
                    .expect("static response parts are valid"),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding metrics: {e}\n"),
                ),
            }
        }
        "/healthz" => {
            let failures: Vec<String> = state
                .health_checks
                .lock()
                .unwrap()
                .iter()
                .filter_map(|(name, check)| check().err().map(|e| format!("{name}: {e}\n")))
                .collect();
            if failures.is_empty() {
                text(StatusCode::OK, "ok\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, failures.concat())
            }
        }
        "/readyz" => {
            let snap = state.cell.load();
            if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: shutting down\n",
                )
            } else if snap.synced {
                // Still serving the last good state: stay ready, say what is stale.
                let stale: String = state
                    .sources
                    .problems()
                    .into_iter()
                    .map(|(part, problem)| format!("stale {part}: {problem}\n"))
                    .collect();
                text(StatusCode::OK, format!("ready\n{stale}"))
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: waiting for the first complete state from every source\n",
                )
            }
        }
        "/debug/tables" if !state.debug_endpoints => text(
            StatusCode::NOT_FOUND,
            "not found: /debug/tables is off (--no-debug-endpoints)\n",
        ),
        "/debug/tables" => {
            let snap = state.cell.load();
            let body = format!(
                "# generation {} synced {}\n{}",
                snap.generation,
                snap.synced,
                tables::dump(&snap)
            );
            text(StatusCode::OK, body)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics /healthz /readyz /debug/tables\n",
        ),
    }
}

/// Limits of the admin listener: probes and a Prometheus scraper need a handful of connections;
/// anything beyond these is a client to shed, not to serve (issue #14.4: 2,000 half-sent requests
/// once held it, and its descriptors, for a minute).
pub struct AdminLimits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Connections open at once from one source address.
    pub max_per_client: usize,
    /// A request head must arrive whole within this (also the keep-alive idle time).
    pub header_timeout: std::time::Duration,
    /// No connection lives longer than this.
    pub max_lifetime: std::time::Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_connections: 64,
            max_per_client: 16,
            header_timeout: std::time::Duration::from_secs(5),
            max_lifetime: std::time::Duration::from_secs(60),
        }
    }
}

/// Counts open connections per source address; a slot is released on drop.
#[derive(Default)]
struct Slots {
    per_client: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    total: std::sync::atomic::AtomicUsize,
}

struct Slot {
    slots: Arc<Slots>,
    ip: std::net::IpAddr,
}

impl Slots {
    fn take(
        self: &Arc<Self>,
        ip: std::net::IpAddr,
        limits: &AdminLimits,
    ) -> Result<Slot, &'static str> {
        let mut per = self.per_client.lock().unwrap();
        if self.total.load(std::sync::atomic::Ordering::Relaxed) >= limits.max_connections {
            return Err("connections");
        }
        let n = per.entry(ip).or_insert(0);
        if *n >= limits.max_per_client {
            return Err("per_client");
        }
        *n += 1;
        self.total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per = self.slots.per_client.lock().unwrap();
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
        self.slots
            .total
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Serves the admin endpoints on `listener` until the task is dropped, within `limits`.
pub async fn serve(listener: TcpListener, state: AdminState, limits: AdminLimits) {
    let state = Arc::new(state);
    let limits = Arc::new(limits);
    let slots = Arc::new(Slots::default());
    let mut shed_logged = std::time::Instant::now() - std::time::Duration::from_secs(60);
    let mut shed = 0u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match slots.take(peer.ip(), &limits) {
            Ok(slot) => slot,
            Err(limit) => {
                // Closed at once; logged at most every 10 s with the count since.
                shed += 1;
                if shed_logged.elapsed() >= std::time::Duration::from_secs(10) {
                    tracing::warn!(%peer, limit, shed, "admin connection limit reached; closing new connections");
                    shed_logged = std::time::Instant::now();
                    shed = 0;
                }
                drop(stream);
                continue;
            }
        };
        let state = state.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = handle(&state, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(limits.max_lifetime, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "admin connection ended with an error")
                }
                Err(_) => tracing::debug!(%peer, "admin connection closed at its lifetime limit"),
            }
        });
    }
}
