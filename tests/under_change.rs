//! Changes under load: endpoints come and go, Mappings are rewritten, the API
//! server goes away and comes back, all while several mTLS keep-alive
//! connections (HTTP/1.1 and HTTP/2) send a few hundred requests per second.
//! Not one request may fail: every answer must be the expected 200 from a live
//! upstream. Every wait is on a condition (the published route table, upstream
//! hit counters, metrics, finished load requests); only the load's total
//! duration is a bounded time.

use std::net::SocketAddr;
use std::time::Duration;

use isthmus::config::{Discovery, KubernetesDiscovery};
use isthmus::discovery::crd::Mapping;
use isthmus::routes::RouteTable;
use isthmus_tests::apiserver::ApiServer;
use isthmus_tests::load::{CountingUpstream, Load, LoadConfig, Report, Target};
use isthmus_tests::manifests::{mapping, service, slice, slice_many, typed};
use isthmus_tests::{eventually, Harness};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// How long each load runs at least (the only fixed duration in these tests).
const LOAD_FOR: Duration = Duration::from_millis(2500);
/// Requests every scenario sends after its last change, before stopping.
const AFTER_LAST_CHANGE: u64 = 300;
/// In-place rewrites of one manifest file under load (scenario 2, step 5).
const IN_PLACE_REWRITES: usize = 150;

const WEB: &str = "web.test.svc.cluster.local";
const WEB_ROUTE: &str = "service/test/web:80";
const API: &str = "api.example.com";
const SPLIT: &str = "split.example.com";

// ---------------------------------------------------------------------------
// The published route table

/// `(backend service, weight, endpoints)` of the route named `name`, if published.
fn backends(h: &Harness, name: &str) -> Option<Vec<(String, u32, Vec<SocketAddr>)>> {
    let table: std::sync::Arc<RouteTable> = h.gateway.routes.load_full();
    let route = table.iter().find(|r| &*r.name == name)?;
    Some(
        route
            .target
            .backends
            .iter()
            .map(|b| {
                let mut eps: Vec<SocketAddr> = b.endpoints.iter().map(|e| e.addr).collect();
                eps.sort();
                (b.service.to_string(), b.weight, eps)
            })
            .collect(),
    )
}

/// The prefix of the route named `name`, if published.
fn prefix(h: &Harness, name: &str) -> Option<String> {
    let table = h.gateway.routes.load_full();
    let route = table.iter().find(|r| &*r.name == name)?;
    Some(route.matcher.prefix.clone())
}

/// Waits until the route `name` sends to exactly `pods` (the change is published).
async fn wait_endpoints(h: &Harness, name: &str, pods: &[&CountingUpstream]) {
    let mut want: Vec<SocketAddr> = pods.iter().map(|p| p.addr).collect();
    want.sort();
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    eventually(
        &format!("{name} published with endpoints {names:?}"),
        || {
            let eps: Option<Vec<SocketAddr>> =
                backends(h, name).map(|bs| bs.into_iter().flat_map(|(_, _, e)| e).collect());
            let done = eps.as_ref() == Some(&want);
            async move { done }
        },
    )
    .await;
}

/// Waits until the route `name` has these backend weights, in backend order.
async fn wait_weights(h: &Harness, name: &str, weights: &[u32]) {
    eventually(
        &format!("{name} published with weights {weights:?}"),
        || {
            let got: Option<Vec<u32>> =
                backends(h, name).map(|bs| bs.iter().map(|b| b.1).collect());
            let done = got.as_deref() == Some(weights);
            async move { done }
        },
    )
    .await;
}

/// Waits until the route `name` is published with `prefix` (`None`: not published).
async fn wait_prefix(h: &Harness, name: &str, want: Option<&str>) {
    eventually(&format!("{name} published with prefix {want:?}"), || {
        let done = prefix(h, name).as_deref() == want;
        async move { done }
    })
    .await;
}

