//! Stand-in pods for the bundled example cluster (`switchboard demo-backends <dir>`).
//!
//! The example manifests in `examples/demo` describe EndpointSlices whose pod addresses are in
//! 127.20.0.0/24, which every Linux host routes to loopback. This module reads those slices and
//! listens on every endpoint address × slice port, so that DNS answers, the L4 proxy and the HTTP
//! proxy have something real to reach without a cluster:
//!
//! ```text
//!  examples/demo/*.yaml ──> endpoint_addresses() ──> [Backend { service, pod, addr, protocol }]
//!                                                        │
//!                           run_backends() ──────────────┴─> TCP: HTTP/1.1 "hello from <pod> ..."
//!                                                             UDP: echo "<pod>: <datagram>"
//! ```
//!
//! Endpoints that are not ready get a backend too: when the proxy skips one, a newcomer sees that
//! it was not chosen, not that it was down.
//!
//! The directory is read again every [`RESCAN`] while the backends run, so editing the demo's
//! EndpointSlices (scaling one up or down) starts and stops backends to match, each logged; an
//! endpoint that cannot have one (an address not on this machine) is logged at warn once.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http::header::{HeaderValue, CONTENT_TYPE, HOST};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize as _;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// The transport protocol of one endpoint port. SCTP ports are skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One endpoint address × one slice port: a socket a demo backend listens on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    /// `namespace/name` of the Service, from the slice's `kubernetes.io/service-name` label.
    pub service: String,
    /// The slice port's name; empty for an unnamed port.
    pub port_name: String,
    /// The pod name from the endpoint's `targetRef`, or the address when there is none.
    pub pod: String,
    pub addr: SocketAddr,
    pub protocol: Protocol,
    /// The endpoint's `conditions.ready` (unset counts as ready, as the API says).
    pub ready: bool,
}

/// Every demo backend the manifests below `dir` call for, and what could not be read.
#[derive(Debug, Default)]
pub struct Found {
    /// One per endpoint address × port, sorted by address and protocol.
    pub backends: Vec<Backend>,
    /// Files, documents and ports skipped, each a sentence naming the place.
    pub skipped: Vec<String>,
}

/// Reads every `*.yaml`, `*.yml` and `*.json` file below `dir` (recursively, in path order) and
/// returns one [`Backend`] per endpoint address × port of every `discovery.k8s.io/v1`
/// EndpointSlice, sorted by address and protocol.
///
/// Other kinds are ignored. A file that cannot be read or parsed, or a slice that does not
/// deserialize, is skipped and named in [`Found::skipped`] (the caller logs it). If two slices
/// list the same address, port and protocol, the first wins. Fails only if `dir` itself cannot
/// be read.
pub fn endpoint_addresses(dir: &Path) -> anyhow::Result<Found> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    collect_manifest_files(dir, &mut files, &mut skipped)
        .with_context(|| format!("reading manifest directory {}", dir.display()))?;
    files.sort();

    let mut backends = Vec::new();
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(err) => {
                skipped.push(format!("skipping {}: {err}", file.display()));
                continue;
            }
        };
        let documents = match parse_documents(&text) {
            Ok(documents) => documents,
            Err(err) => {
                skipped.push(format!("skipping {}: {err}", file.display()));
                continue;
            }
        };
        for (index, document) in documents.into_iter().enumerate() {
            if !is_endpoint_slice(&document) {
                continue;
            }
            match serde_yaml::from_value::<EndpointSlice>(document) {
                Ok(slice) => backends.extend(slice_backends(&slice, &mut skipped)),
                Err(err) => skipped.push(format!(
                    "skipping EndpointSlice in document {} of {}: {err}",
                    index + 1,
                    file.display()
                )),
            }
        }
    }

    backends.sort_by_key(|b| (b.addr, b.protocol));
    let mut seen = BTreeSet::new();
    backends.retain(|b| seen.insert((b.addr, b.protocol)));
    Ok(Found { backends, skipped })
}

