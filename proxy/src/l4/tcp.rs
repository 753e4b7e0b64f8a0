//! One proxied TCP connection: resolve the frontend, pick an endpoint, connect (trying another
//! endpoint when a connect fails), optionally send a PROXY v2 header, then splice both ways
//! until either side closes.
//!
//! Under failure: no usable endpoint, or every connect attempt failing, resets the client
//! connection (RST) at once; an unknown frontend (a table update raced the connection) resets
//! too. An established connection is never touched by later table updates.

use std::net::SocketAddr;
use std::sync::Arc;

use tables::Protocol;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::select::Pick;
use super::{proxy_protocol, resolve, sockopt, Shared};

/// Connect attempts per client connection, each to a different endpoint while there are others.
const ATTEMPTS: usize = 3;

/// Serves one accepted client connection whose original destination is `dst`.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    client: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
) {
    let snap = shared.cell.load();
    let Some(res) = resolve(&snap.routes, Protocol::Tcp, dst) else {
        tracing::debug!(%peer, %dst, "l4/tcp: no frontend for this address");
        sockopt::reset(client);
        return;
    };
    drop(snap);
    if !super::select::source_allowed(&res.target, peer.ip()) {
        tracing::debug!(%peer, %dst, "l4/tcp: source outside loadBalancerSourceRanges, dropped");
        return;
    }
    let svc_label = res.target.service.key.to_string();
    let port_label = res.target.port().port.to_string();
    let labels = [svc_label.as_str(), port_label.as_str()];
    let kind = res.traffic();
    let mut tried: Vec<SocketAddr> = Vec::new();
    let upstream = loop {
        let pick = shared
            .picker
            .pick(&res.target, kind, res.frontend.ip(), peer.ip(), &tried);
        let ep = match pick {
            Pick::Endpoint(ep) if !tried.contains(&ep) => ep,
            Pick::Endpoint(_) => {
                reject(&shared, client, &labels, "all_failed");
                return;
            }
            Pick::NoEndpoints => {
                reject(&shared, client, &labels, "no_endpoints");
                return;
            }
            Pick::NoLocalEndpoints => {
                reject(&shared, client, &labels, "no_local_endpoints");
                return;
            }
        };
        match tokio::time::timeout(shared.cfg.connect_timeout, TcpStream::connect(ep)).await {
            Ok(Ok(s)) => break s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, frontend = %res.frontend, endpoint = %ep, error = %e, "l4/tcp: connect failed");
            }
            Err(_) => {
                tracing::debug!(%peer, frontend = %res.frontend, endpoint = %ep, "l4/tcp: connect timed out");
            }
        }
        shared
            .metrics
            .connect_errors
            .with_label_values(&labels)
            .inc();
        tried.push(ep);
        if tried.len() >= ATTEMPTS {
            reject(&shared, client, &labels, "all_failed");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    shared.metrics.connections.with_label_values(&labels).inc();
    let active = shared.metrics.active_connections.with_label_values(&labels);
    active.inc();
    let (mut client, mut upstream) = (client, upstream);
    if proxy_protocol::wanted(&res.target.service.service) {
        let header = proxy_protocol::v2_header(peer, res.frontend, true);
        if let Err(e) = upstream.write_all(&header).await {
            tracing::debug!(%peer, error = %e, "l4/tcp: writing the PROXY header failed");
            active.dec();
            sockopt::reset(client);
            return;
        }
    }
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(%peer, frontend = %res.frontend, error = %e, "l4/tcp: connection ended with an error")
        }
    }
    active.dec();
}

fn reject(shared: &Shared, client: TcpStream, labels: &[&str; 2], reason: &str) {
    shared
        .metrics
        .no_endpoint_rejects
        .with_label_values(&[labels[0], labels[1], reason])
        .inc();
    sockopt::reset(client);
}
