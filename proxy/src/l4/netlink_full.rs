//! The whole kernel-path table as one netlink batch: what `nft::full_script` writes, message for
//! message — the table replaced (`add`, `delete`, `add`), its maps and sets with nft's own
//! declarations, the `no-endpoints` counter, the fixed and base chains with their rules, the
//! service chains, then every element — so a restart or a resync replaces the table
//! atomically without `nft` parsing it.
//!
//! Why: at 10,000 Services / 100,000 endpoints `nft -f` of the full script took 0.94 s of
//! user CPU parsing and evaluating it on top of the kernel's 0.63 s (docs/benchmarks.md, "L4
//! programming"). Tables this module cannot write — a Service with ClientIP affinity or source
//! ranges (their rules are nft text), or `--nodeport-addresses` (an anonymous set) — still go
//! through `nft -f`. `tests/l4_netlink.rs` checks that both leave
//! the same table.

use std::collections::HashMap;

use super::exprs::{self as x, REG32_01, REG32_02, REG32_05, REG_1, REG_2};
use super::netlink::{Batch, Hook, SetDecl};
use super::netlink_update::{frontend_elements, hairpin, picks};
use super::nft::{self, Element, KernelChains, NftConfig, Ports, Target};
use super::pick::MapId;
use super::rule::Rule;
use super::service_tables;
use tables::Protocol;

/// nft's set descriptions (`NFTA_SET_USERDATA`) for the declarations `full_script` writes, as
/// nft 1.0 sends them: opaque to the kernel, read back by `nft list` and by later `nft -f`
/// element commands (byte orders). Taken from `nft --debug=mnl -f` of the same declarations.
mod userdata {
    /// `type ADDR . inet_proto . inet_service : verdict`, and `inet_proto . inet_service`.
    pub const VERDICT_MAP: &str = "000400000000010400000000030800040d0000000100060400000000";
    /// `type ADDR . ADDR`.
    pub const PAIR: &str = "000400000000030800040d0000000100";
    /// `type ADDR; flags interval`.
    pub const PREFIXES: &str = "000402000000";
    /// `typeof numgen random mod 2 : FAMILY daddr . PROTO dport`: the prefix, then the
    /// family's part, then the protocol's.
    pub const PICK_HEAD: &str = "000401000000010400000000031a0004170000000112000401000000010402000000020400000000043400040d000000012c0014000407000000010c000";
    pub const PICK_V4: &str = "40c00000001040c00000001";
    pub const PICK_V6: &str = "40d00000001040900000001";
    pub const PICK_TAIL_TCP: &str = "14000407000000010c000408000000010402000000060400000000";
    pub const PICK_TAIL_UDP: &str = "14000407000000010c000406000000010402000000060400000000";
}

fn hex(parts: &[&str]) -> Vec<u8> {
    let s: String = parts.concat();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex constant"))
        .collect()
}

/// nft's type numbers: a concatenation's type is its parts' shifted left 6 bits each.
const TYPE_VERDICT: u32 = 0xffff_ff00;
const TYPE_INTEGER: u32 = 4;
const TYPE_IPV4: u32 = 7;
const TYPE_IPV6: u32 = 8;
const TYPE_INET_PROTO: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const SET_INTERVAL: u32 = 4;
const SET_MAP: u32 = 8;

fn concat(types: &[u32]) -> u32 {
    types.iter().fold(0, |acc, t| (acc << 6) | t)
}

