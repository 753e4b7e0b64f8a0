//! The YAML we ship must be what a cluster accepts and what switchboard expects.
//!
//! - `deploy/`: every variant (`kubectl kustomize deploy/variants/NAME`) renders to typed
//!   Kubernetes objects with no field lost; the RBAC only reads; each variant's workload mounts a
//!   config `switchboard run` accepts that turns on its roles and no others, with the ports,
//!   privileges, image and labels those roles need; no admin port is behind kube-dns; and the
//!   hand-overs in deploy/README.md never leave kube-dns without a ready endpoint (in a model of
//!   the endpoint controller: there is no kubelet here).
//! - `examples/demo/*.yaml`: every document is a Service, EndpointSlice, Ingress or Gateway API
//!   object, and together they are the small loopback-only cluster the demo README promises.
//!
//! The checks are split by concern: `variants.rs` (each variant's workload, ports, privileges,
//! images, kube-dns, a real API server), `handover.rs` (the README's hand-over procedures),
//! `rbac.rs` (the roles); the shared parsing and the demo checks are here.
//!
//! k8s-openapi ignores unknown fields, so each document is also serialized back and compared with
//! the input: a misspelled field (`targetport:`) shows up as a difference.

#[path = "../envtest/mod.rs"]
mod envtest;
mod handover;
mod rbac;
mod variants;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize as _, Serialize};
use serde_json::Value;

/// One YAML document and where it came from, for failure messages.
struct Document {
    origin: String,
    value: Value,
}

impl Document {
    fn str_at(&self, pointer: &str) -> Option<&str> {
        self.value.pointer(pointer).and_then(Value::as_str)
    }

    fn api_version_kind(&self) -> (&str, &str) {
        (
            self.str_at("/apiVersion").unwrap_or(""),
            self.str_at("/kind").unwrap_or(""),
        )
    }

    /// Deserializes into `T`, then serializes back and fails if anything differs from the input.
    fn typed<T: DeserializeOwned + Serialize>(&self) -> T {
        let object: T = serde_json::from_value(self.value.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", self.origin));
        let back = serde_json::to_value(&object).unwrap();
        let mut differences = Vec::new();
        diff(&self.value, &back, "", &mut differences);
        assert!(
            differences.is_empty(),
            "{}: does not round-trip through {} (misspelled or misplaced field?):\n  {}",
            self.origin,
            std::any::type_name::<T>(),
            differences.join("\n  ")
        );
        object
    }
}

/// Every document of every `*.yaml`/`*.yml` file directly in `dir`, in file-name order, with the
/// file's leading comment checked on the way.
fn documents(dir: &Path) -> Vec<Document> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {}", dir.display());

    let mut documents = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        documents.extend(parse_documents(&name, &text));
    }
    documents
}

/// The documents of one YAML text (a file, which must open with a comment, or kubectl's output).
fn parse_documents(name: &str, text: &str) -> Vec<Document> {
    assert!(
        text.starts_with('#') || !name.ends_with(".yaml"),
        "{name}: should open with a comment saying what it is"
    );
    let mut documents = Vec::new();
    let mut index = 0;
    for de in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(de).unwrap_or_else(|e| panic!("{name}: {e}"));
        if value.is_null() {
            continue;
        }
        index += 1;
        let mut document = Document {
            origin: format!("{name} document {index}"),
            value,
        };
        let (api_version, kind) = document.api_version_kind();
        let object_name = document.str_at("/metadata/name").unwrap_or("?");
        document.origin = format!("{name} document {index} ({api_version} {kind} {object_name})");
        documents.push(document);
    }
    documents
}

/// Paths at which `output` differs from `input`; explicit nulls in the input count as absent.
fn diff(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (key, value) in i {
                let here = format!("{path}.{key}");
                match o.get(key) {
                    _ if value.is_null() => {}
                    None => out.push(format!("{here}: dropped (unknown field)")),
                    Some(back) => diff(value, back, &here, out),
                }
            }
            for key in o.keys().filter(|k| i.get(*k).is_none_or(Value::is_null)) {
                out.push(format!("{path}.{key}: added by the round trip"));
            }
        }
        (Value::Array(i), Value::Array(o)) if i.len() == o.len() => {
            for (n, (value, back)) in i.iter().zip(o).enumerate() {
                diff(value, back, &format!("{path}[{n}]"), out);
            }
        }
        _ if input == output => {}
        _ => out.push(format!("{path}: {input} became {output}")),
    }
}

