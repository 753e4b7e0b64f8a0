//! The API server a Gateway API end-to-end test runs against: the project's test API server,
//! or a real kube-apiserver (`KUBEBUILDER_ASSETS`, see `../shared/envtest/`) with the vendored
//! Gateway API CRDs and deploy/base/rbac.yaml applied, switchboard running as its
//! ServiceAccount. Shared by `gateway_status.rs` and `gateway_listeners.rs`.
#![allow(dead_code)] // each test target uses a part

use std::path::PathBuf;
use std::time::Duration;

use apiserver::{ApiServer, Options};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};

use crate::envtest;

pub const CRDS: &str = include_str!("../gateway-api/standard-crds-v1.3.0.yaml");
pub const WAIT: Duration = Duration::from_secs(30);

/// The API server under test: the project's own, or a real kube-apiserver.
pub enum Cluster {
    Test(ApiServer, tempfile::TempDir),
    /// The kube-apiserver, an admin client for the test, and a directory holding the
    /// kubeconfig switchboard runs with: as its ServiceAccount, so with deploy/base/rbac.yaml's
    /// permissions only.
    Real(
        #[allow(dead_code)] // held for its Drop, which stops the API server
        Box<envtest::EnvTest>,
        kube::Client,
        tempfile::TempDir,
    ),
}

pub fn resource(api_version: &str, kind: &str) -> (ApiResource, bool) {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let (plural, namespaced) = match kind {
        "Namespace" => ("namespaces", false),
        "GatewayClass" => ("gatewayclasses", false),
        "CustomResourceDefinition" => ("customresourcedefinitions", false),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "HTTPRoute" => ("httproutes", true),
        "ReferenceGrant" => ("referencegrants", true),
        "Ingress" => ("ingresses", true),
        other => (
            Box::leak(format!("{}s", other.to_ascii_lowercase()).into_boxed_str()) as &str,
            true,
        ),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    (ApiResource::from_gvk_with_plural(&gvk, plural), namespaced)
}

impl Cluster {
    pub fn kubeconfig(&self) -> PathBuf {
        match self {
            Cluster::Test(_, dir) => dir.path().join("kubeconfig"),
            Cluster::Real(_, _, dir) => dir.path().join("kubeconfig"),
        }
    }

    pub fn api(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Api<DynamicObject> {
        let Cluster::Real(_, client, _) = self else {
            unreachable!()
        };
        let (ar, namespaced) = resource(api_version, kind);
        match (namespaced, ns) {
            (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
            _ => Api::all_with(client.clone(), &ar),
        }
    }

    pub async fn apply(&self, yaml: &str) {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if v.is_null() {
                continue;
            }
            match self {
                Cluster::Test(api, _) => {
                    if v["kind"] != "CustomResourceDefinition" {
                        api.apply(v);
                    }
                }
                Cluster::Real(..) => {
                    let (av, kind) = (
                        v["apiVersion"].as_str().unwrap(),
                        v["kind"].as_str().unwrap(),
                    );
                    let name = v["metadata"]["name"].as_str().unwrap().to_string();
                    let api = self.api(av, kind, v["metadata"]["namespace"].as_str());
                    let pp = PatchParams::apply("gateway-status-test").force();
                    eventually("apply", || async {
                        api.patch(&name, &pp, &Patch::Apply(&v))
                            .await
                            .map(|_| ())
                            .map_err(|e| format!("{kind} {name}: {e}"))
                    })
                    .await;
                }
            }
        }
    }

    pub async fn delete(&self, api_version: &str, kind: &str, ns: &str, name: &str) {
        match self {
            Cluster::Test(api, _) => {
                api.delete(api_version, kind, Some(ns), name);
            }
            Cluster::Real(..) => {
                self.api(api_version, kind, Some(ns))
                    .delete(name, &Default::default())
                    .await
                    .unwrap();
            }
        }
    }

    pub async fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        match self {
            Cluster::Test(api, _) => api.get(api_version, kind, Some(ns), name),
            Cluster::Real(..) => self
                .api(api_version, kind, Some(ns))
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .map(|o| serde_json::to_value(o).unwrap()),
        }
    }

    /// Writes a status as another controller would (a merge patch of the status).
    pub async fn patch_status(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
        status: Value,
    ) {
        match self {
            Cluster::Test(api, _) => {
                let mut obj = api.get(api_version, kind, Some(ns), name).unwrap();
                obj["status"] = status;
                api.apply(obj);
            }
            Cluster::Real(..) => {
                self.api(api_version, kind, Some(ns))
                    .patch_status(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": status})),
                    )
                    .await
                    .unwrap();
            }
        }
    }
}

/// Retries `check` until it succeeds or [`WAIT`] passes (then panics with its last error).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// `(status, reason)` of the condition of `type_` in a conditions array.
pub fn condition(conds: &Value, type_: &str) -> Option<(String, String)> {
    conds
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        })
}

pub fn expect(conds: &Value, type_: &str, status: &str, reason: &str) -> Result<(), String> {
    match condition(conds, type_) {
        Some((s, r)) if s == status && r == reason => Ok(()),
        other => Err(format!(
            "{type_}: want {status}/{reason}, have {other:?} in {conds}"
        )),
    }
}

pub const GW: &str = "gateway.networking.k8s.io/v1";

impl Cluster {
    /// The project's test API server.
    pub async fn test() -> Cluster {
        let api = ApiServer::start(Options::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        api.write_kubeconfig(&dir.path().join("kubeconfig"))
            .unwrap();
        Cluster::Test(api, dir)
    }

    /// A real kube-apiserver with the CRDs and RBAC in place, or `None` (with a message) where
    /// `KUBEBUILDER_ASSETS` is unset.
    pub async fn real(test: &str) -> Option<Cluster> {
        let env = envtest::EnvTest::start(test).await?;
        let client = env.client().await;
        // switchboard runs as its ServiceAccount (the admin impersonates it), so everything it
        // does must be allowed by deploy/base/rbac.yaml.
        let dir = tempfile::tempdir().unwrap();
        let mut kc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(env.kubeconfig()).unwrap()).unwrap();
        for user in kc["users"].as_sequence_mut().unwrap() {
            user["user"]["as"] = "system:serviceaccount:kube-system:switchboard".into();
        }
        std::fs::write(
            dir.path().join("kubeconfig"),
            serde_yaml::to_string(&kc).unwrap(),
        )
        .unwrap();
        let c = Cluster::Real(Box::new(env), client.clone(), dir);
        c.apply(CRDS).await;
        c.apply(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/deploy/base/rbac.yaml"
            ))
            .unwrap(),
        )
        .await;
        // The CRDs are served once their kinds can be listed.
        for (av, kind) in [
            (GW, "GatewayClass"),
            (GW, "Gateway"),
            (GW, "HTTPRoute"),
            ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
        ] {
            let api = c.api(av, kind, None);
            eventually(&format!("{kind} served"), || async {
                api.list(&Default::default())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .await;
        }
        Some(c)
    }
}