/// Waits until an upstream has more than `than` hits.
async fn wait_hits(up: &CountingUpstream, than: u64) {
    eventually(&format!("{} receives requests", up.name), || {
        let done = up.hits() > than;
        async move { done }
    })
    .await;
}

/// Runs `AFTER_LAST_CHANGE` more requests and the rest of [`LOAD_FOR`], stops
/// the load, prints and returns its report.
async fn finish(load: Load, scenario: &str) -> Report {
    load.wait_requests(AFTER_LAST_CHANGE).await;
    load.run_for_at_least(LOAD_FOR).await;
    let report = load.stop().await;
    println!("{scenario}: {report}");
    report
}

// ---------------------------------------------------------------------------
// Manifests

/// One EndpointSlice of Service `svc` listing `pods` (one port, several IPs).
fn pods_slice(name: &str, svc: &str, pods: &[(&CountingUpstream, bool)]) -> String {
    let port = pods.first().map_or(0, |(p, _)| p.port());
    let ips: Vec<(String, bool)> = pods.iter().map(|(p, r)| (p.ip(), *r)).collect();
    let eps: Vec<(&str, bool)> = ips.iter().map(|(ip, r)| (ip.as_str(), *r)).collect();
    slice_many("test", name, svc, port, &eps)
}

/// A non-exported Service `name` (port 80) with one slice pointing at `up`.
fn backend_service(up: &CountingUpstream) -> String {
    format!(
        "{}---\n{}",
        service("test", &up.name, false, 80),
        slice("test", &format!("{}-1", up.name), &up.name, up.addr, true)
    )
}

fn api_mapping(prefix: &str) -> String {
    mapping(
        "test",
        "api",
        &format!("    hostname: {API}\n    prefix: {prefix}\n    service: alpha:80\n"),
    )
}

fn split_mapping(name: &str, svc: &str, weight: u32) -> String {
    mapping(
        "test",
        name,
        &format!(
            "    hostname: {SPLIT}\n    prefix: /\n    service: {svc}:80\n    weight: {weight}\n"
        ),
    )
}

fn host_mapping(name: &str, host: &str, prefix: &str, svc: &str) -> String {
    mapping(
        "test",
        name,
        &format!("    hostname: {host}\n    prefix: {prefix}\n    service: {svc}:80\n"),
    )
}

fn docs(docs: &[String]) -> String {
    docs.join("---\n")
}

// ---------------------------------------------------------------------------
// Kubernetes discovery

async fn start_kube(api: &ApiServer) -> Harness {
    let kubeconfig = std::env::temp_dir().join(format!(
        "isthmus-under-change-kubeconfig-{}.yaml",
        api.addr().port()
    ));
    std::fs::write(&kubeconfig, api.kubeconfig_yaml()).expect("write kubeconfig");
    let h = Harness::start_with(&[], |cfg| {
        cfg.discovery = Discovery::Kubernetes(KubernetesDiscovery {
            kubeconfig: Some(kubeconfig),
            label_selector: None,
        });
    })
    .await;
    eventually("gateway ready (every watch listed)", || async {
        h.admin_get("/ready").await.0 == 200
    })
    .await;
    h
}

fn apply_yaml<K>(api: &ApiServer, yaml: &str)
where
    K: kube::Resource<DynamicType = ()> + serde::Serialize + serde::de::DeserializeOwned,
{
    for doc in yaml.split("---\n").filter(|d| !d.trim().is_empty()) {
        let value: serde_yaml::Value = serde_yaml::from_str(doc).expect("yaml");
        if value["kind"].as_str() == Some(&*K::kind(&())) {
            api.apply(&typed::<K>(doc));
        }
    }
}

/// Applies every Service, EndpointSlice and Mapping in a multi-document YAML.
fn apply_all(api: &ApiServer, yaml: &str) {
    apply_yaml::<Service>(api, yaml);
    apply_yaml::<EndpointSlice>(api, yaml);
    apply_yaml::<Mapping>(api, yaml);
}