/// How often the directory is read again while the backends run, for endpoints added, removed
/// or changed since (a scaled EndpointSlice gets its new pods).
pub const RESCAN: Duration = Duration::from_millis(500);

/// Starts a backend for every endpoint found by [`endpoint_addresses`] and serves until
/// `shutdown` resolves; then stops every listener and open connection and returns.
///
/// At start, all sockets are bound before anything is served, so an address already in use fails
/// the whole call with the address and service in the error; finding no endpoints at all is an
/// error too, since that is almost certainly the wrong directory. Afterwards the directory is
/// read again every [`RESCAN`]: a backend starts for each endpoint added (logged as at start,
/// `demo backend listening on ...`) and stops for each one removed (`demo backend stopped`). An
/// added endpoint that cannot have a backend (its address is in use, or not on this machine) is
/// logged at warn once, saying that connections to it will fail; so is a file that cannot be read.
pub async fn run_backends(dir: &Path, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let found = endpoint_addresses(dir)?;
    anyhow::ensure!(
        !found.backends.is_empty(),
        "no EndpointSlice endpoints found under {}",
        dir.display()
    );
    let mut standins = StandIns::default();
    standins.log_skipped(found.skipped);
    for backend in found.backends {
        standins.start(backend).await?;
    }

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(RESCAN) => {}
        }
        match endpoint_addresses(dir) {
            Ok(found) => {
                standins.log_skipped(found.skipped);
                standins.reconcile(found.backends).await;
            }
            // Kept as they are until the directory reads again.
            Err(err) => standins.log_skipped(vec![format!("{err:#}")]),
        }
    }
    standins.stop_all().await;
    Ok(())
}

/// The running backends, by socket, and what has been reported, so nothing is logged twice.
#[derive(Default)]
struct StandIns {
    running: BTreeMap<(SocketAddr, Protocol), (Backend, JoinHandle<()>)>,
    /// Endpoints without a backend, with the error last logged for each.
    failed: BTreeMap<(SocketAddr, Protocol), String>,
    /// What the last read of the directory skipped.
    skipped: BTreeSet<String>,
}

impl StandIns {
    /// Binds `backend`'s socket and serves it.
    async fn start(&mut self, backend: Backend) -> anyhow::Result<()> {
        let (proto, addr) = (backend.protocol, backend.addr);
        let service = backend.service.clone();
        let task = match proto {
            Protocol::Tcp => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding tcp {addr} for {service}"))?;
                tokio::spawn(serve_http(listener, Arc::new(backend.clone())))
            }
            Protocol::Udp => {
                let socket = UdpSocket::bind(addr)
                    .await
                    .with_context(|| format!("binding udp {addr} for {service}"))?;
                tokio::spawn(serve_udp_echo(socket, backend.clone()))
            }
        };
        tracing::info!("demo backend listening on {proto} {addr} for {service}");
        self.running.insert((addr, proto), (backend, task));
        Ok(())
    }

    /// Stops the backend on `key`, waiting until its socket is closed.
    async fn stop(&mut self, key: &(SocketAddr, Protocol), why: &str) {
        if let Some((backend, task)) = self.running.remove(key) {
            task.abort();
            let _ = task.await;
            tracing::info!(
                "demo backend stopped: {} {} for {} ({why})",
                key.1,
                key.0,
                backend.service
            );
        }
    }

    /// Makes the running backends those of `wanted`.
    async fn reconcile(&mut self, wanted: Vec<Backend>) {
        let keys: BTreeSet<_> = wanted.iter().map(|b| (b.addr, b.protocol)).collect();
        let gone: Vec<_> = self
            .running
            .keys()
            .filter(|k| !keys.contains(k))
            .copied()
            .collect();
        for key in gone {
            self.stop(&key, "its endpoint left the EndpointSlices")
                .await;
        }
        self.failed.retain(|k, _| keys.contains(k));
        for backend in wanted {
            let key = (backend.addr, backend.protocol);
            match self.running.get(&key) {
                // Readiness is the proxy's business: the backend answers either way.
                Some((b, _)) if b.service == backend.service && b.pod == backend.pod => continue,
                Some(_) => self.stop(&key, "its endpoint changed").await,
                None => {}
            }
            let service = backend.service.clone();
            if let Err(err) = self.start(backend).await {
                let err = format!("{err:#}");
                if self.failed.get(&key) != Some(&err) {
                    tracing::warn!(
                        "no demo backend for the endpoint {} {} of {service}: {err}; connections to it will fail",
                        key.1,
                        key.0
                    );
                    self.failed.insert(key, err);
                }
            } else {
                self.failed.remove(&key);
            }
        }
    }

    /// Logs what a read of the directory skipped that the previous read did not.
    fn log_skipped(&mut self, skipped: Vec<String>) {
        let now: BTreeSet<String> = skipped.into_iter().collect();
        for s in now.difference(&self.skipped) {
            tracing::warn!("{s}");
        }
        self.skipped = now;
    }

    async fn stop_all(&mut self) {
        // Aborting an accept loop drops its JoinSet of connections, which aborts those too.
        for (_, (_, task)) in std::mem::take(&mut self.running) {
            task.abort();
            let _ = task.await;
        }
    }
}

