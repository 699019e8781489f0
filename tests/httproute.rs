//! Gateway API `HTTPRoute` end to end, through real mTLS requests to real
//! upstreams: the Gateway API conformance tests' HTTPRoute cases that apply
//! (manifests in `tests/conformance/`, copied from kubernetes-sigs/gateway-api
//! `conformance/tests/`, Apache-2.0), weights, filters, precedence against a
//! Mapping on the same host, and, against the API-server double, status
//! conditions and invalid backendRefs answering 500 for their share.

use std::collections::BTreeMap;

use isthmus::config::{Discovery, KubernetesDiscovery};
use isthmus_tests::apiserver::ApiServer;
use isthmus_tests::manifests::{mapping, service, slice, typed};
use isthmus_tests::{eventually, Client, Harness, Upstream};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

const NS: &str = "gateway-conformance-infra";
const BACKENDS: [&str; 3] = ["infra-backend-v1", "infra-backend-v2", "infra-backend-v3"];

/// The conformance suite's infrastructure: an Isthmus GatewayClass, the
/// Gateway `same-namespace`, and three backends on port 8080.
fn infra(ups: &[Upstream]) -> String {
    let mut out = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: isthmus\nspec:\n  controllerName: isthmus.dev/gateway\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: same-namespace\n  namespace: {NS}\nspec:\n  gatewayClassName: isthmus\n  listeners:\n  - name: https\n    port: 4143\n    protocol: HTTPS\n"
    );
    for (name, up) in BACKENDS.iter().zip(ups) {
        out.push_str("---\n");
        out.push_str(&service(NS, name, false, 8080));
        out.push_str("---\n");
        out.push_str(&slice(NS, &format!("{name}-1"), name, up.addr, true));
    }
    out
}

async fn backends() -> Vec<Upstream> {
    let mut ups = Vec::new();
    for name in BACKENDS {
        ups.push(Upstream::start(name).await);
    }
    ups
}

/// A conformance manifest given its own hostname (the suite runs each test
/// alone; here they share one gateway).
fn conformance(file: &str, host: &str) -> String {
    let path = isthmus_tests::workspace_path(&format!("tests/conformance/{file}.yaml"));
    let yaml = std::fs::read_to_string(&path).expect("conformance manifest");
    if yaml.contains("hostnames:") {
        return yaml;
    }
    yaml.replacen("spec:\n", &format!("spec:\n  hostnames: [\"{host}\"]\n"), 1)
}

const FILES: &[&str] = &[
    "httproute-matching",
    "httproute-exact-path-matching",
    "httproute-query-param-matching",
    "httproute-method-matching",
    "httproute-header-matching",
    "httproute-rewrite-path",
    "httproute-redirect-path",
    "httproute-request-header-modifier",
    "httproute-redirect-host-and-status",
    "httproute-redirect-scheme",
    "httproute-redirect-port",
    "httproute-rewrite-host",
];

fn host_of(file: &str) -> String {
    if file == "httproute-rewrite-host" {
        return "rewrite.example".into();
    }
    format!("{}.example", file.trim_start_matches("httproute-"))
}

