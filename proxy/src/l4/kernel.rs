//! The kernel data path of `--l4 nftables`: a chain per service port that picks an endpoint
//! in the kernel and DNATs to it, as kube-proxy's nftables mode does, so the backend sees the
//! client's address and no byte crosses switchboard's process.
//!
//! ```text
//!  service table K's nat prerouting / output (dstnat) (`service_tables.rs`: 16 tables):
//!    ip daddr . l4proto . dport vmap @kernel4 ─┐    (ClusterIP, externalIP, LoadBalancer IP)
//!    fib daddr type local: l4proto . dport     ├─> goto svc-NS/NAME/PROTO/PORT/{int,ext}{4,6}
//!                          vmap @kernel-nodeports4/6
//!  svc-… chain:  [masquerade mark where kube-proxy masquerades]
//!                dnat to numgen random mod N offset O map @pick4-S   (pick.rs: O.. = endpoints)
//!  main table's nat postrouting (srcnat):
//!    ct status dnat  saddr . daddr @hairpin4/6   masquerade   (a pod reaching itself)
//!    meta mark & MASQ                             masquerade   (marked above)
//! ```
//!
//! One chain per service port, traffic kind (internal: ClusterIP; external: NodePort,
//! externalIP, LoadBalancer IP) and address family; no chain per endpoint. The endpoints a rule
//! chooses among are elements of a shared shard map (`pick.rs`), so an EndpointSlice change
//! that keeps the number of endpoints replaces only map elements, and one that changes it also
//! rewrites that one chain (`flush chain` + `add rule`), all in one transaction.
//! The candidate endpoints come from `endpoints::categorize`, the same function the relay uses,
//! so both paths pick from the same set (ready, else serving+terminating; topology; policies).
//!
//! Masquerading follows kube-proxy: traffic reaching a ClusterIP from outside `--cluster-cidr`
//! (when given), external traffic under `externalTrafficPolicy: Cluster`, node-local clients of
//! a `Local` external service, hairpin, and everything with `--masquerade-all`. Under
//! `externalTrafficPolicy: Local`, pods (inside `--cluster-cidr`) and the node itself use the
//! cluster-wide endpoints, as kube-proxy's short-circuit does; other clients only this node's.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

pub use ipnet::IpNet;
use tables::{FrontendTarget, Protocol, Service};

use super::pick::{self, MapId, PickElement, Slot, Slots};
use super::programmed::Programmed;
use super::rule::{DnatTo, Prefix, Rule};
use crate::endpoints::{categorize, policy_local, NodeTopology, TrafficKind};

/// Annotation choosing the data path of one Service: `switchboard.dev/l4-mode: proxy` (the
/// userspace relay) or `kernel`.
pub const MODE_ANNOTATION: &str = "switchboard.dev/l4-mode";

/// What the kernel path needs to know beyond the tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// The pod network (`--cluster-cidr`, repeatable): tells pod traffic from outside traffic.
    pub cluster_cidrs: Vec<IpNet>,
    /// Masquerade all Service traffic (`--masquerade-all`).
    pub masquerade_all: bool,
    /// The packet mark bit that asks postrouting to masquerade.
    pub masquerade_mark: u32,
    /// Services without the annotation go to the relay (`--l4-default-mode proxy`, for a
    /// gradual move from the relay to the kernel path).
    pub default_relay: bool,
}

/// Why a Service's traffic goes to the userspace relay instead of the kernel, if it does.
pub fn relay_reason(svc: &Service, cfg: &KernelConfig) -> Option<&'static str> {
    let asked = svc.annotations.get(MODE_ANNOTATION).map(String::as_str);
    if asked == Some("proxy") {
        Some("annotation l4-mode: proxy")
    } else if svc
        .annotations
        .contains_key(super::proxy_protocol::ANNOTATION)
    {
        Some("PROXY protocol")
    } else if cfg.default_relay && asked != Some("kernel") {
        Some("--l4-default-mode proxy")
    } else {
        None
    }
}

