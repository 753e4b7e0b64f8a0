//! Faults and hostile clients against the real binary (issue #14): each test repeats a failure
//! seen in an adversarial run and asserts the fixed behaviour. docs/reliability.md has the
//! figures.

#[path = "../dns/tests/support/cases.rs"]
mod cases;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cases::{ask, query_message};
use common::{connect_from, Switchboard};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};

fn service(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n"
    )
}

/// The A records of `name` as the DNS server answers them over UDP (which needs no new file
/// descriptor on the server, so it answers even when the server has none left).
async fn resolve(dns: SocketAddr, name: &str) -> (ResponseCode, Vec<String>) {
    let resp = ask(dns, &query_message(name, RecordType::A, false), false).await;
    let ips = resp
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    (resp.metadata.response_code, ips)
}

async fn assert_resolves(dns: SocketAddr, name: &str, ip: &str, when: &str, sb: &Switchboard) {
    let (rcode, ips) = resolve(dns, name).await;
    assert!(
        rcode == ResponseCode::NoError && ips == [ip],
        "{when}: {name} answered {rcode:?} {ips:?}, want {ip}\n--- log:\n{}",
        sb.log()
    );
}

/// Waits until the server closes `s` (a read returns end of stream or an error), up to `within`.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

fn start(dir: &Path, prefix: &[&str]) -> Switchboard {
    Switchboard::launch(
        prefix,
        &[
            "--manifests",
            dir.to_str().unwrap(),
            "--dns",
            "127.0.0.1:0",
            "--lame-duck",
            "0s",
        ],
        &[],
        Duration::from_secs(20),
        "root namespace",
    )
}

/// #14.1 and #14.9: the directory deleted and made again. Before, every name went NXDOMAIN
/// while it was gone, and the re-created directory was never watched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_directory_keeps_its_objects_and_is_watched_again_when_recreated() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), service("a", "10.0.0.1")).unwrap();
    let sb = start(&dir, &[]);
    let dns = sb.listener("dns/udp");
    sb.wait_admin("/readyz", Duration::from_secs(20), "ready", |c, _| c == 200)
        .await;
    assert_resolves(
        dns,
        "a.default.svc.cluster.local.",
        "10.0.0.1",
        "at start",
        &sb,
    )
    .await;

    std::fs::rename(&dir, parent.path().join("moved-away")).unwrap();
    let body = sb
        .wait_admin(
            "/readyz",
            Duration::from_secs(15),
            "the stale source",
            |c, b| c == 200 && b.contains("stale manifests: cannot list manifests in"),
        )
        .await;
    assert!(body.starts_with("ready\n"), "still ready: {body}");
    assert_eq!(
        sb.metric("switchboard_source_up{part=\"manifests\"}").await,
        Some(0.0)
    );
    assert!(
        sb.metric("switchboard_source_errors_total{reason=\"read\",source=\"manifests\"}")
            .await
            >= Some(1.0)
    );
    assert_resolves(
        dns,
        "a.default.svc.cluster.local.",
        "10.0.0.1",
        "directory gone",
        &sb,
    )
    .await;
    assert!(sb.tables().await.contains("service default/a "));

    // Made again with other contents: read as soon as it is there, and watched again.
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("b.yaml"), service("b", "10.0.0.2")).unwrap();
    sb.wait_tables("b in, a gone", |t| {
        t.contains("service default/b ") && !t.contains("service default/a ")
    })
    .await;
    sb.wait_log("watching it again", Duration::from_secs(5))
        .await;
    sb.wait_admin(
        "/readyz",
        Duration::from_secs(5),
        "no stale source",
        |c, b| c == 200 && !b.contains("stale"),
    )
    .await;
    assert_eq!(
        sb.metric("switchboard_source_up{part=\"manifests\"}").await,
        Some(1.0)
    );
    std::fs::write(dir.join("b.yaml"), service("b", "10.0.0.3")).unwrap();
    sb.wait_tables("edit after re-creation", |t| {
        t.contains("clusterIPs=10.0.0.3")
    })
    .await;
}

