//! Answers for the cluster zone (and table-held reverse names) from one `Snapshot`.
//!
//! Pure: a snapshot, a lower-case name and a type in, records out. The server turns the result
//! into a pre-encoded template (`server.rs`); an ExternalName whose target lies outside the zone
//! comes back as `Chase` so the server can resolve the target through the forwarder.

use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record};
use tables::{DnsRecord, Snapshot};

use crate::config::PodsMode;
use crate::parse::{classify, parse_pod, NameKind, PodName};
use crate::wire::{RCODE_NOERROR, RCODE_NXDOMAIN, RCODE_SERVFAIL};

pub const T_A: u16 = 1;
pub const T_NS: u16 = 2;
pub const T_CNAME: u16 = 5;
pub const T_SOA: u16 = 6;
pub const T_PTR: u16 = 12;
pub const T_TXT: u16 = 16;
pub const T_AAAA: u16 = 28;
pub const T_SRV: u16 = 33;
pub const T_IXFR: u16 = 251;
pub const T_AXFR: u16 = 252;
pub const T_ANY: u16 = 255;

/// TTL of `dns-version.<zone>` TXT, as CoreDNS.
const VERSION_TTL: u32 = 28800;
/// How many in-zone CNAME hops are followed.
const MAX_CNAME_HOPS: usize = 8;

/// Settings of the cluster zone answers.
#[derive(Clone, Debug)]
pub struct ZoneSettings {
    pub ttl: u32,
    pub pods: PodsMode,
    /// Addresses given for `ns.dns.<zone>` when the cluster has no `kube-system/kube-dns`
    /// service (the listener's own address when it is not a wildcard).
    pub self_addrs: Vec<IpAddr>,
}

/// What the cluster zone says about one question.
#[derive(Debug, Default)]
pub struct ZoneAnswer {
    pub rcode: u8,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    /// A CNAME chain left the zone: resolve this name (same type) upstream and append.
    pub chase: Option<Name>,
}

pub fn name(s: &str) -> Name {
    // Table names are plain LDH labels; an unparsable one (never expected) becomes the root
    // rather than a panic.
    Name::from_ascii(format!("{s}.")).unwrap_or_else(|_| Name::root())
}

pub fn rdata_of(r: &DnsRecord) -> RData {
    match r {
        DnsRecord::A(ip) => RData::A(A(*ip)),
        DnsRecord::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
        DnsRecord::Cname(t) => RData::CNAME(CNAME(name(t))),
        DnsRecord::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(*priority, *weight, *port, name(target))),
        DnsRecord::Ptr(t) => RData::PTR(PTR(name(t))),
        DnsRecord::Txt(t) => RData::TXT(TXT::new(vec![t.to_string()])),
    }
}

fn type_of(r: &DnsRecord) -> u16 {
    match r {
        DnsRecord::A(_) => T_A,
        DnsRecord::Aaaa(_) => T_AAAA,
        DnsRecord::Cname(_) => T_CNAME,
        DnsRecord::Srv { .. } => T_SRV,
        DnsRecord::Ptr(_) => T_PTR,
        DnsRecord::Txt(_) => T_TXT,
    }
}

fn ip_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

fn ip_matches(ip: &IpAddr, qtype: u16) -> bool {
    matches!(
        (ip, qtype),
        (IpAddr::V4(_), T_A | T_ANY) | (IpAddr::V6(_), T_AAAA | T_ANY)
    )
}

/// The SOA of a zone (`cluster.local`, or `in-addr.arpa`/`ip6.arpa` for reverse names), as
/// CoreDNS writes it; the serial is the snapshot generation (mod 2^32).
pub fn soa(zone: &str, generation: u64, ttl: u32) -> Record {
    let z = name(zone);
    let mname = name(&format!("ns.dns.{zone}"));
    let rname = name(&format!("hostmaster.{zone}"));
    Record::from_rdata(
        z,
        ttl,
        RData::SOA(SOA::new(
            mname,
            rname,
            generation as u32,
            7200,
            1800,
            86400,
            ttl,
        )),
    )
}

fn reverse_zone(name: &str) -> &'static str {
    if name.ends_with("ip6.arpa") {
        "ip6.arpa"
    } else {
        "in-addr.arpa"
    }
}

/// Addresses of `ns.dns.<zone>`: the ClusterIPs of `kube-system/kube-dns` if the cluster has
/// that service, else this server's listener addresses.
fn ns_addrs(snap: &Snapshot, settings: &ZoneSettings) -> Vec<IpAddr> {
    match snap.routes.service("kube-system", "kube-dns") {
        Some(s) if !s.service.cluster_ips.is_empty() => s.service.cluster_ips.clone(),
        _ => settings.self_addrs.clone(),
    }
}

