//! switchboard in a namespace, and the manifests and clusters the L4 tests build for it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

/// switchboard running in a namespace (or the root one): the common harness's process, with
/// admin access from inside that namespace.
pub struct Node {
    sb: Switchboard,
    pub admin: SocketAddr,
}

impl Node {
    pub fn start(ns: Option<&Netns>, args: &[&str]) -> Node {
        let prefix: Vec<&str> = match ns {
            Some(ns) => vec!["ip", "netns", "exec", &ns.name],
            None => vec![],
        };
        let sb = Switchboard::launch(
            &prefix,
            args,
            &[("RUST_LOG", "info,proxy=debug,controller=info")],
            Duration::from_secs(30),
            ns.map_or("root namespace", |n| n.name.as_str()),
        );
        Node {
            admin: sb.admin,
            sb,
        }
    }

    pub fn log(&self) -> String {
        self.sb.log()
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.sb.log_contains(needle)
    }

    /// Waits (up to 20 s) until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log_contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the bind-mode listener for `frontend` (`tcp`/`udp`, `ADDR:PORT`) is open: the
    /// `listening on l4/PROTO ADDR` line, logged once the socket is bound and accepting.
    pub fn wait_listening(&self, proto: &str, frontend: &str) {
        let line = format!("listening on l4/{proto} {frontend}");
        let deadline = Instant::now() + Duration::from_secs(20);
        // The address ends the line: `…:80` must not match `…:8080`.
        while !self.log().lines().any(|l| l.ends_with(&line)) {
            assert!(Instant::now() < deadline, "never {line:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// GET on the admin listener (from inside the node's namespace).
    pub fn admin_get(&self, ns: Option<&Netns>, path: &str) -> (u16, String) {
        let admin = self.admin;
        within(ns, || http_get(admin, path))
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()))
    }

    /// A metric's value: the sum of the samples whose line starts with `series`.
    pub fn metric(&self, ns: Option<&Netns>, series: &str) -> f64 {
        let (_, body) = self.admin_get(ns, "/metrics");
        body.lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until the L4 data plane has applied a snapshot whose `/debug/tables` satisfies
    /// `pred` (the applied generation catches up with the published one).
    pub fn wait_applied(&self, ns: Option<&Netns>, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, tables) = self.admin_get(ns, "/debug/tables");
            let generation: f64 = tables
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# generation "))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|g| g.parse().ok())
                .unwrap_or(-1.0);
            if pred(&tables) && self.metric(ns, "switchboard_l4_applied_generation") >= generation {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never applied {what}:\n{tables}\n--- log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.sb.terminate()
    }
}

// ---- manifests ----

/// One endpoint of a slice.
#[derive(Clone, Debug)]
pub struct Ep {
    pub ip: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
    pub zone: Option<String>,
    pub hint_zones: Vec<String>,
}

impl Ep {
    pub fn ready(ip: impl ToString) -> Ep {
        Ep {
            ip: ip.to_string(),
            ready: true,
            serving: true,
            terminating: false,
            node: None,
            zone: None,
            hint_zones: vec![],
        }
    }
    pub fn not_ready(ip: impl ToString) -> Ep {
        Ep {
            ready: false,
            serving: false,
            ..Ep::ready(ip)
        }
    }
    pub fn on(mut self, node: &str) -> Ep {
        self.node = Some(node.into());
        self
    }
    pub fn zone(mut self, zone: &str) -> Ep {
        self.zone = Some(zone.into());
        self
    }
}

/// A Service and its EndpointSlice as YAML. `spec_extra` is added under `spec:` (indented two
/// spaces already), `ports` are (name, protocol, port, targetPort, nodePort).
pub fn service_yaml(
    name: &str,
    cluster_ip: &str,
    spec_extra: &str,
    annotations: &[(&str, &str)],
    ports: &[(&str, &str, u16, u16, Option<u16>)],
    eps: &[Ep],
) -> String {
    let family = if cluster_ip.contains(':') {
        "IPv6"
    } else {
        "IPv4"
    };
    let mut s =
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n");
    if !annotations.is_empty() {
        s.push_str("  annotations:\n");
        for (k, v) in annotations {
            s.push_str(&format!("    {k}: \"{v}\"\n"));
        }
    }
    s.push_str(&format!(
        "spec:\n  clusterIP: {cluster_ip}\n  clusterIPs: [{cluster_ip}]\n  ipFamilies: [{family}]\n{spec_extra}  ports:\n"
    ));
    for (pname, proto, port, target, node_port) in ports {
        s.push_str(&format!(
            "  - name: {pname}\n    protocol: {proto}\n    port: {port}\n    targetPort: {target}\n"
        ));
        if let Some(np) = node_port {
            s.push_str(&format!("    nodePort: {np}\n"));
        }
    }
    s.push_str(&format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: {family}\nports:\n"
    ));
    for (pname, proto, _, target, _) in ports {
        s.push_str(&format!(
            "- name: {pname}\n  protocol: {proto}\n  port: {target}\n"
        ));
    }
    if eps.is_empty() {
        s.push_str("endpoints: []\n");
    } else {
        s.push_str("endpoints:\n");
    }
    for e in eps {
        s.push_str(&format!(
            "- addresses: [\"{}\"]\n  conditions: {{ready: {}, serving: {}, terminating: {}}}\n",
            e.ip, e.ready, e.serving, e.terminating
        ));
        if let Some(n) = &e.node {
            s.push_str(&format!("  nodeName: {n}\n"));
        }
        if let Some(z) = &e.zone {
            s.push_str(&format!("  zone: {z}\n"));
        }
        if !e.hint_zones.is_empty() {
            s.push_str("  hints:\n    forZones:\n");
            for z in &e.hint_zones {
                s.push_str(&format!("    - name: {z}\n"));
            }
        }
    }
    s
}

/// Writes `text` to `dir/name` atomically (the watcher never sees half a file).
pub fn write_manifest(dir: &std::path::Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

// ---- a two-node cluster in namespaces ----

/// A pod: its namespace and addresses.
pub struct Pod {
    pub ns: Netns,
    pub v4: std::net::IpAddr,
    pub v6: std::net::IpAddr,
}

/// Two "node" namespaces (node1, node2) joined by a veth link, each with a bridge for its pods
/// (node N: pods 10.244.N.H/24 and fd00:244:N::H/64, bridge .1), and an "outside" namespace
/// linked to both nodes (10.250.N.2 ↔ node 10.250.N.1). Field order is drop order: processes
/// stop before namespaces go.
pub struct Cluster {
    pub nodes: Vec<Option<Node>>,
    pub backends: Vec<Backend>,
    pub pods: Vec<Pod>,
    pub outside: Netns,
    pub node_ns: Vec<Netns>,
    pub dir: tempfile::TempDir,
    /// Flags every node starts with.
    pub node_args: Vec<String>,
}

impl Cluster {
    /// Nodes whose Services go to the userspace relay (`--l4-default-mode proxy`): the tests
    /// of what the relay does.
    pub fn new() -> Cluster {
        Self::with_node_args(&["--l4-default-mode", "proxy"])
    }

    /// Nodes on the default kernel path (DNAT in nftables).
    pub fn kernel() -> Cluster {
        Self::with_node_args(&[])
    }

    fn with_node_args(node_args: &[&str]) -> Cluster {
        let node_ns = vec![Netns::new("node1"), Netns::new("node2")];
        let outside = Netns::new("out");
        for (i, n) in node_ns.iter().enumerate() {
            let k = i + 1;
            n.sysctl("net.ipv4.ip_forward=1");
            n.sysctl("net.ipv6.conf.all.forwarding=1");
            n.ip("link add br0 type bridge");
            n.ip("link set br0 up");
            n.ip(&format!("addr add 10.244.{k}.1/24 dev br0"));
            n.ip(&format!("-6 addr add fd00:244:{k}::1/64 dev br0 nodad"));
            veth(n, "out", &outside, &format!("n{k}"));
            n.ip(&format!("addr add 10.250.{k}.1/24 dev out"));
            outside.ip(&format!("addr add 10.250.{k}.2/24 dev n{k}"));
            n.ip(&format!("-6 addr add fd00:250:{k}::1/64 dev out nodad"));
            outside.ip(&format!("-6 addr add fd00:250:{k}::2/64 dev n{k} nodad"));
        }
        let (n1, n2) = (&node_ns[0], &node_ns[1]);
        veth(n1, "peer", n2, "peer");
        n1.ip("addr add 10.200.0.1/30 dev peer");
        n2.ip("addr add 10.200.0.2/30 dev peer");
        n1.ip("-6 addr add fd00:200::1/64 dev peer nodad");
        n2.ip("-6 addr add fd00:200::2/64 dev peer nodad");
        n1.ip("route add 10.244.2.0/24 via 10.200.0.2");
        n2.ip("route add 10.244.1.0/24 via 10.200.0.1");
        n1.ip("-6 route add fd00:244:2::/64 via fd00:200::2");
        n2.ip("-6 route add fd00:244:1::/64 via fd00:200::1");
        Cluster {
            nodes: vec![None, None],
            backends: Vec::new(),
            pods: Vec::new(),
            outside,
            node_ns,
            dir: tempfile::tempdir().unwrap(),
            node_args: node_args.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// Adds a pod on node `node` (1 or 2) with host number `host`; returns its index.
    pub fn pod(&mut self, node: usize, host: u8) -> usize {
        let ns = Netns::new(&format!("p{node}x{host}"));
        let n = &self.node_ns[node - 1];
        let ifname = format!("p{host}");
        veth(n, &ifname, &ns, "eth0");
        n.ip(&format!("link set {ifname} master br0"));
        // As the CNI bridge plugin's hairpinMode (and kubelet's hairpin-veth): with
        // br_netfilter, a pod's packet DNATed back to the pod itself is bridged out of the port
        // it came in on, which a bridge only does with hairpin on.
        n.ip(&format!("link set {ifname} type bridge_slave hairpin on"));
        ns.ip(&format!("addr add 10.244.{node}.{host}/24 dev eth0"));
        ns.ip(&format!(
            "-6 addr add fd00:244:{node}::{host}/64 dev eth0 nodad"
        ));
        ns.ip(&format!("route add default via 10.244.{node}.1"));
        ns.ip(&format!("-6 route add default via fd00:244:{node}::1"));
        self.pods.push(Pod {
            ns,
            v4: format!("10.244.{node}.{host}").parse().unwrap(),
            v6: format!("fd00:244:{node}::{host}").parse().unwrap(),
        });
        self.pods.len() - 1
    }

    /// A pod with TCP (and UDP) backends named `name` on `port`, IPv4 and IPv6.
    pub fn backend_pod(
        &mut self,
        node: usize,
        host: u8,
        name: &str,
        port: u16,
        udp: bool,
    ) -> usize {
        let i = self.pod(node, host);
        let (v4, v6) = (self.pods[i].v4, self.pods[i].v6);
        let ns = &self.pods[i].ns;
        let mut b = vec![
            Backend::tcp(Some(ns), SocketAddr::new(v4, port), name, false),
            Backend::tcp(Some(ns), SocketAddr::new(v6, port), name, false),
        ];
        if udp {
            b.push(Backend::udp(
                Some(ns),
                SocketAddr::new(v4, port),
                name,
                false,
            ));
            b.push(Backend::udp(
                Some(ns),
                SocketAddr::new(v6, port),
                name,
                false,
            ));
        }
        self.backends.extend(b);
        i
    }

    /// Stops every backend server named `name`.
    pub fn stop_backend(&mut self, name: &str) {
        self.backends.retain(|b| b.name != name);
    }

    pub fn manifest(&self, file: &str, text: &str) {
        write_manifest(self.dir.path(), file, text);
    }

    /// Starts switchboard in node `node` (1 or 2) with `--l4 nftables` and `extra` flags.
    pub fn start_node(&mut self, node: usize, extra: &[&str]) {
        let dir = self.dir.path().to_str().unwrap().to_string();
        let name = format!("node{node}");
        let mut args = vec![
            "--manifests",
            &dir,
            "--l4",
            "nftables",
            "--node-name",
            &name,
        ];
        args.extend(self.node_args.iter().map(String::as_str));
        args.extend(extra);
        self.nodes[node - 1] = Some(Node::start(Some(&self.node_ns[node - 1]), &args));
    }

    pub fn node(&self, node: usize) -> &Node {
        self.nodes[node - 1].as_ref().expect("node started")
    }

    pub fn node_netns(&self, node: usize) -> &Netns {
        &self.node_ns[node - 1]
    }

    pub fn wait_applied(&self, node: usize, what: &str, pred: impl Fn(&str) -> bool) {
        self.node(node)
            .wait_applied(Some(self.node_netns(node)), what, pred)
    }

    /// `nft list tables` inside node `node`.
    pub fn nft_tables(&self, node: usize) -> String {
        self.node_netns(node).exec(&["nft", "list", "tables"])
    }

    /// How many of switchboard's tables (the main one, and the service tables) node `node` has.
    pub fn switchboard_tables(&self, node: usize) -> (usize, usize) {
        let listing = self.nft_tables(node);
        let main = listing
            .lines()
            .filter(|l| l.trim() == "table inet switchboard")
            .count();
        let service = listing
            .lines()
            .filter(|l| l.trim().starts_with("table inet switchboard-svc"))
            .count();
        (main, service)
    }
}
