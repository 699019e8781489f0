//! The mTLS server side: serving certificate, client-certificate verification,
//! and the handshake callback that records the peer identity per connection.

use std::any::Any;
use std::cell::Cell;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::listeners::tls::{Acceptor, TlsSettings};
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use pingora_rustls::TlsAcceptor;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerConfig,
    ServerSessionMemoryCache, StoresServerSessions, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use super::identity::{identity_from_der, IdentityError, PeerIdentity};
use super::trust::{OutsideTrustDomain, TrustDomain, TrustDomains};
use crate::config::Tls as TlsConfig;
use crate::metrics::HandshakeFailure;
use crate::routes::IdentityPattern;

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// Loaded certificate, key and trust anchors, ready to serve.
pub struct TlsMaterial {
    key: Arc<CertifiedKey>,
    /// The trust anchors, each set with the identities it may assert; for
    /// client certificates and the egress's server-certificate checks.
    trust: Arc<TrustDomains>,
    identity: Option<String>,
    expiry: Expiry,
    anchors: Arc<Vec<CertificateDer<'static>>>,
}

/// When the material stops being usable: not-after times in unix seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expiry {
    /// The serving (leaf) certificate's not-after; `None` if it does not parse as X.509.
    pub certificate: Option<i64>,
    /// Each trust anchor's subject (RFC 4514 string) and not-after, in bundle order.
    pub trust_anchors: Vec<(String, i64)>,
}

fn not_after(der: &[u8]) -> Option<(String, i64)> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some((
        cert.subject().to_string(),
        cert.validity().not_after.timestamp(),
    ))
}

impl TlsMaterial {
    /// Reads and checks the files named in the config: the key must match the
    /// certificate and the trust bundle must hold at least one CA.
    pub fn load(cfg: &TlsConfig) -> Result<TlsMaterial, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = read_certs(&cfg.cert)?;
        let key_der = read_key(&cfg.key)?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|e| {
            TlsError::Invalid {
                path: cfg.key.clone(),
                what: format!("unsupported private key: {e}"),
            }
        })?;
        let identity = chain.first().and_then(|c| identity_from_der(c).ok());
        let mut expiry = Expiry {
            certificate: chain.first().and_then(|c| not_after(c)).map(|(_, t)| t),
            trust_anchors: Vec::new(),
        };
        let key = CertifiedKey::new(chain, signing);
        key.keys_match().map_err(|e| TlsError::Invalid {
            path: cfg.key.clone(),
            what: format!(
                "private key does not match certificate {}: {e}",
                cfg.cert.display()
            ),
        })?;

        // The legacy bundle (any identity), else one set per trust domain.
        let mut sets: Vec<(&Path, Option<Arc<[IdentityPattern]>>)> = Vec::new();
        if let Some(p) = &cfg.trust_anchors {
            sets.push((p, None));
        }
        for d in &cfg.trust_domains {
            let patterns = d
                .identities
                .iter()
                .enumerate()
                .map(|(j, id)| {
                    IdentityPattern::parse(id).map_err(|e| format!("identities[{j}]: {e}"))
                })
                .collect::<Result<Arc<[_]>, _>>()
                .map_err(|what| TlsError::Invalid {
                    path: d.trust_anchors.clone(),
                    what: format!("trust domain: {what}"),
                })?;
            sets.push((&d.trust_anchors, Some(patterns)));
        }
        if sets.is_empty() {
            return Err(TlsError::Invalid {
                path: cfg.cert.clone(),
                what: "no trust anchors configured (tls.trust_domains or tls.trust_anchors)".into(),
            });
        }
        let mut anchors = Vec::new();
        let mut domains = Vec::new();
        for (path, identities) in sets {
            let (certs, roots) = read_anchors(path)?;
            expiry
                .trust_anchors
                .extend(certs.iter().filter_map(|ca| not_after(ca)));
            anchors.extend(certs);
            let roots = Arc::new(roots);
            let server = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsError::Invalid {
                path: path.to_path_buf(),
                what: format!("cannot build server verifier: {e}"),
            })?;
            let client = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsError::Invalid {
                    path: path.to_path_buf(),
                    what: format!("cannot build client verifier: {e}"),
                })?;
            domains.push(TrustDomain {
                client,
                server,
                identities,
            });
        }
        Ok(TlsMaterial {
            key: Arc::new(key),
            trust: Arc::new(TrustDomains(domains)),
            identity,
            expiry,
            anchors: Arc::new(anchors),
        })
    }

    /// The problems of every trust-anchor file (the legacy bundle and each
    /// trust domain's), not only the first (for `isthmus check`).
    pub fn anchor_problems(cfg: &TlsConfig) -> Vec<TlsError> {
        cfg.trust_anchors
            .iter()
            .chain(cfg.trust_domains.iter().map(|d| &d.trust_anchors))
            .filter_map(|path| read_anchors(path).err())
            .collect()
    }

    /// Not-after times of the serving certificate and of each trust anchor.
    pub fn expiry(&self) -> &Expiry {
        &self.expiry
    }

    /// Sets the expiry gauges to this material's (at start and after each reload).
    pub fn record_expiry(&self, metrics: &crate::metrics::Metrics) {
        metrics.record_tls_expiry(self.expiry.certificate, &self.expiry.trust_anchors);
    }

    /// The serving certificate's identity (URI SAN, else DNS SAN), if any.
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = File::open(path).map_err(|error| TlsError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            what: format!("malformed PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            path: path.to_path_buf(),
            what: "no CERTIFICATE found".into(),
        });
    }
    Ok(certs)
}