fn collect_manifest_files(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    skipped: &mut Vec<String>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if let Err(err) = collect_manifest_files(&path, out, skipped) {
                skipped.push(format!("skipping {}: {err}", path.display()));
            }
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// Splits a (multi-document) YAML or JSON file into its documents, dropping empty ones.
fn parse_documents(text: &str) -> Result<Vec<serde_yaml::Value>, serde_yaml::Error> {
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document)?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

fn is_endpoint_slice(document: &serde_yaml::Value) -> bool {
    document.get("kind").and_then(|v| v.as_str()) == Some("EndpointSlice")
        && document.get("apiVersion").and_then(|v| v.as_str()) == Some("discovery.k8s.io/v1")
}

fn slice_backends(slice: &EndpointSlice, skipped: &mut Vec<String>) -> Vec<Backend> {
    let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
    let slice_name = slice.metadata.name.as_deref().unwrap_or("<unnamed>");
    let service_name = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get("kubernetes.io/service-name"))
        .map(String::as_str)
        .unwrap_or(slice_name);
    let service = format!("{namespace}/{service_name}");

    let mut backends = Vec::new();
    for port in slice.ports.iter().flatten() {
        let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => {
                skipped.push(format!(
                    "EndpointSlice {namespace}/{slice_name}: skipping {other} port"
                ));
                continue;
            }
        };
        let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()) else {
            skipped.push(format!(
                "EndpointSlice {namespace}/{slice_name}: skipping port without a number"
            ));
            continue;
        };
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse::<IpAddr>() else {
                    skipped.push(format!(
                        "EndpointSlice {namespace}/{slice_name}: skipping non-IP address {address}"
                    ));
                    continue;
                };
                let pod = endpoint
                    .target_ref
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_else(|| address.clone());
                backends.push(Backend {
                    service: service.clone(),
                    port_name: port.name.clone().unwrap_or_default(),
                    pod,
                    addr: SocketAddr::new(ip, number),
                    protocol,
                    ready,
                });
            }
        }
    }
    backends
}

