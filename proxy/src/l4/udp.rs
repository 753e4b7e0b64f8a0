//! UDP flows: (client, frontend) → one endpoint, with its own upstream socket.
//!
//! The first datagram of a flow picks an endpoint (affinity and policies as for TCP) and opens a
//! socket connected to it; a task relays the endpoint's answers back to the client from the
//! frontend address the client used (the listener itself in `bind` mode, a transparent socket
//! bound to VIP:port in `nftables` mode). When the snapshot generation changes, the next
//! datagram of each flow re-checks its endpoint and, if the endpoint is no longer a candidate,
//! the flow moves to a live one: the stale-conntrack blackhole of kube-proxy cannot happen.
//! A flow with no datagram in either direction for the idle timeout is forgotten.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use tables::Protocol;
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

use super::select::Pick;
use super::{proxy_protocol, resolve, Shared};

type Key = (SocketAddr, SocketAddr);

/// The UDP sockets bound to frontend addresses (`bind` listeners, and in `nftables` mode the
/// transparent sockets bound to each VIP:port), so that replies to a datagram that arrived on
/// the tproxy listener leave from the frontend's own socket.
#[derive(Default)]
pub(crate) struct FrontendSockets {
    sockets: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
}

impl FrontendSockets {
    pub fn insert(&self, frontend: SocketAddr, sock: Arc<UdpSocket>) {
        self.sockets.lock().unwrap().insert(frontend, sock);
    }

    pub fn remove(&self, frontend: SocketAddr) {
        self.sockets.lock().unwrap().remove(&frontend);
    }

    /// The socket for `frontend`, or for a NodePort the wildcard socket of its port.
    pub fn get(&self, frontend: SocketAddr) -> Option<Arc<UdpSocket>> {
        let map = self.sockets.lock().unwrap();
        map.get(&frontend)
            .or_else(|| {
                let any: IpAddr = if frontend.is_ipv4() {
                    Ipv4Addr::UNSPECIFIED.into()
                } else {
                    Ipv6Addr::UNSPECIFIED.into()
                };
                map.get(&SocketAddr::new(any, frontend.port()))
            })
            .cloned()
    }
}

/// Every live UDP flow, by (client, frontend).
pub(crate) struct FlowTable {
    start: Instant,
    flows: Mutex<HashMap<Key, Arc<Flow>>>,
}

impl Default for FlowTable {
    fn default() -> Self {
        FlowTable {
            start: Instant::now(),
            flows: Mutex::new(HashMap::new()),
        }
    }
}

pub(crate) struct Flow {
    endpoint: SocketAddr,
    upstream: Arc<UdpSocket>,
    checked_generation: AtomicU64,
    last_seen_ms: AtomicU64,
    proxy_header: Option<Vec<u8>>,
    gauge: IntGauge,
    task: Mutex<Option<AbortHandle>>,
}

impl FlowTable {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn remove_if(&self, key: &Key, flow: &Arc<Flow>) {
        let mut map = self.flows.lock().unwrap();
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flow)) {
            map.remove(key);
            drop(map);
            close(flow);
        }
    }

    /// Forgets every flow to `frontend` (its listener is gone).
    pub fn remove_frontend(&self, frontend: SocketAddr) {
        let gone: Vec<Arc<Flow>> = {
            let mut map = self.flows.lock().unwrap();
            let keys: Vec<Key> = map.keys().filter(|k| k.1 == frontend).copied().collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        for f in &gone {
            close(f);
        }
    }
}

fn close(flow: &Flow) {
    flow.gauge.dec();
    if let Some(t) = flow.task.lock().unwrap().take() {
        t.abort();
    }
}

