//! Incremental updates as one netlink batch (netlink.rs), in the order `nft::change_script`
//! writes them: map and set elements (an endpoint replaced, a verdict moved, hairpin pairs)
//! and service chains added, rewritten and deleted when every rule in them has a netlink
//! encoding (rule.rs: the masquerade mark, DNAT to an endpoint or a pick, with the Local
//! short-circuit's matches, a jump). Updates that need anything else — ClientIP affinity's sets
//! and chains, source ranges, a new shard map — and very large ones stay with `nft -f`.

use std::collections::BTreeMap;

use tables::Protocol;

use super::kernel::{proto_number, ChainOps};
use super::netlink::{layout, Batch, Data, Elem};
use super::nft::{self, Change, Element, NftConfig, Target};
use super::pick::PickElement;
use super::rule::Rule;
use super::select::Verdict;

/// Beyond this many elements, chains and rules an update goes to `nft -f` (one netlink
/// datagram must hold it).
const MAX_ELEMENTS: usize = 2048;

/// The batch for `changes` and `ops`, or `None` when `nft -f` must apply them.
pub fn batch(cfg: &NftConfig, changes: &[Change], ops: &ChainOps) -> Option<Batch> {
    let nft_only = !ops.aux_add.is_empty()
        || !ops.aux_rewrite.is_empty()
        || !ops.aux_delete.is_empty()
        || !ops.pick_maps.is_empty()
        || ops
            .rewrite
            .iter()
            .any(|(_, rules)| !rules.iter().all(Rule::encodable));
    let count = changes.len()
        + ops.pick_add.len()
        + ops.pick_delete.len()
        + ops.hairpin_add.len()
        + ops.hairpin_delete.len()
        + ops.add.len()
        + ops.delete.len()
        + ops.rewrite.iter().map(|(_, r)| r.len() + 1).sum::<usize>();
    if nft_only || count > MAX_ELEMENTS {
        return None;
    }
    let t = &cfg.table;
    let real = || changes.iter().filter(|c| c.old != c.new);
    let mut b = Batch::new();
    for ((table, map), elems) in by_map(
        real().filter_map(|c| c.old.as_ref().map(|o| (&c.element, o))),
        false,
    ) {
        b.elements(false, &nft::table_name(cfg, table), map, &elems);
    }
    for ((table, map), elems) in picks(&ops.pick_delete, false) {
        b.elements(false, &nft::table_name(cfg, Some(table)), &map, &elems);
    }
    for ((table, map), elems) in picks(&ops.pick_add, true) {
        b.elements(true, &nft::table_name(cfg, Some(table)), &map, &elems);
    }
    for name in &ops.add {
        b.add_chain(&nft::chain_table(cfg, name), name);
    }
    for (name, rules) in &ops.rewrite {
        let table = nft::chain_table(cfg, name);
        b.flush_chain(&table, name);
        for r in rules {
            b.add_rule(&table, name, |out| r.encode(out));
        }
    }
    for ((table, map), elems) in by_map(
        real().filter_map(|c| c.new.as_ref().map(|n| (&c.element, n))),
        true,
    ) {
        b.elements(true, &nft::table_name(cfg, table), map, &elems);
    }
    for name in &ops.delete {
        b.delete_chain(&nft::chain_table(cfg, name), name);
    }
    hairpin(&mut b, t, false, &ops.hairpin_delete);
    hairpin(&mut b, t, true, &ops.hairpin_add);
    Some(b)
}

/// Adds or deletes hairpin pairs (`ip . ip`) in `hairpin4` and `hairpin6`.
pub(super) fn hairpin(b: &mut Batch, table: &str, add: bool, ips: &[std::net::IpAddr]) {
    for v6 in [false, true] {
        let elems: Vec<Elem> = ips
            .iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .map(|ip| {
                let mut key = Vec::with_capacity(32);
                layout::addr(&mut key, *ip);
                layout::addr(&mut key, *ip);
                Elem { key, data: None }
            })
            .collect();
        b.elements(add, table, if v6 { "hairpin6" } else { "hairpin4" }, &elems);
    }
}

pub(super) fn by_map<'a>(
    elems: impl Iterator<Item = (&'a Element, &'a Target)>,
    with_data: bool,
) -> BTreeMap<nft::MapKey, Vec<Elem>> {
    nft::by_map(elems)
        .into_iter()
        .map(|(map, list)| {
            let elems = list
                .into_iter()
                .map(|(e, t)| Elem {
                    key: key(e),
                    data: with_data.then(|| verdict(e.protocol(), t)),
                })
                .collect();
            (map, elems)
        })
        .collect()
}

/// Shard map elements by service table and map.
pub(super) fn picks(elems: &[PickElement], with_data: bool) -> BTreeMap<(u32, String), Vec<Elem>> {
    let mut out: BTreeMap<(u32, String), Vec<Elem>> = BTreeMap::new();
    for e in elems {
        let mut key = Vec::with_capacity(4);
        layout::word(&mut key, e.key);
        let data = with_data.then(|| {
            let mut v = Vec::with_capacity(20);
            layout::addr(&mut v, e.addr.ip());
            layout::port(&mut v, e.addr.port());
            Data::Value(v)
        });
        out.entry((e.map.table(), e.map.name()))
            .or_default()
            .push(Elem { key, data });
    }
    out
}

/// `addr . l4proto . port` or, for a NodePort, `l4proto . port`.
fn key(e: &Element) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    match *e {
        Element::Service { ip, protocol, port } => {
            layout::addr(&mut k, ip);
            layout::byte(&mut k, proto_number(protocol));
            layout::port(&mut k, port);
        }
        Element::NodePort { protocol, port, .. } => {
            layout::byte(&mut k, proto_number(protocol));
            layout::port(&mut k, port);
        }
    }
    k
}

/// The verdict `nft::verdict_text` writes, as data.
fn verdict(protocol: Protocol, t: &Target) -> Data {
    match (protocol, t.verdict) {
        (Protocol::Udp, Verdict::Proxy) => Data::Jump("udp-tproxy".into()),
        (_, Verdict::Proxy) => Data::Jump("tcp-redirect".into()),
        (_, Verdict::Reject) => Data::Jump("no-endpoints".into()),
        (_, Verdict::Drop) => Data::Jump("no-local-endpoints".into()),
        (_, Verdict::Kernel) => Data::Goto(t.chain.as_deref().unwrap_or_default().to_string()),
    }
}
