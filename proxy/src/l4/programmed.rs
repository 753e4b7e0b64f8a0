//! A kernel chain as programmed, kept compact: there is one per service port, traffic kind and
//! family (12,546 at 10,000 Services), kept for the life of the process to compute the next
//! update against.
//!
//! What the kernel has is the resolved rules (each pick's slot in place) and each pick's slot
//! and endpoints; the chain body they came from (`ChainBody`) is not kept beside them:
//! `same_body` compares a new body against the resolved form, and the endpoint addresses
//! (for hairpin and conntrack cleanup) are derived from the picks and rules except where the
//! rules do not show them (ClientIP affinity's text rules). A pick's endpoints are kept per
//! family (an IPv4 endpoint in 8 bytes, where a `SocketAddr` takes 32).

use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};

use tables::Protocol;

use super::kernel::{Aux, ChainBody};
use super::pick::{self, PickElement, Slot};
use super::rule::{DnatTo, Rule};

/// The endpoints of one pick.
#[derive(Debug, PartialEq, Eq)]
enum Eps {
    V4(Box<[SocketAddrV4]>),
    V6(Box<[SocketAddrV6]>),
    /// Both families in one pick (never made by `chain_body`; kept as given).
    Mixed(Box<[SocketAddr]>),
}

impl Eps {
    fn new(eps: &[SocketAddr]) -> Eps {
        let v4: Option<Box<[SocketAddrV4]>> = eps
            .iter()
            .map(|e| match e {
                SocketAddr::V4(a) => Some(*a),
                SocketAddr::V6(_) => None,
            })
            .collect();
        let v6 = || -> Option<Box<[SocketAddrV6]>> {
            eps.iter()
                .map(|e| match e {
                    SocketAddr::V6(a) => Some(*a),
                    SocketAddr::V4(_) => None,
                })
                .collect()
        };
        match (v4, v6()) {
            (Some(v4), _) => Eps::V4(v4),
            (None, Some(v6)) => Eps::V6(v6),
            (None, None) => Eps::Mixed(eps.into()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Eps::V4(a) => a.len(),
            Eps::V6(a) => a.len(),
            Eps::Mixed(a) => a.len(),
        }
    }

    fn get(&self, i: usize) -> SocketAddr {
        match self {
            Eps::V4(a) => SocketAddr::V4(a[i]),
            Eps::V6(a) => SocketAddr::V6(a[i]),
            Eps::Mixed(a) => a[i],
        }
    }

    fn iter(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    fn to_vec(&self) -> Vec<SocketAddr> {
        self.iter().collect()
    }

    fn same(&self, eps: &[SocketAddr]) -> bool {
        self.len() == eps.len() && self.iter().zip(eps).all(|(a, b)| a == *b)
    }
}

/// A chain as programmed: what the kernel has, and how many map elements jump to it.
#[derive(Debug)]
pub(super) struct Programmed {
    pub refs: usize,
    protocol: Protocol,
    /// The rules with the picks' slots in place: what the kernel has.
    resolved: Box<[Rule]>,
    /// Each pick's slot and endpoints, in the body's order.
    picks: Box<[(Slot, Eps)]>,
    aux: Box<[Aux]>,
    /// The addresses the rules DNAT to, when `derived_endpoints` would not give them.
    endpoints: Option<Box<[IpAddr]>>,
}

impl Programmed {
    /// A chain referenced before it has rules.
    pub fn empty(refs: usize) -> Programmed {
        Programmed {
            refs,
            protocol: Protocol::Tcp,
            resolved: Box::new([]),
            picks: Box::new([]),
            aux: Box::new([]),
            endpoints: None,
        }
    }

    /// `body` as programmed with its picks in `slots` and its rules `resolved`.
    pub fn new(refs: usize, body: ChainBody, slots: Vec<Slot>, resolved: Vec<Rule>) -> Self {
        let derived = derived_endpoints(body.picks.iter().flatten().copied(), &body.rules);
        Programmed {
            refs,
            protocol: body.protocol,
            resolved: resolved.into(),
            picks: slots
                .into_iter()
                .zip(&body.picks)
                .map(|(slot, eps)| (slot, Eps::new(eps)))
                .collect(),
            aux: body.aux.into(),
            endpoints: (derived != body.endpoints).then(|| body.endpoints.into()),
        }
    }

    /// Whether `body` is what this chain was programmed from: the same picks, aux objects and
    /// endpoints, and rules that resolve to these with the same slots.
    pub fn same_body(&self, body: &ChainBody) -> bool {
        body.protocol == self.protocol
            && body.aux[..] == self.aux[..]
            && body.picks.len() == self.picks.len()
            && body
                .picks
                .iter()
                .zip(&self.picks[..])
                .all(|(b, (_, e))| e.same(b))
            && body.rules.len() == self.resolved.len()
            && body
                .rules
                .iter()
                .zip(&self.resolved[..])
                .all(|(b, r)| self.resolves_to(b, r))
            && body.endpoints == self.endpoints()
    }

    /// Whether the body's rule `b` is `r` once its pick has this chain's slot.
    fn resolves_to(&self, b: &Rule, r: &Rule) -> bool {
        match (b, r) {
            (
                Rule::Dnat {
                    prefix,
                    protocol,
                    v6,
                    to: DnatTo::Pick(i),
                },
                Rule::Dnat {
                    prefix: rp,
                    protocol: rproto,
                    v6: rv6,
                    to: DnatTo::Slot { slot, n },
                },
            ) => {
                prefix == rp
                    && protocol == rproto
                    && v6 == rv6
                    && self
                        .picks
                        .get(*i)
                        .is_some_and(|(s, e)| s == slot && e.len() == *n)
            }
            _ => b == r,
        }
    }

    pub fn resolved(&self) -> &[Rule] {
        &self.resolved
    }

    pub fn aux(&self) -> &[Aux] {
        &self.aux
    }

    pub fn into_aux(self) -> Vec<Aux> {
        self.aux.into_vec()
    }

    /// The addresses the rules DNAT to, sorted.
    pub fn endpoints(&self) -> Vec<IpAddr> {
        match &self.endpoints {
            Some(e) => e.to_vec(),
            None => derived_endpoints(
                self.picks.iter().flat_map(|(_, e)| e.iter()),
                &self.resolved,
            ),
        }
    }

    pub fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        self.picks.iter().map(|(s, _)| *s)
    }

    /// Pick `i`'s slot and endpoints.
    pub fn pick(&self, i: usize) -> Option<(Slot, Vec<SocketAddr>)> {
        self.picks.get(i).map(|(s, e)| (*s, e.to_vec()))
    }

    /// How many shard map elements this chain's picks have.
    pub fn pick_len(&self) -> usize {
        self.picks.iter().map(|(_, e)| e.len()).sum()
    }

    /// The shard map elements of this chain's picks.
    pub fn pick_elements(&self) -> impl Iterator<Item = PickElement> + '_ {
        self.picks.iter().flat_map(|(slot, eps)| {
            let slot = *slot;
            eps.iter().enumerate().map(move |(i, addr)| PickElement {
                map: slot.map,
                key: slot.offset + i as u32,
                addr,
            })
        })
    }

    /// The elements of the picks from the `from`th on, and their slots.
    pub fn picks_from(&self, from: usize) -> impl Iterator<Item = (Slot, Vec<PickElement>)> + '_ {
        self.picks.iter().skip(from).map(|(slot, eps)| {
            let eps = eps.to_vec();
            (*slot, pick::elements(slot, &eps).collect())
        })
    }
}

/// The addresses of every pick's endpoints and of the rules' direct DNATs, sorted and without
/// repeats: what `chain_body` lists as a body's endpoints when its rules are not text.
fn derived_endpoints(picks: impl Iterator<Item = SocketAddr>, rules: &[Rule]) -> Vec<IpAddr> {
    let direct = rules.iter().filter_map(|r| match r {
        Rule::Dnat {
            to: DnatTo::Addr(a),
            ..
        } => Some(*a),
        _ => None,
    });
    let mut out: Vec<IpAddr> = picks.chain(direct).map(|a| a.ip()).collect();
    out.sort();
    out.dedup();
    out
}
