//! `--l4 nftables` end to end, as root: switchboard runs inside "node" network namespaces, pods
//! are namespaces on a bridge in their node, real TCP/UDP servers run in the backend pods, and
//! clients connect to ClusterIPs (10.96.0.0/16, fd00:96::/64) from client pods, or to NodePorts
//! from an "outside" namespace. Every address is inside namespaces these tests create; all of
//! them, with their veths and nftables tables, are removed on drop even when a test fails.
//! Without root the tests print why and pass.

mod netns;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netns::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn set(v: &[&str]) -> HashSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn keys(m: &HashMap<String, usize>) -> HashSet<String> {
    m.keys().cloned().collect()
}

/// The `service default/web` block of a tables dump.
fn web_block(tables: &str) -> String {
    tables
        .lines()
        .skip_while(|l| !l.starts_with("service default/web "))
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.starts_with(' '))
        .map(|(_, l)| format!("{l}\n"))
        .collect()
}

const PORTS: &[(&str, &str, u16, u16, Option<u16>)] =
    &[("t", "TCP", 80, 8080, None), ("u", "UDP", 53, 8080, None)];

#[test]
fn needs_root_clusterip_tcp_udp_ipv6_reject_and_cleanup() {
    if skip_unless_root("needs_root_clusterip_tcp_udp_ipv6_reject_and_cleanup") {
        return;
    }
    let mut c = Cluster::new();
    c.backend_pod(1, 11, "a", 8080, true);
    c.backend_pod(1, 12, "b", 8080, true);
    c.backend_pod(1, 13, "c", 8080, true);
    let client = c.pod(1, 100);
    let eps = [
        Ep::ready("10.244.1.11"),
        Ep::ready("10.244.1.12"),
        Ep::not_ready("10.244.1.13"),
    ];
    c.manifest(
        "web.yaml",
        &service_yaml("web", "10.96.0.10", "", &[], PORTS, &eps),
    );
    c.manifest(
        "empty.yaml",
        &service_yaml(
            "empty",
            "10.96.0.11",
            "",
            &[],
            PORTS,
            &[Ep::not_ready("10.244.1.13")],
        ),
    );
    let eps6 = [
        Ep::ready("fd00:244:1::11"),
        Ep::ready("fd00:244:1::12"),
        Ep::not_ready("fd00:244:1::13"),
    ];
    c.manifest(
        "web6.yaml",
        &service_yaml("web6", "fd00:96::10", "", &[], PORTS, &eps6),
    );
    c.start_node(1, &[]);
    c.wait_applied(1, "all services", |t| {
        t.contains("fd00:96::10") && t.contains("10.96.0.11")
    });
    let pod = &c.pods[client].ns;

    // TCP and UDP over IPv4 and IPv6 reach only the ready backends.
    for vip in ["10.96.0.10", "[fd00:96::10]"] {
        let tcp: Vec<_> = pod.enter(|| {
            (0..30)
                .map(|_| tcp_hello(sa(&format!("{vip}:80")), None))
                .collect()
        });
        assert_eq!(
            keys(&names(&tcp)),
            set(&["a", "b"]),
            "TCP {vip}: {:?}",
            names(&tcp)
        );
        let udp: Vec<_> = pod.enter(|| {
            (0..30)
                .map(|i| {
                    udp_ask(
                        sa(&format!("{vip}:53")),
                        &format!("q{i}"),
                        Duration::from_secs(2),
                    )
                })
                .collect()
        });
        let seen = names(&udp);
        assert_eq!(keys(&seen), set(&["a", "b"]), "UDP {vip}: {seen:?}");
        // The answer comes from the VIP the client asked (udp_ask uses a connected socket,
        // which only accepts datagrams from that address).
    }

    // No endpoints: TCP refused (RST), UDP gets ICMP port unreachable, both at once.
    let t = Instant::now();
    let (tcp, udp) = pod.enter(|| {
        (
            tcp_hello(sa("10.96.0.11:80"), None),
            udp_ask(sa("10.96.0.11:53"), "x", Duration::from_secs(2)),
        )
    });
    assert_eq!(
        tcp.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    assert_eq!(
        udp.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    {
        let n1 = c.node_netns(1);
        let table = n1.exec(&["nft", "list", "table", "inet", "switchboard"]);
        assert!(
            table.contains("10.96.0.10 . tcp . 80 : jump tcp-redirect"),
            "{table}"
        );
        assert!(
            table.contains("10.96.0.11 . udp . 53 : jump no-endpoints"),
            "{table}"
        );
        assert!(
            table.contains("fd00:96::10 . udp . 53 : jump udp-tproxy"),
            "{table}"
        );
        let node = c.node(1);
        // Exactly the 30 + 30 connections above; the refused one to `empty` is not proxied.
        for svc in ["web", "web6"] {
            let series = format!(
                "switchboard_l4_connections_total{{port=\"80\",service=\"default/{svc}\"}}"
            );
            assert_eq!(node.metric(Some(n1), &series), 30.0, "{series}");
        }
        assert_eq!(
            node.metric(Some(n1), "switchboard_l4_connections_total"),
            60.0
        );
        assert_eq!(node.admin_get(Some(n1), "/healthz").0, 200);
    }

    // Stop without cleanup: the table stays; a restart reconciles it (one table, still works).
    let status = c.nodes[0].as_mut().unwrap().terminate();
    assert!(status.success(), "{status}");
    assert_eq!(c.switchboard_tables(1), (1, 16));
    c.start_node(1, &["--cleanup-on-exit"]);
    c.wait_applied(1, "restart", |t| t.contains("fd00:96::10"));
    assert_eq!(c.switchboard_tables(1), (1, 16), "{}", c.nft_tables(1));
    let again = c.pods[client]
        .ns
        .enter(|| tcp_hello(sa("10.96.0.10:80"), None));
    assert!(again.is_ok(), "{again:?}");
    // --cleanup-on-exit removes it, and only it.
    c.node_netns(1)
        .exec(&["nft", "add", "table", "inet", "someone-else"]);
    let status = c.nodes[0].as_mut().unwrap().terminate();
    assert!(status.success(), "{status}");
    let tables = c.nft_tables(1);
    assert!(!tables.contains("switchboard"), "{tables}");
    assert!(tables.contains("someone-else"), "{tables}");
    let rules = c.node_netns(1).exec(&["ip", "rule", "list"]);
    assert!(!rules.contains("lookup 1456"), "{rules}");

    // `switchboard cleanup` removes a table left behind (e.g. after a crash).
    c.start_node(1, &[]);
    c.nodes[0] = None; // SIGKILL: no cleanup
    assert!(c.nft_tables(1).contains("switchboard"));
    let out = c.node_netns(1).exec(&[BIN, "cleanup"]);
    assert!(out.contains("removed"), "{out}");
    assert!(!c.nft_tables(1).contains("switchboard"));
    assert!(c.nft_tables(1).contains("someone-else"));
}

#[test]
fn needs_root_nodeport_local_policies_and_health_check() {
    if skip_unless_root("needs_root_nodeport_local_policies_and_health_check") {
        return;
    }
    let mut c = Cluster::new();
    c.backend_pod(1, 11, "a", 8080, true);
    c.backend_pod(2, 11, "d", 8080, true);
    let c1 = c.pod(1, 100);
    let c2 = c.pod(2, 100);
    let both = [
        Ep::ready("10.244.1.11").on("node1"),
        Ep::ready("10.244.2.11").on("node2"),
    ];
    c.manifest(
        "cluster.yaml",
        &service_yaml(
            "cluster",
            "10.96.0.10",
            "  type: NodePort\n",
            &[],
            &[
                ("t", "TCP", 80, 8080, Some(30080)),
                ("u", "UDP", 53, 8080, Some(30053)),
            ],
            &both,
        ),
    );
    c.manifest(
        "local.yaml",
        &service_yaml(
            "local",
            "10.96.0.11",
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 30999\n",
            &[],
            &[("t", "TCP", 80, 8080, Some(30081))],
            &both,
        ),
    );
    c.manifest(
        "only1.yaml",
        &service_yaml(
            "only1",
            "10.96.0.12",
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 30998\n",
            &[],
            &[("t", "TCP", 80, 8080, Some(30082))],
            &[Ep::ready("10.244.1.11").on("node1")],
        ),
    );
    c.manifest(
        "itp.yaml",
        &service_yaml(
            "itp",
            "10.96.0.13",
            "  internalTrafficPolicy: Local\n",
            &[],
            &[("t", "TCP", 80, 8080, None)],
            &both,
        ),
    );
    c.start_node(1, &[]);
    c.start_node(2, &[]);
    for n in [1, 2] {
        c.wait_applied(n, "services", |t| t.contains("10.96.0.13"));
    }
    let out = &c.outside;
    let many = |addr: &str, n: usize| -> Vec<std::io::Result<String>> {
        out.enter(|| (0..n).map(|_| tcp_hello(sa(addr), None)).collect())
    };

    // NodePort, Cluster policy: from outside, through either node, to both endpoints.
    for node in ["10.250.1.1", "10.250.2.1"] {
        let seen = names(&many(&format!("{node}:30080"), 30));
        assert_eq!(
            keys(&seen),
            set(&["a", "d"]),
            "NodePort via {node}: {seen:?}"
        );
        let udp: Vec<_> = out.enter(|| {
            (0..20)
                .map(|i| {
                    udp_ask(
                        sa(&format!("{node}:30053")),
                        &format!("{i}"),
                        Duration::from_secs(2),
                    )
                })
                .collect()
        });
        assert_eq!(
            keys(&names(&udp)),
            set(&["a", "d"]),
            "UDP NodePort via {node}: {:?}",
            names(&udp)
        );
    }
    // Datagrams from outside cross no bridge: the tproxy listener got them.
    let n1 = c.node(1);
    assert!(
        n1.metric(
            Some(c.node_netns(1)),
            "switchboard_l4_udp_datagrams_total{path=\"tproxy\"}"
        ) >= 20.0
    );

    // externalTrafficPolicy Local: each node sends only to its own endpoint.
    let seen = names(&many("10.250.1.1:30081", 20));
    assert_eq!(keys(&seen), set(&["a"]), "{seen:?}");
    let seen = names(&many("10.250.2.1:30081", 20));
    assert_eq!(keys(&seen), set(&["d"]), "{seen:?}");
    // ... and a node without a local endpoint drops (no answer, not a reset).
    let t = Instant::now();
    let r = out.enter(|| tcp_hello(sa("10.250.2.1:30082"), None));
    let e = r.expect_err("dropped");
    assert_ne!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "dropped, so the connect times out: {e}"
    );
    assert_eq!(names(&many("10.250.1.1:30082", 5)).get("a"), Some(&5));

    // healthCheckNodePort: 200 where there are local endpoints, 503 elsewhere.
    let health = |addr: &str| out.enter(|| http_get(sa(addr), "/healthz")).unwrap();
    for (addr, code, local) in [
        ("10.250.1.1:30999", 200, 1),
        ("10.250.2.1:30999", 200, 1),
        ("10.250.1.1:30998", 200, 1),
        ("10.250.2.1:30998", 503, 0),
    ] {
        let (got, body) = health(addr);
        assert_eq!(got, code, "{addr}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["localEndpoints"], local, "{addr}: {body}");
        assert_eq!(v["serviceProxyHealthy"], true, "{body}");
        assert_eq!(v["service"]["namespace"], "default");
    }

    // internalTrafficPolicy Local: pods reach only their own node's endpoint.
    let seen = names(&c.pods[c1].ns.enter(|| {
        (0..20)
            .map(|_| tcp_hello(sa("10.96.0.13:80"), None))
            .collect::<Vec<_>>()
    }));
    assert_eq!(keys(&seen), set(&["a"]), "{seen:?}");
    let seen = names(&c.pods[c2].ns.enter(|| {
        (0..20)
            .map(|_| tcp_hello(sa("10.96.0.13:80"), None))
            .collect::<Vec<_>>()
    }));
    assert_eq!(keys(&seen), set(&["d"]), "{seen:?}");
}

#[test]
fn needs_root_affinity_topology_and_endpoint_changes_under_load() {
    if skip_unless_root("needs_root_affinity_topology_and_endpoint_changes_under_load") {
        return;
    }
    let mut c = Cluster::new();
    c.backend_pod(1, 11, "a", 8080, true);
    c.backend_pod(1, 12, "b", 8080, true);
    c.backend_pod(2, 11, "d", 8080, true);
    let c1 = c.pod(1, 100);
    let c2 = c.pod(1, 101);
    let a = || Ep::ready("10.244.1.11").on("node1").zone("z1");
    let b = || Ep::ready("10.244.1.12").on("node1").zone("z1");
    let d = || Ep::ready("10.244.2.11").on("node2").zone("z2");
    c.manifest(
        "sticky.yaml",
        &service_yaml(
            "sticky",
            "10.96.0.30",
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 300\n",
            &[],
            &[("t", "TCP", 80, 8080, None)],
            &[a(), b(), d()],
        ),
    );
    let hinted = |mut e: Ep, z: &str| {
        e.hint_zones = vec![z.to_string()];
        e
    };
    c.manifest(
        "topo.yaml",
        &service_yaml(
            "topo",
            "10.96.0.31",
            "  trafficDistribution: PreferClose\n",
            &[],
            &[("t", "TCP", 80, 8080, None)],
            &[hinted(a(), "z1"), hinted(d(), "z2")],
        ),
    );
    let web = |eps: &[Ep]| service_yaml("web", "10.96.0.32", "", &[], PORTS, eps);
    c.manifest("web.yaml", &web(&[a(), b()]));
    c.start_node(1, &["--zone", "z1", "--udp-idle-timeout", "120"]);
    c.wait_applied(1, "services", |t| t.contains("10.96.0.32"));

    // ClientIP affinity: each client pod keeps its endpoint.
    for client in [c1, c2] {
        let seen = names(&c.pods[client].ns.enter(|| {
            (0..15)
                .map(|_| tcp_hello(sa("10.96.0.30:80"), None))
                .collect::<Vec<_>>()
        }));
        assert_eq!(seen.len(), 1, "one endpoint per client: {seen:?}");
    }
    // Zone hints: node1 is in z1, so only the z1-hinted endpoint.
    let seen = names(&c.pods[c1].ns.enter(|| {
        (0..20)
            .map(|_| tcp_hello(sa("10.96.0.31:80"), None))
            .collect::<Vec<_>>()
    }));
    assert_eq!(keys(&seen), set(&["a"]), "{seen:?}");

    // A long-lived connection and a UDP flow, established before the changes.
    let pod = &c.pods[c1].ns;
    let (mut long, long_name) = pod.enter(|| {
        let s = std::net::TcpStream::connect(sa("10.96.0.32:80")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut r, &mut line).unwrap();
        (s, line.trim().to_string())
    });
    let flow = pod.enter(|| std::net::UdpSocket::bind("0.0.0.0:0").unwrap());
    let pinned = udp_ask_on(&flow, sa("10.96.0.32:53"), "1", Duration::from_secs(2)).unwrap();
    let pinned = pinned.split(':').next().unwrap().to_string();
    let removed = if long_name == "a" { "b" } else { "a" };

    let stop = AtomicBool::new(false);
    let results = std::thread::scope(|s| {
        let load = s.spawn(|| {
            c.pods[c2].ns.enter(|| {
                let mut out = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed)
                    && Instant::now() < deadline
                    && out.len() < 20_000
                {
                    out.push(tcp_hello(sa("10.96.0.32:80"), None));
                }
                out
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        c.manifest("web.yaml", &web(&[a(), b(), d()]));
        c.wait_applied(1, "d added", |t| web_block(t).contains("10.244.2.11:8080"));
        std::thread::sleep(Duration::from_millis(300));
        let keep: Vec<Ep> = [("a", a()), ("b", b()), ("d", d())]
            .into_iter()
            .filter(|(n, _)| *n != removed && *n != pinned)
            .map(|(_, e)| e)
            .collect();
        c.manifest("web.yaml", &web(&keep));
        let gone = format!("10.244.1.{}:8080", if removed == "a" { 11 } else { 12 });
        c.wait_applied(1, "removal", |t| !web_block(t).contains(&gone));
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        load.join().unwrap()
    });
    // The removed endpoint's server goes away only after the table no longer has it.
    c.stop_backend(removed);
    assert!(results.len() > 50, "load ran: {}", results.len());
    // No connection failed (names fails the test on any error).
    let seen = names(&results);
    assert!(
        seen.contains_key("d"),
        "the added endpoint took traffic: {seen:?}"
    );

    // The established connection was untouched by the updates.
    std::io::Write::write_all(&mut long, b"still here\n").unwrap();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut long, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"still here\n");

    // The UDP flow moved off its removed endpoint on the next datagram.
    let moved = udp_ask_on(&flow, sa("10.96.0.32:53"), "2", Duration::from_secs(2)).unwrap();
    assert!(!moved.starts_with(&format!("{pinned}:")), "{moved}");
    // No endpoint is left without its server: nothing failed after the stop either.
    let after = names(&c.pods[c2].ns.enter(|| {
        (0..20)
            .map(|_| tcp_hello(sa("10.96.0.32:80"), None))
            .collect::<Vec<_>>()
    }));
    assert_eq!(after.values().sum::<usize>(), 20, "{after:?}");
}
