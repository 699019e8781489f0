//! TLS: the mTLS server configuration, peer identity from client certificates,
//! and development certificates.
//!
//! Pingora's rustls listener only takes paths or a resolver, so the server
//! certificate is served by our own [`ResolvesServerCert`] and client
//! certificates are checked by our own [`ClientCertVerifier`], both of which hold
//! their material behind an `ArcSwap` so it can be replaced at run time.

pub mod client;
pub mod dev;
mod identity;
pub mod reload;
mod server;
mod trust;

pub use identity::{identity_from_der, IdentityError, PeerIdentity};
pub use server::{traced_handshake, Expiry, TlsError, TlsMaterial, TlsServer};
pub use trust::{OutsideTrustDomain, TrustDomains};
