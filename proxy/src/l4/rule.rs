//! The rules of the kernel path's service chains, as data: one description that is written as
//! nft text for `nft -f` and, for the common shapes (the masquerade mark, DNAT to one endpoint
//! or to a pick, with or without the Local short-circuit's match, a jump), encoded as nf_tables
//! expressions for a netlink batch — the same expressions
//! `nft` sends for that text (`tests/l4_netlink.rs` compares them as the kernel lists them).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use tables::Protocol;

use super::exprs::{
    cmp_eq, fib_saddr_type, immediate, lookup, lookup_not, meta_load, nat, numgen_random, saddr,
    set_mark, verdict, META_L4PROTO, NAT_PROTO_SPECIFIED, NFPROTO_IPV4, NFPROTO_IPV6, REG32_01,
    REG_1, REG_2, VERDICT_JUMP,
};
use super::kernel::{proto_name, proto_number};
use super::netlink::layout;
use super::pick::{self, Slot};

/// One rule of a service chain.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    /// `[FAM saddr != @SET] meta mark set meta mark | MARK`: ask postrouting to masquerade,
    /// for every packet or only those from outside the set.
    Mark {
        unless_from: Option<(bool, Arc<str>)>,
        mark: u32,
    },
    /// `[PREFIX ]meta l4proto PROTO dnat FAM to …`.
    Dnat {
        prefix: Option<Prefix>,
        protocol: Protocol,
        v6: bool,
        to: DnatTo,
    },
    /// `jump CHAIN`.
    Jump(Arc<str>),
    /// Anything else, in nft's syntax.
    Text(String),
}

/// What a DNAT rule matches (and does) first: the two halves of kube-proxy's short-circuit for
/// `externalTrafficPolicy: Local`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Prefix {
    /// `fib saddr type local meta mark set meta mark | MARK`: from the node itself, which is
    /// masqueraded.
    NodeSource { mark: u32 },
    /// `FAM saddr @SET`: from the pod network.
    FromSet { v6: bool, set: Arc<str> },
}

impl Prefix {
    fn text(&self) -> String {
        match self {
            Prefix::NodeSource { mark } => {
                format!("fib saddr type local meta mark set meta mark | {mark:#x}")
            }
            Prefix::FromSet { v6, set } => {
                format!("{} saddr @{set}", if *v6 { "ip6" } else { "ip" })
            }
        }
    }

    fn encode(&self, b: &mut Vec<u8>) {
        match self {
            Prefix::NodeSource { mark } => {
                fib_saddr_type(b);
                cmp_eq(b, &2u32.to_ne_bytes(), false); // RTN_LOCAL
                set_mark(b, *mark);
            }
            Prefix::FromSet { v6, set } => {
                saddr(b, *v6);
                lookup(b, set, None);
            }
        }
    }
}

/// Where a DNAT goes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DnatTo {
    Addr(SocketAddr),
    /// The chain body's `i`th pick, before it has a slot.
    Pick(usize),
    /// A pick of `n` endpoints in its slot.
    Slot {
        slot: Slot,
        n: usize,
    },
}

impl Rule {
    /// The rule in nft's syntax.
    pub fn text(&self) -> String {
        let mut out = String::new();
        match self {
            Rule::Mark { unless_from, mark } => {
                if let Some((v6, set)) = unless_from {
                    let fam = if *v6 { "ip6" } else { "ip" };
                    let _ = write!(out, "{fam} saddr != @{set} ");
                }
                let _ = write!(out, "meta mark set meta mark | {mark:#x}");
            }
            Rule::Dnat {
                prefix,
                protocol,
                v6,
                to,
            } => {
                if let Some(p) = prefix {
                    out.push_str(&p.text());
                    out.push(' ');
                }
                let fam = if *v6 { "ip6" } else { "ip" };
                let _ = write!(out, "meta l4proto {} dnat {fam} to ", proto_name(*protocol));
                let _ = match to {
                    DnatTo::Addr(a) if *v6 => write!(out, "[{}]:{}", a.ip(), a.port()),
                    DnatTo::Addr(a) => write!(out, "{}:{}", a.ip(), a.port()),
                    DnatTo::Pick(i) => write!(out, "{}", pick::placeholder(*i)),
                    DnatTo::Slot { slot, n } => write!(out, "{}", slot.expression(*n)),
                };
            }
            Rule::Jump(chain) => {
                let _ = write!(out, "jump {chain}");
            }
            Rule::Text(t) => out.push_str(t),
        }
        out
    }

