//! One battery, two sources: the same steps run against the manifest directory and against the
//! Kubernetes API (the test API server, through the real `kube` client), and must produce the
//! same tables. Golden dumps live in tests/golden/.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use apiserver::{ApiServer, Options};
use common::*;

/// Where the battery puts objects.
trait Source {
    /// Adds or replaces the objects of file `name`.
    fn put(&self, name: &str, yaml: &str);
    /// Removes the objects of file `name`.
    fn remove(&self, name: &str);
    fn label(&self) -> &'static str;
}

struct DirSource {
    dir: PathBuf,
}

impl Source for DirSource {
    fn put(&self, name: &str, yaml: &str) {
        // Write then rename, as kubectl-style tools and ConfigMap updates do.
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.dir.join(name)).unwrap();
    }
    fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.join(name)).unwrap();
    }
    fn label(&self) -> &'static str {
        "manifests"
    }
}

struct ApiSource {
    api: ApiServer,
    files: Mutex<BTreeMap<String, String>>,
}

/// (apiVersion, kind, namespace, name) of every document.
fn identities(yaml: &str) -> Vec<(String, String, Option<String>, String)> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .map(|v| {
            let s = |p: &[&str]| {
                let mut cur = &v;
                for k in p {
                    cur = &cur[*k];
                }
                cur.as_str().map(str::to_string)
            };
            (
                s(&["apiVersion"]).unwrap(),
                s(&["kind"]).unwrap(),
                s(&["metadata", "namespace"]),
                s(&["metadata", "name"]).unwrap(),
            )
        })
        .collect()
}

impl Source for ApiSource {
    fn put(&self, name: &str, yaml: &str) {
        let mut files = self.files.lock().unwrap();
        // Objects the new version of the file no longer has are deleted, as `kubectl apply --prune`.
        if let Some(old) = files.get(name) {
            let new_ids = identities(yaml);
            for id in identities(old) {
                if !new_ids.contains(&id) {
                    self.api.delete(
                        &id.0,
                        &id.1,
                        Some(id.2.as_deref().unwrap_or("default")),
                        &id.3,
                    );
                }
            }
        }
        self.api.apply_yaml(yaml);
        files.insert(name.into(), yaml.into());
    }
    fn remove(&self, name: &str) {
        let old = self.files.lock().unwrap().remove(name).unwrap();
        for (av, kind, ns, n) in identities(&old) {
            let ns = if kind == "GatewayClass" {
                None
            } else {
                Some(ns.unwrap_or_else(|| "default".into()))
            };
            assert!(
                self.api.delete(&av, &kind, ns.as_deref(), &n),
                "delete {kind} {n}"
            );
        }
    }
    fn label(&self) -> &'static str {
        "kubernetes"
    }
}

const EXTRA: &str = "apiVersion: v1
kind: Service
metadata: {name: extra, namespace: default}
spec:
  clusterIP: 127.10.0.99
  ports: [{name: http, port: 8080, targetPort: 9080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: extra-abc
  namespace: default
  labels: {kubernetes.io/service-name: extra}
addressType: IPv4
ports: [{name: http, port: 9080, protocol: TCP}]
endpoints:
- addresses: [127.20.0.99]
  conditions: {ready: true}
";

const TLS: &str = "apiVersion: v1
kind: Secret
metadata: {name: demo-tls, namespace: default}
type: kubernetes.io/tls
data:
  tls.crt: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJmYWtlCi0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K
  tls.key: LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCk1JSUVmYWtlCi0tLS0tRU5EIFBSSVZBVEUgS0VZLS0tLS0K
---
apiVersion: v1
kind: Secret
metadata: {name: not-tls, namespace: default}
type: Opaque
data: {password: aHVudGVyMg==}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: secure, namespace: default}
spec:
  ingressClassName: switchboard
  tls:
  - hosts: [secure.local]
    secretName: demo-tls
  - hosts: [other.local]
    secretName: absent-tls
  rules:
  - host: secure.local
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 8080}}}}]
";