/// Handles one datagram from `client` to `dst`; `reply` sends from `dst` back to the client.
pub(crate) async fn datagram(
    shared: &Arc<Shared>,
    reply: &Arc<UdpSocket>,
    client: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) {
    let key = (client, dst);
    let generation = shared.cell.load().generation;
    let existing = shared.udp.flows.lock().unwrap().get(&key).cloned();
    if let Some(flow) = existing {
        let fresh = flow.checked_generation.load(Ordering::Relaxed) == generation || {
            let snap = shared.cell.load();
            let ok = resolve(&snap.routes, Protocol::Udp, dst).is_some_and(|res| {
                shared.picker.still_candidate(
                    &res.target,
                    res.traffic(),
                    res.frontend.ip(),
                    flow.endpoint,
                )
            });
            if ok {
                flow.checked_generation
                    .store(snap.generation, Ordering::Relaxed);
            }
            ok
        };
        if fresh {
            send(shared, &flow, payload).await;
            return;
        }
        tracing::debug!(%client, frontend = %dst, endpoint = %flow.endpoint, "l4/udp: endpoint gone, moving the flow");
        shared.udp.remove_if(&key, &flow);
    }
    let snap = shared.cell.load();
    let Some(res) = resolve(&snap.routes, Protocol::Udp, dst) else {
        return;
    };
    if !super::select::source_allowed(&res.target, client.ip()) {
        return;
    }
    let svc = res.target.service.key.to_string();
    let port = res.target.port().port.to_string();
    let endpoint = match shared.picker.pick(
        &res.target,
        res.traffic(),
        res.frontend.ip(),
        client.ip(),
        &[],
    ) {
        Pick::Endpoint(ep) => ep,
        Pick::NoEndpoints | Pick::NoLocalEndpoints => {
            shared
                .metrics
                .no_endpoint_rejects
                .with_label_values(&[&svc, &port, "no_endpoints"])
                .inc();
            return;
        }
    };
    let local: SocketAddr = if endpoint.is_ipv4() {
        (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).into()
    } else {
        (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).into()
    };
    let upstream = match UdpSocket::bind(local).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "l4/udp: cannot open an upstream socket");
            return;
        }
    };
    if let Err(e) = upstream.connect(endpoint).await {
        shared
            .metrics
            .connect_errors
            .with_label_values(&[&svc, &port])
            .inc();
        tracing::debug!(%endpoint, error = %e, "l4/udp: connect failed");
        return;
    }
    let gauge = shared
        .metrics
        .active_flows
        .with_label_values(&[&svc, &port]);
    gauge.inc();
    let flow = Arc::new(Flow {
        endpoint,
        upstream: Arc::new(upstream),
        checked_generation: AtomicU64::new(snap.generation),
        last_seen_ms: AtomicU64::new(shared.udp.now_ms()),
        proxy_header: proxy_protocol::wanted(&res.target.service.service)
            .then(|| proxy_protocol::v2_header(client, res.frontend, false)),
        gauge,
        task: Mutex::new(None),
    });
    drop(snap);
    let task = tokio::spawn(relay(shared.clone(), flow.clone(), key, reply.clone()));
    *flow.task.lock().unwrap() = Some(task.abort_handle());
    let raced = shared.udp.flows.lock().unwrap().insert(key, flow.clone());
    if let Some(old) = raced {
        close(&old);
    }
    send(shared, &flow, payload).await;
}

async fn send(shared: &Shared, flow: &Flow, payload: &[u8]) {
    flow.last_seen_ms
        .store(shared.udp.now_ms(), Ordering::Relaxed);
    let r = match &flow.proxy_header {
        None => flow.upstream.send(payload).await,
        Some(h) => {
            let mut buf = Vec::with_capacity(h.len() + payload.len());
            buf.extend_from_slice(h);
            buf.extend_from_slice(payload);
            flow.upstream.send(&buf).await
        }
    };
    if let Err(e) = r {
        tracing::debug!(endpoint = %flow.endpoint, error = %e, "l4/udp: send to endpoint failed");
    }
}

/// Relays the endpoint's datagrams to the client until the flow is idle or removed.
async fn relay(shared: Arc<Shared>, flow: Arc<Flow>, key: Key, reply: Arc<UdpSocket>) {
    let idle = shared.cfg.udp_idle_timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        let since = shared
            .udp
            .now_ms()
            .saturating_sub(flow.last_seen_ms.load(Ordering::Relaxed));
        let left = idle.saturating_sub(Duration::from_millis(since));
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, flow.upstream.recv(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(n)) => {
                flow.last_seen_ms
                    .store(shared.udp.now_ms(), Ordering::Relaxed);
                if let Err(e) = reply.send_to(&buf[..n], key.0).await {
                    tracing::debug!(client = %key.0, error = %e, "l4/udp: reply to client failed");
                }
            }
            Ok(Err(e)) => {
                // ECONNREFUSED: the endpoint answered ICMP port unreachable. Keep the flow;
                // a table update moves it if the endpoint is really gone.
                tracing::debug!(endpoint = %flow.endpoint, error = %e, "l4/udp: endpoint error");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // Take our own abort handle out first so removal does not abort this task mid-way.
    flow.task.lock().unwrap().take();
    shared.udp.remove_if(&key, &flow);
}
