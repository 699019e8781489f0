use std::time::Duration;

use super::*;

fn req(raw_uri: &str, hosts: &[&str]) -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/", None).expect("request");
    r.set_uri(raw_uri.parse().expect("uri"));
    for h in hosts {
        r.append_header("host", *h).expect("header");
    }
    r
}

#[test]
fn authority_from_host_or_uri() {
    let a = authority(&req("/", &["PodInfo.test.svc.cluster.local.:9898"]), false).expect("ok");
    assert_eq!(a.to_string(), "podinfo.test.svc.cluster.local:9898");
    let h2 = authority(
        &req("https://podinfo.test.svc.cluster.local:9898/x", &[]),
        true,
    )
    .expect("ok");
    assert_eq!(h2.to_string(), "podinfo.test.svc.cluster.local:9898");
    let same = authority(&req("https://a.example/x", &["a.example"]), false).expect("ok");
    assert_eq!(same.to_string(), "a.example");
}

#[test]
fn ambiguous_or_bad_authorities_are_400() {
    for (uri, hosts) in [
        ("/", vec![]),
        ("/", vec!["a.example", "b.example"]),
        ("https://a.example/x", vec!["b.example"]),
        ("/", vec!["user@a.example"]),
        ("/", vec!["127.0.0.1:4143"]),
    ] {
        assert_eq!(
            authority(&req(uri, &hosts), false),
            Err(ErrorKind::BadRequest),
            "{uri} {hosts:?}"
        );
    }
}

#[test]
fn loop_detection_reads_forwarded_by() {
    let own = "spiffe://east.example/ns/isthmus/sa/isthmus-gateway";
    let mut r = req("/", &["a"]);
    assert!(!is_loop(&r, own));
    r.append_header("forwarded", "for=10.0.0.1;by=\"spiffe://west.example/gw\"")
        .expect("header");
    assert!(!is_loop(&r, own));
    r.append_header(
        "forwarded",
        format!("for=10.0.0.2, by=\"{own}\";for=\"1.2.3.4\""),
    )
    .expect("header");
    assert!(is_loop(&r, own));
}

#[test]
fn limits_count_headers_and_bytes() {
    let limits = RequestLimits {
        max_header_bytes: 1024,
        max_headers: 3,
    };
    let mut r = req("/", &["a"]);
    assert_eq!(check_limits(&r, &limits), Ok(()));
    r.append_header("x-big", "v".repeat(1100)).expect("header");
    assert_eq!(check_limits(&r, &limits), Err(ErrorKind::HeadersTooLarge));
    let mut r = req("/", &["a"]);
    for i in 0..3 {
        r.append_header(format!("x-{i}"), "1").expect("header");
    }
    assert_eq!(check_limits(&r, &limits), Err(ErrorKind::HeadersTooLarge));
}

#[test]
fn rewrite_replaces_prefix_and_keeps_query() {
    let mut settings = BackendSettings::with_timeouts(
        Duration::from_secs(1),
        Duration::from_secs(1),
        Duration::from_secs(1),
    );
    settings.rewrite = Some("/".into());
    settings.add_request_headers = vec![(
        http::HeaderName::from_static("x-added"),
        http::HeaderValue::from_static("1"),
    )];
    settings.remove_request_headers = vec![http::HeaderName::from_static("x-secret")];
    let mut r = req("/podinfo/hello?x=1", &["a"]);
    r.append_header("x-secret", "s").expect("header");
    rewrite_upstream(&mut r, "/podinfo/", &settings).expect("rewrite");
    assert_eq!(r.uri.to_string(), "/hello?x=1");
    assert!(r.headers.get("x-secret").is_none());
    assert_eq!(
        r.headers.get("x-added").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );

    settings.rewrite = Some("/v2".into());
    let mut r = req("/api/users", &["a"]);
    rewrite_upstream(&mut r, "/api", &settings).expect("rewrite");
    assert_eq!(r.uri.to_string(), "/v2/users");

    settings.rewrite = None;
    let mut r = req("https://a.example/keep/this", &[]);
    rewrite_upstream(&mut r, "/keep", &settings).expect("rewrite");
    assert_eq!(
        r.uri.to_string(),
        "/keep/this",
        "origin-form upstream, path kept"
    );
}

