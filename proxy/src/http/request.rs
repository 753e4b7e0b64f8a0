//! What the proxy reads from and adds to a request: host and port, the consistent-hashing key,
//! the request id, and the client's `Forwarded` element; used by both the pingora path
//! (`service.rs`) and the fast path (`fast/`).

use std::borrow::Cow;
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
    let (host, port) = host_and_port(raw);
    (host.into_owned(), port)
}

/// [`split_host_port`], borrowing the host from `raw` when it is already lower-case (the fast
/// path's: no allocation for the usual `Host`). Searched byte by byte: `rsplit` and
/// `trim_end_matches` with a `char` took ~350 instructions a request (callgrind, issue 17.5).
pub(super) fn host_and_port(raw: &str) -> (Cow<'_, str>, Option<u16>) {
    // '@', ':', ']' and '.' are ASCII, so every index below is a char boundary.
    let raw = match raw.bytes().rposition(|b| b == b'@') {
        Some(at) => &raw[at + 1..],
        None => raw,
    };
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
        match raw.bytes().rposition(|b| b == b':') {
            Some(c) if raw[c + 1..].bytes().all(|b| b.is_ascii_digit()) => {
                (&raw[..c], raw[c + 1..].parse().ok())
            }
            _ => (raw, None),
        }
    };
    let host = &host[..host.bytes().rposition(|b| b != b'.').map_or(0, |i| i + 1)];
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        (Cow::Owned(host.to_ascii_lowercase()), port)
    } else {
        (Cow::Borrowed(host), port)
    }
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
    let mut id = String::new();
    put_request_id(client, &mut id);
    id
}

/// [`request_id`], appended to `out`.
pub(super) fn put_request_id(client: Option<&str>, out: &mut String) {
    match client.filter(|v| !v.is_empty() && v.len() <= 200) {
        Some(id) => out.push_str(id),
        None => put_new_request_id(out),
    }
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
fn put_new_request_id(out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    // Two digits per random byte, first the high half.
    let random =
        ((u128::from(fastrand::u64(..)) << 64) | u128::from(fastrand::u64(..))).to_be_bytes();
    for (pair, b) in id.chunks_exact_mut(2).zip(random) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
    out.push_str(std::str::from_utf8(&id).expect("hex digits"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_of_a_host_header() {
        assert_eq!(
            split_host_port("A.Test:8080"),
            ("a.test".into(), Some(8080))
        );
        assert_eq!(split_host_port("a.test."), ("a.test".into(), None));
        assert_eq!(split_host_port("[::1]:80"), ("[::1]".into(), Some(80)));
        assert_eq!(split_host_port("[::1]"), ("[::1]".into(), None));
        // (Host, host, port, borrowed from the header)
        for (raw, host, port, borrowed) in [
            ("a.test", "a.test", None, true),
            ("a.test.:81", "a.test", Some(81), true),
            ("user@A.test:x", "a.test:x", None, false),
            ("u@v@b.test:8080", "b.test", Some(8080), true),
            ("...", "", None, true),
            ("", "", None, true),
            ("é.test:1", "é.test", Some(1), true),
            ("[::1]:443", "[::1]", Some(443), true),
        ] {
            let (h, p) = host_and_port(raw);
            assert_eq!((&*h, p), (host, port), "{raw:?}");
            assert_eq!(matches!(h, Cow::Borrowed(_)), borrowed, "{raw:?}");
        }
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
        let (a, b) = (request_id(None), request_id(Some("")));
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}
