//! The DNS battery: query name and type → RCODE and records as zone-file lines (CoreDNS's
//! `test.Case`). Run against the cluster of `fixture.yaml`, served by the manifest source
//! (dns/tests/battery.rs, in process) and by the Kubernetes source (tests/dns.rs, the real
//! binary against the test API server), with the fake upstream of `upstream.rs`.
//!
//! Records compare as sets, owner names lower-cased; SOA serials print as `*` (the snapshot
//! generation differs between sources; `battery.rs` checks the serial itself).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub const FIXTURE: &str = include_str!("fixture.yaml");

pub struct Case {
    pub name: &'static str,
    pub qtype: &'static str,
    pub rcode: &'static str,
    pub answer: &'static [&'static str],
    pub authority: &'static [&'static str],
    pub additional: &'static [&'static str],
}

/// The zone's SOA as a zone-file line, its serial as `*` (the generation).
pub const SOA: &str =
    "cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. * 7200 1800 86400 30";

macro_rules! case {
    ($name:expr, $t:expr, $rc:expr, [$($a:expr),* $(,)?]) => {
        Case { name: $name, qtype: $t, rcode: $rc, answer: &[$($a),*], authority: &[], additional: &[] }
    };
    ($name:expr, $t:expr, $rc:expr, [$($a:expr),* $(,)?], ns [$($n:expr),* $(,)?]) => {
        Case { name: $name, qtype: $t, rcode: $rc, answer: &[$($a),*], authority: &[$($n),*], additional: &[] }
    };
    ($name:expr, $t:expr, $rc:expr, [$($a:expr),* $(,)?], extra [$($x:expr),* $(,)?]) => {
        Case { name: $name, qtype: $t, rcode: $rc, answer: &[$($a),*], authority: &[], additional: &[$($x),*] }
    };
}

