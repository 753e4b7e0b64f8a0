//! What the proxy reads from and adds to a request: host and port, the consistent-hashing key,
//! the request id, and the client's `Forwarded` element; used by both the pingora path
//! (`service.rs`) and the fast path (`fast/`).

use std::net::IpAddr;

use pingora::http::RequestHeader;

use super::balance::{key_hash, HashKey};
use super::route::Headers;

/// `Host` (or the HTTP/2 authority) without port, lower-case, and the port if one was given.
pub(super) fn request_host(req: &RequestHeader) -> (String, Option<u16>) {
    let raw = req
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("");
    split_host_port(raw)
}

pub(super) fn split_host_port(raw: &str) -> (String, Option<u16>) {
    let raw = raw.rsplit('@').next().unwrap_or(raw);
    let (host, port) = if raw.starts_with('[') {
        match raw.find(']') {
            Some(end) => (
                &raw[..=end],
                raw[end + 1..]
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok()),
            ),
            None => (raw, None),
        }
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, p.parse().ok()),
            _ => (raw, None),
        }
    };
    // One allocation: the lower-case copy.
    (host.trim_end_matches('.').to_ascii_lowercase(), port)
}

fn cookie_value<'a>(headers: &'a Headers<'a>, name: &str) -> Option<&'a str> {
    headers
        .all("cookie")
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// The consistent-hashing key of a request: its client IP, header or cookie (random when the
/// request has none, so such requests spread).
pub(super) fn request_hash(key: &HashKey, client_ip: Option<IpAddr>, headers: Headers<'_>) -> u64 {
    match key {
        HashKey::ClientIp => match client_ip {
            Some(IpAddr::V4(ip)) => key_hash(&ip.octets()),
            Some(IpAddr::V6(ip)) => key_hash(&ip.octets()),
            None => fastrand::u64(..),
        },
        HashKey::Header(h) => headers
            .first(h.as_str())
            .map(key_hash)
            .unwrap_or_else(|| fastrand::u64(..)),
        HashKey::Cookie(c) => cookie_value(&headers, c)
            .map(|v| key_hash(v.as_bytes()))
            .unwrap_or_else(|| fastrand::u64(..)),
    }
}

/// The request id: the client's `X-Request-Id` if it is a usable one (non-empty text of at most
/// 200 bytes), else a new one.
pub(super) fn request_id(client: Option<&str>) -> String {
    client
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_string)
        .unwrap_or_else(new_request_id)
}

/// `for=…` of a `Forwarded` element for the client `ip` (an IPv6 address quoted in brackets,
/// RFC 7239).
pub(super) fn forwarded_for(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
        IpAddr::V4(ip) => format!("for={ip}"),
    }
}

/// 32 random hex digits (written by hand: `format!` showed in the per-request profile).
fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (half, n) in [fastrand::u64(..), fastrand::u64(..)]
        .into_iter()
        .enumerate()
    {
        for i in 0..16 {
            out[half * 16 + i] = HEX[((n >> ((15 - i) * 4)) & 0xf) as usize];
        }
    }
    String::from_utf8(out.to_vec()).expect("hex digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port() {
        assert_eq!(
            split_host_port("A.Test:8080"),
            ("a.test".into(), Some(8080))
        );
        assert_eq!(split_host_port("a.test."), ("a.test".into(), None));
        assert_eq!(split_host_port("[::1]:80"), ("[::1]".into(), Some(80)));
        assert_eq!(split_host_port("[::1]"), ("[::1]".into(), None));
    }

    #[test]
    fn cookies() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "a=1; session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_value(&Headers::Map(&h), "session"), Some("abc"));
        assert_eq!(cookie_value(&Headers::Map(&h), "c"), None);
        let raw = [httparse::Header {
            name: "Cookie",
            value: b"a=1; session=abc",
        }];
        assert_eq!(cookie_value(&Headers::Raw(&raw), "session"), Some("abc"));
    }

    #[test]
    fn request_ids_are_32_hex_digits_and_differ() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}
