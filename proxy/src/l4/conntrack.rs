//! UDP conntrack cleanup for the kernel path, as kube-proxy does it: when an endpoint leaves a
//! UDP service port, the conntrack entries DNATed to it are deleted, so the flow's next
//! datagram is NATed afresh — to a live endpoint — instead of following the stale entry into a
//! blackhole for as long as the client keeps sending.
//!
//! Uses the `conntrack` tool (Debian package `conntrack`): `conntrack -D -p udp --dst-nat IP`.
//! Without it, the cleanup is skipped with one warning and stale UDP flows last until their
//! conntrack timeout (30 s unreplied, 120 s assured) — the behaviour of a node without
//! kube-proxy's cleanup.

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

static MISSING_WARNED: AtomicBool = AtomicBool::new(false);

/// The distinct endpoint addresses that UDP chains stopped using.
fn udp_targets(gone: &[(Arc<str>, IpAddr)]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = gone
        .iter()
        .filter(|(chain, _)| chain.contains("/udp/"))
        .map(|(_, ip)| *ip)
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Deletes the UDP conntrack entries DNATed to the endpoints UDP chains stopped using.
/// Returns how many endpoints were cleaned.
pub async fn forget_udp(gone: &[(Arc<str>, IpAddr)]) -> usize {
    let ips = udp_targets(gone);
    if ips.is_empty() {
        return 0;
    }
    let n = ips.len();
    let result = tokio::task::spawn_blocking(move || {
        for ip in ips {
            let family = if ip.is_ipv6() { "ipv6" } else { "ipv4" };
            // Exit 1 with "0 flow entries have been deleted" is the common case: nothing stale.
            Command::new("conntrack")
                .args([
                    "-D",
                    "-f",
                    family,
                    "-p",
                    "udp",
                    "--dst-nat",
                    &ip.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
        }
        Ok::<(), std::io::Error>(())
    })
    .await
    .expect("conntrack runner does not panic");
    if let Err(e) = result {
        if !MISSING_WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "l4: cannot run conntrack (Debian package conntrack); UDP flows to removed endpoints last until their conntrack entries time out");
        }
        return 0;
    }
    tracing::debug!(
        endpoints = n,
        "l4: deleted UDP conntrack entries of removed endpoints"
    );
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_udp_chains_and_each_address_once() {
        let gone: Vec<(Arc<str>, IpAddr)> = vec![
            ("svc-a/b/udp/53/int4".into(), "10.0.0.1".parse().unwrap()),
            ("svc-a/b/udp/53/ext4".into(), "10.0.0.1".parse().unwrap()),
            ("svc-a/b/tcp/53/int4".into(), "10.0.0.2".parse().unwrap()),
        ];
        assert_eq!(
            udp_targets(&gone),
            vec!["10.0.0.1".parse::<IpAddr>().unwrap()]
        );
    }
}
