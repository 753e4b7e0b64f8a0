//! The DNS server alone over a directory of manifests, loaded once (no watcher, no controller
//! task): the benchmark's view of the DNS data path (bench/dns/compare.sh).
//!
//! `cargo run --release -p dns --example serve -- DIR ADDR [UPSTREAM]` (env `UDP_WORKERS`,
//! `TOKIO_WORKER_THREADS`)

use std::path::Path;
use std::time::Duration;

use dns::{DnsConfig, DnsServer};
use tables::{ClusterState, Origin, SourceId, TableConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, addr) = match (args.get(1), args.get(2)) {
        (Some(d), Some(a)) => (d.clone(), a.parse().expect("ADDR")),
        _ => {
            eprintln!("usage: serve DIR ADDR [UPSTREAM]");
            std::process::exit(2);
        }
    };
    let upstreams = args
        .get(3)
        .map(|u| vec![u.parse().expect("UPSTREAM")])
        .unwrap_or_default();
    let mut state = ClusterState::new(TableConfig::default());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("DIR")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read");
        let objects = controller::parse::parse_manifest(Path::new(&path), &text)
            .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()))
            .iter()
            .map(|o| controller::convert::convert(o, "default").expect("convert"))
            .collect();
        let source = SourceId::new(Origin::Manifests, &path.to_string_lossy());
        state.reset(&source, objects, &[]);
    }
    state.set_synced(true);
    let cell = tables::new_cell("cluster.local");
    cell.store(state.commit().expect("a snapshot"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let cfg = DnsConfig {
            listen: vec![addr],
            upstreams,
            loop_detect: false,
            udp_workers: std::env::var("UDP_WORKERS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(DnsConfig::default().udp_workers),
            ..Default::default()
        };
        let registry = prometheus::Registry::new();
        let server = DnsServer::spawn(cfg, cell, &registry).await.expect("spawn");
        eprintln!("serving on {:?}", server.listeners);
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    });
}