/// Answers `qname` (lower case, no trailing dot; a cluster-zone or table-held reverse name) of
/// type `qtype`. `owner` is the name to put on records at `qname` (the question, lower case).
pub fn answer(snap: &Snapshot, settings: &ZoneSettings, qname: &str, qtype: u16) -> ZoneAnswer {
    let zone: &str = &snap.dns.zone;
    let ttl = settings.ttl;
    let owner = name(qname);
    let mut out = ZoneAnswer::default();
    let soa_zone = match classify(qname, zone) {
        NameKind::Cluster { .. } => zone,
        _ => reverse_zone(qname),
    };
    let negative = |out: &mut ZoneAnswer, rcode: u8| {
        out.rcode = rcode;
        out.answers.clear();
        out.additionals.clear();
        out.authorities.push(soa(soa_zone, snap.generation, ttl));
    };

    let rel = match classify(qname, zone) {
        NameKind::Cluster { rel } => Some(rel),
        _ => None,
    };
    match rel {
        Some("") => {
            match qtype {
                T_SOA => out.answers.push(soa(zone, snap.generation, ttl)),
                T_NS => {
                    let ns = name(&format!("ns.dns.{zone}"));
                    out.answers
                        .push(Record::from_rdata(owner, ttl, RData::NS(NS(ns.clone()))));
                    for ip in ns_addrs(snap, settings) {
                        out.additionals
                            .push(Record::from_rdata(ns.clone(), ttl, ip_rdata(ip)));
                    }
                }
                T_ANY => {
                    out.answers.push(soa(zone, snap.generation, ttl));
                    let ns = name(&format!("ns.dns.{zone}"));
                    out.answers
                        .push(Record::from_rdata(owner, ttl, RData::NS(NS(ns))));
                }
                _ => negative(&mut out, RCODE_NOERROR),
            }
            return finish_sync(out, snap, settings, soa_zone);
        }
        Some("dns-version") => {
            if matches!(qtype, T_TXT | T_ANY) {
                out.answers.push(Record::from_rdata(
                    owner,
                    VERSION_TTL,
                    RData::TXT(TXT::new(vec!["1.1.0".into()])),
                ));
            } else {
                negative(&mut out, RCODE_NOERROR);
            }
            return finish_sync(out, snap, settings, soa_zone);
        }
        Some("ns.dns") => {
            let addrs: Vec<_> = ns_addrs(snap, settings);
            for ip in addrs.iter().filter(|ip| ip_matches(ip, qtype)) {
                out.answers
                    .push(Record::from_rdata(owner.clone(), ttl, ip_rdata(*ip)));
            }
            if out.answers.is_empty() {
                negative(&mut out, RCODE_NOERROR);
            }
            return finish_sync(out, snap, settings, soa_zone);
        }
        Some("svc" | "dns") => {
            negative(&mut out, RCODE_NOERROR);
            return finish_sync(out, snap, settings, soa_zone);
        }
        Some(rel) => {
            if let Some(pod) = parse_pod(rel) {
                match (pod, settings.pods) {
                    (PodName::Namespace, _) if rel == "pod" => negative(&mut out, RCODE_NOERROR),
                    (PodName::Address(ip), PodsMode::Insecure) => {
                        if ip_matches(&ip, qtype) {
                            out.answers
                                .push(Record::from_rdata(owner, ttl, ip_rdata(ip)));
                        } else {
                            negative(&mut out, RCODE_NOERROR);
                        }
                    }
                    _ => negative(&mut out, RCODE_NXDOMAIN),
                }
                return finish_sync(out, snap, settings, soa_zone);
            }
        }
        None => {}
    }

    // Names held by the table.
    let Some(entry) = snap.dns.lookup(qname) else {
        negative(&mut out, RCODE_NXDOMAIN);
        return finish_sync(out, snap, settings, soa_zone);
    };
    let cname = entry.records().find_map(|r| match r {
        DnsRecord::Cname(t) => Some(t.clone()),
        _ => None,
    });
    if let Some(target) = cname {
        out.answers.push(Record::from_rdata(
            owner,
            ttl,
            RData::CNAME(CNAME(name(&target))),
        ));
        if qtype != T_CNAME {
            follow_cname(snap, settings, &target, qtype, &mut out);
        }
        return finish_sync(out, snap, settings, soa_zone);
    }
    if qtype == T_SRV {
        if let Some(srvs) = service_srv(snap, qname, rel) {
            for r in &srvs {
                out.answers
                    .push(Record::from_rdata(owner.clone(), ttl, rdata_of(r)));
                if let DnsRecord::Srv { target, .. } = r {
                    add_addresses(snap, target, ttl, &mut out.additionals);
                }
            }
        }
    }
    for r in entry.records() {
        if qtype == T_ANY || type_of(r) == qtype {
            out.answers
                .push(Record::from_rdata(owner.clone(), ttl, rdata_of(r)));
        }
        if let (DnsRecord::Srv { target, .. }, T_SRV | T_ANY) = (r, qtype) {
            add_addresses(snap, target, ttl, &mut out.additionals);
        }
    }
    if out.answers.is_empty() {
        negative(&mut out, RCODE_NOERROR);
    }
    finish_sync(out, snap, settings, soa_zone)
}

