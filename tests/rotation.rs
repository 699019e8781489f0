//! Certificate, key and trust-anchor rotation while the gateway serves: new
//! handshakes use the new files, existing connections finish, a bad new file is
//! refused and the previous material stays in force.

use isthmus::tls::dev::{CertAuthority, LeafSpec};
use isthmus_tests::manifests::exported_service;
use isthmus_tests::{eventually, replace_file, Harness, Upstream};
use rustls::AlertDescription;

const HOST: &str = "podinfo.test.svc.cluster.local:9898";

#[tokio::test]
async fn serving_certificate_and_trust_anchors_rotate_without_restart() {
    let up = Upstream::start("podinfo").await;
    let h = Harness::start_with(
        &[("p.yaml", exported_service("test", "podinfo", 9898, up.addr))],
        |cfg| {
            cfg.tls.reload_interval_ms = 20;
        },
    )
    .await;
    let certs = h.certs();
    let west = h.client("peer-west");
    let first = west.get(HOST, "/").await.expect("request");
    assert_eq!(first.status, 200);
    let mut open = west.h2_session().await.expect("h2 connection");
    assert_eq!(open.status(HOST, "/").await.expect("request"), 200);

    // 1. New serving certificate and key from the same CA.
    let ca1 = h.ca();
    let rotated = ca1.issue(&LeafSpec::gateway()).expect("issue");
    replace_file(&certs.join("gateway.key"), &rotated.key_pem());
    replace_file(&certs.join("gateway.crt"), &rotated.cert_pem());
    eventually("new handshakes present the new certificate", || async {
        west.get(HOST, "/")
            .await
            .is_ok_and(|r| r.status == 200 && r.server_cert.as_deref() == Some(rotated.der()))
    })
    .await;
    assert_eq!(
        open.status(HOST, "/").await.expect("existing connection"),
        200,
        "existing connections finish"
    );

    // 2. A bad new key: refused, counted, the previous material stays.
    // Relative: step 1 replaces the key before the certificate, so a poll in
    // between may already have counted a mismatched pair as an error.
    let errors = "isthmus_tls_reloads_total{result=\"error\"}";
    let errors_before = h.metric_or_absent(errors).await;
    replace_file(
        &certs.join("gateway.key"),
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    );
    eventually("bad key refused", || async {
        h.metric_or_absent(errors).await > errors_before
    })
    .await;
    let still = west.get(HOST, "/").await.expect("request");
    assert_eq!(still.status, 200);
    assert_eq!(
        still.server_cert.as_deref(),
        Some(rotated.der()),
        "previous certificate still served"
    );
    replace_file(&certs.join("gateway.key"), &rotated.key_pem());

    // 3. Trust-anchor rotation with overlap: bundle of old and new CA.
    let ca2 = CertAuthority::new("rotated CA").expect("CA");
    h.issue_cert_by(
        &ca2,
        "peer-new",
        &LeafSpec::peer_uri("spiffe://west.example/ns/default/sa/new"),
    );
    let newc = h.client("peer-new");
    replace_file(
        &certs.join("ca.crt"),
        &format!("{}{}", ca1.cert_pem(), ca2.cert_pem()),
    );
    eventually("a peer of the new CA is admitted", || async {
        newc.get(HOST, "/").await.is_ok_and(|r| r.status == 200)
    })
    .await;
    assert_eq!(
        west.status(HOST, "/").await,
        200,
        "old CA still trusted during the overlap"
    );

    // 4. The old CA leaves the bundle: its peers are refused, even with a session to resume.
    replace_file(&certs.join("ca.crt"), ca2.cert_pem());
    eventually("old CA refused", || async {
        west.get(HOST, "/")
            .await
            .is_err_and(|e| e.alert() == Some(AlertDescription::UnknownCA))
    })
    .await;
    assert_eq!(newc.status(HOST, "/").await, 200);
    assert!(h.metric("isthmus_tls_reloads_total{result=\"ok\"}").await >= 3.0);
}
