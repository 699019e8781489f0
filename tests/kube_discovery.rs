//! Kubernetes discovery end to end: the gateway's kube-rs watchers against the
//! API-server double over real HTTP, and real mTLS requests through the gateway.

use isthmus::config::{Discovery, KubernetesDiscovery};
use isthmus::discovery::crd::Mapping;
use isthmus_tests::apiserver::ApiServer;
use isthmus_tests::manifests::{mapping, service, slice, slice_many, typed};
use isthmus_tests::{eventually, Client, Harness, Upstream};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

const PODINFO: &str = "podinfo.test.svc.cluster.local:9898";

async fn start(api: &ApiServer, namespaces: &[&str]) -> Harness {
    let kubeconfig =
        std::env::temp_dir().join(format!("isthmus-kubeconfig-{}.yaml", api.addr().port()));
    std::fs::write(&kubeconfig, api.kubeconfig_yaml()).expect("write kubeconfig");
    let h = Harness::start_with(&[], |cfg| {
        cfg.discovery = Discovery::Kubernetes(KubernetesDiscovery {
            kubeconfig: Some(kubeconfig),
            label_selector: None,
            ..Default::default()
        });
        cfg.namespaces = namespaces.iter().map(|s| s.to_string()).collect();
    })
    .await;
    eventually("gateway ready (every watch listed)", || async {
        h.admin_get("/ready").await.0 == 200
    })
    .await;
    h
}

fn apply_service(api: &ApiServer, ns: &str, name: &str, exported: bool, port: u16) {
    api.apply(&typed::<Service>(&service(ns, name, exported, port)));
}

fn apply_slice(api: &ApiServer, ns: &str, name: &str, svc: &str, up: &Upstream, ready: bool) {
    api.apply(&typed::<EndpointSlice>(&slice(
        ns, name, svc, up.addr, ready,
    )));
}

async fn status_of(c: &Client, host: &str) -> u16 {
    c.get(host, "/").await.map(|r| r.status).unwrap_or(0)
}

async fn wait_status(c: &Client, host: &str, want: u16) {
    eventually(&format!("{host} answers {want}"), || async {
        status_of(c, host).await == want
    })
    .await;
}

#[tokio::test]
async fn services_and_endpointslices_add_change_delete() {
    let api = ApiServer::start().await;
    let up = Upstream::start("podinfo").await;
    let up2 = Upstream::start("podinfo-2").await;
    apply_service(&api, "test", "podinfo", true, 9898);
    apply_slice(&api, "test", "podinfo-1", "podinfo", &up, true);
    let h = start(&api, &[]).await;
    let c = h.client("peer-west");
    assert_eq!(status_of(&c, PODINFO).await, 200, "synced before ready");

    // Readiness flips: the only endpoint not ready → 503; ready again → 200.
    apply_slice(&api, "test", "podinfo-1", "podinfo", &up, false);
    wait_status(&c, PODINFO, 503).await;
    apply_slice(&api, "test", "podinfo-1", "podinfo", &up, true);
    wait_status(&c, PODINFO, 200).await;

    // A second slice adds an endpoint on another port, resolved by port name.
    apply_slice(&api, "test", "podinfo-2", "podinfo", &up2, true);
    eventually("both endpoints serve", || async {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            if let Ok(r) = c.get(PODINFO, "/").await {
                seen.extend(r.upstream());
            }
        }
        seen.len() == 2
    })
    .await;

    // Un-exporting (label removed) hides it; deleting it removes it.
    apply_service(&api, "test", "podinfo", false, 9898);
    wait_status(&c, PODINFO, 404).await;
    apply_service(&api, "test", "podinfo", true, 9898);
    wait_status(&c, PODINFO, 200).await;
    api.delete::<Service>("test", "podinfo");
    wait_status(&c, PODINFO, 404).await;
}

