//! Route takeover by Mapping, end to end: a Mapping may claim an exported
//! Service's FQDN only from that Service's namespace, and may route to a
//! Service in another namespace only with a ReferenceGrant there. Real mTLS
//! requests through the gateway, real upstreams; the kube source against the
//! API-server double (status conditions), and the file source.

use isthmus::config::{Discovery, KubernetesDiscovery};
use isthmus::discovery::crd::Mapping;
use isthmus_tests::apiserver::ApiServer;
use isthmus_tests::manifests::{exported_service, mapping, service, slice, typed};
use isthmus_tests::{eventually, Client, Harness, Upstream};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

const PODINFO: &str = "podinfo.test.svc.cluster.local:9898";
const MAPPING_ERRORS: &str = "isthmus_discovery_errors_total{kind=\"mapping\"}";

/// A Mapping in `evil` that claims podinfo's FQDN for its own Service `thief`.
const TAKEOVER: &str = "    hostname: podinfo.test.svc.cluster.local:9898\n    prefix: /\n    service: thief:80\n    allowed_identities: [\"*\"]\n";
/// A Mapping in `west` routing to `internal` in namespace `test`.
const CROSS: &str = "    hostname: api.example.com\n    prefix: /\n    service: internal.test:80\n";

async fn start(api: &ApiServer) -> Harness {
    let kubeconfig =
        std::env::temp_dir().join(format!("isthmus-kubeconfig-{}.yaml", api.addr().port()));
    std::fs::write(&kubeconfig, api.kubeconfig_yaml()).expect("write kubeconfig");
    let h = Harness::start_with(&[], |cfg| {
        cfg.discovery = Discovery::Kubernetes(KubernetesDiscovery {
            kubeconfig: Some(kubeconfig),
            ..Default::default()
        });
    })
    .await;
    eventually("gateway ready (every watch listed)", || async {
        h.admin_get("/ready").await.0 == 200
    })
    .await;
    h
}

fn apply_service(api: &ApiServer, ns: &str, name: &str, exported: bool, up: &Upstream) {
    api.apply(&typed::<Service>(&service(ns, name, exported, 80)));
    api.apply(&typed::<EndpointSlice>(&slice(
        ns,
        &format!("{name}-1"),
        name,
        up.addr,
        true,
    )));
}

/// `(status, upstream)` of a GET through the gateway.
async fn answer(c: &Client, host: &str) -> (u16, Option<String>) {
    match c.get(host, "/").await {
        Ok(r) => (r.status, r.upstream()),
        Err(_) => (0, None),
    }
}

async fn wait_answer(c: &Client, host: &str, want: (u16, Option<&str>)) {
    eventually(&format!("{host} answers {want:?}"), || async {
        let (s, up) = answer(c, host).await;
        (s, up.as_deref()) == want
    })
    .await;
}

/// The Mapping's `Accepted` condition once it has `status` and `reason`.
async fn wait_condition(
    api: &ApiServer,
    ns: &str,
    name: &str,
    status: &str,
    reason: &str,
) -> Value {
    let get = || {
        api.get_json("mappings", ns, name).and_then(|m| {
            m["status"]["conditions"]
                .as_array()
                .and_then(|c| c.first().cloned())
        })
    };
    eventually(
        &format!("Mapping {ns}/{name} gets Accepted={status} {reason}"),
        || {
            let c = get();
            async move { c.is_some_and(|c| c["status"] == status && c["reason"] == reason) }
        },
    )
    .await;
    let c = get().expect("condition");
    assert_eq!(c["type"], "Accepted");
    c
}

fn grant(from_ns: &str, to_name: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": "allow-west", "namespace": "test"},
        "spec": {
            "from": [{"group": "isthmus.dev", "kind": "Mapping", "namespace": from_ns}],
            "to": [{"group": "", "kind": "Service", "name": to_name}],
        },
    })
}

