//! The dashboards and alerts in `deploy/monitoring/` read metrics the binary really exports,
//! every exported metric is documented, and `/debug/tables` can be turned off.
//!
//! The metric names come from the PromQL of `dashboard.json` and `prometheusrule.yaml`. The
//! binary's names come from `/metrics` of a real `switchboard run` that has been made to create
//! every labelled series: the prometheus crate leaves a labelled family out of `/metrics` until
//! its first series exists, so a scrape of an idle process would miss most of them. It runs
//! with DNS (a fake upstream that answers, fails and lets an answer go stale), HTTP (a live and
//! a dead endpoint, so retries and an ejection happen), `--l4 bind` (TCP, UDP, a dead and an
//! empty Service), a broken manifest, and the Kubernetes source against `tests/apiserver` (a
//! compacted history and dropped watches, so a relist is counted).
//!
//! Names the scrape cannot show are listed below by name with the reason; nothing else is
//! excused. Where `promtool` is installed (scripts/setup.sh installs it), every expression is
//! also parsed by it.

mod netns;
#[path = "../dns/tests/support/upstream.rs"]
mod upstream;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiserver::{ApiServer, Options};
use netns::{service_yaml, Backend, Ep, Switchboard};
use upstream::FakeUpstream;

/// Used by the alerts and dashboard but not exported yet, each with the reason. The test fails
/// if one of these shows up in the scrape (then it belongs in the checked set) or is no longer
/// used.
const PENDING: &[(&str, &str)] = &[];

/// Exported, but only after an event this test does not cause; each is registered in the named
/// file (checked here) and its value is asserted by the named test.
const EVENT_ONLY: &[(&str, &str, &str)] = &[(
    "switchboard_dns_forward_loop_detected",
    "dns/src/metrics.rs",
    "set once a forwarding loop is found; tests/dns_limits.rs makes one",
)];

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Every `(source, expression)` of the dashboard and the alerts.
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/monitoring/dashboard.json")).unwrap(),
    )
    .expect("dashboard.json is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target has expr");
            out.push((format!("dashboard panel {:?}", panel["title"]), expr.into()));
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(q) = var["query"]["query"].as_str() {
            out.push((format!("dashboard variable {}", var["name"]), q.into()));
        }
    }
    let rule: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo("deploy/monitoring/prometheusrule.yaml")).unwrap(),
    )
    .expect("prometheusrule.yaml is YAML");
    assert_eq!(rule["kind"].as_str(), Some("PrometheusRule"));
    for group in rule["spec"]["groups"].as_sequence().expect("groups") {
        for r in group["rules"].as_sequence().expect("rules") {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?");
            out.push((
                format!("alert {name}"),
                r["expr"].as_str().expect("expr").into(),
            ));
        }
    }
    assert!(out.len() > 30, "too few expressions: {out:?}");
    out
}