/// The name of the chain for one service port, traffic kind and family, readable in
/// `nft list table` (`svc-default/web/tcp/80/int4`). Made of DNS labels, digits and `/`, which
/// nft takes unquoted (and refuses quoted).
pub fn chain_name(target: &FrontendTarget, kind: TrafficKind, v6: bool) -> Arc<str> {
    let port = target.port();
    let key = &target.service.key;
    let proto = proto_name(port.protocol);
    let kind = match kind {
        TrafficKind::Internal => "int",
        TrafficKind::External => "ext",
    };
    let fam = if v6 { 6 } else { 4 };
    format!(
        "svc-{}/{}/{proto}/{}/{kind}{fam}",
        key.namespace, key.name, port.port
    )
    .into()
}

/// The IP protocol number (`meta l4proto`).
pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

pub fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// The rules of one chain, and the endpoint addresses they DNAT to (for hairpin and
/// conntrack cleanup).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainBody {
    /// The rules; a DNAT to more than one endpoint names its pick (`DnatTo::Pick(i)`).
    pub rules: Vec<Rule>,
    /// The endpoints each pick chooses among (two or more each).
    pub picks: Vec<Vec<std::net::SocketAddr>>,
    /// The service port's protocol (which shard maps its picks live in).
    pub protocol: Protocol,
    pub endpoints: Vec<IpAddr>,
    /// The objects the rules refer to beside the chain itself: for ClientIP affinity, a set of
    /// recent clients and a chain per endpoint (kube-proxy's shape). Created before the rules
    /// that use them, deleted after.
    pub aux: Vec<Aux>,
}

/// A set or chain that belongs to one service-port chain.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Aux {
    /// `set NAME { DECL }`.
    Set { name: Arc<str>, decl: String },
    /// `chain NAME` with these rules.
    Chain { name: Arc<str>, rules: Vec<String> },
}

impl Aux {
    pub fn name(&self) -> &Arc<str> {
        match self {
            Aux::Set { name, .. } | Aux::Chain { name, .. } => name,
        }
    }
}

/// An endpoint's part of a name: its address in hex (no `.` or `:`) and port.
fn endpoint_tag(e: &std::net::SocketAddr) -> String {
    let hex: String = match e.ip() {
        IpAddr::V4(a) => a.octets().iter().map(|b| format!("{b:02x}")).collect(),
        IpAddr::V6(a) => a.octets().iter().map(|b| format!("{b:02x}")).collect(),
    };
    format!("{hex}/{}", e.port())
}

/// ClientIP affinity in the kernel, as kube-proxy's nftables mode does it: per endpoint, a set
/// of the clients it served (each element expiring after the Service's timeout, refreshed by
/// every new connection) and a chain that records the client and DNATs. The service-port
/// chain first sends a known client to its endpoint's chain, else picks one at random.
fn affinity_rules(
    chain: &str,
    protocol: Protocol,
    v6: bool,
    eps: &[std::net::SocketAddr],
    timeout: u32,
    rules: &mut Vec<Rule>,
    aux: &mut Vec<Aux>,
) {
    let fam = if v6 { "ip6" } else { "ip" };
    let addr_type = if v6 { "ipv6_addr" } else { "ipv4_addr" };
    let mut pick = format!("numgen random mod {} vmap {{ ", eps.len());
    for (i, e) in eps.iter().enumerate() {
        let tag = endpoint_tag(e);
        let set: Arc<str> = format!("{chain}/aff/{tag}/{timeout}").into();
        let ep_chain: Arc<str> = format!("{chain}/ep/{tag}").into();
        aux.push(Aux::Set {
            name: set.clone(),
            decl: format!("type {addr_type}; flags dynamic,timeout; timeout {timeout}s;"),
        });
        let dnat = dnat_rule(None, protocol, v6, std::slice::from_ref(e), &mut Vec::new());
        aux.push(Aux::Chain {
            name: ep_chain.clone(),
            rules: vec![format!("update @{set} {{ {fam} saddr }}"), dnat.text()],
        });
        rules.push(Rule::Text(format!("{fam} saddr @{set} goto {ep_chain}")));
        if i > 0 {
            pick.push_str(", ");
        }
        let _ = write!(pick, "{i} : goto {ep_chain}");
    }
    pick.push_str(" }");
    rules.push(Rule::Text(pick));
}

