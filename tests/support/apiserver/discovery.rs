//! Discovery documents, generated from the resource table: `/api` (`APIVersions`),
//! `/api/v1` and `/apis/{group}/{version}` (`APIResourceList`), `/apis`
//! (`APIGroupList`) and `/apis/{group}` (`APIGroup`).
//!
//! Only the unaggregated (legacy) form is served. A client asking for aggregated
//! discovery (`Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`)
//! gets plain `application/json`, which client-go (kubectl) and kube-rs take as
//! "not aggregated" and fall back to fetching each group version, as they do
//! against an API server older than 1.26.

use serde_json::{json, Value};

use super::resources::{version_priority, ResourceType, RESOURCES};

/// Verbs every served resource supports (`deletecollection` is not served).
const VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// Verbs of a `/status` subresource.
const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

/// The discovery document at `path`, if it is a discovery path. `host` is the
/// request's `Host`, echoed in `/api`'s `serverAddressByClientCIDRs`.
/// `served(id)` says whether a resource id is served (see `ApiServer::set_served`):
/// a hidden resource is left out of every document, and a group or group version
/// with nothing served is not found, as when a CRD is not installed.
pub(crate) fn document(path: &str, host: &str, served: &dyn Fn(usize) -> bool) -> Option<Value> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let served: Vec<&ResourceType> = RESOURCES
        .iter()
        .enumerate()
        .filter(|(i, _)| served(*i))
        .map(|(_, r)| r)
        .collect();
    match segments.as_slice() {
        ["api"] => Some(api_versions(&served, host)),
        ["api", version] => resource_list(&served, "", version),
        ["apis"] => Some(json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": groups(&served).iter().map(|g| api_group(&served, g)).collect::<Vec<_>>(),
        })),
        ["apis", group] => groups(&served).into_iter().find(|g| g == group).map(|g| {
            let mut doc = api_group(&served, g);
            doc["kind"] = "APIGroup".into();
            doc["apiVersion"] = "v1".into();
            doc
        }),
        ["apis", group, version] if !group.is_empty() => resource_list(&served, group, version),
        _ => None,
    }
}

fn api_versions(served: &[&ResourceType], host: &str) -> Value {
    let mut versions: Vec<&str> = Vec::new();
    for rt in served.iter().filter(|r| r.group.is_empty()) {
        if !versions.contains(&rt.version) {
            versions.push(rt.version);
        }
    }
    json!({
        "kind": "APIVersions",
        "versions": versions,
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": host }],
    })
}

/// The named groups, in table order.
fn groups(served: &[&'static ResourceType]) -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for rt in served.iter().filter(|r| !r.group.is_empty()) {
        if !groups.contains(&rt.group) {
            groups.push(rt.group);
        }
    }
    groups
}

/// One group's `APIGroup` body (without `kind`/`apiVersion`, as inside a list):
/// versions by Kubernetes version priority, the first preferred.
fn api_group(served: &[&ResourceType], group: &str) -> Value {
    let mut versions: Vec<&str> = Vec::new();
    for rt in served.iter().filter(|r| r.group == group) {
        if !versions.contains(&rt.version) {
            versions.push(rt.version);
        }
    }
    versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
    let entry = |v: &str| json!({ "groupVersion": format!("{group}/{v}"), "version": v });
    json!({
        "name": group,
        "versions": versions.iter().map(|v| entry(v)).collect::<Vec<_>>(),
        "preferredVersion": versions.first().map(|v| entry(v)),
    })
}

/// The `APIResourceList` of one group version, or `None` when nothing is served there.
fn resource_list(served: &[&ResourceType], group: &str, version: &str) -> Option<Value> {
    let served: Vec<&ResourceType> = served
        .iter()
        .copied()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    let first = served.first()?;
    let mut resources = Vec::new();
    for rt in &served {
        let mut entry = json!({
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": !rt.cluster_scoped,
            "kind": rt.kind,
            "verbs": VERBS,
        });
        if !rt.short_names.is_empty() {
            entry["shortNames"] = rt.short_names.into();
        }
        resources.push(entry);
        if rt.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", rt.plural),
                "singularName": "",
                "namespaced": !rt.cluster_scoped,
                "kind": rt.kind,
                "verbs": STATUS_VERBS,
            }));
        }
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": first.api_version(),
        "resources": resources,
    }))
}
