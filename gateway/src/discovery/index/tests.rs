use std::collections::BTreeMap;

use http::{HeaderMap, Method};
use k8s_openapi::api::core::v1::{ServicePort as K8sServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint as K8sEndpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::discovery::crd::{MappingSpec, RetryPolicy};

fn cfg() -> IndexConfig {
    IndexConfig {
        cluster_domain: "cluster.local".into(),
        export_label: "mirror.linkerd.io/exported".into(),
        namespaces: Vec::new(),
        allowed: Arc::from(vec![
            IdentityPattern::parse("spiffe://west.example/*").expect("pattern")
        ]),
        defaults: BackendSettings::with_timeouts(
            Duration::from_secs(15),
            Duration::from_secs(1),
            Duration::from_secs(60),
        ),
        egress: true,
    }
}

fn meta(ns: &str, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        generation: Some(3),
        ..ObjectMeta::default()
    }
}

fn mk_service(ns: &str, name: &str, exported: bool, ports: &[(&str, i32, IntOrString)]) -> Object {
    let labels: &[(&str, &str)] = if exported {
        &[("mirror.linkerd.io/exported", "true")]
    } else {
        &[]
    };
    Object::Service(Box::new(Service {
        metadata: meta(ns, name, labels),
        spec: Some(ServiceSpec {
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, t)| K8sServicePort {
                        name: (!n.is_empty()).then(|| n.to_string()),
                        port: *p,
                        target_port: Some(t.clone()),
                        ..K8sServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }))
}

fn mk_slice(
    ns: &str,
    name: &str,
    svc: &str,
    ports: &[(&str, i32)],
    eps: &[(&str, bool)],
) -> Object {
    Object::EndpointSlice(Box::new(EndpointSlice {
        metadata: meta(ns, name, &[("kubernetes.io/service-name", svc)]),
        address_type: "IPv4".into(),
        ports: Some(
            ports
                .iter()
                .map(|(n, p)| EndpointPort {
                    name: (!n.is_empty()).then(|| n.to_string()),
                    port: Some(*p),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
        endpoints: eps
            .iter()
            .map(|(a, ready)| K8sEndpoint {
                addresses: vec![a.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    ..EndpointConditions::default()
                }),
                ..K8sEndpoint::default()
            })
            .collect(),
    }))
}

fn mk_mapping(ns: &str, name: &str, spec: MappingSpec) -> Object {
    let mut m = Mapping::new(name, spec);
    m.metadata.namespace = Some(ns.into());
    m.metadata.generation = Some(7);
    Object::Mapping(Box::new(m))
}

fn spec(host: &str, prefix: &str, service: &str) -> MappingSpec {
    MappingSpec {
        hostname: Some(host.into()),
        prefix: prefix.into(),
        service: service.into(),
        ..MappingSpec::default()
    }
}

fn http_port(name: &str, port: i32, target: &str) -> (&'static str, i32, IntOrString) {
    let name: &'static str = Box::leak(name.to_string().into_boxed_str());
    (name, port, IntOrString::String(target.into()))
}

/// Route name and endpoints for a request, or None.
fn route_for(t: &RouteTable, authority: &str, path: &str) -> Option<(String, Vec<String>)> {
    let a = Authority::parse(authority.as_bytes()).expect("authority");
    t.lookup(&a, path, &Method::GET, &HeaderMap::new())
        .map(|r| {
            let eps = r
                .target
                .backends
                .iter()
                .flat_map(|b| b.endpoints.iter().map(|e| e.addr.to_string()))
                .collect();
            (r.name.to_string(), eps)
        })
}

fn index_with(objects: &[Object]) -> Index {
    let mut index = Index::new(cfg());
    for o in objects {
        index.apply(o).expect("valid object");
    }
    index
}

#[test]
fn exported_service_routes_to_ready_endpoints_by_port_name() {
    let mut index = index_with(&[
        mk_service("test", "podinfo", true, &[http_port("http", 9898, "http")]),
        mk_slice(
            "test",
            "podinfo-a",
            "podinfo",
            &[("http", 8080)],
            &[("10.0.0.1", true), ("10.0.0.2", false)],
        ),
        mk_slice(
            "test",
            "podinfo-b",
            "podinfo",
            &[("http", 8080)],
            &[("10.0.0.3", true)],
        ),
    ]);
    let t = index.build();
    let want = Some((
        "service/test/podinfo:9898".to_string(),
        vec!["10.0.0.1:8080".to_string(), "10.0.0.3:8080".to_string()],
    ));
    assert_eq!(
        route_for(&t, "podinfo.test.svc.cluster.local:9898", "/"),
        want
    );
    assert_eq!(
        route_for(&t, "podinfo.test.svc.cluster.local", "/"),
        want,
        "single-port Service answers without a port"
    );
    assert_eq!(
        route_for(&t, "podinfo.test.svc.cluster.local:9899", "/"),
        None
    );
    assert_eq!(t.endpoint_count(), 2);
}

#[test]
fn non_exported_and_unknown_have_no_route() {
    let mut index = index_with(&[
        mk_service("test", "internal", false, &[("", 80, IntOrString::Int(80))]),
        mk_slice(
            "test",
            "internal-a",
            "internal",
            &[("", 80)],
            &[("10.0.0.1", true)],
        ),
    ]);
    let t = index.build();
    assert_eq!(
        route_for(&t, "internal.test.svc.cluster.local:80", "/"),
        None
    );
    assert_eq!(
        route_for(&t, "kubernetes.default.svc.cluster.local:443", "/"),
        None
    );
}

#[test]
fn multi_port_service_needs_a_port_and_numeric_target_without_slice_ports() {
    let mut index = index_with(&[
        mk_service(
            "test",
            "multi",
            true,
            &[
                ("a", 80, IntOrString::Int(8080)),
                ("b", 81, IntOrString::Int(8081)),
            ],
        ),
        mk_slice(
            "test",
            "multi-a",
            "multi",
            &[("a", 8080), ("b", 8081)],
            &[("10.0.0.1", true)],
        ),
    ]);
    let t = index.build();
    assert_eq!(route_for(&t, "multi.test.svc.cluster.local", "/"), None);
    assert_eq!(
        route_for(&t, "multi.test.svc.cluster.local:81", "/").map(|r| r.1),
        Some(vec!["10.0.0.1:8081".to_string()])
    );
}

#[test]
fn readiness_flip_and_deletes_update_the_table() {
    let mut index = index_with(&[
        mk_service("test", "podinfo", true, &[http_port("http", 9898, "http")]),
        mk_slice(
            "test",
            "podinfo-a",
            "podinfo",
            &[("http", 8080)],
            &[("10.0.0.1", true)],
        ),
    ]);
    let host = "podinfo.test.svc.cluster.local:9898";
    assert_eq!(
        route_for(&index.build(), host, "/").map(|r| r.1.len()),
        Some(1)
    );
    index
        .apply(&mk_slice(
            "test",
            "podinfo-a",
            "podinfo",
            &[("http", 8080)],
            &[("10.0.0.1", false)],
        ))
        .expect("valid");
    assert_eq!(
        route_for(&index.build(), host, "/").map(|r| r.1.len()),
        Some(0),
        "route stays (503), endpoints gone"
    );
    index.delete(ObjectKind::Service, &ObjectKey::new("test", "podinfo"));
    assert_eq!(route_for(&index.build(), host, "/"), None);
}

#[test]
fn relist_drops_objects_missing_from_the_new_list() {
    let mut index = index_with(&[
        mk_service("test", "a", true, &[("", 80, IntOrString::Int(80))]),
        mk_service("test", "b", true, &[("", 80, IntOrString::Int(80))]),
    ]);
    let errors = index.replace(
        ObjectKind::Service,
        None,
        &[mk_service(
            "test",
            "b",
            true,
            &[("", 80, IntOrString::Int(80))],
        )],
    );
    assert!(errors.is_empty());
    let t = index.build();
    assert_eq!(route_for(&t, "a.test.svc.cluster.local", "/"), None);
    assert!(route_for(&t, "b.test.svc.cluster.local", "/").is_some());
}

#[test]
fn namespaced_relist_leaves_other_namespaces_alone() {
    let mut index = index_with(&[
        mk_service("a", "x", true, &[("", 80, IntOrString::Int(80))]),
        mk_service("b", "y", true, &[("", 80, IntOrString::Int(80))]),
    ]);
    index.replace(ObjectKind::Service, Some("a"), &[]);
    let t = index.build();
    assert_eq!(route_for(&t, "x.a.svc.cluster.local", "/"), None);
    assert!(route_for(&t, "y.b.svc.cluster.local", "/").is_some());
}

#[test]
fn namespace_filter_hides_services_and_refuses_mappings_into_them() {
    let mut c = cfg();
    c.namespaces = vec!["test".into()];
    let mut index = Index::new(c);
    index
        .apply(&mk_service(
            "other",
            "x",
            true,
            &[("", 80, IntOrString::Int(80))],
        ))
        .expect("ignored, not an error");
    let err = index
        .apply(&mk_mapping(
            "test",
            "m",
            spec("a.example", "/", "x.other:80"),
        ))
        .expect_err("refused");
    assert!(err.reason.contains("namespace other"), "{err}");
    let t = index.build();
    assert_eq!(route_for(&t, "x.other.svc.cluster.local", "/"), None);
    assert_eq!(route_for(&t, "a.example", "/"), None);
}

#[test]
fn mapping_routes_non_exported_service_with_rewrite_default() {
    let mut index = index_with(&[
        mk_service(
            "test",
            "internal",
            false,
            &[("", 80, IntOrString::Int(8080))],
        ),
        mk_slice(
            "test",
            "internal-a",
            "internal",
            &[("", 8080)],
            &[("10.0.0.9", true)],
        ),
        mk_mapping(
            "test",
            "api",
            spec("api.example.com", "/api/", "internal:80"),
        ),
    ]);
    let t = index.build();
    let a = Authority::parse(b"api.example.com").expect("authority");
    let r = t
        .lookup(&a, "/api/x", &Method::GET, &HeaderMap::new())
        .expect("route");
    assert_eq!(&*r.name, "mapping/test/api");
    assert_eq!(r.target.backends[0].settings.rewrite.as_deref(), Some("/"));
    assert_eq!(
        r.target.backends[0].endpoints[0].addr.to_string(),
        "10.0.0.9:8080"
    );
    assert!(
        r.authz.allows("spiffe://west.example/ns/a/sa/b"),
        "global identities apply"
    );
    assert_eq!(
        route_for(&t, "internal.test.svc.cluster.local", "/"),
        None,
        "still not exported"
    );
}

#[test]
fn mappings_with_the_same_match_split_by_weight() {
    let mut canary = spec("a.example", "/", "canary:80");
    canary.weight = Some(10);
    let mut index = index_with(&[
        mk_mapping("test", "main", spec("a.example", "/", "main:80")),
        mk_mapping("test", "canary", canary),
    ]);
    let t = index.build();
    let a = Authority::parse(b"a.example").expect("authority");
    let r = t
        .lookup(&a, "/", &Method::GET, &HeaderMap::new())
        .expect("route");
    let weights: BTreeMap<String, u32> = r
        .target
        .backends
        .iter()
        .map(|b| (b.service.to_string(), b.weight))
        .collect();
    assert_eq!(weights.get("test/canary:80"), Some(&10));
    assert_eq!(weights.get("test/main:80"), Some(&90));
}

#[test]
fn mapping_allowed_identities_replace_global_and_intersect_in_a_split() {
    let mut a = spec("a.example", "/", "a:80");
    a.allowed_identities = Some(vec!["spiffe://south.example/*".into()]);
    let mut b = spec("a.example", "/", "b:80");
    b.allowed_identities = Some(vec!["spiffe://south.example/ns/x/*".into()]);
    let mut index = index_with(&[mk_mapping("test", "a", a.clone())]);
    let t = index.build();
    let host = Authority::parse(b"a.example").expect("authority");
    let r = t
        .lookup(&host, "/", &Method::GET, &HeaderMap::new())
        .expect("route");
    assert!(r.authz.allows("spiffe://south.example/ns/y/sa/z"));
    assert!(
        !r.authz.allows("spiffe://west.example/ns/y/sa/z"),
        "global list replaced"
    );
    index.apply(&mk_mapping("test", "b", b)).expect("valid");
    let t = index.build();
    let r = t
        .lookup(&host, "/", &Method::GET, &HeaderMap::new())
        .expect("route");
    assert!(r.authz.allows("spiffe://south.example/ns/x/sa/z"));
    assert!(
        !r.authz.allows("spiffe://south.example/ns/y/sa/z"),
        "both Mappings must allow"
    );
}

#[test]
fn invalid_mappings_are_refused_with_actionable_reasons_and_others_stay() {
    let cases: Vec<(MappingSpec, &str)> = vec![
        (spec("a.example", "api", "x:80"), "must start with '/'"),
        (spec("a.example", "/", "https://x:443"), "only plain HTTP"),
        (
            spec("a.example", "/", "x.y.z.w:80"),
            "expected name[.namespace]",
        ),
        (spec("a b", "/", "x:80"), "hostname"),
        (
            MappingSpec {
                weight: Some(101),
                ..spec("a.example", "/", "x")
            },
            "weight 101",
        ),
        (
            MappingSpec {
                load_balancer: Some(crate::discovery::crd::LoadBalancer {
                    policy: "ring_hash".into(),
                }),
                ..spec("a.example", "/", "x")
            },
            "ring_hash",
        ),
        (
            MappingSpec {
                retry_policy: Some(RetryPolicy {
                    retry_on: Some("5xx".into()),
                    ..RetryPolicy::default()
                }),
                ..spec("a.example", "/", "x")
            },
            "retry_on",
        ),
        (
            MappingSpec {
                allowed_identities: Some(vec!["a*b".into()]),
                ..spec("a.example", "/", "x")
            },
            "allowed_identities[0]",
        ),
        (
            MappingSpec {
                timeout_ms: Some(0),
                ..spec("a.example", "/", "x")
            },
            "timeout_ms",
        ),
    ];
    let mut index = index_with(&[mk_mapping(
        "test",
        "good",
        spec("good.example", "/", "x:80"),
    )]);
    for (i, (s, want)) in cases.into_iter().enumerate() {
        let err = index
            .apply(&mk_mapping("test", &format!("bad{i}"), s))
            .expect_err("refused");
        assert!(err.reason.contains(want), "case {i}: {err}");
        assert_eq!(err.kind, "Mapping");
    }
    let t = index.build();
    assert!(
        route_for(&t, "good.example", "/").is_some(),
        "valid Mapping unaffected"
    );
    let states: Vec<_> = index.mapping_states().collect();
    assert_eq!(states.len(), 10);
    let bad0 = states
        .iter()
        .find(|(k, _)| &*k.name == "bad0")
        .expect("state");
    assert_eq!(bad0.1.generation, Some(7));
    assert!(bad0
        .1
        .accepted
        .as_ref()
        .is_err_and(|r| r.contains("prefix")));
}

#[test]
fn invalid_service_keeps_previous_version() {
    let mut index = index_with(&[mk_service(
        "test",
        "a",
        true,
        &[("", 80, IntOrString::Int(80))],
    )]);
    let err = index
        .apply(&mk_service(
            "test",
            "a",
            true,
            &[("", 70000, IntOrString::Int(80))],
        ))
        .expect_err("refused");
    assert!(err.reason.contains("70000"), "{err}");
    assert!(route_for(&index.build(), "a.test.svc.cluster.local:80", "/").is_some());
}

#[test]
fn endpoint_objects_survive_rebuilds() {
    let objs = [
        mk_service("test", "a", true, &[("", 80, IntOrString::Int(80))]),
        mk_slice("test", "a-1", "a", &[("", 80)], &[("10.0.0.1", true)]),
    ];
    let mut index = index_with(&objs);
    let t1 = index.build();
    let t2 = index.build();
    let ep = |t: &RouteTable| {
        let a = Authority::parse(b"a.test.svc.cluster.local").expect("authority");
        t.lookup(&a, "/", &Method::GET, &HeaderMap::new())
            .expect("route")
            .target
            .backends[0]
            .endpoints[0]
            .clone()
    };
    assert!(
        Arc::ptr_eq(&ep(&t1), &ep(&t2)),
        "in-flight counts carry over"
    );
}

fn route_arc(t: &RouteTable, authority: &str) -> Arc<Route> {
    let a = Authority::parse(authority.as_bytes()).expect("authority");
    t.lookup(&a, "/", &Method::GET, &HeaderMap::new())
        .expect("route")
        .clone()
}

#[test]
fn unchanged_services_keep_their_routes_and_changed_ones_are_rebuilt() {
    let port = || [("", 80, IntOrString::Int(80))];
    let mut index = index_with(&[
        mk_service("test", "a", true, &port()),
        mk_service("test", "b", true, &port()),
        mk_slice("test", "a-1", "a", &[("", 80)], &[("10.0.0.1", true)]),
        mk_slice("test", "b-1", "b", &[("", 80)], &[("10.0.0.2", true)]),
    ]);
    let (a, b) = ("a.test.svc.cluster.local", "b.test.svc.cluster.local");
    let t1 = index.build();

    // An endpoint change in b rebuilds b only.
    let b_slice = |eps: &[(&str, bool)]| mk_slice("test", "b-1", "b", &[("", 80)], eps);
    index
        .apply(&b_slice(&[("10.0.0.2", true), ("10.0.0.3", true)]))
        .expect("valid");
    let t2 = index.build();
    assert!(Arc::ptr_eq(&route_arc(&t1, a), &route_arc(&t2, a)));
    assert!(!Arc::ptr_eq(&route_arc(&t1, b), &route_arc(&t2, b)));
    assert_eq!(route_for(&t2, b, "/").map(|r| r.1.len()), Some(2));
    assert_eq!(t2.endpoint_count(), 3);
    assert_eq!(t2.service_count(), 2);

    // A Mapping to a Service port that has its own route shares its backend;
    // one naming the Service without a port is a backend of its own.
    index
        .apply(&mk_mapping(
            "test",
            "m1",
            spec("m1.example", "/", "a.test:80"),
        ))
        .expect("valid");
    assert_eq!(index.build().service_count(), 2);
    index
        .apply(&mk_mapping("test", "m2", spec("m2.example", "/", "a.test")))
        .expect("valid");
    assert_eq!(index.build().service_count(), 3);
    index.delete(ObjectKind::Mapping, &ObjectKey::new("test", "m1"));
    index.delete(ObjectKind::Mapping, &ObjectKey::new("test", "m2"));

    // Re-applying identical objects (a relist) changes nothing.
    index.replace(
        ObjectKind::EndpointSlice,
        None,
        &[
            mk_slice("test", "a-1", "a", &[("", 80)], &[("10.0.0.1", true)]),
            b_slice(&[("10.0.0.2", true), ("10.0.0.3", true)]),
        ],
    );
    let t3 = index.build();
    assert!(Arc::ptr_eq(&route_arc(&t2, a), &route_arc(&t3, a)));
    assert!(Arc::ptr_eq(&route_arc(&t2, b), &route_arc(&t3, b)));

    // A slice that moves from a to b changes both; a relist without it drops it.
    index
        .apply(&mk_slice(
            "test",
            "a-1",
            "b",
            &[("", 80)],
            &[("10.0.0.1", true)],
        ))
        .expect("valid");
    let t4 = index.build();
    assert_eq!(route_for(&t4, a, "/").map(|r| r.1.len()), Some(0));
    assert_eq!(route_for(&t4, b, "/").map(|r| r.1.len()), Some(3));
    index.replace(
        ObjectKind::EndpointSlice,
        None,
        &[b_slice(&[("10.0.0.2", true)])],
    );
    let t5 = index.build();
    assert_eq!(
        route_for(&t5, b, "/").map(|r| r.1),
        Some(vec!["10.0.0.2:80".to_string()])
    );
    assert_eq!(t5.endpoint_count(), 1);

    // Un-exporting and deleting remove the cached routes.
    index
        .apply(&mk_service("test", "a", false, &port()))
        .expect("valid");
    index.delete(ObjectKind::Service, &ObjectKey::new("test", "b"));
    let t6 = index.build();
    assert_eq!(route_for(&t6, a, "/"), None);
    assert_eq!(route_for(&t6, b, "/"), None);
    assert_eq!(t6.route_count(), 0);
}

#[test]
fn weights_follow_emissary() {
    assert_eq!(split_weights([None, None].into_iter()), vec![1, 1]);
    assert_eq!(split_weights([Some(10), None].into_iter()), vec![10, 90]);
    assert_eq!(
        split_weights([Some(10), None, None].into_iter()),
        vec![10, 45, 45]
    );
    assert_eq!(split_weights([Some(100), None].into_iter()), vec![100, 0]);
    assert_eq!(
        split_weights([Some(30), Some(20)].into_iter()),
        vec![30, 20]
    );
}

#[test]
fn link_local_and_unspecified_endpoints_are_refused_and_the_rest_kept() {
    let mut index = Index::new(cfg());
    index
        .apply(&mk_service(
            "test",
            "podinfo",
            true,
            &[http_port("http", 9898, "http")],
        ))
        .expect("valid service");
    let refused = index
        .apply(&mk_slice(
            "test",
            "podinfo-a",
            "podinfo",
            &[("http", 8080)],
            &[
                ("10.0.0.1", true),
                ("169.254.169.254", true),
                ("0.0.0.0", true),
                ("127.0.0.1", true),
            ],
        ))
        .expect_err("the refused addresses are reported");
    assert_eq!(refused.kind, "EndpointSlice");
    for a in ["169.254.169.254", "0.0.0.0"] {
        assert!(refused.reason.contains(a), "{refused}");
    }
    let mut v6 = mk_slice(
        "test",
        "podinfo-b",
        "podinfo",
        &[("http", 8080)],
        &[
            ("fe80::1", true),
            ("::", true),
            ("fd00::1", true),
            ("::1", true),
        ],
    );
    if let Object::EndpointSlice(s) = &mut v6 {
        s.address_type = "IPv6".into();
    }
    let refused = index.apply(&v6).expect_err("reported");
    assert!(
        refused.reason.contains("fe80::1") && refused.reason.contains("\"::\""),
        "{refused}"
    );
    let t = index.build();
    let (_, mut eps) = route_for(&t, "podinfo.test.svc.cluster.local:9898", "/").expect("route");
    eps.sort();
    assert_eq!(
        eps,
        [
            "10.0.0.1:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "[fd00::1]:8080"
        ],
        "loopback and private addresses stay"
    );
}

fn mk_mirror(ns: &str, name: &str, remote: &str) -> Object {
    let Object::Service(mut svc) = mk_service(ns, name, false, &[http_port("http", 9898, "http")])
    else {
        unreachable!()
    };
    svc.metadata.labels = Some(BTreeMap::from([
        (
            "mirror.linkerd.io/mirrored-service".to_string(),
            "true".to_string(),
        ),
        (
            "mirror.linkerd.io/cluster-name".to_string(),
            "east".to_string(),
        ),
    ]));
    svc.metadata.annotations = Some(BTreeMap::from([
        (
            "mirror.linkerd.io/remote-svc-fq-name".to_string(),
            format!("{remote}.{ns}.svc.cluster.local"),
        ),
        (
            "mirror.linkerd.io/remote-gateway-identity".to_string(),
            "spiffe://east.example/gw".to_string(),
        ),
    ]));
    Object::Service(svc)
}

fn mk_split(ns: &str, name: &str, version: &str, backends: serde_json::Value) -> Object {
    Object::TrafficSplit(Box::new(crate::discovery::trafficsplit::TrafficSplit {
        api_version: format!("split.smi-spec.io/{version}"),
        metadata: meta(ns, name, &[]),
        spec: serde_json::json!({"service": "podinfo", "backends": backends}),
    }))
}

#[test]
fn egress_names_every_service_and_mirrors_go_to_their_gateway() {
    let mut index = index_with(&[
        mk_service(
            "test",
            "internal",
            false,
            &[http_port("http", 8080, "http")],
        ),
        mk_slice(
            "test",
            "internal-1",
            "internal",
            &[("http", 8080)],
            &[("10.0.0.1", true)],
        ),
        mk_mirror("test", "podinfo-east", "podinfo"),
        mk_slice(
            "test",
            "podinfo-east",
            "podinfo-east",
            &[("http", 4143)],
            &[("192.0.2.7", true)],
        ),
    ]);
    let ingress = index.build();
    assert!(route_for(&ingress, "internal.test.svc.cluster.local:8080", "/").is_none());
    let egress = index.take_egress().expect("egress built");
    for host in [
        "internal.test:8080",
        "internal.test.svc:8080",
        "internal.test.svc.cluster.local:8080",
        "internal.test.svc.cluster.local",
    ] {
        // As the egress looks it up: short names completed first.
        let a = Authority::parse(host.as_bytes()).expect("authority");
        let a = crate::egress::full_name(&a, "cluster.local").unwrap_or(a);
        let eps = egress
            .lookup(&a, "/", &Method::GET, &HeaderMap::new())
            .map(|r| {
                r.target.backends[0]
                    .endpoints
                    .iter()
                    .map(|e| e.addr.to_string())
                    .collect::<Vec<_>>()
            });
        assert_eq!(eps, Some(vec!["10.0.0.1:8080".to_string()]), "{host}");
    }
    let a = Authority::parse(b"podinfo-east.test.svc.cluster.local:9898").unwrap();
    let r = egress
        .lookup(&a, "/", &Method::GET, &HeaderMap::new())
        .expect("mirror route");
    let b = &r.target.backends[0];
    assert_eq!(b.endpoints[0].addr.to_string(), "192.0.2.7:4143");
    let remote = b.settings.remote.as_ref().expect("remote target");
    assert_eq!(&*remote.authority, "podinfo.test.svc.cluster.local:9898");
    assert_eq!(&*remote.identity, "spiffe://east.example/gw");
    assert_eq!(&*remote.cluster, "east");
}

#[test]
fn a_split_root_splits_for_egress_only_and_problems_are_reported_once() {
    let mut index = index_with(&[
        mk_service("test", "podinfo", true, &[http_port("http", 9898, "http")]),
        mk_slice(
            "test",
            "podinfo-1",
            "podinfo",
            &[("http", 9898)],
            &[("10.0.0.1", true)],
        ),
        mk_mirror("test", "podinfo-east", "podinfo"),
        mk_slice(
            "test",
            "podinfo-east",
            "podinfo-east",
            &[("http", 4143)],
            &[("192.0.2.7", true)],
        ),
        mk_split(
            "test",
            "podinfo",
            "v1alpha1",
            serde_json::json!([
                {"service": "podinfo", "weight": "500m"},
                {"service": "podinfo-east", "weight": "500m"},
                {"service": "gone", "weight": 1}
            ]),
        ),
    ]);
    let ingress = index.build();
    assert_eq!(
        route_for(&ingress, "podinfo.test.svc.cluster.local:9898", "/").map(|r| r.0),
        Some("service/test/podinfo:9898".into()),
        "ingress peers reach the root itself"
    );
    let egress = index.take_egress().expect("egress");
    let a = Authority::parse(b"podinfo.test.svc.cluster.local:9898").unwrap();
    let r = egress
        .lookup(&a, "/", &Method::GET, &HeaderMap::new())
        .unwrap();
    assert_eq!(&*r.name, "split/test/podinfo:9898");
    let weights: Vec<u32> = r.target.backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, vec![500, 500], "the missing backend gets nothing");
    let problems = index.take_split_problems();
    assert_eq!(problems.len(), 1);
    assert!(problems[0].reason.contains("gone"), "{problems:?}");
    index.build();
    assert!(index.take_split_problems().is_empty(), "reported once");
    let bad = index.apply(&mk_split(
        "test",
        "bad",
        "v1alpha2",
        serde_json::json!([{"service": "a", "weight": "1"}]),
    ));
    assert!(bad.unwrap_err().reason.contains("integers"));
}

#[test]
fn mirrors_not_ready_counts_and_unexported_services_reach_the_table() {
    let mut idx = Index::new(cfg());
    let port = [("http", 80, IntOrString::Int(8080))];
    let mirror = |name: &str, cluster: &str| {
        let mut svc = mk_service("test", name, false, &port);
        if let Object::Service(s) = &mut svc {
            s.metadata.labels = Some(
                [
                    (MIRRORED_SERVICE_LABEL.to_string(), "true".to_string()),
                    (CLUSTER_NAME_LABEL.to_string(), cluster.to_string()),
                ]
                .into(),
            );
        }
        svc
    };
    for o in [
        mk_service("test", "podinfo", true, &port),
        mk_slice(
            "test",
            "podinfo-1",
            "podinfo",
            &[("http", 8080)],
            &[("10.0.0.1", true), ("10.0.0.2", false)],
        ),
        mk_service("test", "hidden", false, &port),
        mirror("podinfo-east", "east"),
        mk_slice(
            "test",
            "podinfo-east-1",
            "podinfo-east",
            &[("http", 4143)],
            &[("192.0.2.1", true)],
        ),
        mirror("podinfo-north", "north"),
        mk_slice(
            "test",
            "podinfo-north-1",
            "podinfo-north",
            &[("http", 4143)],
            &[("192.0.2.9", false)],
        ),
    ] {
        idx.apply(&o).expect("valid object");
    }
    let t = idx.build();
    let r = t
        .iter()
        .find(|r| &*r.name == "service/test/podinfo:80")
        .expect("route");
    assert_eq!(r.target.backends[0].endpoints.len(), 1);
    assert_eq!(r.target.backends[0].not_ready(), 1);
    assert!(t.is_unexported("test/hidden"));
    assert!(
        t.is_unexported("test/podinfo-east"),
        "mirrors are not exported"
    );
    assert!(!t.is_unexported("test/podinfo"));
    let m = t.mirrors();
    assert_eq!(m.len(), 2);
    assert_eq!(
        (&*m[0].cluster, m[0].service.as_str()),
        ("east", "test/podinfo-east")
    );
    assert_eq!(m[0].ready, vec!["192.0.2.1".parse::<IpAddr>().expect("ip")]);
    assert_eq!(
        (&*m[1].cluster, m[1].ready.len(), m[1].not_ready),
        ("north", 0, 1)
    );
    assert_eq!(
        idx.object_counts(),
        crate::discovery::ObjectCounts {
            services: 4,
            endpoint_slices: 3,
            mappings: 0
        }
    );

    // The north gateway comes back: only its slice changed, the list follows.
    idx.apply(&mk_slice(
        "test",
        "podinfo-north-1",
        "podinfo-north",
        &[("http", 4143)],
        &[("192.0.2.9", true)],
    ))
    .expect("valid");
    let t = idx.build();
    assert_eq!(t.mirrors()[1].ready.len(), 1);
}

#[test]
fn not_exported_list_follows_export_flips_and_deletes() {
    let mut idx = Index::new(cfg());
    let port = [("http", 80, IntOrString::Int(8080))];
    idx.apply(&mk_service("test", "a", false, &port))
        .expect("valid");
    assert!(idx.build().is_unexported("test/a"));
    idx.apply(&mk_service("test", "a", true, &port))
        .expect("valid");
    assert!(!idx.build().is_unexported("test/a"));
    idx.apply(&mk_service("test", "a", false, &port))
        .expect("valid");
    assert!(idx.build().is_unexported("test/a"));
    idx.delete(ObjectKind::Service, &ObjectKey::new("test", "a"));
    assert!(!idx.build().is_unexported("test/a"));
}

mod httproutes {
    use super::*;
    use serde_json::json;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("object")
    }

    fn infra(idx: &mut Index) {
        idx.apply(&Object::GatewayClass(Box::new(obj(json!({
            "metadata": {"name": "isthmus"}, "spec": {"controllerName": "isthmus.dev/gateway"}})))))
            .unwrap();
        idx.apply(&Object::GatewayClass(Box::new(obj(json!({
            "metadata": {"name": "other"}, "spec": {"controllerName": "example.com/other"}})))))
            .unwrap();
        for (name, class) in [("gw", "isthmus"), ("foreign", "other")] {
            idx.apply(&Object::Gateway(Box::new(obj(json!({
                "metadata": {"name": name, "namespace": "t"},
                "spec": {"gatewayClassName": class, "listeners": [
                    {"name": "a", "port": 4143, "hostname": "*.example.com"}]}})))))
                .unwrap();
        }
        idx.apply(&mk_service(
            "t",
            "web",
            false,
            &[("http", 80, IntOrString::Int(8080))],
        ))
        .unwrap();
        idx.apply(&mk_slice(
            "t",
            "web-1",
            "web",
            &[("http", 8080)],
            &[("10.0.0.1", true)],
        ))
        .unwrap();
    }

    fn route(name: &str, spec: serde_json::Value) -> Object {
        Object::HttpRoute(Box::new(obj(json!({
            "metadata": {"name": name, "namespace": "t", "generation": 2}, "spec": spec}))))
    }

    fn find<'a>(t: &'a RouteTable, host: &str, path: &str) -> Option<&'a str> {
        let a = Authority::parse(host.as_bytes()).expect("authority");
        t.lookup(&a, path, &Method::GET, &HeaderMap::new())
            .map(|r| &*r.name)
    }

    #[test]
    fn parents_hostnames_and_status() {
        let mut idx = Index::new(cfg());
        infra(&mut idx);
        idx.apply(&route("ok", json!({
            "parentRefs": [{"name": "gw"}, {"name": "foreign"}, {"name": "gw", "sectionName": "nope"}],
            "hostnames": ["a.example.com", "b.other.org"],
            "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]})))
            .unwrap();
        let t = idx.build();
        // Intersected with the listener's *.example.com: only a.example.com.
        assert_eq!(find(&t, "a.example.com", "/"), Some("httproute/t/ok/000"));
        assert_eq!(find(&t, "b.other.org", "/"), None);
        let (_, st) = idx.httproute_states().next().expect("status");
        assert_eq!(st.generation, Some(2));
        // The foreign Gateway's parent gets no entry from us.
        assert_eq!(st.parents.len(), 2);
        assert_eq!(st.parents[0].accepted.reason, "Accepted");
        assert_eq!(st.parents[1].accepted.reason, "NoMatchingParent");
        assert_eq!(st.parents[0].resolved_refs.reason, "ResolvedRefs");
    }

    #[test]
    fn an_invalid_route_is_refused_alone() {
        let mut idx = Index::new(cfg());
        infra(&mut idx);
        let err = idx
            .apply(&route("bad", json!({
                "parentRefs": [{"name": "gw"}], "hostnames": ["bad.example.com"],
                "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "/x.*"}}]}]})))
            .unwrap_err();
        assert!(err.reason.contains("RegularExpression"), "{err}");
        idx.apply(&route("good", json!({
            "parentRefs": [{"name": "gw"}], "hostnames": ["good.example.com"],
            "rules": [{"backendRefs": [{"name": "web", "port": 80}, {"name": "gone", "port": 80}]}]})))
            .unwrap();
        let t = idx.build();
        assert_eq!(find(&t, "bad.example.com", "/"), None);
        let r = t
            .lookup(
                &Authority::parse(b"good.example.com").unwrap(),
                "/",
                &Method::GET,
                &HeaderMap::new(),
            )
            .expect("good route");
        assert_eq!(r.target.backends.len(), 2);
        assert_eq!(
            r.target.backends[1].settings.answer,
            Some(crate::routes::DirectAnswer::InvalidBackend)
        );
        let states: BTreeMap<_, _> = idx.httproute_states().collect();
        let bad = &states[&ObjectKey::new("t", "bad")];
        assert_eq!(bad.parents[0].accepted.reason, "UnsupportedValue");
        let good = &states[&ObjectKey::new("t", "good")];
        assert!(!good.parents[0].resolved_refs.status);
        assert_eq!(good.parents[0].resolved_refs.reason, "BackendNotFound");
    }

    #[test]
    fn path_prefix_is_element_wise() {
        let mut idx = Index::new(cfg());
        infra(&mut idx);
        idx.apply(&route(
            "p",
            json!({
            "parentRefs": [{"name": "gw"}], "hostnames": ["p.example.com"],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/foo/"}}],
                       "backendRefs": [{"name": "web", "port": 80}]}]}),
        ))
        .unwrap();
        let t = idx.build();
        assert!(find(&t, "p.example.com", "/foo").is_some());
        assert!(find(&t, "p.example.com", "/foo/bar").is_some());
        assert!(find(&t, "p.example.com", "/foobar").is_none());
    }

    #[test]
    fn a_cross_namespace_backend_ref_needs_a_reference_grant() {
        let mut idx = Index::new(cfg());
        infra(&mut idx);
        idx.apply(&mk_service(
            "other",
            "db",
            false,
            &[("http", 80, IntOrString::Int(8080))],
        ))
        .unwrap();
        idx.apply(&mk_slice(
            "other",
            "db-1",
            "db",
            &[("http", 8080)],
            &[("10.0.0.9", true)],
        ))
        .unwrap();
        idx.apply(&route(
            "x",
            json!({
            "parentRefs": [{"name": "gw"}], "hostnames": ["x.example.com"],
            "rules": [{"backendRefs": [{"name": "db", "namespace": "other", "port": 80}]}]}),
        ))
        .unwrap();
        let backend = |idx: &mut Index| {
            let t = idx.build();
            let r = t
                .lookup(
                    &Authority::parse(b"x.example.com").unwrap(),
                    "/",
                    &Method::GET,
                    &HeaderMap::new(),
                )
                .expect("route")
                .clone();
            let b = &r.target.backends[0];
            let eps: Vec<String> = b.endpoints.iter().map(|e| e.addr.to_string()).collect();
            let states: BTreeMap<_, _> = idx.httproute_states().collect();
            let reason = states[&ObjectKey::new("t", "x")].parents[0]
                .resolved_refs
                .reason;
            (eps, b.settings.answer.clone(), reason)
        };
        let (eps, answer, reason) = backend(&mut idx);
        assert!(eps.is_empty());
        assert_eq!(answer, Some(crate::routes::DirectAnswer::InvalidBackend));
        assert_eq!(reason, "RefNotPermitted");
        // A grant for Mappings does not admit HTTPRoutes; one for HTTPRoutes does.
        idx.apply(&mk_grant("other", "mappings", "Mapping", "t", None))
            .unwrap();
        assert_eq!(backend(&mut idx).2, "RefNotPermitted");
        idx.apply(&mk_grant("other", "routes", "HTTPRoute", "t", Some("db")))
            .unwrap();
        let (eps, answer, reason) = backend(&mut idx);
        assert_eq!(eps, vec!["10.0.0.9:8080".to_string()]);
        assert_eq!(answer, None);
        assert_eq!(reason, "ResolvedRefs");
    }
}

fn with_app_protocol(obj: Object, proto: &str) -> Object {
    let Object::Service(mut svc) = obj else {
        panic!("a Service")
    };
    if let Some(ports) = svc.spec.as_mut().and_then(|s| s.ports.as_mut()) {
        for p in ports {
            p.app_protocol = Some(proto.into());
        }
    }
    Object::Service(svc)
}

#[test]
fn app_protocol_and_mapping_grpc_choose_h2c_and_upgrades_follow_the_route() {
    let mut index = index_with(&[
        with_app_protocol(
            mk_service("ns", "grpc", true, &[http_port("g", 50051, "g")]),
            "kubernetes.io/grpc",
        ),
        mk_service("ns", "web", true, &[http_port("http", 80, "http")]),
        mk_mapping(
            "ns",
            "m-grpc",
            MappingSpec {
                grpc: Some(true),
                ..spec("g.example", "/", "web:80")
            },
        ),
        mk_mapping("ns", "m-via-port", spec("p.example", "/", "grpc:50051")),
        mk_mapping(
            "ns",
            "m-ws",
            MappingSpec {
                allow_upgrade: Some(vec!["WebSocket".into()]),
                ..spec("ws.example", "/", "web:80")
            },
        ),
    ]);
    let t = index.build();
    let settings = |host: &str| route_arc(&t, host).target.backends[0].settings.clone();
    let grpc = settings("grpc.ns.svc.cluster.local:50051");
    assert!(grpc.upstream_h2);
    assert_eq!(grpc.allow_upgrade, vec!["websocket".to_string()]);
    let web = settings("web.ns.svc.cluster.local:80");
    assert!(!web.upstream_h2, "no appProtocol: HTTP/1.1");
    assert_eq!(web.allow_upgrade, vec!["websocket".to_string()]);
    assert!(settings("g.example").upstream_h2, "grpc: true");
    assert!(
        settings("p.example").upstream_h2,
        "the Service port's appProtocol"
    );
    assert!(
        settings("g.example").allow_upgrade.is_empty(),
        "Mappings allow none by default"
    );
    assert_eq!(
        settings("ws.example").allow_upgrade,
        vec!["websocket".to_string()]
    );

    let bad = index
        .apply(&mk_mapping(
            "ns",
            "bad",
            MappingSpec {
                allow_upgrade: Some(vec!["web socket".into()]),
                ..spec("bad.example", "/", "web:80")
            },
        ))
        .expect_err("refused");
    assert!(bad.reason.contains("allow_upgrade[0]"), "{bad}");
}

fn mk_grant(ns: &str, name: &str, from_kind: &str, from_ns: &str, to_name: Option<&str>) -> Object {
    use crate::discovery::httproute::{GrantFrom, GrantTo, ReferenceGrant, ReferenceGrantSpec};
    let group = if from_kind == "Mapping" {
        "isthmus.dev"
    } else {
        "gateway.networking.k8s.io"
    };
    Object::ReferenceGrant(Box::new(ReferenceGrant {
        metadata: meta(ns, name, &[]),
        spec: ReferenceGrantSpec {
            from: vec![GrantFrom {
                group: group.into(),
                kind: from_kind.into(),
                namespace: from_ns.into(),
            }],
            to: vec![GrantTo {
                group: String::new(),
                kind: "Service".into(),
                name: to_name.map(str::to_string),
            }],
        },
    }))
}

fn state_of(index: &Index, ns: &str, name: &str) -> MappingState {
    index
        .mapping_states()
        .find(|(k, _)| *k.namespace == *ns && *k.name == *name)
        .map(|(_, s)| s)
        .expect("mapping state")
}

#[test]
fn a_mapping_from_another_namespace_cannot_take_over_a_service_fqdn() {
    let mut index = index_with(&[
        mk_service(
            "test",
            "podinfo",
            true,
            &[("", 9898, IntOrString::Int(9898))],
        ),
        mk_slice(
            "test",
            "podinfo-a",
            "podinfo",
            &[("", 9898)],
            &[("10.0.0.1", true)],
        ),
        mk_service("evil", "thief", false, &[("", 80, IntOrString::Int(80))]),
        mk_slice(
            "evil",
            "thief-a",
            "thief",
            &[("", 80)],
            &[("10.6.6.6", true)],
        ),
        // The tie-break by name ("mapping/..." < "service/...") would hand it the host.
        mk_mapping(
            "evil",
            "takeover",
            spec("podinfo.test.svc.cluster.local:9898", "/", "thief:80"),
        ),
        mk_mapping(
            "evil",
            "takeover-any-port",
            spec("podinfo.test.svc.cluster.local", "/", "thief:80"),
        ),
    ]);
    let t = index.build();
    for host in [
        "podinfo.test.svc.cluster.local:9898",
        "podinfo.test.svc.cluster.local",
    ] {
        assert_eq!(
            route_for(&t, host, "/"),
            Some((
                "service/test/podinfo:9898".to_string(),
                vec!["10.0.0.1:9898".to_string()]
            )),
            "{host}"
        );
    }
    let s = state_of(&index, "evil", "takeover");
    assert_eq!(s.reason, "HostnameNotOwned");
    assert!(
        s.accepted
            .as_ref()
            .is_err_and(|m| m.contains("Service test/podinfo")),
        "{s:?}"
    );
    let reported = index.take_mapping_refusals();
    assert_eq!(reported.len(), 2, "{reported:?}");
    assert!(index.take_mapping_refusals().is_empty(), "reported once");

    // The Service's own namespace may claim it.
    index
        .apply(&mk_mapping(
            "test",
            "own",
            spec(
                "podinfo.test.svc.cluster.local:9898",
                "/v2/",
                "podinfo:9898",
            ),
        ))
        .expect("valid");
    let t = index.build();
    assert_eq!(
        route_for(&t, "podinfo.test.svc.cluster.local:9898", "/v2/x").map(|r| r.0),
        Some("mapping/test/own".to_string())
    );
    assert_eq!(state_of(&index, "test", "own").reason, "Accepted");
}

#[test]
fn a_cross_namespace_service_routes_only_with_a_reference_grant() {
    let mut index = index_with(&[
        mk_service("test", "internal", false, &[("", 80, IntOrString::Int(80))]),
        mk_slice(
            "test",
            "internal-a",
            "internal",
            &[("", 80)],
            &[("10.0.0.7", true)],
        ),
        mk_mapping(
            "west",
            "api",
            spec("api.example.com", "/", "internal.test:80"),
        ),
    ]);
    let t = index.build();
    assert_eq!(route_for(&t, "api.example.com", "/"), None);
    let s = state_of(&index, "west", "api");
    assert_eq!(s.reason, "RefNotPermitted");
    assert_eq!(index.take_mapping_refusals().len(), 1);

    // A grant for HTTPRoutes, or for another Service, does not do.
    index
        .apply(&mk_grant("test", "routes", "HTTPRoute", "west", None))
        .expect("valid");
    index
        .apply(&mk_grant("test", "other", "Mapping", "west", Some("other")))
        .expect("valid");
    let t = index.build();
    assert_eq!(route_for(&t, "api.example.com", "/"), None);

    // The grant appears: the route appears; it goes: the route goes.
    index
        .apply(&mk_grant(
            "test",
            "west-mappings",
            "Mapping",
            "west",
            Some("internal"),
        ))
        .expect("valid");
    let t = index.build();
    assert_eq!(
        route_for(&t, "api.example.com", "/"),
        Some((
            "mapping/west/api".to_string(),
            vec!["10.0.0.7:80".to_string()]
        ))
    );
    assert_eq!(state_of(&index, "west", "api").reason, "Accepted");
    assert!(index.take_mapping_refusals().is_empty());
    index.delete(
        ObjectKind::ReferenceGrant,
        &ObjectKey::new("test", "west-mappings"),
    );
    let t = index.build();
    assert_eq!(route_for(&t, "api.example.com", "/"), None);
    assert_eq!(state_of(&index, "west", "api").reason, "RefNotPermitted");
    assert_eq!(
        index.take_mapping_refusals().len(),
        1,
        "refused again after being accepted: reported again"
    );
}

/// A table with every route of `index` built from scratch: what the
/// incremental builds must equal.
fn rebuilt(index: &Index) -> Vec<String> {
    let mut fresh = Index::new(index.cfg.clone());
    for (k, s) in &index.services {
        fresh.services.insert(k.clone(), s.clone());
        fresh.stale.insert(k.clone());
    }
    for (k, s) in &index.slices {
        fresh.insert(Converted {
            key: k.clone(),
            item: Some(Item::Slice(s.clone())),
            refused: Vec::new(),
        });
    }
    for (k, m) in &index.mappings {
        fresh.insert(Converted {
            key: k.clone(),
            item: Some(Item::Mapping(m.clone())),
            refused: Vec::new(),
        });
    }
    described(&fresh.build())
}

fn described(t: &RouteTable) -> Vec<String> {
    let mut v: Vec<String> = t
        .describe()
        .get("routes")
        .and_then(|r| r.as_array())
        .into_iter()
        .flatten()
        .map(|r| r.to_string())
        .collect();
    v.sort();
    v
}

fn host_arc(t: &RouteTable, host: &str) -> Arc<crate::routes::HostEntry> {
    t.host_entry(host).expect("host entry").clone()
}

#[test]
fn a_change_to_one_host_leaves_every_other_host_entry_shared() {
    let port = || [("", 80, IntOrString::Int(80))];
    let mut objects = Vec::new();
    for i in 0..300 {
        objects.push(mk_service("test", &format!("s{i}"), true, &port()));
        objects.push(mk_slice(
            "test",
            &format!("s{i}-1"),
            &format!("s{i}"),
            &[("", 80)],
            &[(&format!("10.0.{}.{}", i / 256, i % 256), true)],
        ));
    }
    let mut index = index_with(&objects);
    let t1 = index.build();
    let host = |i: usize| format!("s{i}.test.svc.cluster.local");
    index
        .apply(&mk_slice(
            "test",
            "s7-1",
            "s7",
            &[("", 80)],
            &[("10.9.0.1", true), ("10.9.0.2", true)],
        ))
        .expect("valid");
    let t2 = index.build();
    assert!(!Arc::ptr_eq(
        &host_arc(&t1, &host(7)),
        &host_arc(&t2, &host(7))
    ));
    assert_eq!(route_for(&t2, &host(7), "/").map(|r| r.1.len()), Some(2));
    assert_eq!(
        route_for(&t1, &host(7), "/").map(|r| r.1.len()),
        Some(1),
        "the table published before is not changed"
    );
    for i in (0..300).filter(|i| *i != 7) {
        assert!(
            Arc::ptr_eq(&host_arc(&t1, &host(i)), &host_arc(&t2, &host(i))),
            "{} was re-indexed",
            host(i)
        );
    }
    assert_eq!(t2.endpoint_count(), 301);
    assert_eq!(t2.route_count(), 300);
    assert_eq!(described(&t2), rebuilt(&index));
}

#[test]
fn deletes_and_unexporting_leave_the_host_index_as_a_fresh_build() {
    let port = || [("", 80, IntOrString::Int(80))];
    let mut index = index_with(&[
        mk_service("test", "a", true, &port()),
        mk_service("test", "b", true, &port()),
        mk_service("test", "c", true, &port()),
        mk_slice("test", "a-1", "a", &[("", 80)], &[("10.0.0.1", true)]),
        mk_slice("test", "b-1", "b", &[("", 80)], &[("10.0.0.2", true)]),
        mk_slice("test", "c-1", "c", &[("", 80)], &[("10.0.0.3", true)]),
        mk_mapping("test", "m", spec("m.example", "/", "b.test:80")),
    ]);
    let (a, b, c) = (
        "a.test.svc.cluster.local",
        "b.test.svc.cluster.local",
        "c.test.svc.cluster.local",
    );
    let t1 = index.build();
    assert_eq!(t1.route_count(), 4);

    // The export label goes: a's host leaves the index, a is "not exported".
    index
        .apply(&mk_service("test", "a", false, &port()))
        .expect("valid");
    let t2 = index.build();
    assert!(t2.host_entry(a).is_none());
    assert!(t2.is_unexported("test/a"));
    assert!(Arc::ptr_eq(&host_arc(&t1, c), &host_arc(&t2, c)));
    assert_eq!(t2.endpoint_count(), 2, "a's endpoint is no longer counted");
    assert_eq!(described(&t2), rebuilt(&index));

    // Deleting b's slice empties b's route and the Mapping's backend, not c.
    index.delete(ObjectKind::EndpointSlice, &ObjectKey::new("test", "b-1"));
    let t3 = index.build();
    assert_eq!(route_for(&t3, b, "/").map(|r| r.1.len()), Some(0));
    assert_eq!(route_for(&t3, "m.example", "/").map(|r| r.1.len()), Some(0));
    assert!(Arc::ptr_eq(&host_arc(&t2, c), &host_arc(&t3, c)));
    assert_eq!(t3.endpoint_count(), 1);
    assert_eq!(described(&t3), rebuilt(&index));

    // Deleting the Service b: its host goes; the Mapping stays (no backend).
    index.delete(ObjectKind::Service, &ObjectKey::new("test", "b"));
    let t4 = index.build();
    assert!(t4.host_entry(b).is_none());
    assert_eq!(route_for(&t4, "m.example", "/").map(|r| r.1.len()), Some(0));
    assert_eq!(t4.route_count(), 2);
    assert_eq!(described(&t4), rebuilt(&index));
    index.delete(ObjectKind::Mapping, &ObjectKey::new("test", "m"));
    let t5 = index.build();
    assert!(t5.host_entry("m.example").is_none());
    assert_eq!(t5.route_count(), 1);
    assert_eq!(index.take_gone_routes().len(), 3, "a, b and the Mapping");
}

#[test]
fn a_mapping_moving_between_hosts_leaves_the_old_host_and_splits_follow() {
    let port = || [("", 80, IntOrString::Int(80))];
    let mut index = index_with(&[
        mk_service("test", "a", false, &port()),
        mk_service("test", "b", false, &port()),
        mk_slice("test", "a-1", "a", &[("", 80)], &[("10.0.0.1", true)]),
        mk_slice("test", "b-1", "b", &[("", 80)], &[("10.0.0.2", true)]),
        mk_mapping("test", "m1", spec("one.example", "/", "a.test:80")),
        mk_mapping("test", "m2", spec("one.example", "/", "b.test:80")),
        mk_mapping("test", "other", spec("two.example", "/", "a.test:80")),
    ]);
    let t1 = index.build();
    let split = route_arc(&t1, "one.example");
    assert_eq!(split.target.backends.len(), 2);
    assert_eq!(&*split.name, "mapping/test/m1");

    // m1 moves to three.example: the split on one.example is m2 alone, now
    // named after it; two.example is untouched.
    index
        .apply(&mk_mapping(
            "test",
            "m1",
            spec("three.example", "/", "a.test:80"),
        ))
        .expect("valid");
    let t2 = index.build();
    let one = route_arc(&t2, "one.example");
    assert_eq!(&*one.name, "mapping/test/m2");
    assert_eq!(one.target.backends.len(), 1);
    assert_eq!(&*route_arc(&t2, "three.example").name, "mapping/test/m1");
    assert!(Arc::ptr_eq(
        &host_arc(&t1, "two.example"),
        &host_arc(&t2, "two.example")
    ));
    assert_eq!(described(&t2), rebuilt(&index));

    // An endpoint change of a rebuilds the Mappings sending to a, not m2's.
    index
        .apply(&mk_slice(
            "test",
            "a-1",
            "a",
            &[("", 80)],
            &[("10.0.0.1", true), ("10.0.0.9", true)],
        ))
        .expect("valid");
    let t3 = index.build();
    assert!(Arc::ptr_eq(
        &route_arc(&t2, "one.example"),
        &route_arc(&t3, "one.example")
    ));
    assert_eq!(
        route_for(&t3, "two.example", "/").map(|r| r.1.len()),
        Some(2)
    );
    assert_eq!(
        route_for(&t3, "three.example", "/").map(|r| r.1.len()),
        Some(2)
    );
    assert_eq!(described(&t3), rebuilt(&index));

    // An invalid version takes the Mapping's route away (status says why).
    index
        .apply(&mk_mapping(
            "test",
            "m1",
            spec("three.example", "nope", "a.test:80"),
        ))
        .expect_err("invalid prefix");
    let t4 = index.build();
    assert!(t4.host_entry("three.example").is_none());
    assert_eq!(described(&t4), rebuilt(&index));
}

#[test]
fn egress_rebuilds_only_changed_services_and_the_roots_that_split_to_them() {
    let port = || [("", 80, IntOrString::Int(80))];
    let mut index = index_with(&[
        mk_service("test", "a", false, &port()),
        mk_service("test", "b", false, &port()),
        mk_service("test", "c", false, &port()),
        mk_slice("test", "a-1", "a", &[("", 80)], &[("10.0.0.1", true)]),
        mk_slice("test", "b-1", "b", &[("", 80)], &[("10.0.0.2", true)]),
        mk_slice("test", "c-1", "c", &[("", 80)], &[("10.0.0.3", true)]),
        Object::TrafficSplit(Box::new(crate::discovery::trafficsplit::TrafficSplit {
            api_version: "split.smi-spec.io/v1alpha1".into(),
            metadata: meta("test", "a", &[]),
            spec: serde_json::json!({"service": "a", "backends": [{"service": "b", "weight": 1}]}),
        })),
    ]);
    index.build();
    let e1 = index.take_egress().expect("egress");
    let name = |s: &str| format!("{s}.test.svc.cluster.local");
    // An endpoint change of b: b and the root a (split to b) are rebuilt, c is not.
    index
        .apply(&mk_slice(
            "test",
            "b-1",
            "b",
            &[("", 80)],
            &[("10.0.0.2", true), ("10.0.0.4", true)],
        ))
        .expect("valid");
    index.build();
    let e2 = index.take_egress().expect("egress");
    assert!(Arc::ptr_eq(
        &host_arc(&e1, &name("c")),
        &host_arc(&e2, &name("c"))
    ));
    assert!(!Arc::ptr_eq(
        &host_arc(&e1, &name("b")),
        &host_arc(&e2, &name("b"))
    ));
    assert_eq!(route_for(&e2, &name("a"), "/").map(|r| r.1.len()), Some(2));
    assert_eq!(route_for(&e2, &name("c"), "/").map(|r| r.1.len()), Some(1));
    // The split goes: a routes to itself again.
    index.delete(ObjectKind::TrafficSplit, &ObjectKey::new("test", "a"));
    index.build();
    let e3 = index.take_egress().expect("egress");
    assert_eq!(
        route_for(&e3, &name("a"), "/").map(|r| r.1),
        Some(vec!["10.0.0.1:80".to_string()])
    );
    // A deleted Service leaves the egress table.
    index.delete(ObjectKind::Service, &ObjectKey::new("test", "c"));
    index.build();
    let e4 = index.take_egress().expect("egress");
    assert!(e4.host_entry(&name("c")).is_none());
    assert_eq!(e4.route_count(), 2, "a and b, one port each");
}

#[test]
fn mappings_with_weights_split_egress_incrementally_and_a_trafficsplit_keeps_its_root() {
    let port = || [("", 80, IntOrString::Int(80))];
    let weighted = |name: &str, service: &str, weight: u32| {
        mk_mapping(
            "test",
            name,
            MappingSpec {
                weight: Some(weight),
                ..spec("a.test.svc.cluster.local", "/", service)
            },
        )
    };
    let mut index = index_with(&[
        mk_service("test", "a", false, &port()),
        mk_service("test", "b", false, &port()),
        mk_slice("test", "a-1", "a", &[("", 80)], &[("10.0.0.1", true)]),
        mk_slice("test", "b-1", "b", &[("", 80)], &[("10.0.0.2", true)]),
        weighted("to-a", "a", 70),
        weighted("to-b", "b", 30),
    ]);
    index.build();
    let e1 = index.take_egress().expect("egress");
    let a = "a.test.svc.cluster.local:80";
    let r = e1
        .lookup(
            &Authority::parse(a.as_bytes()).unwrap(),
            "/",
            &Method::GET,
            &HeaderMap::new(),
        )
        .expect("route");
    assert_eq!(
        &*r.name, "mapping/test/to-a:80",
        "the Mapping on / replaces a's own route"
    );
    let weights: Vec<(String, u32)> = r
        .target
        .backends
        .iter()
        .map(|b| (b.service.to_string(), b.weight))
        .collect();
    assert_eq!(
        weights,
        vec![("test/a:80".to_string(), 70), ("test/b:80".to_string(), 30)]
    );
    // A backend's endpoints change: the root is rebuilt with them.
    index
        .apply(&mk_slice(
            "test",
            "b-1",
            "b",
            &[("", 80)],
            &[("10.0.0.2", true), ("10.0.0.4", true)],
        ))
        .expect("valid");
    index.build();
    let e2 = index.take_egress().expect("egress");
    assert_eq!(
        route_for(&e2, a, "/").map(|r| r.1),
        Some(vec![
            "10.0.0.1:80".to_string(),
            "10.0.0.2:80".to_string(),
            "10.0.0.4:80".to_string()
        ])
    );
    // A TrafficSplit on the same root wins the catch-all; the Mapping is reported.
    index
        .apply(&Object::TrafficSplit(Box::new(
            crate::discovery::trafficsplit::TrafficSplit {
                api_version: "split.smi-spec.io/v1alpha2".into(),
                metadata: meta("test", "a", &[]),
                spec: serde_json::json!({"service": "a", "backends": [{"service": "b", "weight": 1}]}),
            },
        )))
        .expect("valid");
    index.build();
    let e3 = index.take_egress().expect("egress");
    assert_eq!(
        route_for(&e3, a, "/").map(|r| r.0),
        Some("split/test/a:80".into())
    );
    let problems = index.take_split_problems();
    assert!(
        problems
            .iter()
            .any(|p| p.kind == "Mapping" && p.reason.contains("TrafficSplit test/a")),
        "{problems:?}"
    );
    // The split and the Mappings go: a routes to itself again.
    index.delete(ObjectKind::TrafficSplit, &ObjectKey::new("test", "a"));
    index.delete(ObjectKind::Mapping, &ObjectKey::new("test", "to-a"));
    index.delete(ObjectKind::Mapping, &ObjectKey::new("test", "to-b"));
    index.build();
    let e4 = index.take_egress().expect("egress");
    assert_eq!(
        route_for(&e4, a, "/"),
        Some(("egress/test/a:80".into(), vec!["10.0.0.1:80".to_string()]))
    );
    assert_eq!(e4.route_count(), 2, "a and b, one port each");
}

/// Keys of one namespace share its name's allocation, and the names of
/// namespaces whose objects are all gone are forgotten as new ones come.
#[test]
fn namespace_names_are_shared_and_forgotten_when_unused() {
    let mut index = Index::new(cfg());
    let port = [http_port("http", 80, "http")];
    for i in 0..3 {
        index
            .apply(&mk_service("shared", &format!("s{i}"), true, &port))
            .expect("service");
    }
    index.build();
    let keys: Vec<&ObjectKey> = index.services.keys().collect();
    assert!(Arc::ptr_eq(&keys[0].namespace, &keys[1].namespace));
    assert!(Arc::ptr_eq(&keys[1].namespace, &keys[2].namespace));

    // Namespaces come and go (a CI cluster's test runs): the set stays
    // within twice the namespaces in use.
    for round in 0..4 {
        for i in 0..100 {
            let ns = format!("run-{round}-{i}");
            index
                .apply(&mk_service(&ns, "s", true, &port))
                .expect("service");
        }
        index.build();
        for i in 0..100 {
            let ns = format!("run-{round}-{i}");
            index.delete(ObjectKind::Service, &ObjectKey::new(&ns, "s"));
        }
        index.build();
    }
    assert!(
        index.namespaces.len() <= 2 * 101,
        "{} namespace names kept for 1 in use",
        index.namespaces.len()
    );
    assert!(index.namespaces.contains("shared"));
}
