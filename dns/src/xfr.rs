//! AXFR of the cluster zone, to allowed clients over TCP only.
//!
//! The transfer is the zone as the table holds it at one snapshot: SOA, NS, the
//! `dns-version` TXT, every record of every cluster-zone name (sorted by name), and the SOA
//! again, in messages of at most `RECORDS_PER_MESSAGE` records. Reverse names and the
//! synthesized pod names are not part of it. IXFR is answered with a full transfer (RFC 1995
//! allows that), as CoreDNS does.

use hickory_proto::op::{Message, OpCode, Query};
use hickory_proto::rr::rdata::{NS, TXT};
use hickory_proto::rr::{Name, RData, Record};
use tables::Snapshot;

use crate::parse::{classify, NameKind};
use crate::zone::{self, ZoneSettings};

const RECORDS_PER_MESSAGE: usize = 500;

/// The messages of one transfer, encoded, with the client's ID and question.
pub fn axfr(snap: &Snapshot, settings: &ZoneSettings, id: u16, question: &Query) -> Vec<Vec<u8>> {
    let zone: &str = &snap.dns.zone;
    let ttl = settings.ttl;
    let apex = zone::name(zone);
    let soa = zone::soa(zone, snap.generation, ttl);
    let mut records = vec![
        soa.clone(),
        Record::from_rdata(
            apex,
            ttl,
            RData::NS(NS(zone::name(&format!("ns.dns.{zone}")))),
        ),
        Record::from_rdata(
            zone::name(&format!("dns-version.{zone}")),
            28800,
            RData::TXT(TXT::new(vec!["1.1.0".into()])),
        ),
    ];
    let mut names: Vec<_> = snap
        .dns
        .names
        .iter()
        .filter(|(n, _)| matches!(classify(n, zone), NameKind::Cluster { .. }))
        .collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    for (n, entry) in names {
        let owner: Name = zone::name(n);
        for r in entry.records() {
            records.push(Record::from_rdata(owner.clone(), ttl, zone::rdata_of(r)));
        }
    }
    records.push(soa);
    records
        .chunks(RECORDS_PER_MESSAGE)
        .map(|chunk| {
            let mut m = Message::response(id, OpCode::Query);
            m.metadata.authoritative = true;
            m.add_query(question.clone());
            m.answers = chunk.to_vec();
            m.to_vec().unwrap_or_default()
        })
        .collect()
}
