//! File discovery reloads: edits become routable without a restart; a broken
//! file is reported and its last good objects stay in force.

use isthmus_tests::manifests::{exported_service, service};
use isthmus_tests::{eventually, Harness, Upstream};

#[tokio::test]
async fn new_service_file_becomes_routable_and_removal_unroutable() {
    let first = Upstream::start("first").await;
    let h = Harness::start(&[(
        "first.yaml",
        exported_service("test", "first", 80, first.addr),
    )])
    .await;
    let c = h.client("peer-west");
    assert_eq!(c.status("second.test.svc.cluster.local", "/").await, 404);

    let second = Upstream::start("second").await;
    h.write_manifest(
        "second.yaml",
        &exported_service("test", "second", 80, second.addr),
    );
    eventually("second becomes routable", || async {
        c.get("second.test.svc.cluster.local", "/")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    let r = c
        .get("second.test.svc.cluster.local", "/")
        .await
        .expect("req");
    assert_eq!(r.upstream().as_deref(), Some("second"));

    std::fs::remove_file(h.manifests().join("second.yaml")).expect("remove");
    eventually("second becomes unroutable", || async {
        c.get("second.test.svc.cluster.local", "/")
            .await
            .is_ok_and(|r| r.status == 404)
    })
    .await;
    assert_eq!(c.status("first.test.svc.cluster.local", "/").await, 200);
}

#[tokio::test]
async fn invalid_file_is_reported_and_last_good_objects_stay() {
    let first = Upstream::start("first").await;
    let second = Upstream::start("second").await;
    let h = Harness::start(&[
        (
            "first.yaml",
            exported_service("test", "first", 80, first.addr),
        ),
        (
            "second.yaml",
            exported_service("test", "second", 80, second.addr),
        ),
    ])
    .await;
    let c = h.client("peer-west");
    let errors = "isthmus_discovery_errors_total{kind=\"file\"}";
    let before = h.metric_or_absent(errors).await;

    // A brand-new broken file: reported, nothing else changes.
    h.write_manifest(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: [not, a, map\n",
    );
    eventually("broken file counted", || async {
        h.metric_or_absent(errors).await >= before + 1.0
    })
    .await;

    // Breaking an existing file keeps its last good objects: "second" still routes.
    h.write_manifest(
        "second.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: second\nspec:\n  ports: 12\n",
    );
    eventually("second file refused", || async {
        h.metric_or_absent(errors).await >= before + 2.0
    })
    .await;
    for host in [
        "first.test.svc.cluster.local",
        "second.test.svc.cluster.local",
    ] {
        let r = c.get(host, "/").await.expect("req");
        assert_eq!(r.status, 200, "{host} keeps serving");
    }

    // Fixing it applies the new content (no longer exported → 404).
    h.write_manifest("second.yaml", &service("test", "second", false, 80));
    eventually("fixed file applied", || async {
        c.get("second.test.svc.cluster.local", "/")
            .await
            .is_ok_and(|r| r.status == 404)
    })
    .await;
    assert_eq!(c.status("first.test.svc.cluster.local", "/").await, 200);
}

#[tokio::test]
async fn invalid_mapping_is_skipped_and_others_route() {
    let (h, _up) = Harness::podinfo().await;
    let c = h.client("peer-west");
    let errors = "isthmus_discovery_errors_total{kind=\"mapping\"}";
    h.write_manifest(
        "mappings.yaml",
        "apiVersion: isthmus.dev/v1alpha1\nkind: Mapping\nmetadata: {name: bad, namespace: test}\nspec: {hostname: bad.example, prefix: nope, service: podinfo}\n---\n\
         apiVersion: isthmus.dev/v1alpha1\nkind: Mapping\nmetadata: {name: good, namespace: test}\nspec: {hostname: good.example, prefix: /, service: podinfo}\n",
    );
    eventually("good mapping routable", || async {
        c.get("good.example", "/")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    eventually("mapping error counted", || async {
        h.metric_or_absent(errors).await >= 1.0
    })
    .await;
    assert_eq!(c.status("bad.example", "/").await, 404);
    assert_eq!(
        c.status("podinfo.test.svc.cluster.local:9898", "/").await,
        200
    );
}
