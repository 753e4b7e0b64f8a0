//! The dnsperf query file and the answers servers are checked against before they are timed.
//!
//! The mix (per 100 queries, drawn with a fixed seed, names uniformly within each class):
//!
//! | share | query | expected |
//! |---|---|---|
//! | 40 | `A` of a ClusterIP service | its ClusterIP |
//! | 10 | `A` of a headless service | every ready endpoint address |
//! | 10 | `A` of a headless endpoint name | its address |
//! | 10 | `AAAA` of a service | NOERROR, no answer (the cluster is IPv4 only) |
//! | 15 | `SRV` of a named port | one SRV (ClusterIP) or one per endpoint (headless) |
//! | 15 | `A` of a name that does not exist | NXDOMAIN |
//!
//! So 85 % of queries name something that exists (60 % A, 10 % AAAA, 15 % SRV) and 15 % miss.
//! Misses are `missing-<n>.<namespace>.svc.<zone>` and `<service>.missing-<n>.svc.<zone>` in
//! equal parts: inside the cluster zone, so no server forwards them.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::records::{Names, RData, Records};

/// The mix, in queries per 100.
pub const MIX: [(&str, u32); 6] = [
    ("A clusterip", 40),
    ("A headless", 10),
    ("A endpoint", 10),
    ("AAAA service", 10),
    ("SRV", 15),
    ("A nxdomain", 15),
];

/// SplitMix64, seeded: the same file every time.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn pick<'a>(&mut self, v: &'a [String]) -> &'a str {
        &v[self.below(v.len())]
    }
}

fn miss(rng: &mut Rng, names: &Names, zone: &str) -> String {
    let n = rng.below(1_000_000);
    if rng.next() % 2 == 0 {
        let ns = rng.pick(&names.namespaces);
        format!("missing-{n}.{ns}.svc.{zone}")
    } else {
        let svc = rng.pick(&names.cluster_ip);
        let first = svc.split('.').next().unwrap_or("x");
        format!("{first}.missing-{n}.svc.{zone}")
    }
}

/// `count` lines of `name TYPE` in the mix above.
pub fn query_file(names: &Names, zone: &str, count: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let endpoints: Vec<String> = names
        .endpoint_hostname
        .iter()
        .chain(&names.endpoint_dashed)
        .cloned()
        .collect();
    let services: Vec<String> = names
        .cluster_ip
        .iter()
        .chain(&names.headless)
        .cloned()
        .collect();
    let srv: Vec<String> = names
        .srv_cluster_ip
        .iter()
        .chain(&names.srv_headless)
        .cloned()
        .collect();
    let mut out = String::with_capacity(count * 48);
    for _ in 0..count {
        let mut r = rng.below(100) as u32;
        let class = MIX
            .iter()
            .find(|(_, share)| {
                if r < *share {
                    true
                } else {
                    r -= share;
                    false
                }
            })
            .map(|(c, _)| *c)
            .unwrap_or("A clusterip");
        let line = match class {
            "A clusterip" => format!("{} A", rng.pick(&names.cluster_ip)),
            "A headless" => format!("{} A", rng.pick(&names.headless)),
            "A endpoint" => format!("{} A", rng.pick(&endpoints)),
            "AAAA service" => format!("{} AAAA", rng.pick(&services)),
            "SRV" => format!("{} SRV", rng.pick(&srv)),
            _ => format!("{} A", miss(&mut rng, names, zone)),
        };
        let _ = writeln!(out, "{line}");
    }
    out
}

/// A check: a query and the answer a correct server gives (RCODE and the answer RRset's RDATA as
/// `dig` prints it, sorted).
fn check(name: &str, qtype: &str, rcode: &str, rdata: Vec<String>) -> Value {
    let mut rdata = rdata;
    rdata.sort();
    json!({ "name": name, "type": qtype, "rcode": rcode, "answers": rdata })
}

/// Checks covering every kind of record and both kinds of miss (JSON lines).
pub fn checks(records: &Records, names: &Names, zone: &str) -> String {
    let mut rng = Rng::new(7);
    let mut out = Vec::new();
    let answer = |name: &str, qtype: &str| -> Value {
        let rds: Vec<String> = records.names.get(name).map_or(vec![], |v| {
            v.iter()
                .filter(|r| r.rtype() == qtype)
                .map(RData::text)
                .collect()
        });
        check(name, qtype, "NOERROR", rds)
    };
    let classes: [(&[String], &str); 8] = [
        (&names.cluster_ip, "A"),
        (&names.headless, "A"),
        (&names.endpoint_hostname, "A"),
        (&names.endpoint_dashed, "A"),
        (&names.srv_cluster_ip, "SRV"),
        (&names.srv_headless, "SRV"),
        (&names.ptr_cluster_ip, "PTR"),
        (&names.ptr_endpoint, "PTR"),
    ];
    for (pool, qtype) in classes {
        if pool.is_empty() {
            continue;
        }
        for _ in 0..3 {
            out.push(answer(rng.pick(pool), qtype));
        }
    }
    out.push(answer(rng.pick(&names.cluster_ip), "AAAA"));
    out.push(answer(rng.pick(&names.headless), "AAAA"));
    out.push(answer(&format!("dns-version.{zone}"), "TXT"));
    for _ in 0..4 {
        out.push(check(&miss(&mut rng, names, zone), "A", "NXDOMAIN", vec![]));
    }
    out.iter().map(|v| format!("{v}\n")).collect()
}