#[test]
fn error_classes() {
    assert_eq!(status_class(204), "2xx");
    assert_eq!(status_class(508), "5xx");
    assert_eq!(status_class(0), "none");
    let e = Error::new(ErrorType::ConnectRefused).into_up();
    assert_eq!(classify_proxy_error(&e), Some(ErrorKind::UpstreamConnect));
    let e = Error::new(ErrorType::ReadTimedout).into_up();
    assert_eq!(classify_proxy_error(&e), Some(ErrorKind::UpstreamTimeout));
    let e = Error::new(ErrorType::ConnectionClosed).into_down();
    assert_eq!(classify_proxy_error(&e), None);
}

#[test]
fn framing_refuses_content_length_with_transfer_encoding_and_bare_lf() {
    let chunked = |headers: &[(&str, &str)]| {
        let mut r = RequestHeader::build("POST", b"/", None).expect("request");
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("header");
        }
        r
    };
    let te = chunked(&[("host", "a"), ("transfer-encoding", "chunked")]);
    let plain = chunked(&[("host", "a"), ("content-length", "5")]);
    // pingora drops Content-Length from `req` when Transfer-Encoding is there;
    // only the raw head still shows it.
    for raw in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-LENGTH: 0\r\nHost: a\r\n\r\n",
    ] {
        assert_eq!(
            check_framing(raw, &te),
            Err(ErrorKind::BadRequest),
            "{}",
            raw.escape_ascii()
        );
    }
    for (raw, req) in [
        (
            &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nx-note: content-length: 5\r\n\r\n"[..],
            &te,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", &plain),
    ] {
        assert_eq!(check_framing(raw, req), Ok(()), "{}", raw.escape_ascii());
    }
    for raw in [
        &b"GET / HTTP/1.1\nHost: a\n\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\nx-b: c\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\n",
    ] {
        assert_eq!(
            check_framing(raw, &plain),
            Err(ErrorKind::BadRequest),
            "{}",
            raw.escape_ascii()
        );
    }
}

