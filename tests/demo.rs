//! The demo's stand-in pods (`switchboard demo-backends DIR`, which `switchboard demo` runs too)
//! follow the manifests while they run, with the real binary: scaling an EndpointSlice up starts
//! a stand-in for the new pod, scaling it down stops one, and an endpoint that cannot have one is
//! logged once, saying that connections to it will fail (#18: added endpoints had no stand-in,
//! and nothing said so).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::process::Process;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// `default/web` with one EndpointSlice listing `pods` (name, address) on `port`.
fn write_web(dir: &Path, port: u16, pods: &[(&str, &str)]) {
    let mut text = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec: {{clusterIP: 10.96.0.30, ports: [{{name: http, port: 80, targetPort: {port}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abcde
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, protocol: TCP, port: {port}}}]
endpoints:
"
    );
    for (pod, ip) in pods {
        text.push_str(&format!(
            "- addresses: [\"{ip}\"]\n  targetRef: {{kind: Pod, namespace: default, name: {pod}}}\n"
        ));
    }
    // Written whole and renamed into place, so a rescan never reads half a file.
    let tmp = dir.join(".web.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join("web.yaml")).unwrap();
}

/// The body of `GET /` from the stand-in at `addr`.
async fn hello(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stand_ins_follow_a_scaled_endpoint_slice() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (first, second) = (
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from(([127, 0, 0, 2], port)),
    );
    let dir = tempfile::tempdir().unwrap();
    write_web(dir.path(), port, &[("web-0", "127.0.0.1")]);
    let demo = Process::start(&["demo-backends", dir.path().to_str().unwrap()]);
    let listening = |addr: SocketAddr| format!("demo backend listening on tcp {addr} ");
    demo.wait_log(&[&listening(first)], WAIT).await;
    assert!(hello(first).await.starts_with("hello from web-0 "));

    // Scaled up: the new pod gets a stand-in, and so would have a pod that cannot be (its
    // address is not on this machine: TEST-NET-1), which is said instead.
    write_web(
        dir.path(),
        port,
        &[
            ("web-0", "127.0.0.1"),
            ("web-1", "127.0.0.2"),
            ("web-2", "192.0.2.1"),
        ],
    );
    demo.wait_log(&[&listening(second)], WAIT).await;
    assert!(hello(second).await.starts_with("hello from web-1 "));
    let no_stand_in = [
        "no demo backend for the endpoint tcp 192.0.2.1:",
        "of default/web",
        "connections to it will fail",
    ];
    demo.wait_log(&no_stand_in, WAIT).await;

    // Scaled down: web-0's stand-in stops. The directory has been read again since the warning,
    // which was not repeated.
    write_web(
        dir.path(),
        port,
        &[("web-1", "127.0.0.2"), ("web-2", "192.0.2.1")],
    );
    demo.wait_log(&["demo backend stopped: tcp", &format!("{first} ")], WAIT)
        .await;
    assert!(
        TcpStream::connect(first).await.is_err(),
        "{first} still answers"
    );
    assert!(hello(second).await.starts_with("hello from web-1 "));
    assert_eq!(demo.count(&no_stand_in), 1, "{}", demo.log());
    assert_eq!(demo.count(&[&listening(first)]), 1, "{}", demo.log());
}
