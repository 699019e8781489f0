//! The table of resources the double serves; everything else is data-driven from it.

/// One served resource type.
#[derive(Debug)]
pub(crate) struct ResourceType {
    /// API group; empty for the core group (served under `/api`).
    pub(crate) group: &'static str,
    /// API version, e.g. `v1`.
    pub(crate) version: &'static str,
    /// Lowercase plural used in paths, e.g. `services`.
    pub(crate) plural: &'static str,
    /// Object kind, e.g. `Service`.
    pub(crate) kind: &'static str,
    /// List kind, e.g. `ServiceList`.
    pub(crate) list_kind: &'static str,
    /// A custom resource: its LIST items carry `apiVersion`/`kind` (built-ins' don't) and
    /// strategic merge patch is refused.
    pub(crate) custom: bool,
    /// Whether the type has a `/status` subresource (the main endpoint then ignores `.status`).
    pub(crate) status_subresource: bool,
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
        kind: "Service",
        list_kind: "ServiceList",
        custom: false,
        status_subresource: true,
    },
    ResourceType {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        list_kind: "EndpointSliceList",
        custom: false,
        status_subresource: false,
    },
    ResourceType {
        group: "isthmus.dev",
        version: "v1alpha1",
        plural: "mappings",
        kind: "Mapping",
        list_kind: "MappingList",
        custom: true,
        status_subresource: true,
    },
];

/// The resource id for a group/version/plural triple.
pub(crate) fn find(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource id for a plural or kind, case-insensitively (`"mappings"`, `"Mapping"`).
pub(crate) fn find_by_name(plural_or_kind: &str) -> Option<usize> {
    RESOURCES.iter().position(|r| {
        r.plural.eq_ignore_ascii_case(plural_or_kind) || r.kind.eq_ignore_ascii_case(plural_or_kind)
    })
}
