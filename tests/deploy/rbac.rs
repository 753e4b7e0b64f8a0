//! The RBAC we ship: reads everything routed, writes only status and its own Lease.

use super::*;

/// `group/resource` of every (group, resource) pair a rule names.
fn rule_resources(rule: &PolicyRule) -> Vec<String> {
    let mut out = vec![];
    for group in rule.api_groups.iter().flatten() {
        for resource in rule.resources.iter().flatten() {
            out.push(format!("{group}/{resource}"));
        }
    }
    out
}

/// "Reads everything it routes, writes only status and its own Lease": the ClusterRoles read
/// exactly the kinds the controller and the status writer watch and write only the status
/// subresources of the four kinds whose status is written; the one Role, in kube-system, may
/// create a Lease and read and renew only the Lease that elects the status writer. Every role
/// is bound to switchboard's ServiceAccount.
#[test]
fn roles_read_what_is_routed_and_write_only_status_and_the_lease() {
    let text = std::fs::read_to_string(repo_dir("deploy/base/rbac.yaml")).unwrap();
    let r = typed(parse_documents("deploy/base/rbac.yaml", &text));
    let mut reads = BTreeSet::new();
    let mut writes = BTreeSet::new();
    for role in &r.cluster_roles {
        for rule in role.rules.iter().flatten() {
            assert!(rule.non_resource_urls.is_none(), "{rule:?}");
            // Only the GatewayClass CRD (its bundle version) is read by name.
            if let Some(names) = &rule.resource_names {
                assert_eq!(
                    rule_resources(rule),
                    vec!["apiextensions.k8s.io/customresourcedefinitions".to_string()],
                    "{rule:?}"
                );
                assert_eq!(
                    names,
                    &vec!["gatewayclasses.gateway.networking.k8s.io".to_string()]
                );
                assert_eq!(rule.verbs, vec!["get".to_string()]);
                continue;
            }
            let read = rule
                .verbs
                .iter()
                .all(|v| ["get", "list", "watch"].contains(&v.as_str()));
            let write = rule
                .verbs
                .iter()
                .all(|v| ["update", "patch"].contains(&v.as_str()));
            assert!(
                read || write,
                "ClusterRole {} mixes or grants other verbs: {rule:?}",
                name(&role.metadata)
            );
            for res in rule_resources(rule) {
                if read {
                    assert!(!res.contains('/') || res.matches('/').count() == 1, "{res}");
                    reads.insert(res);
                } else {
                    assert!(
                        res.ends_with("/status"),
                        "ClusterRole {} writes {res}, not a status subresource",
                        name(&role.metadata)
                    );
                    writes.insert(res);
                }
            }
        }
    }
    let set = |v: &[&str]| {
        v.iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<String>>()
    };
    assert_eq!(
        reads,
        set(&[
            "/services",
            "/secrets",
            "/nodes",
            "/namespaces",
            "discovery.k8s.io/endpointslices",
            "networking.k8s.io/ingresses",
            "gateway.networking.k8s.io/gatewayclasses",
            "gateway.networking.k8s.io/gateways",
            "gateway.networking.k8s.io/httproutes",
            "gateway.networking.k8s.io/referencegrants",
        ])
    );
    assert_eq!(
        writes,
        set(&[
            "gateway.networking.k8s.io/gatewayclasses/status",
            "gateway.networking.k8s.io/gateways/status",
            "gateway.networking.k8s.io/httproutes/status",
            "networking.k8s.io/ingresses/status",
        ])
    );

    // The Lease: its name is the one the binary uses.
    let lease_name = std::fs::read_to_string(repo_dir("src/status.rs"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("pub const LEASE_NAME: &str = \""))
        .and_then(|l| l.strip_suffix("\";"))
        .expect("src/status.rs names LEASE_NAME")
        .to_string();
    let role = only(&r.roles, "Role");
    assert_eq!(namespace(&role.metadata), "kube-system");
    for rule in role.rules.iter().flatten() {
        assert_eq!(
            rule_resources(rule),
            vec!["coordination.k8s.io/leases".to_string()],
            "{rule:?}"
        );
        let names = rule.resource_names.clone().unwrap_or_default();
        for verb in &rule.verbs {
            match verb.as_str() {
                // The name of a created object is in its body: create cannot be limited to it.
                "create" => {}
                "get" | "update" => assert_eq!(names, vec![lease_name.clone()], "{rule:?}"),
                other => panic!("the Role grants {other:?} on leases: {rule:?}"),
            }
        }
    }

    let account = only(&r.service_accounts, "ServiceAccount");
    let bound = |subjects: Option<&Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.into_iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == name(&account.metadata)
                && s.namespace.as_deref() == account.metadata.namespace.as_deref()
        })
    };
    for role in &r.cluster_roles {
        let role_name = name(&role.metadata);
        assert!(
            r.cluster_role_bindings
                .iter()
                .any(|b| b.role_ref.kind == "ClusterRole"
                    && b.role_ref.name == role_name
                    && bound(b.subjects.as_ref())),
            "ClusterRole {role_name} is not bound to the ServiceAccount"
        );
    }
    let role_binding = only(&r.role_bindings, "RoleBinding");
    assert_eq!(role_binding.role_ref.kind, "Role");
    assert_eq!(role_binding.role_ref.name, name(&role.metadata));
    assert_eq!(namespace(&role_binding.metadata), "kube-system");
    assert!(bound(role_binding.subjects.as_ref()));
}