async fn watch_errors(h: &Harness) -> f64 {
    let mut sum = 0.0;
    for kind in ["service", "endpointslice", "mapping"] {
        sum += h
            .metric(&format!(
                "isthmus_discovery_watch_errors_total{{kind=\"{kind}\"}}"
            ))
            .await;
    }
    sum
}

// ---------------------------------------------------------------------------
// Scenarios

/// File discovery: an endpoint is added, one is marked not ready, one is
/// removed from the EndpointSlice while a slow request to it is in flight and
/// then stopped once the gateway no longer sends to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_churn_under_load_fails_nothing() {
    let pods = CountingUpstream::pods(&["web-a", "web-b", "web-c", "web-d"]).await;
    let [a, b, c, d] = &pods[..] else {
        unreachable!("four pods")
    };
    let web = |eps: &[(&CountingUpstream, bool)]| {
        format!(
            "{}---\n{}",
            service("test", "web", true, 80),
            pods_slice("web-1", "web", eps)
        )
    };
    let h = Harness::start(&[("web.yaml", web(&[(a, true), (b, true), (c, true)]))]).await;
    let client = h.client("peer-west");
    let load = Load::start(
        &client,
        vec![Target::new(WEB, "/", &["web-a", "web-b", "web-c", "web-d"])],
        LoadConfig::default(),
    )
    .await;
    for p in [a, b, c] {
        wait_hits(p, 0).await;
    }

    // 1. A new endpoint joins and receives traffic.
    h.write_manifest(
        "web.yaml",
        &web(&[(a, true), (b, true), (c, true), (d, true)]),
    );
    wait_endpoints(&h, WEB_ROUTE, &[a, b, c, d]).await;
    wait_hits(d, 0).await;

    // 2. One endpoint becomes not ready: once that is published and every
    //    request chosen from the older table has finished, it gets nothing more.
    h.write_manifest(
        "web.yaml",
        &web(&[(a, true), (b, false), (c, true), (d, true)]),
    );
    wait_endpoints(&h, WEB_ROUTE, &[a, c, d]).await;
    load.settle().await;
    let b_hits = b.hits();

    // 3. An endpoint with a slow request in flight leaves the EndpointSlice:
    //    the slow request completes, then nothing more reaches it, then it stops.
    let mut slow = Vec::new();
    for attempt in 1..=16 {
        let client = client.clone();
        slow.push(tokio::spawn(
            async move { client.get(WEB, "/delay/1").await },
        ));
        let want = slow.len();
        eventually("the slow request reaches an upstream", || {
            let n: usize = pods.iter().map(|p| p.slow_in_flight()).sum();
            async move { n >= want }
        })
        .await;
        if c.slow_in_flight() > 0 {
            break;
        }
        assert!(attempt < 16, "no slow request landed on web-c");
    }
    h.write_manifest("web.yaml", &web(&[(a, true), (b, false), (d, true)]));
    wait_endpoints(&h, WEB_ROUTE, &[a, d]).await;
    assert_eq!(
        c.slow_in_flight(),
        1,
        "the slow request is still in flight when web-c's removal is published"
    );
    load.settle().await;
    let mut slow_on_c = 0;
    for s in slow {
        let r = s.await.expect("slow request task");
        let r = r.unwrap_or_else(|e| panic!("slow request failed: {e}"));
        assert_eq!(r.status, 200, "slow request: {}", r.body);
        slow_on_c += usize::from(r.upstream().as_deref() == Some("web-c"));
    }
    assert_eq!(slow_on_c, 1, "the in-flight request to web-c completed");
    let c_hits = c.hits();
    load.wait_requests(100).await;
    assert_eq!(c.hits(), c_hits, "web-c gets nothing after its removal");
    let connect_errors = h.metric("isthmus_upstream_connect_errors_total").await;
    c.stop().await;

    let report = finish(load, "endpoint churn").await;
    report.assert_no_failures("endpoint churn (file discovery)");
    assert_eq!(b.hits(), b_hits, "web-b gets nothing after it is not ready");
    assert_eq!(
        h.metric("isthmus_upstream_connect_errors_total").await,
        connect_errors,
        "the gateway never tries the stopped web-c"
    );
    assert!(report.by_upstream.get("web-d").copied().unwrap_or(0) > 0);
    assert!(report.by_upstream.get("web-a").copied().unwrap_or(0) > 0);
}

