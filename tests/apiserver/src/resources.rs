//! The table of resource types the server knows how to serve.

/// One servable resource type (a Kubernetes "kind" with its REST collection).
#[derive(Debug)]
pub(crate) struct ResourceType {
    /// API group; empty for the core ("legacy") group served under `/api`.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// `kind` of a single object.
    pub kind: &'static str,
    /// Lower-case plural used in URL paths.
    pub plural: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether the type is a CustomResourceDefinition (only present when the
    /// Gateway API CRDs are switched on). CRD lists keep `apiVersion`/`kind`
    /// on their items, built-in lists do not, exactly like a real API server.
    pub crd: bool,
}

/// The group of the Gateway API CRDs.
pub(crate) const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Every resource type served. Indexes into this table identify a type.
pub(crate) const RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        namespaced: true,
        crd: false,
    },
    ResourceType {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        namespaced: true,
        crd: false,
    },
    ResourceType {
        group: "networking.k8s.io",
        version: "v1",
        kind: "Ingress",
        plural: "ingresses",
        namespaced: true,
        crd: false,
    },
    ResourceType {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        namespaced: true,
        crd: false,
    },
    ResourceType {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        namespaced: false,
        crd: false,
    },
    ResourceType {
        group: GATEWAY_GROUP,
        version: "v1",
        kind: "HTTPRoute",
        plural: "httproutes",
        namespaced: true,
        crd: true,
    },
    ResourceType {
        group: GATEWAY_GROUP,
        version: "v1",
        kind: "Gateway",
        plural: "gateways",
        namespaced: true,
        crd: true,
    },
    ResourceType {
        group: GATEWAY_GROUP,
        version: "v1",
        kind: "GatewayClass",
        plural: "gatewayclasses",
        namespaced: false,
        crd: true,
    },
    ResourceType {
        group: GATEWAY_GROUP,
        version: "v1beta1",
        kind: "ReferenceGrant",
        plural: "referencegrants",
        namespaced: true,
        crd: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
        crd: false,
    },
    ResourceType {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        namespaced: true,
        crd: false,
    },
];

impl ResourceType {
    /// The `apiVersion` string: `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The `kind` of the list type, e.g. `ServiceList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

/// Finds a resource type by `apiVersion` and `kind`.
pub(crate) fn by_kind(api_version: &str, kind: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.kind == kind && r.api_version() == api_version)
}

/// Finds a resource type by group, version and URL plural.
pub(crate) fn by_plural(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}
