//! `--l4 bind` with the real binary, unprivileged: ClusterIPs are 127.0.0.0/8 addresses (every
//! one is local on Linux), backends listen on other 127.x addresses. Each test uses its own
//! 127.A.B.0/24 so tests running at once do not collide.

mod netns;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use netns::*;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A /24 in 127.0.0.0/8 for this test: 127.A.B.x.
fn subnet() -> String {
    let pid = std::process::id();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("127.{}.{}", 100 + pid % 150, (pid / 150 + n * 7) % 250 + 1)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Starts TCP (and UDP) backends on `net.{host}` sharing one port number per protocol.
fn backends(net: &str, hosts: &[(u8, &str)], udp: bool, proxy: bool) -> (Vec<Backend>, u16, u16) {
    let mut out = Vec::new();
    let first = Backend::tcp(
        None,
        sa(&format!("{net}.{}:0", hosts[0].0)),
        hosts[0].1,
        proxy,
    );
    let tport = first.addr.port();
    out.push(first);
    for (h, name) in &hosts[1..] {
        out.push(Backend::tcp(
            None,
            sa(&format!("{net}.{h}:{tport}")),
            name,
            proxy,
        ));
    }
    let mut uport = 0;
    if udp {
        let first = Backend::udp(
            None,
            sa(&format!("{net}.{}:0", hosts[0].0)),
            hosts[0].1,
            proxy,
        );
        uport = first.addr.port();
        out.push(first);
        for (h, name) in &hosts[1..] {
            out.push(Backend::udp(
                None,
                sa(&format!("{net}.{h}:{uport}")),
                name,
                proxy,
            ));
        }
    }
    (out, tport, uport)
}

#[test]
fn tcp_and_udp_reach_only_ready_backends_and_empty_services_refuse() {
    let net = subnet();
    let (_b, tport, uport) = backends(&net, &[(11, "a"), (12, "b"), (13, "c")], true, false);
    let dir = tempfile::tempdir().unwrap();
    let eps = [
        Ep::ready(format!("{net}.11")),
        Ep::ready(format!("{net}.12")),
        Ep::not_ready(format!("{net}.13")),
    ];
    let vip = format!("{net}.1");
    write_manifest(
        dir.path(),
        "svc.yaml",
        &service_yaml(
            "svc",
            &vip,
            "",
            &[],
            &[
                ("t", "TCP", 8080, tport, None),
                ("u", "UDP", 5353, uport, None),
            ],
            &eps,
        ),
    );
    let empty = format!("{net}.2");
    write_manifest(
        dir.path(),
        "empty.yaml",
        &service_yaml(
            "empty",
            &empty,
            "",
            &[],
            &[
                ("t", "TCP", 8080, tport, None),
                ("u", "UDP", 5353, uport, None),
            ],
            &[Ep::not_ready(format!("{net}.13"))],
        ),
    );
    let node = Node::start(
        None,
        &[
            "--manifests",
            dir.path().to_str().unwrap(),
            "--l4",
            "bind",
            "--node-name",
            "n1",
            "--udp-idle-timeout",
            "600",
        ],
    );
    node.wait_applied(None, "svc endpoints", |t| {
        t.contains(&format!("{net}.12:{tport}"))
    });
    node.wait_listening("tcp", &format!("{vip}:8080"));
    node.wait_listening("udp", &format!("{vip}:5353"));

    let tcp: Vec<_> = (0..40)
        .map(|_| tcp_hello(sa(&format!("{vip}:8080")), None))
        .collect();
    let seen = names(&tcp);
    assert_eq!(
        seen.keys().cloned().collect::<HashSet<_>>(),
        HashSet::from(["a".to_string(), "b".to_string()]),
        "{seen:?}"
    );
    // 40 client sockets held open together: a socket closed before the next binds can hand
    // its port to the next one, which is then the same flow (seen: 39 flows for 40 asks).
    let clients: Vec<_> = (0..40)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let udp: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, sock)| {
            udp_ask_on(
                sock,
                sa(&format!("{vip}:5353")),
                &format!("q{i}"),
                Duration::from_secs(2),
            )
        })
        .collect();
    let seen = names(&udp);
    assert!(seen.keys().all(|k| k == "a" || k == "b"), "{seen:?}");
    assert!(seen.len() == 2, "both ready backends answer UDP: {seen:?}");

    // No usable endpoint: refused at once, not a hang.
    let t = Instant::now();
    let e = tcp_hello(sa(&format!("{empty}:8080")), None).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    let e = udp_ask(sa(&format!("{empty}:5353")), "x", Duration::from_secs(2)).unwrap_err();
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "ICMP port unreachable: {e}"
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    // Exactly the 40 TCP connections proxied, and the 40 UDP flows (one per client socket,
    // none idle long enough to expire) tracked; the refused ones to `empty` are neither.
    let svc = "{port=\"8080\",service=\"default/svc\"}";
    assert_eq!(
        node.metric(None, &format!("switchboard_l4_connections_total{svc}")),
        40.0
    );
    let svc = "{port=\"5353\",service=\"default/svc\"}";
    assert_eq!(
        node.metric(None, &format!("switchboard_l4_active_flows{svc}")),
        40.0
    );
    assert_eq!(node.metric(None, "switchboard_l4_connections_total"), 40.0);
    assert_eq!(node.metric(None, "switchboard_l4_active_flows"), 40.0);
    let (code, _) = node.admin_get(None, "/healthz");
    assert_eq!(code, 200);
}

