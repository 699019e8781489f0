//! The first stage of the request path: accept TCP (on the control thread),
//! hand the connection to a serving shard ([`shards`]), and there complete the
//! mTLS handshake (client certificate required) and give the connection to
//! the shard's pingora HTTP app (HTTP/1.1 or HTTP/2 by ALPN).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{Ssl, Stream, ALPN};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::metrics::{HandshakeFailure, Metrics};

/// Implements pingora's identity, digest and peek traits for a stream
/// wrapper by delegating to its `inner` stream.
macro_rules! delegate_stream_digests {
    ($ty:ty) => {
        impl pingora_core::protocols::UniqueID for $ty {
            fn id(&self) -> pingora_core::protocols::UniqueIDType {
                self.inner.id()
            }
        }

        impl pingora_core::protocols::GetTimingDigest for $ty {
            fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
                self.inner.get_timing_digest()
            }
            fn get_read_pending_time(&self) -> std::time::Duration {
                self.inner.get_read_pending_time()
            }
            fn get_write_pending_time(&self) -> std::time::Duration {
                self.inner.get_write_pending_time()
            }
        }

        impl pingora_core::protocols::GetProxyDigest for $ty {
            fn get_proxy_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
                self.inner.get_proxy_digest()
            }
        }

        impl pingora_core::protocols::GetSocketDigest for $ty {
            fn get_socket_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora_core::protocols::SocketDigest>> {
                self.inner.get_socket_digest()
            }
            fn set_socket_digest(&mut self, digest: pingora_core::protocols::SocketDigest) {
                self.inner.set_socket_digest(digest)
            }
        }

        #[async_trait::async_trait]
        impl pingora_core::protocols::Peek for $ty {
            async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
                self.inner.try_peek(buf).await
            }
        }
    };
}
use delegate_stream_digests;

mod coalesce;
mod deadlines;
mod handshakes;
pub mod shards;
mod sniff;
use crate::tls::{traced_handshake, PeerIdentity};
use coalesce::Coalesced;
pub use deadlines::Deadlines;
use deadlines::WithDeadlines;
use handshakes::HandshakeSlot;
pub use handshakes::Handshakes;
use shards::Accepted;
pub use shards::{Dispatch, ShardThreads};

/// The accept loop: takes TCP connections off the gateway socket, enforces
/// `max_connections` and hands each one to a serving shard.
pub struct GatewayListener {
    /// The bound gateway socket.
    pub listener: TcpListener,
    /// The shards' inboxes.
    pub dispatch: Dispatch,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Open connections, shared with the drain.
    pub connections: Arc<Connections>,
    /// Connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Connections in their TLS handshake: overall and per source address;
    /// more are closed at accept.
    pub handshakes: Arc<Handshakes>,
}

/// What serving one connection takes, whichever shard it lands on.
pub struct ConnectionConfig {
    /// The rustls acceptor with the identity callback.
    pub acceptor: Arc<Acceptor>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Time allowed to complete a handshake.
    pub handshake_timeout: Duration,
    /// Connection limits.
    pub limits: ConnectionLimits,
    /// Flips to `true` when the gateway drains.
    pub shutdown: watch::Receiver<bool>,
    per_identity: Arc<PerIdentity>,
}

impl ConnectionConfig {
    /// The configuration with a fresh per-identity count.
    pub fn new(
        acceptor: Arc<Acceptor>,
        metrics: Arc<Metrics>,
        handshake_timeout: Duration,
        limits: ConnectionLimits,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        ConnectionConfig {
            acceptor,
            metrics,
            handshake_timeout,
            limits,
            shutdown,
            per_identity: Arc::default(),
        }
    }
}

/// Starts one serving shard (thread) per app; see [`shards`].
pub fn start_shards<A: ServerApp + Send + Sync + 'static>(
    apps: Vec<A>,
    config: ConnectionConfig,
) -> std::io::Result<(Dispatch, ShardThreads)> {
    shards::start(apps, Arc::new(config))
}

/// Limits on downstream connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections per peer identity.
    pub max_per_identity: usize,
    /// HTTP/1 idle and request-header deadlines.
    pub deadlines: Deadlines,
}

/// Open connections per peer identity.
#[derive(Debug, Default)]
struct PerIdentity(Mutex<HashMap<Arc<str>, usize>>);

impl PerIdentity {
    /// Counts a connection for `id` unless it already has `max`.
    fn admit(self: &Arc<Self>, id: &Arc<str>, max: usize) -> Option<IdentityGuard> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(id.clone()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IdentityGuard(self.clone(), id.clone()))
    }
}

/// Uncounts a peer's connection when dropped.
struct IdentityGuard(Arc<PerIdentity>, Arc<str>);

impl Drop for IdentityGuard {
    fn drop(&mut self) {
        let mut open = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// Open downstream connections: the gauge, and what a drain waits for.
#[derive(Debug, Default)]
pub struct Connections {
    open: AtomicUsize,
    closed: Notify,
}

impl Connections {
    /// Connections currently open (handshaking or serving).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Returns once no connection is open.
    pub async fn wait_all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            if self.open() == 0 {
                return;
            }
            closed.await;
        }
    }
}

/// Counts one connection until dropped.
struct ConnectionGuard(Arc<Metrics>, Arc<Connections>);

impl ConnectionGuard {
    fn new(metrics: Arc<Metrics>, connections: Arc<Connections>) -> Self {
        metrics.open_connections.inc();
        connections.open.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(metrics, connections)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open_connections.dec();
        if self.1.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.1.closed.notify_waiters();
        }
    }
}

