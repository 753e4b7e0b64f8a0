//! The DNS server in process: the battery of `support/cases.rs` against the manifest-source
//! tables of `support/fixture.yaml`, and the behaviours the battery cannot express (sync state,
//! EDNS, truncation, transfers, hostile packets, forwarding, caching, loops).

#[macro_use]
#[path = "support/cases.rs"]
mod cases;
#[path = "support/running.rs"]
mod running;
#[path = "support/upstream.rs"]
mod upstream;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cases::{ask, query_message, run_battery, udp_raw, Case, SOA};
use dns::{DnsConfig, PodsMode};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use running::start;
use tables::{ClusterState, Object, Origin, SnapshotCell, SourceId, TableConfig};
use upstream::FakeUpstream;

fn objects(yaml: &str) -> Vec<Object> {
    controller::parse::parse_manifest(Path::new("fixture.yaml"), yaml)
        .unwrap()
        .iter()
        .map(|o| controller::convert::convert(o, "default").unwrap())
        .collect()
}

struct Cluster {
    state: ClusterState,
    cell: SnapshotCell,
    source: SourceId,
}

impl Cluster {
    fn new(yaml: &str, synced: bool) -> Cluster {
        let mut state = ClusterState::new(TableConfig::default());
        let source = SourceId::new(Origin::Manifests, "fixture.yaml");
        state.reset(&source, objects(yaml), &[]);
        state.set_synced(synced);
        let cell = tables::new_cell("cluster.local");
        cell.store(state.commit().unwrap());
        Cluster {
            state,
            cell,
            source,
        }
    }

    /// Replaces the whole source with `yaml` and publishes.
    fn replace(&mut self, yaml: &str) {
        self.state.reset(&self.source, objects(yaml), &[]);
        if let Some(s) = self.state.commit() {
            self.cell.store(s);
        }
    }
}

