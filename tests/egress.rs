//! The calling side end to end on loopback: west's egress (plaintext
//! HTTP/1.1 and h2c) → mTLS → east's gateway → east's upstream, with
//! TrafficSplit splits, failover and primary/backup, against two real
//! gateways on their own file-source manifests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus::tls::dev::LeafSpec;
use isthmus_tests::grpc::{GrpcClient, GrpcServer};
use isthmus_tests::manifests::{
    exported_service, exported_service_app_protocol, mapping, service, slice,
};
use isthmus_tests::{eventually, Harness, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WEST_ID: &str = "spiffe://west.example/ns/isthmus/sa/isthmus-gateway";
const EAST_ID: &str = "spiffe://east.example/ns/isthmus/sa/isthmus-gateway";
const PODINFO: &str = "podinfo.test.svc.cluster.local:9898";
const PODINFO_EAST: &str = "podinfo-east.test.svc.cluster.local:9898";

/// A mirror Service as `isthmus mirror` writes it, with its slice at `gw`.
fn mirror(name: &str, remote: &str, identity: &str, gw: SocketAddr, ready: bool) -> String {
    mirror_on(name, remote, 9898, identity, gw, ready)
}

/// A mirror of a remote Service whose (only) port is `port`.
fn mirror_on(
    name: &str,
    remote: &str,
    port: u16,
    identity: &str,
    gw: SocketAddr,
    ready: bool,
) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: test\n  labels:\n    mirror.linkerd.io/mirrored-service: \"true\"\n    mirror.linkerd.io/cluster-name: east\n  annotations:\n    mirror.linkerd.io/remote-svc-fq-name: {remote}.test.svc.cluster.local\n    mirror.linkerd.io/remote-gateway-identity: {identity}\nspec:\n  ports:\n    - name: http\n      port: {port}\n---\n{}",
        slice("test", name, name, gw, ready).replace(
            "    kubernetes.io/service-name",
            "    endpointslice.kubernetes.io/managed-by: isthmus.dev/mirror\n    kubernetes.io/service-name"
        )
    )
}

fn split(primary: Option<&str>) -> String {
    let ann = primary
        .map(|p| format!("\n  annotations:\n    failover.linkerd.io/primary-service: {p}"))
        .unwrap_or_default();
    format!(
        "apiVersion: split.smi-spec.io/v1alpha1\nkind: TrafficSplit\nmetadata:\n  name: podinfo\n  namespace: test{ann}\nspec:\n  service: podinfo\n  backends:\n    - service: podinfo\n      weight: 500m\n    - service: podinfo-east\n      weight: 500m\n"
    )
}

struct Pair {
    east: Harness,
    west: Harness,
    _east_up: Upstream,
    _west_up: Upstream,
    egress: SocketAddr,
}

async fn pair() -> Pair {
    pair_with(vec![("split.yaml", split(None))], Vec::new()).await
}