    /// Whether `encode` can write this rule (else the chain goes through `nft -f`).
    pub fn encodable(&self) -> bool {
        match self {
            Rule::Mark { .. } | Rule::Jump(_) => true,
            Rule::Dnat { to, .. } => !matches!(to, DnatTo::Pick(_)),
            Rule::Text(_) => false,
        }
    }

    /// The rule's expressions (the contents of `NFTA_RULE_EXPRESSIONS`), as nft writes them.
    pub fn encode(&self, b: &mut Vec<u8>) {
        match self {
            Rule::Mark { unless_from, mark } => {
                if let Some((v6, set)) = unless_from {
                    saddr(b, *v6);
                    lookup_not(b, set);
                }
                set_mark(b, *mark);
            }
            Rule::Jump(chain) => verdict(b, VERDICT_JUMP, Some(chain)),
            Rule::Dnat {
                prefix,
                protocol,
                v6,
                to,
            } => {
                if let Some(p) = prefix {
                    p.encode(b);
                }
                meta_load(b, META_L4PROTO);
                cmp_eq(b, &[proto_number(*protocol)], false);
                let family = if *v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 };
                match to {
                    DnatTo::Addr(a) => {
                        let mut ip = Vec::with_capacity(16);
                        layout::addr(&mut ip, a.ip());
                        immediate(b, REG_1, &ip);
                        immediate(b, REG_2, &a.port().to_be_bytes());
                        nat(b, family, REG_1, REG_2, Some(NAT_PROTO_SPECIFIED));
                    }
                    DnatTo::Slot { slot, n } => {
                        numgen_random(b, *n as u32, slot.offset);
                        lookup(b, &slot.map.name(), Some(REG_1));
                        // The port follows the address in the next 32-bit register (v4) or
                        // the next 128-bit one (v6).
                        let proto_reg = if *v6 { REG_2 } else { REG32_01 };
                        nat(b, family, REG_1, proto_reg, None);
                    }
                    DnatTo::Pick(_) => unreachable!("encode() of an unresolved pick"),
                }
            }
            Rule::Text(_) => unreachable!("encode() of a text rule"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l4::pick::MapId;

    #[test]
    fn text_as_nft_writes_it() {
        let slot = Slot {
            map: MapId {
                v6: false,
                protocol: Protocol::Tcp,
                shard: 7,
            },
            offset: 16,
            capacity: 4,
        };
        let cases = [
            (
                Rule::Mark {
                    unless_from: Some((false, "cluster-cidrs4".into())),
                    mark: 0x20_0000,
                },
                "ip saddr != @cluster-cidrs4 meta mark set meta mark | 0x200000",
            ),
            (
                Rule::Dnat {
                    prefix: None,
                    protocol: Protocol::Udp,
                    v6: true,
                    to: DnatTo::Addr("[fd00::1]:53".parse().unwrap()),
                },
                "meta l4proto udp dnat ip6 to [fd00::1]:53",
            ),
            (
                Rule::Dnat {
                    prefix: Some(Prefix::NodeSource { mark: 0x20_0000 }),
                    protocol: Protocol::Tcp,
                    v6: false,
                    to: DnatTo::Slot { slot, n: 3 },
                },
                "fib saddr type local meta mark set meta mark | 0x200000 meta l4proto tcp dnat ip to numgen random mod 3 offset 16 map @pick-tcp4-7",
            ),
        ];
        let failures: Vec<String> = cases
            .iter()
            .filter(|(r, want)| r.text() != *want)
            .map(|(r, want)| format!("{r:?}: {} != {want}", r.text()))
            .collect();
        assert!(failures.is_empty(), "{failures:#?}");
    }
}
