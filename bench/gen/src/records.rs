//! The DNS records the Kubernetes DNS-Based Service Discovery spec (1.1.0) prescribes for a
//! synthetic cluster, computed from the objects alone (never from switchboard's tables), and
//! written for each DNS peer: RFC 1035 zone files (Knot DNS, NSD), `local-data` (Unbound) and
//! hosts/`srv-host` lines (dnsmasq).
//!
//! Records, for zone `Z` and a service `S` in namespace `N`:
//! - ClusterIP service: `S.N.svc.Z A <clusterIP>`; `_<port>._<proto>.S.N.svc.Z SRV 0 100
//!   <port> S.N.svc.Z.` per named port; `PTR` from the ClusterIP's reverse name to `S.N.svc.Z`.
//! - Headless service, per ready endpoint address `ip` whose name is `H` (the endpoint's
//!   `hostname`, else the address with dashes, as CoreDNS names it): `S.N.svc.Z A ip`,
//!   `H.S.N.svc.Z A ip`, `PTR` from `ip`'s reverse name to `H.S.N.svc.Z`, and per named port
//!   `_<port>._<proto>.S.N.svc.Z SRV 0 <w> <endpoint port> H.S.N.svc.Z.`, where `w` is 100 split
//!   evenly over the records at the name (CoreDNS's weights).
//! - `dns-version.Z TXT "1.1.0"` (the schema version record), and the apex `SOA`/`NS` with
//!   `ns.dns.Z A 10.96.0.10` (what CoreDNS answers for the apex `NS`).
//!
//! Reverse records go in one zone, `10.in-addr.arpa` (every synthetic address is in 10/8).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use tables::model::{Endpoint, EndpointSlice, Service};

/// TTL of every record, as switchboard's default (`--ttl 30`, the stock Corefile's).
pub const TTL: u32 = 30;
/// The reverse zone all synthetic addresses fall in.
pub const REVERSE_ZONE: &str = "10.in-addr.arpa";
/// The address `ns.dns.<zone>` answers with (below the ClusterIPs the generator hands out).
pub const NS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RData {
    A(Ipv4Addr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Ptr(String),
    Txt(String),
}

impl RData {
    pub fn rtype(&self) -> &'static str {
        match self {
            RData::A(_) => "A",
            RData::Srv { .. } => "SRV",
            RData::Ptr(_) => "PTR",
            RData::Txt(_) => "TXT",
        }
    }

    /// The RDATA as zone files and `dig` print it (names absolute, with the trailing dot).
    pub fn text(&self) -> String {
        match self {
            RData::A(ip) => ip.to_string(),
            RData::Srv {
                priority,
                weight,
                port,
                target,
            } => format!("{priority} {weight} {port} {target}."),
            RData::Ptr(t) => format!("{t}."),
            RData::Txt(t) => format!("\"{t}\""),
        }
    }
}

/// Every record of the cluster, by owner name (lower case, no trailing dot).
#[derive(Clone, Debug, Default)]
pub struct Records {
    pub zone: String,
    pub names: BTreeMap<String, Vec<RData>>,
}

/// What the generator knows about each service's names, for queries and checks.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// `S.N.svc.Z` of ClusterIP services.
    pub cluster_ip: Vec<String>,
    /// `S.N.svc.Z` of headless services.
    pub headless: Vec<String>,
    /// `H.S.N.svc.Z` of headless endpoints, with and without a `hostname`.
    pub endpoint_hostname: Vec<String>,
    pub endpoint_dashed: Vec<String>,
    /// `_<port>._<proto>.S.N.svc.Z` of ClusterIP and headless services.
    pub srv_cluster_ip: Vec<String>,
    pub srv_headless: Vec<String>,
    /// Reverse names of ClusterIPs and of headless endpoints.
    pub ptr_cluster_ip: Vec<String>,
    pub ptr_endpoint: Vec<String>,
    /// Namespaces with at least one service.
    pub namespaces: Vec<String>,
}

pub fn reverse_name(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
}

fn endpoint_label(ep: &Endpoint, ip: Ipv4Addr) -> String {
    match &ep.hostname {
        Some(h) => h.to_ascii_lowercase(),
        None => ip.to_string().replace('.', "-"),
    }
}

fn v4(ip: &IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v) => Some(*v),
        IpAddr::V6(_) => None,
    }
}

