//! The table of resources the double serves; everything else (paths, discovery
//! documents, list kinds, scope) is data-driven from it.
//!
//! A type served at several versions (`split.smi-spec.io` `trafficsplits`) has one
//! entry, and so its own storage, per version: an object created at `v1alpha2` is
//! not visible at `v1alpha4`. A real API server converts between versions of one
//! storage; the double does not (tests pick the version their client speaks).

/// One served resource type.
#[derive(Debug)]
pub(crate) struct ResourceType {
    /// API group; empty for the core group (served under `/api`).
    pub(crate) group: &'static str,
    /// API version, e.g. `v1`.
    pub(crate) version: &'static str,
    /// Lowercase plural used in paths, e.g. `services`.
    pub(crate) plural: &'static str,
    /// Lowercase singular, e.g. `service` (discovery's `singularName`).
    pub(crate) singular: &'static str,
    /// Object kind, e.g. `Service`.
    pub(crate) kind: &'static str,
    /// List kind, e.g. `ServiceList`.
    pub(crate) list_kind: &'static str,
    /// Discovery's `shortNames`, e.g. `svc`.
    pub(crate) short_names: &'static [&'static str],
    /// A custom resource: its LIST items carry `apiVersion`/`kind` (built-ins' don't) and
    /// strategic merge patch is refused.
    pub(crate) custom: bool,
    /// Whether the type has a `/status` subresource (the main endpoint then ignores `.status`).
    pub(crate) status_subresource: bool,
    /// Cluster-scoped (`Namespace`, `GatewayClass`): served without a namespace in the
    /// path and stored under the empty namespace, with no `metadata.namespace`.
    pub(crate) cluster_scoped: bool,
}

