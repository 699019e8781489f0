//! Trust domains through real handshakes: with two peer CAs, each may only
//! assert the identities of its own trust domain (`tls.trust_domains`); the
//! legacy single bundle (`tls.trust_anchors`) lets any anchor assert anything.

use std::path::Path;

use isthmus::config::TrustDomain;
use isthmus::tls::dev::{CertAuthority, LeafSpec};
use isthmus_tests::manifests::exported_service;
use isthmus_tests::{Harness, Upstream};
use rustls::AlertDescription;

const HOST: &str = "podinfo.test.svc.cluster.local:9898";
const OUTSIDE: &str =
    "isthmus_tls_handshake_failures_total{reason=\"identity_outside_trust_domain\"}";

struct Cas {
    west: CertAuthority,
    south: CertAuthority,
}

impl Cas {
    fn new() -> Cas {
        Cas {
            west: CertAuthority::new("west CA").expect("west CA"),
            south: CertAuthority::new("south CA").expect("south CA"),
        }
    }

    /// Writes `west-ca.crt` and `south-ca.crt` into `certs`.
    fn write(&self, certs: &Path) {
        std::fs::write(certs.join("west-ca.crt"), self.west.cert_pem()).expect("write");
        std::fs::write(certs.join("south-ca.crt"), self.south.cert_pem()).expect("write");
    }
}

/// A gateway exporting podinfo to west and south peers; `bound` selects
/// `trust_domains` (west's CA for west, south's for south) over one legacy
/// bundle holding both CAs.
async fn gateway(cas: &Cas, bound: bool) -> (Harness, Upstream) {
    let up = Upstream::start("podinfo").await;
    let h = Harness::start_with(
        &[(
            "podinfo.yaml",
            exported_service("test", "podinfo", 9898, up.addr),
        )],
        |cfg| {
            let certs = cfg.tls.cert.parent().expect("certs dir").to_path_buf();
            cas.write(&certs);
            cfg.allowed_identities = vec![
                "spiffe://west.example/*".into(),
                "spiffe://south.example/*".into(),
                "*.west.example".into(),
            ];
            cfg.tls.reload_interval_ms = 20;
            if bound {
                cfg.tls.trust_anchors = None;
                cfg.tls.trust_domains = vec![
                    TrustDomain {
                        trust_anchors: certs.join("west-ca.crt"),
                        identities: vec!["spiffe://west.example/*".into(), "*.west.example".into()],
                    },
                    TrustDomain {
                        trust_anchors: certs.join("south-ca.crt"),
                        identities: vec!["spiffe://south.example/*".into()],
                    },
                ];
            } else {
                let both = format!("{}{}", cas.west.cert_pem(), cas.south.cert_pem());
                std::fs::write(certs.join("both-ca.crt"), both).expect("write");
                cfg.tls.trust_anchors = Some(certs.join("both-ca.crt"));
            }
        },
    )
    .await;
    (h, up)
}

async fn served(h: &Harness, name: &str) {
    let resp = h
        .client(name)
        .get(HOST, "/")
        .await
        .unwrap_or_else(|e| panic!("{name}: request fails: {e}"));
    assert_eq!(resp.status, 200, "{name}: {}", resp.body);
    assert_eq!(resp.upstream().as_deref(), Some("podinfo"));
}

async fn refused_outside(h: &Harness, name: &str) {
    let before = h.metric_or_absent(OUTSIDE).await;
    let err = h
        .client(name)
        .get(HOST, "/")
        .await
        .expect_err("the handshake must be refused");
    assert_eq!(
        err.alert(),
        Some(AlertDescription::CertificateUnknown),
        "{name}: {err}"
    );
    isthmus_tests::eventually(OUTSIDE, || async {
        h.metric_or_absent(OUTSIDE).await == before + 1.0
    })
    .await;
}

#[tokio::test]
async fn a_ca_may_only_assert_its_own_trust_domain() {
    let cas = Cas::new();
    let (h, _up) = gateway(&cas, true).await;
    h.issue_cert_by(
        &cas.west,
        "west-as-south",
        &LeafSpec::peer_uri("spiffe://south.example/x"),
    );
    h.issue_cert_by(
        &cas.south,
        "south",
        &LeafSpec::peer_uri("spiffe://south.example/x"),
    );
    h.issue_cert_by(
        &cas.west,
        "west",
        &LeafSpec::peer_uri("spiffe://west.example/x"),
    );
    h.issue_cert_by(
        &cas.west,
        "west-dns",
        &LeafSpec::peer_dns("peer.west.example"),
    );
    h.issue_cert_by(
        &cas.south,
        "south-as-west-dns",
        &LeafSpec::peer_dns("peer.west.example"),
    );

    refused_outside(&h, "west-as-south").await;
    refused_outside(&h, "south-as-west-dns").await;
    served(&h, "south").await;
    served(&h, "west").await;
    served(&h, "west-dns").await;
    // The dev CA (`certs/ca.crt`) is in no trust domain here.
    let unknown = "isthmus_tls_handshake_failures_total{reason=\"unknown_ca\"}";
    let before = h.metric_or_absent(unknown).await;
    let err = h
        .client("peer-west")
        .get(HOST, "/")
        .await
        .expect_err("a CA outside every trust domain is unknown");
    assert_eq!(err.alert(), Some(AlertDescription::UnknownCA), "{err}");
    h.wait_metric(unknown, before + 1.0).await;
}

#[tokio::test]
async fn the_binding_survives_a_trust_anchor_reload() {
    let cas = Cas::new();
    let (h, _up) = gateway(&cas, true).await;
    h.issue_cert_by(
        &cas.west,
        "west-as-south",
        &LeafSpec::peer_uri("spiffe://south.example/x"),
    );
    h.issue_cert_by(
        &cas.south,
        "south",
        &LeafSpec::peer_uri("spiffe://south.example/x"),
    );
    refused_outside(&h, "west-as-south").await;

    // Rotate south's bundle: the old CA plus a new one.
    let reloads = "isthmus_tls_reloads_total{result=\"ok\"}";
    let before = h.metric_or_absent(reloads).await;
    let next = CertAuthority::new("south CA 2").expect("CA");
    isthmus_tests::replace_file(
        &h.certs().join("south-ca.crt"),
        &format!("{}{}", cas.south.cert_pem(), next.cert_pem()),
    );
    isthmus_tests::eventually("the trust anchors reload", || async {
        h.metric_or_absent(reloads).await > before
    })
    .await;
    h.issue_cert_by(
        &next,
        "south-2",
        &LeafSpec::peer_uri("spiffe://south.example/y"),
    );
    served(&h, "south-2").await;
    served(&h, "south").await;
    refused_outside(&h, "west-as-south").await;
}

#[tokio::test]
async fn the_legacy_bundle_lets_any_anchor_assert_any_identity() {
    let cas = Cas::new();
    let (h, _up) = gateway(&cas, false).await;
    h.issue_cert_by(
        &cas.west,
        "west-as-south",
        &LeafSpec::peer_uri("spiffe://south.example/x"),
    );
    h.issue_cert_by(
        &cas.south,
        "south",
        &LeafSpec::peer_uri("spiffe://south.example/x"),
    );
    // As before trust domains existed: no binding, both are served.
    served(&h, "west-as-south").await;
    served(&h, "south").await;
    assert_eq!(h.metric_or_absent(OUTSIDE).await, 0.0);
}