impl Records {
    /// The records of `services` (with their slices: `slices[i]` belongs to `services[i]`).
    pub fn build(zone: &str, services: &[Service], slices: &[EndpointSlice]) -> (Records, Names) {
        let mut r = Records {
            zone: zone.to_string(),
            names: BTreeMap::new(),
        };
        let mut n = Names::default();
        let mut namespaces = std::collections::BTreeSet::new();
        let add = |r: &mut Records, name: String, rd: RData| {
            r.names.entry(name).or_default().push(rd);
        };
        add(
            &mut r,
            format!("dns-version.{zone}"),
            RData::Txt("1.1.0".into()),
        );
        add(&mut r, format!("ns.dns.{zone}"), RData::A(NS_IP));
        for (svc, slice) in services.iter().zip(slices) {
            namespaces.insert(svc.namespace.clone());
            let svc_name =
                format!("{}.{}.svc.{zone}", svc.name, svc.namespace).to_ascii_lowercase();
            let named: Vec<_> = svc.ports.iter().filter(|p| !p.name.is_empty()).collect();
            if svc.headless {
                n.headless.push(svc_name.clone());
                for ep in slice
                    .endpoints
                    .iter()
                    .filter(|e| e.conditions.ready != Some(false))
                {
                    for ip in ep.addresses.iter().filter_map(v4) {
                        let ep_name = format!("{}.{svc_name}", endpoint_label(ep, ip));
                        add(&mut r, svc_name.clone(), RData::A(ip));
                        add(&mut r, ep_name.clone(), RData::A(ip));
                        add(&mut r, reverse_name(ip), RData::Ptr(ep_name.clone()));
                        n.ptr_endpoint.push(reverse_name(ip));
                        if ep.hostname.is_some() {
                            n.endpoint_hostname.push(ep_name.clone());
                        } else {
                            n.endpoint_dashed.push(ep_name.clone());
                        }
                        for sp in &named {
                            let Some(port) = slice
                                .ports
                                .iter()
                                .find(|p| p.name == sp.name && p.protocol == sp.protocol)
                            else {
                                continue;
                            };
                            let srv = format!(
                                "_{}.{}.{svc_name}",
                                sp.name.to_ascii_lowercase(),
                                sp.protocol.srv_label()
                            );
                            add(
                                &mut r,
                                srv,
                                RData::Srv {
                                    priority: 0,
                                    weight: 0,
                                    port: port.port,
                                    target: ep_name.clone(),
                                },
                            );
                        }
                    }
                }
                for sp in &named {
                    n.srv_headless.push(format!(
                        "_{}.{}.{svc_name}",
                        sp.name.to_ascii_lowercase(),
                        sp.protocol.srv_label()
                    ));
                }
            } else {
                n.cluster_ip.push(svc_name.clone());
                for ip in svc.cluster_ips.iter().filter_map(v4) {
                    add(&mut r, svc_name.clone(), RData::A(ip));
                    add(&mut r, reverse_name(ip), RData::Ptr(svc_name.clone()));
                    n.ptr_cluster_ip.push(reverse_name(ip));
                }
                for sp in &named {
                    let srv = format!(
                        "_{}.{}.{svc_name}",
                        sp.name.to_ascii_lowercase(),
                        sp.protocol.srv_label()
                    );
                    n.srv_cluster_ip.push(srv.clone());
                    add(
                        &mut r,
                        srv,
                        RData::Srv {
                            priority: 0,
                            weight: 0,
                            port: sp.port,
                            target: svc_name.clone(),
                        },
                    );
                }
            }
        }
        // SRV weights: 100 split evenly over the records at a name (at least 1).
        for rds in r.names.values_mut() {
            let count = rds
                .iter()
                .filter(|x| matches!(x, RData::Srv { .. }))
                .count();
            if let Some(w) = 100usize.checked_div(count) {
                let w = w.max(1) as u16;
                for x in rds.iter_mut() {
                    if let RData::Srv { weight, .. } = x {
                        *weight = w;
                    }
                }
            }
            rds.sort();
            rds.dedup();
        }
        n.namespaces = namespaces.into_iter().collect();
        (r, n)
    }

    pub fn count(&self) -> usize {
        self.names.values().map(Vec::len).sum()
    }

    fn in_reverse(name: &str) -> bool {
        name.ends_with(".in-addr.arpa")
    }

    fn soa(origin: &str) -> String {
        format!(
            "{origin}. {TTL} IN SOA ns.dns.{{zone}}. hostmaster.{{zone}}. 1 7200 1800 86400 {TTL}"
        )
    }

    /// The two RFC 1035 zone files: (`<zone>`, `10.in-addr.arpa`).
    pub fn zone_files(&self) -> (String, String) {
        let z = &self.zone;
        let head = |origin: &str| {
            format!(
                "$ORIGIN {origin}.\n$TTL {TTL}\n{}\n{origin}. {TTL} IN NS ns.dns.{z}.\n",
                Self::soa(origin).replace("{zone}", z)
            )
        };
        let mut fwd = head(z);
        let mut rev = head(REVERSE_ZONE);
        for (name, rds) in &self.names {
            let out = if Self::in_reverse(name) {
                &mut rev
            } else {
                &mut fwd
            };
            for rd in rds {
                let _ = writeln!(out, "{name}. {TTL} IN {} {}", rd.rtype(), rd.text());
            }
        }
        (fwd, rev)
    }

    /// Unbound `server:` clauses: two static local zones holding every record.
    pub fn unbound_local_data(&self) -> String {
        let z = &self.zone;
        let mut out = String::new();
        for origin in [z.as_str(), REVERSE_ZONE] {
            let _ = writeln!(out, "local-zone: \"{origin}.\" static");
            let _ = writeln!(
                out,
                "local-data: \"{}\"",
                Self::soa(origin).replace("{zone}", z)
            );
            let _ = writeln!(out, "local-data: \"{origin}. {TTL} IN NS ns.dns.{z}.\"");
        }
        for (name, rds) in &self.names {
            for rd in rds {
                // Single quotes, so TXT data keeps its double quotes.
                let _ = writeln!(
                    out,
                    "local-data: '{name}. {TTL} IN {} {}'",
                    rd.rtype(),
                    rd.text()
                );
            }
        }
        out
    }