#[tokio::test]
async fn mappings_route_and_invalid_ones_get_accepted_false() {
    let api = ApiServer::start().await;
    let up = Upstream::start("internal").await;
    apply_service(&api, "test", "internal", false, 80);
    apply_slice(&api, "test", "internal-1", "internal", &up, true);
    let h = start(&api, &[]).await;
    let c = h.client("peer-west");

    api.apply(&typed::<Mapping>(&mapping(
        "test",
        "good",
        "    hostname: api.example.com\n    prefix: /internal/\n    service: internal:80\n",
    )));
    api.apply(&typed::<Mapping>(&mapping(
        "test",
        "bad",
        "    hostname: bad.example.com\n    prefix: nope\n    service: internal:80\n",
    )));
    eventually("good mapping routes", || async {
        c.get("api.example.com", "/internal/x")
            .await
            .is_ok_and(|r| r.status == 200 && r.json()["path"] == "/x")
    })
    .await;
    let condition = |name: &'static str| {
        let api = api.clone();
        move || {
            api.get_json("mappings", "test", name).and_then(|m| {
                m["status"]["conditions"]
                    .as_array()
                    .and_then(|c| c.first().cloned())
            })
        }
    };
    eventually("bad mapping gets Accepted=False", || {
        let c = condition("bad")();
        async move { c.is_some_and(|c| c["status"] == "False") }
    })
    .await;
    let bad = condition("bad")().expect("condition");
    assert_eq!(bad["type"], "Accepted");
    assert_eq!(bad["reason"], "Invalid");
    assert!(
        bad["message"]
            .as_str()
            .is_some_and(|m| m.contains("prefix \"nope\" must start with '/'")),
        "{bad}"
    );
    eventually("good mapping gets Accepted=True", || {
        let c = condition("good")();
        async move { c.is_some_and(|c| c["status"] == "True" && c["observedGeneration"] == 1) }
    })
    .await;
    assert_eq!(status_of(&c, "bad.example.com").await, 404);

    // Fixing the Mapping routes it and flips the condition, with the new generation.
    api.apply(&typed::<Mapping>(&mapping(
        "test",
        "bad",
        "    hostname: bad.example.com\n    prefix: /\n    service: internal:80\n",
    )));
    wait_status(&c, "bad.example.com", 200).await;
    eventually("fixed mapping accepted at generation 2", || {
        let c = condition("bad")();
        async move { c.is_some_and(|c| c["status"] == "True" && c["observedGeneration"] == 2) }
    })
    .await;
    // Status writes settle: no write loop from our own status updates. The
    // generation-2 patch comes back to the gateway as a MODIFIED event; a probe
    // Mapping applied after it is behind that event on the same watch, so once
    // the probe routes, the event was handled, and once the probe's status is
    // written, the writer has passed over every desired status computed since
    // ("test/bad" sorts before "test/probe" in its pass). A loop would have
    // patched "bad" again by then: the only new patch must be the probe's.
    let patches = api.status_patches();
    api.apply(&typed::<Mapping>(&mapping(
        "test",
        "probe",
        "    hostname: probe.example.com\n    prefix: /\n    service: internal:80\n",
    )));
    wait_status(&c, "probe.example.com", 200).await;
    eventually("probe mapping gets Accepted=True", || {
        let c = condition("probe")();
        async move { c.is_some_and(|c| c["status"] == "True") }
    })
    .await;
    assert_eq!(
        api.status_patches(),
        patches + 1,
        "only the probe's status was written: no write loop"
    );

    api.delete::<Mapping>("test", "good");
    wait_status(&c, "api.example.com", 404).await;
}