/// The batch that replaces the table with `full_script`'s, or `None` when some part of it has
/// no netlink encoding here (then `nft -f` of the script does it).
pub fn full_batch(
    cfg: &NftConfig,
    ports: &Ports,
    elements: &HashMap<Element, Target>,
    kernel: &KernelChains<'_>,
) -> Option<Batch> {
    let encodable = cfg.nodeport_addresses.is_empty()
        && kernel
            .chains
            .iter()
            .all(|(_, rules, aux)| aux.is_empty() && rules.iter().all(Rule::encodable));
    if !encodable {
        return None;
    }
    let t = cfg.table.as_str();
    let mut b = Batch::new();
    replace_table(&mut b, t, nft::SERVICE_MAPS);
    hairpin_sets(&mut b, t);
    b.add_counter(t, "no-endpoints");
    fixed_chains(&mut b, cfg, ports);
    for i in 0..service_tables::COUNT {
        service_table(&mut b, cfg, kernel, i);
    }
    for (name, rules, _) in &kernel.chains {
        let table = nft::chain_table(cfg, name);
        b.add_chain(&table, name);
        for r in rules.iter() {
            b.add_rule(&table, name, |out| r.encode(out));
        }
    }
    picks(&mut b, cfg, &kernel.picks, true);
    frontend_elements(&mut b, cfg, elements.iter(), true);
    hairpin(&mut b, t, true, &kernel.hairpin);
    Some(b)
}

/// Service table `i` as `nft::full_script` declares it: replaced, its verdict maps, pick maps
/// and pod-network sets, the counter, `no-local-endpoints`, the dispatch chain and the nat hooks.
fn service_table(b: &mut Batch, cfg: &NftConfig, kernel: &KernelChains<'_>, i: u32) {
    let t = &service_tables::name(&cfg.table, i);
    replace_table(b, t, nft::KERNEL_MAPS);
    for map in kernel.pick_maps.iter().filter(|m| m.table() == i) {
        pick_map(b, t, map);
    }
    cluster_cidr_sets(b, t, kernel);
    b.add_counter(t, "no-endpoints");
    for name in ["no-local-endpoints", "kernel-services"] {
        b.add_chain(t, name);
    }
    for (name, number) in [
        ("nat-prerouting", HOOK_PREROUTING),
        ("nat-output", HOOK_OUTPUT),
    ] {
        let hook = Hook {
            kind: "nat",
            number,
            priority: PRIO_DSTNAT,
        };
        b.add_base_chain(t, name, &hook);
    }
    reject_rules(b, t, "no-local-endpoints", true);
    dispatch_rules(b, t, "kernel-services", true, nft::KERNEL_MAPS);
    for chain in ["nat-prerouting", "nat-output"] {
        b.add_rule(t, chain, |o| {
            x::verdict(o, x::VERDICT_JUMP, Some("kernel-services"))
        });
    }
}

/// A table replaced as `nft::full_script` writes it (`table`, `delete table`, `table`), with its
/// verdict maps.
fn replace_table(b: &mut Batch, t: &str, maps: [&str; 4]) {
    b.table(true, t);
    b.table(false, t);
    b.table(true, t);
    verdict_maps(b, t, maps);
}

/// Verdict maps keyed `ADDR . inet_proto . inet_service` (names ending in 4 and 6) or
/// `inet_proto . inet_service` (NodePorts), in this order.
fn verdict_maps(b: &mut Batch, t: &str, names: [&str; 4]) {
    let vmap = hex(&[userdata::VERDICT_MAP]);
    let service = |v6: bool| {
        let addr = if v6 { TYPE_IPV6 } else { TYPE_IPV4 };
        (
            concat(&[addr, TYPE_INET_PROTO, TYPE_INET_SERVICE]),
            if v6 { 24 } else { 12 },
        )
    };
    let nodeport = (concat(&[TYPE_INET_PROTO, TYPE_INET_SERVICE]), 8);
    let [v4, v6, np4, np6] = names;
    for (name, (key_type, key_len)) in [
        (v4, service(false)),
        (v6, service(true)),
        (np4, nodeport),
        (np6, nodeport),
    ] {
        b.add_set(
            t,
            &SetDecl {
                name,
                flags: SET_MAP,
                key_type,
                key_len,
                data: Some((TYPE_VERDICT, 0)),
                userdata: &vmap,
            },
        );
    }
}

