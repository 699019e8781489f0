//! The first stage of the request path: accept TCP, complete the mTLS
//! handshake (client certificate required), then hand the connection to the
//! pingora HTTP app (HTTP/1.1 or HTTP/2 by ALPN).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::listener::Listener;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, Ssl, Stream, ALPN};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tracing::Instrument;

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
use crate::tls::{traced_handshake, PeerIdentity};
use coalesce::Coalesced;
pub use deadlines::Deadlines;
use deadlines::WithDeadlines;

/// Everything the accept loop needs.
pub struct GatewayListener<A> {
    /// The bound gateway socket.
    pub listener: TcpListener,
    /// The rustls acceptor with the identity callback.
    pub acceptor: Arc<Acceptor>,
    /// The pingora HTTP app (our `GatewayProxy` inside pingora's `HttpProxy`).
    pub app: Arc<A>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Time allowed to complete a handshake.
    pub handshake_timeout: Duration,
    /// Open connections, shared with the drain.
    pub connections: Arc<Connections>,
    /// Connection limits.
    pub limits: ConnectionLimits,
}

/// Limits on downstream connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
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

impl<A: ServerApp + Send + Sync + 'static> GatewayListener<A> {
    /// Accepts connections until `shutdown` flips, then closes the listening
    /// socket and tells pingora to end idle keep-alive connections; in-flight
    /// requests finish (HTTP/1 without keep-alive, HTTP/2 with GOAWAY).
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let listener = Listener::from(self.listener);
        let per_identity = Arc::new(PerIdentity::default());
        let mut stop = shutdown.clone();
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                _ = stop.changed() => break,
            };
            if self.connections.open() >= self.limits.max_connections {
                self.metrics
                    .limits_exceeded
                    .with_label_values(&["max_connections"])
                    .inc();
                tracing::debug!("max_connections reached; closing a new connection");
                continue;
            }
            let guard = ConnectionGuard::new(self.metrics.clone(), self.connections.clone());
            let conn = Connection {
                acceptor: self.acceptor.clone(),
                app: self.app.clone(),
                metrics: self.metrics.clone(),
                handshake_timeout: self.handshake_timeout,
                limits: self.limits,
                per_identity: per_identity.clone(),
                shutdown: shutdown.clone(),
            };
            let client = stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().cloned())
                .map(|a| a.to_string())
                .unwrap_or_default();
            tokio::spawn(
                async move {
                    let _guard = guard;
                    conn.serve(stream).await;
                }
                .instrument(tracing::debug_span!("conn", client = %client)),
            );
        }
        drop(listener);
        self.app.cleanup().await;
    }
}

/// What one accepted connection needs.
struct Connection<A> {
    acceptor: Arc<Acceptor>,
    app: Arc<A>,
    metrics: Arc<Metrics>,
    handshake_timeout: Duration,
    limits: ConnectionLimits,
    per_identity: Arc<PerIdentity>,
    shutdown: watch::Receiver<bool>,
}

impl<A: ServerApp + Send + Sync + 'static> Connection<A> {
    /// Handshake, limits, then HTTP until the connection ends.
    async fn serve(self, mut stream: L4Stream) {
        if let Err(e) = stream.set_nodelay() {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let (stream, coalesce) = Coalesced::new(stream);
        let handshake = traced_handshake(self.acceptor.tls_handshake(stream));
        let tls = match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err((reason, e))) => {
                self.metrics
                    .handshake_failures
                    .with_label_values(&[reason.label()])
                    .inc();
                tracing::debug!(reason = reason.label(), error = %e, "TLS handshake refused");
                return;
            }
            Err(_) => {
                self.metrics
                    .handshake_failures
                    .with_label_values(&[HandshakeFailure::Timeout.label()])
                    .inc();
                return;
            }
        };
        coalesce.enable();
        // Every accepted handshake carries an identity (see tls::server).
        let identity = tls
            .get_ssl_digest()
            .and_then(|d| d.extension.get::<PeerIdentity>().map(|p| p.0.clone()));
        let _counted = match identity {
            Some(id) => match self.per_identity.admit(&id, self.limits.max_per_identity) {
                Some(guard) => Some(guard),
                None => {
                    self.metrics
                        .limits_exceeded
                        .with_label_values(&["max_connections_per_identity"])
                        .inc();
                    tracing::debug!(identity = %id, "max_connections_per_identity reached; closing");
                    return;
                }
            },
            None => None,
        };
        let h2 = tls.selected_alpn_proto() == Some(ALPN::H2);
        let mut next: Option<Stream> = if h2 {
            Some(Box::new(tls))
        } else {
            let tls: Stream = Box::new(tls);
            Some(Box::new(WithDeadlines::new(
                tls,
                self.limits.deadlines,
                self.metrics.clone(),
            )))
        };
        while let Some(s) = next {
            next = self.app.process_new(s, &self.shutdown).await;
        }
    }
}
