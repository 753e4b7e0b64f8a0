//! ReferenceGrants (`gateway.networking.k8s.io/v1beta1`): which cross-namespace references are
//! allowed. A reference from an object in namespace A to one in namespace B is allowed when a
//! ReferenceGrant in B lists A's group, kind and namespace in `from` and B's group, kind (and,
//! if it names one, the object's name) in `to`. References within one namespace need none.

/// One ReferenceGrant, slimmed to what decides a reference.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ReferenceGrant {
    pub namespace: String,
    pub name: String,
    /// (group, kind, namespace) of the objects that may refer.
    pub from: Vec<(String, String, String)>,
    /// (group, kind, name) of the objects in this namespace that may be referred to; no name
    /// means every object of the kind.
    pub to: Vec<(String, String, Option<String>)>,
}

/// Every ReferenceGrant, for looking references up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    grants: Vec<ReferenceGrant>,
}

impl Grants {
    pub fn new(grants: impl IntoIterator<Item = ReferenceGrant>) -> Self {
        Grants {
            grants: grants.into_iter().collect(),
        }
    }

    /// Whether an object of `from` = (group, kind, namespace) may refer to `to` =
    /// (group, kind, namespace, name). Same-namespace references are always allowed.
    pub fn permits(&self, from: (&str, &str, &str), to: (&str, &str, &str, &str)) -> bool {
        let (fg, fk, fns) = from;
        let (tg, tk, tns, tname) = to;
        if fns == tns {
            return true;
        }
        self.grants.iter().filter(|g| g.namespace == tns).any(|g| {
            g.from
                .iter()
                .any(|(g, k, ns)| g == fg && k == fk && ns == fns)
                && g.to
                    .iter()
                    .any(|(g, k, n)| g == tg && k == tk && n.as_deref().is_none_or(|n| n == tname))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_decide_cross_namespace_references() {
        let g = Grants::new([ReferenceGrant {
            namespace: "backends".into(),
            name: "g".into(),
            from: vec![(
                "gateway.networking.k8s.io".into(),
                "HTTPRoute".into(),
                "apps".into(),
            )],
            to: vec![("".into(), "Service".into(), Some("web".into()))],
        }]);
        let route = ("gateway.networking.k8s.io", "HTTPRoute", "apps");
        assert!(g.permits(route, ("", "Service", "backends", "web")));
        assert!(!g.permits(route, ("", "Service", "backends", "other")));
        assert!(!g.permits(route, ("", "Secret", "backends", "web")));
        assert!(!g.permits(
            ("gateway.networking.k8s.io", "HTTPRoute", "x"),
            ("", "Service", "backends", "web")
        ));
        assert!(g.permits(route, ("", "Service", "apps", "anything")));
        assert!(!Grants::default().permits(route, ("", "Service", "backends", "web")));
    }
}