/// DNAT to `eps`: directly to one endpoint, else to a pick among them.
fn dnat_rule(
    prefix: Option<Prefix>,
    protocol: Protocol,
    v6: bool,
    eps: &[std::net::SocketAddr],
    picks: &mut Vec<Vec<std::net::SocketAddr>>,
) -> Rule {
    let to = match eps {
        [one] => DnatTo::Addr(*one),
        _ => {
            // The same endpoints twice in one chain (the Local short-circuit's two rules)
            // share a pick.
            let i = match picks.iter().position(|p| p == eps) {
                Some(i) => i,
                None => {
                    picks.push(eps.to_vec());
                    picks.len() - 1
                }
            };
            DnatTo::Pick(i)
        }
    };
    Rule::Dnat {
        prefix,
        protocol,
        v6,
        to,
    }
}

/// For a LoadBalancer Service with `loadBalancerSourceRanges`: drop traffic to its LoadBalancer
/// IPs (of this family) from anywhere else, as kube-proxy's firewall chain does. NodePort and
/// externalIP traffic, which shares the chain, is not affected.
fn source_range_rule(svc: &Service, v6: bool) -> Option<String> {
    if svc.load_balancer_source_ranges.is_empty()
        || svc.service_type != tables::ServiceType::LoadBalancer
    {
        return None;
    }
    let fam = if v6 { "ip6" } else { "ip" };
    let ips: Vec<String> = svc
        .load_balancer_ips
        .iter()
        .filter(|ip| ip.is_ipv6() == v6)
        .map(|ip| ip.to_string())
        .collect();
    if ips.is_empty() {
        return None;
    }
    let ips = ips.join(", ");
    Some(match prefixes_of(&svc.load_balancer_source_ranges, v6) {
        None => format!("{fam} daddr {{ {ips} }} drop"),
        Some(ranges) => format!("{fam} daddr {{ {ips} }} {fam} saddr != {{ {ranges} }} drop"),
    })
}

/// The prefixes of one family in nft's set syntax (`10.0.0.0/8, 192.168.0.0/16`); `None` when
/// there are none of that family.
pub(super) fn prefixes_of(nets: &[IpNet], v6: bool) -> Option<String> {
    let nets: Vec<String> = nets
        .iter()
        .filter(|n| matches!(n, IpNet::V6(_)) == v6)
        .map(|n| n.to_string())
        .collect();
    (!nets.is_empty()).then(|| nets.join(", "))
}

/// The body of the chain for traffic of `kind` to `target` in family `v6`; `None` when no
/// endpoint may take that traffic (the verdict is then reject or drop, not this chain).
pub fn chain_body(
    target: &FrontendTarget,
    kind: TrafficKind,
    v6: bool,
    node: &NodeTopology,
    cfg: &KernelConfig,
) -> Option<ChainBody> {
    let svc = &target.service.service;
    let family = if v6 {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    };
    let c = categorize(&target.port().endpoints, svc, node, Some(family));
    let chosen = c.for_traffic(svc, kind);
    let local_external = kind == TrafficKind::External && policy_local(svc, kind);
    // Under an external Local policy with no endpoint on this node, the chain still serves the
    // node itself and pods (kube-proxy's short-circuit) and drops everyone else.
    if chosen.is_empty() && (!local_external || c.cluster.is_empty()) {
        return None;
    }
    let protocol = target.port().protocol;
    let m = cfg.masquerade_mark;
    let mark = Rule::Mark {
        unless_from: None,
        mark: m,
    };
    // The named set `full_script` declares from the same list (an anonymous set per chain
    // costs the kernel a scan of every set: pick.rs).
    let cidr_set: Option<Arc<str>> = cfg
        .cluster_cidrs
        .iter()
        .any(|n| matches!(n, IpNet::V6(_)) == v6)
        .then(|| format!("cluster-cidrs{}", if v6 { 6 } else { 4 }).into());
    let mut rules = Vec::new();
    let mut picks = Vec::new();
    if kind == TrafficKind::External {
        if let Some(r) = source_range_rule(svc, v6) {
            rules.push(Rule::Text(r));
        }
    }
    if cfg.masquerade_all {
        rules.push(mark.clone());
    }
    match (kind, local_external) {
        (TrafficKind::Internal, _) => {
            if let (false, Some(set)) = (cfg.masquerade_all, &cidr_set) {
                rules.push(Rule::Mark {
                    unless_from: Some((v6, set.clone())),
                    mark: m,
                });
            }
        }
        (TrafficKind::External, false) => {
            if !cfg.masquerade_all {
                rules.push(mark.clone());
            }
        }
        (TrafficKind::External, true) => {
            // kube-proxy's short-circuit: the node itself and pods use every endpoint.
            let cluster: Vec<_> = c.cluster.iter().map(|e| e.addr()).collect();
            if !cluster.is_empty() {
                let prefix = Prefix::NodeSource { mark: m };
                rules.push(dnat_rule(Some(prefix), protocol, v6, &cluster, &mut picks));
                if let Some(set) = &cidr_set {
                    let prefix = Prefix::FromSet {
                        v6,
                        set: set.clone(),
                    };
                    rules.push(dnat_rule(Some(prefix), protocol, v6, &cluster, &mut picks));
                }
            }
        }
    }
    let addrs: Vec<_> = chosen.iter().map(|e| e.addr()).collect();
    let mut aux = Vec::new();
    if addrs.is_empty() {
        rules.push(Rule::Jump("no-local-endpoints".into()));
    } else if let Some(timeout) = svc.session_affinity_timeout {
        let name = chain_name(target, kind, v6);
        affinity_rules(&name, protocol, v6, &addrs, timeout, &mut rules, &mut aux);
    } else {
        rules.push(dnat_rule(None, protocol, v6, &addrs, &mut picks));
    }
    // Every address the rules may DNAT to: with the Local short-circuit, the cluster-wide ones too.
    let short_circuit = if local_external { &c.cluster[..] } else { &[] };
    let mut endpoints: Vec<IpAddr> = short_circuit
        .iter()
        .chain(chosen.iter())
        .map(|e| e.addr().ip())
        .collect();
    endpoints.sort();
    endpoints.dedup();
    aux.sort();
    Some(ChainBody {
        rules,
        picks,
        protocol,
        endpoints,
        aux,
    })
}

