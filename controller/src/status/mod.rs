//! Status write-back: one replica (the holder of a Lease) writes the status of switchboard's
//! GatewayClasses, Gateways, HTTPRoutes and Ingresses.
//!
//! ```text
//!  leader.rs ── Lease acquire/renew ──> watch<bool> ──┐
//!                                                     v
//!  writer.rs (only while leading): its own watches of the objects status depends on
//!      ──> gateway.rs / ingress.rs compute the desired status (pure)
//!      ──> conditions.rs compares with what is stored ──> merge patch of the status
//!          subresource, only where it differs
//! ```
//!
//! Every replica runs the election; only the leader opens the writer's watches. None of this
//! sits on the data plane's path: the controller publishes tables whatever happens here, and a
//! failed write is retried at the next change or resync, not in a loop.

pub mod conditions;
pub mod gateway;
pub mod ingress;
pub mod leader;
pub mod writer;

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::watch;

use crate::gateway_api as gw;
pub use conditions::Address;
pub use leader::LeaseConfig;

/// Gateway API objects as the writer reads them: the spec switchboard understands, the status
/// as stored (kept whole, so other controllers' parts survive a write).
pub type GatewayClassObj = kube::core::Object<gw::GatewayClassSpec, serde_json::Value>;
pub type GatewayObj = kube::core::Object<gw::GatewaySpec, serde_json::Value>;
pub type HttpRouteObj = kube::core::Object<gw::HttpRouteSpec, serde_json::Value>;

/// What the status writer needs to know.
#[derive(Clone, Debug)]
pub struct StatusConfig {
    pub lease: LeaseConfig,
    /// `controllerName` of our GatewayClasses.
    pub gateway_controller: String,
    /// `ingressClassName` of our Ingresses.
    pub ingress_class: String,
    /// Fixed addresses (`--gateway-address`).
    pub addresses: Vec<Address>,
    /// A Service whose addresses are ours (`--publish-service NAMESPACE/NAME`).
    pub publish_service: Option<(String, String)>,
    /// The Gateway listener ports this replica's HTTP proxy opened or could not open; `None`
    /// when it runs no HTTP proxy (then ports are not part of the status).
    pub ports: Option<tables::ports::PortReport>,
}

/// `switchboard_leader` and `switchboard_status_writes_total`.
#[derive(Clone)]
pub struct StatusMetrics {
    pub leader: IntGauge,
    pub writes: IntCounterVec,
}

impl StatusMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = StatusMetrics {
            leader: IntGauge::new(
                "switchboard_leader",
                "1 while this replica holds the status Lease (writes status), else 0.",
            )?,
            writes: IntCounterVec::new(
                Opts::new(
                    "switchboard_status_writes_total",
                    "Status writes by kind (GatewayClass, Gateway, HTTPRoute, Ingress) and result (ok, conflict, error).",
                ),
                &["kind", "result"],
            )?,
        };
        registry.register(Box::new(m.leader.clone()))?;
        registry.register(Box::new(m.writes.clone()))?;
        Ok(m)
    }
}

/// A running election and writer; [`Status::shutdown`] releases the Lease.
pub struct Status {
    stop: watch::Sender<bool>,
    election: tokio::task::JoinHandle<()>,
}

impl Status {
    /// Starts the election, and the writer that works while this replica leads. The writer's
    /// lists wait for `start_after` (the first complete table: at start they would compete with
    /// the sources' own lists for the API server and the cores, and nothing needs status first).
    pub fn spawn(
        client: kube::Client,
        cfg: StatusConfig,
        metrics: StatusMetrics,
        start_after: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Status {
        let (stop, stop_rx) = watch::channel(false);
        let (leader_tx, leader_rx) = watch::channel(false);
        let leases = kube::Api::namespaced(client.clone(), &cfg.lease.namespace);
        let election = tokio::spawn(leader::run(
            leases,
            cfg.lease.clone(),
            leader_tx,
            metrics.leader.clone(),
            stop_rx,
        ));
        tokio::spawn(async move {
            start_after.await;
            writer::run(client, cfg, metrics, leader_rx).await
        });
        Status { stop, election }
    }

    /// Stops the election and gives the Lease up if held, so a standby takes over at once.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.election).await;
    }
}