impl ResourceType {
    /// `v1` for the core group, `group/version` otherwise.
    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` or `plural.group`, as API-server messages name resources.
    pub(crate) fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// Every resource type served, indexed by position (a "resource id").
pub(crate) const RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        list_kind: "ServiceList",
        short_names: &["svc"],
        custom: false,
        status_subresource: true,
        cluster_scoped: false,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        list_kind: "SecretList",
        short_names: &[],
        custom: false,
        status_subresource: false,
        cluster_scoped: false,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        list_kind: "NamespaceList",
        short_names: &["ns"],
        custom: false,
        status_subresource: true,
        cluster_scoped: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        list_kind: "ServiceAccountList",
        short_names: &["sa"],
        custom: false,
        status_subresource: false,
        cluster_scoped: false,
    },
    ResourceType {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        list_kind: "EndpointSliceList",
        short_names: &[],
        custom: false,
        status_subresource: false,
        cluster_scoped: false,
    },
    ResourceType {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        list_kind: "LeaseList",
        short_names: &[],
        custom: false,
        status_subresource: false,
        cluster_scoped: false,
    },
    ResourceType {
        group: "isthmus.dev",
        version: "v1alpha1",
        plural: "mappings",
        singular: "mapping",
        kind: "Mapping",
        list_kind: "MappingList",
        short_names: &[],
        custom: true,
        status_subresource: true,
        cluster_scoped: false,
    },
    ResourceType {
        group: "isthmus.dev",
        version: "v1alpha1",
        plural: "links",
        singular: "link",
        kind: "Link",
        list_kind: "LinkList",
        short_names: &[],
        custom: true,
        status_subresource: true,
        cluster_scoped: false,
    },
    ResourceType {
        group: "split.smi-spec.io",
        version: "v1alpha1",
        plural: "trafficsplits",
        singular: "trafficsplit",
        kind: "TrafficSplit",
        list_kind: "TrafficSplitList",
        short_names: &["ts"],
        custom: true,
        status_subresource: false,
        cluster_scoped: false,
    },
    ResourceType {
        group: "split.smi-spec.io",
        version: "v1alpha2",
        plural: "trafficsplits",
        singular: "trafficsplit",
        kind: "TrafficSplit",
        list_kind: "TrafficSplitList",
        short_names: &["ts"],
        custom: true,
        status_subresource: false,
        cluster_scoped: false,
    },
    ResourceType {
        group: "split.smi-spec.io",
        version: "v1alpha3",
        plural: "trafficsplits",
        singular: "trafficsplit",
        kind: "TrafficSplit",
        list_kind: "TrafficSplitList",
        short_names: &["ts"],
        custom: true,
        status_subresource: false,
        cluster_scoped: false,
    },
    ResourceType {
        group: "split.smi-spec.io",
        version: "v1alpha4",
        plural: "trafficsplits",
        singular: "trafficsplit",
        kind: "TrafficSplit",
        list_kind: "TrafficSplitList",
        short_names: &["ts"],
        custom: true,
        status_subresource: false,
        cluster_scoped: false,
    },
    ResourceType {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "gatewayclasses",
        singular: "gatewayclass",
        kind: "GatewayClass",
        list_kind: "GatewayClassList",
        short_names: &["gc"],
        custom: true,
        status_subresource: true,
        cluster_scoped: true,
    },
    ResourceType {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "gateways",
        singular: "gateway",
        kind: "Gateway",
        list_kind: "GatewayList",
        short_names: &["gtw"],
        custom: true,
        status_subresource: true,
        cluster_scoped: false,
    },
    ResourceType {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "httproutes",
        singular: "httproute",
        kind: "HTTPRoute",
        list_kind: "HTTPRouteList",
        short_names: &[],
        custom: true,
        status_subresource: true,
        cluster_scoped: false,
    },
    ResourceType {
        group: "gateway.networking.k8s.io",
        version: "v1beta1",
        plural: "referencegrants",
        singular: "referencegrant",
        kind: "ReferenceGrant",
        list_kind: "ReferenceGrantList",
        short_names: &["refgrant"],
        custom: true,
        status_subresource: false,
        cluster_scoped: false,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        list_kind: "ConfigMapList",
        short_names: &["cm"],
        custom: false,
        status_subresource: false,
        cluster_scoped: false,
    },
    ResourceType {
        group: "apps",
        version: "v1",
        plural: "deployments",
        singular: "deployment",
        kind: "Deployment",
        list_kind: "DeploymentList",
        short_names: &["deploy"],
        custom: false,
        status_subresource: true,
        cluster_scoped: false,
    },
];

/// The resource id for a group/version/plural triple.
pub(crate) fn find(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource id for a plural or kind, case-insensitively (`"mappings"`, `"Mapping"`;
/// the first version listed when there are several), or for `apiVersion/plural`
/// (`"split.smi-spec.io/v1alpha3/trafficsplits"`, `"v1/secrets"`).
pub(crate) fn find_by_name(name: &str) -> Option<usize> {
    if let Some((api_version, plural)) = name.rsplit_once('/') {
        return RESOURCES
            .iter()
            .position(|r| r.api_version() == api_version && r.plural.eq_ignore_ascii_case(plural));
    }
    RESOURCES
        .iter()
        .position(|r| r.plural.eq_ignore_ascii_case(name) || r.kind.eq_ignore_ascii_case(name))
}

/// Kubernetes version priority: GA before beta before alpha, higher numbers first
/// (`v2` > `v1` > `v1beta2` > `v1beta1` > `v1alpha1`); a larger key sorts first.
pub(crate) fn version_priority(version: &str) -> (u8, u32, u32) {
    let Some(rest) = version.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let Ok(major) = rest[..digits].parse::<u32>() else {
        return (0, 0, 0);
    };
    let (stage, minor) = match &rest[digits..] {
        "" => (3, 0),
        tail => match (tail.strip_prefix("beta"), tail.strip_prefix("alpha")) {
            (Some(n), _) => (2, n.parse().unwrap_or(0)),
            (_, Some(n)) => (1, n.parse().unwrap_or(0)),
            _ => return (0, 0, 0),
        },
    };
    (stage, major, minor)
}
