//! The nftables tables switchboard owns (`inet switchboard`, and the kernel path's service
//! tables `inet switchboard-svcN` beside it: `service_tables.rs`; no other table is ever
//! touched). Running them, and the policy routing that UDP tproxy needs: `nft_run.rs`.
//!
//! ```text
//!  prerouting (filter, mangle prio) ─ ct direction original ─ jump services ─┐
//!  output     (route,  mangle prio) ─ ct direction original ─ jump services ─┤
//!  (both accept first what is already DNATed: `ct status dnat accept`)       │
//!                                                                            v
//!  services: ip  daddr . l4proto . dport  vmap @services4   (ClusterIP, externalIP, LB IP)
//!            ip6 daddr . l4proto . dport  vmap @services6
//!            fib daddr type local: l4proto . dport vmap @nodeports4 / @nodeports6
//!     verdicts: jump tcp-redirect        (mark R)  → nat prerouting/output: redirect to :TCP
//!               jump udp-tproxy          (mark T)  → prerouting: tproxy to :UDP
//!                                                    (output: mark T reroutes via lo)
//!               jump no-endpoints        TCP RST / ICMP port unreachable (new connections)
//!               jump no-local-endpoints  drop (Local policy, no endpoint on this node)
//! ```
//!
//! Updates are `nft -f -` scripts: the first one (and any after a failure) replaces the table in
//! one transaction (`table` + `delete table` + full definition, so an existing table from an
//! earlier run is reconciled, never duplicated, and there is no moment without one); every
//! later one deletes and adds only the map elements that changed, also in one transaction.
//! Conntrack keeps established redirected connections going whatever the maps say, and the
//! reject/drop verdicts only apply to new connections (UDP datagrams always), so updates never
//! touch established TCP connections.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use tables::Protocol;

use super::kernel::{prefixes_of, Aux, ChainOps};
use super::pick::{self, PickElement};
use super::rule::Rule;
use super::select::Verdict;
use super::service_tables;

/// Names and marks of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftConfig {
    /// The `inet` table's name.
    pub table: String,
    /// Packet mark bit for UDP to be tproxied; also the policy-routing fwmark.
    pub tproxy_mark: u32,
    /// Packet mark bit for TCP to be redirected.
    pub redirect_mark: u32,
    /// Packet mark bit asking nat postrouting to masquerade (kernel path).
    pub masquerade_mark: u32,
    /// Routing table with `local default dev lo` for tproxied packets.
    pub route_table: u32,
    /// `--nodeport-addresses`: NodePorts answer only on local addresses inside these; empty
    /// means every local address but loopback.
    pub nodeport_addresses: Vec<ipnet::IpNet>,
    /// `--l4-full-table nft`: whole tables through `nft -f` even where netlink could.
    pub full_table_via_nft: bool,
}

impl Default for NftConfig {
    fn default() -> Self {
        NftConfig {
            table: "switchboard".into(),
            tproxy_mark: 0x0040_0000,
            redirect_mark: 0x0080_0000,
            masquerade_mark: 0x0020_0000,
            route_table: 1456,
            nodeport_addresses: Vec::new(),
            full_table_via_nft: false,
        }
    }
}

/// The local listeners the table steers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub tcp4: u16,
    pub tcp6: Option<u16>,
    pub udp4: u16,
    pub udp6: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running {cmd}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("netlink transaction failed: {0}")]
    Netlink(std::io::Error),
}

/// One map element: a service frontend, or a NodePort of one address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Element {
    Service {
        ip: IpAddr,
        protocol: Protocol,
        port: u16,
    },
    NodePort {
        v6: bool,
        protocol: Protocol,
        port: u16,
    },
}

impl Element {
    pub fn protocol(&self) -> Protocol {
        match *self {
            Element::Service { protocol, .. } | Element::NodePort { protocol, .. } => protocol,
        }
    }

