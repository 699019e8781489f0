use super::*;
use k8s_openapi::api::apps::v1::Deployment;

fn pod(deploy_yaml: &str) -> (PodSpec, Container) {
    let d: Deployment = serde_yaml::from_str(deploy_yaml).expect("Deployment");
    let pod = d.spec.and_then(|s| s.template.spec).expect("pod spec");
    let c = pod.containers[0].clone();
    (pod, c)
}

#[test]
fn shipped_deployment_reads_anchors_from_the_trust_anchor_configmap() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/deployment.yaml"
    ))
    .expect("manifests/deployment.yaml");
    let (pod, c) = pod(&text);
    assert_eq!(
        config_arg(&c),
        Some(PathBuf::from("/etc/isthmus/config.yaml"))
    );
    assert_eq!(
        mounted(&pod, &c, Path::new("/etc/isthmus/config.yaml")),
        Some(Source::ConfigMap {
            name: "isthmus-gateway".into(),
            key: "config.yaml".into()
        })
    );
    assert_eq!(
        mounted(&pod, &c, Path::new("/var/run/isthmus/tls/ca.crt")),
        Some(Source::ConfigMap {
            name: "isthmus-trust-anchors".into(),
            key: "ca.crt".into()
        })
    );
    // The key stays in the Secret, which the remote credentials cannot read.
    assert_eq!(
        mounted(&pod, &c, Path::new("/var/run/isthmus/tls/tls.key")),
        Some(Source::Secret {
            name: "isthmus-gateway-tls".into(),
            key: "tls.key".into()
        })
    );
    assert_eq!(mounted(&pod, &c, Path::new("/nowhere/ca.crt")), None);
}

#[test]
fn projected_items_and_sub_paths_are_followed() {
    let (pod, c) = pod(r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: g}
spec:
  selector: {matchLabels: {a: b}}
  template:
    spec:
      containers:
        - name: gateway
          args: ["run", "--config=/cfg/gw.yaml"]
          volumeMounts:
            - {name: cfg, mountPath: /cfg/gw.yaml, subPath: gateway.yaml}
            - {name: tls, mountPath: /tls}
      volumes:
        - name: cfg
          configMap: {name: gw-config}
        - name: tls
          projected:
            sources:
              - secret: {name: gw-tls, items: [{key: tls.crt, path: tls.crt}, {key: tls.key, path: tls.key}]}
              - configMap: {name: mesh-roots, items: [{key: roots.pem, path: ca.crt}]}
"#);
    assert_eq!(config_arg(&c), Some(PathBuf::from("/cfg/gw.yaml")));
    assert_eq!(
        mounted(&pod, &c, Path::new("/cfg/gw.yaml")),
        Some(Source::ConfigMap {
            name: "gw-config".into(),
            key: "gateway.yaml".into()
        })
    );
    assert_eq!(
        mounted(&pod, &c, Path::new("/tls/ca.crt")),
        Some(Source::ConfigMap {
            name: "mesh-roots".into(),
            key: "roots.pem".into()
        })
    );
    assert_eq!(
        mounted(&pod, &c, Path::new("/tls/tls.key")),
        Some(Source::Secret {
            name: "gw-tls".into(),
            key: "tls.key".into()
        })
    );
}
