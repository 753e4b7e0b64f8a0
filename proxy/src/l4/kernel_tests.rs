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

/// Endpoints before and after; whether the chain's rule is rewritten; the shard map keys
/// deleted and added (with their endpoint).
type Case<'a> = (
    &'a [&'a str],
    &'a [&'a str],
    bool,
    &'a [u32],
    &'a [(u32, &'a str)],
);

#[test]
fn a_change_rewrites_at_most_its_chain_and_touches_only_the_keys_that_moved() {
    let (a, b, c, d) = ("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80");
    let cases: &[Case<'_>] = &[
        // The middle one leaves: its key takes the last one, whose key goes; `mod 2`.
        (&[a, b, c], &[a, c], true, &[1, 2], &[(1, c)]),
        // The last one leaves.
        (&[a, b, c], &[a, b], true, &[2], &[]),
        // One replaced, none fewer: the rule stays, one key changes.
        (&[a, b, c], &[a, b, d], false, &[2], &[(2, d)]),
        // Grows within the slot (capacity 4): one key more, `mod 4`.
        (&[a, b, c], &[a, b, c, d], true, &[], &[(3, d)]),
        // Grows past the slot's capacity (2): a new slot of 4 after the first.
        (
            &[a, b],
            &[a, b, c],
            true,
            &[0, 1],
            &[(2, a), (3, b), (4, c)],
        ),
        // Down to one: a plain DNAT, the pick's keys go.
        (&[a, b], &[b], true, &[0, 1], &[]),
        // From one: a pick appears.
        (&[a], &[b, c], true, &[], &[(0, b), (1, c)]),
    ];
    for (before, after, rewritten, deleted, added) in cases {
        let mut chains = Chains::default();
        let name: Arc<str> = "svc-a".into();
        let mut batch = chains.batch();
        batch.reference(&name);
        batch.set_body(&name, body(before));
        batch.finish();
        let mut batch = chains.batch();
        batch.set_body(&name, body(after));
        let ops = batch.finish();
        let what = format!("{before:?} -> {after:?}");
        assert!(ops.add.is_empty() && ops.delete.is_empty(), "{what}");
        assert_eq!(!ops.rewrite.is_empty(), *rewritten, "{what}");
        assert!(ops.rewrite.iter().all(|(n, _)| *n == name), "{what}");
        let keys: Vec<u32> = ops.pick_delete.iter().map(|e| e.key).collect();
        assert_eq!(keys, *deleted, "{what}");
        let got: Vec<(u32, String)> = ops
            .pick_add
            .iter()
            .map(|e| (e.key, e.addr.to_string()))
            .collect();
        let want: Vec<(u32, String)> = added.iter().map(|(k, e)| (*k, e.to_string())).collect();
        assert_eq!(got, want, "{what}");
    }
}
