//! The routing matrix through real mTLS connections to real upstreams.

use std::collections::HashMap;

use isthmus_tests::manifests::{exported_service, mapping, service, slice};
use isthmus_tests::{closed_port, eventually, Harness, Upstream};

const HOST: &str = "podinfo.test.svc.cluster.local:9898";

#[tokio::test]
async fn exported_service_answers_from_its_upstream_with_host_variants() {
    let podinfo = Upstream::start("podinfo").await;
    let other = Upstream::start("other").await;
    let h = Harness::start(&[
        (
            "podinfo.yaml",
            exported_service("test", "podinfo", 9898, podinfo.addr),
        ),
        (
            "other.yaml",
            exported_service("test", "other", 8080, other.addr),
        ),
    ])
    .await;
    let c = h.client("peer-west");
    for host in [
        HOST,
        "PODINFO.test.svc.cluster.local:9898",
        "podinfo.test.svc.cluster.local.:9898",
        "podinfo.test.svc.cluster.local",
    ] {
        let resp = c.get(host, "/some/path?q=1").await.expect("request");
        assert_eq!(resp.status, 200, "{host}: {}", resp.body);
        assert_eq!(resp.upstream().as_deref(), Some("podinfo"), "{host}");
        assert_eq!(
            resp.json()["path"],
            "/some/path",
            "exported routes keep the path"
        );
        assert_eq!(resp.json()["query"], "q=1");
    }
    let resp = c
        .get("other.test.svc.cluster.local:8080", "/")
        .await
        .expect("request");
    assert_eq!(resp.upstream().as_deref(), Some("other"));
}

#[tokio::test]
async fn unknown_and_non_exported_are_the_same_404() {
    let up = Upstream::start("internal").await;
    let h = Harness::start(&[(
        "internal.yaml",
        format!(
            "{}---\n{}",
            service("test", "internal", false, 80),
            slice("test", "internal-1", "internal", up.addr, true)
        ),
    )])
    .await;
    let c = h.client("peer-west");
    let hidden = c
        .get("internal.test.svc.cluster.local:80", "/")
        .await
        .expect("request");
    let unknown = c
        .get("nothing.test.svc.cluster.local:80", "/")
        .await
        .expect("request");
    let api = c
        .get("kubernetes.default.svc.cluster.local:443", "/")
        .await
        .expect("request");
    let outside = c.get("example.com", "/").await.expect("request");
    for r in [&hidden, &unknown, &api, &outside] {
        assert_eq!(r.status, 404);
        assert_eq!(r.body, unknown.body, "bodies must not reveal what exists");
    }
    h.wait_metric("isthmus_request_errors_total{reason=\"no_route\"}", 4.0)
        .await;
}

#[tokio::test]
async fn no_ready_endpoints_is_503_and_endpoint_down_is_502() {
    let down = closed_port().await;
    let up = Upstream::start("unused").await;
    let h = Harness::start(&[
        (
            "notready.yaml",
            format!(
                "{}---\n{}",
                service("test", "notready", true, 80),
                slice("test", "notready-1", "notready", up.addr, false)
            ),
        ),
        ("noslice.yaml", service("test", "noslice", true, 80)),
        ("down.yaml", exported_service("test", "down", 80, down)),
    ])
    .await;
    let c = h.client("peer-west");
    assert_eq!(
        c.status("notready.test.svc.cluster.local:80", "/").await,
        503
    );
    assert_eq!(
        c.status("noslice.test.svc.cluster.local:80", "/").await,
        503
    );
    let resp = c
        .get("down.test.svc.cluster.local:80", "/")
        .await
        .expect("req");
    assert_eq!(resp.status, 502, "{}", resp.body);
    h.wait_metric("isthmus_request_errors_total{reason=\"no_endpoints\"}", 2.0)
        .await;
    h.wait_metric(
        "isthmus_request_errors_total{reason=\"upstream_connect\"}",
        1.0,
    )
    .await;
    eventually("connect errors counted", || async {
        h.metric("isthmus_upstream_connect_errors_total").await >= 1.0
    })
    .await;
}