fn hairpin_sets(b: &mut Batch, t: &str) {
    let pair = hex(&[userdata::PAIR]);
    for (name, ty, len) in [
        ("hairpin4", concat(&[TYPE_IPV4, TYPE_IPV4]), 8),
        ("hairpin6", concat(&[TYPE_IPV6, TYPE_IPV6]), 32),
    ] {
        b.add_set(
            t,
            &SetDecl {
                name,
                flags: 0,
                key_type: ty,
                key_len: len,
                data: None,
                userdata: &pair,
            },
        );
    }
}

fn cluster_cidr_sets(b: &mut Batch, t: &str, kernel: &KernelChains<'_>) {
    let prefixes = hex(&[userdata::PREFIXES]);
    for v6 in [false, true] {
        let ranges = prefix_ranges(&kernel.cluster_cidrs, v6);
        if ranges.is_empty() {
            continue;
        }
        let name = if v6 {
            "cluster-cidrs6"
        } else {
            "cluster-cidrs4"
        };
        b.add_set(
            t,
            &SetDecl {
                name,
                flags: SET_INTERVAL,
                key_type: if v6 { TYPE_IPV6 } else { TYPE_IPV4 },
                key_len: if v6 { 16 } else { 4 },
                data: None,
                userdata: &prefixes,
            },
        );
        b.interval_elements(t, name, &ranges);
    }
}

fn pick_map(b: &mut Batch, t: &str, map: &MapId) {
    let tail = match map.protocol {
        Protocol::Udp => userdata::PICK_TAIL_UDP,
        _ => userdata::PICK_TAIL_TCP,
    };
    let fam = if map.v6 {
        userdata::PICK_V6
    } else {
        userdata::PICK_V4
    };
    let ud = hex(&[userdata::PICK_HEAD, fam, tail]);
    let (addr, addr_len) = if map.v6 {
        (TYPE_IPV6, 16)
    } else {
        (TYPE_IPV4, 4)
    };
    let name = map.name();
    b.add_set(
        t,
        &SetDecl {
            name: &name,
            flags: SET_MAP,
            key_type: TYPE_INTEGER,
            key_len: 4,
            // The address, then the port in a register of its own.
            data: Some((concat(&[addr, TYPE_INET_SERVICE]), addr_len + 4)),
            userdata: &ud,
        },
    );
}

/// The prefixes of one family as `(first address, last address + 1)` ranges in ascending
/// order; the end is `None` for a range that reaches the top of the address space.
fn prefix_ranges(nets: &[ipnet::IpNet], v6: bool) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut out: Vec<(u128, Option<u128>, usize)> = nets
        .iter()
        .filter(|n| matches!(n, ipnet::IpNet::V6(_)) == v6)
        .map(|n| match n {
            ipnet::IpNet::V4(n) => {
                let (a, z) = (u32::from(n.network()), u32::from(n.broadcast()));
                (u128::from(a), z.checked_add(1).map(u128::from), 4)
            }
            ipnet::IpNet::V6(n) => {
                let (a, z) = (u128::from(n.network()), u128::from(n.broadcast()));
                (a, z.checked_add(1), 16)
            }
        })
        .collect();
    out.sort();
    out.dedup();
    let bytes = |v: u128, len: usize| v.to_be_bytes()[16 - len..].to_vec();
    out.into_iter()
        .map(|(a, z, len)| (bytes(a, len), z.map(|z| bytes(z, len))))
        .collect()
}

const HOOK_PREROUTING: u32 = 0;
const HOOK_OUTPUT: u32 = 3;
const HOOK_POSTROUTING: u32 = 4;
const PRIO_MANGLE: i32 = -150;
const PRIO_DSTNAT: i32 = -100;
const PRIO_SRCNAT: i32 = 100;
const TCP: u8 = 6;
const UDP: u8 = 17;
const CT_STATE_NEW: u32 = 1 << 3;
const CT_STATUS_DNAT: u32 = 1 << 5;

