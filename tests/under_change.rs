//! Changes under load: endpoints come and go, Mappings are rewritten, the API
//! server goes away and comes back, the serving certificate and the trust
//! anchors rotate, the gateway drains, all while several mTLS keep-alive
//! connections (HTTP/1.1 and HTTP/2) send a few hundred requests per second.
//! Not one request may fail: every answer must be the expected 200 from a live
//! upstream (during a drain: every request sent before it began). Every wait
//! is on a condition (the published route table, upstream hit counters,
//! metrics, finished load requests, handshakes); only the load's total
//! duration is a bounded time.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isthmus::config::{Discovery, KubernetesDiscovery};
use isthmus::discovery::crd::Mapping;
use isthmus::routes::RouteTable;
use isthmus::tls::dev::{CertAuthority, LeafSpec};
use isthmus_tests::apiserver::ApiServer;
use isthmus_tests::load::{cert_label, CountingUpstream, Load, LoadConfig, Report, Target};
use isthmus_tests::manifests::{exported_service, mapping, service, slice, slice_many, typed};
use isthmus_tests::{eventually, replace_file, Harness};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long each load runs at least (the only fixed duration in these tests).
const LOAD_FOR: Duration = Duration::from_millis(2500);
/// Requests every scenario sends after its last change, before stopping.
const AFTER_LAST_CHANGE: u64 = 300;
/// In-place rewrites of one manifest file under load (scenario 2, step 5).
const IN_PLACE_REWRITES: usize = 150;
/// Requests an HTTP/1.1 load worker sends on a connection before it opens a
/// new one (a new TLS handshake), in the rotation scenario.
const RECONNECT_EVERY: u32 = 5;
/// New handshakes the rotation scenario waits for after each change.
const HANDSHAKES_AFTER_CHANGE: u64 = 20;
/// Grace period of the drain scenario (the drain must end long before it).
const GRACE: Duration = Duration::from_secs(20);
/// The drain scenario's slow requests: 2 s, sent before the drain begins.
const SLOW: &str = "/delay/2";
/// A Service of its own for them, so its upstream counts only them.
const SLOW_HOST: &str = "slow.test.svc.cluster.local";
/// Every fourth request of the drain scenario's load takes this long, so some
/// are in flight on the load's connections whenever the drain begins.
const LOAD_SLOW: &str = "/delay/0.1";

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
            .metric_or_absent(&format!(
                "isthmus_discovery_watch_errors_total{{kind=\"{kind}\"}}"
            ))
            .await;
    }
    sum
}

// ---------------------------------------------------------------------------
// Certificate files and the admin port during a drain