/// A PEM bundle of CAs, as certificates and as a root store.
fn read_anchors(path: &Path) -> Result<(Vec<CertificateDer<'static>>, RootCertStore), TlsError> {
    let certs = read_certs(path)?;
    let mut roots = RootCertStore::empty();
    for ca in certs.iter().cloned() {
        roots.add(ca).map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok((certs, roots))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file = File::open(path).map_err(|error| TlsError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            what: format!("malformed PEM: {e}"),
        })?
        .ok_or_else(|| TlsError::Invalid {
            path: path.to_path_buf(),
            what: "no PRIVATE KEY found".into(),
        })
}

/// The swappable TLS state of the gateway listener.
#[derive(Clone)]
pub struct TlsServer {
    resolver: Arc<CertResolver>,
    verifier: Arc<PeerVerifier>,
    trust: Arc<ArcSwap<TrustDomains>>,
    sessions: Arc<SessionCache>,
    generation: Arc<AtomicU64>,
    /// The trust anchors in force, as loaded (for the admin page).
    anchors: Arc<ArcSwap<Vec<CertificateDer<'static>>>>,
}

/// The server's TLS session cache. A resumed session skips client-certificate
/// verification, so every session carries the generation of the trust anchors
/// that verified its peer, and only sessions of the current generation resume.
/// (Emptying the cache on a change is not enough: a resumption in flight during
/// the change would store its new ticket in the fresh cache.)
#[derive(Debug)]
struct SessionCache {
    sessions: ArcSwap<ServerSessionMemoryCache>,
    generation: Arc<AtomicU64>,
}

impl SessionCache {
    fn new(generation: Arc<AtomicU64>) -> Self {
        SessionCache {
            sessions: ArcSwap::new(ServerSessionMemoryCache::new(4096)),
            generation,
        }
    }

    /// Frees the sessions of older generations (they could no longer resume).
    fn clear(&self) {
        self.sessions.store(ServerSessionMemoryCache::new(4096));
    }

    /// The value if it belongs to the current generation; records that generation
    /// for the ticket this resumption will issue.
    fn current(&self, stored: Option<Vec<u8>>) -> Option<Vec<u8>> {
        let stored = stored?;
        let (tag, value) = stored.split_first_chunk::<8>()?;
        let generation = u64::from_be_bytes(*tag);
        if generation != self.generation.load(Ordering::Acquire) {
            return None;
        }
        let _ = VERIFIED_GENERATION.try_with(|g| g.set(Some(generation)));
        Some(value.to_vec())
    }
}

impl StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let verified = VERIFIED_GENERATION.try_with(Cell::get).ok().flatten();
        match verified {
            Some(g) if g == self.generation.load(Ordering::Acquire) => {
                let mut tagged = g.to_be_bytes().to_vec();
                tagged.extend_from_slice(&value);
                self.sessions.load().put(key, tagged)
            }
            // Verified under trust anchors that have since changed, or unknown.
            _ => false,
        }
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.current(self.sessions.load().get(key))
    }
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.current(self.sessions.load().take(key))
    }
    fn can_cache(&self) -> bool {
        true
    }
}

impl TlsServer {
    /// Wraps loaded material.
    pub fn new(material: TlsMaterial) -> Self {
        let generation = Arc::new(AtomicU64::new(0));
        TlsServer {
            resolver: Arc::new(CertResolver(ArcSwap::new(material.key))),
            verifier: Arc::new(PeerVerifier(ArcSwap::new(Arc::new((
                0,
                material.trust.clone(),
            ))))),
            trust: Arc::new(ArcSwap::new(material.trust)),
            sessions: Arc::new(SessionCache::new(generation.clone())),
            generation,
            anchors: Arc::new(ArcSwap::new(material.anchors)),
        }
    }

