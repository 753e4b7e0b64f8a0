//! Which rules a connection sees: the routing index per listener (Gateway API listener
//! semantics, `docs/gateway-api.md` "Listeners and ports").
//!
//! A connection is served the rules of the listener that accepted it, named by its [`Scope`]:
//! - on an `--http` / `--https` listener, the Ingress rules, plus the HTTPRoute rules of
//!   Gateway listeners on that same port (they share the socket);
//! - on a socket opened for Gateway listeners (`gateway_listeners.rs`), only the HTTPRoute rules
//!   attached to listeners of that port.
//!
//! Built once per `HttpTable`, like `RouteIndex`; the usual case (no Gateway on an `--http`
//! port) builds each rule into exactly one index.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tables::{HttpRule, HttpTable};

use super::route::{Matched, RequestView, RouteIndex};

/// The listener a connection came in on: its port, and whether it is an `--http` / `--https`
/// listener (which serves Ingress rules too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    pub port: u16,
    pub ingress: bool,
}

impl Scope {
    /// The scope of an `--http` / `--https` listener on `port`.
    pub fn ingress(port: u16) -> Scope {
        Scope {
            port,
            ingress: true,
        }
    }

    /// The scope of a socket opened for Gateway listeners on `port`.
    pub fn gateway(port: u16) -> Scope {
        Scope {
            port,
            ingress: false,
        }
    }
}

/// The routing indexes of one `HttpTable`, one per listener scope.
#[derive(Debug, Default)]
pub struct RouteViews {
    /// Ingress rules alone: every `--http` / `--https` port without Gateway rules.
    ingress: RouteIndex,
    /// Per scope with Gateway rules.
    scoped: HashMap<Scope, RouteIndex>,
}

impl RouteViews {
    /// Builds the views; `ingress_ports` are the bound ports of the `--http` / `--https`
    /// listeners, where Gateway rules of the same port join the Ingress rules.
    pub fn build(table: &HttpTable, ingress_ports: &BTreeSet<u16>) -> RouteViews {
        let ingress_rules = || table.rules.iter().filter(|r| r.port.is_none());
        let mut by_port: BTreeMap<u16, Vec<&HttpRule>> = BTreeMap::new();
        for r in &table.rules {
            if let Some(p) = r.port {
                by_port.entry(p).or_default().push(r);
            }
        }
        let mut scoped = HashMap::new();
        for (port, rules) in by_port {
            let index = if ingress_ports.contains(&port) {
                RouteIndex::build_from(ingress_rules().chain(rules))
            } else {
                RouteIndex::build_from(rules.into_iter())
            };
            let scope = Scope {
                port,
                ingress: ingress_ports.contains(&port),
            };
            scoped.insert(scope, index);
        }
        RouteViews {
            ingress: RouteIndex::build_from(ingress_rules()),
            scoped,
        }
    }

    /// Every rule on every `--http` / `--https` listener, whatever its Gateway listener's port
    /// (`--gateway-shared-ports`).
    pub fn shared(table: &HttpTable) -> RouteViews {
        RouteViews {
            ingress: RouteIndex::build(table),
            scoped: HashMap::new(),
        }
    }

    /// The index a connection of `scope` is served from; `None`: no rule (404).
    pub fn index(&self, scope: Scope) -> Option<&RouteIndex> {
        match self.scoped.get(&scope) {
            Some(ix) => Some(ix),
            None if scope.ingress => Some(&self.ingress),
            None => None,
        }
    }

    /// The rule for a request to `host` on a connection of `scope`, or `None` (404).
    pub fn find<'a>(
        &'a self,
        scope: Scope,
        host: &str,
        req: &RequestView<'_>,
    ) -> Option<Matched<'a>> {
        self.index(scope)?.find(host, req)
    }

    /// Rules refused at compile time, each once.
    pub fn refused(&self) -> BTreeSet<(Arc<str>, String)> {
        std::iter::once(&self.ingress)
            .chain(self.scoped.values())
            .flat_map(|ix| ix.refused.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::route::Headers;
    use tables::*;

    fn rule(kind: Kind, name: &str, host: &str, port: Option<u16>) -> HttpRule {
        HttpRule {
            source: ObjectKey::new(kind, "default", name),
            rule_index: 0,
            hostnames: vec![Arc::from(host)],
            matches: vec![],
            filters: vec![],
            backends: vec![],
            request_timeout_ms: None,
            backend_request_timeout_ms: None,
            attachments: vec![],
            port,
            is_default: false,
            lb_algorithm: None,
            created: None,
        }
    }

    /// Which source a request for `host` is served by on a scope, or "404".
    fn served(views: &RouteViews, scope: Scope, host: &str) -> String {
        let req = RequestView {
            path: "/",
            query: None,
            method: &http::Method::GET,
            headers: Headers::Raw(&[]),
        };
        views
            .find(scope, host, &req)
            .map_or("404".into(), |m| m.rule.rule.source.name.to_string())
    }

    #[test]
    fn each_listener_serves_its_own_rules() {
        let table = HttpTable {
            rules: vec![
                rule(Kind::Ingress, "ing", "a.test", None),
                rule(Kind::HttpRoute, "gw-9000", "a.test", Some(9000)),
                rule(Kind::HttpRoute, "gw-8080", "b.test", Some(8080)),
            ],
            ..Default::default()
        };
        // --http is 8080 and --https 8443.
        let views = RouteViews::build(&table, &BTreeSet::from([8080, 8443]));
        let cases = [
            // An --http(s) port without Gateway rules: Ingress alone.
            (Scope::ingress(8443), "a.test", "ing"),
            (Scope::ingress(8443), "b.test", "404"),
            // A Gateway port of its own: its routes alone, not the Ingress.
            (Scope::gateway(9000), "a.test", "gw-9000"),
            (Scope::gateway(9000), "b.test", "404"),
            // No Gateway listener there: nothing.
            (Scope::gateway(9001), "a.test", "404"),
            // A Gateway listener on the --http port shares it with the Ingress rules.
            (Scope::ingress(8080), "a.test", "ing"),
            (Scope::ingress(8080), "b.test", "gw-8080"),
        ];
        for (scope, host, want) in cases {
            assert_eq!(served(&views, scope, host), want, "{scope:?} {host}");
        }
    }
}
