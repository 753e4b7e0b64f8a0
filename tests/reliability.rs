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
use common::Switchboard;
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

/// #14.1, as the issue reproduced it: idle clients take every file descriptor, then a change
/// makes the source walk the directory. Before, `read_dir` failed with EMFILE and every name
/// went NXDOMAIN until descriptors were free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_keeps_every_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), service("a", "10.0.0.1")).unwrap();
    // A limit well above what switchboard needs to start, well below the clients we open.
    let sb = start(dir.path(), &["prlimit", "--nofile=96:96", "--"]);
    let dns = sb.listener("dns/udp");
    sb.wait_admin("/readyz", Duration::from_secs(20), "ready", |c, _| c == 200)
        .await;

    // Idle clients: as many as the process has descriptors, so accept() fails for the rest.
    let mut idle = Vec::new();
    for _ in 0..160 {
        if let Ok(s) = tokio::net::TcpStream::connect(sb.admin).await {
            idle.push(s);
        }
    }
    sb.wait_log("admin accept failed", Duration::from_secs(10))
        .await;
    // A new directory makes the source walk the whole tree, which needs a descriptor.
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/b.yaml"), service("b", "10.0.0.2")).unwrap();
    sb.wait_log("cannot list manifests in", Duration::from_secs(10))
        .await;
    assert_resolves(
        dns,
        "a.default.svc.cluster.local.",
        "10.0.0.1",
        "out of descriptors",
        &sb,
    )
    .await;

    drop(idle);
    sb.wait_log("source reads again", Duration::from_secs(15))
        .await;
    assert_resolves(
        dns,
        "b.default.svc.cluster.local.",
        "10.0.0.2",
        "after",
        &sb,
    )
    .await;
    assert_resolves(
        dns,
        "a.default.svc.cluster.local.",
        "10.0.0.1",
        "after",
        &sb,
    )
    .await;
}
