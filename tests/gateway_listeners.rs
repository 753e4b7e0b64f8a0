//! Gateway listener ports end to end (issue #16 item 2): the real binary opens a socket for
//! each Gateway listener port, serves each listener's routes only on its port, closes the port
//! when its Gateway goes, and reports a port it cannot bind (`PortUnavailable`) in the
//! listener's status, against the project's test API server and a real kube-apiserver.

mod common;
#[path = "envtest/mod.rs"]
mod envtest;
#[path = "gateway_cluster/mod.rs"]
mod gateway_cluster;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use gateway_cluster::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A port nothing listens on now (bound, then let go).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A stand-in pod answering every request with `NAME` and closing the connection.
async fn backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(answer(l, name));
    addr
}

/// Answers every request on `l` with `NAME`, closing each connection after it.
async fn answer(l: TcpListener, name: &'static str) {
    while let Ok((mut s, _)) = l.accept().await {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => n += k,
                }
            }
            let resp = format!(
                "HTTP/1.1 200 OK\r\nx-backend: {name}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                name.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

/// [`backend`] listening on every address, as reached at this host's own non-loopback address
/// (the one it would use to reach outside; no packet is sent to find it).
async fn backend_on_host(name: &'static str) -> SocketAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    probe
        .connect("192.0.2.1:9")
        .expect("a route to outside for this host's address");
    let ip = probe.local_addr().unwrap().ip();
    assert!(!ip.is_loopback(), "this host has no non-loopback address");
    let l = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(answer(l, name));
    SocketAddr::new(ip, port)
}

/// Service `default/NAME` (port 80) with one ready endpoint.
fn service(name: &str, ip: &str, at: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints:\n  - addresses: [\"{eip}\"]\n    conditions: {{ready: true}}\n",
        port = at.port(),
        eip = at.ip(),
    )
}

const CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sb}
spec: {controllerName: switchboard.dev/gateway}
";

/// Gateway `default/NAME` with HTTP listeners `(name, port)`.
fn gateway(name: &str, listeners: &[(&str, u16)]) -> String {
    let ls: Vec<String> = listeners
        .iter()
        .map(|(l, p)| format!("{{name: {l}, protocol: HTTP, port: {p}}}"))
        .collect();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  gatewayClassName: sb\n  listeners: [{}]\n",
        ls.join(", ")
    )
}

/// HTTPRoute `default/NAME` on Gateway `gw`, host `host`, to Service `svc`.
fn route(name: &str, gw: &str, host: &str, svc: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  parentRefs: [{{name: {gw}}}]\n  hostnames: [{host}]\n  rules: [{{backendRefs: [{{name: {svc}, port: 80}}]}}]\n"
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// What a GET of `host` on `port` answers: the backend's name, "404", or "closed" when the
/// port takes no connection.
async fn served(port: u16, host: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return "closed".into();
    };
    let req = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return "closed".into();
    }
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    match read {
        Ok(_) if text.starts_with("HTTP/1.1 404") => "404".into(),
        Ok(_) if text.starts_with("HTTP/1.1 200") => {
            text.rsplit("\r\n\r\n").next().unwrap_or("").to_string()
        }
        _ => format!("unexpected: {text:?}"),
    }
}

/// Waits (bounded) until every `(port, host) → answer` holds; panics with the first that
/// does not and the log.
async fn wait_served(sb: &Switchboard, cases: &[(u16, &str, &str)]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut wrong = None;
        for &(port, host, want) in cases {
            let got = served(port, host).await;
            if got != want {
                wrong = Some(format!("port {port} host {host}: want {want}, got {got}"));
                break;
            }
        }
        let Some(w) = wrong else { return };
        assert!(tokio::time::Instant::now() < deadline, "{w}\n{}", sb.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_port_serves_its_own_routes() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "class.yaml", CLASS);
    write(d, "svc-a.yaml", &service("a", "10.96.7.1", a));
    write(d, "svc-b.yaml", &service("b", "10.96.7.2", b));
    write(d, "svc-c.yaml", &service("c", "10.96.7.3", c));
    // An Ingress, served on --http only.
    write(
        d,
        "ingress.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: ing, namespace: default}\nspec:\n  ingressClassName: switchboard\n  rules: [{host: c.test, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: c, port: {number: 80}}}}]}}]\n",
    );
    let sb = Switchboard::start(&http_args(d, &[]));
    let http = sb.listener("http").port();

    // Gateway own: a listener on a port of its own (P); Gateway shared: on the --http port.
    let p = free_port();
    write(d, "gw-own.yaml", &gateway("own", &[("web", p)]));
    write(d, "gw-shared.yaml", &gateway("shared", &[("web", http)]));
    write(d, "route-a.yaml", &route("ra", "own", "a.test", "a"));
    write(d, "route-b.yaml", &route("rb", "shared", "b.test", "b"));
    wait_served(
        &sb,
        &[
            // P serves Gateway own's route, and nothing else.
            (p, "a.test", "a"),
            (p, "b.test", "404"),
            (p, "c.test", "404"),
            // --http serves the Ingress and Gateway shared's route, not Gateway own's.
            (http, "b.test", "b"),
            (http, "c.test", "c"),
            (http, "a.test", "404"),
        ],
    )
    .await;
    // The port answers as soon as its accept loop runs, which can be before the line that
    // announces it is logged and read back: wait for the line, do not assume it.
    sb.wait_log(
        &format!("listening on gateway http 127.0.0.1:{p}"),
        Duration::from_secs(5),
    )
    .await;

    // The route moves to Gateway shared: off P, onto --http.
    write(d, "route-a.yaml", &route("ra", "shared", "a.test", "a"));
    wait_served(&sb, &[(p, "a.test", "404"), (http, "a.test", "a")]).await;

    // Deleting Gateway own closes P; --http goes on as before.
    std::fs::remove_file(d.join("gw-own.yaml")).unwrap();
    wait_served(
        &sb,
        &[
            (p, "a.test", "closed"),
            (http, "a.test", "a"),
            (http, "c.test", "c"),
        ],
    )
    .await;
    sb.wait_log("closed the Gateway listener port", WAIT).await;

    // And a Gateway on P again opens it again.
    write(d, "gw-own.yaml", &gateway("own", &[("web", p)]));
    write(d, "route-a.yaml", &route("ra", "own", "a.test", "a"));
    wait_served(&sb, &[(p, "a.test", "a"), (http, "a.test", "404")]).await;
}

