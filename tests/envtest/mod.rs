//! A real etcd and kube-apiserver for tests (`../shared/envtest/`, controller-runtime's envtest
//! layout): `KUBEBUILDER_ASSETS` names a directory holding `etcd` and `kube-apiserver`. Without
//! it the tests skip, saying so on the terminal; `SWITCHBOARD_REQUIRE_ENVTEST=1` (as `.ci/run`
//! sets where the assets exist) makes that a failure.
//!
//! [`EnvTest::start`] starts etcd (free ports, a temporary data directory) and kube-apiserver
//! (token auth with an admin token in `system:masters`, a generated service-account key) and
//! writes a kubeconfig. The API server can be killed and started again on the same port with
//! the same etcd (an outage that keeps the data), and etcd's history compacted (for 410 Gone).
//! Everything is killed and removed on drop, also when a test fails (then the tails of both
//! logs are printed).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};

/// Where the assets are: a directory holding `etcd` and `kube-apiserver`.
pub const ASSETS: &str = "KUBEBUILDER_ASSETS";
/// Set to `1` (as `.ci/run` does where the assets exist) to make a missing `KUBEBUILDER_ASSETS`
/// a failure instead of a skip.
pub const REQUIRE: &str = "SWITCHBOARD_REQUIRE_ENVTEST";

const TOKEN: &str = "switchboard-envtest-admin-token";

/// The service range the API server allocates ClusterIPs from (IPv4, IPv6).
pub const SERVICE_RANGE: &str = "10.96.0.0/16,fd00::/108";

pub struct EnvTest {
    assets: PathBuf,
    dir: tempfile::TempDir,
    etcd: Child,
    etcd_addr: SocketAddr,
    etcd_peer_port: u16,
    apiserver: Option<Child>,
    port: u16,
    kubeconfig: PathBuf,
}

/// A 127.0.0.1 TCP port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The last `n` lines of a file (for the output printed when a test fails).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// etcd on 127.0.0.1 with its data in `dir/etcd`, logging to `dir/etcd.log`.
fn spawn_etcd(assets: &Path, dir: &Path, client_port: u16, peer_port: u16) -> Child {
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))
        .unwrap();
    Command::new(assets.join("etcd"))
        .args(["--data-dir", dir.join("etcd").to_str().unwrap()])
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start etcd")
}

/// A plain HTTP/1.0 request (etcd's JSON gateway); returns the status code and the body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The value of a JSON string field `"name":"VALUE"` (etcd's gateway writes int64 as strings).
fn json_field(body: &str, name: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let mut found = None;
    fn walk(v: &serde_json::Value, name: &str, found: &mut Option<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k == name && found.is_none() {
                        *found = v.as_str().map(String::from).or_else(|| Some(v.to_string()));
                    }
                    walk(v, name, found);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, name, found)),
            _ => {}
        }
    }
    walk(&v, name, &mut found);
    found
}

fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A kubeconfig for `server` (`https://ADDR`, TLS not verified) with the admin token.
fn write_kubeconfig(path: &Path, server: SocketAddr) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster:
    server: https://{server}
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: {TOKEN}
contexts:
- name: envtest
  context: {{cluster: envtest, user: admin}}
current-context: envtest
"
        ),
    )
    .unwrap();
}

