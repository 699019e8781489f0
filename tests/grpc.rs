//! gRPC through the gateway: real HTTP/2 over mTLS to the gateway, h2c to a
//! gRPC upstream, real trailers; deadlines; the gateway's errors as gRPC statuses.

use std::time::{Duration, Instant};

use isthmus_tests::grpc::{GrpcClient, GrpcServer};
use isthmus_tests::manifests::{
    exported_service, exported_service_app_protocol, mapping, service, slice,
};
use isthmus_tests::{closed_port, Harness, Upstream};

const HOST: &str = "echo.test.svc.cluster.local:50051";

async fn echo_gateway(proto: &str) -> (Harness, GrpcServer) {
    let server = GrpcServer::start().await;
    let h = Harness::start(&[(
        "echo.yaml",
        exported_service_app_protocol("test", "echo", 50051, server.addr, proto),
    )])
    .await;
    (h, server)
}

#[tokio::test]
async fn unary_and_streaming_calls_carry_messages_and_trailers() {
    let (h, server) = echo_gateway("kubernetes.io/h2c").await;
    let mut c = GrpcClient::connect(&h.client("peer-west"))
        .await
        .expect("connect");

    let r = c
        .call(HOST, "/test.Echo/Unary", b"hello", &[])
        .await
        .expect("unary");
    assert_eq!(r.http_status, 200);
    assert_eq!(r.messages, vec![bytes::Bytes::from_static(b"echo:hello")]);
    assert_eq!(r.status(), Some(0), "{r:?}");
    assert!(r.trailers.is_some(), "grpc-status came in real trailers");

    let r = c
        .call(HOST, "/test.Echo/Stream", b"25", &[])
        .await
        .expect("stream");
    let got: Vec<String> = r
        .messages
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    let want: Vec<String> = (0..25).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
    let trailers = r.trailers.as_ref().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "stream done");

    // An application status is the upstream's, passed through.
    let r = c
        .call(HOST, "/test.Echo/Fail", b"", &[])
        .await
        .expect("fail");
    assert_eq!(r.status(), Some(5));
    assert_eq!(r.message(), "no such thing");

    let calls = server.calls();
    assert_eq!(calls.len(), 3);
    for call in &calls {
        assert_eq!(call.version, http::Version::HTTP_2, "h2c upstream");
        assert_eq!(call.headers["content-type"], "application/grpc");
    }
}

#[tokio::test]
async fn grpc_app_protocol_and_mapping_grpc_field_select_h2c() {
    let server = GrpcServer::start().await;
    let h = Harness::start(&[
        (
            "echo.yaml",
            exported_service_app_protocol("test", "echo", 50051, server.addr, "grpc"),
        ),
        (
            "plain.yaml",
            format!(
                "{}---\n{}",
                service("test", "plain", false, 8080),
                slice("test", "plain-1", "plain", server.addr, true)
            ),
        ),
        (
            "m.yaml",
            mapping(
                "test",
                "grpc-mapping",
                "  hostname: grpc.example\n  prefix: /\n  rewrite: \"\"\n  service: plain:8080\n  grpc: true\n",
            ),
        ),
    ])
    .await;
    let mut c = GrpcClient::connect(&h.client("peer-west"))
        .await
        .expect("connect");
    for host in [HOST, "grpc.example"] {
        let r = c
            .call(host, "/test.Echo/Unary", b"x", &[])
            .await
            .expect("call");
        assert_eq!(r.status(), Some(0), "{host}: {r:?}");
        assert_eq!(r.messages, vec![bytes::Bytes::from_static(b"echo:x")]);
    }
}