/// What a case expects.
enum Expect {
    /// 200 from this backend.
    Backend(&'static str),
    /// This status from the gateway.
    Status(u16),
    /// 200 from backend v1 which saw this path and these headers (`None`: absent).
    Upstream(
        &'static str,
        &'static [(&'static str, Option<&'static str>)],
    ),
    /// A redirect: status and the Location's path (and host, if not the request's).
    Redirect(u16, &'static str, Option<&'static str>),
    /// A redirect to exactly this Location (`{host}` is the request's host).
    Location(u16, &'static str),
    /// 200 from this backend, which saw this path and this `Host`.
    UpstreamHost(&'static str, &'static str, &'static str),
}

struct Case {
    file: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    expect: Expect,
}

const fn case(file: &'static str, path: &'static str, expect: Expect) -> Case {
    Case {
        file,
        method: "GET",
        path,
        headers: &[],
        expect,
    }
}

const fn with(
    file: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    expect: Expect,
) -> Case {
    Case {
        file,
        method,
        path,
        headers,
        expect,
    }
}

use Expect::{Backend, Location, Redirect, Status, Upstream as Up, UpstreamHost};

const V1: &str = "infra-backend-v1";
const V2: &str = "infra-backend-v2";
const V3: &str = "infra-backend-v3";

/// The conformance cases, as in each test's `.go` file.
fn cases() -> Vec<Case> {
    let m = "httproute-matching";
    let e = "httproute-exact-path-matching";
    let q = "httproute-query-param-matching";
    let me = "httproute-method-matching";
    let h = "httproute-header-matching";
    let rw = "httproute-rewrite-path";
    let rd = "httproute-redirect-path";
    let rh = "httproute-request-header-modifier";
    let rhs = "httproute-redirect-host-and-status";
    let rs = "httproute-redirect-scheme";
    let rp = "httproute-redirect-port";
    let rwh = "httproute-rewrite-host";
    vec![
        // HTTPRouteMatching
        case(m, "/", Backend(V1)),
        case(m, "/example", Backend(V1)),
        with(m, "GET", "/", &[("version", "one")], Backend(V1)),
        case(m, "/v2", Backend(V2)),
        case(m, "/v2/example", Backend(V2)),
        with(m, "GET", "/", &[("version", "two")], Backend(V2)),
        case(m, "/v2/", Backend(V2)),
        case(m, "/v2example", Backend(V1)),
        case(m, "/foo/v2/example", Backend(V1)),
        // HTTPRouteExactPathMatching
        case(e, "/one", Backend(V1)),
        case(e, "/two", Backend(V2)),
        case(e, "/", Status(404)),
        case(e, "/one/example", Status(404)),
        case(e, "/two/", Status(404)),
        case(e, "/Two", Status(404)),
        // HTTPRouteQueryParamMatching
        case(q, "/?animal=whale", Backend(V1)),
        case(q, "/?animal=dolphin", Backend(V2)),
        case(q, "/?animal=dolphin&color=blue", Backend(V3)),
        case(q, "/?ANIMAL=Whale", Backend(V3)),
        case(q, "/?animal=whale&otherparam=irrelevant", Backend(V1)),
        case(q, "/?animal=dolphin&color=yellow", Backend(V2)),
        case(q, "/?color=blue", Status(404)),
        case(q, "/?animal=dog", Status(404)),
        case(q, "/?animal=whaledolphin", Status(404)),
        case(q, "/", Status(404)),
        case(q, "/path1?animal=whale", Backend(V1)),
        with(
            q,
            "GET",
            "/?animal=whale",
            &[("version", "one")],
            Backend(V2),
        ),
        with(
            q,
            "GET",
            "/path2?animal=whale",
            &[("version", "two")],
            Backend(V3),
        ),
        case(q, "/path3?animal=shark", Backend(V1)),
        with(
            q,
            "GET",
            "/path4?animal=kraken",
            &[("version", "three")],
            Backend(V1),
        ),
        case(q, "/?animal=shark", Status(404)),
        case(q, "/path4?animal=kraken", Status(404)),
        case(q, "/path5?animal=hydra", Backend(V1)),
        with(
            q,
            "GET",
            "/?animal=hydra",
            &[("version", "four")],
            Backend(V3),
        ),
        // HTTPRouteMethodMatching
        with(me, "POST", "/", &[], Backend(V1)),
        with(me, "GET", "/", &[], Backend(V2)),
        with(me, "HEAD", "/", &[], Status(404)),
        with(me, "GET", "/path1", &[], Backend(V1)),
        with(me, "PUT", "/", &[("version", "one")], Backend(V2)),
        with(me, "POST", "/path2", &[("version", "two")], Backend(V3)),
        with(me, "PATCH", "/path3", &[], Backend(V1)),
        with(me, "DELETE", "/path4", &[("version", "three")], Backend(V1)),
        with(me, "PUT", "/", &[], Status(404)),
        with(me, "DELETE", "/path4", &[], Status(404)),
        with(me, "PATCH", "/path5", &[], Backend(V1)),
        with(me, "PATCH", "/", &[("version", "four")], Backend(V2)),
        // HTTPRouteHeaderMatching
        with(h, "GET", "/", &[("version", "one")], Backend(V1)),
        with(h, "GET", "/", &[("version", "two")], Backend(V2)),
        with(
            h,
            "GET",
            "/",
            &[("version", "two"), ("color", "orange")],
            Backend(V1),
        ),
        with(
            h,
            "GET",
            "/",
            &[("version", "two"), ("color", "blue")],
            Backend(V2),
        ),
        with(h, "GET", "/", &[("color", "orange")], Status(404)),
        with(h, "GET", "/", &[("some-other-header", "one")], Status(404)),
        with(h, "GET", "/", &[("color", "blue")], Backend(V1)),
        with(h, "GET", "/", &[("color", "green")], Backend(V1)),
        with(h, "GET", "/", &[("color", "red")], Backend(V2)),
        with(h, "GET", "/", &[("color", "yellow")], Backend(V2)),
        with(h, "GET", "/", &[("color", "purple")], Status(404)),
        // HTTPRouteRewritePath
        case(rw, "/prefix/one/two", Up("/one/two", &[])),
        case(rw, "/strip-prefix/three", Up("/three", &[])),
        case(rw, "/strip-prefix", Up("/", &[])),
        case(rw, "/full/one/two", Up("/one", &[])),
        with(
            rw,
            "GET",
            "/full/rewrite-path-and-modify-headers/test",
            &[
                ("x-header-remove", "remove-val"),
                ("x-header-add-append", "append-val-1"),
                ("x-header-set", "set-val"),
            ],
            Up(
                "/test",
                &[
                    ("x-header-add", Some("header-val-1")),
                    ("x-header-add-append", Some("append-val-1,header-val-2")),
                    ("x-header-set", Some("set-overwrites-values")),
                    ("x-header-remove", None),
                ],
            ),
        ),
        with(
            rw,
            "GET",
            "/prefix/rewrite-path-and-modify-headers/one",
            &[
                ("x-header-remove", "remove-val"),
                ("x-header-add-append", "append-val-1"),
                ("x-header-set", "set-val"),
            ],
            Up(
                "/prefix/one",
                &[
                    ("x-header-add", Some("header-val-1")),
                    ("x-header-add-append", Some("append-val-1,header-val-2")),
                    ("x-header-set", Some("set-overwrites-values")),
                    ("x-header-remove", None),
                ],
            ),
        ),
        // HTTPRouteRedirectPath
        case(
            rd,
            "/original-prefix/lemon",
            Redirect(302, "/replacement-prefix/lemon", None),
        ),
        case(
            rd,
            "/full/path/original",
            Redirect(302, "/full-path-replacement", None),
        ),
        case(
            rd,
            "/path-and-host",
            Redirect(302, "/replacement-prefix", Some("example.org")),
        ),
        case(
            rd,
            "/path-and-status",
            Redirect(301, "/replacement-prefix", None),
        ),
        case(
            rd,
            "/full-path-and-host",
            Redirect(302, "/replacement-full", Some("example.org")),
        ),
        case(
            rd,
            "/full-path-and-status",
            Redirect(301, "/replacement-full", None),
        ),
        // HTTPRouteRequestHeaderModifier
        with(
            rh,
            "GET",
            "/set",
            &[("some-other-header", "val")],
            Up(
                "/set",
                &[
                    ("some-other-header", Some("val")),
                    ("x-header-set", Some("set-overwrites-values")),
                ],
            ),
        ),
        with(
            rh,
            "GET",
            "/set",
            &[
                ("some-other-header", "val"),
                ("x-header-set", "some-other-value"),
            ],
            Up("/set", &[("x-header-set", Some("set-overwrites-values"))]),
        ),
        with(
            rh,
            "GET",
            "/add",
            &[("some-other-header", "val")],
            Up("/add", &[("x-header-add", Some("add-appends-values"))]),
        ),
        with(
            rh,
            "GET",
            "/add",
            &[
                ("some-other-header", "val"),
                ("x-header-add", "some-other-value"),
            ],
            Up(
                "/add",
                &[("x-header-add", Some("some-other-value,add-appends-values"))],
            ),
        ),
        with(
            rh,
            "GET",
            "/remove",
            &[("x-header-remove", "val")],
            Up("/remove", &[("x-header-remove", None)]),
        ),
        // HTTPRouteRedirectHostAndStatus
        case(
            rhs,
            "/hostname-redirect",
            Location(302, "https://example.org/hostname-redirect"),
        ),
        case(
            rhs,
            "/host-and-status",
            Location(301, "https://example.org/host-and-status"),
        ),
        // HTTPRouteRedirectScheme (the gateway's own scheme is https: the default port is dropped)
        case(rs, "/scheme", Location(302, "https://{host}/scheme")),
        case(
            rs,
            "/scheme-and-host",
            Location(302, "https://example.org/scheme-and-host"),
        ),
        case(
            rs,
            "/scheme-and-status",
            Location(301, "https://{host}/scheme-and-status"),
        ),
        case(
            rs,
            "/scheme-and-host-and-status",
            Location(302, "https://example.org/scheme-and-host-and-status"),
        ),
        // HTTPRouteRedirectPort
        case(rp, "/port", Location(302, "https://{host}:8083/port")),
        case(
            rp,
            "/port-and-host",
            Location(302, "https://example.org:8083/port-and-host"),
        ),
        case(
            rp,
            "/port-and-status",
            Location(301, "https://{host}:8083/port-and-status"),
        ),
        case(
            rp,
            "/port-and-host-and-status",
            Location(302, "https://example.org:8083/port-and-host-and-status"),
        ),
        // HTTPRouteRewriteHost
        case(rwh, "/one", UpstreamHost(V1, "/one", "one.example.org")),
        case(rwh, "/two", UpstreamHost(V2, "/two", "example.org")),
        case(
            rwh,
            "/rewrite-host-and-modify-headers",
            UpstreamHost(V2, "/rewrite-host-and-modify-headers", "test.example.org"),
        ),
    ]
}

async fn run_case(c: &Client, case: &Case) -> Result<(), String> {
    let host = host_of(case.file);
    let mut req = c.request(&host, case.path).method(case.method);
    for (k, v) in case.headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|e| e.to_string())?;
    let r = c.send(req).await.map_err(|e| e.to_string())?;
    let json = || serde_json::from_str::<serde_json::Value>(&r.body).unwrap_or_default();
    let ok = match &case.expect {
        Backend(b) => r.status == 200 && r.upstream().as_deref() == Some(*b),
        Status(s) => r.status == *s,
        Up(path, headers) => {
            let j = json();
            r.status == 200
                && j["path"] == *path
                && headers.iter().all(|(k, v)| j["headers"][*k].as_str() == *v)
        }
        Redirect(status, path, want_host) => {
            let loc = r
                .headers
                .get("location")
                .and_then(|l| l.to_str().ok())
                .unwrap_or_default();
            let want = format!("https://{}{path}", want_host.unwrap_or(&host));
            r.status == *status && loc == want
        }
        Location(status, want) => {
            let loc = r
                .headers
                .get("location")
                .and_then(|l| l.to_str().ok())
                .unwrap_or_default();
            r.status == *status && loc == want.replace("{host}", &host)
        }
        UpstreamHost(b, path, want_host) => {
            let j = json();
            r.status == 200
                && r.upstream().as_deref() == Some(*b)
                && j["path"] == *path
                && j["headers"]["host"] == *want_host
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} {} {} {:?}: got {} {:?} {}",
            case.file,
            case.method,
            case.path,
            case.headers,
            r.status,
            r.headers.get("location"),
            r.body.trim()
        ))
    }
}

