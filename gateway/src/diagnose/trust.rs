//! Check: trust between the two gateways, on the real chains. The chain each
//! gateway presents is taken from a TLS handshake with it and verified against
//! the trust anchors the *other* side's gateway mounts, as each side verifies
//! it at run time: the remote gateway as a server (this cluster's egress
//! dials it; its identity must be the Link's `gatewayIdentity`), this
//! cluster's gateway as a client (the remote gateway checks the egress's
//! client certificate, the same certificate). Expiry within 30 days warns.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::anchors::{Anchors, Side};
use super::credentials::Remote;
use super::{Finding, Options};
use crate::mirror::link::LinkSettings;
use crate::mirror::probe::resolve_all;
use crate::tls::client::{carries_identity, server_name};

/// Certificates expiring sooner than this warn.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long one TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The chain a gateway presented.
#[derive(Clone, Debug)]
pub struct Presented {
    /// Where it was taken.
    pub addr: SocketAddr,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
}

impl Presented {
    /// `CN=leaf (issued by CN=ca)`.
    pub fn describe(&self) -> String {
        match self.chain.first() {
            Some(leaf) => format!("{} (issued by {})", subject(leaf), issuer(leaf)),
            None => "no certificate".into(),
        }
    }
}

/// The subject of a DER certificate, `CN=...`.
pub fn subject(der: &[u8]) -> String {
    X509Certificate::from_der(der)
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_else(|_| "(unparsable certificate)".into())
}

fn issuer(der: &[u8]) -> String {
    X509Certificate::from_der(der)
        .map(|(_, c)| c.issuer().to_string())
        .unwrap_or_else(|_| "(unparsable certificate)".into())
}

/// Seconds from now until the certificate's notAfter (negative: expired).
pub fn seconds_left(der: &[u8]) -> Option<i64> {
    let (_, c) = X509Certificate::from_der(der).ok()?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Some(c.validity().not_after.timestamp() - now)
}

/// Expired → failure, within [`EXPIRY_WARNING`] → warning, else nothing.
pub fn expiry(der: &[u8], what: &str, hint: &str) -> Option<Finding> {
    let left = seconds_left(der)?;
    let name = subject(der);
    let warn = i64::try_from(EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX);
    if left <= 0 {
        Some(Finding::fail(
            format!("{what} {name} has expired ({} days ago)", -left / 86_400),
            hint,
        ))
    } else if left < warn {
        Some(Finding::warn(
            format!(
                "{what} {name} expires in {} days ({} h)",
                left / 86_400,
                left / 3600
            ),
            hint,
        ))
    } else {
        None
    }
}

/// Takes the chain the TLS server at `addr` presents (nothing is verified;
/// no client certificate is sent, so the server may end the connection after
/// its certificate, which is all this needs).
pub async fn presented(
    addr: SocketAddr,
    name: Option<ServerName<'static>>,
) -> Result<Presented, String> {
    let capture = Arc::new(Capture::default());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = name.unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
    let handshake = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{addr}: TLS: {e}"))
    };
    let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "{addr}: no TLS handshake within {HANDSHAKE_TIMEOUT:?}"
            ))
        });
    let chain = capture.chain.lock().map(|c| c.clone()).unwrap_or_default();
    match (chain, result) {
        (Some(chain), _) => Ok(Presented { addr, chain }),
        (None, Err(e)) => Err(e),
        (None, Ok(_)) => Err(format!("{addr}: no certificate presented")),
    }
}

/// Accepts any server certificate and remembers it.
#[derive(Debug, Default)]
struct Capture {
    chain: Mutex<Option<Vec<CertificateDer<'static>>>>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        if let Ok(mut slot) = self.chain.lock() {
            *slot = Some(chain);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn roots(anchors: &Anchors) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for c in &anchors.certs {
        roots
            .add(c.clone())
            .map_err(|e| format!("unusable trust anchor: {e}"))?;
    }
    Ok(Arc::new(roots))
}

/// Verifies `p` as the egress verifies a remote gateway: chain to `anchors`
/// (the name check is the identity's, done apart).
pub fn verify_as_server(p: &Presented, anchors: &Anchors) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(anchors)?, provider)
        .build()
        .map_err(|e| e.to_string())?;
    let (leaf, rest) = p.chain.split_first().ok_or("no certificate")?;
    match verifier.verify_server_cert(
        leaf,
        rest,
        &ServerName::IpAddress(p.addr.ip().into()),
        &[],
        UnixTime::now(),
    ) {
        Ok(_)
        | Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. },
        )) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Verifies `p` as a gateway verifies a peer's client certificate.
