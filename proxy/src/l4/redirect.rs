//! The fixed listeners of `nftables` mode: one TCP listener per address family that the table
//! `redirect`s service connections to (the original destination comes from `SO_ORIGINAL_DST`),
//! and one transparent UDP listener per family that the table `tproxy`s datagrams to (the
//! original destination arrives with each datagram, `IP_RECVORIGDSTADDR`). Replies to UDP
//! clients leave from a transparent socket bound to the VIP:port the client used.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};

use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

use super::nft::Ports;
use super::{sockopt, tcp, udp, L4Error, Shared};

/// Binds the listeners and starts serving them.
pub(crate) fn start(shared: &Arc<Shared>) -> Result<(Ports, Vec<JoinHandle<()>>), L4Error> {
    let bind = |what: &'static str| move |source| L4Error::Bind { what, source };
    let tcp4 = sockopt::tcp_listener((Ipv4Addr::UNSPECIFIED, 0).into()).map_err(bind("l4/tcp"))?;
    let tcp4_port = tcp4.local_addr().map_err(bind("l4/tcp"))?.port();
    // IPv6 on the same port number when free; a node without IPv6 serves IPv4 only.
    let tcp6 = sockopt::tcp_listener((Ipv6Addr::UNSPECIFIED, tcp4_port).into())
        .or_else(|_| sockopt::tcp_listener((Ipv6Addr::UNSPECIFIED, 0).into()))
        .map_err(|e| tracing::warn!(error = %e, "l4: no IPv6 TCP listener; IPv6 services are not served"))
        .ok();
    let udp4 = sockopt::tproxy_udp_listener((Ipv4Addr::UNSPECIFIED, 0).into())
        .map_err(bind("l4/udp (IP_TRANSPARENT needs CAP_NET_ADMIN)"))?;
    let udp4_port = udp4.local_addr().map_err(bind("l4/udp"))?.port();
    let udp6 = sockopt::tproxy_udp_listener((Ipv6Addr::UNSPECIFIED, udp4_port).into())
        .or_else(|_| sockopt::tproxy_udp_listener((Ipv6Addr::UNSPECIFIED, 0).into()))
        .map_err(|e| tracing::warn!(error = %e, "l4: no IPv6 UDP listener; IPv6 UDP services are not served"))
        .ok();
    let port = |s: &Option<TcpListener>| {
        s.as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
    };
    let ports = Ports {
        tcp4: tcp4_port,
        tcp6: port(&tcp6),
        udp4: udp4_port,
        udp6: udp6
            .as_ref()
            .and_then(|s| s.local_addr().ok())
            .map(|a| a.port()),
    };
    let replies = Arc::new(ReplySockets::default());
    let mut tasks = Vec::new();
    for l in std::iter::once(tcp4).chain(tcp6) {
        tracing::info!(
            "listening on l4/tcp {}",
            l.local_addr().map_err(bind("l4/tcp"))?
        );
        tasks.push(tokio::spawn(accept_loop(shared.clone(), l)));
    }
    for s in std::iter::once(udp4).chain(udp6) {
        tracing::info!(
            "listening on l4/udp {}",
            s.local_addr().map_err(bind("l4/udp"))?
        );
        tasks.push(tokio::spawn(udp_loop(shared.clone(), s, replies.clone())));
    }
    Ok((ports, tasks))
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "l4/tcp: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let dst = match sockopt::original_dst(&stream) {
            Ok(d) if Some(d) != stream.local_addr().ok() => d,
            Ok(_) | Err(_) => {
                // Connected to the listener directly, not redirected by the table.
                tracing::debug!(%peer, "l4/tcp: connection without an original destination");
                sockopt::reset(stream);
                continue;
            }
        };
        tokio::spawn(tcp::serve(shared.clone(), stream, peer, dst));
    }
}

async fn udp_loop(shared: Arc<Shared>, sock: UdpSocket, replies: Arc<ReplySockets>) {
    let mut buf = vec![0u8; 65536];
    let counter = shared.metrics.udp_datagrams.with_label_values(&["tproxy"]);
    loop {
        let (n, client, dst) = match sockopt::recv_orig_dst(&sock, &mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "l4/udp: receive failed");
                continue;
            }
        };
        counter.inc();
        let reply = match shared
            .frontend_sockets
            .get(dst)
            .map(Ok)
            .unwrap_or_else(|| replies.get(dst))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(frontend = %dst, error = %e, "l4/udp: cannot bind a reply socket");
                continue;
            }
        };
        udp::datagram(&shared, &reply, client, dst, &buf[..n]).await;
    }
}

/// Transparent sockets bound to frontend addresses, shared by the flows to that frontend and
/// closed with the last of them.
#[derive(Default)]
struct ReplySockets {
    sockets: Mutex<HashMap<SocketAddr, Weak<UdpSocket>>>,
}

impl ReplySockets {
    fn get(&self, frontend: SocketAddr) -> std::io::Result<Arc<UdpSocket>> {
        let mut map = self.sockets.lock().unwrap();
        if let Some(s) = map.get(&frontend).and_then(Weak::upgrade) {
            return Ok(s);
        }
        if map.len() > 1024 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let s = Arc::new(sockopt::udp_socket(frontend, true)?);
        map.insert(frontend, Arc::downgrade(&s));
        Ok(s)
    }
}