/// File discovery: Mappings are rewritten (prefix, weight, one added, one
/// deleted, one file removed, the file rewritten in place) while the routes
/// under load stay valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_reload_from_files_under_load_fails_nothing() {
    let alpha = CountingUpstream::start("alpha").await;
    let beta = CountingUpstream::start("beta").await;
    let gamma = CountingUpstream::start("gamma").await;
    let services = docs(&[
        backend_service(&alpha),
        backend_service(&beta),
        backend_service(&gamma),
    ]);
    let mappings = |api_prefix: &str, weights: (u32, u32), extra: &[String]| {
        let mut all = vec![
            api_mapping(api_prefix),
            split_mapping("split-a", "alpha", weights.0),
            split_mapping("split-b", "beta", weights.1),
        ];
        all.extend_from_slice(extra);
        docs(&all)
    };
    let old = host_mapping("old", "old.example.com", "/", "gamma");
    let api_x = host_mapping("api-x", API, "/api/v1/x", "beta");
    let h = Harness::start(&[
        ("services.yaml", services),
        (
            "mappings.yaml",
            mappings("/api/", (50, 50), std::slice::from_ref(&old)),
        ),
        (
            "legacy.yaml",
            host_mapping("legacy", "legacy.example.com", "/", "gamma"),
        ),
    ])
    .await;
    let client = h.client("peer-west");
    let load = Load::start(
        &client,
        vec![
            // `/api/` strips to /v1/x, `/api/v1/` to /x, `/api/v1/x` (api-x) to /.
            Target::new(API, "/api/v1/x", &["alpha", "beta"]).seen_as(&["/v1/x", "/x", "/"]),
            Target::new(SPLIT, "/s", &["alpha", "beta"]).seen_as(&["/s"]),
        ],
        LoadConfig::default(),
    )
    .await;
    wait_hits(&alpha, 0).await;
    wait_hits(&beta, 0).await;

    // 1. Prefix change that keeps the requested path routed.
    h.write_manifest(
        "mappings.yaml",
        &mappings("/api/v1/", (50, 50), std::slice::from_ref(&old)),
    );
    wait_prefix(&h, "mapping/test/api", Some("/api/v1/")).await;

    // 2. Weight change: beta's share drops to 0, so it gets nothing more.
    h.write_manifest(
        "mappings.yaml",
        &mappings("/api/v1/", (100, 0), std::slice::from_ref(&old)),
    );
    wait_weights(&h, "mapping/test/split-a", &[100, 0]).await;
    load.settle().await;
    let beta_hits = beta.hits();
    load.wait_requests(100).await;
    assert_eq!(beta.hits(), beta_hits, "beta at weight 0 gets nothing");

    // 3. A new, more specific Mapping takes over the API path.
    h.write_manifest(
        "mappings.yaml",
        &mappings("/api/v1/", (100, 0), &[old.clone(), api_x.clone()]),
    );
    wait_prefix(&h, "mapping/test/api-x", Some("/api/v1/x")).await;
    wait_hits(&beta, beta_hits).await;

    // 4. Deletions: a Mapping leaves the file, the more specific one goes
    //    (traffic falls back to `api`), and a whole file is removed.
    h.write_manifest("mappings.yaml", &mappings("/api/v1/", (100, 0), &[]));
    std::fs::remove_file(h.manifests().join("legacy.yaml")).expect("remove legacy.yaml");
    wait_prefix(&h, "mapping/test/api-x", None).await;
    wait_prefix(&h, "mapping/test/old", None).await;
    wait_prefix(&h, "mapping/test/legacy", None).await;
    load.settle().await;
    let beta_hits = beta.hits();

    // 5. The file rewritten in place over and over (`std::fs::write`: truncate,
    //    then write, as `cat >` or `kubectl get -o yaml >` do), every few
    //    requests. A scan that reads the file between truncate and write must
    //    not withdraw its Mappings.
    for i in 0..IN_PLACE_REWRITES {
        let prefix = if i % 2 == 0 { "/api/" } else { "/api/v1/" };
        std::fs::write(
            h.manifests().join("mappings.yaml"),
            mappings(prefix, (100, 0), &[]),
        )
        .expect("rewrite mappings.yaml in place");
        load.wait_requests(3).await;
    }
    wait_prefix(&h, "mapping/test/api", Some("/api/v1/")).await;

    let report = finish(load, "mapping reload (files)").await;
    report.assert_no_failures("mapping reload (file discovery)");
    assert_eq!(
        beta.hits(),
        beta_hits,
        "beta gets nothing once api-x is gone"
    );
    assert_eq!(gamma.hits(), 0, "nothing under load routes to gamma");
}

