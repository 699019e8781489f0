//! The checked-in CRD YAML is exactly what `isthmus crds` generates from the Rust types.

use isthmus::discovery::crd::Mapping;
use isthmus::mirror::link::Link;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Fails with the command that regenerates `crds/<file>` when it drifted from `crd`.
fn assert_checked_in(crd: &CustomResourceDefinition, file: &str, kind: &str) {
    let generated = serde_yaml::to_string(crd).expect("serialize CRD");
    let path = format!("{}/../crds/{file}", env!("CARGO_MANIFEST_DIR"));
    let checked_in = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let arg = kind.to_ascii_lowercase();
    assert!(
        checked_in == generated,
        "crds/{file} drifted from the {kind} type; regenerate it with\n    cargo run -p isthmus -- crds {arg} > crds/{file}"
    );
}

/// Group, scope, version, status subresource and the spec's property names.
fn assert_shape(crd: &CustomResourceDefinition, fields: &[&str]) -> serde_json::Value {
    assert_eq!(crd.spec.group, "isthmus.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(
        v.subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some(),
        "status subresource"
    );
    let schema = serde_json::to_value(&v.schema).expect("schema");
    let spec = schema["openAPIV3Schema"]["properties"]["spec"].clone();
    for field in fields {
        assert!(
            spec["properties"].get(field).is_some(),
            "spec.{field} missing from the CRD schema"
        );
    }
    spec
}

#[test]
fn checked_in_crd_matches_the_rust_types() {
    assert_checked_in(&Mapping::crd(), "mapping.yaml", "Mapping");
}

#[test]
fn checked_in_link_crd_matches_the_rust_types() {
    assert_checked_in(&Link::crd(), "link.yaml", "Link");
}

#[test]
fn crds_are_listed_in_the_kustomization() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/kustomization.yaml");
    let k: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).expect("crds/kustomization.yaml"))
            .expect("kustomization parses");
    let resources: Vec<&str> = k["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .filter_map(serde_yaml::Value::as_str)
        .collect();
    assert_eq!(resources, ["mapping.yaml", "link.yaml"]);
}

#[test]
fn crd_shape() {
    assert_shape(
        &Mapping::crd(),
        &[
            "hostname",
            "prefix",
            "prefix_exact",
            "service",
            "rewrite",
            "headers",
            "method",
            "timeout_ms",
            "connect_timeout_ms",
            "idle_timeout_ms",
            "weight",
            "retry_policy",
            "load_balancer",
            "add_request_headers",
            "remove_request_headers",
            "add_response_headers",
            "allowed_identities",
        ],
    );
}

#[test]
fn link_crd_shape() {
    let crd = Link::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("links.isthmus.dev"));
    assert_eq!(crd.spec.names.kind, "Link");
    assert_eq!(crd.spec.names.plural, "links");
    // Linkerd's Link (multicluster.linkerd.io/v1alpha3) field names.
    let spec = assert_shape(
        &crd,
        &[
            "targetClusterName",
            "targetClusterDomain",
            "clusterCredentialsSecret",
            "gatewayAddress",
            "gatewayPort",
            "gatewayIdentity",
            "probeSpec",
            "selector",
            "excludedLabels",
            "excludedAnnotations",
        ],
    );
    let probe = &spec["properties"]["probeSpec"]["properties"];
    for field in ["path", "port", "period", "timeout", "failureThreshold"] {
        assert!(
            probe.get(field).is_some(),
            "spec.probeSpec.{field} missing from the CRD schema"
        );
    }
    let required: Vec<&str> = spec["required"]
        .as_array()
        .expect("spec.required")
        .iter()
        .filter_map(serde_json::Value::as_str)
        .collect();
    for field in [
        "targetClusterName",
        "clusterCredentialsSecret",
        "gatewayAddress",
        "gatewayPort",
        "gatewayIdentity",
    ] {
        assert!(required.contains(&field), "spec.{field} is required");
    }
}