/// A listener whose port is taken is `Accepted: False`, `PortUnavailable` (the others are
/// programmed); once the port is free, switchboard takes it and the listener is programmed.
async fn port_taken_shows_in_status(c: Cluster) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let free = free_port();
    c.apply(CLASS).await;
    c.apply(&gateway("gw", &[("busy", busy), ("free", free)]))
        .await;
    let kc = c.kubeconfig();
    let sb = Switchboard::start_with_env(
        &[
            "--kubeconfig",
            kc.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--gateway-address",
            "192.0.2.10",
        ],
        &[("POD_NAME", "sb-ports"), ("POD_NAMESPACE", "kube-system")],
    );
    let listener_is = |name: &'static str,
                       accepted: (&'static str, &'static str),
                       programmed: (&'static str, &'static str)| {
        let c = &c;
        let sb = &sb;
        async move {
            eventually(&format!("listener {name}"), || async {
                let gw = c
                    .get(GW, "Gateway", "default", "gw")
                    .await
                    .ok_or("no Gateway")?;
                let l = gw["status"]["listeners"]
                    .as_array()
                    .and_then(|ls| ls.iter().find(|l| l["name"] == name).cloned())
                    .ok_or_else(|| {
                        format!("no listener status in {}\n{}", gw["status"], sb.log())
                    })?;
                expect(&l["conditions"], "Accepted", accepted.0, accepted.1)?;
                expect(&l["conditions"], "Programmed", programmed.0, programmed.1)
            })
            .await;
        }
    };
    listener_is("free", ("True", "Accepted"), ("True", "Programmed")).await;
    listener_is("busy", ("False", "PortUnavailable"), ("False", "Invalid")).await;
    // A route on the Gateway, from the API too: served on the listener's port, not on --http.
    // The backend listens on every address and the endpoint names this host's own non-loopback
    // address: the API server refuses loopback endpoints.
    let a = backend_on_host("a").await;
    c.apply(&service("a", "10.96.7.1", a)).await;
    c.apply(&route("ra", "gw", "a.test", "a")).await;
    let http = sb.listener("http").port();
    wait_served(&sb, &[(free, "a.test", "a"), (http, "a.test", "404")]).await;
    let gw = c.get(GW, "Gateway", "default", "gw").await.unwrap();
    let busy_status = gw["status"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "busy")
        .unwrap()
        .clone();
    assert!(
        busy_status
            .to_string()
            .contains(&format!("cannot listen on port {busy}")),
        "{busy_status}"
    );
    // The port is let go: taken on the next try (every 5 s).
    drop(taken);
    listener_is("busy", ("True", "Accepted"), ("True", "Programmed")).await;
    assert_eq!(served(busy, "x.test").await, "404", "{}", sb.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_taken_against_the_test_apiserver() {
    port_taken_shows_in_status(Cluster::test().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_taken_against_kube_apiserver() {
    let Some(c) = Cluster::real("port_taken_against_kube_apiserver").await else {
        return;
    };
    port_taken_shows_in_status(c).await;
}

/// `curl https://NAME:PORT/` trusting only `ca`: the body, or `failed: ...`.
fn curl_https(port: u16, name: &str, ca: &Path) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", ca.to_str().unwrap()])
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
        .arg(format!("https://{name}:{port}/"))
        .output()
        .expect("run curl");
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).to_string()
    } else {
        format!("failed: {}", String::from_utf8_lossy(&out.stderr).trim())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_listener_port_serves_its_routes_with_its_certificate() {
    let a = backend("a").await;
    let dir = tempfile::tempdir().unwrap();
    let cas = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (secret, ca) = tls_secret("cert-a", "a.test", cas.path(), "a.crt");
    write(d, "class.yaml", CLASS);
    write(d, "svc-a.yaml", &service("a", "10.96.7.1", a));
    write(d, "secret.yaml", &secret);
    let sb = Switchboard::start(&http_args(d, &["--https", "127.0.0.1:0"]));
    let https = sb.listener("https").port();
    let p = free_port();
    let gw = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: tls, namespace: default}}\nspec:\n  gatewayClassName: sb\n  listeners: [{{name: web, protocol: HTTPS, port: {p}, tls: {{mode: Terminate, certificateRefs: [{{name: cert-a}}]}}}}]\n"
    );
    write(d, "gw.yaml", &gw);
    write(d, "route-a.yaml", &route("ra", "tls", "a.test", "a"));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = curl_https(p, "a.test", &ca);
        if got == "a" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "HTTPS listener port {p}: {got}\n{}",
            sb.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Not on the --https port: that one serves Ingress (and Gateways on its own port) only.
    let on_https = curl_https(https, "a.test", &ca);
    assert!(on_https != "a", "route served on --https: {on_https}");
    // Deleting the Gateway closes its port.
    std::fs::remove_file(d.join("gw.yaml")).unwrap();
    wait_served(&sb, &[(p, "a.test", "closed")]).await;
}
