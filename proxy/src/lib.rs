//! The proxies: L7 HTTP (pingora) and L4 TCP/UDP (kube-proxy replacement), balancing over the
//! endpoints of the current `tables::RouteTable`.
//!
//! ```text
//!  SnapshotCell ──load() per connection/request──> http/  (Ingress + HTTPRoute rules)
//!                                                 l4/    (frontends: VIP:port, NodePort)
//!                          endpoints.rs: who may receive new traffic (ready, else draining)
//! ```
//!
//! Per-endpoint health and load (outlier state, EWMA, in-flight counts) is proxy-owned state
//! keyed by endpoint address, outside the snapshot, so a table swap keeps it.
#![forbid(unsafe_code)]

pub mod endpoints;
pub mod http;
pub mod l4;
