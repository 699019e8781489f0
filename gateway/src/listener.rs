//! The first stage of the request path: accept TCP, complete the mTLS
//! handshake (client certificate required), then hand the connection to the
//! pingora HTTP app (HTTP/1.1 or HTTP/2 by ALPN).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::listener::Listener;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, Stream};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tracing::Instrument;

use crate::metrics::{HandshakeFailure, Metrics};

mod coalesce;
use crate::tls::traced_handshake;
use coalesce::Coalesced;

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
            let guard = ConnectionGuard::new(self.metrics.clone(), self.connections.clone());
            let acceptor = self.acceptor.clone();
            let app = self.app.clone();
            let metrics = self.metrics.clone();
            let timeout = self.handshake_timeout;
            let shutdown = shutdown.clone();
            let client = stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().cloned())
                .map(|a| a.to_string())
                .unwrap_or_default();
            tokio::spawn(
                async move {
                    let _guard = guard;
                    serve_connection(stream, &acceptor, app, &metrics, timeout, shutdown).await;
                }
                .instrument(tracing::debug_span!("conn", client = %client)),
            );
        }
        drop(listener);
        self.app.cleanup().await;
    }
}

async fn serve_connection<A: ServerApp + Send + Sync + 'static>(
    mut stream: L4Stream,
    acceptor: &Acceptor,
    app: Arc<A>,
    metrics: &Metrics,
    timeout: Duration,
    shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = stream.set_nodelay() {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    let (stream, coalesce) = Coalesced::new(stream);
    let handshake = traced_handshake(acceptor.tls_handshake(stream));
    let tls = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err((reason, e))) => {
            metrics
                .handshake_failures
                .with_label_values(&[reason.label()])
                .inc();
            tracing::debug!(reason = reason.label(), error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            metrics
                .handshake_failures
                .with_label_values(&[HandshakeFailure::Timeout.label()])
                .inc();
            return;
        }
    };
    coalesce.enable();
    let mut next: Option<Stream> = Some(Box::new(tls));
    while let Some(s) = next {
        next = app.process_new(s, &shutdown).await;
    }
}
