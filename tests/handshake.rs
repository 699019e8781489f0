//! The mTLS handshake matrix through real sockets: who gets in, who is refused,
//! and how the refusal is counted.

use isthmus::tls::dev::LeafSpec;
use isthmus_tests::manifests::exported_service;
use isthmus_tests::{Alpn, Client, Harness, Upstream};
use rustls::AlertDescription;

const HOST: &str = "podinfo.test.svc.cluster.local:9898";

async fn harness() -> (Harness, Upstream) {
    Harness::podinfo().await
}

#[tokio::test]
async fn valid_peer_over_tls12_and_tls13_reaches_the_upstream() {
    let (h, _up) = harness().await;
    for versions in [
        &[&rustls::version::TLS12][..],
        &[&rustls::version::TLS13][..],
    ] {
        let c = Client::with_versions(
            h.gateway.gateway_addr,
            &h.certs(),
            Some("peer-west"),
            Alpn::Http1,
            versions,
        );
        let resp = c.get(HOST, "/").await.expect("request succeeds");
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_eq!(resp.upstream().as_deref(), Some("podinfo"));
        assert_eq!(
            resp.json()["headers"]["x-isthmus-peer-identity"],
            "spiffe://west.example/ns/default/sa/peer",
            "the upstream learns the verified identity"
        );
    }
}

async fn refused(h: &Harness, client: &Client, want: AlertDescription, reason: &str) {
    let sample = format!("isthmus_tls_handshake_failures_total{{reason=\"{reason}\"}}");
    let before = h.metric_or_absent(&sample).await;
    let err = client
        .get(HOST, "/")
        .await
        .expect_err("handshake must be refused");
    assert_eq!(err.alert(), Some(want), "{err}");
    isthmus_tests::eventually(&sample, || async {
        h.metric_or_absent(&sample).await == before + 1.0
    })
    .await;
}

#[tokio::test]
async fn no_client_certificate_is_refused_in_the_handshake() {
    let (h, _up) = harness().await;
    refused(
        &h,
        &h.anonymous_client(),
        AlertDescription::CertificateRequired,
        "no_client_cert",
    )
    .await;
    let tls12 = Client::with_versions(
        h.gateway.gateway_addr,
        &h.certs(),
        None,
        Alpn::Http1,
        &[&rustls::version::TLS12],
    );
    refused(
        &h,
        &tls12,
        AlertDescription::CertificateRequired,
        "no_client_cert",
    )
    .await;
}

#[tokio::test]
async fn untrusted_ca_is_refused() {
    let (h, _up) = harness().await;
    refused(
        &h,
        &h.client("peer-untrusted"),
        AlertDescription::UnknownCA,
        "unknown_ca",
    )
    .await;
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let (h, _up) = harness().await;
    refused(
        &h,
        &h.client("peer-expired"),
        AlertDescription::CertificateExpired,
        "expired",
    )
    .await;
}