/// West and east as in [`pair`], west with `west_extra` manifests (instead of
/// the TrafficSplit) and east with `east_extra` besides its podinfo.
async fn pair_with(
    west_extra: Vec<(&'static str, String)>,
    east_extra: Vec<(&'static str, String)>,
) -> Pair {
    let east_up = Upstream::start("podinfo-east").await;
    let west_up = Upstream::start("podinfo-west").await;
    let mut east_files = vec![(
        "podinfo.yaml",
        exported_service("test", "podinfo", 9898, east_up.addr),
    )];
    east_files.extend(east_extra);
    let east = Harness::start_with(&east_files, |cfg| {
        cfg.allowed_identities = vec![WEST_ID.into()]
    })
    .await;
    let mut west_cert = LeafSpec::peer_uri(WEST_ID);
    west_cert.ekus = Vec::new(); // client and server use
    east.issue_cert("west-gateway", &west_cert);
    let certs = east.certs();
    let gw = east.gateway.gateway_addr;
    let mut west_files = vec![
        (
            "podinfo.yaml",
            exported_service("test", "podinfo", 9898, west_up.addr),
        ),
        (
            "mirror.yaml",
            mirror("podinfo-east", "podinfo", EAST_ID, gw, true),
        ),
    ];
    west_files.extend(west_extra);
    let west = Harness::start_with(&west_files, |cfg| {
        cfg.tls.cert = certs.join("west-gateway.crt");
        cfg.tls.key = certs.join("west-gateway.key");
        cfg.tls.trust_anchors = Some(certs.join("ca.crt"));
    })
    .await;
    let egress = west.gateway.egress_addr.expect("egress on");
    Pair {
        east,
        west,
        _east_up: east_up,
        _west_up: west_up,
        egress,
    }
}

/// One request through a kept-alive HTTP/1.1 (or h2c) connection to the egress.
struct EgressClient {
    h1: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
    h2: Option<hyper::client::conn::http2::SendRequest<Empty<Bytes>>>,
}

#[derive(Debug)]
struct Answer {
    status: u16,
    error: Option<String>,
    json: serde_json::Value,
}

impl EgressClient {
    async fn h1(addr: SocketAddr) -> EgressClient {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect egress");
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("h1");
        tokio::spawn(conn);
        EgressClient {
            h1: Some(s),
            h2: None,
        }
    }

    async fn h2(addr: SocketAddr) -> EgressClient {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect egress");
        let (s, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2c");
        tokio::spawn(conn);
        EgressClient {
            h1: None,
            h2: Some(s),
        }
    }

    async fn get(&mut self, host: &str, path: &str) -> Answer {
        let resp = if let Some(s) = self.h1.as_mut() {
            let req = http::Request::get(path)
                .header(http::header::HOST, host)
                .body(Empty::new())
                .expect("request");
            s.ready().await.expect("ready");
            s.send_request(req).await
        } else {
            let req = http::Request::get(format!("http://{host}{path}"))
                .body(Empty::new())
                .expect("request");
            let s = self.h2.as_mut().expect("a connection");
            s.ready().await.expect("ready");
            s.send_request(req).await
        }
        .expect("egress answers");
        let status = resp.status().as_u16();
        let error = resp
            .headers()
            .get("x-isthmus-error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Answer {
            status,
            error,
            json: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        }
    }
}

fn upstream_of(a: &Answer) -> String {
    a.json["upstream"].as_str().unwrap_or("-").to_string()
}

/// A raw HTTP/1.1 exchange (absolute-form and CONNECT), status line and headers.
async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Ok(Err(_)) => break,
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test]
async fn a_mirror_name_reaches_east_over_mtls_with_west_identity() {
    let p = pair().await;
    for mut c in [
        EgressClient::h1(p.egress).await,
        EgressClient::h2(p.egress).await,
    ] {
        let a = c.get(PODINFO_EAST, "/hello").await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(upstream_of(&a), "podinfo-east");
        assert_eq!(a.json["headers"]["x-isthmus-peer-identity"], WEST_ID);
        assert_eq!(
            a.json["headers"]["host"], PODINFO,
            "authority = remote-svc-fq-name:port"
        );
        assert_eq!(a.json["path"], "/hello");
    }
    // Short names resolve too.
    let mut c = EgressClient::h1(p.egress).await;
    for host in [
        "podinfo-east.test:9898",
        "podinfo-east.test.svc",
        "podinfo-east.test",
    ] {
        assert_eq!(
            upstream_of(&c.get(host, "/").await),
            "podinfo-east",
            "{host}"
        );
    }
    // Absolute-form, as with http_proxy.
    let r = raw(
        p.egress,
        &format!("GET http://{PODINFO_EAST}/ HTTP/1.1\r\nHost: {PODINFO_EAST}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let text = p
        .west
        .metric("isthmus_egress_requests_total{status_class=\"2xx\",target_cluster_name=\"east\"}")
        .await;
    assert!(text >= 6.0, "egress metric counts east: {text}");
    assert!(p.east.metric(&format!("isthmus_requests_total{{peer=\"{WEST_ID}\",route=\"service/test/podinfo:9898\",status_class=\"2xx\"}}")).await >= 6.0);
}

#[tokio::test]
async fn the_egress_is_not_an_open_proxy() {
    let p = pair().await;
    let r = raw(
        p.egress,
        "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("x-isthmus-error: not_in_cluster"),
        "{r}"
    );
    let r = raw(
        p.egress,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    let mut c = EgressClient::h1(p.egress).await;
    let a = c.get("nothing.test.svc.cluster.local:80", "/").await;
    assert_eq!((a.status, a.error.as_deref()), (404, Some("no_route")));
    assert!(
        p.west
            .metric("isthmus_request_errors_total{reason=\"not_in_cluster\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn split_50_50_within_7_percent() {
    let p = pair().await;
    let mut c = EgressClient::h1(p.egress).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..1000 {
        let a = c.get(PODINFO, "/").await;
        assert_eq!(a.status, 200, "{a:?}");
        *counts.entry(upstream_of(&a)).or_default() += 1;
    }
    let east = counts.get("podinfo-east").copied().unwrap_or(0);
    eprintln!("split over 1000 requests: {counts:?}");
    assert!((430..=570).contains(&east), "{counts:?}");
}

#[tokio::test]
async fn a_wrong_gateway_identity_is_refused_and_nothing_is_sent() {
    let p = pair().await;
    p.west.write_manifest(
        "mirror.yaml",
        &mirror(
            "podinfo-east",
            "podinfo",
            "spiffe://east.example/ns/other/sa/impostor",
            p.east.gateway.gateway_addr,
            true,
        ),
    );
    let mut c = EgressClient::h1(p.egress).await;
    eventually("the mirror's identity changed", || async {
        p.west.gateway.egress_routes.load().iter().any(|r| {
            r.target.backends.iter().any(|b| {
                b.settings
                    .remote
                    .as_ref()
                    .is_some_and(|t| t.identity.contains("impostor"))
            })
        })
    })
    .await;
    let a = c.get(PODINFO_EAST, "/").await;
    assert_eq!(
        (a.status, a.error.as_deref()),
        (502, Some("upstream_connect")),
        "{a:?}"
    );
    assert!(
        p.west
            .metric("isthmus_egress_tls_failures_total{reason=\"identity_mismatch\"}")
            .await
            >= 1.0
    );
    let sent = p.east.metric_or_absent(&format!("isthmus_requests_total{{peer=\"{WEST_ID}\",route=\"service/test/podinfo:9898\",status_class=\"2xx\"}}")).await;
    assert_eq!(sent, 0.0, "no request reached east");
}

#[tokio::test]
async fn east_down_means_local_only_with_no_failed_request() {
    let p = pair().await;
    let mut c = EgressClient::h1(p.egress).await;
    let Pair {
        east,
        west,
        _east_up,
        _west_up,
        egress: _,
    } = p;
    east.shutdown(Duration::from_millis(100)).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        let a = c.get(PODINFO, "/").await;
        assert_eq!(a.status, 200, "a GET failed with east down: {a:?}");
        *counts.entry(upstream_of(&a)).or_default() += 1;
    }
    assert_eq!(counts.get("podinfo-west"), Some(&300), "{counts:?}");
    // (East coming back, and the mirror controller's not-ready slice, are
    // in tests/two_clusters.rs, with real processes that can restart.)
    drop(west);
}

#[tokio::test]
async fn primary_backup_follows_the_primary_s_endpoints() {
    let p = pair().await;
    p.west
        .write_manifest("split.yaml", &split(Some("podinfo-east")));
    let mut c = EgressClient::h1(p.egress).await;
    eventually("primary annotation applied", || async {
        p.west
            .gateway
            .egress_routes
            .load()
            .iter()
            .any(|r| r.target.primary.is_some())
    })
    .await;
    for _ in 0..50 {
        assert_eq!(upstream_of(&c.get(PODINFO, "/").await), "podinfo-east");
    }
    // The primary's endpoints go (its gateway is dead): all to the backup.
    let gw = p.east.gateway.gateway_addr;
    p.west.write_manifest(
        "mirror.yaml",
        &mirror("podinfo-east", "podinfo", EAST_ID, gw, false),
    );
    eventually("primary not ready", || async {
        p.west.gateway.egress_routes.load().iter().any(|r| {
            r.target
                .primary
                .is_some_and(|i| r.target.backends[i].endpoints.is_empty())
        })
    })
    .await;
    for _ in 0..50 {
        let a = c.get(PODINFO, "/").await;
        assert_eq!((a.status, upstream_of(&a).as_str()), (200, "podinfo-west"));
    }
    // Back: all to the primary again.
    p.west.write_manifest(
        "mirror.yaml",
        &mirror("podinfo-east", "podinfo", EAST_ID, gw, true),
    );
    eventually("primary ready again", || async {
        p.west.gateway.egress_routes.load().iter().any(|r| {
            r.target
                .primary
                .is_some_and(|i| !r.target.backends[i].endpoints.is_empty())
        })
    })
    .await;
    for _ in 0..50 {
        assert_eq!(upstream_of(&c.get(PODINFO, "/").await), "podinfo-east");
    }
}

#[tokio::test]
async fn a_split_with_a_missing_backend_is_reported_and_the_rest_works() {
    let p = pair().await;
    p.west.write_manifest(
        "split.yaml",
        "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata:\n  name: podinfo\n  namespace: test\nspec:\n  service: podinfo\n  backends:\n    - service: podinfo\n      weight: 50\n    - service: missing\n      weight: 50\n",
    );
    p.west
        .write_manifest("other.yaml", &service("test", "other", false, 80));
    eventually("split problem counted", || async {
        p.west
            .metric_or_absent("isthmus_discovery_errors_total{kind=\"trafficsplit\"}")
            .await
            >= 1.0
    })
    .await;
    let mut c = EgressClient::h1(p.egress).await;
    for _ in 0..20 {
        let a = c.get(PODINFO, "/").await;
        assert_eq!((a.status, upstream_of(&a).as_str()), (200, "podinfo-west"));
    }
    assert_eq!(upstream_of(&c.get(PODINFO_EAST, "/").await), "podinfo-east");
}

/// Counts which upstream answered `n` GETs for `host`.
async fn spread(c: &mut EgressClient, host: &str, path: &str, n: usize) -> HashMap<String, usize> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..n {
        let a = c.get(host, path).await;
        assert_eq!(a.status, 200, "{a:?}");
        *counts.entry(upstream_of(&a)).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn mappings_with_weights_split_the_egress_traffic() {
    // Emissary's canary: two Mappings on podinfo's host, 80 / 20.
    let canary = |name: &str, service: &str, weight: u32| {
        mapping(
            "test",
            name,
            &format!("  hostname: podinfo.test.svc.cluster.local\n  prefix: /\n  service: {service}\n  weight: {weight}\n"),
        )
    };
    let p = pair_with(
        vec![
            ("local.yaml", canary("podinfo-local", "podinfo", 80)),
            ("remote.yaml", canary("podinfo-remote", "podinfo-east", 20)),
        ],
        Vec::new(),
    )
    .await;
    let mut c = EgressClient::h1(p.egress).await;
    // Every in-cluster name of the root is split, with or without port.
    for host in [PODINFO, "podinfo.test", "podinfo.test.svc:9898"] {
        let counts = spread(&mut c, host, "/", 1000).await;
        let east = counts.get("podinfo-east").copied().unwrap_or(0);
        eprintln!("Mapping split 80/20 over 1000 requests to {host}: {counts:?}");
        assert!((130..=270).contains(&east), "{host}: {counts:?}");
    }

    // A Mapping on a path sends only that path, rewritten, to its backend;
    // the rest of the root stays as it was.
    p.west.write_manifest(
        "remote.yaml",
        &mapping(
            "test",
            "podinfo-remote",
            "  hostname: podinfo.test.svc.cluster.local:9898\n  prefix: /canary/\n  service: podinfo-east\n  weight: 100\n  add_request_headers:\n    x-canary: \"yes\"\n",
        ),
    );
    p.west.write_manifest(
        "local.yaml",
        &mapping(
            "test",
            "podinfo-local",
            "  hostname: podinfo.test.svc.cluster.local\n  prefix: /\n  service: podinfo\n  weight: 100\n",
        ),
    );
    eventually("the canary Mapping on /canary/", || async {
        p.west
            .gateway
            .egress_routes
            .load()
            .iter()
            .any(|r| r.matcher.prefix == "/canary/")
    })
    .await;
    let a = c.get(PODINFO, "/canary/hello").await;
    assert_eq!(upstream_of(&a), "podinfo-east", "{a:?}");
    assert_eq!(a.json["path"], "/hello", "Emissary's default rewrite to /");
    assert_eq!(a.json["headers"]["x-canary"], "yes");
    assert_eq!(a.json["headers"]["x-isthmus-peer-identity"], WEST_ID);
    let counts = spread(&mut c, PODINFO, "/other", 50).await;
    assert_eq!(counts.get("podinfo-west"), Some(&50), "{counts:?}");

    // A Mapping from another namespace does not split test's Service.
    p.west.write_manifest(
        "local.yaml",
        &mapping(
            "elsewhere",
            "takeover",
            "  hostname: podinfo.test.svc.cluster.local\n  prefix: /\n  service: podinfo-east.test\n  weight: 100\n",
        ),
    );
    eventually("the foreign Mapping reported", || async {
        p.west
            .metric_or_absent("isthmus_discovery_errors_total{kind=\"mapping\"}")
            .await
            >= 1.0
    })
    .await;
    let counts = spread(&mut c, PODINFO, "/", 50).await;
    assert_eq!(counts.get("podinfo-west"), Some(&50), "{counts:?}");
}

#[tokio::test]
async fn grpc_through_the_egress_to_a_local_h2c_service_and_across_clusters() {
    let west_grpc = GrpcServer::start().await;
    let east_grpc = GrpcServer::start().await;
    let p = pair_with(
        vec![(
            "echo.yaml",
            exported_service_app_protocol(
                "test",
                "echo",
                50051,
                west_grpc.addr,
                "kubernetes.io/h2c",
            ),
        )],
        vec![(
            "echo.yaml",
            exported_service_app_protocol("test", "echo", 50051, east_grpc.addr, "grpc"),
        )],
    )
    .await;
    // The mirror, once east's address is known.
    p.west.write_manifest(
        "echo-east.yaml",
        &mirror_on(
            "echo-east",
            "echo",
            50051,
            EAST_ID,
            p.east.gateway.gateway_addr,
            true,
        ),
    );
    eventually("echo-east mirrored", || async {
        p.west
            .gateway
            .egress_routes
            .load()
            .iter()
            .any(|r| r.name.contains("echo-east"))
    })
    .await;
    for (host, server) in [
        ("echo.test.svc.cluster.local:50051", &west_grpc),
        ("echo-east.test.svc.cluster.local:50051", &east_grpc),
    ] {
        let mut c = GrpcClient::h2c(p.egress).await.expect("h2c to the egress");
        let r = c
            .call(host, "/test.Echo/Unary", b"hi", &[])
            .await
            .expect("unary");
        assert_eq!(
            r.messages,
            vec![Bytes::from_static(b"echo:hi")],
            "{host}: {r:?}"
        );
        assert_eq!(r.status(), Some(0), "{host}: {r:?}");
        assert!(r.trailers.is_some(), "{host}: grpc-status in real trailers");
        let r = c
            .call(host, "/test.Echo/Stream", b"25", &[])
            .await
            .expect("stream");
        assert_eq!(r.messages.len(), 25, "{host}: {r:?}");
        let t = r.trailers.as_ref().expect("trailers");
        assert_eq!(
            (&t["grpc-status"], &t["grpc-message"]),
            (&"0".parse().expect("v"), &"stream done".parse().expect("v"))
        );
        let r = c
            .call(host, "/test.Echo/Fail", b"", &[])
            .await
            .expect("fail");
        assert_eq!(
            (r.status(), r.message().as_str()),
            (Some(5), "no such thing"),
            "{host}"
        );
        let calls = server.calls();
        assert_eq!(calls.len(), 3, "{host}: {calls:?}");
        assert!(calls.iter().all(|c| c.version == http::Version::HTTP_2));
        assert!(
            calls
                .iter()
                .all(|c| c.headers.get("te").is_some_and(|v| v == "trailers")),
            "{host}: te: trailers reaches the server"
        );
    }
    // East's server saw west's gateway identity.
    assert!(east_grpc.calls().iter().all(|c| c
        .headers
        .get("x-isthmus-peer-identity")
        .is_some_and(|v| v == WEST_ID)));
}