/// Panics listing every failure of a table, if there is any.
#[track_caller]
fn assert_no_failures(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn battery_manifest_source() {
    let up = FakeUpstream::start().await;
    let c = Cluster::new(cases::FIXTURE, true);
    let s = start(&c.cell, |cfg| cfg.upstreams = vec![up.addr]).await;
    let failures = run_battery(s.udp()).await;
    assert_no_failures(&failures);
    // Second pass: now from the pre-encoded templates; same answers.
    let failures = run_battery(s.udp()).await;
    assert!(failures.is_empty(), "templated:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn soa_serial_is_the_generation() {
    let c = Cluster::new(cases::FIXTURE, true);
    let s = start(&c.cell, |_| {}).await;
    let r = ask(
        s.udp(),
        &query_message("missing.default.svc.cluster.local.", RecordType::A, false),
        false,
    )
    .await;
    let RData::SOA(soa) = &r.authorities[0].data else {
        panic!("no SOA: {r:?}")
    };
    assert_eq!(u64::from(soa.serial), c.cell.load().generation);
    assert!(r.metadata.authoritative);
}

#[tokio::test]
async fn a_change_is_answered_by_the_next_query() {
    let mut c = Cluster::new(cases::FIXTURE, true);
    let s = start(&c.cell, |_| {}).await;
    let q = query_message("web.default.svc.cluster.local.", RecordType::A, false);
    // Twice, so the second answer comes from the template cache.
    for _ in 0..2 {
        let r = ask(s.udp(), &q, false).await;
        assert_eq!(
            cases::line(&r.answers[0]).split(' ').next_back(),
            Some("10.96.0.10")
        );
    }
    c.replace(&cases::FIXTURE.replace("10.96.0.10", "10.96.0.99"));
    let r = ask(s.udp(), &q, false).await;
    assert_eq!(
        cases::line(&r.answers[0]).split(' ').next_back(),
        Some("10.96.0.99")
    );
    // Deleting the service: NXDOMAIN at once.
    let without_web = cases::FIXTURE.replacen(
        "name: web\n  namespace: default",
        "name: web2\n  namespace: default",
        1,
    );
    c.replace(&without_web);
    let r = ask(s.udp(), &q, false).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
}

/// A server configuration and the answers it must give: a row of `configuration_variants`.
struct Variant {
    name: &'static str,
    /// Whether the tables have had their first sync.
    synced: bool,
    config: fn(&mut DnsConfig),
    /// Battery rows (RCODE and every record) as this configuration must answer them.
    cases: Vec<Case>,
}

/// The rows of `configuration_variants`.
#[rustfmt::skip]
fn variants() -> Vec<Variant> {
    const WEB: &str = "web.default.svc.cluster.local.";
    const MISSING: &str = "missing.default.svc.cluster.local.";
    const NAMESPACE: &str = "default.svc.cluster.local.";
    const POD: &str = "10-244-1-5.default.pod.cluster.local.";
    vec![
        Variant {
            name: "defaults",
            synced: true,
            config: |_| {},
            cases: vec![
                case!(WEB, "A", "NOERROR", ["web.default.svc.cluster.local. 30 IN A 10.96.0.10"]),
                case!(MISSING, "A", "NXDOMAIN", [], ns [SOA]),
                case!(NAMESPACE, "A", "NOERROR", [], ns [SOA]),
                case!(POD, "A", "NOERROR", ["10-244-1-5.default.pod.cluster.local. 30 IN A 10.244.1.5"]),
            ],
        },
        Variant {
            // Before the first sync nothing may be denied: SERVFAIL (with the SOA), never
            // NXDOMAIN; what is known is answered.
            name: "servfail_before_first_sync_never_nxdomain",
            synced: false,
            config: |_| {},
            cases: vec![
                case!(MISSING, "A", "SERVFAIL", [], ns [SOA]),
                case!(NAMESPACE, "A", "SERVFAIL", [], ns [SOA]),
                case!(WEB, "A", "NOERROR", ["web.default.svc.cluster.local. 30 IN A 10.96.0.10"]),
            ],
        },
        Variant {
            name: "pods_disabled",
            synced: true,
            config: |cfg| cfg.pods = PodsMode::Disabled,
            cases: vec![
                case!(POD, "A", "NXDOMAIN", [], ns [SOA]),
                case!(WEB, "A", "NOERROR", ["web.default.svc.cluster.local. 30 IN A 10.96.0.10"]),
            ],
        },
        Variant {
            // Every cluster-zone record, and the SOA (TTL and minimum: the negative TTL).
            name: "ttl_option",
            synced: true,
            config: |cfg| cfg.ttl = 5,
            cases: vec![
                case!(WEB, "A", "NOERROR", ["web.default.svc.cluster.local. 5 IN A 10.96.0.10"]),
                case!(POD, "A", "NOERROR", ["10-244-1-5.default.pod.cluster.local. 5 IN A 10.244.1.5"]),
                case!(MISSING, "A", "NXDOMAIN", [],
                    ns ["cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. * 7200 1800 86400 5"]),
            ],
        },
    ]
}

/// What the sync state, `pods` and `ttl` change, each row on its own server and checked in full
/// (the battery's `check`: RCODE and every record); the first row, the defaults, shows that each
/// change is the configuration's doing.
#[tokio::test]
async fn configuration_variants() {
    let mut failures = Vec::new();
    for v in variants() {
        let c = Cluster::new(cases::FIXTURE, v.synced);
        let s = start(&c.cell, v.config).await;
        for case in &v.cases {
            let q = query_message(case.name, case.qtype.parse().unwrap(), false);
            if let Err(e) = cases::check(case, &ask(s.udp(), &q, false).await) {
                failures.push(format!("[{}] {e}", v.name));
            }
        }
    }
    assert_no_failures(&failures);
}

fn big_headless(n: usize) -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: default}\nspec:\n  clusterIP: None\n  ports: [{name: http, port: 80, protocol: TCP}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: big-1\n  namespace: default\n  labels: {kubernetes.io/service-name: big}\naddressType: IPv4\nports: [{name: http, port: 80, protocol: TCP}]\nendpoints:\n",
    );
    for i in 0..n {
        y.push_str(&format!(
            "  - addresses: [10.2.{}.{}]\n",
            i / 250,
            i % 250 + 1
        ));
    }
    y
}