fn repo_dir(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

fn namespace(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

// ---------------------------------------------------------------------------------------------
// deploy/: a kustomize tree, rendered with `kubectl kustomize`

/// Set to `1` (as `.ci/run` does where the machine has kubectl) to make a test that needs
/// kubectl fail instead of skipping. kubectl comes with the machine image, not from Debian's
/// packages, so `scripts/setup.sh` cannot install it where it is missing.
const REQUIRE_KUBECTL: &str = "SWITCHBOARD_REQUIRE_KUBECTL";

/// The registry the recipe (scripts/image.sh, Dockerfile) and the variants name.
const REGISTRY: &str = "ghcr.io/switchboard";
/// The admin port of every variant: not CoreDNS's 9153, which kube-dns Services forward.
const ADMIN_PORT: i32 = 9154;
/// The image's non-root user.
const NON_ROOT: i64 = 65532;

/// kubeadm's kube-dns Service (cmd/kubeadm/app/phases/addons/dns/manifests.go), which the dns
/// and all variants join as it is.
const KUBEADM_KUBE_DNS: &str = "apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: 10.96.0.10
  selector: {k8s-app: kube-dns}
  ports:
    - {name: dns, port: 53, protocol: UDP, targetPort: 53}
    - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
    - {name: metrics, port: 9153, protocol: TCP, targetPort: 9153}
";

/// `kubectl kustomize deploy/DIR`, parsed; `None` where kubectl is missing (said on stderr, or
/// a failure under SWITCHBOARD_REQUIRE_KUBECTL=1).
fn kustomize(dir: &str) -> Option<Vec<Document>> {
    let out = match std::process::Command::new("kubectl")
        .args(["kustomize", "--load-restrictor", "LoadRestrictionsRootOnly"])
        .arg(repo_dir(&format!("deploy/{dir}")))
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            let why = format!("kubectl (with its built-in kustomize) cannot run: {e}");
            if std::env::var(REQUIRE_KUBECTL).is_ok_and(|v| v == "1") {
                panic!("{why} ({REQUIRE_KUBECTL}=1 makes this a failure, not a skip)");
            }
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED rendering deploy/{dir}: {why}"
            );
            return None;
        }
    };
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/{dir}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(parse_documents(
        &format!("deploy/{dir}"),
        &String::from_utf8(out.stdout).unwrap(),
    ))
}

/// The objects of one rendered variant, typed.
#[derive(Default)]
struct Rendered {
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
    deployments: Vec<Deployment>,
    disruption_budgets: Vec<PodDisruptionBudget>,
    services: Vec<Service>,
}

fn typed(documents: Vec<Document>) -> Rendered {
    let mut r = Rendered::default();
    for document in documents {
        match document.api_version_kind() {
            ("v1", "ServiceAccount") => r.service_accounts.push(document.typed()),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                r.cluster_roles.push(document.typed())
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                r.cluster_role_bindings.push(document.typed())
            }
            ("rbac.authorization.k8s.io/v1", "Role") => r.roles.push(document.typed()),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                r.role_bindings.push(document.typed())
            }
            ("v1", "ConfigMap") => r.config_maps.push(document.typed()),
            ("apps/v1", "DaemonSet") => r.daemon_sets.push(document.typed()),
            ("apps/v1", "Deployment") => r.deployments.push(document.typed()),
            ("policy/v1", "PodDisruptionBudget") => r.disruption_budgets.push(document.typed()),
            ("v1", "Service") => r.services.push(document.typed()),
            other => panic!("{}: unexpected kind {other:?}", document.origin),
        }
    }
    for meta in r
        .service_accounts
        .iter()
        .map(|o| &o.metadata)
        .chain(r.config_maps.iter().map(|o| &o.metadata))
        .chain(r.daemon_sets.iter().map(|o| &o.metadata))
        .chain(r.deployments.iter().map(|o| &o.metadata))
        .chain(r.disruption_budgets.iter().map(|o| &o.metadata))
        .chain(r.services.iter().map(|o| &o.metadata))
        .chain(r.roles.iter().map(|o| &o.metadata))
        .chain(r.role_bindings.iter().map(|o| &o.metadata))
    {
        assert_eq!(namespace(meta), "kube-system", "{}", name(meta));
    }
    r
}

/// What a variant is for.
struct Variant {
    dir: &'static str,
    dns: bool,
    http: bool,
    l4: bool,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        dir: "variants/dns",
        dns: true,
        http: false,
        l4: false,
    },
    Variant {
        dir: "variants/kube-proxy",
        dns: false,
        http: false,
        l4: true,
    },
    Variant {
        dir: "variants/ingress",
        dns: false,
        http: true,
        l4: false,
    },
    Variant {
        dir: "variants/all",
        dns: true,
        http: true,
        l4: true,
    },
];

