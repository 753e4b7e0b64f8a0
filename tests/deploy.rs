//! The YAML we ship must be what a cluster accepts and what switchboard expects.
//!
//! - `deploy/*.yaml`: every document deserializes into its typed Kubernetes object with no field
//!   lost, the RBAC only reads, the DaemonSet's `--config` file is the mounted ConfigMap key, and
//!   that key holds a config `switchboard run` accepts.
//! - `examples/demo/*.yaml`: every document is a Service, EndpointSlice, Ingress or Gateway API
//!   object, and together they are the small loopback-only cluster the demo README promises.
//!
//! k8s-openapi ignores unknown fields, so each document is also serialized back and compared with
//! the input: a misspelled field (`targetport:`) shows up as a difference.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
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
        assert!(
            text.starts_with('#'),
            "{name}: should open with a comment saying what it is"
        );
        let mut index = 0;
        for de in serde_yaml::Deserializer::from_str(&text) {
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
            document.origin =
                format!("{name} document {index} ({api_version} {kind} {object_name})");
            documents.push(document);
        }
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
// deploy/

#[derive(Default)]
struct Deploy {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
    services: Vec<Service>,
}

fn deploy() -> Deploy {
    let mut deploy = Deploy::default();
    for document in documents(&repo_dir("deploy")) {
        match document.api_version_kind() {
            ("v1", "Namespace") => deploy.namespaces.push(document.typed()),
            ("v1", "ServiceAccount") => deploy.service_accounts.push(document.typed()),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                deploy.cluster_roles.push(document.typed())
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                deploy.cluster_role_bindings.push(document.typed())
            }
            ("v1", "ConfigMap") => deploy.config_maps.push(document.typed()),
            ("apps/v1", "DaemonSet") => deploy.daemon_sets.push(document.typed()),
            ("v1", "Service") => deploy.services.push(document.typed()),
            other => panic!("{}: unexpected kind {other:?}", document.origin),
        }
    }
    deploy
}

fn only<'a, T>(items: &'a [T], what: &str) -> &'a T {
    assert_eq!(items.len(), 1, "deploy/ should hold exactly one {what}");
    &items[0]
}

#[test]
fn deploy_documents_are_typed_kubernetes_objects() {
    let deploy = deploy();
    only(&deploy.service_accounts, "ServiceAccount");
    only(&deploy.cluster_roles, "ClusterRole");
    only(&deploy.cluster_role_bindings, "ClusterRoleBinding");
    only(&deploy.config_maps, "ConfigMap");
    only(&deploy.daemon_sets, "DaemonSet");
    only(&deploy.services, "Service");
    for ns in &deploy.namespaces {
        let ns = name(&ns.metadata);
        let sa = &deploy.service_accounts[0].metadata;
        assert_eq!(namespace(sa), ns, "a Namespace is shipped but not used");
    }
}

#[test]
fn cluster_role_only_reads_what_the_controller_watches() {
    let deploy = deploy();
    let role = only(&deploy.cluster_roles, "ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
        for verb in &rule.verbs {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str()),
                "ClusterRole grants {verb:?}; switchboard only reads: {rule:?}"
            );
        }
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                granted.insert(format!("{group}/{resource}"));
            }
        }
    }
    let expected: BTreeSet<String> = [
        "/services",
        "/secrets",
        "/nodes",
        "discovery.k8s.io/endpointslices",
        "networking.k8s.io/ingresses",
        "gateway.networking.k8s.io/gatewayclasses",
        "gateway.networking.k8s.io/gateways",
        "gateway.networking.k8s.io/httproutes",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(granted, expected);

    let binding = only(&deploy.cluster_role_bindings, "ClusterRoleBinding");
    let account = only(&deploy.service_accounts, "ServiceAccount");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, name(&role.metadata));
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && s.name == name(&account.metadata)
            && s.namespace.as_deref() == account.metadata.namespace.as_deref()),
        "the binding does not name the ServiceAccount: {subjects:?}"
    );
}