    /// dnsmasq: (`addn-hosts` file, config lines). A records go in the hosts file, one line per
    /// address with the name its PTR must return first (dnsmasq answers PTR from hosts lines);
    /// SRV, TXT and the PTRs of addresses without a hosts line are config lines.
    pub fn dnsmasq(&self) -> (String, String) {
        let z = &self.zone;
        // Address -> names holding an A record of it, the PTR target first.
        let mut by_ip: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
        let mut ptr_of: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        let mut conf = String::new();
        let _ = writeln!(conf, "local=/{z}/\nlocal=/{REVERSE_ZONE}/");
        for (name, rds) in &self.names {
            for rd in rds {
                match rd {
                    RData::A(ip) => by_ip.entry(*ip).or_default().push(name.clone()),
                    RData::Ptr(t) => {
                        let ip = ptr_ip(name).expect("reverse names are generated");
                        ptr_of.insert(ip, t.clone());
                    }
                    RData::Srv {
                        priority,
                        weight,
                        port,
                        target,
                    } => {
                        let _ =
                            writeln!(conf, "srv-host={name},{target},{port},{priority},{weight}");
                    }
                    RData::Txt(t) => {
                        let _ = writeln!(conf, "txt-record={name},\"{t}\"");
                    }
                }
            }
        }
        let mut hosts = String::new();
        for (ip, mut names) in by_ip {
            if let Some(p) = ptr_of.remove(&ip) {
                if let Some(i) = names.iter().position(|n| *n == p) {
                    names.swap(0, i);
                }
            }
            let _ = writeln!(hosts, "{ip} {}", names.join(" "));
        }
        for (ip, target) in ptr_of {
            let _ = writeln!(conf, "ptr-record={},{target}", reverse_name(ip));
        }
        (hosts, conf)
    }
}

/// The address of an `in-addr.arpa` name.
fn ptr_ip(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let o: Vec<u8> = rest
        .split('.')
        .map(|s| s.parse().ok())
        .collect::<Option<_>>()?;
    (o.len() == 4).then(|| Ipv4Addr::new(o[3], o[2], o[1], o[0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tables::synth::{SynthCluster, SynthSpec};

    #[test]
    fn names_match_the_synthetic_cluster_shape() {
        let spec = SynthSpec::new(100);
        let c = SynthCluster::generate(&spec);
        let (r, n) = Records::build("cluster.local", &c.services, &c.slices);
        assert_eq!(n.cluster_ip.len() + n.headless.len(), 100);
        assert_eq!(n.headless.len(), 10);
        assert_eq!(n.endpoint_hostname.len() + n.endpoint_dashed.len(), 100);
        assert!(!n.endpoint_hostname.is_empty() && !n.endpoint_dashed.is_empty());
        // Every headless endpoint has an A record and a PTR back to its own name.
        for name in n.endpoint_hostname.iter().chain(&n.endpoint_dashed) {
            let RData::A(ip) = r.names[name][0] else {
                panic!("{name} has no A")
            };
            assert_eq!(r.names[&reverse_name(ip)], vec![RData::Ptr(name.clone())]);
        }
        // Headless SRV weights split 100 over the 10 endpoints.
        for srv in &n.srv_headless {
            assert_eq!(r.names[srv].len(), 10, "{srv}");
            assert!(r.names[srv]
                .iter()
                .all(|x| matches!(x, RData::Srv { weight: 10, .. })));
        }
        let (fwd, rev) = r.zone_files();
        assert!(fwd.contains("dns-version.cluster.local. 30 IN TXT \"1.1.0\""));
        assert!(rev.starts_with("$ORIGIN 10.in-addr.arpa."));
        assert_eq!(
            fwd.lines().count() + rev.lines().count(),
            r.count() + 2 * 4,
            "every record once, plus $ORIGIN/$TTL/SOA/NS per zone"
        );
    }

    #[test]
    fn dnsmasq_hosts_put_the_ptr_target_first() {
        let spec = SynthSpec::new(20);
        let c = SynthCluster::generate(&spec);
        let (r, n) = Records::build("cluster.local", &c.services, &c.slices);
        let (hosts, conf) = r.dnsmasq();
        let ep = n
            .endpoint_hostname
            .first()
            .or(n.endpoint_dashed.first())
            .unwrap();
        let RData::A(ip) = r.names[ep][0] else {
            panic!()
        };
        let line = hosts
            .lines()
            .find(|l| l.starts_with(&format!("{ip} ")))
            .unwrap();
        assert_eq!(line.split(' ').nth(1), Some(ep.as_str()), "{line}");
        assert!(conf.contains("local=/cluster.local/"));
        assert!(
            !conf.contains("ptr-record"),
            "every PTR target has a hosts line"
        );
    }
}
