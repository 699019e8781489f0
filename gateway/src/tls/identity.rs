//! Peer identity: the URI SAN of a client certificate, else its first DNS SAN.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The verified identity of the peer on one connection, stored in pingora's TLS
/// digest extension by the handshake callback, with how many of the
/// connection's requests reached the gateway's own hooks (requests pingora's
/// parser refuses never do; the HTTP/1 stream wrapper counts those) and how
/// many of those have finished (response complete, logged).
#[derive(Debug)]
pub struct PeerIdentity(pub Arc<str>, AtomicU64, AtomicU64, OnceLock<Arc<str>>);

impl PeerIdentity {
    /// A connection's identity, no request seen yet.
    pub fn new(id: Arc<str>) -> Self {
        PeerIdentity(id, AtomicU64::new(0), AtomicU64::new(0), OnceLock::new())
    }

    /// The identity string, e.g. `spiffe://west.example/ns/default/sa/peer`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Notes that a request on this connection reached the gateway's hooks.
    pub fn request_seen(&self) {
        self.1.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests on this connection that reached the gateway's hooks.
    pub fn requests_seen(&self) -> u64 {
        self.1.load(Ordering::Relaxed)
    }

    /// The connection's `peer` metric label, chosen by `choose` on first use.
    pub fn metric_label(&self, choose: impl FnOnce(&Arc<str>) -> Arc<str>) -> Arc<str> {
        self.3.get_or_init(|| choose(&self.0)).clone()
    }

    /// Notes that a request counted by [`Self::request_seen`] has finished.
    pub fn request_done(&self) {
        self.2.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether every request that reached the gateway's hooks has finished.
    pub fn all_done(&self) -> bool {
        self.2.load(Ordering::Relaxed) >= self.1.load(Ordering::Relaxed)
    }
}

/// Why no identity could be read from a certificate.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The DER could not be parsed.
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
    /// The certificate has neither a URI nor a DNS SAN.
    #[error("certificate has no URI or DNS subject alternative name")]
    NoSan,
    /// The identity holds a control byte, whitespace or `*` (it goes into
    /// headers, logs and pattern matching, where those bytes mean something).
    #[error("certificate identity {0:?} holds a control character, whitespace or '*'")]
    BadIdentity(String),
}

/// Whether an identity is only visible ASCII, without `*`.
fn is_clean(id: &str) -> bool {
    id.bytes().all(|b| b.is_ascii_graphic() && b != b'*')
}

/// Reads the identity from a DER certificate: first URI SAN, else first DNS SAN;
/// one with a control byte, whitespace or `*` is refused (not skipped).
pub fn identity_from_der(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Parse(e.to_string()))?
        .ok_or(IdentityError::NoSan)?;
    let names = &san.value.general_names;
    let uri = names.iter().find_map(|n| match n {
        GeneralName::URI(u) if !u.is_empty() => Some(*u),
        _ => None,
    });
    let dns = || {
        names.iter().find_map(|n| match n {
            GeneralName::DNSName(d) if !d.is_empty() => Some(*d),
            _ => None,
        })
    };
    let id = uri.or_else(dns).ok_or(IdentityError::NoSan)?;
    if !is_clean(id) {
        return Err(IdentityError::BadIdentity(id.to_string()));
    }
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::dev::{CertAuthority, LeafSpec};

    #[test]
    fn uri_san_wins_then_dns() {
        let ca = CertAuthority::new("test ca").expect("ca");
        let west = ca
            .issue(&LeafSpec::peer_uri(
                "spiffe://west.example/ns/default/sa/peer",
            ))
            .expect("leaf");
        assert_eq!(
            identity_from_der(west.der()).expect("identity"),
            "spiffe://west.example/ns/default/sa/peer"
        );
        let mut both =
            LeafSpec::peer_dns("peer.default.serviceaccount.identity.linkerd.cluster.local");
        both.uris.push("spiffe://west.example/x".into());
        let both = ca.issue(&both).expect("leaf");
        assert_eq!(
            identity_from_der(both.der()).expect("identity"),
            "spiffe://west.example/x"
        );
        let dns = ca
            .issue(&LeafSpec::peer_dns(
                "peer.default.serviceaccount.identity.linkerd.cluster.local",
            ))
            .expect("leaf");
        assert_eq!(
            identity_from_der(dns.der()).expect("identity"),
            "peer.default.serviceaccount.identity.linkerd.cluster.local"
        );
    }

    #[test]
    fn control_bytes_whitespace_and_wildcards_are_refused() {
        let ca = CertAuthority::new("test ca").expect("ca");
        for bad in [
            "spiffe://w/a b",
            "spiffe://w/a\tb",
            "spiffe://w/a\x01",
            "spiffe://w/*",
        ] {
            let leaf = ca.issue(&LeafSpec::peer_uri(bad)).expect("leaf");
            assert_eq!(
                identity_from_der(leaf.der()),
                Err(IdentityError::BadIdentity(bad.into()))
            );
        }
    }

    #[test]
    fn no_san_and_garbage() {
        let ca = CertAuthority::new("test ca").expect("ca");
        let none = ca.issue(&LeafSpec::default()).expect("leaf");
        assert_eq!(identity_from_der(none.der()), Err(IdentityError::NoSan));
        assert!(matches!(
            identity_from_der(b"not a cert"),
            Err(IdentityError::Parse(_))
        ));
    }
}