impl EnvTest {
    /// Starts etcd and kube-apiserver and waits until the API server is ready; `None` (with a
    /// message on the terminal) when `KUBEBUILDER_ASSETS` is unset, for a test to skip.
    pub async fn start(test: &str) -> Option<EnvTest> {
        let Some(assets) = std::env::var_os(ASSETS).filter(|a| !a.is_empty()) else {
            let why = format!(
                "{ASSETS} is not set (`export {ASSETS}=$(bash ../shared/envtest/setup.sh)` sets it)"
            );
            if std::env::var(REQUIRE).is_ok_and(|v| v == "1") {
                panic!("{test} cannot run: {why} ({REQUIRE}=1 makes this a failure, not a skip)");
            }
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED {test}: {why} (the test passes without running; {REQUIRE}=1 makes this a failure)"
            );
            return None;
        };
        let assets = PathBuf::from(assets);
        for bin in ["etcd", "kube-apiserver"] {
            assert!(
                assets.join(bin).exists(),
                "{ASSETS}={} has no {bin}",
                assets.display()
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let (client_port, peer_port) = (free_port(), free_port());
        let etcd_addr: SocketAddr = ([127, 0, 0, 1], client_port).into();
        // The service-account signing key (ECDSA P-256) and its public half.
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.path().join("sa.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("sa.pub"), key.public_key_pem()).unwrap();
        std::fs::write(
            dir.path().join("tokens.csv"),
            format!("{TOKEN},admin,admin-uid,\"system:masters\"\n"),
        )
        .unwrap();
        let etcd = spawn_etcd(&assets, dir.path(), client_port, peer_port);

        let port = free_port();
        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(&kubeconfig, ([127, 0, 0, 1], port).into());
        let mut env = EnvTest {
            assets,
            dir,
            etcd,
            etcd_addr,
            etcd_peer_port: peer_port,
            apiserver: None,
            port,
            kubeconfig,
        };
        env.wait_etcd();
        env.start_apiserver().await;
        Some(env)
    }

    /// Waits until etcd's `/health` says it is healthy.
    fn wait_etcd(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, body)) = http(self.etcd_addr, "GET", "/health", "") {
                if body.contains("true") {
                    return;
                }
            }
            if let Ok(Some(status)) = self.etcd.try_wait() {
                panic!("etcd exited ({status})");
            }
            assert!(Instant::now() < deadline, "etcd not healthy in 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills etcd and starts it again on the same data and ports, waiting until it is healthy.
    /// The API server's own watches on etcd break and resume; if etcd's history was compacted
    /// past them meanwhile ([`EnvTest::compact_etcd`]), its watch cache starts over, ends every
    /// client's watch, and answers their resumption 410 Gone ("too old resource version").
    pub fn restart_etcd(&mut self) {
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
        self.etcd = spawn_etcd(
            &self.assets,
            self.dir.path(),
            self.etcd_addr.port(),
            self.etcd_peer_port,
        );
        self.wait_etcd();
    }

    /// The kubeconfig file: `https://127.0.0.1:PORT`, TLS not verified, the admin token.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's address (the same across restarts).
    pub fn apiserver_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// A client for the API server, as the admin.
    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// Starts kube-apiserver (again: same port, same etcd, so it keeps the data) and waits
    /// until `/readyz` answers 200; returns that instant.
    pub async fn start_apiserver(&mut self) -> Instant {
        assert!(self.apiserver.is_none(), "the API server is running");
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("apiserver.log"))
            .unwrap();
        let child = Command::new(self.assets.join("kube-apiserver"))
            .args(["--etcd-servers", &format!("http://{}", self.etcd_addr)])
            .args(["--bind-address", "127.0.0.1"])
            .args(["--secure-port", &self.port.to_string()])
            .args(["--cert-dir", d.join("certs").to_str().unwrap()])
            .args(["--service-cluster-ip-range", SERVICE_RANGE])
            .args(["--authorization-mode", "RBAC"])
            .args(["--token-auth-file", d.join("tokens.csv").to_str().unwrap()])
            .args(["--service-account-issuer", "https://kubernetes.default.svc"])
            .args([
                "--service-account-key-file",
                d.join("sa.pub").to_str().unwrap(),
            ])
            .args([
                "--service-account-signing-key-file",
                d.join("sa.key").to_str().unwrap(),
            ])
            .args(["--endpoint-reconciler-type", "none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start kube-apiserver");
        self.apiserver = Some(child);
        let client = self.client().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
            let ready = tokio::time::timeout(Duration::from_secs(2), client.request_text(req))
                .await
                .is_ok_and(|r| r.is_ok());
            if ready {
                return Instant::now();
            }
            if let Some(Ok(Some(status))) = self.apiserver.as_mut().map(|c| c.try_wait()) {
                panic!("kube-apiserver exited ({status})");
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many watches of `resource` (plural, e.g. `services`) the API server is serving now,
    /// its own included (`apiserver_longrunning_requests`).
    pub async fn watches(&self, client: &kube::Client, resource: &str) -> u64 {
        let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
        let Ok(metrics) = client.request_text(req).await else {
            return 0;
        };
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("apiserver_longrunning_requests{")
                    && l.contains(&format!("resource=\"{resource}\""))
                    && l.contains("verb=\"WATCH\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Kills the API server (SIGKILL: an outage, not a graceful stop); etcd keeps the data.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// etcd's current revision.
    pub fn etcd_revision(&self) -> u64 {
        let (code, body) = http(
            self.etcd_addr,
            "POST",
            "/v3/kv/range",
            &format!("{{\"key\":\"{}\"}}", b64("/switchboard-envtest/bump")),
        )
        .expect("etcd range");
        assert_eq!(code, 200, "etcd range: {body}");
        json_field(&body, "revision")
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no revision in {body}"))
    }

    /// Writes a key outside the API server's prefix `n` times (each write is a new revision),
    /// then compacts etcd's history up to the current revision: a watch on etcd from any older
    /// revision is then answered "compacted" (see [`EnvTest::restart_etcd`] for how that
    /// reaches clients as 410 Gone). Returns the compacted revision.
    pub fn compact_etcd(&self, n: usize) -> u64 {
        for i in 0..n {
            let (code, body) = http(
                self.etcd_addr,
                "POST",
                "/v3/kv/put",
                &format!(
                    "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                    b64("/switchboard-envtest/bump"),
                    b64(&i.to_string())
                ),
            )
            .expect("etcd put");
            assert_eq!(code, 200, "etcd put: {body}");
        }
        let rev = self.etcd_revision();
        let (code, body) = http(
            self.etcd_addr,
            "POST",
            "/v3/kv/compaction",
            &format!("{{\"revision\":\"{rev}\",\"physical\":true}}"),
        )
        .expect("etcd compaction");
        assert_eq!(code, 200, "etcd compaction: {body}");
        rev
    }

    /// Creates a Service in `default` with `cluster_ip` (inside [`SERVICE_RANGE`]), retrying
    /// the 403s of an API server whose authorization caches are still filling.
    pub async fn create_service(&self, client: &kube::Client, name: &str, cluster_ip: &str) {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": cluster_ip, "ports": [{"name": "http", "port": 80}]},
        }))
        .unwrap();
        let api: Api<Service> = Api::namespaced(client.clone(), "default");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match api.create(&PostParams::default(), &svc).await {
                Ok(_) => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("creating service {name}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("creating service {name}: {e}"),
            }
        }
    }

    /// The tails of the etcd and API server logs.
    pub fn logs(&self) -> String {
        format!(
            "--- etcd log (tail) ---\n{}\n--- kube-apiserver log (tail) ---\n{}\n--- end ---",
            tail(&self.dir.path().join("etcd.log"), 20),
            tail(&self.dir.path().join("apiserver.log"), 40)
        )
    }
}

impl Drop for EnvTest {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.stop_apiserver();
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
    }
}