/// A rendered variant's one workload.
struct Workload {
    /// `deployment/NAME` or `daemonset/NAME`, as kubectl names it.
    id: String,
    selector: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    pod: PodSpec,
    /// The mounted switchboard.toml.
    config: String,
}

fn workload(r: &Rendered) -> Workload {
    let (id, selector, template) = match (&r.daemon_sets[..], &r.deployments[..]) {
        ([ds], []) => {
            let spec = ds.spec.clone().unwrap();
            (
                format!("daemonset/{}", name(&ds.metadata)),
                spec.selector,
                spec.template,
            )
        }
        ([], [d]) => {
            let spec = d.spec.clone().unwrap();
            (
                format!("deployment/{}", name(&d.metadata)),
                spec.selector,
                spec.template,
            )
        }
        _ => panic!("a variant has exactly one DaemonSet or Deployment"),
    };
    let pod = template.spec.unwrap();
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap_or_default();
    let config_path = PathBuf::from(flag(&args, "--config"));
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| config_path.parent() == Some(Path::new(&m.mount_path)))
        .unwrap_or_else(|| panic!("{} is not in a mounted directory", config_path.display()));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the mount's volume exists");
    let map_name = volume
        .config_map
        .as_ref()
        .expect("a ConfigMap volume")
        .name
        .clone();
    let map = r
        .config_maps
        .iter()
        .find(|c| name(&c.metadata) == map_name.as_str())
        .unwrap_or_else(|| panic!("no ConfigMap {map_name} (the generator's name not rewritten?)"));
    let key = config_path.file_name().unwrap().to_str().unwrap();
    let config = map.data.as_ref().and_then(|d| d.get(key)).cloned();
    Workload {
        id,
        selector: selector.match_labels.unwrap_or_default(),
        labels: template.metadata.and_then(|m| m.labels).unwrap_or_default(),
        pod,
        config: config.unwrap_or_else(|| panic!("ConfigMap {map_name} has no key {key}")),
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| a == name)
        .unwrap_or_else(|| panic!("no {name} in {args:?}"));
    args.get(at + 1)
        .unwrap_or_else(|| panic!("{name} has no value"))
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn version() -> String {
    let cargo = std::fs::read_to_string(repo_dir("Cargo.toml")).unwrap();
    let table: toml::Table = toml::from_str(&cargo).unwrap();
    table["workspace"]["package"]["version"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Every YAML file under deploy/ opens with a comment saying what it is and parses; those that
/// are Kubernetes objects deserialize into their types (no kubectl needed).
#[test]
fn deploy_files_parse() {
    let mut files = Vec::new();
    let mut dirs = vec![repo_dir("deploy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 15, "{files:?}");
    let mut kustomizations = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let origin = file
            .strip_prefix(repo_dir(""))
            .unwrap()
            .display()
            .to_string();
        for document in parse_documents(&origin, &text) {
            match document.api_version_kind() {
                ("kustomize.config.k8s.io/v1beta1", "Kustomization")
                | ("kustomize.config.k8s.io/v1alpha1", "Component") => kustomizations += 1,
                ("monitoring.coreos.com/v1", _) => {}
                ("apps/v1", "DaemonSet") if document.value.pointer("/spec/selector").is_none() => {
                    // A strategic merge patch: a partial object.
                }
                ("", "") => {} // a JSON patch (a list of operations)
                _ => {
                    typed(vec![document]);
                }
            }
        }
    }
    assert_eq!(
        kustomizations, 9,
        "base, node, 2 components, 4 variants, monitoring"
    );
}

fn only<'a, T>(items: &'a [T], what: &str) -> &'a T {
    assert_eq!(items.len(), 1, "expected exactly one {what}");
    &items[0]
}

// ---------------------------------------------------------------------------------------------
// examples/demo/

#[derive(Default)]
struct Demo {
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    ingresses: Vec<Ingress>,
    /// GatewayClass, Gateway and HTTPRoute, by kind, as plain values.
    gateway_api: BTreeMap<String, Vec<Value>>,
}

fn demo() -> Demo {
    let mut demo = Demo::default();
    for document in documents(&repo_dir("examples/demo")) {
        match document.api_version_kind() {
            ("v1", "Service") => demo.services.push(document.typed()),
            ("discovery.k8s.io/v1", "EndpointSlice") => demo.slices.push(document.typed()),
            ("networking.k8s.io/v1", "Ingress") => demo.ingresses.push(document.typed()),
            ("gateway.networking.k8s.io/v1", kind @ ("GatewayClass" | "Gateway" | "HTTPRoute")) => {
                let spec = document.value.get("spec").and_then(Value::as_object);
                assert!(
                    spec.is_some_and(|s| !s.is_empty()),
                    "{}: empty spec",
                    document.origin
                );
                assert!(
                    document.str_at("/metadata/name").is_some(),
                    "{}: no name",
                    document.origin
                );
                let kind = kind.to_owned();
                demo.gateway_api
                    .entry(kind)
                    .or_default()
                    .push(document.value);
            }
            other => panic!("{}: unexpected kind {other:?}", document.origin),
        }
    }
    demo
}

fn in_subnet(address: &str, prefix: [u8; 3]) -> bool {
    address
        .parse::<Ipv4Addr>()
        .is_ok_and(|ip| ip.octets()[..3] == prefix)
}

fn service<'a>(demo: &'a Demo, ns: &str, svc: &str) -> &'a Service {
    demo.services
        .iter()
        .find(|s| namespace(&s.metadata) == ns && name(&s.metadata) == svc)
        .unwrap_or_else(|| panic!("no Service {ns}/{svc}"))
}

