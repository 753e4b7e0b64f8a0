//! The kernel data path of `--l4 nftables` (issue #15), in network namespaces playing nodes and
//! pods (root only): Service traffic DNATed by nftables, the client pod's address kept, hairpin
//! and external traffic masqueraded as kube-proxy does, a Service moved to the relay and back,
//! endpoint changes touching one chain and its shard map elements, a UDP flow moving off a removed
//! endpoint, IPv6 and a dual-stack Service.

mod netns;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use netns::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// `n` TCP connections from `ns` to `vip`, each answered by a whoami backend: (name, source).
fn tcp_whoami(ns: &Netns, vip: &str, n: usize, what: &str) -> Vec<(String, String)> {
    whoami_all(
        ns.enter(|| (0..n).map(|_| tcp_hello(sa(vip), None)).collect()),
        what,
    )
}

/// (backend name, source address it saw) of each answer; any error fails the test.
fn whoami_all(results: Vec<std::io::Result<String>>, what: &str) -> Vec<(String, String)> {
    results
        .into_iter()
        .map(|r| {
            let line = r.unwrap_or_else(|e| panic!("{what}: {e}"));
            let (name, src) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("{what}: answer {line:?}"));
            (name.to_string(), src.to_string())
        })
        .collect()
}

fn names(answers: &[(String, String)]) -> HashSet<String> {
    answers.iter().map(|(n, _)| n.clone()).collect()
}

fn sources(answers: &[(String, String)]) -> HashSet<String> {
    answers.iter().map(|(_, s)| s.clone()).collect()
}

fn set(v: &[&str]) -> HashSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const PORTS: &[(&str, &str, u16, u16, Option<u16>)] = &[
    ("http", "TCP", 80, 8080, Some(30080)),
    ("dns", "UDP", 53, 8080, None),
];

fn web(annotations: &[(&str, &str)], eps: &[Ep]) -> String {
    service_yaml(
        "web",
        "10.96.0.10",
        "  type: NodePort\n",
        annotations,
        PORTS,
        eps,
    )
}

/// The lines of `/debug/tables` about one service (`default/web`).
fn service_block(tables: &str, service: &str) -> String {
    tables
        .split("service ")
        .filter(|b| b.starts_with(&format!("{service} ")))
        .collect()
}

/// A ClusterIP Service with ClientIP affinity (timeout 60 s) over `eps`.
fn sticky(eps: &[Ep]) -> String {
    service_yaml(
        "sticky",
        "10.96.0.14",
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
        &[],
        &[("http", "TCP", 80, 8080, None)],
        eps,
    )
}

