//! Request → rule: the routing index built from one `HttpTable`, and the lookup per request.
//!
//! Built once per `HttpTable` (the table's `Arc` changes only when an Ingress, HTTPRoute, Gateway
//! or GatewayClass changes, not when endpoints move), then shared by every request that loads a
//! snapshot with that table.
//!
//! Order of decisions, as the Gateway API spec and ingress controllers do it:
//! 1. Host: an exact host wins over wildcards, a longer wildcard over a shorter one, and rules
//!    without hosts serve only hosts no other rule names. There is no fall-through between these
//!    groups: a request for `a.example.com` that matches no path of the `a.example.com` rules does
//!    not try the `*.example.com` rules (as ingress-nginx's server blocks and Envoy's virtual
//!    hosts behave).
//! 2. Within the host group, the first match in precedence order: Exact path, then regular
//!    expression, then the longest prefix; then a method match; then more header matches; then
//!    more query matches; then the older source (creationTimestamp), Ingress before HTTPRoute,
//!    source `namespace/name`, rule order, match order.
//! 3. Nothing matched: an Ingress `defaultBackend` if any (the first by namespace/name), else 404.
//!
//! Host wildcards: Ingress `*.foo.com` covers exactly one label (`bar.foo.com`, not
//! `baz.bar.foo.com`); HTTPRoute `*.foo.com` covers one or more labels.
//! Prefix matches are element-wise: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, never
//! `/foobar`; a trailing `/` in the prefix is ignored.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;

use regex::Regex;
use tables::{
    HttpRouteFilter, HttpRule, HttpTable, Kind, PathMatchType, ValueMatch, ValueMatchType,
};

/// One rule of the table, ready to serve: its identity for logs and metrics, its filters and
/// weighted backends.
#[derive(Debug)]
pub struct CompiledRule {
    pub rule: HttpRule,
    /// `HTTPRoute ns/name#0`, `Ingress ns/name#2`: the `route` label of metrics and the log.
    pub label: Arc<str>,
    /// Cumulative backend weights, for a weighted choice; empty when every weight is 0.
    cumulative: Vec<u64>,
}

impl CompiledRule {
    fn new(rule: &HttpRule) -> Self {
        let mut acc = 0u64;
        let mut cumulative = Vec::with_capacity(rule.backends.len());
        for b in &rule.backends {
            acc += u64::from(b.weight);
            cumulative.push(acc);
        }
        if acc == 0 {
            cumulative.clear();
        }
        CompiledRule {
            label: format!("{}#{}", rule.source, rule.rule_index).into(),
            rule: rule.clone(),
            cumulative,
        }
    }

    /// Index into `rule.backends` for a random number `r`; `None` when the rule has no backend
    /// with a positive weight (the spec answers 500 then).
    pub fn pick_backend(&self, r: u64) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let x = r % total;
        Some(self.cumulative.partition_point(|&c| c <= x))
    }

    /// Gateway API: a backendRef into another namespace needs a ReferenceGrant there; the
    /// tables mark those without one, and such references are refused, never followed.
    pub fn crosses_namespace(&self, backend: &tables::HttpBackend) -> bool {
        !backend.permitted
    }

    /// The filter types this data plane does not implement, if any (the rule answers 500).
    pub fn unsupported_filter(&self) -> Option<&str> {
        self.rule.filters.iter().find_map(|f| match f {
            HttpRouteFilter::Unsupported(name) => Some(name.as_str()),
            _ => None,
        })
    }
}

#[derive(Clone, Debug)]
enum PathCheck {
    Exact(String),
    /// Without trailing slash; empty for `/`.
    Prefix(String),
    Regex(Regex),
}

#[derive(Clone, Debug)]
enum ValueCheck {
    Exact(String),
    Regex(Regex),
}

impl ValueCheck {
    fn matches(&self, v: &str) -> bool {
        match self {
            ValueCheck::Exact(e) => e == v,
            ValueCheck::Regex(r) => r.is_match(v),
        }
    }
}

#[derive(Clone, Debug)]
struct MatchCheck {
    path: PathCheck,
    headers: Vec<(http::HeaderName, ValueCheck)>,
    query: Vec<(String, ValueCheck)>,
    method: Option<http::Method>,
}

/// Anchors a Gateway API regular expression to the whole value (the spec's matches are full
/// matches).
fn full_regex(re: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{re})$"))
}

fn value_check(v: &ValueMatch) -> Result<ValueCheck, regex::Error> {
    Ok(match v.match_type {
        ValueMatchType::Exact => ValueCheck::Exact(v.value.clone()),
        ValueMatchType::RegularExpression => ValueCheck::Regex(full_regex(&v.value)?),
    })
}