/// #14.1, as the issue reproduced it: with a 256-descriptor limit, idle clients took every
/// descriptor, the next walk of the manifest directory failed, and every name went NXDOMAIN.
/// Now the connection limits are fitted into the open files limit with descriptors held back,
/// so the same clients leave the source able to read: a file added meanwhile is served. (A
/// read error that does happen keeps the objects: the deleted-directory test above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_cannot_take_the_descriptors_the_sources_need() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), service("a", "10.0.0.1")).unwrap();
    let sb = start(dir.path(), &["prlimit", "--nofile=256:256", "--"]);
    let dns = sb.listener("dns/udp");
    let dns_tcp = sb.listener("dns/tcp");
    sb.wait_admin("/readyz", Duration::from_secs(20), "ready", |c, _| c == 200)
        .await;
    assert!(
        sb.log_contains("the open files limit is too low for the connection limits"),
        "{}",
        sb.log()
    );

    // 600 idle clients from ten addresses, half on the admin listener, half on DNS over TCP.
    let mut idle = Vec::new();
    for i in 0..600u32 {
        let to = if i % 2 == 0 { sb.admin } else { dns_tcp };
        if let Ok(s) = connect_from(&format!("127.0.0.{}", 1 + i % 10), to).await {
            idle.push(s);
        }
    }
    // A new directory makes the source walk the whole tree, which needs descriptors.
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/b.yaml"), service("b", "10.0.0.2")).unwrap();
    // The admin listener is full of idle clients (that is its limit at work): ask DNS over UDP.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while resolve(dns, "b.default.svc.cluster.local.").await.1 != ["10.0.0.2"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never served while idle clients held their connections:\n{}",
            sb.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!sb.log_contains("cannot list manifests in"), "{}", sb.log());
    assert_resolves(
        dns,
        "a.default.svc.cluster.local.",
        "10.0.0.1",
        "idle clients",
        &sb,
    )
    .await;
    assert!(idle.len() >= 200, "{} idle clients connected", idle.len());
    drop(idle);
}

/// #14.4: the admin listener had no timeouts and no connection limit (2,000 half-sent requests
/// held for 60 s). Now one address holds at most 16 connections, others are still served, and a
/// request head that never completes is closed within the header timeout (5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_sheds_greedy_clients_and_slow_heads() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), service("a", "10.0.0.1")).unwrap();
    let sb = start(dir.path(), &[]);
    sb.wait_admin("/readyz", Duration::from_secs(20), "ready", |c, _| c == 200)
        .await;

    // Twenty half-sent requests from one address: sixteen are held, four closed at once. From
    // an address no other client of this test uses: a readiness probe's connection from
    // 127.0.0.1 that the server had not yet finished counted against the limit once, and the
    // sixteenth half-sent request was the one shed.
    let mut conns = Vec::new();
    for _ in 0..20 {
        let mut s = connect_from("127.0.0.3", sb.admin).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        conns.push(s);
    }
    let mut shed = 0;
    for s in conns.iter_mut().skip(16) {
        if closed_within(s, Duration::from_secs(10)).await {
            shed += 1;
        }
    }
    assert_eq!(
        shed, 4,
        "connections past 16 from one address are closed at once"
    );
    sb.wait_log("admin connection limit reached", Duration::from_secs(5))
        .await;
    // Another address is still served meanwhile.
    let mut other = connect_from("127.0.0.2", sb.admin).await.unwrap();
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_string(&mut other, &mut answer),
    )
    .await
    .expect("answered in time")
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The held half-sent requests are closed by the header timeout, not kept.
    for (i, s) in conns.iter_mut().take(16).enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(15)).await,
            "half-sent request {i} still open after 15 s"
        );
    }
}

fn kill(sb: &Switchboard, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &sb.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal}");
}