#[test]
fn affinity_policies_topology_and_proxy_protocol() {
    let net = subnet();
    let (_b, tport, _) = backends(&net, &[(11, "a"), (12, "b"), (13, "c")], false, false);
    let (_p, pport, puport) = backends(&net, &[(21, "pp")], true, true);
    let dir = tempfile::tempdir().unwrap();
    let all = [
        Ep::ready(format!("{net}.11")).on("n1").zone("z1"),
        Ep::ready(format!("{net}.12")).on("n2").zone("z2"),
        Ep::ready(format!("{net}.13")).on("n3").zone("z2"),
    ];
    let port = [("t", "TCP", 80, tport, None)];
    let svc = |name: &str, host: u8, extra: &str| {
        write_manifest(
            dir.path(),
            &format!("{name}.yaml"),
            &service_yaml(name, &format!("{net}.{host}"), extra, &[], &port, &all),
        )
    };
    svc(
        "sticky",
        1,
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 60\n",
    );
    svc("local", 2, "  internalTrafficPolicy: Local\n");
    svc("close", 3, "  trafficDistribution: PreferClose\n");
    svc("plain", 4, "");
    write_manifest(
        dir.path(),
        "pp.yaml",
        &service_yaml(
            "pp",
            &format!("{net}.5"),
            "",
            &[("switchboard.dev/proxy-protocol", "v2")],
            &[
                ("t", "TCP", 80, pport, None),
                ("u", "UDP", 53, puport, None),
            ],
            &[Ep::ready(format!("{net}.21"))],
        ),
    );
    let node = Node::start(
        None,
        &[
            "--manifests",
            dir.path().to_str().unwrap(),
            "--l4",
            "bind",
            "--node-name",
            "n1",
            "--zone",
            "z2",
        ],
    );
    // Every frontend in the applied tables, and every listener open: waiting for one service
    // says nothing about the others (a listener may open a generation later).
    let frontends: Vec<(&str, String)> = (1..=5)
        .map(|h| ("TCP", format!("{net}.{h}:80")))
        .chain([("UDP", format!("{net}.5:53"))])
        .collect();
    node.wait_applied(None, "all services", |t| {
        frontends
            .iter()
            .all(|(p, f)| t.contains(&format!("frontend {p} {f} ")))
            && t.matches(&format!("endpoint {net}.1")).count() == 12
    });
    for (p, f) in &frontends {
        node.wait_listening(&p.to_lowercase(), f);
    }
    let ask = |host: u8, client: u8| {
        tcp_hello(
            sa(&format!("{net}.{host}:80")),
            Some(sa(&format!("{net}.{client}:0"))),
        )
    };

    // ClientIP affinity: each client keeps one backend; different clients spread.
    let mut chosen = HashSet::new();
    for client in 50..58 {
        let r: Vec<_> = (0..10).map(|_| ask(1, client)).collect();
        let seen = names(&r);
        assert_eq!(
            seen.len(),
            1,
            "client .{client} sticks to one backend: {seen:?}"
        );
        chosen.extend(seen.into_keys());
    }
    assert!(
        chosen.len() >= 2,
        "8 clients all on one backend: {chosen:?}"
    );
    // Without affinity one client is spread.
    let seen = names(&(0..30).map(|_| ask(4, 50)).collect::<Vec<_>>());
    assert_eq!(seen.len(), 3, "{seen:?}");

    // internalTrafficPolicy Local: only this node's (n1) endpoint.
    let seen = names(&(0..20).map(|_| ask(2, 50)).collect::<Vec<_>>());
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["a"], "{seen:?}");

    // trafficDistribution PreferClose, node zone z2: only z2 endpoints (no hints in the slice:
    // derived from the endpoints' zones).
    let seen = names(&(0..30).map(|_| ask(3, 50)).collect::<Vec<_>>());
    assert_eq!(
        seen.keys().cloned().collect::<HashSet<_>>(),
        HashSet::from(["b".to_string(), "c".to_string()]),
        "{seen:?}"
    );

    // PROXY protocol v2: the backend learns the real client address, TCP and UDP.
    let line = ask(5, 77).unwrap();
    let (name, src) = line.split_once(' ').unwrap();
    assert_eq!(name, "pp");
    assert_eq!(
        src.parse::<SocketAddr>().unwrap().ip(),
        format!("{net}.77").parse::<IpAddr>().unwrap(),
        "{line}"
    );
    let sock = std::net::UdpSocket::bind(format!("{net}.78:0")).unwrap();
    let client = sock.local_addr().unwrap();
    let answer = udp_ask_on(
        &sock,
        sa(&format!("{net}.5:53")),
        "hello",
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(answer, format!("pp:{client}:hello"));
}

