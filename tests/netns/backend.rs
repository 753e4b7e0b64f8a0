//! Backend pods' servers: they say who they are (and who called), count their hits, and stop
//! on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

// ---- backends ----

/// A backend pod's server: TCP answers `NAME\n` on connect then echoes; UDP answers each
/// datagram with `NAME:PAYLOAD`. With `proxy_protocol`, it first reads a PROXY v2 header and
/// answers `NAME SRC` (TCP) / `NAME:SRC:PAYLOAD` (UDP). Stops on drop.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub hits: Arc<AtomicU32>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Backend {
    pub fn tcp(ns: Option<&Netns>, addr: SocketAddr, name: &str, proxy_protocol: bool) -> Backend {
        let listener =
            within(ns, || TcpListener::bind(addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicU32::new(0));
        let (s, h, n) = (stop.clone(), hits.clone(), name.to_string());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        h.fetch_add(1, Ordering::Relaxed);
                        let (s, n) = (s.clone(), n.clone());
                        std::thread::spawn(move || serve_tcp(conn, &n, proxy_protocol, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Backend {
            name: name.into(),
            addr,
            stop,
            hits,
        }
    }

    pub fn udp(ns: Option<&Netns>, addr: SocketAddr, name: &str, proxy_protocol: bool) -> Backend {
        let sock =
            within(ns, || UdpSocket::bind(addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = sock.local_addr().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicU32::new(0));
        let (s, h, n) = (stop.clone(), hits.clone(), name.to_string());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                let Ok((len, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                h.fetch_add(1, Ordering::Relaxed);
                let data = &buf[..len];
                let reply = if proxy_protocol {
                    match decode_proxy_v2(data, false) {
                        Ok((src, _, hl)) => {
                            format!("{n}:{src}:{}", String::from_utf8_lossy(&data[hl..]))
                        }
                        Err(e) => format!("{n}:bad-proxy-header({e})"),
                    }
                } else {
                    format!("{n}:{}", String::from_utf8_lossy(data))
                };
                let _ = sock.send_to(reply.as_bytes(), from);
            }
        });
        Backend {
            name: name.into(),
            addr,
            stop,
            hits,
        }
    }
}

/// Decodes a PROXY protocol v2 header at the start of `data`, written from the specification
/// (haproxy's proxy-protocol.txt, section 2.2) and on purpose not with the crate's own parser,
/// so that an encoder bug mirrored by that parser still shows. `tcp` says which transport the
/// header must announce. Returns the source and destination addresses and the header's length.
pub fn decode_proxy_v2(data: &[u8], tcp: bool) -> Result<(SocketAddr, SocketAddr, usize), String> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    const SIGNATURE: [u8; 12] = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
    ];
    if data.len() < 16 {
        return Err(format!(
            "{} bytes, shorter than the 16-byte header",
            data.len()
        ));
    }
    if data[..12] != SIGNATURE {
        return Err(format!("signature {:02x?}", &data[..12]));
    }
    // The 13th byte: version 2 in the high nibble, command PROXY (1) in the low one.
    if data[12] != 0x21 {
        return Err(format!("version/command {:#04x}, not 0x21", data[12]));
    }
    // The 14th byte: address family in the high nibble (1 AF_INET, 2 AF_INET6), transport in
    // the low one (1 STREAM, 2 DGRAM).
    let (family, transport) = (data[13] >> 4, data[13] & 0x0F);
    let want = if tcp { 1 } else { 2 };
    if transport != want {
        return Err(format!("transport {transport}, expected {want}"));
    }
    // Bytes 15-16: the length of what follows, in network byte order.
    let len = u16::from_be_bytes([data[14], data[15]]) as usize;
    let total = 16 + len;
    if data.len() < total {
        return Err(format!(
            "length {len} beyond the {} bytes received",
            data.len() - 16
        ));
    }
    let a = &data[16..total];
    let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
    match family {
        // src_addr[4] dst_addr[4] src_port[2] dst_port[2]
        1 if len >= 12 => {
            let ip = |i: usize| Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]);
            let src = SocketAddr::new(ip(0).into(), port(8));
            let dst = SocketAddr::new(ip(4).into(), port(10));
            Ok((src, dst, total))
        }
        // src_addr[16] dst_addr[16] src_port[2] dst_port[2]
        2 if len >= 36 => {
            let ip = |i: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&a[i..i + 16]).unwrap());
            let src = SocketAddr::new(ip(0).into(), port(32));
            let dst = SocketAddr::new(ip(16).into(), port(34));
            Ok((src, dst, total))
        }
        _ => Err(format!("family {family} with {len} address bytes")),
    }
}

fn serve_tcp(mut conn: TcpStream, name: &str, proxy_protocol: bool, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = conn.set_nodelay(true);
    let greeting = if proxy_protocol {
        let mut head = [0u8; 16];
        if read_full(&mut conn, &mut head, stop).is_err() {
            return;
        }
        let len = u16::from_be_bytes([head[14], head[15]]) as usize;
        let mut rest = vec![0u8; len];
        if read_full(&mut conn, &mut rest, stop).is_err() {
            return;
        }
        let mut all = head.to_vec();
        all.extend_from_slice(&rest);
        match decode_proxy_v2(&all, true) {
            Ok((src, _, _)) => format!("{name} {src}\n"),
            Err(e) => format!("{name} bad-proxy-header({e})\n"),
        }
    } else {
        format!("{name}\n")
    };
    if conn.write_all(greeting.as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

fn read_full(conn: &mut TcpStream, buf: &mut [u8], stop: &AtomicBool) -> std::io::Result<()> {
    let mut off = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while off < buf.len() {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        match conn.read(&mut buf[off..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => off += n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---- backends that say who called ----

impl Backend {
    /// A TCP backend that greets each connection with `NAME SOURCE-IP\n` (then echoes), and a
    /// UDP one on the same address answering `NAME SOURCE-IP`: what the pod sees as the client.
    pub fn whoami(ns: Option<&Netns>, addr: SocketAddr, name: &str) -> Vec<Backend> {
        let stop = Arc::new(AtomicBool::new(false));
        let listener =
            within(ns, || TcpListener::bind(addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let sock =
            within(ns, || UdpSocket::bind(addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let (tcp_hits, udp_hits) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let (s, h, n) = (stop.clone(), tcp_hits.clone(), name.to_string());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, from)) => {
                        h.fetch_add(1, Ordering::Relaxed);
                        let _ = conn.write_all(format!("{n} {}\n", from.ip()).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let (s, h, n) = (stop.clone(), udp_hits.clone(), name.to_string());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                let Ok((_, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                h.fetch_add(1, Ordering::Relaxed);
                let _ = sock.send_to(format!("{n} {}", from.ip()).as_bytes(), from);
            }
        });
        vec![
            Backend {
                name: name.into(),
                addr,
                stop: stop.clone(),
                hits: tcp_hits,
            },
            Backend {
                name: name.into(),
                addr,
                stop,
                hits: udp_hits,
            },
        ]
    }
}