/// The metric names in a PromQL expression or a text: identifiers starting `switchboard_` or
/// `coredns_` (label names never do here).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        let start_ok = i == 0 || !ident(bytes[i - 1]);
        let rest = &bytes[i..];
        if start_ok && (rest.starts_with(b"switchboard_") || rest.starts_with(b"coredns_")) {
            let end = (i..bytes.len())
                .find(|&j| !ident(bytes[j]))
                .unwrap_or(bytes.len());
            names.insert(text[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// The series names (`name`, `name_bucket`, ...) and the families (`# HELP`) of a scrape.
fn scraped(body: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut series = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            families.insert(rest.split(' ').next().unwrap().to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            series.insert(line[..end].to_string());
        }
    }
    (series, families)
}

/// A tiny HTTP/1.1 server: one response per connection, `200 ok`.
struct HttpBackend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl HttpBackend {
    fn start(addr: &str) -> HttpBackend {
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                std::thread::spawn(move || {
                    conn.set_nonblocking(false).unwrap();
                    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    );
                });
            }
        });
        HttpBackend { addr, stop }
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn dig(server: SocketAddr, name: &str) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+tries=2", "+time=3"])
        .args([name, "A"])
        .output()
        .expect("dig is needed for this test (Debian package dnsutils; scripts/setup.sh)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// One plain HTTP GET through the proxy; the status code, or 0 when the exchange failed.
fn http_get(proxy: SocketAddr, host: &str) -> u16 {
    let Ok(mut conn) = TcpStream::connect_timeout(&proxy, Duration::from_secs(3)) else {
        return 0;
    };
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    if conn.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut resp = String::new();
    let _ = conn.read_to_string(&mut resp);
    resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Polls the scrape until `name` (a series name) is in it; fails naming what is missing.
async fn wait_series(sb: &Switchboard, name: &str, mut poke: impl FnMut()) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = sb.admin_get("/metrics").await.1;
        if scraped(&body).0.contains(name) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never appeared on /metrics:\n{body}\n--- log:\n{}",
            sb.log()
        );
        poke();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the binary through every path the dashboard and alerts look at; returns the scrape.
async fn exercised_scrape() -> String {
    // Kubernetes source: one Service, a compacted history and dropped watches (a relist).
    let api = ApiServer::start(Options::default()).await.unwrap();
    api.apply_yaml(
        "apiVersion: v1\nkind: Service\nmetadata: {name: from-api, namespace: default}\nspec:\n  clusterIP: 10.0.0.1\n  ports: [{name: http, port: 80}]\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();

    // HTTP: one live endpoint and one where nothing listens (same port, another address).
    let live = HttpBackend::start("127.0.0.1:0");
    let port = live.addr.port();
    write(
        &manifests,
        "web.yaml",
        &service_yaml(
            "web",
            "127.77.0.1",
            "",
            &[],
            &[("http", "TCP", 18080, port, None)],
            &[Ep::ready("127.0.0.1"), Ep::ready("127.0.0.2")],
        ),
    );
    write(
        &manifests,
        "ingress.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: default}\nspec:\n  ingressClassName: switchboard\n  rules:\n    - host: web.test\n      http:\n        paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 18080}}}}]\n",
    );
    // L4 (bind): TCP and UDP to live endpoints, a Service whose endpoint is dead, one with none.
    let tcp = Backend::tcp(None, "127.0.0.1:0".parse().unwrap(), "hello", false);
    let udp = Backend::udp(None, "127.0.0.1:0".parse().unwrap(), "echo", false);
    write(
        &manifests,
        "hello.yaml",
        &service_yaml(
            "hello",
            "127.77.0.5",
            "",
            &[],
            &[("t", "TCP", 18083, tcp.addr.port(), None)],
            &[Ep::ready("127.0.0.1")],
        ),
    );
    write(
        &manifests,
        "echo.yaml",
        &service_yaml(
            "echo",
            "127.77.0.2",
            "",
            &[],
            &[("u", "UDP", 15353, udp.addr.port(), None)],
            &[Ep::ready("127.0.0.1")],
        ),
    );
    write(
        &manifests,
        "dead.yaml",
        &service_yaml(
            "dead",
            "127.77.0.3",
            "",
            &[],
            &[("t", "TCP", 18081, port, None)],
            &[Ep::ready("127.0.0.2")],
        ),
    );
    write(
        &manifests,
        "empty.yaml",
        &service_yaml(
            "empty",
            "127.77.0.4",
            "",
            &[],
            &[("t", "TCP", 18082, port, None)],
            &[],
        ),
    );
    // A file the manifest source rejects.
    write(&manifests, "broken.yaml", "kind: Service\nmetadata: [\n");

    let up = FakeUpstream::start().await;
    let sb = Switchboard::start(&[
        "--manifests",
        manifests.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--dns",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--http-header-timeout",
        "300ms",
        "--l4",
        "bind",
        "--upstream",
        &up.addr.to_string(),
    ]);
    sb.wait_admin("/readyz", Duration::from_secs(20), "ready", |c, _| c == 200)
        .await;
    sb.wait_tables("the from-api Service", |t| t.contains("default/from-api"))
        .await;

    // DNS: a cluster name, a forwarded name twice (miss, hit), a short-TTL name, then an
    // upstream that fails: SERVFAIL for a new name, the stale answer for the expired one.
    let dns = sb.listener("dns/udp");
    assert!(dig(dns, "web.default.svc.cluster.local").contains("127.77.0.1"));
    for _ in 0..2 {
        assert!(dig(dns, "example.org").contains("192.0.2.1"));
    }
    assert!(dig(dns, "short.example").contains("192.0.2.2"));
    up.set_servfail(true);
    assert!(dig(dns, "other.example").contains("SERVFAIL"));
    wait_series(&sb, "coredns_cache_served_stale_total", || {
        dig(dns, "short.example");
    })
    .await;
    wait_series(&sb, "coredns_cache_entries", || {}).await;

    // HTTP: GETs until the dead endpoint is ejected (its connect errors are retried on the live
    // one), and a request head that never ends (a limit hit).
    let proxy = sb.listener("http");
    wait_series(&sb, "switchboard_http_ejections_total", || {
        http_get(proxy, "web.test");
    })
    .await;
    let mut slow = TcpStream::connect(proxy).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = slow.read(&mut [0u8; 256]);
    wait_series(&sb, "switchboard_http_limit_hits_total", || {}).await;

    // L4: a relayed TCP connection and UDP flow, a connect to a dead endpoint, an empty Service.
    wait_series(&sb, "switchboard_l4_connections_total", || {
        let _ = netns::tcp_hello("127.77.0.5:18083".parse().unwrap(), None);
    })
    .await;
    wait_series(&sb, "switchboard_l4_active_flows", || {
        let _ = netns::udp_ask(
            "127.77.0.2:15353".parse().unwrap(),
            "hi",
            Duration::from_millis(500),
        );
    })
    .await;
    wait_series(&sb, "switchboard_l4_connect_errors_total", || {
        let _ = netns::tcp_hello("127.77.0.3:18081".parse().unwrap(), None);
    })
    .await;
    wait_series(&sb, "switchboard_l4_no_endpoint_rejects_total", || {
        let _ = netns::tcp_hello("127.77.0.4:18082".parse().unwrap(), None);
    })
    .await;

    // Kubernetes: the watches drop after the history was compacted past them: relist.
    api.apply_yaml(
        "apiVersion: v1\nkind: Service\nmetadata: {name: later, namespace: default}\nspec:\n  clusterIP: 10.0.0.2\n  ports: [{name: http, port: 80}]\n",
    );
    api.compact();
    api.drop_watches();
    wait_series(&sb, "switchboard_watch_restarts_total", || {}).await;

    sb.admin_get("/metrics").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let body = exercised_scrape().await;
    let (series, _) = scraped(&body);
    let pending: BTreeMap<&str, &str> = PENDING.iter().copied().collect();
    let event_only: BTreeMap<&str, (&str, &str)> = EVENT_ONLY
        .iter()
        .map(|(n, f, why)| (*n, (*f, *why)))
        .collect();

    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    for (origin, expr) in expressions() {
        for name in metric_names(&expr) {
            used.insert(name.clone());
            if series.contains(&name) {
                continue;
            }
            if pending.contains_key(name.as_str()) {
                continue;
            }
            if let Some((file, _)) = event_only.get(name.as_str()) {
                let text = std::fs::read_to_string(repo(file)).unwrap();
                assert!(
                    text.contains(&format!("\"{name}\"")),
                    "{name} is excused as exported on an event, but {file} does not register it"
                );
                continue;
            }
            missing.push(format!("{origin}: {name}"));
        }
    }
    assert!(
        missing.is_empty(),
        "metrics the dashboard or alerts use that the binary does not export:\n  {}\n--- scrape:\n{body}",
        missing.join("\n  ")
    );
    for (name, why) in PENDING {
        assert!(used.contains(*name), "{name} is pending but no longer used");
        assert!(
            !series.contains(*name),
            "{name} is exported now: take it off PENDING ({why})"
        );
    }
    for (name, _, _) in EVENT_ONLY {
        assert!(used.contains(*name), "{name} is excused but no longer used");
    }
}

/// `promtool check rules` on the alerts, and on every dashboard expression as a recording rule
/// (Grafana's variables replaced by what they stand for), where promtool is installed.
#[test]
fn promql_parses() {
    if Command::new("promtool").arg("--version").output().is_err() {
        if std::env::var("SWITCHBOARD_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
            panic!("promtool is not installed (SWITCHBOARD_REQUIRE_TOOLS=1 makes this a failure)");
        }
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED promql_parses: promtool is not installed (Debian package prometheus; scripts/setup.sh installs it)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: expressions\n    rules:\n");
    for (i, (origin, expr)) in expressions().into_iter().enumerate() {
        // A variable's `label_values(SELECTOR, LABEL)` is Grafana's; its SELECTOR is PromQL.
        let expr = match expr.strip_prefix("label_values(") {
            Some(inner) => inner
                .rsplit_once(',')
                .expect("label_values(SELECTOR, LABEL)")
                .0
                .to_string(),
            None => expr,
        };
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      # {origin}\n      - record: check:expression_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let rule: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo("deploy/monitoring/prometheusrule.yaml")).unwrap(),
    )
    .unwrap();
    let alerts = serde_yaml::to_string(&serde_yaml::Value::Mapping(
        [("groups".into(), rule["spec"]["groups"].clone())]
            .into_iter()
            .collect(),
    ))
    .unwrap();
    for (name, text) in [("expressions.yaml", rules), ("alerts.yaml", alerts)] {
        let path = dir.path().join(name);
        std::fs::write(&path, &text).unwrap();
        let out = Command::new("promtool")
            .args(["check", "rules"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check rules {name}:\n{}{}\n--- file:\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every metric the binary registers is named somewhere in docs/ (the reference tables of
/// docs/dns.md, docs/http.md, docs/l4.md, docs/sources.md and docs/gateway-api.md).
#[test]
fn every_metric_is_documented() {
    let mut docs = String::new();
    for entry in std::fs::read_dir(repo("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    let documented = metric_names(&docs);
    let mut undocumented = Vec::new();
    for file in [
        "controller/src/metrics.rs",
        "controller/src/status/mod.rs",
        "dns/src/metrics.rs",
        "proxy/src/http/metrics.rs",
        "proxy/src/l4/metrics.rs",
    ] {
        let text = std::fs::read_to_string(repo(file)).unwrap();
        // The names are string literals: "switchboard_..." or "coredns_...".
        let quoted: String = text
            .split('"')
            .skip(1)
            .step_by(2)
            .map(|s| format!("{s}\n"))
            .collect();
        let names = metric_names(&quoted);
        assert!(!names.is_empty(), "no metric names found in {file}");
        for name in names {
            if !documented.contains(&name) {
                undocumented.push(format!("{name} ({file})"));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "metrics no doc in docs/ names:\n  {}",
        undocumented.join("\n  ")
    );
}

/// `--no-debug-endpoints` takes `/debug/tables` off the admin listener and leaves the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_tables_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let on = Switchboard::start(&["--manifests", path]);
    let off = Switchboard::start(&["--manifests", path, "--no-debug-endpoints"]);
    for sb in [&on, &off] {
        sb.wait_admin("/readyz", Duration::from_secs(20), "ready", |c, _| c == 200)
            .await;
        assert_eq!(sb.admin_get("/healthz").await.0, 200);
        assert_eq!(sb.admin_get("/metrics").await.0, 200);
    }
    let (code, body) = on.admin_get("/debug/tables").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("# generation"), "{body}");
    let (code, body) = off.admin_get("/debug/tables").await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("--no-debug-endpoints"), "{body}");
    // The same from the config file.
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "no-debug-endpoints = true\n").unwrap();
    let file = Switchboard::start(&["--manifests", path, "--config", config.to_str().unwrap()]);
    assert_eq!(file.admin_get("/debug/tables").await.0, 404);
}