/// The battery. `sb` must be running against `src`, which starts empty.
async fn battery(src: &dyn Source, sb: &Switchboard) {
    let label = src.label();
    // 1. The demo cluster compiles to the golden tables.
    for (name, text) in demo_files() {
        src.put(&name, &text);
    }
    let golden = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/demo.txt"),
    )
    .unwrap_or_default();
    let dump = if std::env::var_os("BLESS").is_some() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        sb.tables().await
    } else {
        sb.wait_tables("the golden demo tables", |t| t == golden)
            .await
    };
    assert_golden("demo.txt", &dump);
    sb.wait_admin("/readyz", Duration::from_secs(10), "ready", |c, _| c == 200)
        .await;

    // 2. A new file / new objects appear.
    src.put("extra.yaml", EXTRA);
    sb.wait_tables("service default/extra", |t| {
        t.contains("service default/extra ClusterIP clusterIPs=127.10.0.99")
            && t.contains("endpoint 127.20.0.99:9080 ready")
            && t.contains("dns extra.default.svc.cluster.local. A 127.10.0.99")
    })
    .await;

    // 3. A modified object: the endpoint turns not-ready, a port is renamed.
    let modified = EXTRA
        .replace("conditions: {ready: true}", "conditions: {ready: false}")
        .replace("name: http,", "name: web,");
    src.put("extra.yaml", &modified);
    sb.wait_tables("extra modified", |t| {
        t.contains("endpoint 127.20.0.99:9080 not-ready")
            && t.contains("_web._tcp.extra.default.svc.cluster.local.")
            && !t.contains("_http._tcp.extra.default.svc.cluster.local.")
    })
    .await;

    // 4. An invalid version is rejected with the field named; the last good version stays.
    let errors_before = sb
        .metric(&format!(
            "switchboard_source_errors_total{{reason=\"validation\",source=\"{label}\"}}"
        ))
        .await
        .unwrap_or(0.0);
    src.put(
        "extra.yaml",
        &modified.replace("clusterIP: 127.10.0.99", "clusterIP: 127.10.0.999"),
    );
    sb.wait_log("spec.clusterIP", Duration::from_secs(10)).await;
    assert!(
        sb.log_contains("127.10.0.999"),
        "the error names the bad value:\n{}",
        sb.log()
    );
    let errors_after = sb
        .metric(&format!(
            "switchboard_source_errors_total{{reason=\"validation\",source=\"{label}\"}}"
        ))
        .await
        .unwrap_or(0.0);
    assert!(
        errors_after > errors_before,
        "validation errors counted ({label})"
    );
    let t = sb.tables().await;
    assert!(
        t.contains("service default/extra ClusterIP clusterIPs=127.10.0.99\n"),
        "last good version kept:\n{t}"
    );

    // 5. Deleting removes exactly those objects.
    src.remove("extra.yaml");
    sb.wait_tables("extra deleted", |t| !t.contains("extra"))
        .await;
    assert_eq!(sb.tables().await, dump, "back to the demo tables");

    // 6. Scale an endpoint slice of the demo down and back up.
    let (name, web) = demo_files()
        .into_iter()
        .find(|(_, t)| t.contains("name: web-"))
        .unwrap();
    let one_endpoint = remove_endpoint(&web, "127.20.0.2");
    src.put(&name, &one_endpoint);
    sb.wait_tables("web scaled down", |t| {
        !t.contains("127.20.0.2:9080") && t.contains("127.20.0.1:9080")
    })
    .await;
    src.put(&name, &web);
    sb.wait_tables("web scaled up", |t| t.contains("127.20.0.2:9080"))
        .await;
    sb.wait_admin("/readyz", Duration::from_secs(5), "still ready", |c, _| {
        c == 200
    })
    .await;

    // 7. TLS: an Ingress `tls` entry takes its certificate from a kubernetes.io/tls Secret;
    // other Secrets are never read; a reference to a missing Secret is reported.
    src.put("tls.yaml", TLS);
    let t = sb
        .wait_tables("tls certificate", |t| {
            t.contains("tls secure.local -> Secret default/demo-tls (from Ingress default/secure)")
        })
        .await;
    assert!(
        t.contains("tls-missing Secret default/absent-tls (from Ingress default/secure)"),
        "{t}"
    );
    assert!(!t.contains("not-tls") && !t.contains("aHVudGVy"), "{t}");
    src.remove("tls.yaml");
    sb.wait_tables("tls removed", |t| !t.contains("tls ")).await;
}

/// Drops the endpoint with `addr` from an EndpointSlice YAML: the `- addresses:` item that
/// holds it, up to the next line at the item's indentation or less.
fn remove_endpoint(yaml: &str, addr: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim_start().starts_with("- addresses:") {
            let item_indent = indent(line);
            let mut j = i + 1;
            while j < lines.len() && (lines[j].trim().is_empty() || indent(lines[j]) > item_indent)
            {
                j += 1;
            }
            let block = &lines[i..j];
            if !block.iter().any(|l| l.contains(addr)) {
                out.extend_from_slice(block);
            }
            i = j;
        } else {
            out.push(line);
            i += 1;
        }
    }
    let s = out.join("\n") + "\n";
    assert!(
        !s.lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains(addr)),
        "endpoint {addr} removed from:\n{s}"
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn battery_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let sb = Switchboard::start(&["--manifests", dir.path().to_str().unwrap()]);
    battery(
        &DirSource {
            dir: dir.path().into(),
        },
        &sb,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn battery_kubernetes() {
    let api = ApiServer::start(Options::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kc).unwrap();
    let sb = Switchboard::start(&["--kubeconfig", kc.to_str().unwrap()]);
    battery(
        &ApiSource {
            api: api.clone(),
            files: Mutex::new(BTreeMap::new()),
        },
        &sb,
    )
    .await;
}