#[test]
fn daemon_set_runs_with_the_mounted_config() {
    let deploy = deploy();
    let ds = only(&deploy.daemon_sets, "DaemonSet");
    let account = only(&deploy.service_accounts, "ServiceAccount");
    let config_map = only(&deploy.config_maps, "ConfigMap");
    assert_eq!(namespace(&ds.metadata), namespace(&account.metadata));
    assert_eq!(namespace(&ds.metadata), namespace(&config_map.metadata));

    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some(name(&account.metadata))
    );
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "must tolerate every taint"
    );

    let container = only(&pod.containers, "container");
    assert_eq!(
        container.image.as_deref(),
        Some("ghcr.io/switchboard/switchboard:0.1.0")
    );
    let args = container.args.as_deref().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("run"), "{args:?}");
    let flag = |name: &str| -> &str {
        let at = args
            .iter()
            .position(|a| a == name)
            .unwrap_or_else(|| panic!("no {name} in {args:?}"));
        args.get(at + 1)
            .unwrap_or_else(|| panic!("{name} has no value"))
    };
    assert_eq!(flag("--node-name"), "$(NODE_NAME)");
    let node_name = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME is set");
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref());
    assert_eq!(field.map(|f| f.field_path.as_str()), Some("spec.nodeName"));

    // --config names a key of the ConfigMap, through a mount of a volume of that ConfigMap.
    let config_path = Path::new(flag("--config"));
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
    let source = volume.config_map.as_ref().expect("a ConfigMap volume");
    assert_eq!(source.name, name(&config_map.metadata));
    let key = config_path.file_name().unwrap().to_str().unwrap();
    assert!(
        config_map
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key(key)),
        "ConfigMap has no key {key}"
    );

    let capabilities = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .expect("capabilities are set");
    let added: BTreeSet<&str> = capabilities
        .add
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(added, BTreeSet::from(["NET_ADMIN", "NET_BIND_SERVICE"]));

    for (probe, path) in [
        (&container.liveness_probe, "/healthz"),
        (&container.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect(path);
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(9153));
    }
    // The probes reach the admin listener on the pod IP (the node's, under hostNetwork).
    let args = container.args.as_deref().unwrap_or_default();
    let admin = args
        .iter()
        .position(|a| a == "--admin")
        .and_then(|i| args.get(i + 1));
    assert_eq!(
        admin.map(String::as_str),
        Some("$(POD_IP):9153"),
        "{args:?}"
    );
    let pod_ip = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "POD_IP")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(pod_ip, Some("status.podIP"));
}

#[test]
fn config_map_holds_an_accepted_config() {
    let deploy = deploy();
    let config_map = only(&deploy.config_maps, "ConfigMap");
    let data = config_map.data.as_ref().expect("ConfigMap has data");
    let text = data.get("switchboard.toml").expect("key switchboard.toml");

    // The keys `switchboard run` knows, so this test says which one is wrong on its own.
    let table: toml::Table = toml::from_str(text).expect("switchboard.toml is TOML");
    let known = [
        "dns",
        "http",
        "https",
        "tls-cert-dir",
        "lb-algorithm",
        "outlier-ejection-ms",
        "admin",
        "cluster-domain",
        "upstream",
        "ttl",
        "pods",
        "axfr-allow",
        "max-concurrent-forwards",
        "cache-size",
        "lame-duck",
        "l4",
        "node-name",
        "zone",
        "cleanup-on-exit",
        "udp-idle-timeout",
        "l4-sync-timeout",
        "kubeconfig",
        "manifests",
    ];
    for key in table.keys() {
        assert!(known.contains(&key.as_str()), "unknown config key {key}");
    }
    // The admin listener is bound by the DaemonSet's --admin $(POD_IP):9153, not here on
    // every address (#14.4).
    assert!(
        !table.contains_key("admin"),
        "admin belongs on the pod IP (--admin in daemonset.yaml), not in the config file"
    );
    assert_eq!(table["l4"].as_str(), Some("nftables"));

    switchboard::config::parse_file_config(text).expect("switchboard accepts switchboard.toml");
}

#[test]
fn kube_dns_service_selects_the_daemon_set() {
    let deploy = deploy();
    let service = only(&deploy.services, "Service");
    let ds = only(&deploy.daemon_sets, "DaemonSet");
    assert_eq!(name(&service.metadata), "kube-dns");
    assert_eq!(namespace(&service.metadata), "kube-system");
    let spec = service.spec.as_ref().unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));

    let template = &ds.spec.as_ref().unwrap().template;
    let labels = template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap_or_default();
    let selector = spec.selector.as_ref().expect("a selector");
    assert!(!selector.is_empty());
    for (key, value) in selector {
        assert_eq!(
            labels.get(key),
            Some(value),
            "selector {key}={value} matches no pod"
        );
    }

    let container_ports: BTreeMap<String, (i32, String)> =
        template.spec.as_ref().unwrap().containers[0]
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                (
                    p.name.clone().unwrap_or_default(),
                    (p.container_port, protocol),
                )
            })
            .collect();
    let mut ports = Vec::new();
    for port in spec.ports.iter().flatten() {
        let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
        let target = match port.target_port.clone() {
            Some(IntOrString::String(named)) => {
                let (number, container_protocol) = container_ports
                    .get(&named)
                    .unwrap_or_else(|| panic!("targetPort {named} is no container port"));
                assert_eq!(container_protocol, &protocol, "targetPort {named}");
                *number
            }
            Some(IntOrString::Int(number)) => number,
            None => port.port,
        };
        ports.push(format!(
            "{} {}/{protocol} -> {target}",
            port.name.as_deref().unwrap_or(""),
            port.port
        ));
    }
    assert_eq!(
        ports,
        [
            "dns 53/UDP -> 53",
            "dns-tcp 53/TCP -> 53",
            "metrics 9153/TCP -> 9153"
        ]
    );
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
            .map(|p| {
                let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                (p.name.clone().unwrap_or_default(), protocol)
            })
            .collect();
        let slice_ports: BTreeSet<(String, String)> = slice
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                (p.name.clone().unwrap_or_default(), protocol)
            })
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