/// The chains `full_script` declares inside the table block, in its order, with its rules.
fn fixed_chains(b: &mut Batch, cfg: &NftConfig, ports: &Ports) {
    let t = cfg.table.as_str();
    let (tm, rm, mm) = (cfg.tproxy_mark, cfg.redirect_mark, cfg.masquerade_mark);
    for name in [
        "tcp-redirect",
        "udp-tproxy",
        "no-endpoints",
        "no-local-endpoints",
        "services",
    ] {
        b.add_chain(t, name);
    }
    let hooks = [
        ("prerouting", "filter", HOOK_PREROUTING, PRIO_MANGLE),
        ("output", "route", HOOK_OUTPUT, PRIO_MANGLE),
        ("nat-prerouting", "nat", HOOK_PREROUTING, PRIO_DSTNAT),
        ("nat-output", "nat", HOOK_OUTPUT, PRIO_DSTNAT),
        ("nat-postrouting", "nat", HOOK_POSTROUTING, PRIO_SRCNAT),
    ];
    for (name, kind, number, priority) in hooks {
        b.add_base_chain(
            t,
            name,
            &Hook {
                kind,
                number,
                priority,
            },
        );
    }
    for (chain, mark) in [("tcp-redirect", rm), ("udp-tproxy", tm)] {
        let r = Rule::Mark {
            unless_from: None,
            mark,
        };
        b.add_rule(t, chain, |o| r.encode(o));
    }
    for (chain, drop) in [("no-endpoints", false), ("no-local-endpoints", true)] {
        reject_rules(b, t, chain, drop);
    }
    dispatch_rules(b, t, "services", false, nft::SERVICE_MAPS);
    let skip_dnat = |o: &mut Vec<u8>| {
        // ct status dnat accept: a connection already DNATed (by a service table, or the
        // relay's TCP redirect) has nothing more to decide here.
        x::ct_load(o, x::CT_STATUS);
        x::bits_set(o, CT_STATUS_DNAT, true);
        x::verdict(o, x::VERDICT_ACCEPT, None);
    };
    let jump_services = |o: &mut Vec<u8>| {
        // ct direction original jump services
        x::ct_load(o, x::CT_DIRECTION);
        x::cmp_eq(o, &[0], false);
        x::verdict(o, x::VERDICT_JUMP, Some("services"));
    };
    b.add_rule(t, "prerouting", skip_dnat);
    b.add_rule(t, "prerouting", jump_services);
    for (v6, port) in [(false, Some(ports.udp4)), (true, ports.udp6)] {
        let Some(port) = port else { continue };
        b.add_rule(t, "prerouting", |o| {
            // meta mark & TM == TM meta l4proto udp meta nfproto FAM tproxy FAM to :PORT
            x::meta_load(o, x::META_MARK);
            x::bits_set(o, tm, false);
            x::l4proto(o, UDP);
            x::nfproto(o, v6);
            x::tproxy(o, v6, port);
        });
    }
    b.add_rule(t, "output", skip_dnat);
    b.add_rule(t, "output", jump_services);
    for chain in ["nat-prerouting", "nat-output"] {
        for (v6, port) in [(false, Some(ports.tcp4)), (true, ports.tcp6)] {
            let Some(port) = port else { continue };
            b.add_rule(t, chain, |o| {
                // meta mark & RM == RM meta nfproto FAM meta l4proto tcp redirect to :PORT
                x::meta_load(o, x::META_MARK);
                x::bits_set(o, rm, false);
                x::nfproto(o, v6);
                x::l4proto(o, TCP);
                x::redirect(o, port);
            });
        }
    }
    for v6 in [false, true] {
        b.add_rule(t, "nat-postrouting", |o| {
            // ct status dnat FAM saddr . FAM daddr @hairpinN masquerade
            x::ct_load(o, x::CT_STATUS);
            x::bits_set(o, CT_STATUS_DNAT, true);
            x::nfproto(o, v6);
            if v6 {
                x::payload(o, REG_1, x::BASE_NETWORK, 8, 16);
                x::payload(o, REG_2, x::BASE_NETWORK, 24, 16);
            } else {
                x::payload(o, REG_1, x::BASE_NETWORK, 12, 4);
                x::payload(o, REG32_01, x::BASE_NETWORK, 16, 4);
            }
            x::lookup(o, if v6 { "hairpin6" } else { "hairpin4" }, None);
            x::masquerade(o);
        });
    }
    b.add_rule(t, "nat-postrouting", |o| {
        // meta mark & MM == MM meta mark set meta mark ^ MM masquerade
        x::meta_load(o, x::META_MARK);
        x::bits_set(o, mm, false);
        x::meta_load(o, x::META_MARK);
        x::bitwise(o, &u32::MAX.to_ne_bytes(), &mm.to_ne_bytes());
        x::meta_set(o, x::META_MARK);
        x::masquerade(o);
    });
}