pub fn cases() -> Vec<Case> {
    vec![
        // ClusterIP services.
        case!("web.default.svc.cluster.local.", "A", "NOERROR",
            ["web.default.svc.cluster.local. 30 IN A 10.96.0.10"]),
        case!("web.other.svc.cluster.local.", "A", "NOERROR",
            ["web.other.svc.cluster.local. 30 IN A 10.96.1.10"]),
        case!("web.default.svc.cluster.local.", "AAAA", "NOERROR", [], ns [SOA]),
        case!("web.default.svc.cluster.local.", "MX", "NOERROR", [], ns [SOA]),
        case!("WeB.DeFault.SVC.Cluster.Local.", "A", "NOERROR",
            ["web.default.svc.cluster.local. 30 IN A 10.96.0.10"]),
        case!("noport.default.svc.cluster.local.", "A", "NOERROR",
            ["noport.default.svc.cluster.local. 30 IN A 10.96.0.12"]),
        // Dual stack: one family per type.
        case!("dual.default.svc.cluster.local.", "A", "NOERROR",
            ["dual.default.svc.cluster.local. 30 IN A 10.96.0.11"]),
        case!("dual.default.svc.cluster.local.", "AAAA", "NOERROR",
            ["dual.default.svc.cluster.local. 30 IN AAAA fd00::11"]),
        // Headless: ready endpoints only, per family.
        case!("headless.default.svc.cluster.local.", "A", "NOERROR", [
            "headless.default.svc.cluster.local. 30 IN A 10.1.0.1",
            "headless.default.svc.cluster.local. 30 IN A 10.1.0.2",
        ]),
        case!("headless.default.svc.cluster.local.", "AAAA", "NOERROR",
            ["headless.default.svc.cluster.local. 30 IN AAAA fd00::1:1"]),
        case!("db-0.headless.default.svc.cluster.local.", "A", "NOERROR",
            ["db-0.headless.default.svc.cluster.local. 30 IN A 10.1.0.1"]),
        case!("10-1-0-2.headless.default.svc.cluster.local.", "A", "NOERROR",
            ["10-1-0-2.headless.default.svc.cluster.local. 30 IN A 10.1.0.2"]),
        case!("fd00--1-1.headless.default.svc.cluster.local.", "AAAA", "NOERROR",
            ["fd00--1-1.headless.default.svc.cluster.local. 30 IN AAAA fd00::1:1"]),
        case!("10-1-0-3.headless.default.svc.cluster.local.", "A", "NXDOMAIN", [], ns [SOA]),
        case!("bogus.headless.default.svc.cluster.local.", "A", "NXDOMAIN", [], ns [SOA]),
        case!("notready.default.svc.cluster.local.", "A", "NXDOMAIN", [], ns [SOA]),
        case!("published.default.svc.cluster.local.", "A", "NOERROR",
            ["published.default.svc.cluster.local. 30 IN A 10.1.2.1"]),
        // SRV: named ports; headless targets the endpoints, with their addresses as extra.
        case!("_http._tcp.web.default.svc.cluster.local.", "SRV", "NOERROR",
            ["_http._tcp.web.default.svc.cluster.local. 30 IN SRV 0 100 80 web.default.svc.cluster.local."],
            extra ["web.default.svc.cluster.local. 30 IN A 10.96.0.10"]),
        case!("_http._tcp.dual.default.svc.cluster.local.", "SRV", "NOERROR",
            ["_http._tcp.dual.default.svc.cluster.local. 30 IN SRV 0 100 80 dual.default.svc.cluster.local."],
            extra [
                "dual.default.svc.cluster.local. 30 IN A 10.96.0.11",
                "dual.default.svc.cluster.local. 30 IN AAAA fd00::11",
            ]),
        case!("_http._tcp.headless.default.svc.cluster.local.", "SRV", "NOERROR", [
            "_http._tcp.headless.default.svc.cluster.local. 30 IN SRV 0 33 8080 db-0.headless.default.svc.cluster.local.",
            "_http._tcp.headless.default.svc.cluster.local. 30 IN SRV 0 33 8080 10-1-0-2.headless.default.svc.cluster.local.",
            "_http._tcp.headless.default.svc.cluster.local. 30 IN SRV 0 33 8080 fd00--1-1.headless.default.svc.cluster.local.",
        ], extra [
            "db-0.headless.default.svc.cluster.local. 30 IN A 10.1.0.1",
            "10-1-0-2.headless.default.svc.cluster.local. 30 IN A 10.1.0.2",
            "fd00--1-1.headless.default.svc.cluster.local. 30 IN AAAA fd00::1:1",
        ]),
        case!("_dns._udp.kube-dns.kube-system.svc.cluster.local.", "SRV", "NOERROR",
            ["_dns._udp.kube-dns.kube-system.svc.cluster.local. 30 IN SRV 0 100 53 kube-dns.kube-system.svc.cluster.local."],
            extra ["kube-dns.kube-system.svc.cluster.local. 30 IN A 10.96.0.2"]),
        // SRV at the service name itself (CoreDNS): every port.
        case!("web.default.svc.cluster.local.", "SRV", "NOERROR",
            ["web.default.svc.cluster.local. 30 IN SRV 0 100 80 web.default.svc.cluster.local."],
            extra ["web.default.svc.cluster.local. 30 IN A 10.96.0.10"]),
        case!("noport.default.svc.cluster.local.", "SRV", "NOERROR",
            ["noport.default.svc.cluster.local. 30 IN SRV 0 100 8080 noport.default.svc.cluster.local."],
            extra ["noport.default.svc.cluster.local. 30 IN A 10.96.0.12"]),
        case!("kube-dns.kube-system.svc.cluster.local.", "SRV", "NOERROR", [
            "kube-dns.kube-system.svc.cluster.local. 30 IN SRV 0 50 53 kube-dns.kube-system.svc.cluster.local.",
            "kube-dns.kube-system.svc.cluster.local. 30 IN SRV 0 50 53 kube-dns.kube-system.svc.cluster.local.",
        ], extra ["kube-dns.kube-system.svc.cluster.local. 30 IN A 10.96.0.2"]),
        case!("_http._udp.web.default.svc.cluster.local.", "SRV", "NXDOMAIN", [], ns [SOA]),
        case!("_tcp.web.default.svc.cluster.local.", "A", "NOERROR", [], ns [SOA]),
        case!("_http._tcp.web.default.svc.cluster.local.", "A", "NOERROR", [], ns [SOA]),
        // PTR for ClusterIPs and ready headless endpoints, both families.
        case!("10.0.96.10.in-addr.arpa.", "PTR", "NOERROR",
            ["10.0.96.10.in-addr.arpa. 30 IN PTR web.default.svc.cluster.local."]),
        case!("1.0.1.10.in-addr.arpa.", "PTR", "NOERROR",
            ["1.0.1.10.in-addr.arpa. 30 IN PTR db-0.headless.default.svc.cluster.local."]),
        case!("1.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", "PTR", "NOERROR",
            ["1.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa. 30 IN PTR dual.default.svc.cluster.local."]),
        // ExternalName: CNAME; outside targets chased upstream, inside ones from the table.
        case!("ext.default.svc.cluster.local.", "CNAME", "NOERROR",
            ["ext.default.svc.cluster.local. 30 IN CNAME ext-target.example."]),
        case!("ext.default.svc.cluster.local.", "A", "NOERROR", [
            "ext.default.svc.cluster.local. 30 IN CNAME ext-target.example.",
            "ext-target.example. 300 IN A 192.0.2.10",
        ]),
        case!("alias.default.svc.cluster.local.", "A", "NOERROR", [
            "alias.default.svc.cluster.local. 30 IN CNAME web.default.svc.cluster.local.",
            "web.default.svc.cluster.local. 30 IN A 10.96.0.10",
        ]),
        case!("endpoint.ext.default.svc.cluster.local.", "A", "NXDOMAIN", [], ns [SOA]),
        // Zone structure (CoreDNS): apex SOA/NS, version, empty non-terminals, negatives.
        case!("cluster.local.", "SOA", "NOERROR", [SOA]),
        case!("cluster.local.", "NS", "NOERROR",
            ["cluster.local. 30 IN NS ns.dns.cluster.local."],
            extra ["ns.dns.cluster.local. 30 IN A 10.96.0.2"]),
        case!("cluster.local.", "A", "NOERROR", [], ns [SOA]),
        case!("ns.dns.cluster.local.", "A", "NOERROR", ["ns.dns.cluster.local. 30 IN A 10.96.0.2"]),
        case!("dns-version.cluster.local.", "TXT", "NOERROR",
            ["dns-version.cluster.local. 28800 IN TXT \"1.1.0\""]),
        case!("svc.cluster.local.", "A", "NOERROR", [], ns [SOA]),
        case!("default.svc.cluster.local.", "A", "NOERROR", [], ns [SOA]),
        case!("default.svc.cluster.local.", "NS", "NOERROR", [], ns [SOA]),
        case!("nosuchns.svc.cluster.local.", "A", "NXDOMAIN", [], ns [SOA]),
        case!("missing.default.svc.cluster.local.", "A", "NXDOMAIN", [], ns [SOA]),
        case!("missing.default.svc.cluster.local.", "AAAA", "NXDOMAIN", [], ns [SOA]),
        case!("foo.cluster.local.", "NS", "NXDOMAIN", [], ns [SOA]),
        case!("a.b.c.web.default.svc.cluster.local.", "A", "NXDOMAIN", [], ns [SOA]),
        // Wildcards (deprecated by the spec) are not expanded.
        case!("*.default.svc.cluster.local.", "A", "NXDOMAIN", [], ns [SOA]),
        // Pods insecure.
        case!("10-244-1-5.default.pod.cluster.local.", "A", "NOERROR",
            ["10-244-1-5.default.pod.cluster.local. 30 IN A 10.244.1.5"]),
        case!("fd00--5.default.pod.cluster.local.", "AAAA", "NOERROR",
            ["fd00--5.default.pod.cluster.local. 30 IN AAAA fd00::5"]),
        case!("10-244-1-5.default.pod.cluster.local.", "AAAA", "NOERROR", [], ns [SOA]),
        case!("not-an-ip.default.pod.cluster.local.", "A", "NXDOMAIN", [], ns [SOA]),
        case!("pod.cluster.local.", "A", "NOERROR", [], ns [SOA]),
        // Forwarded names (fake upstream).
        case!("example.org.", "A", "NOERROR", ["example.org. 300 IN A 192.0.2.1"]),
        case!("nothing-here.example.", "A", "NXDOMAIN", [],
            ns ["example. 60 IN SOA ns.example. admin.example. * 7200 1800 86400 60"]),
    ]
}

