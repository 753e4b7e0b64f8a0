//! Helpers for the L4 tests: network namespaces joined by veth pairs (root only), switchboard
//! running inside a "node" namespace, real TCP/UDP backends, and manifest builders.
//!
//! Everything a test creates is removed on `Drop`, also when the test fails: processes first,
//! then namespaces (which takes their veths, addresses, routes and nftables tables with them).
//! Names are unique per process and test (`sb<pid>n<counter>`). Traffic only ever flows between
//! addresses inside these namespaces, or on 127.0.0.0/8 for the unprivileged tests.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;
pub use common::Switchboard;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when this test cannot run here (not root, or no `ip`/`nft`): says so on the terminal,
/// or fails the test when `SWITCHBOARD_REQUIRE_ROOT=1` (see `common::skip_unless_root`).
pub fn skip_unless_root(test: &str) -> bool {
    common::skip_unless_root(test, &["ip", "nft"])
}

fn unique() -> String {
    format!(
        "sb{}n{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Netns {
        let name = format!("{}{role}", unique());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip("link set lo up");
        ns
    }

    /// `ip -n NAME ARGS` (whitespace-separated); panics on failure.
    pub fn ip(&self, args: &str) -> String {
        let mut v = vec!["-n", &self.name];
        v.extend(args.split_whitespace());
        run("ip", &v)
    }

    /// Runs a command inside the namespace; panics on failure.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["netns", "exec", &self.name];
        v.extend(args);
        run("ip", &v)
    }

    /// Like `exec`, returning (success, stdout+stderr) instead of panicking.
    pub fn try_exec(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Sets `a.b.c=v` through /proc/sys (no procps needed).
    pub fn sysctl(&self, kv: &str) {
        let (k, v) = kv.split_once('=').expect("key=value");
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        self.exec(&["sh", "-c", &format!("echo {v} > {path}")]);
    }

    /// Runs `f` on a thread inside this namespace; sockets it creates stay in the namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(move || {
                let fd = std::fs::File::open(&path).expect("open netns");
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The endpoint pick of a kernel-path chain in switchboard's table in `ns`, as nft lists it:
/// `numgen random mod N [offset O] map @MAP` gives (N, O, MAP's listing). `Err` with the chain's
/// listing when the chain has no pick (it DNATs to one endpoint, or does not exist).
pub fn chain_pick(ns: &Netns, chain: &str) -> Result<(usize, u32, String), String> {
    let table = chain_table(chain);
    let (_, listing) = ns.try_exec(&["nft", "list", "chain", "inet", &table, chain]);
    let words: Vec<&str> = listing
        .split("numgen random mod ")
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    // nft leaves out `offset 0`.
    let (n, offset, map) = match words[..] {
        [n, "offset", o, "map", m, ..] => (n, o.parse().ok(), m),
        [n, "map", m, ..] => (n, Some(0), m),
        _ => return Err(listing),
    };
    let (Ok(n), Some(offset)) = (n.parse(), offset) else {
        return Err(listing);
    };
    let map = map.trim_start_matches('@');
    Ok((
        n,
        offset,
        ns.exec(&["nft", "list", "map", "inet", &table, map]),
    ))
}

/// The service table (`inet switchboard-svcN`) holding a kernel-path chain of switchboard's
/// default table.
pub fn chain_table(chain: &str) -> String {
    proxy::l4::nft::chain_table(&proxy::l4::NftConfig::default(), chain)
}

/// `nft list chain` of a kernel-path chain in its service table.
pub fn list_chain(ns: &Netns, chain: &str) -> String {
    ns.exec(&["nft", "list", "chain", "inet", &chain_table(chain), chain])
}

/// switchboard's tables in `ns` (the main one and the service tables): every table there.
pub fn list_tables(ns: &Netns) -> String {
    ns.exec(&["nft", "list", "ruleset"])
}

/// A veth pair from `a` (interface `a_if`) to `b` (`b_if`), both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    run(
        "ip",
        &[
            "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
            &b.name,
        ],
    );
    a.ip(&format!("link set {a_if} up"));
    b.ip(&format!("link set {b_if} up"));
}

/// Runs `f` in `ns`, or here when `None`.
pub fn within<T: Send>(ns: Option<&Netns>, f: impl FnOnce() -> T + Send) -> T {
    match ns {
        Some(ns) => ns.enter(f),
        None => f(),
    }
}

// ---- backends ----