/// The kernel chains and hairpin set as last programmed, and the operations that bring them to
/// the next snapshot.
#[derive(Default, Debug)]
pub struct Chains {
    chains: HashMap<Arc<str>, Programmed>,
    hairpin: Hairpin,
    slots: Slots,
    /// Shard maps declared so far (a full table declares them all again).
    maps: std::collections::BTreeSet<MapId>,
}

/// Endpoint address → how many chains DNAT to it (one `a . a` hairpin element each), by
/// family: an IPv4 entry is 8 bytes, where an `IpAddr` and a `usize` take 32 (100,000
/// endpoints: 1.2 MiB of table instead of 4.2).
#[derive(Default, Debug)]
struct Hairpin {
    v4: HashMap<Ipv4Addr, u32>,
    v6: HashMap<Ipv6Addr, u32>,
}

impl Hairpin {
    /// One chain more (`up`) or fewer DNATs to `ip`: true when that makes its count 1 (up) or
    /// 0 (down; an address not counted reads as 0 too).
    fn count(&mut self, ip: IpAddr, up: bool) -> bool {
        fn count_in<K: std::hash::Hash + Eq>(m: &mut HashMap<K, u32>, k: K, up: bool) -> bool {
            if up {
                let n = m.entry(k).or_insert(0);
                *n += 1;
                *n == 1
            } else {
                match m.get_mut(&k) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        false
                    }
                    _ => {
                        m.remove(&k);
                        true
                    }
                }
            }
        }
        match ip {
            IpAddr::V4(a) => count_in(&mut self.v4, a, up),
            IpAddr::V6(a) => count_in(&mut self.v6, a, up),
        }
    }

    /// Every address counted, sorted.
    fn addrs(&self) -> Vec<IpAddr> {
        let mut all: Vec<IpAddr> = (self.v4.keys().map(|a| IpAddr::V4(*a)))
            .chain(self.v6.keys().map(|a| IpAddr::V6(*a)))
            .collect();
        all.sort();
        all
    }
}

/// What to do to the table's chains and hairpin sets, in a transaction's order.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct ChainOps {
    /// New chains (`add chain`), with their rules in `rewrite`.
    pub add: Vec<Arc<str>>,
    /// Chains whose rules are replaced (`flush chain` + `add rule`), new ones included.
    pub rewrite: Vec<(Arc<str>, Vec<Rule>)>,
    /// Shard maps to declare, then elements to delete and to add (before the rules that use
    /// them).
    pub pick_maps: Vec<MapId>,
    pub pick_delete: Vec<PickElement>,
    pub pick_add: Vec<PickElement>,
    /// Chains no element jumps to any more (deleted after the elements).
    pub delete: Vec<Arc<str>>,
    pub hairpin_add: Vec<IpAddr>,
    /// Sets and chains new chains' rules refer to (added before the rules).
    pub aux_add: Vec<Aux>,
    /// Aux chains whose rules changed (flushed and rewritten).
    pub aux_rewrite: Vec<Aux>,
    /// Aux sets and chains no rule refers to any more (deleted after the rules).
    pub aux_delete: Vec<Aux>,
    pub hairpin_delete: Vec<IpAddr>,
    /// Endpoints a chain stopped using: UDP conntrack entries towards them are stale.
    pub endpoints_gone: Vec<(Arc<str>, IpAddr)>,
}

