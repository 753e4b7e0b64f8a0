//! HTTPRoute filters: header modifiers, redirects and URL rewrites, applied to pingora's request
//! and response headers. Pure functions of the header and the rule, so they are unit-tested
//! without a proxy.

use pingora::http::{RequestHeader, ResponseHeader};
use tables::{HeaderModifier, PathModifier};

/// Applies set/add/remove to a header map through pingora's header type (which keeps the
/// case of header names on the wire).
pub trait HeaderEdit {
    fn set(&mut self, name: &str, value: &str);
    fn add(&mut self, name: &str, value: &str);
    fn remove(&mut self, name: &str);
}

impl HeaderEdit for RequestHeader {
    fn set(&mut self, name: &str, value: &str) {
        let _ = self.insert_header(name.to_string(), value);
    }
    fn add(&mut self, name: &str, value: &str) {
        let _ = self.append_header(name.to_string(), value);
    }
    fn remove(&mut self, name: &str) {
        let _ = self.remove_header(name);
    }
}

impl HeaderEdit for ResponseHeader {
    fn set(&mut self, name: &str, value: &str) {
        let _ = self.insert_header(name.to_string(), value);
    }
    fn add(&mut self, name: &str, value: &str) {
        let _ = self.append_header(name.to_string(), value);
    }
    fn remove(&mut self, name: &str) {
        let _ = self.remove_header(name);
    }
}

/// The spec's order: set, then add, then remove.
pub fn modify_headers(h: &mut impl HeaderEdit, m: &HeaderModifier) {
    for (k, v) in &m.set {
        h.set(k, v);
    }
    for (k, v) in &m.add {
        h.add(k, v);
    }
    for k in &m.remove {
        h.remove(k);
    }
}

/// `uri` with a new path and query, keeping its scheme and authority (HTTP/2 requests carry
/// them in the URI; dropping them would lose the `:authority`).
pub fn with_path_and_query(uri: &http::Uri, pq: &str) -> Result<http::Uri, http::Error> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse()?);
    Ok(http::Uri::from_parts(parts)?)
}

/// RFC 3986 `remove_dot_segments` for a request path, also for percent-encoded dots (`%2e`);
/// `None` when the path has no dot segment (the common case: nothing to rewrite).
pub fn remove_dot_segments(path: &str) -> Option<String> {
    let is_dot = |seg: &str| seg == "." || seg.eq_ignore_ascii_case("%2e");
    let is_dotdot = |seg: &str| {
        matches!(seg.len(), 2 | 4 | 6) && seg.to_ascii_lowercase().replace("%2e", ".").eq("..")
    };
    // Every dot segment has a `.` or a `%`: most paths have neither, and need no split.
    if !path.bytes().any(|b| b == b'.' || b == b'%')
        || !path.split('/').any(|s| is_dot(s) || is_dotdot(s))
    {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        if is_dot(seg) {
            if i == last {
                out.push("");
            }
        } else if is_dotdot(seg) {
            out.pop();
            if i == last {
                out.push("");
            }
        } else {
            out.push(seg);
        }
    }
    Some(format!("/{}", out.join("/")))
}

/// Replaces the matched `prefix` (element-wise, without trailing slash) of `path` with
/// `replacement`: `/foo` → `/xyz` turns `/foo/bar` into `/xyz/bar`; `/foo` → `/` turns
/// `/foo/bar` into `/bar` and `/foo` into `/`.
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let rest = path.get(prefix.len()..).unwrap_or("");
    let mut out = replacement.trim_end_matches('/').to_string();
    if rest.is_empty() {
        if out.is_empty() || replacement.ends_with('/') {
            out.push('/');
        }
    } else {
        out.push_str(rest);
    }
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    out
}

/// The new path for a path modifier; `prefix` is the matched prefix (None when the rule did not
/// match by prefix: `ReplacePrefixMatch` then leaves the path alone).
pub fn rewrite_path(path: &str, modifier: &PathModifier, prefix: Option<&str>) -> String {
    match modifier {
        PathModifier::ReplaceFullPath(p) => p.clone(),
        PathModifier::ReplacePrefixMatch(r) => match prefix {
            Some(prefix) => replace_prefix(path, prefix, r),
            None => path.to_string(),
        },
    }
}

/// Everything a redirect needs from the request.
pub struct RedirectFrom<'a> {
    pub scheme: &'a str,
    pub host: &'a str,
    /// The port the client used, if it named one in Host.
    pub port: Option<u16>,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// The `Location` of a `RequestRedirect`.