/// #14 "Signals": SIGHUP, SIGUSR1 and SIGUSR2 killed the process at once with no log (exit
/// 129/138/140). Now each is logged and ignored; and during the lame duck that the first
/// SIGTERM starts, a second one exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_signals_are_survived_and_a_second_sigterm_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), service("a", "10.0.0.1")).unwrap();
    let mut sb = Switchboard::launch(
        &[],
        &[
            "--manifests",
            dir.path().to_str().unwrap(),
            "--dns",
            "127.0.0.1:0",
            "--lame-duck",
            "60s",
        ],
        &[],
        Duration::from_secs(20),
        "root namespace",
    );
    let dns = sb.listener("dns/udp");
    sb.wait_admin("/readyz", Duration::from_secs(20), "ready", |c, _| c == 200)
        .await;
    for signal in ["HUP", "USR1", "USR2"] {
        kill(&sb, signal);
        sb.wait_log(&format!("signal=\"SIG{signal}\""), Duration::from_secs(5))
            .await;
    }
    assert!(!sb.exited(), "still running:\n{}", sb.log());
    assert_resolves(
        dns,
        "a.default.svc.cluster.local.",
        "10.0.0.1",
        "after the signals",
        &sb,
    )
    .await;

    kill(&sb, "TERM");
    sb.wait_log("SIGTERM received", Duration::from_secs(5))
        .await;
    // Lame duck: still answering, not yet gone (it would last 60 s).
    assert_resolves(
        dns,
        "a.default.svc.cluster.local.",
        "10.0.0.1",
        "lame duck",
        &sb,
    )
    .await;
    assert!(!sb.exited());
    kill(&sb, "TERM");
    let status = sb.wait_exit(Duration::from_secs(20));
    assert!(sb.log_contains("second shutdown signal"), "{}", sb.log());
    assert!(!status.success(), "{status}");
}

/// #14.7: a second instance on the same --http address started silently and served half the
/// requests from its own tables (SO_REUSEPORT); on --dns it failed late, at the TCP bind. Now
/// both are refused at once with a clear error, unless --takeover asks for a hand-over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_addresses_is_refused_unless_taking_over() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), service("a", "10.0.0.1")).unwrap();
    let d = dir.path().to_str().unwrap();
    let http = format!("127.0.0.1:{}", cases::free_port());
    let dns = format!("127.0.0.1:{}", cases::free_port());
    let _first = Switchboard::start(&["--manifests", d, "--http", &http, "--dns", &dns]);
    let other_http = format!("127.0.0.1:{}", cases::free_port());
    let other_dns = format!("127.0.0.1:{}", cases::free_port());
    let cases: &[(&str, &str, &str)] = &[("http", &http, &other_dns), ("dns", &other_http, &dns)];
    let mut failures = Vec::new();
    for (what, h, n) in cases {
        let (code, out) = common::run_to_end(&[
            "run",
            "--manifests",
            d,
            "--http",
            h,
            "--dns",
            n,
            "--admin",
            "127.0.0.1:0",
        ]);
        if code == 0 || !out.contains("already in use by another process") {
            failures.push(format!(
                "second instance on the same {what}: exit {code}\n{out}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A hand-over restart says so, and starts.
    let second = Switchboard::start(&[
        "--manifests",
        d,
        "--http",
        &http,
        "--dns",
        &dns,
        "--takeover",
    ]);
    assert!(second.log_contains("switchboard started"));
}

/// #14.9: a duplicate object in another file silently replaced the first. The rule stays (the
/// lowest-sorting source wins, docs/sources.md), but it is now said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_defined_in_two_files_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), service("a", "10.0.0.1")).unwrap();
    let sb = start(dir.path(), &[]);
    sb.wait_admin("/readyz", Duration::from_secs(20), "ready", |c, _| c == 200)
        .await;
    std::fs::write(dir.path().join("b.yaml"), service("a", "10.0.0.2")).unwrap();
    sb.wait_log(
        "Service default/a is defined by both manifests:a.yaml and manifests:b.yaml; serving the copy from manifests:a.yaml",
        Duration::from_secs(10),
    )
    .await;
    assert!(sb.tables().await.contains("clusterIPs=10.0.0.1\n"));
}

/// #14.4: the admin listener "can be disabled". With `--no-admin` nothing listens for it, and
/// the rest still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_can_be_disabled() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), service("a", "10.0.0.1")).unwrap();
    let mut child = std::process::Command::new(common::BIN)
        .args([
            "run",
            "--no-admin",
            "--dns",
            "127.0.0.1:0",
            "--lame-duck",
            "0s",
        ])
        .arg("--manifests")
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !log
        .iter()
        .any(|l: &String| l.contains("switchboard started"))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("no start within 20 s:\n{}", log.join("\n"));
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = log.join("\n");
    assert!(text.contains("no admin listener (--no-admin)"), "{text}");
    assert!(!text.contains("listening on admin"), "{text}");
    assert!(text.contains("listening on dns/udp"), "{text}");
}

/// #14.9: a manifest that cannot be read was logged at debug only (and, at the next walk,
/// counted as removed). A symlink to /proc/self/mem is a file whose read fails (EIO) even as
/// root: it is now a warning, counted, shown as stale in /readyz, and retried until it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_manifest_is_a_warning_and_stale_until_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), service("a", "10.0.0.1")).unwrap();
    let sb = start(dir.path(), &[]);
    sb.wait_admin("/readyz", Duration::from_secs(20), "ready", |c, _| c == 200)
        .await;
    std::os::unix::fs::symlink("/proc/self/mem", dir.path().join("bad.yaml")).unwrap();
    sb.wait_log("cannot read manifest", Duration::from_secs(10))
        .await;
    assert!(
        sb.log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("cannot read manifest")),
        "{}",
        sb.log()
    );
    sb.wait_admin(
        "/readyz",
        Duration::from_secs(10),
        "bad.yaml stale",
        |c, b| {
            c == 200
                && b.contains("stale manifests: cannot read manifest")
                && b.contains("bad.yaml")
        },
    )
    .await;
    assert!(
        sb.metric("switchboard_source_errors_total{reason=\"read\",source=\"manifests\"}")
            .await
            >= Some(1.0)
    );
    assert!(sb.tables().await.contains("service default/a "));
    std::fs::remove_file(dir.path().join("bad.yaml")).unwrap();
    sb.wait_admin(
        "/readyz",
        Duration::from_secs(10),
        "no stale source",
        |c, b| c == 200 && !b.contains("stale"),
    )
    .await;
}