pub fn verify_as_client(p: &Presented, anchors: &Anchors) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(anchors)?, provider)
        .build()
        .map_err(|e| e.to_string())?;
    let (leaf, rest) = p.chain.split_first().ok_or("no certificate")?;
    verifier
        .verify_client_cert(leaf, rest, UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The trust findings of one Link.
pub async fn check(
    settings: &LinkSettings,
    remote: &Remote,
    here: &Side,
    opts: &Options,
) -> Vec<Finding> {
    let target = &settings.target;
    let mut out = Vec::new();
    let there = match &remote.client {
        Some(c) => {
            let side = Side::read_with(c, opts, target, None, false).await;
            out.extend(side.findings.clone());
            Some(side)
        }
        None => {
            out.push(Finding::skipped(format!(
                "{target}'s trust anchors not read: the credentials do not work"
            )));
            None
        }
    };
    let there_anchors = there.as_ref().and_then(|s| s.anchors.as_ref());
    let there_names = there_anchors.map_or_else(|| "(unknown)".to_string(), Anchors::subjects);
    let here_names = here
        .anchors
        .as_ref()
        .map_or_else(|| "(unknown)".to_string(), Anchors::subjects);

    // The remote gateway, as this cluster's egress dials it.
    let chain = remote_chain(settings, opts).await;
    match &chain {
        Err(e) => out.push(Finding::fail(
            format!("cannot take the certificate {target}'s gateway presents: {e}"),
            format!(
                "is {target}'s gateway running, and gatewayAddress/gatewayPort in the Link right?"
            ),
        )),
        Ok(p) => {
            match &here.anchors {
                None => out.push(Finding::skipped(format!(
                    "{target}'s gateway certificate not verified: this cluster's trust anchors are unknown"
                ))),
                Some(a) => match verify_as_server(p, a) {
                    Ok(()) => out.push(Finding::ok(format!(
                        "{target}'s gateway certificate {} chains to this cluster's trust anchors {here_names}",
                        p.describe()
                    ))),
                    Err(e) => out.push(Finding::fail(
                        format!(
                            "{target}'s gateway certificate {} is not trusted by this cluster's trust anchors {here_names} ({e}); {target}'s anchors are {there_names}",
                            p.describe()
                        ),
                        format!("both gateways must chain to a shared root: issue {target}'s gateway certificate from one of {here_names}, or add its CA to {}", a.source),
                    )),
                },
            }
            match p.chain.first() {
                Some(leaf) if carries_identity(leaf, &settings.gateway_identity) => {
                    out.push(Finding::ok(format!(
                        "{target}'s gateway certificate carries the Link's gatewayIdentity {}",
                        settings.gateway_identity
                    )))
                }
                Some(leaf) => out.push(Finding::fail(
                    format!(
                        "{target}'s gateway certificate carries {}, not the Link's gatewayIdentity {}",
                        crate::tls::identity_from_der(leaf).unwrap_or_else(|e| e.to_string()),
                        settings.gateway_identity
                    ),
                    format!("regenerate the Link (`isthmus link --cluster-name {target}`) or reissue the certificate with that identity"),
                )),
                None => {}
            }
            if let Some(leaf) = p.chain.first() {
                out.extend(expiry(
                    leaf,
                    &format!("{target}'s gateway certificate"),
                    &format!("renew {target}'s gateway certificate (cert-manager renews it if it manages the Secret)"),
                ));
            }
        }
    }

    // This cluster's gateway, as the remote gateway checks its client certificate.
    match (&here.presented, there_anchors) {
        (Some(Ok(p)), Some(a)) => match verify_as_client(p, a) {
            Ok(()) => out.push(Finding::ok(format!(
                "this cluster's gateway certificate {} is trusted by {target}'s trust anchors {there_names}",
                p.describe()
            ))),
            Err(e) => out.push(Finding::fail(
                format!(
                    "this cluster's gateway certificate {} is not trusted by {target}'s trust anchors {there_names} ({e}); this cluster's anchors are {here_names}",
                    p.describe()
                ),
                format!("both gateways must chain to a shared root: issue this cluster's gateway certificate from one of {there_names}, or add its CA to {}", a.source),
            )),
        },
        (Some(Ok(_)), None) => out.push(Finding::skipped(format!(
            "this cluster's gateway certificate not verified: {target}'s trust anchors are unknown"
        ))),
        _ => out.push(Finding::skipped(format!(
            "this cluster's gateway certificate not verified against {target}'s anchors: it could not be taken"
        ))),
    }
    out
}

async fn remote_chain(s: &LinkSettings, opts: &Options) -> Result<Presented, String> {
    let ips = resolve_all(&opts.resolver, &s.gateway_addresses).await?;
    let mut errors = Vec::new();
    for ip in ips {
        let addr = SocketAddr::new(ip, s.gateway_port);
        match presented(addr, Some(server_name(&s.gateway_identity, ip))).await {
            Ok(p) => return Ok(p),
            Err(e) => errors.push(e),
        }
    }
    Err(errors.join("; "))
}
