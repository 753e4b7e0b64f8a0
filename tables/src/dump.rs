//! A stable text dump of a snapshot: sorted, one fact per line, no generation numbers, so the
//! same input gives the same text. Serves golden tests and `/debug/tables`.

use std::fmt::Write;

use crate::model::*;
use crate::snapshot::*;

fn fmt_conditions(c: &Conditions) -> String {
    let mut s = String::new();
    s.push_str(if c.is_ready() { "ready" } else { "not-ready" });
    if c.is_serving() {
        s.push_str(",serving");
    }
    if c.is_terminating() {
        s.push_str(",terminating");
    }
    s
}

fn fmt_match(m: &HttpRouteMatch) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &m.path {
        parts.push(format!("path {:?} {}", p.match_type, p.value));
    }
    for h in &m.headers {
        parts.push(format!("header {:?} {}={}", h.match_type, h.name, h.value));
    }
    for q in &m.query_params {
        parts.push(format!("query {:?} {}={}", q.match_type, q.name, q.value));
    }
    if let Some(method) = &m.method {
        parts.push(format!("method {method}"));
    }
    if parts.is_empty() {
        "any".into()
    } else {
        parts.join(" & ")
    }
}

/// Writes the dump of `snap`.
pub fn dump(snap: &Snapshot) -> String {
    let mut out = String::new();
    let r = &snap.routes;

    let mut services: Vec<_> = r.services.iter().collect();
    services.sort_by(|a, b| a.0.cmp(b.0));
    for (key, svc) in services {
        let s = &svc.service;
        let ips: Vec<String> = s.cluster_ips.iter().map(|i| i.to_string()).collect();
        let _ = write!(
            out,
            "service {key} {} clusterIPs={}",
            s.service_type.as_str(),
            if s.headless {
                "None".into()
            } else {
                ips.join(",")
            },
        );
        if let Some(n) = &s.external_name {
            let _ = write!(out, " externalName={n}");
        }
        if let Some(t) = s.session_affinity_timeout {
            let _ = write!(out, " affinity=ClientIP/{t}s");
        }
        if s.external_traffic_policy != TrafficPolicy::Cluster {
            let _ = write!(
                out,
                " externalTrafficPolicy={}",
                s.external_traffic_policy.as_str()
            );
        }
        if s.internal_traffic_policy != TrafficPolicy::Cluster {
            let _ = write!(
                out,
                " internalTrafficPolicy={}",
                s.internal_traffic_policy.as_str()
            );
        }
        if let Some(d) = s.traffic_distribution {
            let _ = write!(out, " trafficDistribution={}", d.as_str());
        }
        if s.publish_not_ready_addresses {
            out.push_str(" publishNotReadyAddresses");
        }
        if !s.load_balancer_source_ranges.is_empty() {
            let ranges: Vec<String> = s
                .load_balancer_source_ranges
                .iter()
                .map(|n| n.to_string())
                .collect();
            let _ = write!(out, " loadBalancerSourceRanges={}", ranges.join(","));
        }
        for (k, v) in &s.annotations {
            let _ = write!(out, " {k}={v}");
        }
        out.push('\n');
        // Each endpoint's target (pod), from the slices (the routes do not copy it); the
        // first address stands for the endpoint, as in the routes.
        let targets: std::collections::HashMap<std::net::IpAddr, &str> = svc
            .slices
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter_map(|e| Some((*e.addresses.first()?, e.target()?)))
            .collect();
        for p in &svc.ports {
            let name = if p.name.is_empty() { "-" } else { &p.name };
            let _ = write!(
                out,
                "  port {name} {} {} -> {}",
                p.protocol, p.port, p.target_port
            );
            if let Some(np) = p.node_port {
                let _ = write!(out, " nodePort={np}");
            }
            out.push('\n');
            for e in p.endpoints.iter() {
                let _ = write!(
                    out,
                    "    endpoint {} {}",
                    e.addr(),
                    fmt_conditions(&e.conditions)
                );
                let info = &e.endpoint;
                if let Some(n) = &info.node_name {
                    let _ = write!(out, " node={n}");
                }
                if let Some(z) = &info.zone {
                    let _ = write!(out, " zone={z}");
                }
                if !info.hints_for_zones().is_empty() {
                    let _ = write!(out, " hintZones={}", info.hints_for_zones().join(","));
                }
                if !info.hints_for_nodes().is_empty() {
                    let _ = write!(out, " hintNodes={}", info.hints_for_nodes().join(","));
                }
                if let Some(t) = targets.get(&e.ip()) {
                    let _ = write!(out, " target={t}");
                }
                out.push('\n');
            }
        }
    }

    let mut fes: Vec<String> = r
        .frontends
        .iter()
        .map(|(f, t)| {
            let addr = std::net::SocketAddr::new(f.ip, f.port);
            format!(
                "frontend {} {addr} {} -> {} port {}\n",
                f.protocol,
                t.kind.as_str(),
                t.service.key,
                t.port().port
            )
        })
        .chain(r.node_ports.iter().map(|((proto, port), t)| {
            format!(
                "frontend {proto} *:{port} NodePort -> {} port {}\n",
                t.service.key,
                t.port().port
            )
        }))
        .collect();
    fes.sort();
    fes.into_iter().for_each(|l| out.push_str(&l));

    let mut names: Vec<_> = snap.dns.names.iter().collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    for (name, entry) in names {
        let mut any = false;
        for rec in entry.records() {
            any = true;
            let data = match rec {
                DnsRecord::A(ip) => ip.to_string(),
                DnsRecord::Aaaa(ip) => ip.to_string(),
                DnsRecord::Cname(t) | DnsRecord::Ptr(t) => format!("{t}."),
                DnsRecord::Srv {
                    priority,
                    weight,
                    port,
                    target,
                } => {
                    format!("{priority} {weight} {port} {target}.")
                }
                DnsRecord::Txt(t) => format!("{t:?}"),
            };
            let _ = writeln!(out, "dns {name}. {} {data}", rec.type_name());
        }
        if !any {
            let _ = writeln!(out, "dns {name}. (empty non-terminal)");
        }
    }

    for rule in &r.http.rules {
        let hosts = if rule.hostnames.is_empty() {
            "*".to_string()
        } else {
            rule.hostnames.join(",")
        };
        let matches = if rule.matches.is_empty() {
            "any".to_string()
        } else {
            rule.matches
                .iter()
                .map(fmt_match)
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let backends: Vec<String> = rule
            .backends
            .iter()
            .map(|b| {
                let refused = if b.permitted { "" } else { " not-permitted" };
                match &b.port {
                    Some(p) => format!("{}:{} w={}{refused}", b.service, p, b.weight),
                    None => format!("{} w={}{refused}", b.service, b.weight),
                }
            })
            .collect();
        let _ = write!(
            out,
            "http {}#{} hosts={hosts} match={matches} -> {}",
            rule.source,
            rule.rule_index,
            backends.join(", ")
        );
        if rule.is_default {
            out.push_str(" (default backend)");
        }
        if !rule.attachments.is_empty() {
            let _ = write!(out, " via {}", rule.attachments.join(","));
        }
        if let Some(port) = rule.port {
            let _ = write!(out, " port={port}");
        }
        if !rule.filters.is_empty() {
            let _ = write!(out, " filters={:?}", rule.filters);
        }
        if let Some(lb) = &rule.lb_algorithm {
            let _ = write!(out, " lb={lb}");
        }
        if let Some(t) = rule.request_timeout_ms {
            let _ = write!(out, " timeout={t}ms");
        }
        out.push('\n');
    }
    for l in &r.http.listeners {
        let proto = if l.tls { "HTTPS" } else { "HTTP" };
        let _ = writeln!(
            out,
            "listener {} {proto} (Gateway {} listener {})",
            l.port, l.gateway, l.listener
        );
    }
    for c in &r.tls.certs {
        let hosts = if c.hostnames.is_empty() {
            "(default)".to_string()
        } else {
            c.hostnames.join(",")
        };
        let _ = writeln!(
            out,
            "tls {hosts} -> {} (from {})",
            c.secret, c.referenced_by
        );
    }
    for (secret, by) in &r.tls.missing {
        let _ = writeln!(out, "tls-missing {secret} (from {by})");
    }
    for (key, why) in &r.http.ignored {
        let _ = writeln!(out, "http-ignored {key}: {why}");
    }
    out
}
