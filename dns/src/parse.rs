//! Query name → what kind of name it is. Names arrive lower-case, without the trailing dot.
//!
//! Accepted shapes inside the cluster zone `<zone>` (Kubernetes DNS spec 1.1.0 and CoreDNS):
//!
//! ```text
//!   <zone>                                    apex: SOA, NS
//!   dns-version.<zone>                        TXT "1.1.0"
//!   ns.dns.<zone>                             A/AAAA of this server (see `zone.rs`)
//!   svc.<zone>, pod.<zone>, dns.<zone>        empty non-terminals (NODATA)
//!   <a-b-c-d>.<ns>.pod.<zone>                 pod records (`--pods insecure`)
//!   anything else under <zone>                looked up in the compiled DnsTable:
//!     <ns>.svc.<zone>                           namespace (NODATA while it has services)
//!     <svc>.<ns>.svc.<zone>                     ClusterIPs / ready endpoints / CNAME
//!     <endpoint>.<svc>.<ns>.svc.<zone>          one endpoint of a headless service
//!     _<port>._<proto>.<svc>.<ns>.svc.<zone>    SRV
//!     _<proto>.<svc>.<ns>.svc.<zone>            empty non-terminal
//! ```
//!
//! Reverse names (`*.in-addr.arpa`, `*.ip6.arpa`) are answered from the table when it holds
//! them (ClusterIPs and headless endpoints) and forwarded otherwise, as CoreDNS does with
//! `fallthrough in-addr.arpa ip6.arpa`. Wildcard names (`*.svc...`, deprecated in the spec)
//! are not expanded: they are ordinary names that do not exist.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Where a query name belongs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameKind<'a> {
    /// The cluster zone; `rel` is the part before `.<zone>` (empty at the apex).
    Cluster { rel: &'a str },
    /// A reverse name (answered from the table if there, forwarded if not).
    Reverse,
    /// Anything else: forwarded.
    Outside,
}

pub fn classify<'a>(name: &'a str, zone: &str) -> NameKind<'a> {
    if name == zone {
        return NameKind::Cluster { rel: "" };
    }
    if let Some(rel) = name.strip_suffix(zone) {
        if let Some(rel) = rel.strip_suffix('.') {
            return NameKind::Cluster { rel };
        }
    }
    if name.ends_with(".in-addr.arpa") || name.ends_with(".ip6.arpa") {
        return NameKind::Reverse;
    }
    NameKind::Outside
}

/// A name under `pod.<zone>`: `rel` without the `.pod` suffix (e.g. `10-0-0-1.default`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodName {
    /// `<ns>.pod.<zone>` or `pod.<zone>`: no records.
    Namespace,
    /// `<dashed-ip>.<ns>.pod.<zone>` with a valid address.
    Address(IpAddr),
    /// Anything else (bad address, too many labels).
    Invalid,
}

pub fn parse_pod(rel: &str) -> Option<PodName> {
    if rel == "pod" {
        return Some(PodName::Namespace);
    }
    let rest = rel.strip_suffix(".pod")?;
    let labels: Vec<&str> = rest.split('.').collect();
    Some(match labels.as_slice() {
        [_ns] => PodName::Namespace,
        [addr, _ns] => match dashed_ip(addr) {
            Some(ip) => PodName::Address(ip),
            None => PodName::Invalid,
        },
        _ => PodName::Invalid,
    })
}

/// `10-0-0-1` → 10.0.0.1, `fd00--1` → fd00::1 (as CoreDNS and the spec write pod addresses).
pub fn dashed_ip(label: &str) -> Option<IpAddr> {
    if label.contains('.') || label.contains(':') {
        return None;
    }
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        // Reject non-canonical spellings such as `010-0-0-1`.
        if v4.to_string().replace('.', "-") == label {
            return Some(IpAddr::V4(v4));
        }
        return None;
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let z = "cluster.local";
        assert_eq!(classify("cluster.local", z), NameKind::Cluster { rel: "" });
        assert_eq!(
            classify("web.default.svc.cluster.local", z),
            NameKind::Cluster {
                rel: "web.default.svc"
            }
        );
        assert_eq!(classify("xcluster.local", z), NameKind::Outside);
        assert_eq!(classify("example.com", z), NameKind::Outside);
        assert_eq!(classify("1.0.0.10.in-addr.arpa", z), NameKind::Reverse);
    }

    #[test]
    fn pods() {
        assert_eq!(parse_pod("pod"), Some(PodName::Namespace));
        assert_eq!(parse_pod("default.pod"), Some(PodName::Namespace));
        assert_eq!(
            parse_pod("10-0-0-1.default.pod"),
            Some(PodName::Address("10.0.0.1".parse().unwrap()))
        );
        assert_eq!(
            parse_pod("fd00--1.default.pod"),
            Some(PodName::Address("fd00::1".parse().unwrap()))
        );
        assert_eq!(parse_pod("10-0-0.default.pod"), Some(PodName::Invalid));
        assert_eq!(parse_pod("a.10-0-0-1.default.pod"), Some(PodName::Invalid));
        assert_eq!(parse_pod("web.default.svc"), None);
    }
}
