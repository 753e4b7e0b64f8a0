//! The status writer's settings from the command line and the pod's environment.
//!
//! Identity in the Lease: `$POD_NAME` (the downward API, as deploy/node/daemonset.yaml sets
//! it), else the host name with the process id. Namespace: `--leader-election-namespace`, else
//! `$POD_NAMESPACE`, else the service account's namespace file, else `default`.

use anyhow::Context;
use controller::status::{Address, LeaseConfig, StatusConfig};

use crate::config::Config;

/// The Lease's name: one writer per cluster (per namespace of the Lease).
pub const LEASE_NAME: &str = "switchboard-status";

const SA_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The status settings, or an error naming the flag that does not parse.
pub fn config(cfg: &Config) -> anyhow::Result<StatusConfig> {
    let namespace = cfg
        .leader_election_namespace
        .clone()
        .or_else(|| env("POD_NAMESPACE"))
        .or_else(|| {
            std::fs::read_to_string(SA_NAMESPACE)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "default".into());
    let identity = env("POD_NAME").unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "switchboard".into());
        format!("{host}-{}", std::process::id())
    });
    let mut lease = LeaseConfig::new(&namespace, LEASE_NAME, &identity);
    let d = cfg.leader_election_lease_duration;
    lease.lease_duration = d;
    lease.renew_deadline = d * 2 / 3;
    lease.retry = d * 2 / 15;
    let publish_service = match &cfg.publish_service {
        None => None,
        Some(s) => {
            let (ns, name) = s
                .split_once('/')
                .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
                .with_context(|| format!("--publish-service {s:?}: expected NAMESPACE/NAME"))?;
            Some((ns.to_string(), name.to_string()))
        }
    };
    Ok(StatusConfig {
        lease,
        gateway_controller: cfg.gateway_controller.clone(),
        ingress_class: cfg.ingress_class.clone(),
        addresses: cfg
            .gateway_address
            .iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| Address::parse(a))
            .collect(),
        publish_service,
        // Set by `run` when this replica runs the HTTP proxy.
        ports: None,
    })
}