#[tokio::test]
async fn an_expired_deadline_is_deadline_exceeded() {
    let server = GrpcServer::start().await;
    let h = Harness::start(&[
        (
            "echo.yaml",
            exported_service_app_protocol("test", "echo", 50051, server.addr, "grpc"),
        ),
        (
            "m.yaml",
            mapping(
                "test",
                "short",
                "  hostname: short.example\n  prefix: /\n  rewrite: \"\"\n  service: echo:50051\n  timeout_ms: 300\n",
            ),
        ),
    ])
    .await;
    let mut c = GrpcClient::connect(&h.client("peer-west"))
        .await
        .expect("connect");

    // The caller's deadline (the route allows 5 s).
    let started = Instant::now();
    let r = c
        .call(HOST, "/test.Echo/Hang", b"", &[("grpc-timeout", "200m")])
        .await
        .expect("call");
    assert_eq!(r.http_status, 200);
    assert_eq!(r.status(), Some(4), "DEADLINE_EXCEEDED: {r:?}");
    assert!(r.trailers_only(), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(server.calls()[0].headers["grpc-timeout"], "200m");

    // A long deadline is capped by the route's timeout.
    let started = Instant::now();
    let r = c
        .call(
            "short.example",
            "/test.Echo/Hang",
            b"",
            &[("grpc-timeout", "30S")],
        )
        .await
        .expect("call");
    assert_eq!(r.status(), Some(4), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    h.wait_metric(
        "isthmus_request_errors_total{reason=\"upstream_timeout\"}",
        2.0,
    )
    .await;
}

#[tokio::test]
async fn gateway_errors_are_grpc_statuses() {
    let server = GrpcServer::start().await;
    let http1 = Upstream::start("http1").await;
    let closed = closed_port().await;
    let h = Harness::start(&[
        (
            "echo.yaml",
            exported_service_app_protocol("test", "echo", 50051, server.addr, "grpc"),
        ),
        (
            "down.yaml",
            exported_service_app_protocol("test", "down", 50051, closed, "grpc"),
        ),
        (
            "empty.yaml",
            format!(
                "{}---\n{}",
                service("test", "empty", true, 50051).replace(
                    "targetPort: http\n",
                    "targetPort: http\n      appProtocol: grpc\n"
                ),
                slice("test", "empty-1", "empty", server.addr, false)
            ),
        ),
        (
            "http1.yaml",
            exported_service("test", "http1", 8080, http1.addr),
        ),
    ])
    .await;
    let mut c = GrpcClient::connect(&h.client("peer-west"))
        .await
        .expect("connect");
    let cases = [
        ("nothing.test.svc.cluster.local:80", 12, "no_route"),
        ("down.test.svc.cluster.local:50051", 14, "upstream_connect"),
        ("empty.test.svc.cluster.local:50051", 14, "no_endpoints"),
        (
            "http1.test.svc.cluster.local:8080",
            12,
            "grpc_upstream_http1",
        ),
    ];
    for (host, code, label) in cases {
        let started = Instant::now();
        let r = c
            .call(host, "/test.Echo/Unary", b"x", &[])
            .await
            .expect("call");
        assert_eq!(r.http_status, 200, "{host}");
        assert_eq!(r.status(), Some(code), "{host}: {r:?}");
        assert!(r.trailers_only(), "{host}: {r:?}");
        assert_eq!(r.headers["content-type"], "application/grpc");
        assert_eq!(r.headers["x-isthmus-error"], label, "{host}");
        assert!(!r.message().is_empty(), "{host}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{host}: refused at once"
        );
    }

    // Not an allowed identity: PERMISSION_DENIED.
    let mut dns = GrpcClient::connect(&h.client("peer-dns"))
        .await
        .expect("connect");
    let r = dns
        .call(HOST, "/test.Echo/Unary", b"x", &[])
        .await
        .expect("call");
    assert_eq!(r.status(), Some(7), "{r:?}");
    assert!(r.trailers_only());

    // The same errors to a caller that does not speak gRPC stay HTTP.
    let plain = h
        .client("peer-west")
        .get("nothing.test.svc.cluster.local:80", "/")
        .await
        .expect("get");
    assert_eq!(plain.status, 404);
}

#[tokio::test]
async fn h1_and_h2c_to_one_address_keep_their_own_protocol() {
    // One upstream address that speaks both, behind an h2c and a plain Service.
    let up = Upstream::start("both").await;
    let h = Harness::start(&[
        (
            "h2.yaml",
            exported_service_app_protocol("test", "viah2", 80, up.addr, "kubernetes.io/h2c"),
        ),
        ("h1.yaml", exported_service("test", "viah1", 80, up.addr)),
    ])
    .await;
    let mut ka = h.client("peer-west").keep_alive().await.expect("connect");
    for _ in 0..5 {
        for (host, want) in [
            ("viah2.test.svc.cluster.local", "HTTP/2.0"),
            ("viah1.test.svc.cluster.local", "HTTP/1.1"),
        ] {
            let r = ka.get(host, "/").await.expect("get");
            assert_eq!(r.status, 200, "{host}: {}", r.body);
            assert_eq!(r.json()["version"], want, "{host}");
        }
    }
}