#[test]
fn needs_root_kernel_path_keeps_the_client_ip_masquerades_like_kube_proxy_and_moves_udp_flows() {
    if skip_unless_root(
        "kernel_path_keeps_the_client_ip_masquerades_like_kube_proxy_and_moves_udp_flows",
    ) {
        return;
    }
    let mut c = Cluster::kernel();
    let a = c.pod(1, 11);
    let b = c.pod(1, 12);
    let client = c.pod(1, 100);
    for (i, name) in [(a, "a"), (b, "b")] {
        let addr = SocketAddr::new(c.pods[i].v4, 8080);
        let backends = Backend::whoami(Some(&c.pods[i].ns), addr, name);
        c.backends.extend(backends);
    }
    let both = [
        Ep::ready("10.244.1.11").on("node1"),
        Ep::ready("10.244.1.12").on("node1"),
    ];
    c.manifest("web.yaml", &web(&[], &both));
    c.manifest("sticky.yaml", &sticky(&both));
    c.start_node(
        1,
        &[
            "--cluster-cidr",
            "10.244.0.0/16",
            "--nodeport-addresses",
            "10.250.0.0/16",
        ],
    );
    c.wait_applied(1, "web and sticky", |t| {
        t.contains("10.96.0.10") && t.contains("10.96.0.14")
    });
    let n1 = c.node_netns(1);
    let table = netns::list_tables(n1);
    for want in [
        "10.96.0.10 . tcp . 80 : goto svc-default/web/tcp/80/int4",
        "10.96.0.10 . udp . 53 : goto svc-default/web/udp/53/int4",
        "tcp . 30080 : goto svc-default/web/tcp/80/ext4",
    ] {
        assert!(table.contains(want), "{want:?} not in\n{table}");
    }
    // The chain picks among both endpoints, which sit in consecutive keys of one shard map.
    let (n, offset, elements) = chain_pick(n1, "svc-default/web/tcp/80/int4")
        .unwrap_or_else(|chain| panic!("no pick in\n{chain}"));
    assert_eq!(n, 2, "{elements}");
    let keys: Vec<u32> = ["10.244.1.11 . 8080", "10.244.1.12 . 8080"]
        .iter()
        .map(|ep| {
            (offset..offset + 2)
                .find(|k| elements.contains(&format!("{k} : {ep}")))
                .unwrap_or_else(|| panic!("{ep} not at {offset} or {offset}+1 in\n{elements}"))
        })
        .collect();
    assert_ne!(keys[0], keys[1], "{elements}");

    // Pod → ClusterIP: in the kernel, both endpoints, and the backend sees the pod's address.
    let pod = &c.pods[client].ns;
    let tcp = tcp_whoami(pod, "10.96.0.10:80", 30, "pod → ClusterIP TCP");
    assert_eq!(names(&tcp), set(&["a", "b"]), "{tcp:?}");
    assert_eq!(sources(&tcp), set(&["10.244.1.100"]), "{tcp:?}");
    let udp = whoami_all(
        pod.enter(|| {
            (0..30)
                .map(|i| udp_ask(sa("10.96.0.10:53"), &i.to_string(), Duration::from_secs(2)))
                .collect()
        }),
        "pod → ClusterIP UDP",
    );
    assert_eq!(names(&udp), set(&["a", "b"]), "{udp:?}");
    assert_eq!(sources(&udp), set(&["10.244.1.100"]), "{udp:?}");
    // ClientIP affinity in the kernel: every connection of this client lands on one endpoint.
    let stuck = tcp_whoami(
        pod,
        "10.96.0.14:80",
        20,
        "pod → ClientIP-affinity ClusterIP",
    );
    assert_eq!(names(&stuck).len(), 1, "{stuck:?}");
    assert_eq!(sources(&stuck), set(&["10.244.1.100"]), "{stuck:?}");
    let table = netns::list_tables(n1);
    assert!(
        table.contains("update @svc-default/sticky/tcp/80/int4/aff/"),
        "{table}"
    );
    let node = c.node(1);
    assert_eq!(
        node.metric(Some(n1), "switchboard_l4_connections_total"),
        0.0,
        "no connection crossed the relay"
    );

    // Hairpin: pod a reaching itself through the Service is masqueraded (else its own reply
    // would never match the connection); reaching b, it keeps its address.
    let hair = tcp_whoami(&c.pods[a].ns, "10.96.0.10:80", 40, "hairpin");
    let seen: HashMap<String, HashSet<String>> =
        hair.iter().fold(HashMap::new(), |mut m, (n, s)| {
            m.entry(n.clone()).or_default().insert(s.clone());
            m
        });
    assert_eq!(seen.get("a"), Some(&set(&["10.244.1.1"])), "{hair:?}");
    assert_eq!(seen.get("b"), Some(&set(&["10.244.1.11"])), "{hair:?}");

    // From outside to the NodePort (externalTrafficPolicy Cluster): masqueraded to the node.
    let outside = tcp_whoami(&c.outside, "10.250.1.1:30080", 10, "outside → NodePort");
    assert_eq!(sources(&outside), set(&["10.244.1.1"]), "{outside:?}");
    // --nodeport-addresses 10.250.0.0/16: the node's pod-bridge address serves no NodePort
    // (nothing listens there, so the node's own stack refuses).
    let not_there = pod.enter(|| tcp_hello(sa("10.244.1.1:30080"), None));
    assert_eq!(
        not_there.as_ref().map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused),
        "{not_there:?}"
    );

    // One flow (one client socket) on a; a leaves the Service: the flow moves to b with the
    // next datagram after the update (its conntrack entry is deleted), none lost after that.
    let sock = pod.enter(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    let first = pod
        .enter(|| udp_ask_on(&sock, sa("10.96.0.10:53"), "hello", Duration::from_secs(2)))
        .expect("first datagram answered");
    let (first_name, _) = first.split_once(' ').unwrap();
    let (stay, gone_ip) = if first_name == "a" {
        (Ep::ready("10.244.1.12").on("node1"), "10.244.1.11")
    } else {
        (Ep::ready("10.244.1.11").on("node1"), "10.244.1.12")
    };
    let other = if first_name == "a" { "b" } else { "a" };
    // The change carries the EndpointSlice controller's trigger time, two seconds ago.
    let triggered = std::process::Command::new("date")
        .args(["-u", "-d", "-2 seconds", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    let triggered = String::from_utf8(triggered.stdout).unwrap();
    c.manifest(
        "web.yaml",
        &web(&[], &[stay]).replace(
            "  name: web-1\n  namespace: default\n",
            &format!(
                "  name: web-1\n  namespace: default\n  annotations:\n    endpoints.kubernetes.io/last-change-trigger-time: \"{}\"\n",
                triggered.trim()
            ),
        ),
    );
    c.wait_applied(1, "one endpoint left", |t| {
        !service_block(t, "default/web").contains(gone_ip)
    });
    // kube-proxy's network programming duration, from that trigger time: at least 2 s.
    let n = c.node(1);
    assert_eq!(
        n.metric(
            Some(n1),
            "switchboard_l4_network_programming_duration_seconds_count"
        ),
        1.0
    );
    assert!(
        n.metric(
            Some(n1),
            "switchboard_l4_network_programming_duration_seconds_sum"
        ) >= 2.0
    );
    let after: Vec<String> = (0..20)
        .map(|i| {
            pod.enter(|| {
                udp_ask_on(
                    &sock,
                    sa("10.96.0.10:53"),
                    &i.to_string(),
                    Duration::from_secs(2),
                )
            })
            .unwrap_or_else(|e| panic!("datagram {i} after the update lost: {e}"))
        })
        .collect();
    assert!(
        after.iter().all(|r| r.starts_with(&format!("{other} "))),
        "the flow moved to {other}: {after:?}"
    );
    for chain in ["svc-default/web/udp/53/int4", "svc-default/web/tcp/80/int4"] {
        let rules = netns::list_chain(n1, chain);
        assert!(!rules.contains(gone_ip), "{rules}");
    }

    // The sticky client's endpoint leaves: it moves to the other one, and stays there.
    let stuck_on = stuck[0].0.clone();
    let (stuck_ip, remaining) = if stuck_on == "a" {
        ("10.244.1.11", "10.244.1.12")
    } else {
        ("10.244.1.12", "10.244.1.11")
    };
    c.manifest("sticky.yaml", &sticky(&[Ep::ready(remaining).on("node1")]));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let chain = netns::list_chain(n1, "svc-default/sticky/tcp/80/int4");
        if !chain.contains(&stuck_ip.replace('.', "")) && chain.contains("numgen random mod 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sticky chain never lost {stuck_ip}:\n{chain}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let moved = tcp_whoami(pod, "10.96.0.14:80", 10, "sticky after its endpoint left");
    let other_name = if stuck_on == "a" { "b" } else { "a" };
    assert_eq!(names(&moved), set(&[other_name]), "{moved:?}");

    // The Service moved to the relay by annotation: redirected, the backend sees the node.
    let both = [
        Ep::ready("10.244.1.11").on("node1"),
        Ep::ready("10.244.1.12").on("node1"),
    ];
    c.manifest(
        "web.yaml",
        &web(&[("switchboard.dev/l4-mode", "proxy")], &both),
    );
    c.wait_applied(1, "relay", |t| t.contains("l4-mode"));
    let table = netns::list_tables(n1);
    assert!(
        table.contains("10.96.0.10 . tcp . 80 : jump tcp-redirect"),
        "{table}"
    );
    assert!(
        !table.contains("svc-default/web"),
        "chains deleted: {table}"
    );
    let relayed = tcp_whoami(pod, "10.96.0.10:80", 10, "relay");
    assert_eq!(sources(&relayed), set(&["10.244.1.1"]), "{relayed:?}");
    assert!(
        c.node(1)
            .metric(Some(n1), "switchboard_l4_connections_total")
            >= 10.0
    );

    // And back to the kernel.
    c.manifest("web.yaml", &web(&[], &both));
    c.wait_applied(1, "kernel again", |t| !t.contains("l4-mode"));
    let back = tcp_whoami(pod, "10.96.0.10:80", 10, "kernel again");
    assert_eq!(sources(&back), set(&["10.244.1.100"]), "{back:?}");
}

/// A LoadBalancer Service with one LoadBalancer IP (10.96.100.1) and `ranges` as its
/// `loadBalancerSourceRanges`, over pod a.
fn lb_service(ranges: &str) -> String {
    let yaml = service_yaml(
        "lb",
        "10.96.0.22",
        &format!("  type: LoadBalancer\n  loadBalancerSourceRanges: [\"{ranges}\"]\n"),
        &[],
        &[("http", "TCP", 80, 8080, Some(30091))],
        &[Ep::ready("10.244.1.11").on("node1")],
    );
    yaml.replacen(
        "---\n",
        "status:\n  loadBalancer:\n    ingress: [{ip: 10.96.100.1}]\n---\n",
        1,
    )
}

/// `ipFamilyPolicy: RequireDualStack`: one ClusterIP per family, one EndpointSlice per family.
const DUAL_STACK: &str = "apiVersion: v1
kind: Service
metadata: { name: dual, namespace: default }
spec:
  clusterIP: 10.96.0.24
  clusterIPs: [10.96.0.24, \"fd00:96::24\"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports: [{ name: http, protocol: TCP, port: 80, targetPort: 8080 }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: dual-v4, namespace: default, labels: { kubernetes.io/service-name: dual } }
addressType: IPv4
ports: [{ name: http, protocol: TCP, port: 8080 }]
endpoints: [{ addresses: [10.244.1.11], conditions: { ready: true }, nodeName: node1 }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: dual-v6, namespace: default, labels: { kubernetes.io/service-name: dual } }
addressType: IPv6
ports: [{ name: http, protocol: TCP, port: 8080 }]
endpoints: [{ addresses: [\"fd00:244:1::11\"], conditions: { ready: true }, nodeName: node1 }]
";

#[test]
fn needs_root_kernel_path_local_policy_ipv6_host_clients_and_reject() {
    if skip_unless_root("needs_root_kernel_path_local_policy_ipv6_host_clients_and_reject") {
        return;
    }
    let mut c = Cluster::kernel();
    let a = c.pod(1, 11);
    let client = c.pod(1, 100);
    for ip in [c.pods[a].v4, c.pods[a].v6] {
        let backends = Backend::whoami(Some(&c.pods[a].ns), SocketAddr::new(ip, 8080), "a");
        c.backends.extend(backends);
    }
    let tcp = &[("http", "TCP", 80, 8080, Some(30090))];
    c.manifest(
        "loc.yaml",
        &service_yaml(
            "loc",
            "10.96.0.20",
            "  type: NodePort\n  externalTrafficPolicy: Local\n",
            &[],
            tcp,
            &[Ep::ready("10.244.1.11").on("node1")],
        ),
    );
    c.manifest(
        "web6.yaml",
        &service_yaml(
            "web6",
            "fd00:96::20",
            "",
            &[],
            &[("http", "TCP", 80, 8080, None)],
            &[Ep::ready("fd00:244:1::11").on("node1")],
        ),
    );
    c.manifest(
        "none.yaml",
        &service_yaml(
            "none",
            "10.96.0.21",
            "",
            &[],
            &[("http", "TCP", 80, 8080, None)],
            &[],
        ),
    );
    c.manifest("lb.yaml", &lb_service("192.0.2.0/24"));
    // Only a terminating endpoint that still serves: kube-proxy's fallback uses it.
    let draining = Ep {
        ready: false,
        serving: true,
        terminating: true,
        ..Ep::ready("10.244.1.11").on("node1")
    };
    c.manifest(
        "term.yaml",
        &service_yaml(
            "term",
            "10.96.0.23",
            "",
            &[],
            &[("http", "TCP", 80, 8080, None)],
            &[draining],
        ),
    );
    c.manifest("dual.yaml", DUAL_STACK);
    for node in [1, 2] {
        // No DNS lame duck: node 1 is restarted below, and its stop need not wait.
        c.start_node(
            node,
            &["--cluster-cidr", "10.244.0.0/16", "--lame-duck", "0s"],
        );
        c.wait_applied(node, "all six", |t| {
            t.contains("10.96.0.23")
                && t.contains("10.96.0.20")
                && t.contains("fd00:96::20")
                && t.contains("10.96.0.21")
                && t.contains("fd00:96::24")
                && t.contains("loadBalancerSourceRanges=192.0.2.0/24")
        });
    }

    // loadBalancerSourceRanges: the outside client is not in 192.0.2.0/24, so its traffic to
    // the LoadBalancer IP is dropped; once the range includes it, it gets through.
    c.outside.ip("route add 10.96.100.1 via 10.250.1.1");
    let denied = c.outside.enter(|| tcp_hello(sa("10.96.100.1:80"), None));
    assert_eq!(
        denied.as_ref().map_err(|e| e.kind()),
        Err(std::io::ErrorKind::TimedOut),
        "{denied:?}"
    );
    c.manifest("lb.yaml", &lb_service("10.250.1.0/24"));
    c.wait_applied(1, "wider range", |t| {
        t.contains("loadBalancerSourceRanges=10.250.1.0/24")
    });
    let allowed = tcp_whoami(
        &c.outside,
        "10.96.100.1:80",
        3,
        "outside → LoadBalancer IP within the source ranges",
    );
    assert_eq!(names(&allowed), set(&["a"]), "{allowed:?}");

    // externalTrafficPolicy Local, from outside: the client's own address reaches the pod.
    let kept = tcp_whoami(
        &c.outside,
        "10.250.1.1:30090",
        5,
        "outside → NodePort (Local) on node1",
    );
    assert_eq!(sources(&kept), set(&["10.250.1.2"]), "{kept:?}");
    // Node 2 has no local endpoint: dropped (no answer, no reset), and counted.
    let dropped = c.outside.enter(|| tcp_hello(sa("10.250.2.1:30090"), None));
    assert_eq!(
        dropped.as_ref().map_err(|e| e.kind()),
        Err(std::io::ErrorKind::TimedOut),
        "{dropped:?}"
    );
    let n2 = c.node_netns(2);
    assert_eq!(
        c.node(2).metric(
            Some(n2),
            "switchboard_l4_no_local_endpoints{traffic=\"external\"}"
        ),
        1.0
    );
    // The pod network short-circuit: a pod on node 2 reaches the Local service through node 2
    // (every endpoint, as kube-proxy).
    let p2 = c.pod(2, 50);
    let via2 = tcp_whoami(
        &c.pods[p2].ns,
        "10.250.2.1:30090",
        3,
        "pod on node2 → NodePort (Local) on node2",
    );
    assert_eq!(names(&via2), set(&["a"]), "{via2:?}");

    // IPv6 ClusterIP from a pod: DNATed in the kernel, the pod's address kept.
    let six = tcp_whoami(
        &c.pods[client].ns,
        "[fd00:96::20]:80",
        5,
        "pod → IPv6 ClusterIP",
    );
    assert_eq!(sources(&six), set(&["fd00:244:1::100"]), "{six:?}");

    // One dual-stack Service: each family's ClusterIP reaches that family's endpoint, in the
    // kernel, with the pod's address of that family kept.
    for (vip, source) in [
        ("10.96.0.24:80", "10.244.1.100"),
        ("[fd00:96::24]:80", "fd00:244:1::100"),
    ] {
        let got = tcp_whoami(&c.pods[client].ns, vip, 3, "pod → dual-stack ClusterIP");
        assert_eq!(names(&got), set(&["a"]), "{vip}: {got:?}");
        assert_eq!(sources(&got), set(&[source]), "{vip}: {got:?}");
    }

    // A hostNetwork client (the node itself) through the output hook; a node has a default
    // route, which is what takes a ClusterIP to the output hook at all.
    let n1 = c.node_netns(1);
    n1.ip("route add default via 10.250.1.2");
    let host = tcp_whoami(n1, "10.96.0.20:80", 3, "node → ClusterIP");
    assert_eq!(names(&host), set(&["a"]), "{host:?}");

    // Serving and terminating only: still reached, through the kernel chain.
    let fallback = tcp_whoami(
        &c.pods[client].ns,
        "10.96.0.23:80",
        3,
        "pod → Service whose only endpoint is terminating",
    );
    assert_eq!(names(&fallback), set(&["a"]), "{fallback:?}");

    // No endpoints: refused (TCP reset), not left hanging.
    let refused = c.pods[client]
        .ns
        .enter(|| tcp_hello(sa("10.96.0.21:80"), None));
    assert_eq!(
        refused.as_ref().map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
    assert!(c.node(1).metric(Some(n1), "switchboard_l4_kernel_chains") >= 3.0);
    assert!(
        c.node(1)
            .metric(Some(n1), "switchboard_l4_last_sync_timestamp_seconds")
            > 1.0e9
    );

    // A restart whose sources have not synced keeps the previous run's table serving, as
    // kube-proxy waits for its informers: here the second source, an API server that does not
    // answer, never syncs, and Service traffic still flows on the old table.
    let status = c.nodes[0].as_mut().unwrap().terminate();
    assert!(status.success(), "{status}");
    let dead_api = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        dead_api.path(),
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: { server: \"http://127.0.0.1:1\" }\n\
         contexts:\n- name: c\n  context: { cluster: c, user: u }\ncurrent-context: c\nusers:\n- name: u\n  user: {}\n",
    )
    .unwrap();
    c.start_node(
        1,
        &[
            "--cluster-cidr",
            "10.244.0.0/16",
            "--kubeconfig",
            dead_api.path().to_str().unwrap(),
        ],
    );
    c.node(1)
        .wait_log("l4: keeping the table of the previous run until every source has synced");
    let kept = tcp_whoami(
        &c.pods[client].ns,
        "10.96.0.20:80",
        3,
        "pod → ClusterIP while the sources have not synced",
    );
    assert_eq!(names(&kept), set(&["a"]), "{kept:?}");
    assert!(
        !c.node(1).log().contains("l4: synced"),
        "programmed before its sources synced:\n{}",
        c.node(1).log()
    );
}