/// Accepts connections until aborted; each one is served by [`hello`].
async fn serve_http(listener: TcpListener, backend: Arc<Backend>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!("demo backend {}: accept: {err}", backend.addr);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let backend = backend.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let backend = backend.clone();
                async move { Ok::<_, Infallible>(hello(&backend, &request)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        // Reap finished connections so the set does not grow forever.
        while connections.try_join_next().is_some() {}
    }
}

/// The response of every demo HTTP backend: 200, `x-backend: <pod>`, and a one-line body naming
/// the pod, its address, and the request as it arrived (method, path, Host header).
fn hello(backend: &Backend, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let host = request
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host())
        .unwrap_or("-");
    let body = format!(
        "hello from {} ({}) {} {} host={}\n",
        backend.pod,
        backend.addr,
        request.method(),
        path,
        host
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if let Ok(pod) = HeaderValue::from_str(&backend.pod) {
        headers.insert("x-backend", pod);
    }
    response
}

/// Replies to every datagram with `<pod>: ` followed by the datagram, until aborted.
async fn serve_udp_echo(socket: UdpSocket, backend: Backend) {
    let prefix = format!("{}: ", backend.pod);
    let mut buf = vec![0u8; 65535];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                // E.g. ICMP port unreachable from an earlier reply; the socket is still usable.
                tracing::debug!("demo backend {}: recv: {err}", backend.addr);
                continue;
            }
        };
        let mut reply = Vec::with_capacity(prefix.len() + len);
        reply.extend_from_slice(prefix.as_bytes());
        reply.extend_from_slice(&buf[..len]);
        if let Err(err) = socket.send_to(&reply, peer).await {
            tracing::debug!("demo backend {}: send to {peer}: {err}", backend.addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn demo_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo")
    }

    fn row(b: &Backend) -> String {
        let port = if b.port_name.is_empty() {
            "-"
        } else {
            &b.port_name
        };
        let ready = if b.ready { "ready" } else { "not-ready" };
        format!(
            "{} {} {} {} {} {}",
            b.protocol, b.addr, b.service, port, b.pod, ready
        )
    }

    #[test]
    fn example_backends_match_the_yaml() {
        let found = endpoint_addresses(&demo_dir()).unwrap();
        assert_eq!(found.skipped, Vec::<String>::new());
        let rows: Vec<String> = found.backends.iter().map(row).collect();
        let expected = [
            "tcp 127.20.0.1:9080 default/web http web-6d4b9c7f8-2xkqz ready",
            "tcp 127.20.0.2:9080 default/web http web-6d4b9c7f8-8mlnp ready",
            "tcp 127.20.0.3:9081 default/api - api-5f7c8d9b6-hw2rt ready",
            "tcp 127.20.0.4:9081 default/api - api-5f7c8d9b6-zn5ks not-ready",
            "tcp 127.20.0.5:15432 default/db postgres db-0 ready",
            "tcp 127.20.0.6:15432 default/db postgres db-1 ready",
            "tcp 127.20.0.7:9070 default/echo echo-tcp echo-7b5d6f4c9-lq8vx ready",
            "udp 127.20.0.7:9070 default/echo echo-udp echo-7b5d6f4c9-lq8vx ready",
            "tcp 127.20.0.10:9080 shop/frontend http frontend-84c7d5b9f-4jx2m ready",
            "tcp 127.20.0.11:9080 shop/frontend http frontend-84c7d5b9f-9pq7z ready",
            "tcp 127.20.0.12:9080 shop/frontend-canary http frontend-canary-6b9f8c7d5-t3nvb ready",
        ];
        assert_eq!(rows, expected, "\n{}", rows.join("\n"));
    }

    fn slice_yaml(tcp_port: u16, udp_port: u16, ready: bool) -> String {
        format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: probe, namespace: test}}