impl Chains {
    /// Starts a batch of changes. `reference` and `release` count map elements that jump to a
    /// chain; `set_body` records a chain's (possibly unchanged) rules. `finish` returns the
    /// operations, each chain at most once.
    pub fn batch(&mut self) -> Batch<'_> {
        Batch {
            chains: self,
            ops: ChainOps::default(),
            bodies: HashMap::new(),
            released: Vec::new(),
        }
    }

    /// Every chain with its rules, the hairpin addresses, the shard maps and their elements
    /// (for a full table). Each chain comes with its aux objects.
    pub fn all(
        &self,
    ) -> (
        Vec<ChainRules<'_>>,
        Vec<IpAddr>,
        Vec<MapId>,
        Vec<PickElement>,
    ) {
        let mut chains: Vec<_> = self
            .chains
            .iter()
            .map(|(n, p)| (n.clone(), p.resolved(), p.aux()))
            .collect();
        chains.sort();
        let hairpin = self.hairpin.addrs();
        // At its exact length: a flat_map's collect grows by doubling, up to twice the 4 MiB
        // that 100,000 elements take.
        let mut picks = Vec::with_capacity(self.chains.values().map(Programmed::pick_len).sum());
        picks.extend(self.chains.values().flat_map(Programmed::pick_elements));
        picks.sort();
        (chains, hairpin, self.maps.iter().copied().collect(), picks)
    }

    pub fn len(&self) -> usize {
        self.chains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }
}

/// A chain's name, rules and aux objects.
pub type ChainRules<'a> = (Arc<str>, &'a [Rule], &'a [Aux]);

/// One update's worth of chain changes.
pub struct Batch<'a> {
    chains: &'a mut Chains,
    ops: ChainOps,
    /// Bodies seen in this batch (new or rewritten chains).
    bodies: HashMap<Arc<str>, ChainBody>,
    /// Chains that lost a reference in this batch: the only ones that may have none left.
    released: Vec<Arc<str>>,
}