#[tokio::test]
async fn gateway_api_conformance_table() {
    let ups = backends().await;
    let mut manifests = vec![("infra.yaml", infra(&ups))];
    let routes: Vec<(String, String)> = FILES
        .iter()
        .map(|f| (format!("{f}.yaml"), conformance(f, &host_of(f))))
        .collect();
    manifests.extend(routes.iter().map(|(n, y)| (n.as_str(), y.clone())));
    let h = Harness::start(&manifests).await;
    let c = h.client("peer-west");
    let mut results: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in cases() {
        let entry = results.entry(case.file).or_default();
        match run_case(&c, &case).await {
            Ok(()) => entry.0 += 1,
            Err(e) => {
                entry.1 += 1;
                failures.push(e);
            }
        }
    }
    for (file, (pass, fail)) in &results {
        println!("{file}: {pass} passed, {fail} failed");
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

/// `httproute-weight.yaml`: 70/30/0 within ±5 percentage points over 2,000
/// requests (one HTTP/2 connection).
#[tokio::test]
async fn weights_split_within_five_percent() {
    let ups = backends().await;
    let weight = conformance("httproute-weight", "weight.example");
    let h = Harness::start(&[("infra.yaml", infra(&ups)), ("weight.yaml", weight)]).await;
    let mut s = h.client("peer-west").h2_session().await.expect("h2");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    const N: usize = 2000;
    for _ in 0..N {
        let (status, body) = s.get("weight.example", "/").await.expect("request");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        *counts
            .entry(v["upstream"].as_str().unwrap_or("-").to_string())
            .or_default() += 1;
    }
    let share = |b: &str| counts.get(b).copied().unwrap_or(0) as f64 / N as f64;
    assert!((share(V1) - 0.70).abs() <= 0.05, "{counts:?}");
    assert!((share(V2) - 0.30).abs() <= 0.05, "{counts:?}");
    assert_eq!(counts.get(V3), None, "weight 0 gets nothing: {counts:?}");
}

fn route(name: &str, spec: &str) -> String {
    format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  parentRefs:\n  - name: same-namespace\n{spec}")
}

#[tokio::test]
async fn filters_response_headers_host_rewrite_timeout_and_gamma_parent() {
    let ups = backends().await;
    let r = route(
        "filters",
        "  hostnames: [\"filters.example\"]\n  rules:\n  - matches:\n    - path: {type: PathPrefix, value: /resp}\n    filters:\n    - type: ResponseHeaderModifier\n      responseHeaderModifier:\n        set: [{name: X-Set, value: one}]\n        add: [{name: X-Add, value: two}]\n        remove: [content-type]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches:\n    - path: {type: PathPrefix, value: /host}\n    filters:\n    - type: URLRewrite\n      urlRewrite: {hostname: rewritten.example}\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n  - matches:\n    - path: {type: PathPrefix, value: /delay}\n    timeouts: {request: 200ms}\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n  - matches:\n    - path: {type: PathPrefix, value: /redirect}\n    filters:\n    - type: RequestRedirect\n      requestRedirect: {scheme: http, port: 8080}\n",
    );
    // GAMMA: a route whose parent is a Service applies to that Service's host.
    let gamma = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: gamma\n  namespace: {NS}\nspec:\n  parentRefs:\n  - {{group: \"\", kind: Service, name: infra-backend-v1, port: 8080}}\n  rules:\n  - matches:\n    - path: {{type: PathPrefix, value: /to-v3}}\n    backendRefs: [{{name: infra-backend-v3, port: 8080}}]\n"
    );
    let h = Harness::start(&[
        ("infra.yaml", infra(&ups)),
        ("filters.yaml", r),
        ("gamma.yaml", gamma),
    ])
    .await;
    let c = h.client("peer-west");
    let resp = c.get("filters.example", "/resp").await.expect("resp");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.headers["x-set"], "one");
    assert_eq!(resp.headers["x-add"], "two");
    assert!(resp.headers.get("content-type").is_none());
    let resp = c.get("filters.example", "/host").await.expect("host");
    assert_eq!(resp.json()["headers"]["host"], "rewritten.example");
    let resp = c.get("filters.example", "/delay/2").await.expect("slow");
    assert_eq!(resp.status, 504, "timeouts.request: {}", resp.body);
    let resp = c
        .get("filters.example:4143", "/redirect/x?y=1")
        .await
        .expect("redirect");
    assert_eq!(resp.status, 302);
    assert_eq!(
        resp.headers["location"],
        "http://filters.example:8080/redirect/x?y=1"
    );
    // The Service's host: the route's rule first, the rest unchanged (not exported: 404).
    let svc = "infra-backend-v1.gateway-conformance-infra.svc.cluster.local:8080";
    let resp = c.get(svc, "/to-v3/x").await.expect("gamma");
    assert_eq!(resp.upstream().as_deref(), Some(V3), "{}", resp.body);
    assert_eq!(c.get(svc, "/other").await.expect("gamma").status, 404);
}

/// A Mapping and an HTTPRoute on one host: merged by path specificity (exact,
/// then longer prefix); at equal path, the HTTPRoute rule wins.
#[tokio::test]
async fn precedence_against_a_mapping_on_the_same_host() {
    let ups = backends().await;
    let r = route(
        "api",
        "  hostnames: [\"api.example\"]\n  rules:\n  - matches:\n    - path: {type: PathPrefix, value: /api}\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n  - matches:\n    - path: {type: PathPrefix, value: /api/special}\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n",
    );
    let m1 = mapping(
        NS,
        "api-longer",
        "    hostname: api.example\n    prefix: /api/v1/\n    rewrite: \"\"\n    service: infra-backend-v1:8080\n",
    );
    let m2 = mapping(
        NS,
        "api-same",
        "    hostname: api.example\n    prefix: /api\n    rewrite: \"\"\n    service: infra-backend-v1:8080\n",
    );
    let h = Harness::start(&[
        ("infra.yaml", infra(&ups)),
        ("route.yaml", r),
        ("mappings.yaml", format!("{m1}---\n{m2}")),
    ])
    .await;
    let c = h.client("peer-west");
    let who = |path: &'static str| {
        let c = c.clone();
        async move {
            c.get("api.example", path)
                .await
                .expect("request")
                .upstream()
        }
    };
    assert_eq!(
        who("/api/v1/x").await.as_deref(),
        Some(V1),
        "longer Mapping prefix"
    );
    assert_eq!(
        who("/api/x").await.as_deref(),
        Some(V2),
        "same prefix: HTTPRoute"
    );
    assert_eq!(
        who("/api/special/x").await.as_deref(),
        Some(V3),
        "longer HTTPRoute prefix"
    );
}

async fn start_kube(api: &ApiServer) -> Harness {
    let kubeconfig =
        std::env::temp_dir().join(format!("isthmus-kubeconfig-{}.yaml", api.addr().port()));
    std::fs::write(&kubeconfig, api.kubeconfig_yaml()).expect("write kubeconfig");
    let h = Harness::start_with(&[], |cfg| {
        cfg.discovery = Discovery::Kubernetes(KubernetesDiscovery {
            kubeconfig: Some(kubeconfig),
            crd_recheck_interval_ms: 100,
            ..Default::default()
        });
    })
    .await;
    eventually("gateway ready", || async {
        h.admin_get("/ready").await.0 == 200
    })
    .await;
    h
}

fn parent_conditions(api: &ApiServer, name: &str) -> Option<serde_json::Value> {
    let ns = if name == "elsewhere" { "other" } else { NS };
    let r = api.get_json("httproutes", ns, name)?;
    let p = r["status"]["parents"].as_array()?.first()?.clone();
    Some(p)
}

fn condition<'a>(parent: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
    parent["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&serde_json::Value::Null)
}

#[tokio::test]
async fn status_conditions_and_invalid_backend_share_through_the_api_server() {
    let api = ApiServer::start().await;
    let ups = backends().await;
    for (name, up) in BACKENDS.iter().zip(&ups) {
        api.apply(&typed::<Service>(&service(NS, name, false, 8080)));
        api.apply(&typed::<EndpointSlice>(&slice(
            NS,
            &format!("{name}-1"),
            name,
            up.addr,
            true,
        )));
    }
    api.apply_json(
        "gatewayclasses",
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": "isthmus"}, "spec": {"controllerName": "isthmus.dev/gateway"}}),
    );
    api.apply_json(
        "gateways",
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "same-namespace", "namespace": NS},
               "spec": {"gatewayClassName": "isthmus", "listeners": [{"name": "https", "port": 4143, "protocol": "HTTPS"}]}}),
    );
    let h = start_kube(&api).await;
    // Half the weight on a Service that does not exist: 500 for that half.
    api.apply_json(
        "httproutes",
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "half-broken", "namespace": NS},
               "spec": {"parentRefs": [{"name": "same-namespace"}], "hostnames": ["half.example"],
                        "rules": [{"backendRefs": [
                            {"name": "infra-backend-v1", "port": 8080, "weight": 1},
                            {"name": "missing", "port": 8080, "weight": 1}]}]}}),
    );
    // A route from another namespace: the listener allows Same only.
    api.apply_json(
        "httproutes",
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "elsewhere", "namespace": "other"},
               "spec": {"parentRefs": [{"name": "same-namespace", "namespace": NS}], "hostnames": ["elsewhere.example"],
                        "rules": [{"backendRefs": [{"name": "infra-backend-v1", "port": 8080}]}]}}),
    );
    // Only invalid backends: 500 for all.
    api.apply_json(
        "httproutes",
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "all-broken", "namespace": NS},
               "spec": {"parentRefs": [{"name": "same-namespace"}], "hostnames": ["broken.example"],
                        "rules": [{"backendRefs": [{"name": "infra-backend-v1", "port": 9999}]}]}}),
    );
    eventually("half-broken status written", || async {
        parent_conditions(&api, "half-broken").is_some_and(|p| {
            condition(&p, "Accepted")["status"] == "True"
                && condition(&p, "ResolvedRefs")["status"] == "False"
        })
    })
    .await;
    let p = parent_conditions(&api, "half-broken").expect("status");
    assert_eq!(p["controllerName"], "isthmus.dev/gateway");
    assert_eq!(p["parentRef"]["name"], "same-namespace");
    assert_eq!(condition(&p, "Accepted")["reason"], "Accepted");
    assert_eq!(condition(&p, "ResolvedRefs")["reason"], "BackendNotFound");
    assert_eq!(condition(&p, "Accepted")["observedGeneration"], 1);
    assert!(condition(&p, "Accepted")["lastTransitionTime"].is_string());
    eventually("elsewhere not allowed", || async {
        parent_conditions(&api, "elsewhere").is_some_and(|p| {
            condition(&p, "Accepted")["status"] == "False"
                && condition(&p, "Accepted")["reason"] == "NotAllowedByListeners"
        })
    })
    .await;

    let mut s = h.client("peer-west").h2_session().await.expect("h2");
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    const N: usize = 1000;
    for _ in 0..N {
        let (status, _) = s.get("half.example", "/").await.expect("request");
        *by_status.entry(status).or_default() += 1;
    }
    let share = |st: u16| by_status.get(&st).copied().unwrap_or(0) as f64 / N as f64;
    assert!((share(500) - 0.5).abs() <= 0.06, "{by_status:?}");
    assert!((share(200) - 0.5).abs() <= 0.06, "{by_status:?}");
    for _ in 0..20 {
        assert_eq!(s.get("broken.example", "/").await.expect("request").0, 500);
    }
    assert_eq!(
        s.get("elsewhere.example", "/").await.expect("request").0,
        404
    );

    // No ready endpoints: 503 (the backend resolves, so ResolvedRefs is True).
    api.apply(&typed::<EndpointSlice>(&slice(
        NS,
        "infra-backend-v1-1",
        "infra-backend-v1",
        ups[0].addr,
        false,
    )));
    api.apply_json(
        "httproutes",
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "half-broken", "namespace": NS},
               "spec": {"parentRefs": [{"name": "same-namespace"}], "hostnames": ["half.example"],
                        "rules": [{"backendRefs": [{"name": "infra-backend-v1", "port": 8080}]}]}}),
    );
    eventually(
        "fixed route: ResolvedRefs True, 503 without endpoints",
        || async {
            let fixed = parent_conditions(&api, "half-broken")
                .is_some_and(|p| condition(&p, "ResolvedRefs")["status"] == "True");
            fixed && h.client("peer-west").status("half.example", "/").await == 503
        },
    )
    .await;
}