#[tokio::test]
async fn watch_drop_and_410_relist_lose_nothing() {
    let api = ApiServer::start().await;
    let up = Upstream::start("podinfo").await;
    for name in ["keep", "gone"] {
        apply_service(&api, "test", name, true, 80);
        apply_slice(&api, "test", &format!("{name}-1"), name, &up, true);
    }
    let h = start(&api, &[]).await;
    let c = h.client("peer-west");
    let (keep, gone, late) = (
        "keep.test.svc.cluster.local",
        "gone.test.svc.cluster.local",
        "late.test.svc.cluster.local",
    );

    // Dropped mid-stream: resumes from the last resourceVersion, nothing lost.
    let lists = api.list_count();
    api.drop_watches();
    apply_service(&api, "test", "late", true, 80);
    apply_slice(&api, "test", "late-1", "late", &up, true);
    wait_status(&c, late, 200).await;
    assert_eq!(
        api.list_count(),
        lists,
        "a dropped watch resumes without re-listing"
    );

    // Outage: the API server goes away; the last table keeps serving and /ready stays 200.
    api.stop().await;
    api.delete::<Service>("test", "gone");
    api.compact();
    for _ in 0..3 {
        assert_eq!(
            status_of(&c, gone).await,
            200,
            "last good table serves during the outage"
        );
        assert_eq!(h.admin_get("/ready").await.0, 200);
    }
    eventually("watch errors visible in /metrics", || async {
        h.metric_or_absent("isthmus_discovery_watch_errors_total{kind=\"service\"}")
            .await
            > 0.0
    })
    .await;
    // ... and on the admin page's data: the last error and a recent error.
    let (_, status) = h.admin_get("/status.json").await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let d = &status["discovery"];
    assert_eq!(
        (&d["source"], &d["synced"]),
        (&"kubernetes".into(), &true.into())
    );
    assert!(
        d["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("watch failed")),
        "{d:#}"
    );
    assert!(status["recent_errors"].as_array().is_some_and(|e| e
        .iter()
        .any(|e| e["source"] == "discovery" && e["reason"] == "watch")));

    // Back: the stale resourceVersion gets 410, the gateway re-lists, and the
    // deletion that happened in the gap is applied.
    api.restart().await;
    wait_status(&c, gone, 404).await;
    assert!(api.list_count() > lists, "re-listed after 410");
    assert_eq!(status_of(&c, keep).await, 200);
    assert_eq!(status_of(&c, late).await, 200);
}

#[tokio::test]
async fn not_ready_until_the_api_server_answers() {
    let api = ApiServer::start().await;
    let up = Upstream::start("podinfo").await;
    apply_service(&api, "test", "podinfo", true, 9898);
    apply_slice(&api, "test", "podinfo-1", "podinfo", &up, true);
    api.stop().await;
    let kubeconfig_dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.kubeconfig(kubeconfig_dir.path());
    let h = Harness::start_with(&[], |cfg| {
        cfg.discovery = Discovery::Kubernetes(KubernetesDiscovery {
            kubeconfig: Some(kubeconfig),
            label_selector: None,
            ..Default::default()
        });
    })
    .await;
    // No table until every watch has listed.
    eventually("a failed list attempt", || async {
        h.metric_or_absent("isthmus_discovery_watch_errors_total{kind=\"service\"}")
            .await
            > 0.0
    })
    .await;
    assert_eq!(h.admin_get("/ready").await.0, 503);
    api.restart().await;
    eventually("ready after the first lists", || async {
        h.admin_get("/ready").await.0 == 200
    })
    .await;
    assert_eq!(status_of(&h.client("peer-west"), PODINFO).await, 200);
}

#[tokio::test]
async fn filtered_namespaces_and_non_exported_are_never_routable() {
    let api = ApiServer::start().await;
    let up = Upstream::start("podinfo").await;
    apply_service(&api, "other", "elsewhere", true, 80);
    apply_slice(&api, "other", "elsewhere-1", "elsewhere", &up, true);
    apply_service(&api, "test", "private", false, 80);
    apply_slice(&api, "test", "private-1", "private", &up, true);
    apply_service(&api, "test", "podinfo", true, 9898);
    api.apply(&typed::<EndpointSlice>(&slice_many(
        "test",
        "podinfo-1",
        "podinfo",
        up.port(),
        &[("127.0.0.1", true)],
    )));
    let h = start(&api, &["test"]).await;
    let c = h.client("peer-west");
    assert_eq!(status_of(&c, PODINFO).await, 200);
    assert_eq!(
        status_of(&c, "elsewhere.other.svc.cluster.local").await,
        404
    );
    assert_eq!(status_of(&c, "private.test.svc.cluster.local").await, 404);
    assert_eq!(
        status_of(&c, "kubernetes.default.svc.cluster.local:443").await,
        404
    );
    // A later change in the filtered namespace is not watched at all.
    apply_service(&api, "other", "later", true, 80);
    apply_service(&api, "test", "later", true, 80);
    apply_slice(&api, "test", "later-1", "later", &up, true);
    wait_status(&c, "later.test.svc.cluster.local", 200).await;
    assert_eq!(status_of(&c, "later.other.svc.cluster.local").await, 404);
}

/// A Mapping as raw JSON, for what a typed client cannot send.
fn raw_mapping(name: &str, host: &str, weight: u64) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "isthmus.dev/v1alpha1",
        "kind": "Mapping",
        "metadata": {"namespace": "test", "name": name},
        "spec": {"hostname": host, "prefix": "/", "service": "internal:80", "weight": weight},
    })
}

#[tokio::test]
async fn an_undecodable_mapping_is_refused_alone() {
    let api = ApiServer::start().await;
    let up = Upstream::start("internal").await;
    apply_service(&api, "test", "internal", false, 80);
    apply_slice(&api, "test", "internal-1", "internal", &up, true);
    api.apply(&typed::<Mapping>(&mapping(
        "test",
        "good",
        "    hostname: good.example.com\n    prefix: /\n    service: internal:80\n",
    )));
    // weight does not fit the Mapping's u32: the object cannot be decoded.
    api.apply_json(
        "mappings",
        raw_mapping("bad", "bad.example.com", 4_294_967_296),
    );
    let h = start(&api, &[]).await;
    let c = h.client("peer-west");
    assert_eq!(status_of(&c, "good.example.com").await, 200);
    assert_eq!(status_of(&c, "bad.example.com").await, 404);
    assert!(
        h.metric("isthmus_discovery_errors_total{kind=\"mapping\"}")
            .await
            >= 1.0
    );
    eventually("the bad Mapping's status says why", || async {
        api.get_json("mappings", "test", "bad").is_some_and(|m| {
            let cond = &m["status"]["conditions"][0];
            cond["status"] == "False"
                && cond["message"]
                    .as_str()
                    .is_some_and(|s| s.contains("4294967296"))
        })
    })
    .await;

    // Later updates still arrive, also for the bad one once it is fixed.
    api.apply(&typed::<Mapping>(&mapping(
        "test",
        "later",
        "    hostname: later.example.com\n    prefix: /\n    service: internal:80\n",
    )));
    wait_status(&c, "later.example.com", 200).await;
    api.apply_json("mappings", raw_mapping("bad", "bad.example.com", 50));
    wait_status(&c, "bad.example.com", 200).await;
    // Broken again by an update: refused again, the rest unaffected.
    api.apply_json(
        "mappings",
        raw_mapping("bad", "bad.example.com", 4_294_967_296),
    );
    wait_status(&c, "bad.example.com", 404).await;
    assert_eq!(status_of(&c, "good.example.com").await, 200);
}
