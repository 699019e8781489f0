//! Optional kinds end to end: CRD-backed kinds (Mapping, TrafficSplit, the
//! Gateway API's) are watched only where their CRD is installed. Against an
//! API-server double that hides them, the gateway becomes ready and serves
//! exported Services; when a CRD "appears", its kind starts routing.

use isthmus::config::{Discovery, KubernetesDiscovery};
use isthmus::discovery::crd::Mapping;
use isthmus_tests::apiserver::ApiServer;
use isthmus_tests::manifests::{mapping, service, slice, typed};
use isthmus_tests::{eventually, Harness, Upstream};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

const OPTIONAL: &[&str] = &[
    "mappings",
    "trafficsplits",
    "httproutes",
    "gateways",
    "gatewayclasses",
];

async fn start(api: &ApiServer) -> Harness {
    let kubeconfig =
        std::env::temp_dir().join(format!("isthmus-kubeconfig-{}.yaml", api.addr().port()));
    std::fs::write(&kubeconfig, api.kubeconfig_yaml()).expect("write kubeconfig");
    Harness::start_with(&[], |cfg| {
        cfg.discovery = Discovery::Kubernetes(KubernetesDiscovery {
            kubeconfig: Some(kubeconfig),
            crd_recheck_interval_ms: 100,
            ..Default::default()
        });
    })
    .await
}

#[tokio::test]
async fn ready_without_any_crd_and_picks_up_a_crd_that_appears() {
    let api = ApiServer::start().await;
    for plural in OPTIONAL {
        api.set_served(plural, false);
    }
    let up = Upstream::start("podinfo").await;
    let internal = Upstream::start("internal").await;
    api.apply(&typed::<Service>(&service("test", "podinfo", true, 9898)));
    api.apply(&typed::<EndpointSlice>(&slice(
        "test",
        "podinfo-1",
        "podinfo",
        up.addr,
        true,
    )));
    api.apply(&typed::<Service>(&service("test", "internal", false, 80)));
    api.apply(&typed::<EndpointSlice>(&slice(
        "test",
        "internal-1",
        "internal",
        internal.addr,
        true,
    )));
    // Stored but not served: the "CRD" is not installed yet.
    api.apply(&typed::<Mapping>(&mapping(
        "test",
        "api",
        "    hostname: api.example.com\n    prefix: /\n    service: internal:80\n",
    )));

    let h = start(&api).await;
    eventually("ready with no CRD installed", || async {
        h.admin_get("/ready").await.0 == 200
    })
    .await;
    let c = h.client("peer-west");
    let r = c
        .get("podinfo.test.svc.cluster.local:9898", "/")
        .await
        .expect("exported Service");
    assert_eq!(r.status, 200);
    assert_eq!(
        c.get("api.example.com", "/").await.expect("answer").status,
        404
    );
    assert_eq!(
        api.watch_count_of::<Mapping>(),
        0,
        "no watch of a missing CRD"
    );

    // The Mapping CRD is installed: the watch starts and the Mapping routes.
    api.set_served("mappings", true);
    eventually("the Mapping routes once its CRD appears", || async {
        c.get("api.example.com", "/")
            .await
            .is_ok_and(|r| r.status == 200 && r.upstream().as_deref() == Some("internal"))
    })
    .await;
    assert_eq!(h.admin_get("/ready").await.0, 200);
    // Exported Services kept serving throughout.
    let r = c
        .get("podinfo.test.svc.cluster.local:9898", "/")
        .await
        .expect("exported Service");
    assert_eq!(r.status, 200);
}