impl Batch<'_> {
    /// The chain's rules as of this snapshot (called for every element whose target changed).
    pub fn set_body(&mut self, name: &Arc<str>, body: ChainBody) {
        self.bodies.entry(name.clone()).or_insert(body);
    }

    pub fn reference(&mut self, name: &Arc<str>) {
        match self.chains.chains.get_mut(name) {
            Some(p) => p.refs += 1,
            None => {
                self.chains
                    .chains
                    .insert(name.clone(), Programmed::empty(1));
                self.ops.add.push(name.clone());
            }
        }
    }

    pub fn release(&mut self, name: &Arc<str>) {
        if let Some(p) = self.chains.chains.get_mut(name) {
            p.refs = p.refs.saturating_sub(1);
            self.released.push(name.clone());
        }
    }

    fn hairpin_ref(&mut self, ip: IpAddr, up: bool) {
        if self.chains.hairpin.count(ip, up) {
            if up {
                self.ops.hairpin_add.push(ip);
            } else {
                self.ops.hairpin_delete.push(ip);
            }
        }
    }

    pub fn finish(mut self) -> ChainOps {
        // Chains nothing jumps to any more first: a body seen for them is never programmed.
        let mut released = std::mem::take(&mut self.released);
        released.sort();
        released.dedup();
        for name in released {
            if self.chains.chains.get(&name).is_none_or(|p| p.refs > 0) {
                continue;
            }
            let p = self.chains.chains.remove(&name).expect("checked");
            for ip in p.endpoints() {
                self.hairpin_ref(ip, false);
                self.ops.endpoints_gone.push((name.clone(), ip));
            }
            self.ops.pick_delete.extend(p.pick_elements());
            for slot in p.slots() {
                self.chains.slots.free(slot);
            }
            // A chain added and dropped in the same batch never reaches the kernel.
            if let Some(i) = self.ops.add.iter().position(|n| *n == name) {
                self.ops.add.remove(i);
            } else {
                self.ops.delete.push(name);
                self.ops.aux_delete.extend(p.into_aux());
            }
        }
        let bodies = std::mem::take(&mut self.bodies);
        for (name, body) in bodies {
            let chains = &mut *self.chains;
            let Some(p) = chains.chains.get(&name) else {
                continue;
            };
            if p.same_body(&body) {
                continue;
            }
            let (slots, resolved) = resolve_picks(
                &mut chains.slots,
                &name,
                p,
                &body,
                &mut self.ops.pick_delete,
                &mut self.ops.pick_add,
            );
            for slot in &slots {
                if chains.maps.insert(slot.map) {
                    self.ops.pick_maps.push(slot.map);
                }
            }
            let old = p.endpoints();
            let old_aux = p.aux().to_vec();
            let rewrite = resolved[..] != *p.resolved();
            for ip in old.iter().filter(|ip| !body.endpoints.contains(ip)) {
                self.hairpin_ref(*ip, false);
                self.ops.endpoints_gone.push((name.clone(), *ip));
            }
            for ip in body.endpoints.iter().filter(|ip| !old.contains(ip)) {
                self.hairpin_ref(*ip, true);
            }
            // Aux objects by name: new ones are added, changed chains rewritten (a set's
            // declaration is in its name, so it never changes in place), gone ones deleted.
            for a in &body.aux {
                match old_aux.iter().find(|o| o.name() == a.name()) {
                    None => self.ops.aux_add.push(a.clone()),
                    Some(o) if o != a => self.ops.aux_rewrite.push(a.clone()),
                    Some(_) => {}
                }
            }
            for o in &old_aux {
                if !body.aux.iter().any(|a| a.name() == o.name()) {
                    self.ops.aux_delete.push(o.clone());
                }
            }
            if rewrite {
                self.ops.rewrite.push((name.clone(), resolved.clone()));
            }
            let p = self.chains.chains.get_mut(&name).expect("checked");
            *p = Programmed::new(p.refs, body, slots, resolved);
        }
        self.ops.add.sort();
        self.ops.rewrite.sort();
        self.ops.delete.sort();
        // Sets before chains when adding (`Aux::Set` sorts first), chains before sets when
        // deleting: a chain's rules refer to its set.
        self.ops.aux_add.sort();
        self.ops.aux_rewrite.sort();
        self.ops.aux_delete.sort();
        self.ops.aux_delete.reverse();
        self.ops.pick_delete.sort();
        self.ops.pick_add.sort();
        self.ops
    }
}

/// Moves the picks of chain `name` from what `p` has to `body`'s: their slots, the shard map
/// elements to delete and add, and the rules with each pick's expression in place.
fn resolve_picks(
    slots: &mut Slots,
    name: &str,
    p: &Programmed,
    body: &ChainBody,
    delete: &mut Vec<PickElement>,
    add: &mut Vec<PickElement>,
) -> (Vec<Slot>, Vec<Rule>) {
    let mut chosen = Vec::with_capacity(body.picks.len());
    for (i, eps) in body.picks.iter().enumerate() {
        let old = p.pick(i);
        let old = old.as_ref().map(|(s, eps)| (*s, eps.as_slice()));
        let map = MapId {
            v6: eps.first().is_some_and(|e| e.is_ipv6()),
            protocol: body.protocol,
            shard: pick::shard_of(name, i),
        };
        chosen.push(pick::update(slots, old, eps, map, delete, add));
    }
    for (slot, elements) in p.picks_from(body.picks.len()) {
        delete.extend(elements);
        slots.free(slot);
    }
    let resolved = body
        .rules
        .iter()
        .map(|r| match r {
            Rule::Dnat {
                prefix,
                protocol,
                v6,
                to: DnatTo::Pick(i),
            } => Rule::Dnat {
                prefix: prefix.clone(),
                protocol: *protocol,
                v6: *v6,
                to: DnatTo::Slot {
                    slot: chosen[*i],
                    n: body.picks[*i].len(),
                },
            },
            other => other.clone(),
        })
        .collect();
    (chosen, resolved)
}

#[cfg(test)]
#[path = "kernel_tests.rs"]
mod tests;
