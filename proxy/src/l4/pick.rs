//! Endpoint picks of the kernel path: the endpoints one DNAT rule chooses among, kept as the
//! elements of a few shared maps (`pick-tcp4-S`, …), not as an anonymous map in the rule.
//!
//! ```text
//!  svc-… chain:  meta l4proto tcp dnat ip to numgen random mod 3 offset 4096 map @pick-tcp4-17
//!  map pick-tcp4-17: 4096 : 10.244.1.5 . 8080, 4097 : 10.244.2.9 . 8080, 4098 : 10.244.3.2 . 8080
//! ```
//!
//! A map per protocol, because nft checks a rule's `meta l4proto tcp` against the `tcp dport`
//! of the map's `typeof` (a `th dport` map is refused in later transactions). Maps are declared
//! when a pick first needs them.
//!
//! Each pick owns a *slot*: a range of keys `offset .. offset + capacity` in one shard map.
//! The rule draws `numgen random mod N offset O`, so the choice stays uniform over exactly the
//! N endpoints (as kube-proxy's `numgen random mod N vmap`), and an EndpointSlice change that
//! keeps N only replaces map elements; the rule is rewritten only when N changes or the slot
//! must grow.
//!
//! Why shared, sharded maps (measured with nft 1.0.6 on Linux 6.18, 10,000 service ports of 10
//! endpoints each, loaded in one transaction — docs/benchmarks.md):
//! - an anonymous map per rule (kube-proxy's shape): 11.4 s, nearly all of it in the kernel,
//!   which names every anonymous set by scanning all the others;
//! - a named map per service port: 5.2 s (set lookups by name are a list walk);
//! - one map for everything: 16 s (each element added to a map is checked against every rule
//!   bound to it: elements × rules);
//! - 64 shard maps, a rule binding only its shard's map: 0.9 s.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use tables::Protocol;

use super::service_tables;

/// Shard maps per protocol and address family.
pub const SHARDS: u32 = 64;

/// The placeholder a rule carries for its `i`th pick until a slot is chosen.
pub fn placeholder(i: usize) -> String {
    format!("@@pick{i}@@")
}

/// One shard map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapId {
    pub v6: bool,
    pub protocol: Protocol,
    pub shard: u32,
}

impl MapId {
    pub fn name(&self) -> String {
        let p = super::kernel::proto_name(self.protocol);
        format!("pick-{p}{}-{}", if self.v6 { 6 } else { 4 }, self.shard)
    }

    /// The service table the map lives in (`service_tables`).
    pub fn table(&self) -> u32 {
        self.shard % service_tables::COUNT
    }

    /// The map's declaration: a 32-bit key (what `numgen` yields) to `address . port`.
    pub fn declaration(&self) -> String {
        let fam = if self.v6 { "ip6" } else { "ip" };
        let p = super::kernel::proto_name(self.protocol);
        format!("typeof numgen random mod 2 : {fam} daddr . {p} dport")
    }
}

/// A range of keys in one shard map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    pub map: MapId,
    pub offset: u32,
    pub capacity: u32,
}

impl Slot {
    /// The expression a DNAT rule uses to pick among `n` endpoints of this slot.
    pub fn expression(&self, n: usize) -> String {
        format!(
            "numgen random mod {n} offset {} map @{}",
            self.offset,
            self.map.name()
        )
    }
}

/// One element of a shard map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PickElement {
    pub map: MapId,
    pub key: u32,
    pub addr: SocketAddr,
}

impl PickElement {
    /// `key : addr . port` as nft writes it.
    pub fn write(&self, out: &mut String, with_data: bool) {
        let _ = write!(out, "{}", self.key);
        if with_data {
            let _ = write!(out, " : {} . {}", self.addr.ip(), self.addr.port());
        }
    }
}

/// The elements of `slot` holding `eps`, in order.
pub fn elements<'a>(slot: &Slot, eps: &'a [SocketAddr]) -> impl Iterator<Item = PickElement> + 'a {
    let slot = *slot;
    eps.iter().enumerate().map(move |(i, addr)| PickElement {
        map: slot.map,
        key: slot.offset + i as u32,
        addr: *addr,
    })
}

/// Which shard a pick lives in: one of its chain's service table's shards
/// (`shard % service_tables::COUNT` is the table), chosen by a stable hash of the chain's name
/// and the pick's index there.
pub fn shard_of(chain: &str, index: usize) -> u32 {
    let h = service_tables::fnv(chain.bytes().chain(std::iter::once(index as u8)));
    let per_table = SHARDS / service_tables::COUNT;
    // The high bits: the low ones follow the chain's table (the same hash, one byte longer).
    service_tables::of_chain(chain) + service_tables::COUNT * ((h >> 16) % per_table)
}

/// Allocates slots: per map, free lists by capacity (powers of two) and a high-water mark.
#[derive(Default, Debug)]
pub struct Slots {
    next: HashMap<MapId, u32>,
    free: HashMap<(MapId, u32), Vec<u32>>,
}