/// A row of `edns_truncation_and_tcp`: a question whose answer is `records` A records, asked with
/// or without EDNS (payload 1232), over UDP or TCP, and whether the answer is truncated (TC, no
/// records) or whole.
struct Sized {
    records: usize,
    edns: bool,
    tcp: bool,
    truncated: bool,
}

#[tokio::test]
async fn edns_truncation_and_tcp() {
    // 100 A records: 12 + 35 + 100 * 16 bytes, too big for 512 and for 1232; 40 fit in 1232
    // (EDNS) but not in 512 (none). Over TCP both are whole.
    #[rustfmt::skip]
    let rows = [
        Sized { records: 100, edns: false, tcp: false, truncated: true },
        Sized { records: 100, edns: true, tcp: false, truncated: true },
        Sized { records: 100, edns: false, tcp: true, truncated: false },
        Sized { records: 100, edns: true, tcp: true, truncated: false },
        Sized { records: 40, edns: false, tcp: false, truncated: true },
        Sized { records: 40, edns: true, tcp: false, truncated: false },
        Sized { records: 40, edns: false, tcp: true, truncated: false },
        Sized { records: 40, edns: true, tcp: true, truncated: false },
    ];
    let name = "big.default.svc.cluster.local.";
    let mut failures = Vec::new();
    for records in [100, 40] {
        let c = Cluster::new(&big_headless(records), true);
        let s = start(&c.cell, |_| {}).await;
        for row in rows.iter().filter(|r| r.records == records) {
            let addr = if row.tcp { s.tcp() } else { s.udp() };
            let r = ask(addr, &query_message(name, RecordType::A, row.edns), row.tcp).await;
            let answers = if row.truncated { 0 } else { records };
            // An OPT comes back exactly when one was sent, with the server's payload 1232.
            let opt = row.edns.then_some(1232);
            let got = (
                r.metadata.truncation,
                r.answers.len(),
                r.edns.as_ref().map(|e| e.max_payload()),
            );
            if got != (row.truncated, answers, opt) {
                failures.push(format!(
                    "{records} records, edns {}, tcp {}: (TC, answers, OPT payload) {got:?}, want {:?}",
                    row.edns,
                    row.tcp,
                    (row.truncated, answers, opt)
                ));
            }
        }
    }
    assert_no_failures(&failures);
}

#[tokio::test]
async fn badvers_for_edns_version_above_zero() {
    let c = Cluster::new(cases::FIXTURE, true);
    let s = start(&c.cell, |_| {}).await;
    let mut q = query_message("web.default.svc.cluster.local.", RecordType::A, true);
    q.edns.as_mut().unwrap().set_version(1);
    let r = ask(s.udp(), &q, false).await;
    assert_eq!(u16::from(r.metadata.response_code), 16, "BADVERS");
    assert!(r.answers.is_empty());
    assert_eq!(r.edns.as_ref().unwrap().version(), 0);
}

#[tokio::test]
async fn hostile_packets_get_formerr_or_nothing() {
    let c = Cluster::new(cases::FIXTURE, true);
    let s = start(&c.cell, |_| {}).await;
    // Two questions: FORMERR with the ID echoed.
    let mut two = query_message("web.default.svc.cluster.local.", RecordType::A, false)
        .to_vec()
        .unwrap();
    two[5] = 2;
    let r = udp_raw(s.udp(), &two).await;
    assert_eq!(&r[..2], &two[..2]);
    assert_eq!(r[3] & 0xF, 1, "FORMERR");
    // A compression pointer loop in the question.
    let mut ptr = two.clone();
    ptr[5] = 1;
    ptr.truncate(12);
    ptr.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    let r = udp_raw(s.udp(), &ptr).await;
    assert_eq!(r[3] & 0xF, 1, "FORMERR");
    // Random garbage and mutated queries: whatever happens, the server keeps answering.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let base = query_message(
        "_http._tcp.headless.default.svc.cluster.local.",
        RecordType::SRV,
        true,
    )
    .to_vec()
    .unwrap();
    let mut rng = fastrand::Rng::with_seed(42);
    for _ in 0..3000 {
        let mut b = if rng.bool() {
            base.clone()
        } else {
            (0..rng.usize(0..600)).map(|_| rng.u8(..)).collect()
        };
        for _ in 0..rng.usize(0..6) {
            if !b.is_empty() {
                let i = rng.usize(..b.len());
                b[i] = rng.u8(..);
            }
        }
        b.truncate(rng.usize(0..=b.len()));
        let _ = sock.send_to(&b, s.udp()).await;
    }
    let r = ask(
        s.udp(),
        &query_message("web.default.svc.cluster.local.", RecordType::A, false),
        false,
    )
    .await;
    assert_eq!(r.answers.len(), 1);
}

