//! Socket options the interception needs, through safe wrappers: socket2 for
//! `SO_ORIGINAL_DST`, `IP(V6)_TRANSPARENT`, `SO_LINGER`; nix for `IP(V6)_RECVORIGDSTADDR` and
//! `recvmsg` with its ancillary data.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::socket::{self as nsock, ControlMessageOwned, MsgFlags, SockaddrStorage};
use socket2::{Domain, SockRef, Socket, Type};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn domain(addr: &SocketAddr) -> Domain {
    if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

/// A TCP listener on `addr` (IPv6 sockets are IPv6-only, so both families can share a port).
pub fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(domain(&addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    TcpListener::from_std(s.into())
}

/// A UDP socket bound to `addr`; `transparent` allows a non-local address (tproxy, replies from
/// a VIP) and needs CAP_NET_ADMIN.
pub fn udp_socket(addr: SocketAddr, transparent: bool) -> io::Result<UdpSocket> {
    let s = Socket::new(domain(&addr), Type::DGRAM, None)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if transparent {
        if addr.is_ipv4() {
            s.set_ip_transparent_v4(true)?;
        } else {
            s.set_ip_transparent_v6(true)?;
        }
        // Reply sockets for one VIP:port may be opened again while an old one closes.
        s.set_reuse_address(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// The tproxy UDP listener: transparent, with the original destination of every datagram
/// delivered as ancillary data.
pub fn tproxy_udp_listener(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = udp_socket(addr, true)?;
    if addr.is_ipv4() {
        nsock::setsockopt(&s, nsock::sockopt::Ipv4OrigDstAddr, &true)?;
    } else {
        nsock::setsockopt(&s, nsock::sockopt::Ipv6OrigDstAddr, &true)?;
    }
    Ok(s)
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Receives one datagram on a tproxy listener: (length, client, original destination).
pub async fn recv_orig_dst(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, SocketAddr)> {
    let fd = sock.as_raw_fd();
    let mut cmsg = nix::cmsg_space!(nix::libc::sockaddr_in6);
    sock.async_io(Interest::READABLE, || {
        let mut iov = [io::IoSliceMut::new(buf)];
        let msg = nsock::recvmsg::<SockaddrStorage>(
            fd,
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let client = msg
            .address
            .as_ref()
            .and_then(to_std)
            .ok_or_else(|| io::Error::other("datagram without a source address"))?;
        let mut dst = None;
        for c in msg.cmsgs().map_err(io::Error::from)? {
            match c {
                ControlMessageOwned::Ipv4OrigDstAddr(a) => {
                    dst = Some(SocketAddr::V4(nsock::SockaddrIn::from(a).into()))
                }
                ControlMessageOwned::Ipv6OrigDstAddr(a) => {
                    dst = Some(SocketAddr::V6(nsock::SockaddrIn6::from(a).into()))
                }
                _ => {}
            }
        }
        let dst = dst.ok_or_else(|| io::Error::other("datagram without IP_ORIGDSTADDR"))?;
        Ok((msg.bytes, client, dst))
    })
    .await
}

/// The destination the client used before the nftables `redirect` (`SO_ORIGINAL_DST`).
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let s = SockRef::from(stream);
    let local = stream.local_addr()?;
    let a = if local.is_ipv4() {
        s.original_dst_v4()?
    } else {
        s.original_dst_v6()?
    };
    a.as_socket()
        .ok_or_else(|| io::Error::other("original destination is not an IP address"))
}

/// Closes with a TCP RST instead of a FIN (`SO_LINGER` 0): the client sees "connection reset",
/// not a clean, empty answer.
pub fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