/// A record as a zone-file line: owner lower-cased, SOA serial as `*`.
pub fn line(r: &Record) -> String {
    let data = match &r.data {
        RData::SOA(s) => format!(
            "{} {} * {} {} {} {}",
            s.mname, s.rname, s.refresh, s.retry, s.expire, s.minimum
        ),
        RData::TXT(t) => t
            .txt_data
            .iter()
            .map(|s| format!("\"{}\"", String::from_utf8_lossy(s)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    format!(
        "{} {} IN {} {}",
        r.name.to_lowercase(),
        r.ttl,
        r.record_type(),
        data
    )
}

fn sorted(v: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = v.into_iter().collect();
    v.sort();
    v
}

/// Compares an answer with a case; `Err` says what differs.
pub fn check(case: &Case, resp: &Message) -> Result<(), String> {
    let mut errs = Vec::new();
    let rcode = resp.metadata.response_code.to_str().to_uppercase();
    let want_rcode = case.rcode.to_uppercase();
    let rcode_name = match rcode.as_str() {
        "NO ERROR" => "NOERROR".to_string(),
        "NON-EXISTENT DOMAIN" => "NXDOMAIN".to_string(),
        "SERVER FAILURE" => "SERVFAIL".to_string(),
        "QUERY REFUSED" => "REFUSED".to_string(),
        other => other.to_string(),
    };
    if rcode_name != want_rcode {
        errs.push(format!("rcode {rcode_name}, want {want_rcode}"));
    }
    for (what, got, want) in [
        ("answer", &resp.answers, case.answer),
        ("authority", &resp.authorities, case.authority),
        ("additional", &resp.additionals, case.additional),
    ] {
        let got = sorted(
            got.iter()
                .filter(|r| r.record_type() != RecordType::OPT)
                .map(line),
        );
        let want = sorted(want.iter().map(|s| s.to_string()));
        if got != want {
            errs.push(format!("{what}:\n    got  {got:?}\n    want {want:?}"));
        }
    }
    // The question comes back exactly as asked (case included).
    match resp.queries.first() {
        Some(q) if q.name().to_ascii() == case.name => {}
        other => errs.push(format!("question echoed as {other:?}")),
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} {} -> {}",
            case.name,
            case.qtype,
            errs.join("\n  ")
        ))
    }
}

