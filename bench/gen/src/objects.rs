//! The synthetic cluster's objects as the Kubernetes API holds them: `v1 Service` and
//! `discovery.k8s.io/v1 EndpointSlice` JSON values, written to manifest files (YAML) or applied to
//! the test API server.

use serde_json::{json, Value};
use tables::model::{EndpointSlice, PortRef, Service};

/// `v1 Service` for a slim synthetic service.
pub fn service(svc: &Service) -> Value {
    let ports: Vec<Value> = svc
        .ports
        .iter()
        .map(|p| {
            let mut v = json!({ "protocol": p.protocol.as_str(), "port": p.port });
            if !p.name.is_empty() {
                v["name"] = json!(p.name);
            }
            v["targetPort"] = match &p.target_port {
                PortRef::Number(n) => json!(n),
                PortRef::Name(s) => json!(s),
            };
            v
        })
        .collect();
    let ips: Vec<String> = if svc.headless {
        vec!["None".into()]
    } else {
        svc.cluster_ips.iter().map(|ip| ip.to_string()).collect()
    };
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": svc.name,
            "namespace": svc.namespace,
            "labels": { "app": svc.name },
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ips[0],
            "clusterIPs": ips,
            "selector": { "app": svc.name },
            "ports": ports,
        },
    })
}

/// `discovery.k8s.io/v1 EndpointSlice` for a slim synthetic slice.
pub fn endpoint_slice(slice: &EndpointSlice, headless: bool) -> Value {
    let ports: Vec<Value> = slice
        .ports
        .iter()
        .map(|p| {
            let mut v = json!({ "protocol": p.protocol.as_str(), "port": p.port });
            if !p.name.is_empty() {
                v["name"] = json!(p.name);
            }
            v
        })
        .collect();
    let endpoints: Vec<Value> = slice
        .endpoints
        .iter()
        .map(|e| {
            let mut v = json!({
                "addresses": e.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "conditions": {
                    "ready": e.conditions.ready.unwrap_or(true),
                    "serving": e.conditions.serving.unwrap_or(true),
                    "terminating": e.conditions.terminating.unwrap_or(false),
                },
            });
            if let Some(h) = &e.hostname {
                v["hostname"] = json!(&**h);
            }
            if let Some(n) = &e.info.node_name {
                v["nodeName"] = json!(&**n);
            }
            if let Some(z) = &e.info.zone {
                v["zone"] = json!(&**z);
            }
            // The tables keep only the pod's name: synth's endpoints are Pods of the slice's
            // namespace.
            if let Some(name) = e.target() {
                v["targetRef"] =
                    json!({ "kind": "Pod", "namespace": &slice.namespace, "name": name });
            }
            v
        })
        .collect();
    let service = slice.service_name.clone().unwrap_or_default();
    let mut labels = json!({
        "kubernetes.io/service-name": service,
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
    });
    if headless {
        labels["service.kubernetes.io/headless"] = json!("");
    }
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": { "name": slice.name, "namespace": slice.namespace, "labels": labels },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    })
}

/// One manifest file: the Service and its EndpointSlice as two YAML documents.
pub fn manifest_file(svc: &Service, slice: &EndpointSlice) -> anyhow::Result<String> {
    let mut out = serde_yaml::to_string(&service(svc))?;
    out.push_str("---\n");
    out.push_str(&serde_yaml::to_string(&endpoint_slice(
        slice,
        svc.headless,
    ))?);
    Ok(out)
}

/// The file name of service `svc`'s manifest (`<namespace>_<name>.yaml`).
pub fn file_name(svc: &Service) -> String {
    format!("{}_{}.yaml", svc.namespace, svc.name)
}

/// How the synthetic cluster is laid out in manifest files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// One file per service: its Service and EndpointSlice (`<namespace>_<name>.yaml`).
    Service,
    /// One file per namespace, every Service and EndpointSlice of it as YAML documents in
    /// service order (`<namespace>.yaml`), the shape `kubectl get -o yaml` or kustomize gives.
    Namespace,
}

/// A synthetic cluster's manifest files: each service's documents rendered once, so rewriting
/// one file after a change re-renders only the changed service.
pub struct ManifestFiles {
    pub layout: Layout,
    /// Service `i`'s documents (Service, `---`, EndpointSlice).
    texts: Vec<String>,
    /// The services of each file, by file name.
    files: std::collections::BTreeMap<String, Vec<usize>>,
}

impl ManifestFiles {
    pub fn new(
        layout: Layout,
        services: &[Service],
        slices: &[EndpointSlice],
    ) -> anyhow::Result<Self> {
        let mut texts = Vec::with_capacity(services.len());
        let mut files: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
        for (i, (svc, slice)) in services.iter().zip(slices).enumerate() {
            texts.push(manifest_file(svc, slice)?);
            let name = match layout {
                Layout::Service => file_name(svc),
                Layout::Namespace => format!("{}.yaml", svc.namespace),
            };
            files.entry(name).or_default().push(i);
        }
        Ok(ManifestFiles {
            layout,
            texts,
            files,
        })
    }

    /// The file that holds service `i`.
    pub fn file_of(&self, svc: &Service) -> String {
        match self.layout {
            Layout::Service => file_name(svc),
            Layout::Namespace => format!("{}.yaml", svc.namespace),
        }
    }

    /// Service `i` changed: re-renders its documents.
    pub fn update(&mut self, i: usize, svc: &Service, slice: &EndpointSlice) -> anyhow::Result<()> {
        self.texts[i] = manifest_file(svc, slice)?;
        Ok(())
    }

    /// The text of file `name`.
    pub fn text(&self, name: &str) -> String {
        let members = self.files.get(name).map(Vec::as_slice).unwrap_or_default();
        let mut out = String::new();
        for (k, &i) in members.iter().enumerate() {
            if k > 0 {
                out.push_str("---\n");
            }
            out.push_str(&self.texts[i]);
        }
        out
    }

    /// Writes every file into `dir`.
    pub fn write_all(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        for name in self.files.keys() {
            std::fs::write(dir.join(name), self.text(name))?;
        }
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.files.len()
    }
}

/// The test API server (`tests/apiserver`) on a runtime of its own, holding every Service and
/// EndpointSlice of `cluster`.
pub fn serve(
    cluster: &tables::synth::SynthCluster,
    streaming_lists: apiserver::StreamingLists,
) -> anyhow::Result<(tokio::runtime::Runtime, apiserver::ApiServer)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let server = rt.block_on(apiserver::ApiServer::start(apiserver::Options {
        gateway_crds: false,
        streaming_lists,
        ..Default::default()
    }))?;
    for (svc, slice) in cluster.services.iter().zip(&cluster.slices) {
        server.apply(service(svc));
        server.apply(endpoint_slice(slice, svc.headless));
    }
    Ok((rt, server))
}
