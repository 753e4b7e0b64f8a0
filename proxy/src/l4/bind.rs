//! `bind` mode: one listener per frontend VIP:port (TCP and UDP), for VIPs that are already
//! local addresses (the demo's 127.10.0.0/24 ClusterIPs). No privileges needed.
//!
//! A listener exists while its frontend has endpoints this node may use: without one, the
//! socket is closed so the kernel itself refuses (TCP RST for the SYN, ICMP port unreachable
//! for UDP), as the nftables `reject` does in the other mode. NodePorts listen on 0.0.0.0.
//! A listener that cannot be bound (address not local, port taken) is logged and retried after
//! a while. Removing a TCP listener leaves its accepted connections alone; removing a UDP
//! listener forgets its flows.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tables::Protocol;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

use super::nft::{Change, Element};
use super::select::Verdict;
use super::{sockopt, tcp, udp, Shared};

const RETRY: Duration = Duration::from_secs(10);

pub(crate) struct BindListeners {
    live: HashMap<(Protocol, SocketAddr), JoinHandle<()>>,
    failed: HashMap<(Protocol, SocketAddr), Instant>,
    /// `nftables` mode: only UDP, bound transparently (the VIPs are not local addresses).
    transparent_udp_only: bool,
}

impl BindListeners {
    /// `bind` mode: TCP and UDP listeners on local VIPs.
    pub fn bind_mode() -> Self {
        BindListeners {
            live: HashMap::new(),
            failed: HashMap::new(),
            transparent_udp_only: false,
        }
    }

    /// `nftables` mode: a transparent UDP socket per UDP frontend. Marked datagrams are routed
    /// locally (policy routing) and land here whenever the tproxy socket assignment is lost —
    /// which the kernel does for traffic that crossed a bridge with br_netfilter
    /// (`bridge-nf-call-iptables=1`): the bridge runs the prerouting hooks before `ip_rcv`,
    /// which orphans the socket tproxy assigned. Replies to datagrams of the tproxy listener
    /// leave from these sockets too.
    pub fn frontend_sockets() -> Self {
        BindListeners {
            live: HashMap::new(),
            failed: HashMap::new(),
            transparent_udp_only: true,
        }
    }
}

impl Drop for BindListeners {
    // Tasks only; the sockets close when the last flow using them ends.
    fn drop(&mut self) {
        for t in self.live.values() {
            t.abort();
        }
    }
}

fn addr_of(e: &Element) -> Option<(Protocol, SocketAddr)> {
    match *e {
        Element::Service { ip, protocol, port } => Some((protocol, SocketAddr::new(ip, port))),
        Element::NodePort {
            v6: false,
            protocol,
            port,
        } => Some((
            protocol,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        )),
        Element::NodePort { v6: true, .. } => None,
    }
}

impl BindListeners {
    pub fn len(&self) -> usize {
        self.live.len()
    }

    fn wanted(&self, verdict: Option<Verdict>, e: &Element) -> bool {
        verdict == Some(Verdict::Proxy)
            && e.protocol() != Protocol::Sctp
            && (!self.transparent_udp_only || e.protocol() == Protocol::Udp)
    }

    /// Opens and closes listeners for the frontends whose verdict changed, so that exactly the
    /// frontends with a `Proxy` verdict have one, and retries earlier failures that are due.
    /// Returns how many listeners were opened and closed.
    pub fn reconcile(&mut self, shared: &Arc<Shared>, changes: &[Change]) -> (usize, usize) {
        let mut open: Vec<(Protocol, SocketAddr)> = Vec::new();
        let mut closed = 0;
        for c in changes {
            let (before, after) = (
                self.wanted(c.old_verdict(), &c.element),
                self.wanted(c.new_verdict(), &c.element),
            );
            let Some(key) = addr_of(&c.element) else {
                continue;
            };
            if before && !after {
                self.failed.remove(&key);
                if let Some(task) = self.live.remove(&key) {
                    task.abort();
                    if key.0 == Protocol::Udp {
                        shared.frontend_sockets.remove(key.1);
                        shared.udp.remove_frontend(key.1);
                    }
                    tracing::debug!("l4: closed {}/{}", proto(key.0), key.1);
                    closed += 1;
                }
            } else if after && !before {
                open.push(key);
            }
        }
        let now = Instant::now();
        let due: Vec<(Protocol, SocketAddr)> = self
            .failed
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= RETRY)
            .map(|(k, _)| *k)
            .collect();
        open.extend(due);
        let mut opened = 0;
        for key in open {
            if self.live.contains_key(&key) {
                continue;
            }
            let task = match key.0 {
                Protocol::Tcp => sockopt::tcp_listener(key.1)
                    .map(|l| tokio::spawn(accept_loop(shared.clone(), l))),
                Protocol::Udp => sockopt::udp_socket(key.1, self.transparent_udp_only).map(|s| {
                    let s = Arc::new(s);
                    shared.frontend_sockets.insert(key.1, s.clone());
                    tokio::spawn(udp_loop(shared.clone(), s, key.1))
                }),
                Protocol::Sctp => continue,
            };
            match task {
                Ok(t) => {
                    self.failed.remove(&key);
                    if self.transparent_udp_only {
                        tracing::debug!("l4: frontend socket udp {}", key.1);
                    } else {
                        tracing::info!("listening on l4/{} {}", proto(key.0), key.1);
                    }
                    self.live.insert(key, t);
                    opened += 1;
                }
                Err(e) => {
                    if !self.failed.contains_key(&key) {
                        tracing::warn!(
                            frontend = %key.1,
                            protocol = proto(key.0),
                            error = %e,
                            "l4: cannot listen on a frontend (is the VIP a local address?); retrying every {}s",
                            RETRY.as_secs()
                        );
                    }
                    self.failed.insert(key, now);
                }
            }
        }
        (opened, closed)
    }
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "l4/tcp: accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(dst) = stream.local_addr() else {
            sockopt::reset(stream);
            continue;
        };
        tokio::spawn(tcp::serve(shared.clone(), stream, peer, dst));
    }
}

async fn udp_loop(shared: Arc<Shared>, sock: Arc<UdpSocket>, frontend: SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let counter = shared
        .metrics
        .udp_datagrams
        .with_label_values(&["frontend"]);
    loop {
        let (n, client) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "l4/udp: receive failed");
                continue;
            }
        };
        counter.inc();
        udp::datagram(&shared, &sock, client, frontend, &buf[..n]).await;
    }
}
