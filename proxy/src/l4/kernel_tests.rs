//! Unit tests of `kernel.rs`: what a chain's change asks of the kernel.

use super::*;

/// A chain as `chain_body` makes it: one endpoint is a plain DNAT, more a pick.
fn body(eps: &[&str]) -> ChainBody {
    let eps: Vec<std::net::SocketAddr> = eps.iter().map(|e| e.parse().unwrap()).collect();
    let to = match eps.as_slice() {
        [one] => DnatTo::Addr(*one),
        _ => DnatTo::Pick(0),
    };
    ChainBody {
        rules: vec![Rule::Dnat {
            prefix: None,
            protocol: Protocol::Tcp,
            v6: false,
            to,
        }],
        endpoints: eps.iter().map(|e| e.ip()).collect(),
        picks: if eps.len() > 1 { vec![eps] } else { vec![] },
        protocol: Protocol::Tcp,
        aux: vec![],
    }
}

/// Endpoints before, after, and the keys steered with their new endpoint.
type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [(u32, &'a str)]);

#[test]
fn leaving_endpoints_are_steered_before_the_rule_changes() {
    let (a, b, c, d) = ("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80");
    let cases: &[Case<'_>] = &[
        // The middle one leaves: its key points at what now sits there.
        (&[a, b, c], &[a, c], &[(1, c)]),
        // The last one leaves.
        (&[a, b, c], &[a, b], &[(2, a)]),
        // Two of four leave.
        (&[a, b, c, d], &[b, d], &[(0, b), (2, b)]),
        // One replaced, none fewer: the rule does not change, nothing to steer.
        (&[a, b, c], &[a, b, d], &[]),
        // Grows: nothing leaves.
        (&[a, b], &[a, b, c], &[]),
        // Grows past the slot's capacity while one leaves: a new slot, nothing to steer.
        (&[a, b], &[a, c, d], &[]),
        // Down to one: the rule becomes a plain DNAT; until then the pick holds only it.
        (&[a, b], &[b], &[(0, b)]),
        (&[a, b, c], &[c], &[(0, c), (1, c)]),
        // From one: no pick before, nothing to steer.
        (&[a], &[b, c], &[]),
    ];
    for (before, after, want) in cases {
        let mut chains = Chains::default();
        let name: Arc<str> = "svc-a".into();
        let mut batch = chains.batch();
        batch.reference(&name);
        batch.set_body(&name, body(before));
        batch.finish();
        let mut batch = chains.batch();
        batch.set_body(&name, body(after));
        let ops = batch.finish();
        let got: Vec<(u32, String)> = ops
            .steer
            .iter()
            .map(|e| (e.key, e.addr.to_string()))
            .collect();
        let want: Vec<(u32, String)> = want.iter().map(|(k, e)| (*k, e.to_string())).collect();
        assert_eq!(got, want, "{before:?} -> {after:?}");
    }
}