spec: {{clusterIP: 127.10.0.99, ports: [{{name: http, port: 8080, targetPort: {tcp_port}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: probe-abcde
  namespace: test
  labels: {{kubernetes.io/service-name: probe}}
addressType: IPv4
ports:
  - {{name: http, protocol: TCP, port: {tcp_port}}}
  - {{name: dns, protocol: UDP, port: {udp_port}}}
endpoints:
  - addresses: [127.0.0.1]
    conditions: {{ready: {ready}}}
    targetRef: {{kind: Pod, namespace: test, name: probe-0}}
"#
        )
    }

    #[test]
    fn bad_files_are_skipped_and_other_kinds_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("good.yaml"),
            slice_yaml(20080, 20053, false),
        )
        .unwrap();
        std::fs::write(dir.path().join("broken.yaml"), "kind: [unclosed\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
        let nested = dir.path().join("nested");
        std::fs::create_dir(&nested).unwrap();
        std::fs::write(
            nested.join("slice.json"),
            r#"{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "j", "namespace": "json"}, "addressType": "IPv4",
                "ports": [{"port": 20081}], "endpoints": [{"addresses": ["127.0.0.2"]}]}"#,
        )
        .unwrap();

        let found = endpoint_addresses(dir.path()).unwrap();
        let rows: Vec<String> = found.backends.iter().map(row).collect();
        assert_eq!(found.skipped.len(), 1, "{:?}", found.skipped);
        assert!(
            found.skipped[0].contains("broken.yaml"),
            "{:?}",
            found.skipped
        );
        assert_eq!(
            rows,
            [
                "udp 127.0.0.1:20053 test/probe dns probe-0 not-ready",
                "tcp 127.0.0.1:20080 test/probe http probe-0 not-ready",
                "tcp 127.0.0.2:20081 json/j - 127.0.0.2 ready",
            ]
        );
    }

    /// A free port right now; another process could take it before the backend binds it, which
    /// is acceptable for a test on a quiet machine.
    fn free_ports() -> (u16, u16) {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        (
            tcp.local_addr().unwrap().port(),
            udp.local_addr().unwrap().port(),
        )
    }

    async fn http_get(addr: SocketAddr) -> std::io::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /hello?x=1 HTTP/1.1\r\nHost: probe.test\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response)
    }

    #[tokio::test]
    async fn serves_http_and_udp_echo_until_shutdown() {
        let (tcp_port, udp_port) = free_ports();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("probe.yaml"),
            slice_yaml(tcp_port, udp_port, false),
        )
        .unwrap();

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let path = dir.path().to_owned();
        let server = tokio::spawn(async move {
            run_backends(&path, async {
                let _ = stopped.await;
            })
            .await
        });

        // The backends bind asynchronously: retry until the listener answers.
        let tcp_addr = SocketAddr::from(([127, 0, 0, 1], tcp_port));
        let mut response = None;
        for _ in 0..100 {
            match http_get(tcp_addr).await {
                Ok(text) => {
                    response = Some(text);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let response = response.expect("HTTP backend never answered");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains("\r\nx-backend: probe-0\r\n"),
            "{response}"
        );
        assert!(
            response.ends_with(&format!(
                "\r\n\r\nhello from probe-0 (127.0.0.1:{tcp_port}) GET /hello?x=1 host=probe.test\n"
            )),
            "{response}"
        );

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(("127.0.0.1", udp_port)).await.unwrap();
        let mut buf = [0u8; 64];
        let mut echo = None;
        for _ in 0..50 {
            client.send(b"ping").await.unwrap();
            // A refused (not yet bound) or lost datagram shows up as an error or a timeout.
            if let Ok(Ok(len)) =
                tokio::time::timeout(Duration::from_millis(100), client.recv(&mut buf)).await
            {
                echo = Some(buf[..len].to_vec());
                break;
            }
        }
        assert_eq!(echo.as_deref(), Some(&b"probe-0: ping"[..]));

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("run_backends did not stop")
            .unwrap()
            .unwrap();
        // The listener is gone once run_backends has returned.
        assert!(tokio::net::TcpStream::connect(tcp_addr).await.is_err());
    }

    #[tokio::test]
    async fn an_empty_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = run_backends(dir.path(), async {}).await.unwrap_err();
        assert!(
            err.to_string().contains("no EndpointSlice endpoints"),
            "{err}"
        );
    }
}