#[test]
fn demo_documents_are_typed_kubernetes_objects() {
    let demo = demo();
    assert!(!demo.services.is_empty() && !demo.slices.is_empty());
    assert_eq!(demo.ingresses.len(), 1);
    for kind in ["GatewayClass", "Gateway", "HTTPRoute"] {
        assert!(demo.gateway_api.contains_key(kind), "no {kind}");
    }
    let namespaces: BTreeSet<&str> = demo
        .services
        .iter()
        .map(|s| namespace(&s.metadata))
        .collect();
    assert_eq!(namespaces, BTreeSet::from(["default", "shop"]));
}

/// Everything runs unprivileged on loopback: VIPs in 127.10.0.0/24, pods in 127.20.0.0/24, each
/// unique, and every port at or above 1024.
#[test]
fn demo_runs_on_loopback_without_privileges() {
    let demo = demo();
    let mut cluster_ips = BTreeSet::new();
    for svc in &demo.services {
        let spec = svc.spec.as_ref().unwrap();
        let id = format!("{}/{}", namespace(&svc.metadata), name(&svc.metadata));
        match spec.cluster_ip.as_deref() {
            None if spec.type_.as_deref() == Some("ExternalName") => {}
            Some("None") => {}
            Some(ip) => {
                assert!(in_subnet(ip, [127, 10, 0]), "{id}: clusterIP {ip}");
                assert!(cluster_ips.insert(ip), "{id}: clusterIP {ip} used twice");
                assert_eq!(
                    spec.cluster_ips.as_deref(),
                    Some(&[ip.to_owned()][..]),
                    "{id}"
                );
            }
            None => panic!("{id}: no clusterIP"),
        }
        for port in spec.ports.iter().flatten() {
            assert!(port.port >= 1024, "{id}: port {}", port.port);
            if let Some(IntOrString::Int(target)) = port.target_port {
                assert!(target >= 1024, "{id}: targetPort {target}");
            }
        }
    }

    let mut addresses = BTreeSet::new();
    for slice in &demo.slices {
        let id = format!("{}/{}", namespace(&slice.metadata), name(&slice.metadata));
        assert_eq!(slice.address_type, "IPv4", "{id}");
        for port in slice.ports.iter().flatten() {
            assert!(port.port.is_some_and(|p| p >= 1024), "{id}: {port:?}");
        }
        for endpoint in &slice.endpoints {
            for address in &endpoint.addresses {
                assert!(in_subnet(address, [127, 20, 0]), "{id}: address {address}");
                assert!(
                    addresses.insert(address.clone()),
                    "{id}: {address} used twice"
                );
            }
            assert_eq!(endpoint.node_name.as_deref(), Some("demo-node"), "{id}");
            assert_eq!(endpoint.zone.as_deref(), Some("zone-a"), "{id}");
            let target = endpoint.target_ref.as_ref().expect("targetRef");
            assert_eq!(target.kind.as_deref(), Some("Pod"), "{id}");
            assert!(
                endpoint.conditions.as_ref().and_then(|c| c.ready).is_some(),
                "{id}"
            );
        }
    }
}

