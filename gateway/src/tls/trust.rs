//! Trust domains: which identities the certificates of each trust anchor may
//! assert. With several peer CAs in one bundle any of them could issue any
//! identity (west's CA a `spiffe://south.example/...` certificate); bound to
//! its domains, a CA's chain is accepted only for the identities they cover.
//!
//! rustls' verifiers do not say which anchor a chain was built to, so the
//! chain is verified against each trust domain's anchors on their own, and
//! the peer identity checked against the domain that verified it.

use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, OtherError};

use super::client::carries_identity;
use super::identity::identity_from_der;
use crate::routes::IdentityPattern;

/// A verified chain whose identity its trust anchor may not assert.
#[derive(Debug, thiserror::Error)]
#[error("identity {identity:?} is outside the trust domains of the CA that issued it")]
pub struct OutsideTrustDomain {
    /// The identity the certificate carries.
    pub identity: String,
}

/// One set of trust anchors with the identities its chains may assert
/// (`None`: the legacy `tls.trust_anchors` bundle, any identity).
pub(super) struct TrustDomain {
    pub(super) client: Arc<dyn ClientCertVerifier>,
    pub(super) server: Arc<WebPkiServerVerifier>,
    pub(super) identities: Option<Arc<[IdentityPattern]>>,
}

impl TrustDomain {
    fn allows(&self, identity: &str) -> bool {
        self.identities
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p.matches(identity)))
    }
}

/// Every trust domain in force; never empty (loading refuses an empty set).
pub struct TrustDomains(pub(super) Vec<TrustDomain>);

impl std::fmt::Debug for TrustDomains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustDomains({})", self.0.len())
    }
}

/// Of two refusals, the one that says more: a chain that reached an anchor
/// but failed there (expired, wrong EKU) beats "unknown issuer" from the others.
fn better(kept: Option<rustls::Error>, new: rustls::Error) -> rustls::Error {
    match kept {
        Some(k) if !is_unknown_issuer(&k) => k,
        _ => new,
    }
}

fn is_unknown_issuer(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    )
}

fn outside(identity: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        OutsideTrustDomain { identity },
    ))))
}

impl TrustDomains {
    /// The first domain's client verifier (for signature checks: all use the
    /// same crypto provider).
    pub(super) fn first_client(&self) -> Option<&Arc<dyn ClientCertVerifier>> {
        self.0.first().map(|d| &d.client)
    }

    /// The first domain's server verifier (signature checks, as above).
    pub(super) fn first_server(&self) -> Option<&Arc<WebPkiServerVerifier>> {
        self.0.first().map(|d| &d.server)
    }

    /// Verifies a client chain against each domain's anchors; accepted when a
    /// domain that verifies it may assert the certificate's identity.
    pub(super) fn verify_client(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut refused: Option<rustls::Error> = None;
        let mut outside_identity = None;
        for d in &self.0 {
            match d.client.verify_client_cert(end_entity, intermediates, now) {
                Ok(v) => {
                    let id = identity_from_der(end_entity).map_err(|e| {
                        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
                            Arc::new(e),
                        )))
                    })?;
                    if d.allows(&id) {
                        return Ok(v);
                    }
                    outside_identity = Some(id);
                }
                Err(e) => refused = Some(better(refused, e)),
            }
        }
        Err(match outside_identity {
            Some(id) => outside(id),
            None => refused.unwrap_or(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        })
    }

    /// Verifies a remote gateway's chain against each domain's anchors; accepted
    /// when it carries `expected` and a domain that verifies it may assert that.
    /// The TLS server name is not compared (a SPIFFE identity is a URI SAN).
    pub(super) fn verify_server(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
        expected: &str,
    ) -> Result<(), rustls::Error> {
        let mut refused: Option<rustls::Error> = None;
        let mut chain_ok = false;
        for d in &self.0 {
            match d.server.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(_)
                | Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => {
                    chain_ok = true;
                    if d.allows(expected) && carries_identity(end_entity, expected) {
                        return Ok(());
                    }
                }
                Err(e) => refused = Some(better(refused, e)),
            }
        }
        if chain_ok {
            // Verified, but without the expected identity, or from a CA that may
            // not assert it: the same verdict as a wrong identity.
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Err(refused.unwrap_or(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        )))
    }
}