/// What the request offers to match against.
pub struct RequestView<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a http::Method,
    pub headers: Headers<'a>,
}

/// The request's headers: pingora's parsed map, or the fast path's raw `httparse` headers.
#[derive(Clone, Copy)]
pub enum Headers<'a> {
    Map(&'a http::HeaderMap),
    Raw(&'a [httparse::Header<'a>]),
}

impl Headers<'_> {
    /// Every value of `name` that is valid text, comma-joined (how several values of one header
    /// are matched); `None` when the header is absent.
    pub fn joined(&self, name: &http::HeaderName) -> Option<String> {
        let present = match self {
            Headers::Map(m) => m.contains_key(name),
            Headers::Raw(raw) => raw
                .iter()
                .any(|h| name.as_str().eq_ignore_ascii_case(h.name)),
        };
        present.then(|| self.all(name.as_str()).collect::<Vec<_>>().join(","))
    }

    /// The first value of `name`, as bytes.
    pub fn first(&self, name: &str) -> Option<&[u8]> {
        match self {
            Headers::Map(m) => m.get(name).map(|v| v.as_bytes()),
            Headers::Raw(raw) => raw
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value),
        }
    }

    /// Every value of `name` that is valid text.
    pub fn all<'s>(&'s self, name: &'s str) -> Box<dyn Iterator<Item = &'s str> + 's> {
        match self {
            Headers::Map(m) => Box::new(m.get_all(name).iter().filter_map(|v| v.to_str().ok())),
            Headers::Raw(raw) => Box::new(
                raw.iter()
                    .filter(move |h| h.name.eq_ignore_ascii_case(name))
                    .filter_map(|h| visible_text(h.value)),
            ),
        }
    }
}

/// `v` as text if it is visible ASCII (and tabs), as `http::HeaderValue::to_str` accepts.
pub fn visible_text(v: &[u8]) -> Option<&str> {
    v.iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| std::str::from_utf8(v).ok())
        .flatten()
}

/// Whether `path` lies under `prefix` (without its trailing slash) element by element.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

impl MatchCheck {
    fn matches(&self, req: &RequestView<'_>) -> bool {
        let path_ok = match &self.path {
            PathCheck::Exact(p) => req.path == p,
            PathCheck::Prefix(p) => prefix_matches(p, req.path),
            PathCheck::Regex(r) => r.is_match(req.path),
        };
        if !path_ok {
            return false;
        }
        if let Some(m) = &self.method {
            if m != req.method {
                return false;
            }
        }
        for (name, check) in &self.headers {
            match req.headers.joined(name) {
                Some(v) if check.matches(&v) => {}
                _ => return false,
            }
        }
        for (name, check) in &self.query {
            match query_value(req.query, name) {
                Some(v) if check.matches(v) => {}
                _ => return false,
            }
        }
        true
    }
}

/// One (rule, match) pair in precedence order.
#[derive(Debug)]
struct Entry {
    rule: Arc<CompiledRule>,
    check: MatchCheck,
    /// The matched prefix, for `ReplacePrefixMatch`.
    prefix: Option<String>,
}

/// Precedence, best first: path kind, path length, method, header count, query count, then
/// the older source (creation timestamp; none sorts last), then Ingress before HTTPRoute. Equal
/// keys keep table order (namespace/name, rule, match).
type SortKey = (
    u8,
    Reverse<usize>,
    bool,
    Reverse<usize>,
    Reverse<usize>,
    (bool, Option<Arc<str>>),
    u8,
);

#[derive(Debug, Default)]
struct HostGroup {
    entries: Vec<(SortKey, Entry)>,
}

impl HostGroup {
    fn sort(&mut self) {
        // Stable: equal keys keep table order (source namespace/name, rule, match).
        self.entries.sort_by(|a, b| a.0.cmp(&b.0));
    }
    fn find(&self, req: &RequestView<'_>) -> Option<&Entry> {
        self.entries
            .iter()
            .map(|(_, e)| e)
            .find(|e| e.check.matches(req))
    }
}

#[derive(Debug)]
struct Wildcard {
    /// `.example.com` for `*.example.com`.
    suffix: String,
    /// Ingress wildcards cover exactly one label; HTTPRoute wildcards one or more.
    single_label: bool,
    group: HostGroup,
}

/// The routing index of one `HttpTable`.
#[derive(Debug, Default)]
pub struct RouteIndex {
    exact: HashMap<String, HostGroup>,
    /// Longest suffix first.
    wildcards: Vec<Wildcard>,
    any_host: HostGroup,
    default: Option<Arc<CompiledRule>>,
    /// Rules refused at compile time (a regular expression that does not parse), for the log.
    pub refused: Vec<(Arc<str>, String)>,
}