    /// The serving certificate chain in force (leaf first), DER.
    pub fn serving_chain(&self) -> Vec<CertificateDer<'static>> {
        self.resolver.0.load().cert.clone()
    }

    /// The trust anchors in force, DER, in bundle order.
    pub fn trust_anchors(&self) -> Arc<Vec<CertificateDer<'static>>> {
        self.anchors.load_full()
    }

    /// Replaces certificate, key and trust anchors for new handshakes and
    /// forgets resumable sessions; connections already established keep what
    /// they negotiated.
    pub fn replace(&self, material: TlsMaterial) {
        let generation = self.generation.load(Ordering::Acquire) + 1;
        self.resolver.0.store(material.key);
        self.trust.store(material.trust.clone());
        self.anchors.store(material.anchors);
        self.verifier
            .0
            .store(Arc::new((generation, material.trust)));
        self.generation.store(generation, Ordering::Release);
        self.sessions.clear();
    }

    /// The listener's acceptor: mandatory client certificates, TLS 1.2/1.3,
    /// ALPN h2 + http/1.1, the identity callback, and session resumption (an
    /// in-memory session cache with TLS 1.3 tickets) unless disabled.
    ///
    /// Pingora builds its own `ServerConfig` from [`TlsSettings`] without a way to
    /// set session storage, so the built acceptor's rustls config is replaced by
    /// ours (same resolver, verifier and ALPN), keeping pingora's callbacks.
    pub fn acceptor(&self, session_resumption: bool) -> Acceptor {
        // `with_callbacks` only fails for other TLS backends.
        #[allow(clippy::expect_used)]
        let mut settings =
            TlsSettings::with_callbacks(Box::new(IdentityCallback)).expect("rustls settings");
        settings.set_cert_resolver(self.resolver.clone());
        settings.set_client_cert_verifier(self.verifier.clone());
        settings.enable_h2();
        let mut acceptor = settings.build();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        #[allow(clippy::expect_used)]
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_client_cert_verifier(self.verifier.clone())
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if session_resumption {
            config.session_storage = self.sessions.clone();
        } else {
            config.session_storage = Arc::new(NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        acceptor.acceptor = TlsAcceptor::from(Arc::new(config));
        acceptor
    }
}

impl TlsServer {
    /// The probe port's rustls config: the same (swappable) serving certificate
    /// and trust anchors as the gateway port, but a client certificate is
    /// optional; one that is presented must verify like on the gateway port.
    /// No session resumption (a probe handshake is cheap, and its sessions stay
    /// out of the gateway's cache). ALPN h2 and http/1.1.
    pub fn probe_config(&self) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        #[allow(clippy::expect_used)]
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_client_cert_verifier(Arc::new(OptionalPeer(self.verifier.clone())))
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Arc::new(config)
    }
}

#[derive(Debug)]
struct CertResolver(ArcSwap<CertifiedKey>);

impl TlsServer {
    /// The gateway's current certificate (the egress presents it as its client certificate).
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.resolver.0.load_full()
    }

    /// The current trust domains (for server-certificate checks).
    pub fn trust_domains(&self) -> Arc<TrustDomains> {
        self.trust.load_full()
    }
}

/// ALPN of Linkerd's opaque transport: a TCP tunnel with a transport header,
/// which this gateway does not speak.
const LINKERD_OPAQUE_ALPN: &[u8] = b"transport.l5d.io/v1";

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Refused here, before ALPN negotiation, so it gets its own reason.
        if hello
            .alpn()
            .is_some_and(|mut protos| protos.any(|p| p == LINKERD_OPAQUE_ALPN))
        {
            trace(Trace::Refused(HandshakeFailure::OpaqueTransport));
            return None;
        }
        Some(self.0.load_full())
    }
}

/// Verifies client certificates against the current trust anchors (webpki, which
/// also enforces the `clientAuth` EKU when an EKU is present), requires a URI
/// or DNS SAN, so every accepted connection has an identity, and that identity
/// to be one the verifying anchor's trust domain may assert.
struct PeerVerifier(ArcSwap<(u64, Arc<TrustDomains>)>);