#[tokio::test]
async fn axfr_only_to_allowed_clients_over_tcp() {
    let c = Cluster::new(cases::FIXTURE, true);
    let q = query_message("cluster.local.", RecordType::AXFR, false);
    let s = start(&c.cell, |_| {}).await;
    let r = ask(s.tcp(), &q, true).await;
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::Refused,
        "default: refused"
    );
    let s = start(&c.cell, |cfg| {
        cfg.axfr_allow = vec!["127.0.0.0/8".parse().unwrap()]
    })
    .await;
    let r = ask(s.udp(), &q, false).await;
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::Refused,
        "never over UDP"
    );
    let r = ask(s.tcp(), &q, true).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    let lines: Vec<String> = r.answers.iter().map(cases::line).collect();
    assert!(lines.first().unwrap().contains(" SOA "), "{lines:?}");
    assert!(lines.last().unwrap().contains(" SOA "), "{lines:?}");
    assert!(lines.contains(&"web.default.svc.cluster.local. 30 IN A 10.96.0.10".to_string()));
    assert!(lines.contains(&"_http._tcp.headless.default.svc.cluster.local. 30 IN SRV 0 33 8080 db-0.headless.default.svc.cluster.local.".to_string()));
    assert!(!lines.iter().any(|l| l.contains("in-addr.arpa")));
    let s = start(&c.cell, |cfg| {
        cfg.axfr_allow = vec!["10.0.0.0/8".parse().unwrap()]
    })
    .await;
    let r = ask(s.tcp(), &q, true).await;
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::Refused,
        "not in the list"
    );
}

#[tokio::test]
async fn forwarding_caches_positive_and_negative_answers() {
    let up = FakeUpstream::start().await;
    let c = Cluster::new(cases::FIXTURE, true);
    let s = start(&c.cell, |cfg| cfg.upstreams = vec![up.addr]).await;
    for _ in 0..3 {
        let r = ask(
            s.udp(),
            &query_message("example.org.", RecordType::A, false),
            false,
        )
        .await;
        assert_eq!(r.answers.len(), 1);
        assert!(!r.metadata.authoritative);
        assert!(r.metadata.recursion_available);
        let r = ask(
            s.udp(),
            &query_message("nope.example.", RecordType::A, false),
            false,
        )
        .await;
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    }
    assert_eq!(up.count("example.org."), 1, "positive answer cached");
    assert_eq!(up.count("nope.example."), 1, "negative answer cached");
    // The question's case is echoed, the cache is case-insensitive.
    let r = ask(
        s.udp(),
        &query_message("ExAmple.ORG.", RecordType::A, false),
        false,
    )
    .await;
    assert_eq!(r.queries[0].name().to_ascii(), "ExAmple.ORG.");
    assert_eq!(up.count("example.org."), 1);
    let m = s.metrics();
    assert!(
        m.contains("coredns_cache_hits_total{server=\"dns://"),
        "{m}"
    );
    assert!(m.contains("coredns_forward_requests_total{to=\""), "{m}");
    assert!(m.contains("coredns_dns_requests_total{"), "{m}");
    assert!(m.contains("plugin=\"cache\""), "{m}");
}