/// A backend pod's server: TCP answers `NAME\n` on connect then echoes; UDP answers each
/// datagram with `NAME:PAYLOAD`. With `proxy_protocol`, it first reads a PROXY v2 header and
/// answers `NAME SRC` (TCP) / `NAME:SRC:PAYLOAD` (UDP). Stops on drop.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub hits: Arc<AtomicU32>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Backend {
    pub fn tcp(ns: Option<&Netns>, addr: SocketAddr, name: &str, proxy_protocol: bool) -> Backend {
        let listener =
            within(ns, || TcpListener::bind(addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicU32::new(0));
        let (s, h, n) = (stop.clone(), hits.clone(), name.to_string());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        h.fetch_add(1, Ordering::Relaxed);
                        let (s, n) = (s.clone(), n.clone());
                        std::thread::spawn(move || serve_tcp(conn, &n, proxy_protocol, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Backend {
            name: name.into(),
            addr,
            stop,
            hits,
        }
    }

    pub fn udp(ns: Option<&Netns>, addr: SocketAddr, name: &str, proxy_protocol: bool) -> Backend {
        let sock =
            within(ns, || UdpSocket::bind(addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = sock.local_addr().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicU32::new(0));
        let (s, h, n) = (stop.clone(), hits.clone(), name.to_string());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                let Ok((len, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                h.fetch_add(1, Ordering::Relaxed);
                let data = &buf[..len];
                let reply = if proxy_protocol {
                    match decode_proxy_v2(data, false) {
                        Ok((src, _, hl)) => {
                            format!("{n}:{src}:{}", String::from_utf8_lossy(&data[hl..]))
                        }
                        Err(e) => format!("{n}:bad-proxy-header({e})"),
                    }
                } else {
                    format!("{n}:{}", String::from_utf8_lossy(data))
                };
                let _ = sock.send_to(reply.as_bytes(), from);
            }
        });
        Backend {
            name: name.into(),
            addr,
            stop,
            hits,
        }
    }
}

/// Decodes a PROXY protocol v2 header at the start of `data`, written from the specification
/// (haproxy's proxy-protocol.txt, section 2.2) and on purpose not with the crate's own parser,
/// so that an encoder bug mirrored by that parser still shows. `tcp` says which transport the
/// header must announce. Returns the source and destination addresses and the header's length.
pub fn decode_proxy_v2(data: &[u8], tcp: bool) -> Result<(SocketAddr, SocketAddr, usize), String> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    const SIGNATURE: [u8; 12] = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
    ];
    if data.len() < 16 {
        return Err(format!(
            "{} bytes, shorter than the 16-byte header",
            data.len()
        ));
    }
    if data[..12] != SIGNATURE {
        return Err(format!("signature {:02x?}", &data[..12]));
    }
    // The 13th byte: version 2 in the high nibble, command PROXY (1) in the low one.
    if data[12] != 0x21 {
        return Err(format!("version/command {:#04x}, not 0x21", data[12]));
    }
    // The 14th byte: address family in the high nibble (1 AF_INET, 2 AF_INET6), transport in
    // the low one (1 STREAM, 2 DGRAM).
    let (family, transport) = (data[13] >> 4, data[13] & 0x0F);
    let want = if tcp { 1 } else { 2 };
    if transport != want {
        return Err(format!("transport {transport}, expected {want}"));
    }
    // Bytes 15-16: the length of what follows, in network byte order.
    let len = u16::from_be_bytes([data[14], data[15]]) as usize;
    let total = 16 + len;
    if data.len() < total {
        return Err(format!(
            "length {len} beyond the {} bytes received",
            data.len() - 16
        ));
    }
    let a = &data[16..total];
    let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
    match family {
        // src_addr[4] dst_addr[4] src_port[2] dst_port[2]
        1 if len >= 12 => {
            let ip = |i: usize| Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]);
            let src = SocketAddr::new(ip(0).into(), port(8));
            let dst = SocketAddr::new(ip(4).into(), port(10));
            Ok((src, dst, total))
        }
        // src_addr[16] dst_addr[16] src_port[2] dst_port[2]
        2 if len >= 36 => {
            let ip = |i: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&a[i..i + 16]).unwrap());
            let src = SocketAddr::new(ip(0).into(), port(32));
            let dst = SocketAddr::new(ip(16).into(), port(34));
            Ok((src, dst, total))
        }
        _ => Err(format!("family {family} with {len} address bytes")),
    }
}

