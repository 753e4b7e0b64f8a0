//! Incremental updates as one netlink batch (netlink.rs), in the order `nft::change_script`
//! writes them: map and set elements (an endpoint replaced, a verdict moved, hairpin pairs)
//! and service chains added, rewritten and deleted when every rule in them has a netlink
//! encoding (rule.rs: the masquerade mark, DNAT to an endpoint or a pick, with the Local
//! short-circuit's matches, a jump). Updates that need anything else — ClientIP affinity's sets
//! and chains, source ranges, a new shard map — and very large ones stay with `nft -f`.

use tables::Protocol;

use super::kernel::{proto_number, ChainOps};
use super::netlink::{layout, Batch, Data, Elem, Reg};
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
    let olds = real().filter_map(|c| c.old.as_ref().map(|o| (&c.element, o)));
    frontend_elements(&mut b, cfg, olds, false);
    picks(&mut b, cfg, &ops.pick_delete, false);
    picks(&mut b, cfg, &ops.pick_add, true);
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
    let news = real().filter_map(|c| c.new.as_ref().map(|n| (&c.element, n)));
    frontend_elements(&mut b, cfg, news, true);
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
        let elems = ips.iter().filter(|ip| ip.is_ipv6() == v6).map(|ip| {
            let mut key = Reg::default();
            layout::addr(&mut key, *ip);
            layout::addr(&mut key, *ip);
            Elem { key, data: None }
        });
        b.elements(add, table, if v6 { "hairpin6" } else { "hairpin4" }, elems);
    }
}

/// Writes `elems` (a frontend and its verdict each) as elements of the maps that hold them,
/// with their verdicts when `with_data`.
pub(super) fn frontend_elements<'a>(
    b: &mut Batch,
    cfg: &NftConfig,
    elems: impl Iterator<Item = (&'a Element, &'a Target)>,
    with_data: bool,
) {
    for ((table, map), list) in nft::by_map(elems) {
        let elems = list.into_iter().map(|(e, t)| Elem {
            key: key(e),
            data: with_data.then(|| verdict(e.protocol(), t)),
        });
        b.elements(with_data, &nft::table_name(cfg, table), map, elems);
    }
}

/// Writes shard map elements (`add` with their data, else deleted), one run of messages per
/// map: `elems` sorted by map (as `ChainOps` and `Chains::all` hold them) makes one run each.
pub(super) fn picks(b: &mut Batch, cfg: &NftConfig, elems: &[PickElement], add: bool) {
    for run in elems.chunk_by(|a, b| a.map == b.map) {
        let map = run[0].map;
        let elems = run.iter().map(|e| {
            let mut key = Reg::default();
            layout::word(&mut key, e.key);
            let data = add.then(|| {
                let mut v = Reg::default();
                layout::addr(&mut v, e.addr.ip());
                layout::port(&mut v, e.addr.port());
                Data::Value(v)
            });
            Elem { key, data }
        });
        b.elements(
            add,
            &nft::table_name(cfg, Some(map.table())),
            &map.name(),
            elems,
        );
    }
}

/// `addr . l4proto . port` or, for a NodePort, `l4proto . port`.
fn key(e: &Element) -> Reg {
    let mut k = Reg::default();
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
fn verdict(protocol: Protocol, t: &Target) -> Data<'_> {
    match (protocol, t.verdict) {
        (Protocol::Udp, Verdict::Proxy) => Data::Jump("udp-tproxy"),
        (_, Verdict::Proxy) => Data::Jump("tcp-redirect"),
        (_, Verdict::Reject) => Data::Jump("no-endpoints"),
        (_, Verdict::Drop) => Data::Jump("no-local-endpoints"),
        (_, Verdict::Kernel) => Data::Goto(t.chain.as_deref().unwrap_or_default()),
    }
}