/// Each slice belongs to a Service in its namespace and carries exactly its port names; the
/// features the README points at are all present.
#[test]
fn demo_slices_match_their_services() {
    let demo = demo();
    // A port as a slice and its Service both name it: (name, protocol, TCP if unset).
    let port_key = |name: &Option<String>, protocol: &Option<String>| {
        let protocol = protocol.clone().unwrap_or_else(|| "TCP".into());
        (name.clone().unwrap_or_default(), protocol)
    };
    for slice in &demo.slices {
        let ns = namespace(&slice.metadata);
        let svc_name = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .unwrap_or_else(|| panic!("{}: no service-name label", name(&slice.metadata)));
        let spec = service(&demo, ns, svc_name).spec.as_ref().unwrap();
        let service_ports: BTreeSet<(String, String)> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| port_key(&p.name, &p.protocol))
            .collect();
        let slice_ports: BTreeSet<(String, String)> = slice
            .ports
            .iter()
            .flatten()
            .map(|p| port_key(&p.name, &p.protocol))
            .collect();
        assert_eq!(slice_ports, service_ports, "{ns}/{svc_name}");
    }

    let all_endpoints = || demo.slices.iter().flat_map(|s| &s.endpoints);
    let headless = demo
        .services
        .iter()
        .find(|s| s.spec.as_ref().unwrap().cluster_ip.as_deref() == Some("None"))
        .expect("a headless service");
    let headless_slice = demo
        .slices
        .iter()
        .find(|s| {
            s.metadata.labels.as_ref().unwrap()["kubernetes.io/service-name"]
                == name(&headless.metadata)
        })
        .expect("the headless service has endpoints");
    assert!(headless_slice
        .endpoints
        .iter()
        .all(|e| e.hostname.is_some()));
    assert!(demo
        .services
        .iter()
        .any(|s| { s.spec.as_ref().unwrap().external_name.as_deref() == Some("example.com") }));
    assert!(all_endpoints().any(|e| e.conditions.as_ref().unwrap().ready == Some(false)));
    let service_ports = || {
        demo.services
            .iter()
            .flat_map(|s| s.spec.as_ref().unwrap().ports.iter().flatten())
    };
    assert!(service_ports().any(|p| p.protocol.as_deref() == Some("UDP")));
    assert!(service_ports().any(|p| p.name.is_none()));
}

/// The Ingress and the HTTPRoute route to services and ports that exist, and are switchboard's.
#[test]
fn demo_routes_point_at_demo_services() {
    let demo = demo();
    let has_port = |svc: &Service, port_name: Option<&str>, number: Option<i32>| {
        svc.spec.as_ref().unwrap().ports.iter().flatten().any(|p| {
            port_name.is_some_and(|n| p.name.as_deref() == Some(n)) || number == Some(p.port)
        })
    };

    let ingress = &demo.ingresses[0];
    let spec = ingress.spec.as_ref().unwrap();
    assert_eq!(spec.ingress_class_name.as_deref(), Some("switchboard"));
    let rule = &spec.rules.as_ref().unwrap()[0];
    assert_eq!(rule.host.as_deref(), Some("demo.local"));
    let paths = &rule.http.as_ref().unwrap().paths;
    assert!(paths.len() >= 2);
    for path in paths {
        let backend = path.backend.service.as_ref().unwrap();
        let svc = service(&demo, namespace(&ingress.metadata), &backend.name);
        let port = backend.port.as_ref().unwrap();
        assert!(has_port(svc, port.name.as_deref(), port.number), "{path:?}");
    }

    let class = &demo.gateway_api["GatewayClass"][0];
    assert_eq!(class["spec"]["controllerName"], "switchboard.dev/gateway");
    let gateway = &demo.gateway_api["Gateway"][0];
    assert_eq!(
        gateway["spec"]["gatewayClassName"],
        class["metadata"]["name"]
    );
    let listener = &gateway["spec"]["listeners"][0];
    assert_eq!(listener["protocol"], "HTTP");

    let route = &demo.gateway_api["HTTPRoute"][0];
    let route_ns = route["metadata"]["namespace"].as_str().unwrap_or("default");
    assert_eq!(gateway["metadata"]["namespace"].as_str(), Some(route_ns));
    assert_eq!(
        route["spec"]["parentRefs"][0]["name"],
        gateway["metadata"]["name"]
    );
    assert_eq!(route["spec"]["hostnames"][0], "shop.local");
    let rule = &route["spec"]["rules"][0];
    assert_eq!(rule["matches"][0]["path"]["type"], "PathPrefix");
    let backends = rule["backendRefs"].as_array().unwrap();
    assert_eq!(backends.len(), 2);
    for backend in backends {
        assert!(
            backend["weight"].as_i64().is_some_and(|w| w > 0),
            "{backend}"
        );
        let svc = service(&demo, route_ns, backend["name"].as_str().unwrap());
        let port = backend["port"].as_i64().map(|p| p as i32);
        assert!(has_port(svc, None, port), "{backend}");
    }
}
