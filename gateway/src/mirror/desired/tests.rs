use super::*;
use crate::mirror::link::{LinkSettings, LinkSpec};

fn link() -> LinkSettings {
    LinkSettings::from_spec(&LinkSpec {
        target_cluster_name: "east".into(),
        cluster_credentials_secret: "creds".into(),
        gateway_address: "192.0.2.10".into(),
        gateway_port: "4143".into(),
        gateway_identity: "gw.east".into(),
        excluded_labels: vec!["team.example/*".into()],
        ..LinkSpec::default()
    })
    .unwrap()
}

fn remote() -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "podinfo", "namespace": "test",
            "labels": {"app": "podinfo", "mirror.linkerd.io/exported": "true", "team.example/owner": "x"},
            "annotations": {"config.linkerd.io/opaque-ports": "9999",
                "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.1", "selector": {"app": "podinfo"},
            "ports": [{"name": "http", "port": 9898, "targetPort": 9898, "nodePort": 31000},
                      {"name": "grpc", "port": 9999, "appProtocol": "kubernetes.io/h2c"}]}
    }))
    .unwrap()
}

fn gw(alive: bool) -> GatewayView {
    GatewayView {
        addresses: vec![
            "192.0.2.10".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ],
        alive,
    }
}

#[test]
fn mirror_objects_follow_design() {
    let m = mirror(&link(), "isthmus/east", &remote(), &gw(true), true).unwrap();
    let svc = &m.service;
    assert_eq!(svc.metadata.name.as_deref(), Some("podinfo-east"));
    assert_eq!(svc.metadata.namespace.as_deref(), Some("test"));
    let labels = svc.metadata.labels.clone().unwrap();
    assert_eq!(labels.get("app").map(String::as_str), Some("podinfo"));
    assert_eq!(labels.get(LABEL_MIRRORED).map(String::as_str), Some("true"));
    assert_eq!(labels.get(LABEL_CLUSTER).map(String::as_str), Some("east"));
    assert!(
        !labels.contains_key("mirror.linkerd.io/exported"),
        "mirror.linkerd.io/* not copied"
    );
    assert!(!labels.contains_key("team.example/owner"), "excluded label");
    let ann = svc.metadata.annotations.clone().unwrap();
    assert_eq!(ann[ANN_REMOTE_FQ_NAME], "podinfo.test.svc.cluster.local");
    assert_eq!(ann[ANN_GATEWAY_IDENTITY], "gw.east");
    assert_eq!(ann["config.linkerd.io/opaque-ports"], "9999");
    assert!(!ann.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
    let spec = svc.spec.clone().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert!(spec.selector.is_none() && spec.cluster_ip.is_none());
    let ports = spec.ports.unwrap();
    assert_eq!(ports.len(), 2);
    assert!(ports.iter().all(|p| p.node_port.is_none()));
    assert_eq!(ports[1].app_protocol.as_deref(), Some("kubernetes.io/h2c"));

    assert_eq!(m.slices.len(), 2, "one slice per address family");
    let v4 = &m.slices[0];
    assert_eq!(v4.metadata.name.as_deref(), Some("podinfo-east"));
    assert_eq!(v4.address_type, "IPv4");
    let l = v4.metadata.labels.clone().unwrap();
    assert_eq!(l[LABEL_SERVICE_NAME], "podinfo-east");
    assert_eq!(l[LABEL_MANAGED_BY], MANAGED_BY);
    let a = v4.metadata.annotations.clone().unwrap();
    assert_eq!(a[ANN_REMOTE_FQ_NAME], "podinfo.test.svc.cluster.local");
    assert_eq!(a[ANN_GATEWAY_IDENTITY], "gw.east");
    assert_eq!(v4.endpoints[0].addresses, ["192.0.2.10"]);
    assert!(
        v4.ports.iter().flatten().all(|p| p.port == Some(4143)),
        "every port → gatewayPort"
    );
    assert_eq!(m.slices[1].address_type, "IPv6");
}

#[test]
fn ready_only_when_gateway_alive_and_remote_ready() {
    let ready = |alive, remote_ready| {
        let m = mirror(&link(), "isthmus/east", &remote(), &gw(alive), remote_ready).unwrap();
        m.slices[0].endpoints[0].conditions.clone().unwrap().ready
    };
    assert_eq!(ready(true, true), Some(true));
    assert_eq!(ready(false, true), Some(false));
    assert_eq!(ready(true, false), Some(false));
}

#[test]
fn hostile_remote_objects_are_refused() {
    let edits: Vec<(serde_json::Value, &str)> = vec![
        (
            serde_json::json!({"metadata": {"name": "Bad_Name"}}),
            "InvalidRemoteService",
        ),
        (
            serde_json::json!({"metadata": {"name": "a".repeat(60)}}),
            "NameTooLong",
        ),
        (
            serde_json::json!({"metadata": {"labels": {"bad key": "v"}}}),
            "InvalidRemoteService",
        ),
        (
            serde_json::json!({"metadata": {"labels": {"k": "v\nInjected: x"}}}),
            "InvalidRemoteService",
        ),
        (
            serde_json::json!({"spec": {"type": "ExternalName"}}),
            "UnsupportedServiceType",
        ),
        (
            serde_json::json!({"spec": {"ports": []}}),
            "InvalidRemoteService",
        ),
        (
            serde_json::json!({"spec": {"ports": [{"name": "a", "port": 0}]}}),
            "InvalidRemoteService",
        ),
        (
            serde_json::json!({"spec": {"ports": [{"name": "a", "port": 1, "protocol": "ICMP"}]}}),
            "InvalidRemoteService",
        ),
        (
            serde_json::json!({"spec": {"ports": [{"port": 1}, {"port": 2}]}}),
            "InvalidRemoteService",
        ),
        (
            serde_json::json!({"spec": {"ports": [{"name": "a", "port": 1}, {"name": "a", "port": 2}]}}),
            "InvalidRemoteService",
        ),
    ];
    for (edit, reason) in edits {
        let mut v = serde_json::to_value(remote()).unwrap();
        merge(&mut v, &edit);
        let svc: Service = serde_json::from_value(v).unwrap();
        let r = mirror(&link(), "isthmus/east", &svc, &gw(true), true).unwrap_err();
        assert_eq!(r.reason, reason, "{edit}: {}", r.message);
    }
}

fn merge(base: &mut serde_json::Value, patch: &serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

#[test]
fn update_keeps_server_fields_and_matches_after() {
    let m = mirror(&link(), "isthmus/east", &remote(), &gw(true), true).unwrap();
    let mut have = m.service.clone();
    have.metadata.resource_version = Some("7".into());
    have.metadata.uid = Some("u".into());
    have.spec.as_mut().unwrap().cluster_ip = Some("10.1.2.3".into());
    assert!(service_matches(&have, &m.service));
    have.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 1;
    assert!(!service_matches(&have, &m.service));
    let next = service_update(&have, &m.service);
    assert!(service_matches(&next, &m.service));
    assert_eq!(next.metadata.resource_version.as_deref(), Some("7"));
    assert_eq!(next.spec.unwrap().cluster_ip.as_deref(), Some("10.1.2.3"));
}
