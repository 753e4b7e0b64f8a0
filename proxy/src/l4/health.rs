//! healthCheckNodePort servers, as kube-proxy runs them for `externalTrafficPolicy: Local`
//! services: an HTTP server per port on every node address that answers any GET with
//!
//! ```text
//! 200 {"service":{"namespace":"ns","name":"svc"},"localEndpoints":N,"serviceProxyHealthy":true}
//! ```
//!
//! when this node has N > 0 ready local endpoints and the proxy is keeping up with the tables,
//! and 503 with the same body otherwise, so external load balancers only send to nodes that
//! can serve without a second hop. Each request reads the current snapshot.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tables::{ServiceKey, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{sockopt, Shared};
use crate::endpoints::external_policy_local;

/// The running health-check servers, by port.
#[derive(Default)]
pub(crate) struct HealthServers {
    live: HashMap<u16, (ServiceKey, Vec<JoinHandle<()>>)>,
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for (_, tasks) in self.live.values() {
            for t in tasks {
                t.abort();
            }
        }
    }
}

impl HealthServers {
    /// Starts and stops servers to match the services of `snap` that have a healthCheckNodePort
    /// and `externalTrafficPolicy: Local`.
    pub fn reconcile(&mut self, shared: &Arc<Shared>, snap: &Snapshot) {
        let mut want: HashMap<u16, ServiceKey> = HashMap::new();
        for (key, svc) in snap.routes.services.iter() {
            if let Some(p) = svc.service.health_check_node_port {
                if external_policy_local(&svc.service) {
                    want.insert(p, key.clone());
                }
            }
        }
        self.live.retain(|port, (key, tasks)| {
            let keep = want.get(port) == Some(key);
            if !keep {
                for t in tasks.iter() {
                    t.abort();
                }
                tracing::info!(port, service = %key, "l4: health check server stopped");
            }
            keep
        });
        for (port, key) in want {
            if self.live.contains_key(&port) {
                continue;
            }
            let mut tasks = Vec::new();
            let v4: SocketAddr = (Ipv4Addr::UNSPECIFIED, port).into();
            let v6: SocketAddr = (Ipv6Addr::UNSPECIFIED, port).into();
            for addr in [v4, v6] {
                match sockopt::tcp_listener(addr) {
                    Ok(l) => {
                        tracing::info!(service = %key, "listening on l4/healthcheck {addr}");
                        tasks.push(tokio::spawn(serve(shared.clone(), l, key.clone())));
                    }
                    Err(e) if addr.is_ipv6() => {
                        tracing::debug!(port, error = %e, "l4: no IPv6 health check listener")
                    }
                    Err(e) => {
                        tracing::warn!(port, service = %key, error = %e, "l4: cannot listen on the healthCheckNodePort")
                    }
                }
            }
            if !tasks.is_empty() {
                self.live.insert(port, (key, tasks));
            }
        }
    }
}

async fn serve(shared: Arc<Shared>, listener: TcpListener, key: ServiceKey) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let shared = shared.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), answer(&shared, stream, &key)).await;
        });
    }
}

/// The status and JSON body for `key` as of now.
pub(crate) fn status(shared: &Shared, key: &ServiceKey) -> (u16, usize, String) {
    let snap = shared.cell.load();
    let node = shared.picker.node();
    let mut local = std::collections::HashSet::new();
    if let Some(svc) = snap.routes.services.get(key) {
        for port in &svc.ports {
            for e in port.endpoints.iter() {
                if e.conditions.is_ready()
                    && node.name.is_some()
                    && e.endpoint.node_name.as_deref() == node.name.as_deref()
                {
                    local.insert(e.addr().ip());
                }
            }
        }
    }
    let healthy = shared.health.check().is_ok();
    let body = serde_json::json!({
        "service": {"namespace": &*key.namespace, "name": &*key.name},
        "localEndpoints": local.len(),
        "serviceProxyHealthy": healthy,
    })
    .to_string();
    let code = if !local.is_empty() && healthy {
        200
    } else {
        503
    };
    (code, local.len(), body)
}

async fn answer(shared: &Shared, mut stream: TcpStream, key: &ServiceKey) -> std::io::Result<()> {
    // Read the request head; its content does not matter (kube-proxy answers any path).
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let (code, weight, body) = status(shared, key);
    let reason = if code == 200 {
        "OK"
    } else {
        "Service Unavailable"
    };
    let resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        weight,
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}