#[tokio::test]
async fn a_mapping_from_another_namespace_cannot_take_over_an_exported_service() {
    let api = ApiServer::start().await;
    let podinfo = Upstream::start("podinfo").await;
    let thief = Upstream::start("thief").await;
    api.apply(&typed::<Service>(&service("test", "podinfo", true, 9898)));
    api.apply(&typed::<EndpointSlice>(&slice(
        "test",
        "podinfo-1",
        "podinfo",
        podinfo.addr,
        true,
    )));
    apply_service(&api, "evil", "thief", false, &thief);
    let h = start(&api).await;
    let c = h.client("peer-west");
    wait_answer(&c, PODINFO, (200, Some("podinfo"))).await;
    let errors = h.metric_or_absent(MAPPING_ERRORS).await;

    api.apply(&typed::<Mapping>(&mapping("evil", "takeover", TAKEOVER)));
    // A valid Mapping of the same namespace, applied after: once it routes,
    // the takeover Mapping has been through a build too.
    api.apply(&typed::<Mapping>(&mapping(
        "evil",
        "own",
        "    hostname: thief.example\n    prefix: /\n    service: thief:80\n",
    )));
    wait_answer(&c, "thief.example", (200, Some("thief"))).await;
    let cond = wait_condition(&api, "evil", "takeover", "False", "HostnameNotOwned").await;
    assert!(
        cond["message"]
            .as_str()
            .is_some_and(|m| m.contains("Service test/podinfo")),
        "{cond}"
    );
    for _ in 0..5 {
        assert_eq!(
            answer(&c, PODINFO).await,
            (200, Some("podinfo".to_string())),
            "the exported Service keeps its host"
        );
    }
    // The Service's own allowed identities still apply (the Mapping's "*" does not).
    h.issue_cert(
        "peer-south",
        &isthmus::tls::dev::LeafSpec::peer_uri("spiffe://south.example/ns/default/sa/x"),
    );
    assert_eq!(answer(&h.client("peer-south"), PODINFO).await.0, 403);
    h.wait_metric(MAPPING_ERRORS, errors + 1.0).await;
}

#[tokio::test]
async fn a_cross_namespace_mapping_routes_only_while_a_reference_grant_allows_it() {
    let api = ApiServer::start().await;
    let internal = Upstream::start("internal").await;
    apply_service(&api, "test", "internal", false, &internal);
    api.apply(&typed::<Mapping>(&mapping("west", "api", CROSS)));
    let h = start(&api).await;
    let c = h.client("peer-west");

    let cond = wait_condition(&api, "west", "api", "False", "RefNotPermitted").await;
    assert!(
        cond["message"]
            .as_str()
            .is_some_and(|m| m.contains("service test/internal")),
        "{cond}"
    );
    assert_eq!(answer(&c, "api.example.com").await.0, 404);

    // A grant for another namespace's Mappings does not do.
    api.apply_json("referencegrants", grant("east", "internal"));
    api.apply(&typed::<Mapping>(&mapping(
        "west",
        "barrier",
        "    hostname: barrier.example\n    prefix: /\n    service: barrier:80\n",
    )));
    eventually("the barrier Mapping is seen", || async {
        api.get_json("mappings", "west", "barrier")
            .is_some_and(|m| !m["status"]["conditions"].is_null())
    })
    .await;
    assert_eq!(answer(&c, "api.example.com").await.0, 404);

    // The grant appears: the route appears.
    api.apply_json("referencegrants", grant("west", "internal"));
    wait_answer(&c, "api.example.com", (200, Some("internal"))).await;
    wait_condition(&api, "west", "api", "True", "Accepted").await;

    // The grant goes: the route goes.
    assert!(api.delete_json("referencegrants", "test", "allow-west"));
    wait_answer(&c, "api.example.com", (404, None)).await;
    wait_condition(&api, "west", "api", "False", "RefNotPermitted").await;
}

#[tokio::test]
async fn the_file_source_applies_the_same_rules() {
    let podinfo = Upstream::start("podinfo").await;
    let thief = Upstream::start("thief").await;
    let internal = Upstream::start("internal").await;
    let svc = |ns: &str, name: &str, up: &Upstream| {
        format!(
            "{}---\n{}",
            service(ns, name, false, 80),
            slice(ns, &format!("{name}-1"), name, up.addr, true)
        )
    };
    let h = Harness::start(&[
        (
            "podinfo.yaml",
            exported_service("test", "podinfo", 9898, podinfo.addr),
        ),
        ("thief.yaml", svc("evil", "thief", &thief)),
        ("internal.yaml", svc("test", "internal", &internal)),
        ("takeover.yaml", mapping("evil", "takeover", TAKEOVER)),
        ("cross.yaml", mapping("west", "api", CROSS)),
    ])
    .await;
    let c = h.client("peer-west");
    assert_eq!(
        answer(&c, PODINFO).await,
        (200, Some("podinfo".to_string()))
    );
    assert_eq!(answer(&c, "api.example.com").await.0, 404);
    assert!(
        h.metric(MAPPING_ERRORS).await >= 2.0,
        "both refusals counted"
    );

    // A ReferenceGrant manifest opens the cross-namespace route; removing it closes it.
    let grant_yaml = "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata:\n  name: allow-west\n  namespace: test\nspec:\n  from:\n    - {group: isthmus.dev, kind: Mapping, namespace: west}\n  to:\n    - {group: \"\", kind: Service, name: internal}\n";
    h.write_manifest("grant.yaml", grant_yaml);
    wait_answer(&c, "api.example.com", (200, Some("internal"))).await;
    std::fs::remove_file(h.manifests().join("grant.yaml")).expect("remove grant");
    wait_answer(&c, "api.example.com", (404, None)).await;
    assert_eq!(
        answer(&c, PODINFO).await,
        (200, Some("podinfo".to_string()))
    );
}