impl GatewayListener {
    /// Accepts connections until `shutdown` flips, then closes the listening
    /// socket; the shards then tell pingora to end idle keep-alive
    /// connections while in-flight requests finish (HTTP/1 without
    /// keep-alive, HTTP/2 with GOAWAY).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            if self.connections.open() >= self.max_connections {
                self.metrics
                    .limits_exceeded
                    .with_label_values(&["max_connections"])
                    .inc();
                tracing::debug!("max_connections reached; closing a new connection");
                continue;
            }
            let handshake = match self.handshakes.admit(peer.ip()) {
                Ok((slot, evicted)) => {
                    if evicted {
                        self.metrics
                            .limits_exceeded
                            .with_label_values(&["max_handshakes"])
                            .inc();
                    }
                    slot
                }
                Err(_) => {
                    self.metrics
                        .limits_exceeded
                        .with_label_values(&["max_handshakes_per_source"])
                        .inc();
                    tracing::debug!(client = %peer, "max_handshakes_per_source reached; closing a new connection");
                    continue;
                }
            };
            let guard = ConnectionGuard::new(self.metrics.clone(), self.connections.clone());
            // Leaves this runtime's reactor; the shard registers it with its own.
            let stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot hand over an accepted connection");
                    continue;
                }
            };
            self.dispatch.send(Accepted {
                stream,
                peer,
                guard,
                handshake,
            });
        }
        // Dropping `self` closes the socket and the shards' inboxes.
    }
}

/// One accepted connection on its shard.
struct Connection<A> {
    config: Arc<ConnectionConfig>,
    app: Arc<A>,
}

impl<A: ServerApp + Send + Sync + 'static> Connection<A> {
    /// Handshake, limits, then HTTP until the connection ends.
    ///
    /// The first part runs boxed: its state (the handshake's, the sniffer's)
    /// is freed once the connection is ready, so an idle keep-alive
    /// connection's task holds only the HTTP loop.
    async fn serve(self, stream: L4Stream, slot: HandshakeSlot) {
        let Some((stream, _counted)) = Box::pin(self.ready(stream, slot)).await else {
            return;
        };
        let mut next = Some(stream);
        while let Some(s) = next {
            next = self.app.process_new(s, &self.config.shutdown).await;
        }
    }

    /// The TLS handshake, the per-identity limit and the protocol: the
    /// stream the HTTP loop reads, with the identity's place in its limit;
    /// `None` when the connection ends here (refused, timed out, closed).
    async fn ready(
        &self,
        mut stream: L4Stream,
        slot: HandshakeSlot,
    ) -> Option<(Stream, Option<IdentityGuard>)> {
        if let Err(e) = stream.set_nodelay() {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let handshake = traced_handshake(self.config.acceptor.tls_handshake(stream));
        let handshake = async {
            tokio::select! {
                done = tokio::time::timeout(self.config.handshake_timeout, handshake) => Some(done),
                // max_handshakes reached: this, the oldest, gives way (counted at accept).
                () = slot.abandoned() => None,
            }
        };
        let Some(handshake) = handshake.await else {
            tracing::debug!("oldest handshake in progress abandoned for a new connection");
            return None;
        };
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err((reason, e))) => {
                self.config
                    .metrics
                    .handshake_failures
                    .with_label_values(&[reason.label()])
                    .inc();
                tracing::debug!(reason = reason.label(), error = %e, "TLS handshake refused");
                return None;
            }
            Err(_) => {
                self.config
                    .metrics
                    .handshake_failures
                    .with_label_values(&[HandshakeFailure::Timeout.label()])
                    .inc();
                return None;
            }
        };
        // Handshake done: the connection now counts as verified only.
        drop(slot);
        // Every accepted handshake carries an identity (see tls::server).
        let identity = tls
            .get_ssl_digest()
            .and_then(|d| d.extension.get::<PeerIdentity>().map(|p| p.0.clone()));
        let counted = match identity {
            Some(id) => match self
                .config
                .per_identity
                .admit(&id, self.config.limits.max_per_identity)
            {
                Some(guard) => Some(guard),
                None => {
                    self.config
                        .metrics
                        .limits_exceeded
                        .with_label_values(&["max_connections_per_identity"])
                        .inc();
                    tracing::debug!(identity = %id, "max_connections_per_identity reached; closing");
                    return None;
                }
            },
            None => None,
        };
        let alpn = tls.selected_alpn_proto();
        // Plaintext coalescing: one TLS record per small response (coalesce.rs).
        let tls: Stream = Box::new(Coalesced::new(Box::new(tls)));
        let (h2, tls): (bool, Stream) = match alpn {
            Some(ALPN::H2) => (true, tls),
            Some(_) => (false, tls),
            // No ALPN: HTTP/2 with prior knowledge (Linkerd) or HTTP/1.
            None => {
                let idle = self.config.limits.deadlines.idle;
                match tokio::time::timeout(idle, sniff::Sniffed::read(tls)).await {
                    Ok(Ok(s)) => (s.is_h2(), Box::new(s)),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "read error before the first request");
                        return None;
                    }
                    Err(_) => {
                        self.config
                            .metrics
                            .limits_exceeded
                            .with_label_values(&["idle_timeout"])
                            .inc();
                        return None;
                    }
                }
            }
        };
        let stream: Stream = if h2 {
            tls
        } else {
            Box::new(WithDeadlines::new(
                tls,
                self.config.limits.deadlines,
                self.config.metrics.clone(),
            ))
        };
        Some((stream, counted))
    }
}
