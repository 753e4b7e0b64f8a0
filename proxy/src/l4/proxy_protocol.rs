//! PROXY protocol v2 headers (haproxy's proxy-protocol.txt, section 2.2), sent to backends of
//! services annotated `switchboard.dev/proxy-protocol: v2`: once at the start of a TCP
//! connection, and in front of every UDP datagram. The source is the client; the destination is
//! the frontend (VIP:port or node address:NodePort) the client used.

use std::net::SocketAddr;

use tables::Service;

/// The annotation that turns the header on.
pub const ANNOTATION: &str = "switchboard.dev/proxy-protocol";

const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// True when the service asks for PROXY protocol v2.
pub fn wanted(service: &Service) -> bool {
    service
        .annotations
        .get(ANNOTATION)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("v2"))
}

/// The v2 header for a connection (`stream`) or datagram from `src` to `dst`. Mixed address
/// families are written as IPv6 (IPv4 mapped).
pub fn v2_header(src: SocketAddr, dst: SocketAddr, stream: bool) -> Vec<u8> {
    let transport = if stream { 0x1 } else { 0x2 };
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, PROXY
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x10 | transport);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => {
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V4(a) => a.ip().to_ipv6_mapped(),
                SocketAddr::V6(a) => *a.ip(),
            };
            out.push(0x20 | transport);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(src).octets());
            out.extend_from_slice(&v6(dst).octets());
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
        }
    }
    out
}

/// Parses a v2 header at the start of `buf`: (source, destination, header length). For tests
/// and for backends written in Rust.
pub fn parse_v2(buf: &[u8]) -> Option<(SocketAddr, SocketAddr, usize)> {
    if buf.len() < 16 || buf[..12] != SIGNATURE || buf[12] != 0x21 {
        return None;
    }
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let body = buf.get(16..16 + len)?;
    let (src, dst) = match buf[13] >> 4 {
        0x1 if len >= 12 => {
            let ip =
                |o: usize| std::net::Ipv4Addr::new(body[o], body[o + 1], body[o + 2], body[o + 3]);
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            (
                SocketAddr::new(ip(0).into(), port(8)),
                SocketAddr::new(ip(4).into(), port(10)),
            )
        }
        0x2 if len >= 36 => {
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&body[o..o + 16]);
                std::net::Ipv6Addr::from(b)
            };
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            (
                SocketAddr::new(ip(0).into(), port(32)),
                SocketAddr::new(ip(16).into(), port(34)),
            )
        }
        _ => return None,
    };
    Some((src, dst, 16 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_tcp_header_matches_the_spec_layout() {
        let h = v2_header(
            "10.244.1.5:40000".parse().unwrap(),
            "10.96.0.10:80".parse().unwrap(),
            true,
        );
        assert_eq!(h.len(), 28);
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(&h[14..16], &[0, 12]);
        assert_eq!(&h[16..20], &[10, 244, 1, 5]);
        assert_eq!(&h[24..26], &40000u16.to_be_bytes());
        let (s, d, n) = parse_v2(&h).unwrap();
        assert_eq!(
            (s.to_string().as_str(), d.to_string().as_str(), n),
            ("10.244.1.5:40000", "10.96.0.10:80", 28)
        );
    }

    #[test]
    fn v6_udp_and_mixed() {
        let h = v2_header(
            "[fd00::5]:1000".parse().unwrap(),
            "[fd00:96::1]:53".parse().unwrap(),
            false,
        );
        assert_eq!(h[13], 0x22);
        assert_eq!(h.len(), 52);
        assert_eq!(parse_v2(&h).unwrap().1, "[fd00:96::1]:53".parse().unwrap());
        let m = v2_header(
            "10.0.0.1:1".parse().unwrap(),
            "[fd00::1]:2".parse().unwrap(),
            true,
        );
        assert_eq!(m[13], 0x21);
        assert!(parse_v2(&m[..20]).is_none());
    }
}
