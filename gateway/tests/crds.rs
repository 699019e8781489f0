//! The checked-in CRD YAML is exactly what `isthmus crds` generates from the Rust types.

use isthmus::discovery::crd::Mapping;
use kube::CustomResourceExt;

#[test]
fn checked_in_crd_matches_the_rust_types() {
    let generated = serde_yaml::to_string(&Mapping::crd()).expect("serialize CRD");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/mapping.yaml");
    let checked_in = std::fs::read_to_string(path).expect("crds/mapping.yaml");
    assert!(
        checked_in == generated,
        "crds/mapping.yaml drifted from the Mapping type; regenerate it with\n    cargo run -- crds > crds/mapping.yaml"
    );
}

#[test]
fn crd_shape() {
    let crd = Mapping::crd();
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
    let props = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
    for field in [
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
    ] {
        assert!(
            props.get(field).is_some(),
            "spec.{field} missing from the CRD schema"
        );
    }
}