    /// The map holding this element: the filter-hook maps for the relay, reject and drop; the
    /// nat-hook maps for the kernel path's DNAT chains.
    pub(crate) fn map(&self, v: Verdict) -> &'static str {
        let kernel = v == Verdict::Kernel;
        match (*self, kernel) {
            (
                Element::Service {
                    ip: IpAddr::V4(_), ..
                },
                false,
            ) => "services4",
            (
                Element::Service {
                    ip: IpAddr::V6(_), ..
                },
                false,
            ) => "services6",
            (Element::NodePort { v6: false, .. }, false) => "nodeports4",
            (Element::NodePort { v6: true, .. }, false) => "nodeports6",
            (
                Element::Service {
                    ip: IpAddr::V4(_), ..
                },
                true,
            ) => "kernel4",
            (
                Element::Service {
                    ip: IpAddr::V6(_), ..
                },
                true,
            ) => "kernel6",
            (Element::NodePort { v6: false, .. }, true) => "kernel-nodeports4",
            (Element::NodePort { v6: true, .. }, true) => "kernel-nodeports6",
        }
    }

    /// Whether this element is of the IPv6 family.
    pub fn v6(&self) -> bool {
        match *self {
            Element::Service { ip, .. } => ip.is_ipv6(),
            Element::NodePort { v6, .. } => v6,
        }
    }

    fn key(&self, out: &mut String) {
        let proto = |p: Protocol| match p {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        };
        let _ = match *self {
            Element::Service { ip, protocol, port } => {
                write!(out, "{ip} . {} . {port}", proto(protocol))
            }
            Element::NodePort { protocol, port, .. } => write!(out, "{} . {port}", proto(protocol)),
        };
    }
}

/// What a map element does: its verdict and, on the kernel path, the chain it jumps to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub verdict: Verdict,
    pub chain: Option<Arc<str>>,
}

impl Target {
    pub fn new(verdict: Verdict, chain: Option<Arc<str>>) -> Self {
        Target { verdict, chain }
    }

    /// The service table holding the element (`service_tables`): that of the chain it jumps
    /// to on the kernel path; `None` for the main table (the relay, reject and drop).
    pub fn service_table(&self) -> Option<u32> {
        match (&self.verdict, &self.chain) {
            (Verdict::Kernel, Some(c)) => Some(service_tables::of_chain(c)),
            _ => None,
        }
    }
}

/// The name of the main table (`None`) or of a service table.
pub fn table_name(cfg: &NftConfig, t: Option<u32>) -> String {
    match t {
        None => cfg.table.clone(),
        Some(i) => service_tables::name(&cfg.table, i),
    }
}

/// The table of a service chain or of one of its aux objects.
pub fn chain_table(cfg: &NftConfig, chain: &str) -> String {
    service_tables::name(&cfg.table, service_tables::of_chain(chain))
}

fn verdict_text(out: &mut String, protocol: Protocol, t: &Target) {
    let text = match (protocol, t.verdict) {
        (Protocol::Udp, Verdict::Proxy) => "jump udp-tproxy",
        (_, Verdict::Proxy) => "jump tcp-redirect",
        (_, Verdict::Reject) => "jump no-endpoints",
        (_, Verdict::Drop) => "jump no-local-endpoints",
        (_, Verdict::Kernel) => {
            let _ = write!(out, "goto {}", t.chain.as_deref().unwrap_or(""));
            return;
        }
    };
    out.push_str(text);
}

/// The main table's verdict maps (the relay, reject and drop): IPv4, IPv6, their NodePorts.
pub(crate) const SERVICE_MAPS: [&str; 4] = ["services4", "services6", "nodeports4", "nodeports6"];
/// A service table's verdict maps (DNAT chains), in the same order.
pub(crate) const KERNEL_MAPS: [&str; 4] = [
    "kernel4",
    "kernel6",
    "kernel-nodeports4",
    "kernel-nodeports6",
];

const MAPS: [&str; 8] = [
    SERVICE_MAPS[0],
    SERVICE_MAPS[1],
    SERVICE_MAPS[2],
    SERVICE_MAPS[3],
    KERNEL_MAPS[0],
    KERNEL_MAPS[1],
    KERNEL_MAPS[2],
    KERNEL_MAPS[3],
];