/// Kubernetes discovery: EndpointSlice and Mapping changes from the API
/// server (through kube-rs watches) under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_changes_under_load_fail_nothing() {
    let api = ApiServer::start().await;
    let pods = CountingUpstream::pods(&["web-a", "web-b", "web-c"]).await;
    let [a, b, c] = &pods[..] else {
        unreachable!("three pods")
    };
    let alpha = CountingUpstream::start("alpha").await;
    let beta = CountingUpstream::start("beta").await;
    apply_all(
        &api,
        &docs(&[
            service("test", "web", true, 80),
            pods_slice("web-1", "web", &[(a, true), (b, true)]),
            backend_service(&alpha),
            backend_service(&beta),
            api_mapping("/api/"),
            split_mapping("split-a", "alpha", 50),
            split_mapping("split-b", "beta", 50),
        ]),
    );
    let h = start_kube(&api).await;
    let client = h.client("peer-west");
    let load = Load::start(
        &client,
        vec![
            Target::new(WEB, "/", &["web-a", "web-b", "web-c"]),
            Target::new(API, "/api/v1/x", &["alpha", "beta"]).seen_as(&["/v1/x", "/x", "/"]),
            Target::new(SPLIT, "/s", &["alpha", "beta"]).seen_as(&["/s"]),
        ],
        LoadConfig::default(),
    )
    .await;
    for p in [a, b, &alpha, &beta] {
        wait_hits(p, 0).await;
    }

    // 1. An endpoint joins.
    apply_all(
        &api,
        &pods_slice("web-1", "web", &[(a, true), (b, true), (c, true)]),
    );
    wait_endpoints(&h, WEB_ROUTE, &[a, b, c]).await;
    wait_hits(c, 0).await;

    // 2. One becomes not ready.
    apply_all(
        &api,
        &pods_slice("web-1", "web", &[(a, false), (b, true), (c, true)]),
    );
    wait_endpoints(&h, WEB_ROUTE, &[b, c]).await;
    load.settle().await;
    let a_hits = a.hits();

    // 3. Prefix change, 4. weight change.
    apply_all(&api, &api_mapping("/api/v1/"));
    wait_prefix(&h, "mapping/test/api", Some("/api/v1/")).await;
    apply_all(
        &api,
        &docs(&[
            split_mapping("split-a", "alpha", 100),
            split_mapping("split-b", "beta", 0),
        ]),
    );
    wait_weights(&h, "mapping/test/split-a", &[100, 0]).await;
    load.settle().await;
    let beta_hits = beta.hits();
    load.wait_requests(100).await;
    assert_eq!(beta.hits(), beta_hits, "beta at weight 0 gets nothing");

    // 5. A new Mapping takes over the API path.
    apply_all(&api, &host_mapping("api-x", API, "/api/v1/x", "beta"));
    wait_prefix(&h, "mapping/test/api-x", Some("/api/v1/x")).await;
    wait_hits(&beta, beta_hits).await;

    // 6. Deletions: the new Mapping and the weight-0 half of the split.
    api.delete::<Mapping>("test", "api-x");
    api.delete::<Mapping>("test", "split-b");
    wait_prefix(&h, "mapping/test/api-x", None).await;
    wait_weights(&h, "mapping/test/split-a", &[100]).await;
    load.settle().await;
    let beta_hits = beta.hits();

    let report = finish(load, "kube changes").await;
    report.assert_no_failures("changes through the kube source");
    assert_eq!(a.hits(), a_hits, "web-a gets nothing after it is not ready");
    assert_eq!(
        beta.hits(),
        beta_hits,
        "beta gets nothing once api-x is gone"
    );
}