/// #18: "switchboard started" could come before the sources had synced, and nothing said when
/// they had. One line now says it, with what is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_line_says_when_every_source_has_synced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), service("a", "10.0.0.1")).unwrap();
    std::fs::write(dir.path().join("b.yaml"), service("b", "10.0.0.2")).unwrap();
    std::fs::write(
        dir.path().join("b-slice.yaml"),
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: b-1\n  labels: {kubernetes.io/service-name: b}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints:\n- addresses: [10.1.0.1]\n- addresses: [10.1.0.2]\n",
    )
    .unwrap();
    let sb = start(dir.path(), &[]);
    sb.wait_log("ready: every source has synced", Duration::from_secs(20))
        .await;
    let line = sb
        .log()
        .lines()
        .find(|l| l.contains("ready: every source has synced"))
        .unwrap()
        .to_string();
    for count in [
        "services=2",
        "endpoint_slices=1",
        "endpoints=2",
        "ingresses=0",
        "http_routes=0",
    ] {
        assert!(line.contains(count), "{count} in {line}");
    }
    assert_eq!(sb.log_count("ready: every source has synced"), 1);
}

/// #14 "watch the directory robustly (... relative paths)": a relative `--manifests` path is
/// watched like an absolute one (inotify names files by the path it was given).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_manifest_path_is_watched() {
    // Below the package root, which is the binary's working directory in tests.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::Builder::new()
        .prefix("relative-manifests-")
        .tempdir_in(root.join("target"))
        .unwrap();
    std::fs::write(dir.path().join("a.yaml"), service("a", "10.0.0.1")).unwrap();
    let rel = dir
        .path()
        .strip_prefix(root)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(!rel.starts_with('/'), "{rel}");
    let sb = Switchboard::launch(
        &[],
        &["--manifests", &rel, "--dns", "127.0.0.1:0"],
        &[],
        Duration::from_secs(20),
        "root namespace",
    );
    sb.wait_tables("a", |t| t.contains("service default/a "))
        .await;
    std::fs::write(dir.path().join("a.yaml"), service("a", "10.0.0.9")).unwrap();
    sb.wait_tables("the edit", |t| t.contains("clusterIPs=10.0.0.9"))
        .await;
}