/// A map: its table (`None`: the main one; else a service table) and name.
pub(crate) type MapKey = (Option<u32>, &'static str);

/// `elems` by the map that holds each, in table and map-name order, sorted within a map.
pub(crate) fn by_map<'a>(
    elems: impl Iterator<Item = (&'a Element, &'a Target)>,
) -> BTreeMap<MapKey, Vec<(&'a Element, &'a Target)>> {
    let mut out: BTreeMap<MapKey, Vec<(&Element, &Target)>> = BTreeMap::new();
    for (e, t) in elems {
        out.entry((t.service_table(), e.map(t.verdict)))
            .or_default()
            .push((e, t));
    }
    for list in out.values_mut() {
        list.sort_by_key(|(e, _)| **e);
    }
    out
}

/// Writes `add element` (with each element's verdict) or `delete element` commands for
/// `elems`, grouped by map, a few thousand per command.
fn map_elements<'a>(
    out: &mut String,
    cfg: &NftConfig,
    verb: &str,
    elems: impl Iterator<Item = (&'a Element, &'a Target)>,
) {
    for ((table, map), list) in by_map(elems) {
        let table = table_name(cfg, table);
        for chunk in list.chunks(4096) {
            let _ = write!(out, "{verb} element inet {table} {map} {{ ");
            for (i, (e, t)) in chunk.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                e.key(out);
                if verb == "add" {
                    out.push_str(" : ");
                    verdict_text(out, e.protocol(), t);
                }
            }
            out.push_str(" }\n");
        }
    }
}

/// The kernel path's chains, hairpin addresses, shard map elements and pod network, for a
/// full table.
#[derive(Default)]
pub struct KernelChains<'a> {
    pub chains: Vec<super::kernel::ChainRules<'a>>,
    pub hairpin: Vec<IpAddr>,
    pub pick_maps: Vec<pick::MapId>,
    pub picks: Vec<PickElement>,
    /// `--cluster-cidr`: the `cluster-cidrs4/6` sets the chains' rules refer to.
    pub cluster_cidrs: Vec<ipnet::IpNet>,
}

/// Writes `add element` (or `delete element`) commands for shard map elements.
fn pick_elements(out: &mut String, cfg: &NftConfig, verb: &str, elems: &[PickElement]) {
    let mut by_map: BTreeMap<pick::MapId, Vec<&PickElement>> = BTreeMap::new();
    for e in elems {
        by_map.entry(e.map).or_default().push(e);
    }
    for (map, list) in by_map {
        let table = table_name(cfg, Some(map.table()));
        let map = map.name();
        for chunk in list.chunks(4096) {
            let _ = write!(out, "{verb} element inet {table} {map} {{ ");
            for (i, e) in chunk.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                e.write(out, verb == "add");
            }
            out.push_str(" }\n");
        }
    }
}

fn write_rules<R: AsRef<str>>(out: &mut String, table: &str, chain: &str, rules: &[R]) {
    for r in rules {
        let _ = writeln!(out, "add rule inet {table} {chain} {}", r.as_ref());
    }
}

fn write_chain_rules(out: &mut String, table: &str, chain: &str, rules: &[Rule]) {
    let text: Vec<String> = rules.iter().map(Rule::text).collect();
    write_rules(out, table, chain, &text);
}

/// Adds aux objects, each in its chain's table: sets, then chains with their rules (`aux` is
/// sorted that way).
fn add_aux(out: &mut String, cfg: &NftConfig, aux: &[Aux]) {
    for a in aux {
        let table = &chain_table(cfg, a.name());
        match a {
            Aux::Set { name, decl } => {
                let _ = writeln!(out, "add set inet {table} {name} {{ {decl} }}");
            }
            Aux::Chain { name, rules } => {
                let _ = writeln!(out, "add chain inet {table} {name}");
                write_rules(out, table, name, rules);
            }
        }
    }
}

fn hairpin_elements(out: &mut String, table: &str, verb: &str, ips: &[IpAddr]) {
    for v6 in [false, true] {
        let list: Vec<String> = ips
            .iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .map(|ip| format!("{ip} . {ip}"))
            .collect();
        for chunk in list.chunks(4096) {
            let set = if v6 { "hairpin6" } else { "hairpin4" };
            let _ = writeln!(
                out,
                "{verb} element inet {table} {set} {{ {} }}",
                chunk.join(", ")
            );
        }
    }
}

