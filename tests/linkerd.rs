//! Linkerd-meshed callers: no ALPN and HTTP/2 with prior knowledge,
//! `l5d-orig-proto` upgrades, a DNS-SAN identity; opaque transport refused.

use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus::tls::dev::PEER_DNS_IDENTITY;
use isthmus_tests::manifests::exported_service;
use isthmus_tests::{Harness, Upstream};

const HOST: &str = "podinfo.test.svc.cluster.local:9898";

async fn linkerd_gateway() -> (Harness, Upstream) {
    let up = Upstream::start("podinfo").await;
    let h = Harness::start_with(
        &[(
            "podinfo.yaml",
            exported_service("test", "podinfo", 9898, up.addr),
        )],
        |cfg| cfg.allowed_identities.push(PEER_DNS_IDENTITY.to_string()),
    )
    .await;
    (h, up)
}

#[tokio::test]
async fn prior_knowledge_h2_without_alpn_and_orig_proto_reach_an_http1_upstream() {
    let (h, _up) = linkerd_gateway().await;
    // What a Linkerd proxy sends: its DNS identity, SNI = the gateway's
    // identity, no ALPN, then the HTTP/2 preface.
    let client = h
        .client("peer-dns")
        .with_alpn(&[])
        .with_sni("isthmus-gateway.isthmus.svc.cluster.local");
    let tls = client.open().await.expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), None, "no ALPN negotiated");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);

    for _ in 0..3 {
        let req = http::Request::get(format!("https://{HOST}/linkerd?x=1"))
            .header("l5d-orig-proto", "HTTP/1.1")
            .body(Full::new(bytes::Bytes::new()))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(
            resp.headers().get("l5d-orig-proto").map(|v| v.as_bytes()),
            Some(&b"HTTP/1.1"[..]),
            "the caller's proxy downgrades by this header"
        );
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            json["version"], "HTTP/1.1",
            "an ordinary HTTP/1.1 request upstream"
        );
        assert_eq!(json["path"], "/linkerd");
        assert!(
            json["headers"].get("l5d-orig-proto").is_none(),
            "stripped: {json}"
        );
        assert_eq!(json["headers"]["host"], HOST);
        assert_eq!(
            json["headers"]["x-isthmus-peer-identity"],
            PEER_DNS_IDENTITY
        );
    }

    // A plain HTTP/2 request on the same connection: no marker on the answer.
    let req = http::Request::get(format!("https://{HOST}/"))
        .body(Full::new(bytes::Bytes::new()))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("l5d-orig-proto").is_none());
}

#[tokio::test]
async fn http1_without_alpn_still_works() {
    let (h, _up) = linkerd_gateway().await;
    for name in ["peer-dns", "peer-west"] {
        let r = h
            .client(name)
            .with_alpn(&[])
            .get(HOST, "/")
            .await
            .expect("get");
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.json()["version"], "HTTP/1.1");
    }
}

#[tokio::test]
async fn opaque_transport_is_refused_in_the_handshake_and_counted() {
    let (h, _up) = linkerd_gateway().await;
    let opaque = h.client("peer-dns").with_alpn(&[b"transport.l5d.io/v1"]);
    assert!(opaque.open().await.is_err(), "handshake refused");
    h.wait_metric(
        "isthmus_tls_handshake_failures_total{reason=\"opaque_transport\"}",
        1.0,
    )
    .await;
    // Offered beside h2, it is refused all the same (a proxy asking for it
    // means to tunnel, not to speak HTTP).
    let both = h
        .client("peer-dns")
        .with_alpn(&[b"transport.l5d.io/v1", b"h2"]);
    assert!(both.open().await.is_err());
    h.wait_metric(
        "isthmus_tls_handshake_failures_total{reason=\"opaque_transport\"}",
        2.0,
    )
    .await;
}
