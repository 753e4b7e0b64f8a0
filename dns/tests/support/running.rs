//! A DNS server started in-process on 127.0.0.1 port 0 for the crate's integration tests, with
//! its Prometheus registry.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dns::{DnsConfig, DnsServer};
use prometheus::Registry;
use tables::SnapshotCell;

pub struct Running {
    pub server: DnsServer,
    pub registry: Registry,
}

impl Running {
    pub fn udp(&self) -> SocketAddr {
        self.server.listeners[0].udp
    }
    pub fn tcp(&self) -> SocketAddr {
        self.server.listeners[0].tcp
    }
    pub fn metrics(&self) -> String {
        let mut buf = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &self.registry.gather(),
            &mut buf,
        )
        .unwrap();
        String::from_utf8(buf).unwrap()
    }
    /// The value of one sample (`name{labels}` exactly as exposed, or `name`), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
    /// Waits (polling, up to `within`) until `series` is at least `min`.
    pub async fn wait_metric(&self, series: &str, min: f64, within: Duration) {
        let until = Instant::now() + within;
        loop {
            let v = self.metric(series);
            if v >= min {
                return;
            }
            assert!(
                Instant::now() < until,
                "{series} = {v}, wanted >= {min} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts a server on 127.0.0.1:0 over `cell`, with a 300 ms forward timeout and what `f`
/// changes.
pub async fn start(cell: &SnapshotCell, f: impl FnOnce(&mut DnsConfig)) -> Running {
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