impl Slots {
    /// A slot for `n` endpoints (`n >= 2`) in `map`.
    pub fn alloc(&mut self, map: MapId, n: usize) -> Slot {
        let capacity = (n.max(2) as u32).next_power_of_two();
        let offset = match self.free.get_mut(&(map, capacity)).and_then(Vec::pop) {
            Some(o) => o,
            None => {
                let next = self.next.entry(map).or_insert(0);
                let o = *next;
                // 2^32 keys per shard: at 64 shards, far beyond any cluster's endpoints.
                *next = next.saturating_add(capacity);
                o
            }
        };
        Slot {
            map,
            offset,
            capacity,
        }
    }

    pub fn free(&mut self, slot: Slot) {
        self.free
            .entry((slot.map, slot.capacity))
            .or_default()
            .push(slot.offset);
    }
}

/// What moving a pick from `old` endpoints in `slot` to `new` endpoints takes: the slot to use,
/// the elements to delete and to add. Keeps the slot when `new` fits, touching only the keys
/// whose endpoint changed; otherwise takes a new slot and frees the old one.
pub fn update(
    slots: &mut Slots,
    old: Option<(Slot, &[SocketAddr])>,
    new: &[SocketAddr],
    map: MapId,
    delete: &mut Vec<PickElement>,
    add: &mut Vec<PickElement>,
) -> Slot {
    if let Some((slot, old_eps)) = old {
        if new.len() <= slot.capacity as usize {
            let olds: Vec<_> = elements(&slot, old_eps).collect();
            let news: Vec<_> = elements(&slot, new).collect();
            for (i, o) in olds.iter().enumerate() {
                if news.get(i) != Some(o) {
                    delete.push(*o);
                }
            }
            for (i, n) in news.iter().enumerate() {
                if olds.get(i) != Some(n) {
                    add.push(*n);
                }
            }
            return slot;
        }
        delete.extend(elements(&slot, old_eps));
        slots.free(slot);
    }
    let slot = slots.alloc(map, new.len());
    add.extend(elements(&slot, new));
    slot
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(shard: u32) -> MapId {
        MapId {
            v6: false,
            protocol: Protocol::Tcp,
            shard,
        }
    }

    fn eps(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| format!("10.0.0.{}:80", i + 1).parse().unwrap())
            .collect()
    }

    #[test]
    fn a_change_that_fits_touches_only_changed_keys() {
        let mut slots = Slots::default();
        let (mut del, mut add) = (vec![], vec![]);
        let s = update(&mut slots, None, &eps(3), map(5), &mut del, &mut add);
        assert_eq!((s.offset, s.capacity, add.len(), del.len()), (0, 4, 3, 0));
        // Replace the last endpoint: one delete and one add at the same key.
        let mut next = eps(3);
        next[2] = "10.0.0.9:80".parse().unwrap();
        let (mut del, mut add) = (vec![], vec![]);
        let s2 = update(
            &mut slots,
            Some((s, &eps(3))),
            &next,
            map(5),
            &mut del,
            &mut add,
        );
        assert_eq!(s2, s);
        assert_eq!(del.iter().map(|e| e.key).collect::<Vec<_>>(), vec![2]);
        assert_eq!(add.iter().map(|e| e.key).collect::<Vec<_>>(), vec![2]);
        // Grow to 4: still fits, one add.
        let (mut del, mut add) = (vec![], vec![]);
        let s3 = update(
            &mut slots,
            Some((s, &next)),
            &eps(4)[..],
            map(5),
            &mut del,
            &mut add,
        );
        assert_eq!(s3, s);
        assert_eq!((add.len(), del.len()), (2, 1)); // key 2 back to .3, key 3 new
    }

    #[test]
    fn outgrowing_a_slot_moves_to_a_new_one_and_frees_the_old() {
        let mut slots = Slots::default();
        let (mut del, mut add) = (vec![], vec![]);
        let s = update(&mut slots, None, &eps(2), map(1), &mut del, &mut add);
        let (mut del, mut add) = (vec![], vec![]);
        let s2 = update(
            &mut slots,
            Some((s, &eps(2))),
            &eps(3),
            map(1),
            &mut del,
            &mut add,
        );
        assert_ne!(s2.offset, s.offset);
        assert_eq!((del.len(), add.len(), s2.capacity), (2, 3, 4));
        // The freed slot is reused by the next pick of its size.
        let s3 = slots.alloc(map(1), 2);
        assert_eq!(s3.offset, s.offset);
        assert_eq!(
            s.expression(2),
            "numgen random mod 2 offset 0 map @pick-tcp4-1"
        );
    }

    #[test]
    fn shards_spread() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            seen.insert(shard_of(&format!("svc-default/s{i}/tcp/80/int4"), 0));
        }
        assert_eq!(seen.len(), SHARDS as usize);
        let chain = "svc-default/web/tcp/80/int4";
        for i in 0..4 {
            let map = MapId {
                v6: false,
                protocol: Protocol::Tcp,
                shard: shard_of(chain, i),
            };
            assert_eq!(map.table(), service_tables::of_chain(chain));
        }
    }
}
