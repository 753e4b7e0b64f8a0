//! Entry points for the fuzz targets in `proxy/fuzz`: the fast path's request-head parser and
//! its decisions (`prepare`), and its upstream response-head parser (`parse_head`), without
//! sockets. Also used by the unit test below, so they stay compiled and exercised.

use crate::http::config::HttpConfig;
use crate::http::metrics::HttpMetrics;
use crate::http::shared::Shared;

use super::h1::parse_head;
use super::prepare::{prepare, ConnState, Prep};

/// The fast path's parsers over the tables in `cell`.
pub struct Harness {
    shared: Shared,
}

impl Harness {
    pub fn new(cell: tables::SnapshotCell) -> Self {
        let registry = prometheus::Registry::new();
        let metrics = HttpMetrics::new(&registry).expect("fresh registry");
        Harness {
            shared: Shared::new(cell, HttpConfig::default(), metrics),
        }
    }

    /// What the fast path makes of a client's request bytes: `ready` (proxied here),
    /// `partial`, `fallback` (to pingora, which answers anything malformed) or a refusal code.
    pub fn request(&self, buf: &[u8]) -> &'static str {
        let mut conn = ConnState::new(
            "10.0.0.1".parse().expect("an address"),
            crate::http::views::Scope::ingress(80),
        );
        match prepare(&self.shared, buf, &mut conn) {
            Prep::Ready(_) => "ready",
            Prep::Partial => "partial",
            Prep::Fallback => "fallback",
            Prep::TooLarge(431) => "431",
            Prep::TooLarge(414) => "414",
            Prep::TooLarge(_) => "too large",
        }
    }

    /// Parses an upstream response head; `Some(length)` when complete and valid.
    pub fn response(&self, buf: &[u8], head_only: bool) -> Option<usize> {
        parse_head(buf, head_only, "fuzz").ok().flatten().map(|h| {
            assert!(h.len <= buf.len(), "head length within the input");
            h.len
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_answers_for_sample_inputs() {
        let h = Harness::new(tables::new_cell("cluster.local"));
        assert_eq!(h.request(b"GET / HTTP/1.1\r\nHost: a\r\n"), "partial");
        assert_eq!(
            h.response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            Some(38)
        );
        assert_eq!(h.response(b"HTTP/1.1 200 OK\r\n", false), None);
    }
}
