//! The kernel path's service chains are spread over `COUNT` tables of their own
//! (`inet switchboard-svc0` … `switchboard-svc15`), beside the main table `inet switchboard`.
//!
//! Why: after a transaction that adds or changes a rule, Linux (6.18 here) validates every
//! chain reachable from each base chain of that rule's *table* before it commits. With every
//! service chain in one table, both nat hooks reach all of them, and an endpoint added to a
//! service (its rule's `numgen random mod N` changes) cost ~11 ms of kernel CPU at 10,000
//! Services whatever else it touched. Split over 16 tables, each with its own nat prerouting
//! and output chains, a rule change validates a sixteenth of them (measured by hand with nft
//! 1.0.6, 10,000 chains: 10–27 ms per rule change in one table, 0.9–4 ms in one of 16;
//! docs/l4.md). A packet's first datagram passes the tables' nat chains in turn until one
//! DNATs it (`nf_nat_inet_fn` stops at the first binding), each a vmap lookup that misses.
//!
//! A service chain's table is a hash of its name, and so are its aux objects' (their names
//! begin with the chain's) and its picks' shard maps (`pick::shard_of`), so everything a chain
//! refers to lives in its table.

/// Service tables.
pub const COUNT: u32 = 16;

/// The table of a service chain, or of an aux set or chain named after one
/// (`svc-NS/NAME/PROTO/PORT/KINDFAM[/…]`): a hash of the first five parts of the name.
pub fn of_chain(name: &str) -> u32 {
    let end = name
        .match_indices('/')
        .nth(4)
        .map_or(name.len(), |(i, _)| i);
    fnv(name[..end].bytes()) % COUNT
}

/// The name of service table `i` beside the main table `main`.
pub fn name(main: &str, i: u32) -> String {
    format!("{main}-svc{i}")
}

/// Every service table's name.
pub fn names(main: &str) -> impl Iterator<Item = String> + '_ {
    (0..COUNT).map(move |i| name(main, i))
}

/// FNV-1a.
pub(crate) fn fnv(bytes: impl Iterator<Item = u8>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aux_objects_share_their_chains_table_and_chains_spread() {
        let chain = "svc-default/web/tcp/80/int4";
        for aux in [
            "svc-default/web/tcp/80/int4/aff/0a000001/80/10800",
            "svc-default/web/tcp/80/int4/ep/0a000001/80",
        ] {
            assert_eq!(of_chain(aux), of_chain(chain));
        }
        let used: std::collections::HashSet<u32> = (0..500)
            .map(|i| of_chain(&format!("svc-default/s{i}/tcp/80/int4")))
            .collect();
        assert_eq!(used.len(), COUNT as usize);
        assert_eq!(name("switchboard", 3), "switchboard-svc3");
    }
}