/// The outcome of a lookup.
pub struct Matched<'a> {
    pub rule: &'a Arc<CompiledRule>,
    /// The path prefix that matched (for `ReplacePrefixMatch`), if the match was a prefix.
    pub prefix: Option<&'a str>,
}

impl RouteIndex {
    /// Builds the index; rules whose regular expressions do not compile are left out and listed
    /// in `refused`.
    pub fn build(table: &HttpTable) -> RouteIndex {
        RouteIndex::build_from(table.rules.iter())
    }

    /// The index of some rules of a table (those one listener serves, `views.rs`).
    pub fn build_from<'a>(rules: impl Iterator<Item = &'a HttpRule>) -> RouteIndex {
        let mut index = RouteIndex::default();
        let mut wild: HashMap<(String, bool), HostGroup> = HashMap::new();
        for rule in rules {
            let compiled = Arc::new(CompiledRule::new(rule));
            if rule.is_default {
                if index.default.is_none() {
                    index.default = Some(compiled);
                }
                continue;
            }
            let entries = match compile_matches(rule, &compiled) {
                Ok(e) => e,
                Err(e) => {
                    index.refused.push((compiled.label.clone(), e.to_string()));
                    continue;
                }
            };
            let single_label = rule.source.kind == Kind::Ingress;
            let push = |group: &mut HostGroup| {
                for (key, e) in &entries {
                    group.entries.push((
                        key.clone(),
                        Entry {
                            rule: e.rule.clone(),
                            check: e.check.clone(),
                            prefix: e.prefix.clone(),
                        },
                    ));
                }
            };
            if rule.hostnames.is_empty() {
                push(&mut index.any_host);
            }
            for host in &rule.hostnames {
                if let Some(suffix) = host.strip_prefix('*') {
                    push(wild.entry((suffix.to_string(), single_label)).or_default());
                } else {
                    push(index.exact.entry(host.to_string()).or_default());
                }
            }
        }
        for g in index.exact.values_mut() {
            g.sort();
        }
        index.any_host.sort();
        index.wildcards = wild
            .into_iter()
            .map(|((suffix, single_label), mut group)| {
                group.sort();
                Wildcard {
                    suffix,
                    single_label,
                    group,
                }
            })
            .collect();
        index.wildcards.sort_by(|a, b| {
            b.suffix
                .len()
                .cmp(&a.suffix.len())
                .then(a.suffix.cmp(&b.suffix))
                .then(a.single_label.cmp(&b.single_label))
        });
        index
    }

    /// The rule for a request to `host` (lower-case, without port), or `None` (404).
    pub fn find<'a>(&'a self, host: &str, req: &RequestView<'_>) -> Option<Matched<'a>> {
        let group = self.group_for(host);
        if let Some(e) = group.and_then(|g| g.find(req)) {
            return Some(Matched {
                rule: &e.rule,
                prefix: e.prefix.as_deref(),
            });
        }
        self.default
            .as_ref()
            .map(|rule| Matched { rule, prefix: None })
    }

    fn group_for(&self, host: &str) -> Option<&HostGroup> {
        if let Some(g) = self.exact.get(host) {
            return Some(g);
        }
        for w in &self.wildcards {
            if let Some(label) = host.strip_suffix(w.suffix.as_str()) {
                if !label.is_empty() && (!w.single_label || !label.contains('.')) {
                    return Some(&w.group);
                }
            }
        }
        if self.any_host.entries.is_empty() {
            None
        } else {
            Some(&self.any_host)
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum CompileError {
    #[error("regular expression {0:?}: {1}")]
    Regex(String, regex::Error),
    #[error("header name {0:?} is not valid")]
    HeaderName(String),
    #[error("method {0:?} is not valid")]
    Method(String),
}

fn compile_matches(
    rule: &HttpRule,
    compiled: &Arc<CompiledRule>,
) -> Result<Vec<(SortKey, Entry)>, CompileError> {
    let kind_rank = if rule.source.kind == Kind::Ingress {
        0
    } else {
        1
    };
    let default_match = [tables::HttpRouteMatch::default()];
    let matches: &[tables::HttpRouteMatch] = if rule.matches.is_empty() {
        &default_match
    } else {
        &rule.matches
    };
    let mut out = Vec::with_capacity(matches.len());
    for m in matches {
        let (path, rank, len, prefix) = match &m.path {
            None => (PathCheck::Prefix(String::new()), 2, 1, Some(String::new())),
            Some(p) => match p.match_type {
                PathMatchType::Exact => (PathCheck::Exact(p.value.clone()), 0, p.value.len(), None),
                PathMatchType::PathPrefix => {
                    let trimmed = p.value.trim_end_matches('/').to_string();
                    (
                        PathCheck::Prefix(trimmed.clone()),
                        2,
                        p.value.len(),
                        Some(trimmed),
                    )
                }
                PathMatchType::RegularExpression => (
                    PathCheck::Regex(
                        full_regex(&p.value)
                            .map_err(|e| CompileError::Regex(p.value.clone(), e))?,
                    ),
                    1,
                    p.value.len(),
                    None,
                ),
            },
        };
        let headers = m
            .headers
            .iter()
            .map(|h| {
                let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| CompileError::HeaderName(h.name.clone()))?;
                let check = value_check(h).map_err(|e| CompileError::Regex(h.value.clone(), e))?;
                Ok((name, check))
            })
            .collect::<Result<Vec<_>, CompileError>>()?;
        let query = m
            .query_params
            .iter()
            .map(|q| {
                let check = value_check(q).map_err(|e| CompileError::Regex(q.value.clone(), e))?;
                Ok((q.name.clone(), check))
            })
            .collect::<Result<Vec<_>, CompileError>>()?;
        let method = m
            .method
            .as_deref()
            .map(|s| {
                http::Method::from_bytes(s.as_bytes()).map_err(|_| CompileError::Method(s.into()))
            })
            .transpose()?;
        let key: SortKey = (
            rank,
            Reverse(len),
            method.is_none(),
            Reverse(headers.len()),
            Reverse(query.len()),
            (rule.created.is_none(), rule.created.clone()),
            kind_rank,
        );
        out.push((
            key,
            Entry {
                rule: compiled.clone(),
                check: MatchCheck {
                    path,
                    headers,
                    query,
                    method,
                },
                prefix,
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tables::*;

    fn rule(kind: Kind, name: &str, hosts: &[&str], matches: Vec<HttpRouteMatch>) -> HttpRule {
        HttpRule {
            source: ObjectKey::new(kind, "default", name),
            rule_index: 0,
            hostnames: hosts.iter().map(|h| Arc::from(*h)).collect(),
            matches,
            filters: vec![],
            backends: vec![HttpBackend {
                service: ServiceKey::new("default", name),
                port: Some(PortRef::Number(80)),
                weight: 1,
                permitted: true,
            }],
            request_timeout_ms: None,
            backend_request_timeout_ms: None,
            attachments: vec![],
            port: None,
            lb_algorithm: None,
            created: None,
            is_default: false,
        }
    }

    fn path(t: PathMatchType, v: &str) -> HttpRouteMatch {
        HttpRouteMatch {
            path: Some(PathMatch {
                match_type: t,
                value: v.into(),
            }),
            ..Default::default()
        }
    }

    fn lookup(index: &RouteIndex, host: &str, p: &str, headers: &[(&str, &str)]) -> String {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (p, q) = match p.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (p, None),
        };
        let req = RequestView {
            path: p,
            query: q,
            method: &http::Method::GET,
            headers: Headers::Map(&h),
        };
        index
            .find(host, &req)
            .map(|m| m.rule.rule.source.name.to_string())
            .unwrap_or_else(|| "404".into())
    }

    #[test]
    fn element_wise_prefix() {
        assert!(prefix_matches("/foo", "/foo"));
        assert!(prefix_matches("/foo", "/foo/"));
        assert!(prefix_matches("/foo", "/foo/bar"));
        assert!(!prefix_matches("/foo", "/foobar"));
        assert!(prefix_matches("", "/anything"));
    }

    #[test]
    fn precedence_and_hosts() {
        let table = HttpTable {
            rules: vec![
                rule(
                    Kind::Ingress,
                    "root",
                    &["a.test"],
                    vec![path(PathMatchType::PathPrefix, "/")],
                ),
                rule(
                    Kind::Ingress,
                    "api",
                    &["a.test"],
                    vec![path(PathMatchType::PathPrefix, "/api/")],
                ),
                rule(
                    Kind::Ingress,
                    "exact",
                    &["a.test"],
                    vec![path(PathMatchType::Exact, "/api")],
                ),
                rule(
                    Kind::Ingress,
                    "wild1",
                    &["*.b.test"],
                    vec![path(PathMatchType::PathPrefix, "/")],
                ),
                rule(
                    Kind::HttpRoute,
                    "wildn",
                    &["*.c.test"],
                    vec![path(PathMatchType::PathPrefix, "/")],
                ),
                rule(
                    Kind::HttpRoute,
                    "anyhost",
                    &[],
                    vec![path(PathMatchType::PathPrefix, "/x")],
                ),
                rule(
                    Kind::HttpRoute,
                    "hdr",
                    &["h.test"],
                    vec![HttpRouteMatch {
                        path: Some(PathMatch {
                            match_type: PathMatchType::PathPrefix,
                            value: "/".into(),
                        }),
                        headers: vec![ValueMatch {
                            match_type: ValueMatchType::Exact,
                            name: "X-Env".into(),
                            value: "canary".into(),
                        }],
                        ..Default::default()
                    }],
                ),
                rule(
                    Kind::HttpRoute,
                    "plain",
                    &["h.test"],
                    vec![path(PathMatchType::PathPrefix, "/")],
                ),
                rule(
                    Kind::HttpRoute,
                    "re",
                    &["r.test"],
                    vec![path(PathMatchType::RegularExpression, "/v[0-9]+/.*")],
                ),
                rule(
                    Kind::HttpRoute,
                    "q",
                    &["r.test"],
                    vec![HttpRouteMatch {
                        query_params: vec![ValueMatch {
                            match_type: ValueMatchType::Exact,
                            name: "debug".into(),
                            value: "1".into(),
                        }],
                        ..Default::default()
                    }],
                ),
            ],
            ignored: vec![],
            listeners: vec![],
        };
        let ix = RouteIndex::build(&table);
        assert!(ix.refused.is_empty());
        assert_eq!(lookup(&ix, "a.test", "/", &[]), "root");
        assert_eq!(lookup(&ix, "a.test", "/api", &[]), "exact");
        assert_eq!(lookup(&ix, "a.test", "/api/v1", &[]), "api");
        assert_eq!(lookup(&ix, "a.test", "/apix", &[]), "root");
        assert_eq!(lookup(&ix, "x.b.test", "/", &[]), "wild1");
        assert_eq!(lookup(&ix, "y.x.b.test", "/", &[]), "404");
        assert_eq!(lookup(&ix, "y.x.c.test", "/", &[]), "wildn");
        assert_eq!(lookup(&ix, "c.test", "/", &[]), "404");
        assert_eq!(lookup(&ix, "other", "/x/1", &[]), "anyhost");
        // No fall-through from a named host to the any-host rules.
        assert_eq!(lookup(&ix, "a.test", "/x", &[]), "root");
        assert_eq!(lookup(&ix, "h.test", "/", &[("x-env", "canary")]), "hdr");
        assert_eq!(lookup(&ix, "h.test", "/", &[]), "plain");
        assert_eq!(lookup(&ix, "r.test", "/v2/x", &[]), "re");
        assert_eq!(lookup(&ix, "r.test", "/v2", &[]), "404");
        assert_eq!(lookup(&ix, "r.test", "/z?a=b&debug=1", &[]), "q");
    }

    #[test]
    fn older_route_wins_ties() {
        let mut young = rule(Kind::HttpRoute, "a-young", &["t.test"], vec![]);
        young.created = Some("2026-02-01T00:00:00Z".into());
        let mut old = rule(Kind::HttpRoute, "b-old", &["t.test"], vec![]);
        old.created = Some("2025-01-01T00:00:00Z".into());
        let ix = RouteIndex::build(&HttpTable {
            rules: vec![young, old],
            ignored: vec![],
            listeners: vec![],
        });
        assert_eq!(lookup(&ix, "t.test", "/", &[]), "b-old");
    }

    #[test]
    fn weighted_pick() {
        let mut r = rule(Kind::HttpRoute, "w", &[], vec![]);
        r.backends = vec![
            HttpBackend {
                service: ServiceKey::new("d", "a"),
                port: None,
                weight: 90,
                permitted: true,
            },
            HttpBackend {
                service: ServiceKey::new("d", "b"),
                port: None,
                weight: 0,
                permitted: true,
            },
            HttpBackend {
                service: ServiceKey::new("d", "c"),
                port: None,
                weight: 10,
                permitted: true,
            },
        ];
        let c = CompiledRule::new(&r);
        assert_eq!(c.pick_backend(0), Some(0));
        assert_eq!(c.pick_backend(89), Some(0));
        assert_eq!(c.pick_backend(90), Some(2));
        assert_eq!(c.pick_backend(99), Some(2));
        r.backends.iter_mut().for_each(|b| b.weight = 0);
        assert_eq!(CompiledRule::new(&r).pick_backend(5), None);
    }
}
