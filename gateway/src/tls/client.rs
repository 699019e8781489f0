//! The mTLS client side, for the egress: this gateway's certificate as the
//! client certificate, and a server verifier that checks the chain against the
//! trust anchors and then the one identity the remote gateway must carry
//! (`mirror.linkerd.io/remote-gateway-identity`: a SPIFFE URI SAN or a DNS SAN).
//!
//! rustls (and pingora's connector on it) can only match DNS names and IPs to
//! the TLS server name; a SPIFFE identity is a URI SAN, so the name check is
//! ours: webpki verifies the chain, and a "not valid for name" verdict is
//! replaced by the identity comparison.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::trust::TrustDomains;
use super::TlsServer;

/// Presents the gateway's current certificate (rotations apply to new connections).
#[derive(Debug)]
struct CurrentCert(TlsServerKey);

#[derive(Clone)]
struct TlsServerKey(TlsServer);

impl std::fmt::Debug for TlsServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsServerKey")
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0 .0.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies the chain, then that the leaf carries `expected` and that the
/// trust domain of the anchor it chains to may assert it.
#[derive(Debug)]
struct IdentityVerifier {
    trust: Arc<TrustDomains>,
    expected: Arc<str>,
}

/// Whether a DER certificate carries `identity` as a URI or DNS SAN.
pub fn carries_identity(der: &[u8], identity: &str) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|n| match n {
        GeneralName::URI(u) => *u == identity,
        GeneralName::DNSName(d) => d.eq_ignore_ascii_case(identity),
        _ => false,
    })
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.trust
            .verify_server(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
                &self.expected,
            )
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self.trust.first_server() {
            Some(v) => v.verify_tls12_signature(message, cert, dss),
            None => Err(rustls::Error::General("no trust anchors".into())),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self.trust.first_server() {
            Some(v) => v.verify_tls13_signature(message, cert, dss),
            None => Err(rustls::Error::General("no trust anchors".into())),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust
            .first_server()
            .map(|v| v.supported_verify_schemes())
            .unwrap_or_default()
    }
}

impl TlsServer {
    /// A client config for one connection to a remote gateway that must carry
    /// `identity`: this gateway's certificate, ALPN h2 then http/1.1.
    pub fn client_config(&self, identity: &Arc<str>) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // ring supports both versions; the builder cannot fail with them.
        #[allow(clippy::expect_used)]
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
            .expect("ring supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(IdentityVerifier {
                trust: self.trust_domains(),
                expected: identity.clone(),
            }))
            .with_client_cert_resolver(Arc::new(CurrentCert(TlsServerKey(self.clone()))));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// The TLS server name for `identity`: the identity itself when it is a DNS
/// name (Linkerd gateways expect SNI = their identity), else the address
/// (no SNI is sent for an IP).
pub fn server_name(identity: &str, addr: std::net::IpAddr) -> ServerName<'static> {
    match ServerName::try_from(identity.to_string()) {
        Ok(n @ ServerName::DnsName(_)) => n,
        _ => ServerName::IpAddress(addr.into()),
    }
}
