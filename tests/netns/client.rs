//! Blocking clients for the tests: TCP, UDP and HTTP/1.1 asks with deadlines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

// ---- clients (blocking; run them inside a namespace with `enter`/`within`) ----

/// Connects to `addr` (from `bind`, if given) and returns the backend's first line.
pub fn tcp_hello(addr: SocketAddr, bind: Option<SocketAddr>) -> std::io::Result<String> {
    let stream = match bind {
        None => TcpStream::connect_timeout(&addr, Duration::from_secs(3))?,
        Some(local) => {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )?;
            s.bind(&local.into())?;
            s.connect_timeout(&addr.into(), Duration::from_secs(3))?;
            s.into()
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end().to_string())
}

/// Sends `payload` to `addr` from a fresh socket and waits up to `wait` for the answer.
pub fn udp_ask(addr: SocketAddr, payload: &str, wait: Duration) -> std::io::Result<String> {
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = UdpSocket::bind(local)?;
    udp_ask_on(&sock, addr, payload, wait)
}

/// As `udp_ask`, on a given socket (same client port for every datagram: one flow).
pub fn udp_ask_on(
    sock: &UdpSocket,
    addr: SocketAddr,
    payload: &str,
    wait: Duration,
) -> std::io::Result<String> {
    sock.connect(addr)?;
    sock.set_read_timeout(Some(wait))?;
    sock.send(payload.as_bytes())?;
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// How many answers came from each backend, by name (the answers' first word, before a space
/// or a colon). Any failed connection or datagram fails the test: an error is not a backend,
/// and ten identical errors must not pass as "sticks to one backend".
pub fn names(results: &[std::io::Result<String>]) -> std::collections::HashMap<String, usize> {
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(
        errors.is_empty(),
        "{} of {} connections failed: {errors:?}",
        errors.len(),
        results.len()
    );
    let mut m = std::collections::HashMap::new();
    for s in results.iter().flatten() {
        *m.entry(s.split([' ', ':']).next().unwrap_or("").to_string())
            .or_default() += 1;
    }
    m
}

/// A plain HTTP/1.0 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((code, body))
}