impl std::fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerVerifier")
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn client_auth_mandatory(&self) -> bool {
        trace(Trace::CertificateMessage);
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would borrow from swappable state; clients send their one
        // certificate regardless, so none are offered.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let current = self.0.load();
        let (generation, trust) = &**current;
        let result = trust.verify_client(end_entity, intermediates, now);
        if result.is_ok() {
            let _ = VERIFIED_GENERATION.try_with(|g| g.set(Some(*generation)));
        }
        trace(match &result {
            Ok(_) => Trace::Verified,
            Err(e) => Trace::Refused(classify_rustls(e)),
        });
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self.0.load().1.first_client() {
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
        match self.0.load().1.first_client() {
            Some(v) => v.verify_tls13_signature(message, cert, dss),
            None => Err(rustls::Error::General("no trust anchors".into())),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0
            .load()
            .1
            .first_client()
            .map(|v| v.supported_verify_schemes())
            .unwrap_or_default()
    }
}

/// [`PeerVerifier`] with the client certificate optional (the probe port): no
/// certificate is fine, a presented one must verify against the current trust
/// anchors.
#[derive(Debug)]
struct OptionalPeer(Arc<PeerVerifier>);

impl ClientCertVerifier for OptionalPeer {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Runs once per connection after the handshake: reads the peer identity from
/// the verified leaf certificate into the TLS digest extension.
struct IdentityCallback;

#[async_trait]
impl TlsAccept for IdentityCallback {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let der = tls.peer_certificate_der()?;
        let id = identity_from_der(der).ok()?;
        Some(Arc::new(PeerIdentity::new(id.into())))
    }
}

tokio::task_local! {
    /// What the verifier saw during the handshake running in this task.
    static TRACE: Cell<Trace>;
    /// Generation of the trust anchors that verified this handshake's peer
    /// (directly, or through the session it resumes).
    static VERIFIED_GENERATION: Cell<Option<u64>>;
}

/// Handshake progress as observed by [`PeerVerifier`]: pingora flattens the
/// rustls error into a string, so the verifier records the reason itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trace {
    Start,
    /// rustls asked whether a certificate is mandatory: the client's Certificate
    /// message arrived (empty unless verification follows).
    CertificateMessage,
    Verified,
    Refused(HandshakeFailure),
}

fn trace(t: Trace) {
    let _ = TRACE.try_with(|c| c.set(t));
}

/// Runs a server handshake, and on failure says why in metric terms.
pub async fn traced_handshake<T>(
    handshake: impl std::future::Future<Output = pingora_error::Result<T>>,
) -> Result<T, (HandshakeFailure, Box<pingora_error::Error>)> {
    let handshake = VERIFIED_GENERATION.scope(Cell::new(None), handshake);
    TRACE
        .scope(Cell::new(Trace::Start), async {
            let result = handshake.await;
            let seen = TRACE.with(Cell::get);
            result.map_err(|e| (classify(seen, &e), e))
        })
        .await
}

fn classify(seen: Trace, err: &pingora_error::Error) -> HandshakeFailure {
    match seen {
        Trace::Refused(reason) => reason,
        Trace::CertificateMessage => HandshakeFailure::NoClientCert,
        Trace::Start | Trace::Verified => {
            let msg = err.to_string().to_ascii_lowercase();
            if ["eof", "reset", "broken pipe", "closed"]
                .iter()
                .any(|w| msg.contains(w))
            {
                HandshakeFailure::Closed
            } else {
                HandshakeFailure::Protocol
            }
        }
    }
}