pub fn redirect_location(
    from: &RedirectFrom<'_>,
    scheme: Option<&str>,
    hostname: Option<&str>,
    path: Option<&PathModifier>,
    port: Option<u16>,
    prefix: Option<&str>,
) -> String {
    let scheme_out = scheme.unwrap_or(from.scheme);
    let host = hostname.unwrap_or(from.host);
    // Spec: an explicit port wins; otherwise a changed scheme takes its well-known port (and
    // the port is omitted); otherwise the request's port stays.
    let port_out = match (port, scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => from.port,
    };
    let well_known = matches!(
        (scheme_out, port_out),
        ("http", Some(80)) | ("https", Some(443))
    );
    let new_path = match path {
        Some(m) => rewrite_path(from.path, m, prefix),
        None => from.path.to_string(),
    };
    let mut loc = format!("{scheme_out}://{host}");
    if let (Some(p), false) = (port_out, well_known) {
        loc.push_str(&format!(":{p}"));
    }
    loc.push_str(&new_path);
    if let Some(q) = from.query {
        loc.push('?');
        loc.push_str(q);
    }
    loc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_path_keeps_authority() {
        let u: http::Uri = "http://a.test:8080/x/../y?q=1".parse().unwrap();
        assert_eq!(
            with_path_and_query(&u, "/y?q=1").unwrap().to_string(),
            "http://a.test:8080/y?q=1"
        );
        let u: http::Uri = "/x".parse().unwrap();
        assert_eq!(with_path_and_query(&u, "/z").unwrap().to_string(), "/z");
    }

    #[test]
    fn dot_segments() {
        assert_eq!(remove_dot_segments("/a/b"), None);
        assert_eq!(remove_dot_segments("/a..b/c"), None);
        assert_eq!(
            remove_dot_segments("/api/../admin").as_deref(),
            Some("/admin")
        );
        assert_eq!(
            remove_dot_segments("/api/%2E%2e/admin").as_deref(),
            Some("/admin")
        );
        assert_eq!(remove_dot_segments("/a/./b/").as_deref(), Some("/a/b/"));
        assert_eq!(remove_dot_segments("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(remove_dot_segments("/../../x").as_deref(), Some("/x"));
        assert_eq!(remove_dot_segments("/.").as_deref(), Some("/"));
    }

    #[test]
    fn prefix_replacement() {
        assert_eq!(replace_prefix("/foo/bar", "/foo", "/xyz"), "/xyz/bar");
        assert_eq!(replace_prefix("/foo/bar", "/foo", "/"), "/bar");
        assert_eq!(replace_prefix("/foo", "/foo", "/"), "/");
        assert_eq!(replace_prefix("/foo", "/foo", "/xyz"), "/xyz");
        assert_eq!(replace_prefix("/foo/", "/foo", "/xyz/"), "/xyz/");
        assert_eq!(replace_prefix("/anything", "", "/v2"), "/v2/anything");
    }

    #[test]
    fn redirects() {
        let from = RedirectFrom {
            scheme: "http",
            host: "a.test",
            port: Some(8080),
            path: "/old/x",
            query: Some("q=1"),
        };
        assert_eq!(
            redirect_location(&from, Some("https"), None, None, None, None),
            "https://a.test/old/x?q=1"
        );
        assert_eq!(
            redirect_location(
                &from,
                None,
                Some("b.test"),
                Some(&PathModifier::ReplacePrefixMatch("/new".into())),
                None,
                Some("/old")
            ),
            "http://b.test:8080/new/x?q=1"
        );
        assert_eq!(
            redirect_location(&from, None, None, None, Some(80), None),
            "http://a.test/old/x?q=1"
        );
    }

    #[test]
    fn header_modifier_order() {
        let mut h = RequestHeader::build("GET", b"/", None).unwrap();
        h.insert_header("x-a", "1").unwrap();
        h.insert_header("x-gone", "1").unwrap();
        modify_headers(
            &mut h,
            &HeaderModifier {
                set: vec![("x-a".into(), "2".into())],
                add: vec![("x-b".into(), "3".into()), ("x-a".into(), "4".into())],
                remove: vec!["x-gone".into()],
            },
        );
        let a: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(a, ["2", "4"]);
        assert_eq!(h.headers.get("x-b").unwrap(), "3");
        assert!(h.headers.get("x-gone").is_none());
    }
}
