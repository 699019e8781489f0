//! Development certificates (`isthmus certs dev DIR`), generated with rcgen.
//!
//! The same generators serve the tests, so tests and the README use identical
//! material. Nothing here is meant for production: keys are written unencrypted.

use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// URI SAN of the `peer-west` certificate.
pub const PEER_WEST_IDENTITY: &str = "spiffe://west.example/ns/default/sa/peer";
/// DNS SAN of the `peer-dns` certificate (Linkerd style).
pub const PEER_DNS_IDENTITY: &str = "peer.default.serviceaccount.identity.linkerd.cluster.local";
/// URI SAN of the `peer-untrusted` and `peer-expired` certificates.
pub const PEER_OTHER_IDENTITY: &str = "spiffe://west.example/ns/default/sa/other";
/// URI SAN of the dev gateway certificate: its own identity (loop detection).
pub const GATEWAY_IDENTITY: &str = "spiffe://east.example/ns/isthmus/sa/isthmus-gateway";
/// In-cluster DNS name of the gateway, a DNS SAN of the dev gateway certificate.
pub const GATEWAY_DNS: &str = "isthmus-gateway.isthmus.svc.cluster.local";

/// A certificate generation failure.
#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    /// rcgen refused the parameters.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {path}: {error}")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
}

/// A certificate and its private key, PEM encoded.
pub struct IssuedCert {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl IssuedCert {
    /// Certificate PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }
    /// Private key PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
    /// Certificate DER.
    pub fn der(&self) -> &[u8] {
        self.cert.der()
    }
}

/// A self-signed CA that issues leaf certificates.
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// What a leaf certificate carries.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// Subject common name.
    pub common_name: String,
    /// URI SANs.
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// Extended key usages; empty means no EKU extension at all.
    pub ekus: Vec<ExtendedKeyUsagePurpose>,
    /// Validity start.
    pub not_before: OffsetDateTime,
    /// Validity end.
    pub not_after: OffsetDateTime,
}

impl Default for LeafSpec {
    fn default() -> Self {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            common_name: "isthmus dev".into(),
            uris: Vec::new(),
            dns: Vec::new(),
            ips: Vec::new(),
            ekus: vec![ExtendedKeyUsagePurpose::ClientAuth],
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(365),
        }
    }
}

impl LeafSpec {
    /// A client certificate with one URI SAN.
    pub fn peer_uri(uri: &str) -> Self {
        LeafSpec {
            common_name: uri.into(),
            uris: vec![uri.into()],
            ..LeafSpec::default()
        }
    }

    /// A client certificate with one DNS SAN.
    pub fn peer_dns(name: &str) -> Self {
        LeafSpec {
            common_name: name.into(),
            dns: vec![name.into()],
            ..LeafSpec::default()
        }
    }

    /// The dev gateway's serving certificate.
    pub fn gateway() -> Self {
        LeafSpec {
            common_name: GATEWAY_DNS.into(),
            uris: vec![GATEWAY_IDENTITY.into()],
            dns: vec!["localhost".into(), GATEWAY_DNS.into()],
            ips: vec![IpAddr::from([127, 0, 0, 1])],
            ekus: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            ..LeafSpec::default()
        }
    }

    /// Makes the certificate expired an hour ago.
    pub fn expired(mut self) -> Self {
        let now = OffsetDateTime::now_utc();
        self.not_before = now - Duration::days(30);
        self.not_after = now - Duration::hours(1);
        self
    }
}

impl CertAuthority {
    /// A new CA with an ECDSA P-256 key, valid for ten years.
    pub fn new(name: &str) -> Result<Self, DevCertError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(CertAuthority {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and key PEM (e.g. `ca.crt` and `ca.key`
    /// written by [`write_dev_certs`]), to issue more certificates under it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, DevCertError> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(CertAuthority {
            issuer: Issuer::from_ca_cert_pem(cert_pem, key)?,
            pem: cert_pem.to_string(),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a leaf certificate.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedCert, DevCertError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.common_name.as_str());
        params.distinguished_name = dn;
        for u in &spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI(u.as_str().try_into()?));
        }
        for d in &spec.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(d.as_str().try_into()?));
        }
        for ip in &spec.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.extended_key_usages = spec.ekus.clone();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert { cert, key })
    }
}

/// The names of the files `certs dev` writes.
pub const DEV_FILES: &[&str] = &[
    "ca.crt",
    "ca.key",
    "gateway.crt",
    "gateway.key",
    "peer-west.crt",
    "peer-west.key",
    "peer-dns.crt",
    "peer-dns.key",
    "peer-expired.crt",
    "peer-expired.key",
    "untrusted-ca.crt",
    "peer-untrusted.crt",
    "peer-untrusted.key",
];

/// Writes the full development set into `dir` (created if needed), replacing
/// any files of the same names.
pub fn write_dev_certs(dir: &Path) -> Result<(), DevCertError> {
    let write = |name: &str, data: &str| {
        let path = dir.join(name);
        std::fs::write(&path, data).map_err(|error| DevCertError::Write {
            path: path.display().to_string(),
            error,
        })
    };
    std::fs::create_dir_all(dir).map_err(|error| DevCertError::Write {
        path: dir.display().to_string(),
        error,
    })?;
    let ca = CertAuthority::new("isthmus dev CA")?;
    write("ca.crt", ca.cert_pem())?;
    write("ca.key", &ca.key_pem())?;
    let pair = |name: &str, cert: IssuedCert| -> Result<(), DevCertError> {
        write(&format!("{name}.crt"), &cert.cert_pem())?;
        write(&format!("{name}.key"), &cert.key_pem())
    };
    pair("gateway", ca.issue(&LeafSpec::gateway())?)?;
    pair(
        "peer-west",
        ca.issue(&LeafSpec::peer_uri(PEER_WEST_IDENTITY))?,
    )?;
    pair(
        "peer-dns",
        ca.issue(&LeafSpec::peer_dns(PEER_DNS_IDENTITY))?,
    )?;
    pair(
        "peer-expired",
        ca.issue(&LeafSpec::peer_uri(PEER_OTHER_IDENTITY).expired())?,
    )?;
    let untrusted = CertAuthority::new("untrusted dev CA")?;
    write("untrusted-ca.crt", untrusted.cert_pem())?;
    pair(
        "peer-untrusted",
        untrusted.issue(&LeafSpec::peer_uri(PEER_OTHER_IDENTITY))?,
    )?;
    Ok(())
}

/// Writes the development set unless `dir` already holds every file of it.
/// Returns whether certificates were written.
pub fn ensure_dev_certs(dir: &Path) -> Result<bool, DevCertError> {
    if DEV_FILES.iter().all(|f| dir.join(f).is_file()) {
        return Ok(false);
    }
    write_dev_certs(dir)?;
    Ok(true)
}