#[tokio::test]
async fn slow_upstream_past_timeout_ms_is_504() {
    let up = Upstream::start("slow").await;
    let h = Harness::start(&[
        ("slow.yaml", format!("{}---\n{}", service("test", "slow", false, 80), slice("test", "slow-1", "slow", up.addr, true))),
        (
            "m.yaml",
            mapping("test", "slow", "    hostname: slow.example\n    prefix: /\n    service: slow:80\n    timeout_ms: 200\n"),
        ),
    ])
    .await;
    let c = h.client("peer-west");
    let fast = c.get("slow.example", "/").await.expect("req");
    assert_eq!(fast.status, 200, "{}", fast.body);
    let slow = c.get("slow.example", "/delay/3").await.expect("req");
    assert_eq!(slow.status, 504, "{}", slow.body);
    h.wait_metric(
        "isthmus_request_errors_total{reason=\"upstream_timeout\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn two_endpoints_share_the_load() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let h = Harness::start(&[(
        "podinfo.yaml",
        format!(
            "{}---\n{}---\n{}",
            service("test", "podinfo", true, 9898),
            slice("test", "podinfo-a", "podinfo", a.addr, true),
            slice("test", "podinfo-b", "podinfo", b.addr, true)
        ),
    )])
    .await;
    let c = h.client("peer-west");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..20 {
        let r = c.get(HOST, "/").await.expect("req");
        assert_eq!(r.status, 200);
        *seen
            .entry(r.upstream().expect("upstream name"))
            .or_default() += 1;
    }
    assert_eq!(seen.get("a"), Some(&10), "round robin alternates: {seen:?}");
    assert_eq!(seen.get("b"), Some(&10), "round robin alternates: {seen:?}");
}

#[tokio::test]
async fn http2_over_tls_routes_by_authority() {
    let (h, _up) = Harness::podinfo().await;
    let c = h.client("peer-west").http2();
    let resp = c.get(HOST, "/h2").await.expect("request");
    assert_eq!(resp.version, http::Version::HTTP_2);
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.upstream().as_deref(), Some("podinfo"));
    assert_eq!(
        resp.json()["headers"]["host"],
        HOST,
        "upstream HTTP/1.1 gets a Host header"
    );
    assert_eq!(c.status("nothing.test.svc.cluster.local", "/").await, 404);
}

#[tokio::test]
async fn mapping_prefix_rewrite_and_weights() {
    let main = Upstream::start("main").await;
    let canary = Upstream::start("canary").await;
    let h = Harness::start(&[
        ("main.yaml", format!("{}---\n{}", service("test", "main", false, 80), slice("test", "main-1", "main", main.addr, true))),
        (
            "canary.yaml",
            format!("{}---\n{}", service("test", "canary", false, 80), slice("test", "canary-1", "canary", canary.addr, true)),
        ),
        (
            "mappings.yaml",
            format!(
                "{}---\n{}---\n{}",
                mapping("test", "api-main", "    hostname: api.example.com\n    prefix: /api/\n    service: main:80\n    weight: 80\n"),
                mapping("test", "api-canary", "    hostname: api.example.com\n    prefix: /api/\n    service: canary.test:80\n    weight: 20\n"),
                mapping(
                    "test",
                    "v2",
                    "    hostname: api.example.com\n    prefix: /api/v2/\n    rewrite: /version2/\n    service: main:80\n    add_request_headers:\n      x-route: v2\n"
                ),
            ),
        ),
    ])
    .await;
    let c = h.client("peer-west");
    let v2 = c
        .get("api.example.com", "/api/v2/users")
        .await
        .expect("req");
    assert_eq!(v2.status, 200, "{}", v2.body);
    assert_eq!(v2.upstream().as_deref(), Some("main"));
    assert_eq!(
        v2.json()["path"],
        "/version2/users",
        "longest prefix wins and is rewritten"
    );
    assert_eq!(v2.json()["headers"]["x-route"], "v2");

    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..200 {
        let r = c.get("api.example.com", "/api/items").await.expect("req");
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json()["path"],
            "/items",
            "Emissary default rewrite strips the prefix"
        );
        *counts.entry(r.upstream().expect("name")).or_default() += 1;
    }
    let canary_share = counts.get("canary").copied().unwrap_or(0);
    // 20% of 200 = 40; binomial sd ≈ 5.7, so 15..=65 fails with probability < 1e-5.
    assert!(
        (15..=65).contains(&canary_share),
        "canary got {canary_share}/200: {counts:?}"
    );
    assert_eq!(c.status("api.example.com", "/other").await, 404);
}

