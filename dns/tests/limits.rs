//! The DNS server under hostile clients, in process: TCP connection limits (per client, global,
//! eviction of the oldest idle connection, write timeout), forwarding loops that form after
//! start, and large answers that must stay cheap.

#[path = "support/cases.rs"]
mod cases;
#[path = "support/upstream.rs"]
mod upstream;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use cases::{ask, query_message};
use dns::{DnsConfig, DnsServer};
use hickory_proto::rr::RecordType;
use prometheus::Registry;
use tables::{ClusterState, Object, Origin, SnapshotCell, SourceId, TableConfig};

fn cell_of(yaml: &str) -> SnapshotCell {
    let objects: Vec<Object> = controller::parse::parse_manifest(Path::new("fixture.yaml"), yaml)
        .unwrap()
        .iter()
        .map(|o| controller::convert::convert(o, "default").unwrap())
        .collect();
    let mut state = ClusterState::new(TableConfig::default());
    let source = SourceId::new(Origin::Manifests, "fixture.yaml");
    state.reset(&source, objects, &[]);
    state.set_synced(true);
    let cell = tables::new_cell("cluster.local");
    cell.store(state.commit().unwrap());
    cell
}

struct Running {
    server: DnsServer,
    registry: Registry,
}

impl Running {
    fn tcp(&self) -> SocketAddr {
        self.server.listeners[0].tcp
    }
    fn metrics(&self) -> String {
        let mut buf = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &self.registry.gather(),
            &mut buf,
        )
        .unwrap();
        String::from_utf8(buf).unwrap()
    }
}

async fn start(cell: &SnapshotCell, f: impl FnOnce(&mut DnsConfig)) -> Running {
    let mut cfg = DnsConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        forward_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    f(&mut cfg);
    let registry = Registry::new();
    let server = DnsServer::spawn(cfg, cell.clone(), &registry)
        .await
        .unwrap();
    Running { server, registry }
}

/// A ClusterIP Service with `n` named TCP ports.
fn many_ports(n: usize) -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: wide, namespace: default}\nspec:\n  clusterIP: 10.96.5.5\n  ports:\n",
    );
    for i in 0..n {
        y.push_str(&format!(
            "  - {{name: p{i}, port: {}, protocol: TCP}}\n",
            1000 + i
        ));
    }
    y
}

#[tokio::test]
async fn srv_with_ten_thousand_ports_is_cheap_over_tcp() {
    let cell = cell_of(&many_ports(10_000));
    let s = start(&cell, |_| {}).await;
    let name = "wide.default.svc.cluster.local.";
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = ask(s.tcp(), &query_message(name, RecordType::SRV, false), true).await;
        times.push(t.elapsed());
        eprintln!("{:?} tc={} answers={}", t.elapsed(), r.metadata.truncation, r.answers.len());
    }
}