#[test]
fn endpoints_change_under_load_without_failed_connections() {
    let net = subnet();
    let (mut b, tport, uport) = backends(&net, &[(11, "a"), (12, "b"), (13, "c")], true, false);
    let dir = tempfile::tempdir().unwrap();
    let vip = format!("{net}.1");
    let ports = [("t", "TCP", 80, tport, None), ("u", "UDP", 53, uport, None)];
    let write = |hosts: &[u8]| {
        let eps: Vec<Ep> = hosts
            .iter()
            .map(|h| Ep::ready(format!("{net}.{h}")))
            .collect();
        write_manifest(
            dir.path(),
            "svc.yaml",
            &service_yaml("svc", &vip, "", &[], &ports, &eps),
        );
    };
    write(&[11, 12]);
    let node = Node::start(
        None,
        &[
            "--manifests",
            dir.path().to_str().unwrap(),
            "--l4",
            "bind",
            "--udp-idle-timeout",
            "60",
        ],
    );
    node.wait_applied(None, "a and b", |t| {
        t.contains(&format!("{net}.12:{tport}"))
    });

    // One UDP flow (same client port throughout).
    let flow = std::net::UdpSocket::bind(format!("{net}.90:0")).unwrap();
    let first = udp_ask_on(&flow, sa(&format!("{vip}:53")), "1", Duration::from_secs(2)).unwrap();
    let pinned = first.split(':').next().unwrap().to_string();
    for i in 0..5 {
        let again =
            udp_ask_on(&flow, sa(&format!("{vip}:53")), "x", Duration::from_secs(2)).unwrap();
        assert!(
            again.starts_with(&format!("{pinned}:")),
            "flow {i} stays on {pinned}: {again}"
        );
    }

    let stop = std::sync::atomic::AtomicBool::new(false);
    let (results, ()) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let mut out = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && out.len() < 20_000 {
                out.push(tcp_hello(sa(&format!("{vip}:80")), None));
            }
            out
        });
        std::thread::sleep(Duration::from_millis(300));
        // Add c.
        write(&[11, 12, 13]);
        node.wait_applied(None, "c added", |t| {
            t.contains(&format!("{net}.13:{tport}"))
        });
        std::thread::sleep(Duration::from_millis(300));
        // Remove the pinned UDP endpoint and a, then stop their servers.
        let keep: Vec<u8> = [11u8, 12, 13]
            .into_iter()
            .filter(|h| {
                let name = ["a", "b", "c"][(*h - 11) as usize];
                name != "a" && name != pinned
            })
            .collect();
        write(&keep);
        node.wait_applied(None, "a removed", |t| {
            !t.contains(&format!("{net}.11:{tport}"))
        });
        b.retain(|x| x.name != "a" && x.name != pinned);
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        (load.join().unwrap(), ())
    });
    assert!(results.len() > 50, "load ran: {}", results.len());
    // No connection failed (names fails the test on any error).
    let seen = names(&results);
    assert!(
        seen.contains_key("c"),
        "the added endpoint took traffic: {seen:?}"
    );

    // The UDP flow moved to a live endpoint on its next datagram.
    let moved = udp_ask_on(
        &flow,
        sa(&format!("{vip}:53")),
        "after",
        Duration::from_secs(2),
    )
    .unwrap();
    assert!(!moved.starts_with(&format!("{pinned}:")), "{moved}");
    assert!(moved.ends_with(":after"), "{moved}");
}
