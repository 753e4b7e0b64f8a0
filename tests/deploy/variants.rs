//! Each variant's workload: its roles' listeners, ports, privileges, image and labels; the
//! admin port kept from kube-dns; a real API server accepting what they render.

use super::*;

/// Each variant renders, and its workload is set up for its roles and only those: listeners in
/// its config, node ports, privileges, image, labels, probes on the admin port.
#[test]
fn each_variant_runs_its_roles() {
    for v in &VARIANTS {
        let Some(documents) = kustomize(v.dir) else {
            return;
        };
        let r = typed(documents);
        assert_eq!(
            r.cluster_roles.len(),
            2,
            "{}: the reading and the status ClusterRoles",
            v.dir
        );
        let account = only(&r.service_accounts, "ServiceAccount");
        assert!(r.services.is_empty(), "{}: ships a Service", v.dir);
        let w = workload(&r);
        let at = |what: &str| format!("{} ({}): {what}", v.dir, w.id);
        assert_eq!(
            w.pod.service_account_name.as_deref(),
            Some(name(&account.metadata))
        );
        assert_eq!(
            w.pod.dns_policy.as_deref(),
            Some("Default"),
            "{}",
            at("dnsPolicy")
        );
        assert_eq!(
            w.pod.host_network.unwrap_or(false),
            v.l4 || v.http,
            "{}",
            at("hostNetwork for the node roles only")
        );

        // The config: accepted, the role's listeners and nothing else, no /debug/tables.
        let file = switchboard::config::parse_file_config(&w.config)
            .unwrap_or_else(|e| panic!("{}: {e}", at("switchboard.toml")));
        let dns = file.dns.clone().unwrap_or_default();
        let http = file.http.clone().unwrap_or_default();
        let https = file.https.clone().unwrap_or_default();
        assert_eq!(!dns.is_empty(), v.dns, "{}", at("dns"));
        assert_eq!(
            !http.is_empty() && !https.is_empty(),
            v.http,
            "{}",
            at("http")
        );
        assert_eq!(
            file.l4 == Some(switchboard::config::L4Mode::Nftables),
            v.l4,
            "{}",
            at("l4")
        );
        assert_eq!(
            file.no_debug_endpoints,
            Some(true),
            "{}",
            at("/debug/tables off")
        );
        assert!(file.admin.is_none(), "{}", at("admin belongs to --admin"));
        assert!(file.node_name.is_none() && file.kubeconfig.is_none() && file.manifests.is_none());

        let container = &w.pod.containers[0];
        let args = container.args.clone().unwrap_or_default();
        assert_eq!(args.first().map(String::as_str), Some("run"));
        assert_eq!(flag(&args, "--admin"), format!("$(POD_IP):{ADMIN_PORT}"));
        let env = |var: &str| {
            container
                .env
                .iter()
                .flatten()
                .find(|e| e.name == var)
                .and_then(|e| e.value_from.as_ref())
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.clone())
        };
        assert_eq!(env("POD_IP").as_deref(), Some("status.podIP"));
        if v.l4 {
            assert_eq!(flag(&args, "--node-name"), "$(NODE_NAME)");
            assert_eq!(env("NODE_NAME").as_deref(), Some("spec.nodeName"));
        }

        // Container ports: the admin port and the listeners' ports, nothing else.
        let ports: BTreeSet<(i32, String)> = container
            .ports
            .iter()
            .flatten()
            .map(|p| (p.container_port, p.protocol.clone().unwrap_or("TCP".into())))
            .collect();
        let mut want = BTreeSet::from([(ADMIN_PORT, "TCP".to_string())]);
        for a in &dns {
            want.insert((a.port() as i32, "UDP".into()));
            want.insert((a.port() as i32, "TCP".into()));
        }
        for a in http.iter().chain(&https) {
            want.insert((a.port() as i32, "TCP".into()));
        }
        assert_eq!(ports, want, "{}", at("container ports"));
        let admin_name = container
            .ports
            .iter()
            .flatten()
            .find(|p| p.container_port == ADMIN_PORT)
            .and_then(|p| p.name.clone())
            .unwrap();
        for (probe, path) in [
            (&container.liveness_probe, "/healthz"),
            (&container.readiness_probe, "/readyz"),
        ] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .expect(path);
            assert_eq!(get.path.as_deref(), Some(path));
            assert_eq!(
                get.port,
                IntOrString::String(admin_name.clone()),
                "{}",
                at(path)
            );
        }

        // Privileges: NET_ADMIN and root only with l4; NET_BIND_SERVICE always (the binary's
        // file capability); the rest dropped.
        let sc = container.security_context.clone().expect("securityContext");
        let caps = sc.capabilities.clone().expect("capabilities");
        let added: BTreeSet<String> = caps.add.iter().flatten().cloned().collect();
        let mut want_caps = BTreeSet::from(["NET_BIND_SERVICE".to_string()]);
        if v.l4 {
            want_caps.insert("NET_ADMIN".into());
        }
        assert_eq!(added, want_caps, "{}", at("capabilities"));
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        if v.l4 {
            assert_eq!(sc.run_as_user, Some(0), "{}", at("nft needs root"));
        } else {
            assert_eq!(sc.run_as_user, Some(NON_ROOT), "{}", at("non-root"));
            assert_eq!(sc.run_as_non_root, Some(true));
        }

        // The image the recipe builds: with nft/ip/conntrack exactly when the role needs them.
        let slim = if v.l4 { "" } else { "-slim" };
        assert_eq!(
            container.image.clone().unwrap_or_default(),
            format!("{REGISTRY}/switchboard:{}{slim}", version()),
            "{}",
            at("image")
        );

        // DNS pods join kube-dns by its label; others must not (they would get queries). The
        // workload's own selector never selects CoreDNS's pods.
        assert_eq!(
            w.labels.get("k8s-app").map(String::as_str) == Some("kube-dns"),
            v.dns,
            "{}",
            at("k8s-app: kube-dns label")
        );
        assert!(selects(&w.selector, &w.labels), "{}", at("selector"));
        assert!(!w.selector.contains_key("k8s-app"), "{}", at("selector"));
        let coredns = BTreeMap::from([("k8s-app".to_string(), "kube-dns".to_string())]);
        assert!(!selects(&w.selector, &coredns));

        if w.id.starts_with("deployment/") {
            let d = &r.deployments[0];
            let spec = d.spec.as_ref().unwrap();
            assert!(spec.replicas.unwrap_or(1) >= 2, "{}", at("replicas"));
            let rolling = spec
                .strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref());
            assert_eq!(
                rolling.and_then(|r| r.max_unavailable.clone()),
                Some(IntOrString::Int(0)),
                "{}",
                at("a new pod is ready before an old one goes")
            );
            let pdb = only(&r.disruption_budgets, "PodDisruptionBudget");
            let pdb_selector = pdb.spec.as_ref().unwrap().selector.clone().unwrap();
            assert!(selects(
                &pdb_selector.match_labels.unwrap_or_default(),
                &w.labels
            ));
        }
    }
}

