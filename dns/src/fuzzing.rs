//! The query path without sockets, for the fuzz target (`dns/fuzz`) and the random-input unit
//! test: raw bytes in, the bytes the server would send out.
//!
//! Forwarded names stop at the forwarding step (no upstream is contacted): the synchronous
//! path — parsing, the cluster zone, templates, EDNS, truncation, transfers — is what faces
//! untrusted input before any I/O happens.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use prometheus::Registry;
use tables::model::{
    AddressType, Conditions, Endpoint, EndpointPort, EndpointSlice, Object, PortRef, Protocol,
    Service, ServicePort, ServiceType,
};
use tables::{ClusterState, Origin, SnapshotCell, SourceId, TableConfig};

use crate::config::DnsConfig;
use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::server::{Shared, Step, Templates};
use crate::zone::ZoneSettings;

/// A small cluster: a ClusterIP service, a dual-stack one, a headless one with endpoints, an
/// ExternalName.
pub fn sample_cell() -> SnapshotCell {
    let ip = |s: &str| s.parse::<IpAddr>().expect("static address");
    let port = |name: &str, p: u16| ServicePort {
        name: name.into(),
        protocol: Protocol::Tcp,
        port: p,
        target_port: PortRef::Number(p),
        node_port: None,
        app_protocol: None,
    };
    let svc = |name: &str, ips: &[&str], headless: bool| Service {
        namespace: "default".into(),
        name: name.into(),
        cluster_ips: ips.iter().map(|s| ip(s)).collect(),
        headless,
        ports: vec![port("http", 80)],
        ..Default::default()
    };
    let endpoints = (1..=30)
        .map(|i| Endpoint {
            addresses: ip(&format!("10.1.0.{i}")).into(),
            hostname: (i % 2 == 0).then(|| format!("pod-{i}").into()),
            conditions: Conditions {
                ready: Some(i % 7 != 0),
                ..Default::default()
            },
            ..Default::default()
        })
        .collect();
    let objects = vec![
        Object::Service(svc("web", &["10.96.0.10"], false).into()),
        Object::Service(svc("dual", &["10.96.0.11", "fd00::11"], false).into()),
        Object::Service(svc("db", &[], true).into()),
        Object::EndpointSlice(EndpointSlice {
            trigger_time: None,
            namespace: "default".into(),
            name: "db-1".into(),
            service_name: Some("db".into()),
            address_type: AddressType::IPv4,
            ports: vec![EndpointPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
                app_protocol: None,
            }],
            endpoints,
        }),
        Object::Service(
            Service {
                namespace: "default".into(),
                name: "ext".into(),
                service_type: ServiceType::ExternalName,
                external_name: Some("example.com".into()),
                ..Default::default()
            }
            .into(),
        ),
    ];
    let mut state = ClusterState::new(TableConfig::default());
    state.reset(&SourceId::new(Origin::Manifests, "sample"), objects, &[]);
    state.set_synced(true);
    let cell = tables::new_cell("cluster.local");
    if let Some(s) = state.commit() {
        cell.store(s);
    }
    cell
}

/// The synchronous query path over a fixed snapshot.
pub struct Harness {
    shared: Shared,
    templates: Templates,
    out: Vec<u8>,
}

impl Harness {
    pub fn new(cell: SnapshotCell) -> Harness {
        let metrics = Metrics::new(&Registry::new()).expect("fresh registry");
        let cfg = DnsConfig {
            axfr_allow: vec!["127.0.0.0/8".parse().expect("static CIDR")],
            ..Default::default()
        };
        Harness {
            shared: Shared {
                cell,
                settings: ZoneSettings {
                    ttl: 30,
                    pods: cfg.pods,
                    self_addrs: vec![],
                },
                axfr_allow: cfg.axfr_allow.clone(),
                forwarder: Arc::new(Forwarder::new(&cfg, metrics.clone(), "dns://fuzz".into())),
                metrics,
                tcp_templates: Default::default(),
            },
            templates: Templates::default(),
            out: Vec::new(),
        }
    }

    /// What the server would send for `raw` over UDP (or TCP): `None` when it drops the packet
    /// or would forward it.
    pub fn handle(&mut self, raw: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let src: SocketAddr = "127.0.0.1:5353".parse().expect("static address");
        match self
            .shared
            .handle(raw, src, tcp, &mut self.templates, &mut self.out)
        {
            Step::Reply(_) => Some(self.out.clone()),
            Step::Xfr(messages, _) => messages.into_iter().next(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if name.len() & 1 == 0 {
            m.set_edns(Edns::new());
        }
        m.to_vec().unwrap()
    }

    /// Random and mutated packets: never a panic, and every answer is a well-formed message
    /// whose ID is the query's.
    #[test]
    fn random_and_truncated_input() {
        let mut h = Harness::new(sample_cell());
        let seeds: Vec<Vec<u8>> = [
            ("web.default.svc.cluster.local.", RecordType::A),
            ("db.default.svc.cluster.local.", RecordType::A),
            ("_http._tcp.db.default.svc.cluster.local.", RecordType::SRV),
            ("ext.default.svc.cluster.local.", RecordType::CNAME),
            ("10.0.96.10.in-addr.arpa.", RecordType::PTR),
            ("cluster.local.", RecordType::AXFR),
            ("cluster.local.", RecordType::NS),
            ("10-1-0-1.default.pod.cluster.local.", RecordType::A),
        ]
        .iter()
        .map(|(n, t)| query(n, *t))
        .collect();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut answered = 0;
        for i in 0..100_000 {
            let mut b = if i % 5 == 0 {
                (0..rng.usize(0..300)).map(|_| rng.u8(..)).collect()
            } else {
                seeds[rng.usize(..seeds.len())].clone()
            };
            for _ in 0..rng.usize(0..5) {
                if !b.is_empty() {
                    let j = rng.usize(..b.len());
                    b[j] = rng.u8(..);
                }
            }
            if rng.bool() {
                b.truncate(rng.usize(0..=b.len()));
            }
            if let Some(resp) = h.handle(&b, rng.bool()) {
                answered += 1;
                assert_eq!(resp[..2], b[..2], "answer ID");
                assert!(resp[2] & 0x80 != 0, "QR set");
                Message::from_vec(&resp)
                    .unwrap_or_else(|e| panic!("unparsable answer {resp:?} to {b:?}: {e}"));
            }
        }
        assert!(answered > 10_000, "{answered}");
    }
}