fn classify_rustls(e: &rustls::Error) -> HandshakeFailure {
    match e {
        rustls::Error::NoCertificatesPresented => HandshakeFailure::NoClientCert,
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                HandshakeFailure::UnknownCa
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => HandshakeFailure::Expired,
            CertificateError::Other(rustls::OtherError(e))
                if e.downcast_ref::<OutsideTrustDomain>().is_some() =>
            {
                HandshakeFailure::OutsideTrustDomain
            }
            CertificateError::Other(rustls::OtherError(e))
                if matches!(
                    e.downcast_ref::<IdentityError>(),
                    Some(IdentityError::BadIdentity(_))
                ) =>
            {
                HandshakeFailure::BadIdentity
            }
            _ => HandshakeFailure::BadCertificate,
        },
        _ => HandshakeFailure::Protocol,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::dev::{CertAuthority, LeafSpec};

    #[test]
    fn expiry_names_the_leaf_and_every_anchor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca1 = CertAuthority::new("first CA").expect("ca");
        let ca2 = CertAuthority::new("second CA").expect("ca");
        let mut spec = LeafSpec::gateway();
        spec.not_after = time::OffsetDateTime::from_unix_timestamp(4_000_000_000).expect("time");
        let leaf = ca1.issue(&spec).expect("issue");
        std::fs::write(dir.path().join("c.crt"), leaf.cert_pem()).expect("write");
        std::fs::write(dir.path().join("c.key"), leaf.key_pem()).expect("write");
        std::fs::write(
            dir.path().join("ca.crt"),
            format!("{}{}", ca1.cert_pem(), ca2.cert_pem()),
        )
        .expect("write");
        let cfg = TlsConfig {
            cert: dir.path().join("c.crt"),
            key: dir.path().join("c.key"),
            trust_anchors: Some(dir.path().join("ca.crt")),
            trust_domains: Vec::new(),
            session_resumption: true,
            reload_interval_ms: 1_000,
        };
        let m = TlsMaterial::load(&cfg).expect("load");
        assert_eq!(m.expiry().certificate, Some(4_000_000_000));
        let subjects: Vec<&str> = m
            .expiry()
            .trust_anchors
            .iter()
            .map(|(s, _)| s.as_str())
            .collect();
        assert_eq!(subjects.len(), 2, "{subjects:?}");
        assert!(subjects[0].contains("first CA"), "{subjects:?}");
        assert!(subjects[1].contains("second CA"), "{subjects:?}");
        let now = crate::metrics::unix_now();
        assert!(m.expiry().trust_anchors.iter().all(|(_, t)| *t > now));
    }

    #[test]
    fn each_trust_domain_asserts_only_its_identities_for_peers_and_remote_gateways() {
        use rcgen::ExtendedKeyUsagePurpose as Eku;
        let dir = tempfile::tempdir().expect("tempdir");
        let west = CertAuthority::new("west CA").expect("ca");
        let south = CertAuthority::new("south CA").expect("ca");
        let leaf = west.issue(&LeafSpec::gateway()).expect("issue");
        std::fs::write(dir.path().join("c.crt"), leaf.cert_pem()).expect("write");
        std::fs::write(dir.path().join("c.key"), leaf.key_pem()).expect("write");
        std::fs::write(dir.path().join("west.crt"), west.cert_pem()).expect("write");
        std::fs::write(dir.path().join("south.crt"), south.cert_pem()).expect("write");
        let domain = |file: &str, id: &str| crate::config::TrustDomain {
            trust_anchors: dir.path().join(file),
            identities: vec![id.into()],
        };
        let cfg = TlsConfig {
            cert: dir.path().join("c.crt"),
            key: dir.path().join("c.key"),
            trust_anchors: None,
            trust_domains: vec![
                domain("west.crt", "spiffe://west.example/*"),
                domain("south.crt", "spiffe://south.example/*"),
            ],
            session_resumption: true,
            reload_interval_ms: 1_000,
        };
        let m = TlsMaterial::load(&cfg).expect("load");
        assert_eq!(m.expiry().trust_anchors.len(), 2);
        let now = UnixTime::now();
        let id = "spiffe://south.example/gw";
        let server_spec = LeafSpec {
            uris: vec![id.into()],
            ekus: vec![Eku::ServerAuth, Eku::ClientAuth],
            ..LeafSpec::default()
        };
        let name =
            rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
        let by_west = west.issue(&server_spec).expect("issue");
        let by_south = south.issue(&server_spec).expect("issue");
        let (w, s) = (
            CertificateDer::from(by_west.der().to_vec()),
            CertificateDer::from(by_south.der().to_vec()),
        );
        // Remote gateways (egress): west's CA may not assert a south identity.
        assert!(matches!(
            m.trust.verify_server(&w, &[], &name, &[], now, id),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure
            ))
        ));
        assert!(m.trust.verify_server(&s, &[], &name, &[], now, id).is_ok());
        // Peers: the same binding, with its own handshake failure reason.
        let err = m.trust.verify_client(&w, &[], now).expect_err("refused");
        assert_eq!(classify_rustls(&err), HandshakeFailure::OutsideTrustDomain);
        assert!(m.trust.verify_client(&s, &[], now).is_ok());
        // A CA in no domain: unknown.
        let other = CertAuthority::new("other CA").expect("ca");
        let o = CertificateDer::from(other.issue(&server_spec).expect("issue").der().to_vec());
        let err = m.trust.verify_client(&o, &[], now).expect_err("refused");
        assert_eq!(classify_rustls(&err), HandshakeFailure::UnknownCa);

        // A bad bundle is an error naming its file; check lists every one.
        std::fs::write(dir.path().join("south.crt"), "junk").expect("write");
        let err = TlsMaterial::load(&cfg).err().expect("refused").to_string();
        assert!(err.contains("south.crt"), "{err}");
        let problems = TlsMaterial::anchor_problems(&TlsConfig {
            trust_domains: vec![
                domain("missing.crt", "*"),
                domain("south.crt", "*"),
                domain("west.crt", "*"),
            ],
            ..cfg.clone()
        });
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