#[tokio::test]
async fn truncated_upstream_answer_is_retried_over_tcp() {
    let up = FakeUpstream::start().await;
    let c = Cluster::new(cases::FIXTURE, true);
    let s = start(&c.cell, |cfg| cfg.upstreams = vec![up.addr]).await;
    let r = ask(
        s.tcp(),
        &query_message("big.example.", RecordType::TXT, true),
        true,
    )
    .await;
    assert_eq!(r.answers.len(), 40);
    // Upstream, the question went over UDP first, came back truncated, and was asked again
    // over TCP: exactly those two queries, in that order.
    assert_eq!(up.transports("big.example."), ["udp", "tcp"]);
    assert_eq!(up.count("big.example."), 2);
    // Over UDP the client gets TC and retries over TCP itself.
    let r = ask(
        s.udp(),
        &query_message("big.example.", RecordType::TXT, true),
        false,
    )
    .await;
    assert!(r.metadata.truncation);
}

#[tokio::test]
async fn serve_stale_when_every_upstream_fails() {
    let up = FakeUpstream::start().await;
    let c = Cluster::new(cases::FIXTURE, true);
    let s = start(&c.cell, |cfg| cfg.upstreams = vec![up.addr]).await;
    let q = query_message("short.example.", RecordType::A, false);
    let r = ask(s.udp(), &q, false).await;
    assert_eq!(r.answers.len(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await; // TTL 1 has expired
    up.set_dead(true);
    let r = ask(s.udp(), &q, false).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 1, "stale answer served");
    assert_eq!(up.count("short.example."), 2, "upstream was asked first");
    // Never seen before and no upstream: SERVFAIL.
    let r = ask(
        s.udp(),
        &query_message("example.org.", RecordType::A, false),
        false,
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(s.metrics().contains("coredns_cache_served_stale_total"));
}

#[tokio::test]
async fn failover_to_the_next_upstream_and_health() {
    let dead = FakeUpstream::start().await;
    dead.set_dead(true);
    let good = FakeUpstream::start().await;
    let c = Cluster::new(cases::FIXTURE, true);
    let s = start(&c.cell, |cfg| {
        cfg.upstreams = vec![dead.addr, good.addr];
        cfg.loop_detect = false; // the probe would count as a failure too
    })
    .await;
    for name in ["a1.example.", "a2.example.", "a3.example.", "a4.example."] {
        let r = ask(s.udp(), &query_message(name, RecordType::A, false), false).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{name}");
    }
    // Two failures mark the first upstream down: later queries go to the good one first.
    assert_eq!(dead.count("a1.example.") + dead.count("a2.example."), 2);
    assert_eq!(dead.count("a3.example.") + dead.count("a4.example."), 0);
    // A SERVFAILing upstream also fails over.
    let sf = FakeUpstream::start().await;
    sf.set_servfail(true);
    let s = start(&c.cell, |cfg| cfg.upstreams = vec![sf.addr, good.addr]).await;
    let r = ask(
        s.udp(),
        &query_message("example.org.", RecordType::A, false),
        false,
    )
    .await;
    assert_eq!(r.answers.len(), 1);
}

/// One UDP query sent once (no resend: a resend would be a second query for a slot), and its
/// answer's code; panics without an answer within 20 s.
async fn ask_once(server: SocketAddr, name: &str) -> ResponseCode {
    let q = query_message(name, RecordType::A, false);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server).await.unwrap();
    sock.send(&q.to_vec().unwrap()).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(20), sock.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no answer for {name}"))
        .unwrap();
    let r = hickory_proto::op::Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(r.metadata.id, q.metadata.id);
    r.metadata.response_code
}

#[tokio::test]
async fn refused_beyond_the_in_flight_limit() {
    let up = FakeUpstream::start().await;
    // Answers are held, so the two slots stay taken for as long as the test says.
    up.set_held(true);
    let c = Cluster::new(cases::FIXTURE, true);
    let s = Arc::new(
        start(&c.cell, |cfg| {
            cfg.upstreams = vec![up.addr];
            cfg.max_concurrent_forwards = 2;
            cfg.forward_timeout = Duration::from_secs(20);
        })
        .await,
    );
    let mut held = Vec::new();
    for i in 0..2 {
        let (addr, name) = (s.udp(), format!("q{i}.example."));
        held.push(tokio::spawn(async move { ask_once(addr, &name).await }));
    }
    // Both are in flight upstream: every slot is taken.
    up.wait_count("q0.example.", 1, Duration::from_secs(10))
        .await;
    up.wait_count("q1.example.", 1, Duration::from_secs(10))
        .await;
    let mut refused = Vec::new();
    for i in 2..6 {
        refused.push(ask_once(s.udp(), &format!("q{i}.example.")).await);
    }
    assert_eq!(refused, [ResponseCode::Refused; 4]);
    assert_eq!(
        up.count_suffix(".example."),
        2,
        "refused queries went upstream"
    );
    // Cluster names never wait for a forwarding slot: answered while both are still taken.
    let r = ask(
        s.udp(),
        &query_message("web.default.svc.cluster.local.", RecordType::A, false),
        false,
    )
    .await;
    assert_eq!(r.answers.len(), 1, "cluster name while the slots are taken");
    assert!(held.iter().all(|t| !t.is_finished()), "slots were released");
    up.set_held(false);
    for t in held {
        assert_eq!(t.await.unwrap(), ResponseCode::NXDomain);
    }
    let m = s.metrics();
    assert!(
        m.lines()
            .any(|l| l == "coredns_forward_max_concurrent_rejects_total 4"),
        "{m}"
    );
}

#[tokio::test]
async fn forwarding_loop_is_detected_and_stopped() {
    // Find a free port, then point the server's upstream at itself.
    let port = cases::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let c = Cluster::new(cases::FIXTURE, true);
    let s = start(&c.cell, |cfg| {
        cfg.listen = vec![addr];
        cfg.upstreams = vec![addr];
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !s.server.loop_detected() {
        assert!(std::time::Instant::now() < deadline, "loop not detected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = ask(
        s.udp(),
        &query_message("example.org.", RecordType::A, false),
        false,
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    // Cluster names still work.
    let r = ask(
        s.udp(),
        &query_message("web.default.svc.cluster.local.", RecordType::A, false),
        false,
    )
    .await;
    assert_eq!(r.answers.len(), 1);
}

/// A graceful shutdown answers over UDP and TCP for its whole lame-duck period, and only then
/// closes both ports.
#[tokio::test]
async fn lame_duck_keeps_answering_then_stops() {
    let c = Cluster::new(cases::FIXTURE, true);
    let s = start(&c.cell, |_| {}).await;
    let (udp, tcp) = (s.udp(), s.tcp());
    let q = query_message("web.default.svc.cluster.local.", RecordType::A, false);
    let lame_duck = Duration::from_secs(3);
    let began = std::time::Instant::now();
    let stopping = s.server.shutdown(lame_duck);
    tokio::pin!(stopping);
    // Polled once, the shutdown has begun: it is in its lame-duck period, not finished.
    let first = tokio::time::timeout(Duration::ZERO, &mut stopping).await;
    assert!(
        first.is_err(),
        "shutdown finished without a lame-duck period"
    );
    // Queries are answered while the shutdown is still under way (over UDP and TCP).
    for over_tcp in [false, true] {
        let addr = if over_tcp { tcp } else { udp };
        let r = tokio::select! {
            biased;
            _ = &mut stopping => panic!("stopped before answering (tcp: {over_tcp})"),
            r = ask(addr, &q, over_tcp) => r,
        };
        assert_eq!(r.answers.len(), 1, "answers during the lame-duck period");
    }
    tokio::time::timeout(Duration::from_secs(20), &mut stopping)
        .await
        .expect("shutdown finishes after its lame-duck period");
    assert!(
        began.elapsed() >= lame_duck,
        "stopped after {:?}, before the end of the {lame_duck:?} lame-duck period",
        began.elapsed()
    );
    // Then it stops, shown by evidence rather than by a silence of some length: both ports are
    // closed. A UDP query is refused, never answered; a TCP connection is refused (a listener
    // still open would accept it, even unserved).
    if let Err(e) = udp_refused(udp, &q.to_vec().unwrap()).await {
        panic!("UDP {udp} after the shutdown: {e}");
    }
    match tokio::net::TcpStream::connect(tcp).await {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("TCP {tcp} after the shutdown: {e}"),
        Ok(_) => panic!("TCP {tcp} still accepts connections after the shutdown"),
    }
}

/// What a UDP query to `server` meets where no server should be: `Ok` once the port refuses it
/// (the kernel's port unreachable, surfacing as ECONNREFUSED on the connected socket), or `Err`
/// saying what happened instead: an answer, another error, or 10 s without either (a socket
/// still bound but no longer read). The query is resent every 200 ms: a silence decides nothing.
async fn udp_refused(server: SocketAddr, query: &[u8]) -> Result<(), String> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        // The refusal of an earlier datagram can surface on the send as well.
        let got = match sock.send(query).await {
            Err(e) => Err(e),
            Ok(_) => {
                let wait = Duration::from_millis(200);
                match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
                    Ok(r) => r,
                    Err(_) => continue,
                }
            }
        };
        return match got {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => Err(format!("{e}")),
            Ok(n) => Err(format!("answered ({n} bytes)")),
        };
    }
    Err("neither answered nor refused in 10 s: the socket is still bound".into())
}

#[tokio::test]
async fn ipv6_listener_udp_and_tcp() {
    let c = Cluster::new(cases::FIXTURE, true);
    let s = start(&c.cell, |cfg| cfg.listen = vec!["[::1]:0".parse().unwrap()]).await;
    assert!(s.udp().is_ipv6());
    let q = query_message("dual.default.svc.cluster.local.", RecordType::AAAA, true);
    let sock = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
    sock.send_to(&q.to_vec().unwrap(), s.udp()).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let r = hickory_proto::op::Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(
        cases::line(&r.answers[0]),
        "dual.default.svc.cluster.local. 30 IN AAAA fd00::11"
    );
    let r = ask(s.tcp(), &q, true).await;
    assert_eq!(r.answers.len(), 1);
    assert!(s.metrics().contains("family=\"2\""));
}

/// Queries arriving together are taken in batches (`recvmmsg`) and answered in batches
/// (`sendmmsg`): every query of a burst gets its own answer, to its own ID, with garbage
/// datagrams in between dropped without disturbing the rest of the batch.
#[tokio::test]
async fn a_burst_of_queries_gets_every_answer_to_its_id() {
    let c = Cluster::new(cases::FIXTURE, true);
    let s = start(&c.cell, |cfg| cfg.udp_workers = 1).await;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let names = [
        ("web.default.svc.cluster.local.", ResponseCode::NoError),
        ("nope.default.svc.cluster.local.", ResponseCode::NXDomain),
        ("dual.default.svc.cluster.local.", ResponseCode::NoError),
    ];
    let mut buf = vec![0u8; 2048];
    // Waves small enough for any socket buffer, so nothing is lost to an overflow.
    for wave in 0..10u16 {
        let mut want = std::collections::HashMap::new();
        for i in wave * 30..(wave + 1) * 30 {
            if i % 10 == 5 {
                // Too short to be a DNS header: dropped.
                sock.send_to(&[0xde, 0xad], s.udp()).unwrap();
            }
            let (name, rcode) = names[usize::from(i) % names.len()];
            let mut q = query_message(name, RecordType::A, i % 2 == 0);
            q.metadata.id = i;
            sock.send_to(&q.to_vec().unwrap(), s.udp()).unwrap();
            want.insert(i, (name, rcode));
        }
        while !want.is_empty() {
            let (n, _) = sock.recv_from(&mut buf).unwrap_or_else(|e| {
                let mut ids: Vec<_> = want.keys().collect();
                ids.sort();
                panic!("{} answers missing ({ids:?}): {e}", want.len())
            });
            let r = hickory_proto::op::Message::from_vec(&buf[..n]).unwrap();
            let (name, rcode) = want
                .remove(&r.metadata.id)
                .unwrap_or_else(|| panic!("unexpected or repeated answer id {}", r.metadata.id));
            assert_eq!(r.metadata.response_code, rcode, "{name}");
            assert_eq!(r.queries[0].name().to_ascii(), name);
        }
    }
}
