//! End-to-end harness: starts the real `switchboard` binary with port 0 listeners, reads the
//! `listening on NAME ADDR` lines it logs, and kills it on drop. When a test fails, the process's
//! output is printed.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub mod process;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// Set to `1` (as `.ci/run` does) to make a root-only test fail instead of skipping.
pub const REQUIRE_ROOT: &str = "SWITCHBOARD_REQUIRE_ROOT";

/// Why a test that needs root and `tools` cannot run here, if it cannot.
pub fn root_unavailable(tools: &[&str]) -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(String::from))
        })
        .unwrap_or_default();
    if uid != "0" {
        return Some(format!(
            "needs root for network namespaces and nftables (uid {uid})"
        ));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in tools {
        if !std::env::split_paths(&path).any(|d| d.join(tool).is_file()) {
            return Some(format!(
                "`{tool}` is not installed (scripts/setup.sh installs it)"
            ));
        }
    }
    None
}

/// For a test that needs root and `tools`: true when it must skip here. A skip is never
/// silent: the reason is written straight to the terminal's stderr (not through `eprintln!`,
/// which the test harness captures and shows only for failures), so it shows in plain
/// `cargo test` output. With `SWITCHBOARD_REQUIRE_ROOT=1` a skip is a failure instead.
pub fn skip_unless_root(test: &str, tools: &[&str]) -> bool {
    use std::io::Write;
    let Some(why) = root_unavailable(tools) else {
        return false;
    };
    if std::env::var(REQUIRE_ROOT).is_ok_and(|v| v == "1") {
        panic!("{test} cannot run: {why} ({REQUIRE_ROOT}=1 makes this a failure, not a skip)");
    }
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED {test}: {why} (the test passes without running; {REQUIRE_ROOT}=1 makes this a failure)"
    );
    true
}

pub struct Switchboard {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// Where it runs, for the output printed when a test fails.
    label: String,
    pub listeners: HashMap<String, Vec<SocketAddr>>,
    pub admin: SocketAddr,
}

fn spawn_reader(stream: impl std::io::Read + Send + 'static, log: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            log.lock().unwrap().push(line);
        }
    });
}

/// Parses `listening on NAME ADDR` from a log line.
fn listening(line: &str) -> Option<(String, SocketAddr)> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let mut words = rest.split_whitespace();
    let name = words.next()?.to_string();
    let addr = words.next()?.trim_end_matches(',').parse().ok()?;
    Some((name, addr))
}

