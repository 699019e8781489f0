use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode, Uri};
use http_body_util::BodyExt;

use super::*;
use crate::admin::{self, explain::ExplainConfig, Readiness};
use crate::discovery::DiscoveryStatus;
use crate::metrics::Metrics;
use crate::routes::{
    Authorization, Backend, BackendSettings, Endpoint, HostMatch, IdentityPattern, PortMatch,
    Route, RouteMatch, RouteTable, RouteTarget,
};
use crate::tls::dev::{CertAuthority, LeafSpec};

fn route(i: usize) -> Route {
    let host: Arc<str> = format!("svc-{i:05}.ns-{:02}.svc.cluster.local", i % 50).into();
    Route {
        name: format!("service/ns-{:02}/svc-{i:05}:8080", i % 50).into(),
        hosts: vec![
            HostMatch::Exact(host.clone(), PortMatch::Port(8080)),
            HostMatch::Exact(host, PortMatch::Absent),
        ],
        matcher: RouteMatch::any().into(),
        authz: Authorization::new(Arc::from(vec![IdentityPattern::Any])),
        target: RouteTarget::new(vec![Backend::new(
            format!("ns-{:02}/svc-{i:05}:8080", i % 50).into(),
            1,
            (0..3)
                .map(|e| {
                    Arc::new(Endpoint::new(std::net::SocketAddr::from((
                        [10, (i / 250) as u8, (i % 250) as u8, e],
                        8080,
                    ))))
                })
                .collect(),
            Arc::new(BackendSettings::with_timeouts(
                Duration::from_secs(1),
                Duration::from_secs(1),
                Duration::from_secs(1),
            )),
        )]),
    }
}

fn state(routes: usize) -> admin::AdminState {
    let table = RouteTable::new((0..routes).map(route).collect(), routes, routes * 3);
    admin::AdminState {
        readiness: Arc::new(Readiness::default()),
        metrics: Arc::new(Metrics::new()),
        routes: Arc::new(arc_swap::ArcSwap::from_pointee(table)),
        tls: None,
        discovery: Arc::new(DiscoveryStatus::new("files")),
        recent: Arc::default(),
        peers: Arc::default(),
        explain: Arc::new(ExplainConfig {
            cluster_domain: "cluster.local".into(),
            export_label: "mirror.linkerd.io/exported".into(),
        }),
        identity: "spiffe://east.example/gateway".into(),
    }
}

fn get(state: &admin::AdminState, target: &str) -> (StatusCode, Vec<u8>) {
    let uri: Uri = target.parse().expect("uri");
    let resp = admin::handle(state, &Method::GET, &uri);
    let status = resp.status();
    let body = futures::executor::block_on(resp.into_body().collect())
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default();
    (status, body)
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("JSON")
}

#[test]
fn routes_page_of_ten_thousand_routes_stays_small() {
    let s = state(10_000);
    let (status, body) = get(&s, "/routes?limit=100");
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.len() < 100 * 1024,
        "100 routes should be well under 100 KiB, got {} bytes",
        body.len()
    );
    eprintln!("/routes?limit=100 of 10,000 routes: {} bytes", body.len());
    let page = json_of(&body);
    assert_eq!(page["routes"].as_array().map(Vec::len), Some(100));
    assert_eq!(page["total"], 10_000);
    assert_eq!(page["counts"]["routes"], 10_000);
    // No limit: the default (100); more than the largest is capped.
    let (_, default) = get(&s, "/routes");
    assert_eq!(
        json_of(&default)["routes"].as_array().map(Vec::len),
        Some(100)
    );
    let (_, capped) = get(&s, "/routes?limit=100000");
    assert_eq!(
        json_of(&capped)["routes"].as_array().map(Vec::len),
        Some(admin::ROUTES_MAX_LIMIT)
    );
    // The page itself does not grow with the table.
    let (status, html) = get(&s, "/");
    assert_eq!(status, StatusCode::OK);
    assert!(html.len() < 48 * 1024, "page is {} bytes", html.len());
}

#[test]
fn routes_filter_and_offset_page_through_sorted_routes() {
    let s = state(300);
    let (_, body) = get(&s, "/routes?filter=NS-07&offset=2&limit=3");
    let page = json_of(&body);
    assert_eq!(page["total"], 6, "{page:#}");
    let names: Vec<&str> = page["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "service/ns-07/svc-00107:8080",
            "service/ns-07/svc-00157:8080",
            "service/ns-07/svc-00207:8080"
        ]
    );
    let r = &page["routes"][0];
    assert_eq!(r["source"], "Service ns-07/svc-00107");
    assert_eq!(r["backends"][0]["ready"], 3);
    assert_eq!(r["backends"][0]["total"], 3);
    let (status, body) = get(&s, "/routes?offset=x");
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json_of(&body)["error"]
        .as_str()
        .is_some_and(|e| e.contains("offset")));
}