#[test]
fn spoofable_names_and_forwarded_by_pairs() {
    for name in [
        "x_isthmus_peer_identity",
        "x-isthmus_peer-identity",
        "forwarded_",
        "x_forwarded_for",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-real-ip",
        "x_real_ip",
    ] {
        assert_eq!(is_spoofable(name), name != "forwarded_", "{name}");
    }
    for name in [
        "x-isthmus-peer-identity",
        "forwarded",
        "x-request-id",
        "x_custom",
    ] {
        assert!(!is_spoofable(name), "{name}");
    }
    assert_eq!(
        forwarded_by_only(r#"for=1.2.3.4;by="spiffe://a/gw;x,y";proto=https, for=x, BY=gw2"#),
        [r#"by="spiffe://a/gw;x,y""#, "BY=gw2"]
    );
    assert!(forwarded_by_only("for=1.2.3.4").is_empty());
}

#[test]
fn lookup_authorize_and_backend_choice() {
    use std::sync::Arc;

    use crate::routes::{
        Authorization, Backend, Endpoint, HostMatch, IdentityPattern, PortMatch, Route, RouteMatch,
        RouteTable, RouteTarget,
    };
    let settings = Arc::new(BackendSettings::with_timeouts(
        Duration::from_secs(1),
        Duration::from_secs(1),
        Duration::from_secs(1),
    ));
    let ep = Arc::new(Endpoint::new("10.0.0.1:80".parse().expect("addr")));
    let route = |name: &str, host: &str, eps: Vec<Arc<Endpoint>>| Route {
        name: name.into(),
        hosts: vec![HostMatch::Exact(host.into(), PortMatch::Any)],
        matcher: RouteMatch::any().into(),
        authz: Authorization::new(Arc::from(vec![IdentityPattern::parse(
            "spiffe://west.example/*",
        )
        .expect("pattern")])),
        target: RouteTarget::new(vec![Backend::new(name.into(), 1, eps, settings.clone())]),
    };
    let t = RouteTable::new(
        vec![
            route("up", "up.example", vec![ep]),
            route("down", "down.example", vec![]),
        ],
        2,
        1,
    );
    let get = |host: &str| {
        let a = parse_authority(host.as_bytes()).expect("authority");
        route_for(
            &t,
            &a,
            "/",
            None,
            &http::Method::GET,
            &http::HeaderMap::new(),
        )
        .cloned()
    };
    assert_eq!(get("nope.example").err(), Some(ErrorKind::NoRoute));
    let up = get("up.example").expect("route");
    assert_eq!(authorize(&up, None), Err(ErrorKind::Forbidden));
    assert_eq!(
        authorize(&up, Some("spiffe://east.example/x")),
        Err(ErrorKind::Forbidden)
    );
    assert_eq!(authorize(&up, Some("spiffe://west.example/x")), Ok(()));
    assert_eq!(choose_backend(&up), Ok(0));
    let down = get("down.example").expect("route");
    assert_eq!(choose_backend(&down), Err(ErrorKind::NoEndpoints));
    assert!(normalized_path("/a%2Fb").is_err());
    assert_eq!(normalized_path("/a/../b").expect("path"), "/b");
}

#[test]
fn protocol_checks_grpc_upgrade_and_connect() {
    let mut h1 = BackendSettings::with_timeouts(
        Duration::from_secs(1),
        Duration::from_secs(1),
        Duration::from_secs(1),
    );
    h1.allow_upgrade = vec!["websocket".into()];
    let h2 = BackendSettings {
        upstream_h2: true,
        ..h1.clone()
    };
    let plain = req("/", &["a"]);
    assert_eq!(check_protocol(&plain, true, &h1), Err(ErrorKind::GrpcNotH2));
    assert_eq!(check_protocol(&plain, true, &h2), Ok(()));
    let mut ws = req("/", &["a"]);
    ws.insert_header("upgrade", "WebSocket").expect("header");
    assert_eq!(check_protocol(&ws, false, &h1), Ok(()));
    assert_eq!(
        check_protocol(&ws, false, &h2),
        Err(ErrorKind::UpgradeRefused),
        "no Upgrade to an h2c upstream"
    );
    for other in ["h2c", "websocket, foo", "foo/1"] {
        let mut r = req("/", &["a"]);
        r.insert_header("upgrade", other).expect("header");
        assert_eq!(
            check_protocol(&r, false, &h1),
            Err(ErrorKind::UpgradeRefused),
            "{other}"
        );
    }
    let mut connect = req("/", &["a"]);
    connect.set_method(http::Method::CONNECT);
    assert_eq!(
        check_protocol(&connect, false, &h1),
        Err(ErrorKind::MethodNotAllowed)
    );
}

#[test]
fn orig_proto_is_stripped_and_marked_on_http1_answers() {
    let mut r = req("/", &["a"]);
    r.insert_header(L5D_ORIG_PROTO, "HTTP/1.1").expect("header");
    assert!(take_orig_proto(&mut r));
    assert!(!r.headers.contains_key(L5D_ORIG_PROTO));
    assert!(!take_orig_proto(&mut r));
    let mut resp = pingora_http::ResponseHeader::build(200, None).expect("resp");
    resp.insert_header("transfer-encoding", "chunked")
        .expect("header");
    mark_orig_proto(&mut resp).expect("mark");
    assert_eq!(resp.headers[L5D_ORIG_PROTO], "HTTP/1.1");
    assert!(!resp.headers.contains_key("transfer-encoding"));
    let mut h2 = pingora_http::ResponseHeader::build(200, None).expect("resp");
    h2.set_version(http::Version::HTTP_2);
    mark_orig_proto(&mut h2).expect("mark");
    assert!(!h2.headers.contains_key(L5D_ORIG_PROTO));
}