/// The script that replaces the whole table, and the service tables, with ones holding
/// `elements` and `kernel`'s chains.
pub fn full_script(
    cfg: &NftConfig,
    ports: &Ports,
    elements: &HashMap<Element, Target>,
    kernel: &KernelChains<'_>,
) -> String {
    let t = &cfg.table;
    let (tm, rm, mm) = (cfg.tproxy_mark, cfg.redirect_mark, cfg.masquerade_mark);
    let mut s = String::with_capacity(4096 + elements.len() * 48 + kernel.chains.len() * 160);
    replace_table(&mut s, t, SERVICE_MAPS);
    let _ = writeln!(
        s,
        "  set hairpin4 {{\n    type ipv4_addr . ipv4_addr\n  }}\n  set hairpin6 {{\n    type ipv6_addr . ipv6_addr\n  }}"
    );
    counter_no_endpoints(&mut s);
    let _ = writeln!(
        s,
        "  chain tcp-redirect {{\n    meta mark set meta mark | {rm:#x}\n  }}"
    );
    let _ = writeln!(
        s,
        "  chain udp-tproxy {{\n    meta mark set meta mark | {tm:#x}\n  }}"
    );
    let _ = writeln!(
        s,
        "  chain no-endpoints {{\n    meta l4proto tcp ct state new counter name \"no-endpoints\" reject with tcp reset\n    meta l4proto udp counter name \"no-endpoints\" reject\n  }}"
    );
    no_local_endpoints(&mut s);
    dispatch_chain(&mut s, cfg, "services", false, SERVICE_MAPS);
    let _ = writeln!(
        s,
        "  chain prerouting {{\n    type filter hook prerouting priority mangle; policy accept;\n    ct status dnat accept\n    ct direction original jump services"
    );
    let _ = writeln!(
        s,
        "    meta mark & {tm:#x} == {tm:#x} meta l4proto udp meta nfproto ipv4 tproxy ip to :{}",
        ports.udp4
    );
    if let Some(p) = ports.udp6 {
        let _ = writeln!(
            s,
            "    meta mark & {tm:#x} == {tm:#x} meta l4proto udp meta nfproto ipv6 tproxy ip6 to :{p}"
        );
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(
        s,
        "  chain output {{\n    type route hook output priority mangle; policy accept;\n    ct status dnat accept\n    ct direction original jump services\n  }}"
    );
    for (chain, hook) in [("nat-prerouting", "prerouting"), ("nat-output", "output")] {
        let _ = writeln!(
            s,
            "  chain {chain} {{\n    type nat hook {hook} priority -100; policy accept;"
        );
        let _ = writeln!(
            s,
            "    meta mark & {rm:#x} == {rm:#x} meta nfproto ipv4 meta l4proto tcp redirect to :{}",
            ports.tcp4
        );
        if let Some(p) = ports.tcp6 {
            let _ = writeln!(
                s,
                "    meta mark & {rm:#x} == {rm:#x} meta nfproto ipv6 meta l4proto tcp redirect to :{p}"
            );
        }
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(
        s,
        "  chain nat-postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ct status dnat ip saddr . ip daddr @hairpin4 masquerade\n    ct status dnat ip6 saddr . ip6 daddr @hairpin6 masquerade\n    meta mark & {mm:#x} == {mm:#x} meta mark set meta mark ^ {mm:#x} masquerade\n  }}"
    );
    let _ = writeln!(s, "}}");
    for i in 0..service_tables::COUNT {
        service_table(&mut s, cfg, kernel, i);
    }
    for (name, rules, aux) in &kernel.chains {
        add_aux(&mut s, cfg, aux);
        let table = chain_table(cfg, name);
        let _ = writeln!(s, "add chain inet {table} {}", name);
        write_chain_rules(&mut s, &table, name, rules);
    }
    pick_elements(&mut s, cfg, "add", &kernel.picks);
    map_elements(&mut s, cfg, "add", elements.iter());
    hairpin_elements(&mut s, t, "add", &kernel.hairpin);
    s
}

/// The start of a table's replacement: created if missing, deleted, opened again with its
/// verdict maps (`SERVICE_MAPS` or `KERNEL_MAPS`: keyed `ADDR . inet_proto . inet_service`,
/// NodePorts `inet_proto . inet_service`). The caller writes the rest and closes the block.
fn replace_table(s: &mut String, t: &str, maps: [&str; 4]) {
    let _ = writeln!(s, "table inet {t} {{}}\ndelete table inet {t}");
    let _ = writeln!(s, "table inet {t} {{");
    let [v4, v6, np4, np6] = maps;
    for (map, key) in [
        (v4, "ipv4_addr . inet_proto . inet_service"),
        (v6, "ipv6_addr . inet_proto . inet_service"),
        (np4, "inet_proto . inet_service"),
        (np6, "inet_proto . inet_service"),
    ] {
        let _ = writeln!(s, "  map {map} {{\n    type {key} : verdict\n  }}");
    }
}

/// The counter every table's reject and drop rules count in.
fn counter_no_endpoints(s: &mut String) {
    let _ = writeln!(s, "  counter no-endpoints {{\n  }}");
}

fn no_local_endpoints(s: &mut String) {
    let _ = writeln!(
        s,
        "  chain no-local-endpoints {{\n    meta l4proto tcp ct state new counter name \"no-endpoints\" drop\n    meta l4proto udp counter name \"no-endpoints\" drop\n  }}"
    );
}

/// The chain looking a packet's destination up in the four verdict `maps` (`SERVICE_MAPS` in the
/// main table; `KERNEL_MAPS` in a service table, `only_ours`).
fn dispatch_chain(s: &mut String, cfg: &NftConfig, chain: &str, only_ours: bool, maps: [&str; 4]) {
    // Which local addresses NodePorts answer on, per family (`None`: none of that family).
    let nodeport_match = |v6: bool| -> Option<String> {
        let (fam, lo) = if v6 {
            ("ip6", "::1")
        } else {
            ("ip", "127.0.0.0/8")
        };
        if cfg.nodeport_addresses.is_empty() {
            return Some(format!("fib daddr type local {fam} daddr != {lo}"));
        }
        prefixes_of(&cfg.nodeport_addresses, v6)
            .map(|nets| format!("fib daddr type local {fam} daddr {{ {nets} }}"))
    };
    let [v4, v6, np4, np6] = maps;
    let _ = writeln!(
        s,
        "  chain {chain} {{\n    ip daddr . meta l4proto . th dport vmap @{v4}\n    ip6 daddr . meta l4proto . th dport vmap @{v6}"
    );
    for (v6, map) in [(false, np4), (true, np6)] {
        if let Some(m) = nodeport_match(v6) {
            // A service table first checks that the port is one of its NodePorts (a hash
            // lookup that misses for nearly every packet), so a new connection pays for one
            // `fib` lookup in the table that has its port, not one in each of 16 tables.
            let only_ours = if only_ours {
                format!("meta l4proto . th dport @{map} ")
            } else {
                String::new()
            };
            let _ = writeln!(s, "    {only_ours}{m} meta l4proto . th dport vmap @{map}");
        }
    }
    let _ = writeln!(s, "  }}");
}

/// Service table `i` replaced: its maps, pick maps and pod-network sets, the counter and the
/// chains its service chains jump to, its dispatch chain and nat hooks.
fn service_table(s: &mut String, cfg: &NftConfig, kernel: &KernelChains<'_>, i: u32) {
    replace_table(s, &service_tables::name(&cfg.table, i), KERNEL_MAPS);
    for map in kernel.pick_maps.iter().filter(|m| m.table() == i) {
        let _ = writeln!(
            s,
            "  map {} {{\n    {}\n  }}",
            map.name(),
            map.declaration()
        );
    }
    for (v6, ty) in [(false, "ipv4_addr"), (true, "ipv6_addr")] {
        if let Some(nets) = prefixes_of(&kernel.cluster_cidrs, v6) {
            let n = if v6 { 6 } else { 4 };
            let _ = writeln!(
                s,
                "  set cluster-cidrs{n} {{\n    type {ty}\n    flags interval\n    elements = {{ {nets} }}\n  }}"
            );
        }
    }
    counter_no_endpoints(s);
    no_local_endpoints(s);
    dispatch_chain(s, cfg, "kernel-services", true, KERNEL_MAPS);
    for (chain, hook) in [("nat-prerouting", "prerouting"), ("nat-output", "output")] {
        let _ = writeln!(
            s,
            "  chain {chain} {{\n    type nat hook {hook} priority -100; policy accept;\n    jump kernel-services\n  }}"
        );
    }
    let _ = writeln!(s, "}}");
}

/// One element whose target changed between two snapshots (`None`: absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub element: Element,
    pub old: Option<Target>,
    pub new: Option<Target>,
}

impl Change {
    pub fn old_verdict(&self) -> Option<Verdict> {
        self.old.as_ref().map(|t| t.verdict)
    }

    pub fn new_verdict(&self) -> Option<Verdict> {
        self.new.as_ref().map(|t| t.verdict)
    }
}

/// The script that applies `changes` and the kernel chains' `ops`, in one transaction:
/// elements that went away or changed are deleted, new chains added and changed chains
/// rewritten, new and changed elements added, then chains nothing jumps to any more deleted.
/// `None` when nothing changed.
pub fn change_script(cfg: &NftConfig, changes: &[Change], ops: &ChainOps) -> Option<String> {
    let t = &cfg.table;
    let real = || changes.iter().filter(|c| c.old != c.new);
    let mut s = String::new();
    map_elements(
        &mut s,
        cfg,
        "delete",
        real().filter_map(|c| c.old.as_ref().map(|o| (&c.element, o))),
    );
    // New shard maps; keys are deleted before any is re-added; the rules that use them follow.
    for map in &ops.pick_maps {
        let _ = writeln!(
            s,
            "add map inet {} {} {{ {}; }}",
            table_name(cfg, Some(map.table())),
            map.name(),
            map.declaration()
        );
    }
    pick_elements(&mut s, cfg, "delete", &ops.pick_delete);
    pick_elements(&mut s, cfg, "add", &ops.pick_add);
    for name in &ops.add {
        let _ = writeln!(s, "add chain inet {} {}", chain_table(cfg, name), name);
    }
    add_aux(&mut s, cfg, &ops.aux_add);
    for a in &ops.aux_rewrite {
        if let Aux::Chain { name, rules } = a {
            let table = chain_table(cfg, name);
            let _ = writeln!(s, "flush chain inet {table} {name}");
            write_rules(&mut s, &table, name, rules);
        }
    }
    for (name, rules) in &ops.rewrite {
        let table = chain_table(cfg, name);
        let _ = writeln!(s, "flush chain inet {table} {}", name);
        write_chain_rules(&mut s, &table, name, rules);
    }
    map_elements(
        &mut s,
        cfg,
        "add",
        real().filter_map(|c| c.new.as_ref().map(|v| (&c.element, v))),
    );
    for name in &ops.delete {
        let _ = writeln!(s, "delete chain inet {} {}", chain_table(cfg, name), name);
    }
    for a in &ops.aux_delete {
        let kind = match a {
            Aux::Set { .. } => "set",
            Aux::Chain { .. } => "chain",
        };
        let _ = writeln!(
            s,
            "delete {kind} inet {} {}",
            chain_table(cfg, a.name()),
            a.name()
        );
    }
    hairpin_elements(&mut s, t, "delete", &ops.hairpin_delete);
    hairpin_elements(&mut s, t, "add", &ops.hairpin_add);
    (!s.is_empty()).then_some(s)
}

/// The changes that turn `old` into `new`.
pub fn diff(old: &HashMap<Element, Target>, new: &HashMap<Element, Target>) -> Vec<Change> {
    let mut out: Vec<Change> = old
        .iter()
        .filter(|(k, v)| new.get(*k) != Some(*v))
        .map(|(k, v)| Change {
            element: *k,
            old: Some(v.clone()),
            new: new.get(k).cloned(),
        })
        .collect();
    out.extend(
        new.iter()
            .filter(|(k, _)| !old.contains_key(*k))
            .map(|(k, v)| Change {
                element: *k,
                old: None,
                new: Some(v.clone()),
            }),
    );
    out
}

/// Names the maps (for tests and debugging).
pub fn maps() -> [&'static str; 8] {
    MAPS
}

#[cfg(test)]
#[path = "nft_tests.rs"]
mod tests;