#[tokio::test]
async fn malformed_requests_get_precise_answers() {
    let (h, _up) = Harness::podinfo().await;
    let c = h.client("peer-west");
    let two_hosts = c
        .raw(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nHost: other.example\r\n\r\n").as_bytes())
        .await
        .expect("answer");
    assert!(two_hosts.starts_with("HTTP/1.1 400"), "{two_hosts}");
    let absolute = c
        .raw(format!("GET https://other.example/ HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("answer");
    assert!(absolute.starts_with("HTTP/1.1 400"), "{absolute}");
    let userinfo = c
        .raw(b"GET / HTTP/1.1\r\nHost: user@podinfo.test.svc.cluster.local:9898\r\n\r\n")
        .await
        .expect("answer");
    assert!(userinfo.starts_with("HTTP/1.1 400"), "{userinfo}");
    let ip = c
        .raw(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:4143\r\n\r\n")
        .await
        .expect("answer");
    assert!(ip.starts_with("HTTP/1.1 400"), "{ip}");

    let big = format!(
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nx-big: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let too_large = c.raw(big.as_bytes()).await.expect("answer");
    assert!(
        too_large.starts_with("HTTP/1.1 431"),
        "{}",
        &too_large[..too_large.len().min(200)]
    );

    let looped = c
        .raw(
            format!(
                "GET / HTTP/1.1\r\nHost: {HOST}\r\nForwarded: by=\"{}\"\r\n\r\n",
                isthmus::tls::dev::GATEWAY_IDENTITY
            )
            .as_bytes(),
        )
        .await
        .expect("answer");
    assert!(looped.starts_with("HTTP/1.1 508"), "{looped}");
    h.wait_metric("isthmus_request_errors_total{reason=\"loop\"}", 1.0)
        .await;
    h.wait_metric(
        "isthmus_request_errors_total{reason=\"headers_too_large\"}",
        1.0,
    )
    .await;
    // Duplicate Host, absolute-form/Host mismatch and userinfo are refused by
    // pingora's HTTP/1 parser before any gateway hook runs; the IP literal
    // reaches the gateway's own authority check and is counted there.
    h.wait_metric("isthmus_request_errors_total{reason=\"bad_request\"}", 1.0)
        .await;
    // Still serving.
    assert_eq!(c.status(HOST, "/").await, 200);
}

#[tokio::test]
async fn admin_endpoints() {
    let (h, up) = Harness::podinfo().await;
    assert_eq!(h.admin_get("/ready").await.0, 200);
    assert_eq!(h.admin_get("/live").await.0, 200);
    let (status, routes) = h.admin_get("/routes").await;
    assert_eq!(status, 200);
    let routes: serde_json::Value = serde_json::from_str(&routes).expect("JSON");
    assert_eq!(routes["counts"]["endpoints"], 1);
    assert!(routes["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .any(|r| r["host"] == HOST && r["backends"][0]["endpoints"][0] == up.addr.to_string()));
    let _ = h.client("peer-west").get(HOST, "/").await.expect("req");
    h.wait_metric(
        "isthmus_requests_total{peer=\"spiffe://west.example/ns/default/sa/peer\",route=\"service/test/podinfo:9898\",status_class=\"2xx\"}",
        1.0,
    )
    .await;
    h.wait_metric("isthmus_ready", 1.0).await;
}

/// Status line and body of a raw `GET <target>` for `host` (connection closed after).
async fn raw_get(c: &isthmus_tests::Client, host: &str, target: &str) -> (String, String) {
    let answer = c
        .raw(
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("an answer");
    let status = answer.lines().next().unwrap_or_default().to_string();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn paths_are_normalised_before_matching_and_sent_upstream_normalised() {
    let public = Upstream::start("public").await;
    let admin = Upstream::start("admin").await;
    let h = Harness::start(&[
        ("public.yaml", format!("{}---\n{}", service("test", "public", false, 80), slice("test", "public-1", "public", public.addr, true))),
        ("admin.yaml", format!("{}---\n{}", service("test", "admin", false, 80), slice("test", "admin-1", "admin", admin.addr, true))),
        (
            "mappings.yaml",
            format!(
                "{}---\n{}---\n{}",
                mapping("test", "open", "    hostname: app.example.com\n    prefix: /public/\n    service: public:80\n"),
                mapping("test", "pub", "    hostname: app.example.com\n    prefix: /pub\n    service: public:80\n"),
                mapping(
                    "test",
                    "admin",
                    "    hostname: app.example.com\n    prefix: /admin\n    service: admin:80\n    allowed_identities: [\"spiffe://nobody.example/*\"]\n"
                ),
            ),
        ),
    ])
    .await;
    let c = h.client("peer-west");
    const HOST: &str = "app.example.com";
    for target in [
        "/public/../admin",
        "/%61dmin",
        "//admin",
        "/public/%2e%2e/admin",
        "/public/./../admin/x",
    ] {
        let (status, body) = raw_get(&c, HOST, target).await;
        assert!(
            status.starts_with("HTTP/1.1 403 "),
            "{target}: {status} {body}"
        );
    }
    for (target, upstream_path) in [
        ("/public/./x//y/%7Efoo", "/x/y/~foo"),
        ("/public/a/b/../c?q=%2F", "/a/c"),
        ("/public/%41%2c", "/A%2C"),
        ("/pub../x", "/x"),
    ] {
        let (status, body) = raw_get(&c, HOST, target).await;
        assert!(
            status.starts_with("HTTP/1.1 200 "),
            "{target}: {status} {body}"
        );
        let json: serde_json::Value = serde_json::from_str(&body).expect("upstream JSON");
        assert_eq!(json["upstream"], "public", "{target}");
        assert_eq!(json["path"], upstream_path, "{target}");
    }
    for target in [
        "/public/a%2Fb",
        "/public/a%2fb",
        "/public/a%5Cb",
        "/public/a%5cb",
        "/public/a%00b",
        "/public/%zz",
    ] {
        let answer = c
            .raw(
                format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("an answer");
        assert!(answer.starts_with("HTTP/1.1 400 "), "{target}: {answer}");
        assert!(
            answer.contains("x-isthmus-error: bad_request"),
            "{target}: {answer}"
        );
    }
}

#[tokio::test]
async fn spoofable_inbound_headers_never_reach_the_upstream() {
    use isthmus_tests::raw_upstream::{read_request, RawUpstream};
    use tokio::io::AsyncWriteExt;
    let mut up = RawUpstream::start().await;
    let h = Harness::start(&[(
        "podinfo.yaml",
        exported_service("test", "podinfo", 9898, up.addr),
    )])
    .await;
    let c = h.client("peer-west");
    let request = "GET / HTTP/1.1\r\nHost: podinfo.test.svc.cluster.local:9898\r\n\
        x_isthmus_peer_identity: spoofed-1\r\n\
        X_Isthmus-Peer_Identity: spoofed-2\r\n\
        x-isthmus-peer-identity: spoofed-3\r\n\
        X-Forwarded-For: 192.0.2.1\r\n\
        x_forwarded_for: 192.0.2.2\r\n\
        X-Forwarded-Host: spoofed.example\r\n\
        X-Forwarded-Proto: http\r\n\
        X-Real-IP: 192.0.2.3\r\n\
        forwarded_: x\r\n\
        Forwarded: for=192.0.2.4;by=\"spiffe://other.example/gw\";proto=https, for=\"[2001:db8::1]\"\r\n\
        Connection: close\r\n\r\n";
    let exchange = {
        let c = c.clone();
        tokio::spawn(async move { c.raw(request.as_bytes()).await })
    };
    let mut conn = up.accept().await;
    let seen = read_request(&mut conn).await.expect("request upstream");
    conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        .await
        .expect("answer");
    let answer = exchange.await.expect("client task").expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let lines: Vec<String> = seen.head.lines().map(str::to_ascii_lowercase).collect();
    let named = |name: &str| {
        lines
            .iter()
            .filter(|l| {
                l.split(':')
                    .next()
                    .is_some_and(|n| n.replace('_', "-") == name)
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        named("x-isthmus-peer-identity"),
        ["x-isthmus-peer-identity: spiffe://west.example/ns/default/sa/peer"],
        "{}",
        seen.head
    );
    assert!(!seen.head.contains("spoofed"), "{}", seen.head);
    assert!(!seen.head.contains("192.0.2."), "{}", seen.head);
    assert!(!seen.head.contains("2001:db8"), "{}", seen.head);
    for name in [
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
    ] {
        assert!(named(name).is_empty(), "{name} passed: {}", seen.head);
    }
    // Forwarded keeps the `by=` of earlier hops (loop detection) and adds its own.
    let forwarded = named("forwarded").join("\n");
    assert!(
        forwarded.contains("by=\"spiffe://other.example/gw\""),
        "{}",
        seen.head
    );
    assert!(
        forwarded.contains("by=\"spiffe://east.example/ns/isthmus/sa/isthmus-gateway\""),
        "{}",
        seen.head
    );
    assert!(
        !forwarded.contains("for=") && !forwarded.contains("proto="),
        "{}",
        seen.head
    );
    assert!(
        named("forwarded")
            .iter()
            .all(|l| l.starts_with("forwarded:")),
        "{}",
        seen.head
    );
}

#[tokio::test]
async fn metric_labels_stay_bounded_peers_capped_and_deleted_routes_forgotten() {
    let up = Upstream::start("podinfo").await;
    let gone = Upstream::start("gone").await;
    let h = Harness::start_with(
        &[
            (
                "podinfo.yaml",
                exported_service("test", "podinfo", 9898, up.addr),
            ),
            (
                "gone.yaml",
                exported_service("test", "gone", 8080, gone.addr),
            ),
        ],
        |cfg| {
            cfg.allowed_identities = vec!["*".into()];
            cfg.metrics.max_peer_labels = 1;
        },
    )
    .await;
    let west = "spiffe://west.example/ns/default/sa/peer";
    assert_eq!(
        h.client("peer-west")
            .status("podinfo.test.svc.cluster.local:9898", "/")
            .await,
        200
    );
    assert_eq!(
        h.client("peer-dns")
            .status("podinfo.test.svc.cluster.local:9898", "/")
            .await,
        200
    );
    assert_eq!(
        h.client("peer-west")
            .status("gone.test.svc.cluster.local:8080", "/")
            .await,
        200
    );
    let sample = |peer: &str, route: &str| {
        format!("isthmus_requests_total{{peer=\"{peer}\",route=\"{route}\",status_class=\"2xx\"}}")
    };
    h.wait_metric(&sample(west, "service/test/podinfo:9898"), 1.0)
        .await;
    // The second identity is past the cap of 1: counted, as `other`.
    h.wait_metric(&sample("other", "service/test/podinfo:9898"), 1.0)
        .await;
    let (_, text) = h.admin_get("/metrics").await;
    assert!(!text.contains("peer=\"peer.default"), "{text}");
    h.wait_metric(&sample(west, "service/test/gone:8080"), 1.0)
        .await;

    // A deleted route's series go with it; the others stay.
    std::fs::remove_file(h.manifests().join("gone.yaml")).expect("remove manifest");
    eventually("the deleted route's series are gone", || async {
        let (_, text) = h.admin_get("/metrics").await;
        !text.contains("service/test/gone:8080")
    })
    .await;
    assert_eq!(
        h.metric(&sample(west, "service/test/podinfo:9898")).await,
        1.0
    );
}