impl Switchboard {
    /// `switchboard run ARGS --admin 127.0.0.1:0`, waiting until the admin listener is up.
    pub fn start(args: &[&str]) -> Switchboard {
        Self::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Switchboard {
        Self::launch(&[], args, env, Duration::from_secs(20), "root namespace")
    }

    /// `PREFIX... switchboard run ARGS` (a prefix such as `ip netns exec NAME` runs it
    /// elsewhere), waiting up to `startup` for the admin listener and `switchboard started`.
    /// `env` is applied after the defaults, so it can override `RUST_LOG`.
    pub fn launch(
        prefix: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        startup: Duration,
        label: &str,
    ) -> Switchboard {
        let mut cmd = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("run").args(args);
        if !args.contains(&"--admin") {
            cmd.args(["--admin", "127.0.0.1:0"]);
        }
        cmd.env("RUST_LOG", "info,controller=debug,kube=warn,hyper=warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start switchboard");
        let log = Arc::new(Mutex::new(Vec::new()));
        spawn_reader(child.stdout.take().unwrap(), log.clone());
        spawn_reader(child.stderr.take().unwrap(), log.clone());
        let mut sb = Switchboard {
            child,
            log,
            label: label.to_string(),
            listeners: HashMap::new(),
            admin: "0.0.0.0:0".parse().unwrap(),
        };
        let deadline = Instant::now() + startup;
        loop {
            sb.listeners.clear();
            for line in sb.log.lock().unwrap().iter() {
                if let Some((name, addr)) = listening(line) {
                    sb.listeners.entry(name).or_default().push(addr);
                }
            }
            if let Some(a) = sb.listeners.get("admin") {
                sb.admin = a[0];
                // Other listeners are logged before "switchboard started".
                if sb.log_contains("switchboard started") {
                    return sb;
                }
            }
            if let Ok(Some(status)) = sb.child.try_wait() {
                panic!("switchboard exited early ({status}):\n{}", sb.log());
            }
            assert!(
                Instant::now() < deadline,
                "switchboard did not start:\n{}",
                sb.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process id of the running switchboard.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first address logged for listener `name` (e.g. `dns/udp`).
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name}:\n{}", self.log()))[0]
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn log_count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until a log line contains `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log_contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} within {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(&format!("http://{}{}", self.admin, path)).await
    }

    /// Polls an admin path until `pred` holds for the body; returns it.
    pub async fn wait_admin(
        &self,
        path: &str,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(u16, &str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let (code, body) = self.admin_get(path).await;
            if pred(code, &body) {
                return body;
            }
            if Instant::now() > deadline {
                panic!(
                    "{path} never showed {what} within {timeout:?}; last answer {code}:\n{body}\n--- log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The tables dump without its `# generation` header line.
    pub async fn tables(&self) -> String {
        strip_header(&self.admin_get("/debug/tables").await.1)
    }

    /// Waits until the dump (without header) satisfies `pred`.
    pub async fn wait_tables(&self, what: &str, mut pred: impl FnMut(&str) -> bool) -> String {
        let body = self
            .wait_admin("/debug/tables", Duration::from_secs(15), what, |_, b| {
                pred(&strip_header(b))
            })
            .await;
        strip_header(&body)
    }

    /// A metric's value (first sample whose line starts with `series`).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let body = self.admin_get("/metrics").await.1;
        body.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_exit(Duration::from_secs(10))
    }

    /// Whether the process has exited (without waiting).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits up to `timeout` for the process to exit on its own; panics if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Switchboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- switchboard output ({}) ---\n{}\n--- end ---",
                self.label,
                self.log()
            );
        }
    }
}

pub fn strip_header(body: &str) -> String {
    body.lines()
        .filter(|l| !l.starts_with("# generation"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `--manifests DIR --http 127.0.0.1:0` followed by `extra`: the arguments of an HTTP proxy test.
pub fn http_args<'a>(dir: &'a std::path::Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--manifests",
        dir.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    args
}

/// A TCP connection to `to` from the local address `from` (any of 127.0.0.0/8, any port): how
/// tests play several clients, e.g. for per-client limits.
pub async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from.parse().expect("an IPv4 address"), 0))?;
    sock.connect(to).await
}

/// A plain HTTP/1.1 GET with hyper's client.
pub async fn http_get(url: &str) -> (u16, String) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(url.parse().unwrap()))
        .await
        .unwrap_or_else(|_| panic!("GET {url} timed out"))
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Runs `switchboard ARGS` to completion (for flag errors and subcommands).
pub fn run_to_end(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run switchboard");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The text of every file of `examples/demo`, by file name.
pub fn demo_files() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

/// Compares `actual` with the golden file `tests/golden/NAME`; `BLESS=1` rewrites it.
pub fn assert_golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with BLESS=1 to create it)", path.display()));
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .filter(|l| !actual.lines().any(|a| a == *l))
            .map(|l| format!("- {l}"))
            .chain(
                actual
                    .lines()
                    .filter(|l| !expected.lines().any(|e| e == *l))
                    .map(|l| format!("+ {l}")),
            )
            .collect();
        panic!(
            "{} differs (BLESS=1 to accept):\n{}",
            path.display(),
            diff.join("\n")
        );
    }
}

/// Standard base64 with padding (for Secret `data`).
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A self-signed certificate for `name`: its PEM (written to `ca_dir/FILE` for curl's
/// `--cacert`) and a `kubernetes.io/tls` Secret manifest carrying it.
pub fn tls_secret(
    secret: &str,
    name: &str,
    ca_dir: &std::path::Path,
    file: &str,
) -> (String, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let pem = ck.cert.pem();
    let ca = ca_dir.join(file);
    std::fs::write(&ca, &pem).unwrap();
    let yaml = format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: {secret}, namespace: default}}
type: kubernetes.io/tls
data:
  tls.crt: {}
  tls.key: {}
",
        base64(pem.as_bytes()),
        base64(ck.signing_key.serialize_pem().as_bytes())
    );
    (yaml, ca)
}