/// Builds a query (RD set, EDNS with payload 1232 when `edns`).
pub fn query_message(name: &str, qtype: RecordType, edns: bool) -> Message {
    let mut m = Message::new(fastrand::u16(..), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m
}

/// A 127.0.0.1 port free for both UDP and TCP right now (for a server that must know its own
/// address before it starts, as in the loop-detection tests).
pub fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Sends raw bytes over UDP and returns the raw answer. Like a stub resolver, it resends after
/// 2 s without an answer (a datagram can be lost on a loaded machine), and panics after 5 tries.
pub async fn udp_raw(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let bind = if server.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let sock = UdpSocket::bind(bind).await.unwrap();
    sock.connect(server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    for _ in 0..5 {
        sock.send(bytes).await.unwrap();
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await {
            let n = r.unwrap();
            buf.truncate(n);
            return buf;
        }
    }
    panic!("no UDP answer from {server} after 5 tries");
}

/// Sends raw bytes over TCP (length-prefixed) and returns the first raw answer.
pub async fn tcp_raw(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(server).await.unwrap();
    s.write_all(&(bytes.len() as u16).to_be_bytes())
        .await
        .unwrap();
    s.write_all(bytes).await.unwrap();
    let len = tokio::time::timeout(Duration::from_secs(10), s.read_u16())
        .await
        .unwrap_or_else(|_| panic!("no TCP answer from {server}"))
        .unwrap();
    let mut buf = vec![0u8; len as usize];
    s.read_exact(&mut buf).await.unwrap();
    buf
}

/// One query, over UDP or TCP; panics if the answer does not match the query ID.
pub async fn ask(server: SocketAddr, m: &Message, tcp: bool) -> Message {
    let bytes = m.to_vec().unwrap();
    let raw = if tcp {
        tcp_raw(server, &bytes).await
    } else {
        udp_raw(server, &bytes).await
    };
    let resp = Message::from_vec(&raw).expect("answer parses");
    assert_eq!(resp.metadata.id, m.metadata.id, "answer ID");
    resp
}

/// Runs every case against `server` over UDP (and the first few over TCP too), returning the
/// failures.
pub async fn run_battery(server: SocketAddr) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        let qtype: RecordType = case.qtype.parse().unwrap();
        for tcp in [false, true] {
            if tcp && i % 4 != 0 {
                continue;
            }
            let resp = ask(server, &query_message(case.name, qtype, i % 2 == 0), tcp).await;
            if let Err(e) = check(case, &resp) {
                failures.push(format!("[{}] {e}", if tcp { "tcp" } else { "udp" }));
            }
        }
    }
    failures
}
