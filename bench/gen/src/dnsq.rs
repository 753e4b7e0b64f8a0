//! A minimal DNS-over-UDP client for polling one `A` name: encodes a query, returns the RCODE and
//! the `A` addresses of the answer. Enough for the propagation benchmark, which only asks "does
//! this name resolve to this address yet".

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

pub struct Client {
    sock: UdpSocket,
    id: u16,
}

/// An answer: RCODE and the A records in the answer section.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub rcode: u8,
    pub a: Vec<Ipv4Addr>,
}

impl Client {
    pub fn new(server: SocketAddr, timeout: Duration) -> std::io::Result<Client> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.connect(server)?;
        sock.set_read_timeout(Some(timeout))?;
        Ok(Client { sock, id: 1 })
    }

    /// Asks `name A` once; `None` on timeout or a malformed answer.
    pub fn query_a(&mut self, name: &str) -> Option<Answer> {
        self.id = self.id.wrapping_add(1);
        let id = self.id;
        let mut q = Vec::with_capacity(64);
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, QDCOUNT 1
        for label in name.trim_end_matches('.').split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, A, IN
        self.sock.send(&q).ok()?;
        let mut buf = [0u8; 4096];
        loop {
            let n = self.sock.recv(&mut buf).ok()?;
            let m = &buf[..n];
            if n < 12 || u16::from_be_bytes([m[0], m[1]]) != id {
                continue; // a late answer to an earlier query
            }
            return parse(m);
        }
    }
}

fn skip_name(m: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *m.get(i)? as usize;
        if len == 0 {
            return Some(i + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Some(i + 2);
        }
        i += 1 + len;
    }
}

fn parse(m: &[u8]) -> Option<Answer> {
    let rcode = m[3] & 0x0f;
    let qd = u16::from_be_bytes([m[4], m[5]]) as usize;
    let an = u16::from_be_bytes([m[6], m[7]]) as usize;
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(m, i)? + 4;
    }
    let mut a = Vec::new();
    for _ in 0..an {
        i = skip_name(m, i)?;
        let rtype = u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]);
        let rdlen = u16::from_be_bytes([*m.get(i + 8)?, *m.get(i + 9)?]) as usize;
        let rd = m.get(i + 10..i + 10 + rdlen)?;
        if rtype == 1 && rdlen == 4 {
            a.push(Ipv4Addr::new(rd[0], rd[1], rd[2], rd[3]));
        }
        i += 10 + rdlen;
    }
    Some(Answer { rcode, a })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_compressed_answer() {
        // id 2, response, 1 question, 1 answer: web.x. A 10.0.0.1 (name compressed).
        let mut m = vec![0, 2, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        m.extend_from_slice(&[3, b'w', b'e', b'b', 1, b'x', 0, 0, 1, 0, 1]);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 0, 0, 1]);
        assert_eq!(
            parse(&m),
            Some(Answer {
                rcode: 0,
                a: vec![Ipv4Addr::new(10, 0, 0, 1)]
            })
        );
    }
}
