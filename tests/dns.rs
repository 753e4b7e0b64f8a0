//! The DNS server end to end: the real binary, real clients (`dig`, glibc's resolver in a pod
//! network namespace), both sources (manifest directory and the test API server) answering
//! the same battery (`dns/tests/support/cases.rs`), and forwarding through a fake upstream.

#[path = "../dns/tests/support/cases.rs"]
mod cases;
mod common;
#[path = "../dns/tests/support/upstream.rs"]
mod upstream;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cases::{ask, query_message, run_battery};
use common::Switchboard;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use upstream::FakeUpstream;

fn manifests(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fixture.yaml"), yaml).unwrap();
    dir
}

fn start_manifests(dir: &Path, extra: &[&str]) -> Switchboard {
    let mut args = vec![
        "--manifests",
        dir.to_str().unwrap(),
        "--dns",
        "127.0.0.1:0",
        "--lame-duck",
        "0s",
    ];
    args.extend_from_slice(extra);
    Switchboard::start(&args)
}

async fn ready(sb: &Switchboard) {
    sb.wait_admin("/readyz", Duration::from_secs(60), "ready", |c, _| c == 200)
        .await;
}

/// `dig @server -p PORT ARGS`: its full output.
fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+tries=3", "+time=3"])
        .args(args)
        .output()
        .expect("dig is needed for these tests (Debian package dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whitespace runs as single spaces (dig aligns columns with tabs and spaces).
fn norm(s: &str) -> String {
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn status(dig_output: &str) -> &str {
    dig_output
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("?")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_over_udp_and_tcp() {
    let up = FakeUpstream::start().await;
    let dir = manifests(cases::FIXTURE);
    let up_arg = up.addr.to_string();
    let sb = start_manifests(dir.path(), &["--upstream", &up_arg]);
    ready(&sb).await;
    let dns = sb.listener("dns/udp");
    assert_eq!(sb.listener("dns/tcp"), dns, "TCP on the UDP port");
    for transport in ["+notcp", "+tcp"] {
        let out = dig(
            dns,
            &[transport, "+short", "web.default.svc.cluster.local", "A"],
        );
        assert_eq!(out.trim(), "10.96.0.10", "{transport}");
        let out = dig(
            dns,
            &[
                transport,
                "+short",
                "_http._tcp.headless.default.svc.cluster.local",
                "SRV",
            ],
        );
        let mut lines: Vec<&str> = out.lines().collect();
        lines.sort();
        assert_eq!(
            lines,
            [
                "0 33 8080 10-1-0-2.headless.default.svc.cluster.local.",
                "0 33 8080 db-0.headless.default.svc.cluster.local.",
                "0 33 8080 fd00--1-1.headless.default.svc.cluster.local.",
            ],
            "{transport}"
        );
        let out = dig(dns, &[transport, "missing.default.svc.cluster.local"]);
        assert_eq!(status(&out), "NXDOMAIN", "{out}");
        assert!(
            out.contains("ns.dns.cluster.local. hostmaster.cluster.local."),
            "{out}"
        );
        assert!(out.contains(" aa "), "authoritative: {out}");
        let out = dig(dns, &[transport, "+short", "-x", "10.96.0.10"]);
        assert_eq!(out.trim(), "web.default.svc.cluster.local.");
        let out = dig(dns, &[transport, "+short", "example.org"]);
        assert_eq!(out.trim(), "192.0.2.1", "forwarded");
    }
    // dig's default EDNS query and the question's case echoed.
    let out = dig(dns, &["WEB.default.SVC.cluster.local"]);
    assert!(out.contains("EDNS: version: 0"), "{out}");
    assert!(out.contains(";WEB.default.SVC.cluster.local."), "{out}");
    let m = sb.admin_get("/metrics").await.1;
    assert!(m.contains("coredns_dns_requests_total{"), "{m}");
    assert!(m.contains("proto=\"tcp\""), "{m}");
    assert!(m.contains("coredns_dns_responses_total{"), "{m}");
    assert!(m.contains("rcode=\"NXDOMAIN\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn battery_manifest_source() {
    let up = FakeUpstream::start().await;
    let dir = manifests(cases::FIXTURE);
    let up_arg = up.addr.to_string();
    let sb = start_manifests(dir.path(), &["--upstream", &up_arg]);
    ready(&sb).await;
    let failures = run_battery(sb.listener("dns/udp")).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn battery_kubernetes_source() {
    let up = FakeUpstream::start().await;
    let api = apiserver::ApiServer::start(apiserver::Options::default())
        .await
        .unwrap();
    api.apply_yaml(cases::FIXTURE);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let up_arg = up.addr.to_string();
    let sb = Switchboard::start(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--dns",
        "127.0.0.1:0",
        "--upstream",
        &up_arg,
        "--lame-duck",
        "0s",
    ]);
    ready(&sb).await;
    let failures = run_battery(sb.listener("dns/udp")).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // An API change is answered by the next query once the tables have it.
    api.apply_yaml(&cases::FIXTURE.replace("10.96.1.10", "10.96.1.77"));
    sb.wait_tables("changed", |t| t.contains("10.96.1.77"))
        .await;
    let r = ask(
        sb.listener("dns/udp"),
        &query_message("web.other.svc.cluster.local.", RecordType::A, false),
        false,
    )
    .await;
    assert_eq!(
        cases::line(&r.answers[0]),
        "web.other.svc.cluster.local. 30 IN A 10.96.1.77"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_change_is_answered_by_the_next_query() {
    let dir = manifests(cases::FIXTURE);
    let sb = start_manifests(dir.path(), &["--upstream", "127.0.0.1:1"]);
    ready(&sb).await;
    let dns = sb.listener("dns/udp");
    let q = query_message("web.default.svc.cluster.local.", RecordType::A, false);
    for _ in 0..3 {
        let r = ask(dns, &q, false).await;
        assert_eq!(
            cases::line(&r.answers[0]),
            "web.default.svc.cluster.local. 30 IN A 10.96.0.10"
        );
    }
    std::fs::write(
        dir.path().join("fixture.yaml"),
        cases::FIXTURE.replace("10.96.0.10", "10.96.0.55"),
    )
    .unwrap();
    sb.wait_tables("changed", |t| t.contains("10.96.0.55"))
        .await;
    let r = ask(dns, &q, false).await;
    assert_eq!(
        cases::line(&r.answers[0]),
        "web.default.svc.cluster.local. 30 IN A 10.96.0.55"
    );
    // A service removed: NXDOMAIN on the next query.
    std::fs::write(
        dir.path().join("fixture.yaml"),
        cases::FIXTURE.replacen(
            "name: web\n  namespace: default",
            "name: web9\n  namespace: default",
            1,
        ),
    )
    .unwrap();
    sb.wait_tables("removed", |t| !t.contains("service default/web "))
        .await;
    let r = ask(dns, &q, false).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_options_from_flags() {
    let dir = manifests(cases::FIXTURE);
    let sb = start_manifests(
        dir.path(),
        &[
            "--ttl",
            "7",
            "--pods",
            "disabled",
            "--axfr-allow",
            "127.0.0.1/32",
            "--upstream",
            "127.0.0.1:1",
        ],
    );
    ready(&sb).await;
    let dns = sb.listener("dns/udp");
    let out = norm(&dig(dns, &["web.default.svc.cluster.local"]));
    assert!(
        out.contains("web.default.svc.cluster.local. 7 IN A 10.96.0.10"),
        "{out}"
    );
    let out = dig(dns, &["10-244-1-5.default.pod.cluster.local"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    let out = norm(&dig(dns, &["cluster.local", "AXFR"]));
    assert!(
        out.contains("web.default.svc.cluster.local. 7 IN A 10.96.0.10"),
        "{out}"
    );
    assert!(out.contains("XFR size:"), "{out}");
}

/// `switchboard_dns_udp_worker_datagrams_total{worker}` from a metrics page: worker -> count.
fn worker_datagrams(metrics: &str) -> std::collections::BTreeMap<String, u64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("switchboard_dns_udp_worker_datagrams_total{"))
        .filter_map(|l| {
            let worker = l.split("worker=\"").nth(1)?.split('"').next()?.to_string();
            Some((worker, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// The sum of the `coredns_dns_requests_total` series over UDP.
fn udp_requests(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("coredns_dns_requests_total{") && l.contains("proto=\"udp\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `--dns-udp-workers 3` gives the listener three workers (own socket and thread each) and every
/// one of them answers: each query below comes from a new socket, so the kernel's SO_REUSEPORT
/// hash of the source port picks a worker at random. The per-worker counters and the query
/// counters include every answered query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_udp_worker_answers() {
    let dir = manifests(cases::FIXTURE);
    let sb = start_manifests(dir.path(), &["--dns-udp-workers", "3"]);
    ready(&sb).await;
    let dns = sb.listener("dns/udp");
    let mut sent = 0u64;
    // All three are picked within 300 queries but with probability about 3 * (2/3)^300.
    let (workers, requests) = loop {
        for _ in 0..10 {
            let q = query_message("web.default.svc.cluster.local.", RecordType::A, false);
            let r = ask(dns, &q, false).await;
            assert_eq!(r.metadata.response_code, ResponseCode::NoError);
            sent += 1;
        }
        let m = sb.admin_get("/metrics").await.1;
        let workers = worker_datagrams(&m);
        if (workers.len() == 3 && workers.values().all(|&n| n > 0)) || sent >= 300 {
            break (workers, udp_requests(&m));
        }
    };
    let names: Vec<&str> = workers.keys().map(String::as_str).collect();
    assert_eq!(names, ["0", "1", "2"], "{workers:?}");
    assert!(
        workers.values().all(|&n| n > 0),
        "a worker never answered: {workers:?}"
    );
    // At least: a query retried after a lost datagram counts twice.
    assert!(
        workers.values().sum::<u64>() >= sent,
        "{workers:?} < {sent}"
    );
    // A worker adds its query counts to the shared series when its socket runs empty.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut requests = requests;
    while requests < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        requests = udp_requests(&sb.admin_get("/metrics").await.1);
    }
    assert!(
        requests >= sent,
        "coredns_dns_requests_total {requests} < {sent} answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axfr_refused_by_default() {
    let dir = manifests(cases::FIXTURE);
    let sb = start_manifests(dir.path(), &["--upstream", "127.0.0.1:1"]);
    ready(&sb).await;
    // dig only says "Transfer failed" whatever the reason: read the answer's code itself.
    let q = query_message("cluster.local.", RecordType::AXFR, false);
    let r = ask(sb.listener("dns/tcp"), &q, true).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused, "{r:?}");
    assert!(r.answers.is_empty(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_until_the_first_sync() {
    // A Kubernetes source that never answers the lists: never synced.
    let api = apiserver::ApiServer::start(apiserver::Options::default())
        .await
        .unwrap();
    api.set_delay(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let sb = Switchboard::start(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--dns",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:1",
        "--lame-duck",
        "0s",
    ]);
    let out = dig(sb.listener("dns/udp"), &["web.default.svc.cluster.local"]);
    assert_eq!(status(&out), "SERVFAIL", "{out}");
    assert_eq!(sb.admin_get("/readyz").await.0, 503);
}

/// Asks for `short.example` (TTL 1 upstream) until the upstream has seen `n` queries for it,
/// requiring the answer 192.0.2.2 every time; panics after 15 s or 150 rounds.
async fn short_until_upstream_asked(dns: SocketAddr, up: &FakeUpstream, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for _ in 0..150 {
        assert_eq!(dig(dns, &["+short", "short.example"]).trim(), "192.0.2.2");
        if up.count("short.example.") >= n {
            return;
        }
        assert!(Instant::now() < deadline, "upstream never asked {n} times");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("upstream not asked {n} times in 150 rounds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_cache_negative_cache_and_serve_stale() {
    let up = FakeUpstream::start().await;
    let dir = manifests(cases::FIXTURE);
    let up_arg = up.addr.to_string();
    let sb = start_manifests(dir.path(), &["--upstream", &up_arg]);
    ready(&sb).await;
    let dns = sb.listener("dns/udp");
    for _ in 0..3 {
        assert_eq!(dig(dns, &["+short", "example.org"]).trim(), "192.0.2.1");
        assert_eq!(status(&dig(dns, &["none.example"])), "NXDOMAIN");
    }
    assert_eq!(up.count("example.org."), 1, "cached");
    assert_eq!(up.count("none.example."), 1, "negative answer cached");
    let m = sb.admin_get("/metrics").await.1;
    assert!(m.contains("coredns_cache_hits_total{"), "{m}");
    // Serve-stale. First, the TTL-1 answer is asked for again once it expires (a cache that
    // ignored TTLs would answer from memory for ever and never ask again) ...
    assert_eq!(dig(dns, &["+short", "short.example"]).trim(), "192.0.2.2");
    assert_eq!(up.count("short.example."), 1);
    short_until_upstream_asked(dns, &up, 2).await;
    // ... then the upstream dies: once the answer expires again the upstream is asked (and
    // gives nothing), and the expired answer is served all the same.
    up.set_dead(true);
    short_until_upstream_asked(dns, &up, 3).await;
    let out = dig(dns, &["short.example"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains("192.0.2.2"), "stale answer: {out}");
    assert_eq!(status(&dig(dns, &["never-seen.example"])), "SERVFAIL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_between_upstreams() {
    // The first upstream refuses connections (closed port), the second answers.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let up = FakeUpstream::start().await;
    let dir = manifests(cases::FIXTURE);
    let (a, b) = (closed.to_string(), up.addr.to_string());
    let sb = start_manifests(dir.path(), &["--upstream", &a, "--upstream", &b]);
    ready(&sb).await;
    let dns = sb.listener("dns/udp");
    for name in ["example.org", "ext-target.example"] {
        let out = dig(dns, &["+short", name]);
        assert!(out.trim().starts_with("192.0.2."), "{name}: {out}");
    }
    sb.wait_log("upstream marked down", Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_over_the_in_flight_limit() {
    let up = FakeUpstream::start().await;
    let dir = manifests(cases::FIXTURE);
    let up_arg = up.addr.to_string();
    let sb = start_manifests(
        dir.path(),
        &["--upstream", &up_arg, "--max-concurrent-forwards", "1"],
    );
    ready(&sb).await;
    // The upstream holds its answers until told: slow1 keeps the only slot for as long as the
    // test needs, and the upstream having received slow1 shows it took the slot (the permit is
    // taken before the query is forwarded).
    up.set_held(true);
    let dns = sb.listener("dns/udp");
    let slow = tokio::spawn(async move {
        ask(
            dns,
            &query_message("slow1.example.", RecordType::A, false),
            false,
        )
        .await
        .metadata
        .response_code
    });
    up.wait_count("slow1.example.", 1, Duration::from_secs(10))
        .await;
    let r = ask(
        dns,
        &query_message("slow2.example.", RecordType::A, false),
        false,
    )
    .await;
    up.set_held(false);
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert_eq!(up.count("slow2.example."), 0, "slow2 was not forwarded");
    assert_eq!(slow.await.unwrap(), ResponseCode::NXDomain);
    // Cluster names are not forwarded and never refused.
    let r = ask(
        dns,
        &query_message("web.default.svc.cluster.local.", RecordType::A, false),
        false,
    )
    .await;
    assert_eq!(r.answers.len(), 1);
    assert_eq!(
        sb.metric("coredns_forward_max_concurrent_rejects_total")
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_to_itself_is_detected() {
    let port = cases::free_port();
    let addr = format!("127.0.0.1:{port}");
    let dir = manifests(cases::FIXTURE);
    let sb = Switchboard::start(&[
        "--manifests",
        dir.path().to_str().unwrap(),
        "--dns",
        &addr,
        "--upstream",
        &addr,
        "--lame-duck",
        "0s",
    ]);
    sb.wait_log("forwarding loop detected", Duration::from_secs(10))
        .await;
    let dns: SocketAddr = addr.parse().unwrap();
    assert_eq!(status(&dig(dns, &["example.org"])), "SERVFAIL");
    assert_eq!(
        dig(dns, &["+short", "web.default.svc.cluster.local"]).trim(),
        "10.96.0.10"
    );
    assert_eq!(sb.log_count("forwarding loop detected"), 1, "said once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lame_duck_not_ready_but_answering() {
    // The lame duck is far longer than the checks below take, so they run inside it however
    // slow the machine is; each step waits on evidence, and the test checks that the process
    // was still draining when they finished (had it already stopped, the answer could not
    // have come from the lame duck).
    let dir = manifests(cases::FIXTURE);
    let mut sb = Switchboard::start(&[
        "--manifests",
        dir.path().to_str().unwrap(),
        "--dns",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:1",
        "--lame-duck",
        "10s",
    ]);
    ready(&sb).await;
    let dns = sb.listener("dns/udp");
    let pid = pid_of(dir.path());
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    sb.wait_log("lame duck", Duration::from_secs(10)).await;
    assert_eq!(
        sb.admin_get("/readyz").await.0,
        503,
        "not ready while draining"
    );
    assert_eq!(
        dig(dns, &["+short", "web.default.svc.cluster.local"]).trim(),
        "10.96.0.10"
    );
    assert!(
        !sb.exited() && !sb.log_contains("stopped"),
        "the checks must run inside the lame duck:\n{}",
        sb.log()
    );
    // Then it stops by itself, cleanly (the first SIGTERM is the only one).
    let status = sb.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}");
    assert!(sb.log_contains("stopped"), "{}", sb.log());
}

/// The PID of the switchboard whose command line names `dir` (the harness keeps its child
/// private; the temporary directory is unique to this test).
fn pid_of(dir: &Path) -> String {
    let needle = dir.to_str().unwrap();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.starts_with(common::BIN) && cmdline.contains(needle) {
            return entry.file_name().to_string_lossy().into_owned();
        }
    }
    panic!("no switchboard process for {needle}");
}

/// A network namespace and its /etc/netns directory, removed on drop (even on failure).
struct Netns {
    name: String,
}

impl Netns {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}

/// A child process killed on drop, its output printed if the test fails.
struct Proc {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- switchboard (netns) output ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

#[test]
fn needs_root_glibc_resolver_in_a_pod_namespace() {
    if common::skip_unless_root(
        "needs_root_glibc_resolver_in_a_pod_namespace",
        &["ip", "getent"],
    ) {
        return;
    }
    let ns = Netns {
        name: format!("sb-dns-{}", std::process::id()),
    };
    let ok = Command::new("ip")
        .args(["netns", "add", &ns.name])
        .status()
        .unwrap()
        .success();
    assert!(ok, "ip netns add {}", ns.name);
    assert!(ns.run(&["ip", "link", "set", "lo", "up"]).status.success());
    let etc = format!("/etc/netns/{}", ns.name);
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        format!("{etc}/resolv.conf"),
        "nameserver 127.0.0.1\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
    )
    .unwrap();
    // glibc consults /etc/hosts first: keep it free of our names.
    std::fs::write(format!("{etc}/hosts"), "127.0.0.1 localhost\n").unwrap();

    let dir = manifests(cases::FIXTURE);
    let log = dir.path().join("switchboard.log");
    let logf = std::fs::File::create(&log).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, common::BIN, "run"])
        .args(["--manifests", dir.path().join("").to_str().unwrap()])
        .args(["--dns", "127.0.0.1:53", "--admin", "127.0.0.1:0"])
        .args(["--upstream", "127.0.0.1:1", "--lame-duck", "0s"])
        .stdout(Stdio::from(logf.try_clone().unwrap()))
        .stderr(Stdio::from(logf))
        .spawn()
        .unwrap();
    let _proc = Proc {
        child,
        log: log.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("source synced") && text.contains("switchboard started") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "switchboard did not start:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let getent = |name: &str| {
        let out = ns.run(&["getent", "hosts", name]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for (name, want) in [
        ("web", "10.96.0.10"),
        ("web.other", "10.96.1.10"),
        ("web.default.svc.cluster.local", "10.96.0.10"),
        ("db-0.headless", "10.1.0.1"),
        ("kube-dns.kube-system", "10.96.0.2"),
    ] {
        let out = getent(name);
        assert!(
            out.split_whitespace().next() == Some(want),
            "getent hosts {name}: {out:?}, want {want}"
        );
    }
    assert_eq!(getent("missing"), "", "unknown short name");
}