#[test]
fn explain_without_parameters_is_a_json_400() {
    let s = state(3);
    let (status, body) = get(&s, "/explain");
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json_of(&body)["error"]
        .as_str()
        .is_some_and(|e| e.contains("host")));
    let (status, body) = get(
        &s,
        "/explain?host=svc-00001.ns-01.svc.cluster.local:8080&identity=spiffe%3A%2F%2Fx",
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&body)["decision"], "proxy");
}

#[test]
fn the_page_is_self_contained_and_phone_ready() {
    assert!(
        PAGE.contains(r#"<meta name="viewport" content="width=device-width, initial-scale=1">"#)
    );
    assert!(PAGE.contains("@media (max-width:640px)"));
    for external in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "@import",
        "<link",
    ] {
        assert!(!PAGE.contains(external), "external asset: {external}");
    }
    for id in [
        "routes",
        "peers",
        "remotes",
        "discovery",
        "tls",
        "errors",
        "explain-form",
    ] {
        assert!(PAGE.contains(&format!("id=\"{id}\"")), "section {id}");
    }
    assert!(
        PAGE.contains("/status.json") && PAGE.contains("/routes?") && PAGE.contains("/explain?")
    );
}

#[test]
fn status_lists_peers_remotes_errors_and_tls() {
    let mut s = state(2);
    let mirrors: Arc<[MirrorService]> = Arc::from(vec![
        MirrorService {
            cluster: "east".into(),
            service: "test/podinfo-east".into(),
            ready: vec!["192.0.2.10".parse().expect("ip")],
            not_ready: 0,
        },
        MirrorService {
            cluster: "north".into(),
            service: "test/podinfo-north".into(),
            ready: vec![],
            not_ready: 1,
        },
    ]);
    let table = RouteTable::new(vec![route(1)], 1, 3).with_discovery_facts(mirrors, Arc::default());
    s.routes.store(Arc::new(table));
    let ca = CertAuthority::new("page test ca").expect("ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = ca.issue(&LeafSpec::gateway()).expect("leaf");
    std::fs::write(dir.path().join("gw.crt"), gw.cert_pem()).expect("write");
    std::fs::write(dir.path().join("gw.key"), gw.key_pem()).expect("write");
    std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).expect("write");
    let cfg: crate::config::Tls = serde_yaml::from_str(&format!(
        "{{cert: {d}/gw.crt, key: {d}/gw.key, trust_anchors: {d}/ca.crt}}",
        d = dir.path().display()
    ))
    .expect("tls config");
    s.tls = Some(crate::tls::TlsServer::new(
        crate::tls::TlsMaterial::load(&cfg).expect("material"),
    ));
    s.metrics
        .requests
        .with_label_values(&["r", "spiffe://west.example/a", "2xx"])
        .inc_by(4);
    s.metrics
        .requests
        .with_label_values(&["r", "spiffe://west.example/a", "4xx"])
        .inc();
    s.recent.discovery("watch", "Service watch failed".into());

    let (_, body) = get(&s, "/status.json");
    let st = json_of(&body);
    assert_eq!(st["peers"][0]["identity"], "spiffe://west.example/a");
    assert_eq!(st["peers"][0]["requests"], 5);
    assert_eq!(st["peers"][0]["errors"], 1);
    assert!(st["peers"][0]["last_seen"].is_string());
    assert_eq!(st["remote_gateways"][0]["cluster"], "east");
    assert_eq!(st["remote_gateways"][0]["alive"], true);
    assert_eq!(st["remote_gateways"][1]["alive"], false);
    assert_eq!(st["remote_gateways"][1]["probe_latency"], "n/a");
    assert_eq!(st["recent_errors"][0]["reason"], "watch");
    assert_eq!(st["discovery"]["source"], "files");
    let serving = &st["tls"]["serving"];
    assert!(serving["subject"].is_string(), "{serving:#}");
    assert!(serving["sans"].as_array().is_some_and(|s| !s.is_empty()));
    assert_eq!(serving["expired"], false);
    assert_eq!(st["tls"]["trust_anchors"].as_array().map(Vec::len), Some(1));
    assert!(st["tls"]["trust_anchors"][0]["subject"]
        .as_str()
        .is_some_and(|s| s.contains("page test ca")));
}