/// Kubernetes discovery: the API server goes away under load; changes made
/// during the gap (and compacted, so the watches' resourceVersion expires)
/// arrive through a 410 relist once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_outage_and_relist_under_load_fail_nothing() {
    let api = ApiServer::start().await;
    let pods = CountingUpstream::pods(&["web-a", "web-b", "web-c"]).await;
    let [a, b, c] = &pods[..] else {
        unreachable!("three pods")
    };
    let alpha = CountingUpstream::start("alpha").await;
    apply_all(
        &api,
        &docs(&[
            service("test", "web", true, 80),
            pods_slice("web-1", "web", &[(a, true), (b, true)]),
            backend_service(&alpha),
            api_mapping("/api/"),
            host_mapping("old", "old.example.com", "/", "alpha"),
        ]),
    );
    let h = start_kube(&api).await;
    let client = h.client("peer-west");
    let load = Load::start(
        &client,
        vec![
            Target::new(WEB, "/", &["web-a", "web-b", "web-c"]),
            Target::new(API, "/api/x", &["alpha"]).seen_as(&["/x"]),
        ],
        LoadConfig::default(),
    )
    .await;
    for p in [a, b, &alpha] {
        wait_hits(p, 0).await;
    }

    // The outage: the last table keeps serving, /ready stays 200.
    let lists = api.list_count();
    let errors = watch_errors(&h).await;
    api.stop().await;
    // Changes during the gap, then compaction: the watches' resourceVersion expires.
    apply_all(
        &api,
        &docs(&[
            pods_slice("web-1", "web", &[(a, true), (b, false), (c, true)]),
            host_mapping("late", "late.example.com", "/", "alpha"),
        ]),
    );
    api.delete::<Mapping>("test", "old");
    api.compact();
    eventually("watch errors visible in /metrics", || async {
        watch_errors(&h).await > errors
    })
    .await;
    load.wait_requests(300).await;
    assert_eq!(
        h.admin_get("/ready").await.0,
        200,
        "ready during the outage"
    );
    assert_eq!(
        backends(&h, WEB_ROUTE).map(|bs| bs[0].2.clone()),
        Some(vec![a.addr, b.addr]),
        "the last table serves during the outage"
    );

    // Back: 410 → relist; the gap's changes are applied.
    api.restart().await;
    wait_endpoints(&h, WEB_ROUTE, &[a, c]).await;
    wait_prefix(&h, "mapping/test/late", Some("/")).await;
    wait_prefix(&h, "mapping/test/old", None).await;
    assert!(api.list_count() > lists, "re-listed after the 410");
    load.settle().await;
    let b_hits = b.hits();
    wait_hits(c, 0).await;
    assert_eq!(
        client
            .get("late.example.com", "/")
            .await
            .map(|r| r.status)
            .unwrap_or(0),
        200,
        "the Mapping created during the gap routes"
    );

    let report = finish(load, "API-server outage").await;
    report.assert_no_failures("API-server outage and 410 relist");
    assert_eq!(b.hits(), b_hits, "web-b gets nothing after the relist");
}