#[tokio::test]
async fn httproutes_start_routing_when_the_gateway_api_crds_appear() {
    let api = ApiServer::start().await;
    for plural in ["httproutes", "gateways", "gatewayclasses"] {
        api.set_served(plural, false);
    }
    let ups = backends().await;
    api.apply(&typed::<Service>(&service(NS, V1, false, 8080)));
    api.apply(&typed::<EndpointSlice>(&slice(
        NS,
        "infra-backend-v1-1",
        V1,
        ups[0].addr,
        true,
    )));
    let h = start_kube(&api).await;
    api.apply_json(
        "gatewayclasses",
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": "isthmus"}, "spec": {"controllerName": "isthmus.dev/gateway"}}),
    );
    api.apply_json(
        "gateways",
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "same-namespace", "namespace": NS},
               "spec": {"gatewayClassName": "isthmus", "listeners": [{"name": "https", "port": 4143}]}}),
    );
    api.apply_json(
        "httproutes",
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "late", "namespace": NS},
               "spec": {"parentRefs": [{"name": "same-namespace"}], "hostnames": ["late.example"],
                        "rules": [{"backendRefs": [{"name": V1, "port": 8080}]}]}}),
    );
    let c = h.client("peer-west");
    assert_eq!(c.status("late.example", "/").await, 404);
    for plural in ["httproutes", "gateways", "gatewayclasses"] {
        api.set_served(plural, true);
    }
    eventually("the HTTPRoute routes once the CRDs appear", || async {
        c.get("late.example", "/")
            .await
            .is_ok_and(|r| r.status == 200 && r.upstream().as_deref() == Some(V1))
    })
    .await;
}