#[tokio::test]
async fn server_only_and_sanless_certificates_are_refused() {
    let (h, _up) = harness().await;
    let mut server_only = LeafSpec::peer_uri("spiffe://west.example/ns/default/sa/server");
    server_only.ekus = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    h.issue_cert("server-only", &server_only);
    refused(
        &h,
        &h.client("server-only"),
        AlertDescription::UnsupportedCertificate,
        "bad_certificate",
    )
    .await;

    h.issue_cert("no-san", &LeafSpec::default());
    refused(
        &h,
        &h.client("no-san"),
        AlertDescription::CertificateUnknown,
        "bad_certificate",
    )
    .await;

    let mut no_eku = LeafSpec::peer_uri("spiffe://west.example/ns/default/sa/no-eku");
    no_eku.ekus.clear();
    h.issue_cert("no-eku", &no_eku);
    let resp = h
        .client("no-eku")
        .get(HOST, "/")
        .await
        .expect("no EKU at all is allowed");
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn identity_not_allowed_gets_403() {
    let (h, _up) = harness().await;
    let before = h
        .metric_or_absent("isthmus_request_errors_total{reason=\"forbidden\"}")
        .await;
    let resp = h
        .client("peer-dns")
        .get(HOST, "/")
        .await
        .expect("handshake succeeds");
    assert_eq!(resp.status, 403, "{}", resp.body);
    h.wait_metric(
        "isthmus_request_errors_total{reason=\"forbidden\"}",
        before + 1.0,
    )
    .await;
    // The gateway keeps serving allowed peers.
    assert_eq!(
        h.client("peer-west")
            .get(HOST, "/")
            .await
            .expect("ok")
            .status,
        200
    );
}

#[tokio::test]
async fn dns_identity_allowed_by_wildcard() {
    let up = Upstream::start("podinfo").await;
    let h = Harness::start_with(
        &[("p.yaml", exported_service("test", "podinfo", 9898, up.addr))],
        |cfg| {
            cfg.allowed_identities = vec!["*.serviceaccount.identity.linkerd.cluster.local".into()];
        },
    )
    .await;
    assert_eq!(
        h.client("peer-dns")
            .get(HOST, "/")
            .await
            .expect("ok")
            .status,
        200
    );
    assert_eq!(
        h.client("peer-west")
            .get(HOST, "/")
            .await
            .expect("ok")
            .status,
        403
    );
}

#[tokio::test]
async fn resumed_sessions_keep_the_verified_identity() {
    let (h, _up) = harness().await;
    let c = Client::with_versions(
        h.gateway.gateway_addr,
        &h.certs(),
        Some("peer-west"),
        Alpn::Http1,
        &[&rustls::version::TLS13],
    );
    let first = c.get(HOST, "/").await.expect("full handshake");
    assert_eq!(first.handshake, Some(rustls::HandshakeKind::Full));
    let second = c.get(HOST, "/").await.expect("resumed handshake");
    assert_eq!(
        second.handshake,
        Some(rustls::HandshakeKind::Resumed),
        "session resumption is on by default"
    );
    assert_eq!(second.status, 200);
    assert_eq!(
        second.json()["headers"]["x-isthmus-peer-identity"],
        "spiffe://west.example/ns/default/sa/peer"
    );
}

#[tokio::test]
async fn session_resumption_can_be_turned_off() {
    let up = Upstream::start("podinfo").await;
    let h = Harness::start_with(
        &[("p.yaml", exported_service("test", "podinfo", 9898, up.addr))],
        |cfg| {
            cfg.tls.session_resumption = false;
        },
    )
    .await;
    let c = h.client("peer-west");
    for _ in 0..2 {
        let r = c.get(HOST, "/").await.expect("request");
        assert_eq!(r.handshake, Some(rustls::HandshakeKind::Full));
        assert_eq!(r.status, 200);
    }
}

#[tokio::test]
async fn identities_with_control_bytes_whitespace_or_wildcards_are_refused() {
    let (h, _up) = harness().await;
    let bad_uris = [
        "spiffe://west.example/ns/default/sa/a b",
        "spiffe://west.example/ns/default/sa/a\tb",
        "spiffe://west.example/ns/default/sa/a\x01b",
        "spiffe://west.example/ns/default/sa/a\x7fb",
        "spiffe://west.example/ns/default/sa/*",
    ];
    for (i, uri) in bad_uris.iter().enumerate() {
        let name = format!("bad-uri-{i}");
        h.issue_cert(&name, &LeafSpec::peer_uri(uri));
        refused(
            &h,
            &h.client(&name),
            AlertDescription::CertificateUnknown,
            "bad_identity",
        )
        .await;
    }
    h.issue_cert("bad-dns", &LeafSpec::peer_dns("peer\r\n.west.example"));
    refused(
        &h,
        &h.client("bad-dns"),
        AlertDescription::CertificateUnknown,
        "bad_identity",
    )
    .await;
    // Good identities are still served.
    assert_eq!(h.client("peer-west").status(HOST, "/").await, 200);
}