fn serve_tcp(mut conn: TcpStream, name: &str, proxy_protocol: bool, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = conn.set_nodelay(true);
    let greeting = if proxy_protocol {
        let mut head = [0u8; 16];
        if read_full(&mut conn, &mut head, stop).is_err() {
            return;
        }
        let len = u16::from_be_bytes([head[14], head[15]]) as usize;
        let mut rest = vec![0u8; len];
        if read_full(&mut conn, &mut rest, stop).is_err() {
            return;
        }
        let mut all = head.to_vec();
        all.extend_from_slice(&rest);
        match decode_proxy_v2(&all, true) {
            Ok((src, _, _)) => format!("{name} {src}\n"),
            Err(e) => format!("{name} bad-proxy-header({e})\n"),
        }
    } else {
        format!("{name}\n")
    };
    if conn.write_all(greeting.as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

fn read_full(conn: &mut TcpStream, buf: &mut [u8], stop: &AtomicBool) -> std::io::Result<()> {
    let mut off = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while off < buf.len() {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        match conn.read(&mut buf[off..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => off += n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---- clients (blocking; run them inside a namespace with `enter`/`within`) ----

/// Connects to `addr` (from `bind`, if given) and returns the backend's first line.
pub fn tcp_hello(addr: SocketAddr, bind: Option<SocketAddr>) -> std::io::Result<String> {
    let stream = match bind {
        None => TcpStream::connect_timeout(&addr, Duration::from_secs(3))?,
        Some(local) => {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )?;
            s.bind(&local.into())?;
            s.connect_timeout(&addr.into(), Duration::from_secs(3))?;
            s.into()
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end().to_string())
}

/// Sends `payload` to `addr` from a fresh socket and waits up to `wait` for the answer.
pub fn udp_ask(addr: SocketAddr, payload: &str, wait: Duration) -> std::io::Result<String> {
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = UdpSocket::bind(local)?;
    udp_ask_on(&sock, addr, payload, wait)
}

/// As `udp_ask`, on a given socket (same client port for every datagram: one flow).
pub fn udp_ask_on(
    sock: &UdpSocket,
    addr: SocketAddr,
    payload: &str,
    wait: Duration,
) -> std::io::Result<String> {
    sock.connect(addr)?;
    sock.set_read_timeout(Some(wait))?;
    sock.send(payload.as_bytes())?;
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// How many answers came from each backend, by name (the answers' first word, before a space
/// or a colon). Any failed connection or datagram fails the test: an error is not a backend,
/// and ten identical errors must not pass as "sticks to one backend".
pub fn names(results: &[std::io::Result<String>]) -> std::collections::HashMap<String, usize> {
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(
        errors.is_empty(),
        "{} of {} connections failed: {errors:?}",
        errors.len(),
        results.len()
    );
    let mut m = std::collections::HashMap::new();
    for s in results.iter().flatten() {
        *m.entry(s.split([' ', ':']).next().unwrap_or("").to_string())
            .or_default() += 1;
    }
    m
}

/// A plain HTTP/1.0 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((code, body))
}

// ---- switchboard in a namespace ----

/// `switchboard run ARGS` inside `ns` (or here), killed on drop; its output is printed when a
/// test fails.
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

// ---- backends that say who called ----

impl Backend {
    /// A TCP backend that greets each connection with `NAME SOURCE-IP\n` (then echoes), and a
    /// UDP one on the same address answering `NAME SOURCE-IP`: what the pod sees as the client.
    pub fn whoami(ns: Option<&Netns>, addr: SocketAddr, name: &str) -> Vec<Backend> {
        let stop = Arc::new(AtomicBool::new(false));
        let listener =
            within(ns, || TcpListener::bind(addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let sock =
            within(ns, || UdpSocket::bind(addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let (tcp_hits, udp_hits) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let (s, h, n) = (stop.clone(), tcp_hits.clone(), name.to_string());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, from)) => {
                        h.fetch_add(1, Ordering::Relaxed);
                        let _ = conn.write_all(format!("{n} {}\n", from.ip()).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let (s, h, n) = (stop.clone(), udp_hits.clone(), name.to_string());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                let Ok((_, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                h.fetch_add(1, Ordering::Relaxed);
                let _ = sock.send_to(format!("{n} {}", from.ip()).as_bytes(), from);
            }
        });
        vec![
            Backend {
                name: name.into(),
                addr,
                stop: stop.clone(),
                hits: tcp_hits,
            },
            Backend {
                name: name.into(),
                addr,
                stop,
                hits: udp_hits,
            },
        ]
    }
}