/// SRV at a service name itself (`web.default.svc.<zone> SRV`), as CoreDNS answers it: the
/// SRV records of every named port (`_port._proto.<name>`), plus one per unnamed port of a
/// ClusterIP service, weights 100 split evenly. `None` for names that are not services.
fn service_srv(snap: &Snapshot, qname: &str, rel: Option<&str>) -> Option<Vec<DnsRecord>> {
    let mut labels = rel?.split('.');
    let (svc, ns, kind) = (labels.next()?, labels.next()?, labels.next()?);
    if kind != "svc" || labels.next().is_some() {
        return None;
    }
    // Service and namespace names are lower-case DNS labels in Kubernetes.
    let routes = snap.routes.service(ns, svc)?;
    let mut srvs = Vec::new();
    for p in &routes.ports {
        if p.name.is_empty() {
            if !routes.service.headless && !routes.service.cluster_ips.is_empty() {
                srvs.push(DnsRecord::Srv {
                    priority: 0,
                    weight: 0,
                    port: p.port,
                    target: qname.into(),
                });
            }
            continue;
        }
        let name = format!(
            "_{}.{}.{qname}",
            p.name.to_ascii_lowercase(),
            p.protocol.srv_label()
        );
        if let Some(e) = snap.dns.lookup(&name) {
            srvs.extend(
                e.records()
                    .filter(|r| matches!(r, DnsRecord::Srv { .. }))
                    .cloned(),
            );
        }
    }
    let n = srvs.len().max(1);
    for r in &mut srvs {
        if let DnsRecord::Srv { weight, .. } = r {
            *weight = (100 / n).max(1) as u16;
        }
    }
    Some(srvs)
}

/// A and AAAA records of an in-table name, for the additional section.
fn add_addresses(snap: &Snapshot, target: &str, ttl: u32, into: &mut Vec<Record>) {
    let Some(e) = snap.dns.lookup(target) else {
        return;
    };
    let owner = name(target);
    for r in e.records() {
        if matches!(r, DnsRecord::A(_) | DnsRecord::Aaaa(_)) {
            let rec = Record::from_rdata(owner.clone(), ttl, rdata_of(r));
            if !into.contains(&rec) {
                into.push(rec);
            }
        }
    }
}

/// Follows an ExternalName CNAME: inside the zone through the table (as CoreDNS answers
/// `external-to-service`), outside by asking the server to chase it upstream.
fn follow_cname(
    snap: &Snapshot,
    settings: &ZoneSettings,
    first: &str,
    qtype: u16,
    out: &mut ZoneAnswer,
) {
    let zone: &str = &snap.dns.zone;
    let mut target = first.to_string();
    for _ in 0..MAX_CNAME_HOPS {
        if !matches!(classify(&target, zone), NameKind::Cluster { .. }) {
            out.chase = Some(name(&target));
            return;
        }
        let Some(e) = snap.dns.lookup(&target) else {
            return;
        };
        let owner = name(&target);
        let mut next = None;
        for r in e.records() {
            if let DnsRecord::Cname(t) = r {
                out.answers
                    .push(Record::from_rdata(owner.clone(), settings.ttl, rdata_of(r)));
                next = Some(t.to_string());
            } else if qtype == T_ANY || type_of(r) == qtype {
                out.answers
                    .push(Record::from_rdata(owner.clone(), settings.ttl, rdata_of(r)));
            }
        }
        match next {
            Some(n) => target = n,
            None => return,
        }
    }
}

/// Before the first sync, a negative answer may only mean "not loaded yet": SERVFAIL.
fn finish_sync(
    mut out: ZoneAnswer,
    snap: &Snapshot,
    _settings: &ZoneSettings,
    _soa_zone: &str,
) -> ZoneAnswer {
    if !snap.synced && out.answers.is_empty() {
        out.rcode = RCODE_SERVFAIL;
    }
    out
}