/// The admin listener (with /debug/tables, where on) is never behind kube-dns: neither behind
/// deploy/kube-dns/service.yaml nor behind kubeadm's Service, which forwards 9153.
#[test]
fn no_admin_port_behind_kube_dns() {
    let text = std::fs::read_to_string(repo_dir("deploy/kube-dns/service.yaml")).unwrap();
    let ours = typed(parse_documents("deploy/kube-dns/service.yaml", &text));
    let ours = only(&ours.services, "Service");
    let kubeadm = typed(parse_documents("kubeadm", KUBEADM_KUBE_DNS));
    let kubeadm = only(&kubeadm.services, "Service");
    let ports = |s: &Service| -> Vec<String> {
        s.spec
            .as_ref()
            .unwrap()
            .ports
            .iter()
            .flatten()
            .map(|p| format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")))
            .collect()
    };
    assert_eq!(
        ports(ours),
        ["53/UDP", "53/TCP"],
        "kube-dns/service.yaml: DNS only"
    );
    assert_eq!(name(&ours.metadata), "kube-dns");
    let ours_selector = ours.spec.as_ref().unwrap().selector.clone().unwrap();
    let kubeadm_selector = kubeadm.spec.as_ref().unwrap().selector.clone().unwrap();
    assert_eq!(
        ours_selector, kubeadm_selector,
        "the same selector as kubeadm's"
    );

    for v in &VARIANTS {
        let Some(documents) = kustomize(v.dir) else {
            return;
        };
        let w = workload(&typed(documents));
        if !selects(&kubeadm_selector, &w.labels) {
            continue;
        }
        let container = &w.pod.containers[0];
        for service in [ours, kubeadm] {
            for port in service.spec.as_ref().unwrap().ports.iter().flatten() {
                let target = match &port.target_port {
                    Some(IntOrString::Int(n)) => *n,
                    Some(IntOrString::String(named)) => container
                        .ports
                        .iter()
                        .flatten()
                        .find(|p| p.name.as_deref() == Some(named))
                        .map(|p| p.container_port)
                        .unwrap_or_else(|| panic!("targetPort {named} is no container port")),
                    None => port.port,
                };
                assert_ne!(
                    target, ADMIN_PORT,
                    "{}: kube-dns port {} reaches the admin listener",
                    v.dir, port.port
                );
            }
        }
    }
}

/// A real kube-apiserver (envtest) accepts every variant and kube-dns/service.yaml as they
/// render, with strict field validation (server-side apply, dry run: nothing is created). It has
/// no kubelet or controllers, so nothing runs; what it adds to the typed checks above is the
/// API server's own validation (names, label syntax, port ranges, selectors, the ClusterIP in
/// the service range); admission of pods (priority classes, the ServiceAccount) is not reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_api_server_accepts_every_variant() {
    let Some(env) = envtest::EnvTest::start("a_real_api_server_accepts_every_variant").await else {
        return;
    };
    let mut rendered: Vec<(String, String)> = Vec::new();
    for dir in VARIANTS.iter().map(|v| v.dir).chain(["kube-dns"]) {
        let text = if dir == "kube-dns" {
            std::fs::read_to_string(repo_dir("deploy/kube-dns/service.yaml")).unwrap()
        } else {
            let Ok(out) = std::process::Command::new("kubectl")
                .args(["kustomize"])
                .arg(repo_dir(&format!("deploy/{dir}")))
                .output()
            else {
                assert!(
                    std::env::var(REQUIRE_KUBECTL).is_err(),
                    "kubectl cannot run ({REQUIRE_KUBECTL} is set)"
                );
                return;
            };
            String::from_utf8(out.stdout).unwrap()
        };
        rendered.push((dir.to_string(), text));
    }
    for (dir, text) in rendered {
        let mut child = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(env.kubeconfig())
            .args([
                "apply",
                "--server-side",
                "--dry-run=server",
                "--validate=strict",
                "-f",
                "-",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "deploy/{dir}: the API server refused it:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let objects = text.matches("\nkind: ").count() + usize::from(text.starts_with("kind: "));
        assert_eq!(
            stdout.matches("(server dry run)").count(),
            objects,
            "deploy/{dir}: every object applied:\n{stdout}"
        );
    }
}

/// The variants, the Dockerfile and scripts/image.sh name the same registry and version.
#[test]
fn images_are_what_the_recipe_builds() {
    let script = std::fs::read_to_string(repo_dir("scripts/image.sh")).unwrap();
    assert!(
        script.contains(&format!("IMAGE_REGISTRY=${{IMAGE_REGISTRY:-{REGISTRY}}}")),
        "scripts/image.sh's default registry is not {REGISTRY}"
    );
    let dockerfile = std::fs::read_to_string(repo_dir("Dockerfile")).unwrap();
    assert!(dockerfile.contains(&format!("{REGISTRY}/switchboard:{} .", version())));
    assert!(dockerfile.contains("FROM debian:bookworm-slim AS slim"));
    for v in &VARIANTS {
        let text =
            std::fs::read_to_string(repo_dir(&format!("deploy/{}/kustomization.yaml", v.dir)))
                .unwrap();
        let k: Value = serde_yaml::from_str(&text).unwrap();
        let image = &k["images"][0];
        assert_eq!(image["name"], "switchboard", "{}", v.dir);
        assert_eq!(
            image["newName"],
            format!("{REGISTRY}/switchboard"),
            "{}",
            v.dir
        );
        let slim = if v.l4 { "" } else { "-slim" };
        assert_eq!(image["newTag"], format!("{}{slim}", version()), "{}", v.dir);
    }
}