/// `FAM daddr . meta l4proto . th dport vmap @MAP` for both families, then the NodePorts'
/// `fib daddr type local … meta l4proto . th dport vmap @MAP`, in a service table (`only_ours`)
/// after `meta l4proto . th dport @MAP` (`nft::full_script` says why).
fn dispatch_rules(b: &mut Batch, t: &str, chain: &str, only_ours: bool, maps: [&str; 4]) {
    let [v4, v6map, np4, np6] = maps;
    for (v6, map) in [(false, v4), (true, v6map)] {
        b.add_rule(t, chain, |o| {
            // FAM daddr . meta l4proto . th dport vmap @MAP
            x::nfproto(o, v6);
            if v6 {
                x::payload(o, REG_1, x::BASE_NETWORK, 24, 16);
                x::meta_load_to(o, x::META_L4PROTO, REG_2);
                x::payload(o, REG32_05, x::BASE_TRANSPORT, 2, 2);
            } else {
                x::payload(o, REG_1, x::BASE_NETWORK, 16, 4);
                x::meta_load_to(o, x::META_L4PROTO, REG32_01);
                x::payload(o, REG32_02, x::BASE_TRANSPORT, 2, 2);
            }
            x::lookup(o, map, Some(x::REG_VERDICT));
        });
    }
    for (v6, map) in [(false, np4), (true, np6)] {
        b.add_rule(t, chain, |o| {
            if only_ours {
                // meta l4proto . th dport @MAP
                x::meta_load(o, x::META_L4PROTO);
                x::payload(o, REG32_01, x::BASE_TRANSPORT, 2, 2);
                x::lookup(o, map, None);
            }
            // fib daddr type local FAM daddr != LOOPBACK meta l4proto . th dport vmap @MAP
            x::fib_daddr_type(o);
            x::cmp_eq(o, &2u32.to_ne_bytes(), false); // RTN_LOCAL
            x::nfproto(o, v6);
            if v6 {
                x::payload(o, REG_1, x::BASE_NETWORK, 24, 16);
                x::cmp_eq(o, &std::net::Ipv6Addr::LOCALHOST.octets(), true);
            } else {
                x::payload(o, REG_1, x::BASE_NETWORK, 16, 1);
                x::cmp_eq(o, &[127], true);
            }
            x::meta_load(o, x::META_L4PROTO);
            x::payload(o, REG32_01, x::BASE_TRANSPORT, 2, 2);
            x::lookup(o, map, Some(x::REG_VERDICT));
        });
    }
}

/// `no-endpoints` (reject) or `no-local-endpoints` (drop): new TCP connections and UDP, counted.
fn reject_rules(b: &mut Batch, t: &str, chain: &str, drop: bool) {
    for tcp in [true, false] {
        b.add_rule(t, chain, |o| {
            x::l4proto(o, if tcp { TCP } else { UDP });
            if tcp {
                x::ct_load(o, x::CT_STATE);
                x::bits_set(o, CT_STATE_NEW, true);
            }
            x::counter_ref(o, "no-endpoints");
            if drop {
                x::verdict(o, x::VERDICT_DROP, None);
            } else {
                x::reject(o, tcp);
            }
        });
    }
}