/// The status of `GET /ready` on the admin port; `None` once it no longer
/// answers (closed at the end of a drain).
async fn ready_status(admin: SocketAddr) -> Option<u16> {
    let mut tcp = tokio::net::TcpStream::connect(admin).await.ok()?;
    tcp.write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.ok()?;
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Polls `/ready` until the admin port stops answering, recording in `seen`
/// the statuses it answered, each change once, in order.
async fn readiness_until_closed(admin: SocketAddr, seen: Arc<Mutex<Vec<u16>>>) {
    while let Some(status) = ready_status(admin).await {
        {
            let mut seen = seen.lock().expect("readiness log");
            if seen.last() != Some(&status) {
                seen.push(status);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    //    The slow requests are held by the upstreams until released (a latch,
    //    not a delay that might run out before the removal is published).
    let mut slow = Vec::new();
    for attempt in 1..=16 {
        let client = client.clone();
        slow.push(tokio::spawn(async move { client.get(WEB, "/hold").await }));
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
    assert_eq!(c.slow_in_flight(), 1, "held through the settling");
    for p in &pods {
        p.release_held();
    }
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

/// The serving certificate and key rotate, then the trust anchors (old and a
/// new CA, overlapping), then a bad key arrives and is refused, while HTTP/1.1
/// workers keep opening new connections (a full TLS handshake every few
/// requests) and HTTP/2 connections opened before the first change stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_and_trust_anchor_rotation_under_load_fails_nothing() {
    let web = CountingUpstream::start("web").await;
    let h = Harness::start_with(
        &[("web.yaml", exported_service("test", "web", 80, web.addr))],
        |cfg| {
            // The default is 1 s; rotation is picked up within a tick.
            cfg.tls.reload_interval_ms = 20;
            // Every new connection a full handshake: the server presents its
            // current certificate, signs with its current key and verifies the
            // peer against its current trust anchors. (With resumption nearly
            // every reconnect would resume a session instead; that resumed
            // sessions do not outlive trust-anchor changes is tests/rotation.rs.)
            cfg.tls.session_resumption = false;
        },
    )
    .await;
    let certs = h.certs();
    let west = h.client("peer-west");
    let original = west
        .get(WEB, "/")
        .await
        .expect("request")
        .server_cert
        .expect("a server certificate");
    let targets = || vec![Target::new(WEB, "/", &["web"])];
    let load = Load::start(
        &west,
        targets(),
        LoadConfig {
            reconnect_every: Some(RECONNECT_EVERY),
            ..LoadConfig::default()
        },
    )
    .await;
    wait_hits(&web, 0).await;
    load.wait_handshakes(HANDSHAKES_AFTER_CHANGE).await;
    let errors = "isthmus_tls_reloads_total{result=\"error\"}";
    let reloads = "isthmus_tls_reloads_total{result=\"ok\"}";

    // 1. A new serving certificate and key from the same CA, each file
    //    replaced atomically (key first: a check that falls between the two
    //    renames sees a key that does not match the certificate, refuses it and
    //    keeps the old pair, then loads the new pair on the next tick).
    let ca1 = h.ca();
    let rotated = ca1.issue(&LeafSpec::gateway()).expect("issue");
    let at_rotation = load.handshakes();
    replace_file(&certs.join("gateway.key"), &rotated.key_pem());
    replace_file(&certs.join("gateway.crt"), &rotated.cert_pem());
    eventually(
        "the load's new handshakes present the rotated certificate",
        || {
            let done = load.handshakes_with(rotated.der()) > 0;
            async move { done }
        },
    )
    .await;
    // Once every handshake begun before is done, no new one presents the old
    // certificate.
    load.settle().await;
    let with_original = load.handshakes_with(&original);
    load.wait_handshakes(HANDSHAKES_AFTER_CHANGE).await;
    assert_eq!(
        load.handshakes_with(&original),
        with_original,
        "a new handshake presented the old certificate after the rotation"
    );

    // 2. Trust anchors with an overlap: the old CA and a new one. A peer of
    //    the new CA is refused before and admitted after; peers of the old CA
    //    keep handshaking.
    let ca2 = CertAuthority::new("rotated CA").expect("CA");
    h.issue_cert_by(
        &ca2,
        "peer-new",
        &LeafSpec::peer_uri("spiffe://west.example/ns/default/sa/new"),
    );
    let newc = h.client("peer-new");
    assert!(
        newc.get(WEB, "/").await.is_err(),
        "a peer of the new CA is refused before the bundle changes"
    );
    let at_bundle = load.handshakes();
    replace_file(
        &certs.join("ca.crt"),
        &format!("{}{}", ca1.cert_pem(), ca2.cert_pem()),
    );
    eventually("a peer of the new CA is admitted", || async {
        newc.get(WEB, "/").await.is_ok_and(|r| r.status == 200)
    })
    .await;
    let newcomers = Load::start(
        &newc,
        targets(),
        LoadConfig {
            h1_connections: 1,
            h2_connections: 1,
            h2_streams: 1,
            reconnect_every: Some(RECONNECT_EVERY),
            ..LoadConfig::default()
        },
    )
    .await;
    load.wait_handshakes(HANDSHAKES_AFTER_CHANGE).await;
    newcomers.wait_handshakes(3).await;

    // 3. A bad key: refused and counted; the rotated certificate, its key and
    //    the two-CA bundle stay in force for every new handshake.
    let refused = h.metric_or_absent(errors).await;
    let loaded = h.metric(reloads).await;
    let at_bad_key = load.handshakes();
    replace_file(
        &certs.join("gateway.key"),
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    );
    eventually("the bad key is refused", || async {
        h.metric_or_absent(errors).await > refused
    })
    .await;
    let seen = load.server_certs();
    load.wait_handshakes(HANDSHAKES_AFTER_CHANGE).await;
    newcomers.wait_handshakes(3).await;
    let now = load.server_certs();
    let more =
        |cert: &[u8]| now.get(cert).copied().unwrap_or(0) - seen.get(cert).copied().unwrap_or(0);
    let more_total: u64 = now.values().sum::<u64>() - seen.values().sum::<u64>();
    assert!(more_total >= HANDSHAKES_AFTER_CHANGE);
    assert_eq!(
        more(rotated.der()),
        more_total,
        "every handshake after the bad key presents the rotated certificate"
    );
    assert_eq!(h.metric(reloads).await, loaded, "nothing was loaded");

    let report = finish(load, "rotation (peer of the old CA)").await;
    let newcomers = newcomers.stop().await;
    println!("rotation (peer of the new CA): {newcomers}");
    report.assert_no_failures("certificate and trust-anchor rotation, old-CA peer");
    newcomers.assert_no_failures("trust-anchor rotation, new-CA peer");
    println!(
        "rotation: {} new connections during the load (+{} for the new-CA peer): \
         {} before the certificate rotation, {} from it to the bundle change, \
         {} from that to the bad key, {} after it; \
         {} with the original certificate {}, {} with the rotated one {}",
        report.new_connections(),
        newcomers.new_connections(),
        at_rotation - report.initial_connections,
        at_bundle - at_rotation,
        at_bad_key - at_bundle,
        report.handshakes - at_bad_key,
        report.server_certs.get(&original).copied().unwrap_or(0),
        cert_label(&original),
        report.server_certs.get(rotated.der()).copied().unwrap_or(0),
        cert_label(rotated.der()),
    );
    assert!(
        report.server_certs.get(&original).copied().unwrap_or(0) > report.initial_connections,
        "new handshakes before the rotation presented the original certificate"
    );
    assert!(
        report.server_certs.get(rotated.der()).copied().unwrap_or(0) >= 3 * HANDSHAKES_AFTER_CHANGE,
        "new handshakes after the rotation presented the rotated certificate"
    );
    assert_eq!(
        report.resumed + newcomers.resumed,
        0,
        "only full handshakes"
    );
    assert_eq!(
        report.server_certs.keys().len(),
        2,
        "only the original and the rotated certificate were ever served"
    );
    assert!(
        report.by_protocol.get("h2").is_some_and(|(n, _)| *n > 0),
        "HTTP/2 connections opened before the rotation kept serving"
    );
}

/// SIGTERM under load: `Harness::shutdown` (what `main` runs on SIGTERM)
/// while keep-alive HTTP/1.1 and HTTP/2 connections send requests and slow
/// requests are in flight. Every request sent before the drain began is
/// answered 200. Requests sent after it began may be turned away at the
/// connection level, and the load counts those apart as client-visible but
/// expected: on HTTP/1.1 the gateway closes a keep-alive connection once it
/// has no request in progress (after answering the one in flight, if any),
/// so a request written after the drain began meets a closed or reset
/// connection, or is never sent because the client already saw the close;
/// on HTTP/2 it sends GOAWAY, after which the client opens no new stream
/// (the few it had queued are handed back unsent). Workers stop once the
/// server closed their connection, as clients would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_under_load_answers_every_request_sent_before_it() {
    let web = CountingUpstream::start("web").await;
    let slow_up = CountingUpstream::start("slow").await;
    let h = Harness::start(&[
        ("web.yaml", exported_service("test", "web", 80, web.addr)),
        (
            "slow.yaml",
            exported_service("test", "slow", 80, slow_up.addr),
        ),
    ])
    .await;
    let (gateway, admin) = (h.gateway.gateway_addr, h.gateway.admin_addr);
    let client = h.client("peer-west");
    let load = Load::start(
        &client,
        vec![
            Target::new(WEB, "/", &["web"]),
            Target::new(WEB, "/", &["web"]),
            Target::new(WEB, "/", &["web"]),
            Target::new(WEB, LOAD_SLOW, &["web"]),
        ],
        LoadConfig {
            reopen_closed: false,
            ..LoadConfig::default()
        },
    )
    .await;
    wait_hits(&web, 0).await;
    load.wait_requests(AFTER_LAST_CHANGE).await;

    // Slow requests in flight when the drain begins: on two HTTP/1.1
    // keep-alive connections (one already used) and two streams of one
    // HTTP/2 connection.
    let mut reused = client.keep_alive().await.expect("h1 connection");
    let first = reused.get(SLOW_HOST, "/").await.expect("h1 request");
    assert_eq!(first.status, 200);
    let fresh = client.keep_alive().await.expect("h1 connection");
    let h2 = client.http2().keep_alive().await.expect("h2 connection");
    let h2_second = h2.stream().expect("an HTTP/2 stream");
    let mut slow = Vec::new();
    for mut conn in [reused, fresh, h2, h2_second] {
        slow.push(tokio::spawn(async move { conn.get(SLOW_HOST, SLOW).await }));
    }
    eventually("the slow requests are in flight at the upstream", || {
        let done = slow_up.slow_in_flight() == slow.len();
        async move { done }
    })
    .await;

    let seen = Arc::new(Mutex::new(Vec::new()));
    let readiness = tokio::spawn(readiness_until_closed(admin, Arc::clone(&seen)));
    eventually("/ready answers 200 before the drain", || {
        let done = *seen.lock().expect("readiness log") == [200];
        async move { done }
    })
    .await;
    eventually("load requests are in flight at the upstream", || {
        let done = web.slow_in_flight() >= 2;
        async move { done }
    })
    .await;
    load.mark_drain();
    let started = Instant::now();
    let drain = tokio::spawn(h.shutdown(GRACE));

    eventually("the gateway port refuses new connections", || async {
        tokio::net::TcpStream::connect(gateway).await.is_err()
    })
    .await;
    assert!(
        client.get(WEB, "/").await.is_err(),
        "no new mTLS connection during the drain"
    );
    assert!(
        !drain.is_finished() && slow_up.slow_in_flight() > 0,
        "the port closed while the slow requests were still draining"
    );

    let left = drain.await.expect("drain task");
    let took = started.elapsed();
    assert_eq!(left, 0, "every connection finished within the grace period");
    assert!(
        took < GRACE / 4,
        "the drain ended when the connections did, not at the {GRACE:?} grace: {took:?}"
    );
    for s in slow {
        let r = s.await.expect("slow request task");
        let r = r.unwrap_or_else(|e| panic!("a slow request in flight failed: {e}"));
        assert_eq!(r.status, 200, "slow request: {}", r.body);
    }
    readiness.await.expect("readiness task");
    assert_eq!(
        *seen.lock().expect("readiness log"),
        [200, 503],
        "/ready: 200, then 503 through the drain until the admin port closed"
    );
    eventually(
        "every load worker stopped once its connection closed",
        || {
            let done = load.all_stopped();
            async move { done }
        },
    )
    .await;

    let report = load.stop().await;
    println!("drain: {report}  drain took {took:?}");
    report.assert_no_failures("drain under load");
    let d = report.drain.as_ref().expect("drain marked");
    assert!(d.before.0 > 0 && d.before.0 == d.before.1);
    assert!(
        d.in_flight_answered > 0,
        "load requests in flight when the drain began were answered"
    );
    assert_eq!(
        report.handshakes, report.initial_connections,
        "the load opened no connection after its first ones"
    );
}
