//! The probe port (`listen.probe`): what peers' gateway probers reach through
//! the LoadBalancer. Only `GET`/`HEAD` `/ready` and `/live`, answered exactly
//! as on the admin port; everything else is 404, whatever the Host (Linkerd's
//! prober sends `Host: probe-<link>:4191`). Plaintext and TLS share the port:
//! a first byte of 0x16 (a TLS handshake record) starts a rustls handshake
//! with the gateway's current serving certificate, where a client certificate
//! is optional but verified against the trust anchors when presented.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, Uri};
use http_body_util::Full;
use pingora_rustls::TlsAcceptor;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::server::{self, Port, ServeLimits};
use super::AdminState;

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

/// Answers one probe request: the admin port's `/ready` and `/live`, 404 for
/// anything else.
pub fn handle(state: &AdminState, method: &Method, uri: &Uri) -> Response<Full<Bytes>> {
    let probe_method = method == Method::GET || method == Method::HEAD;
    match uri.path() {
        "/ready" | "/live" if probe_method => super::handle(state, method, uri),
        _ => super::not_found(),
    }
}

/// Serves the probe port on `listener` until `shutdown` flips. `tls` is the
/// config from [`crate::tls::TlsServer::probe_config`], whose certificate and
/// trust anchors follow rotation.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    state: AdminState,
    limits: ServeLimits,
    shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let metrics = state.metrics.clone();
    server::accept_loop(
        listener,
        Port::Probe,
        limits,
        metrics,
        shutdown,
        move |stream| connection(stream, acceptor.clone(), state.clone(), limits),
    )
    .await;
}

/// One probe connection: plaintext or TLS by its first byte, then HTTP.
async fn connection(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    state: AdminState,
    limits: ServeLimits,
) {
    let Some(first) = server::first_byte(&stream, limits.header_timeout).await else {
        return;
    };
    let answer = move |method: &Method, uri: &Uri| handle(&state, method, uri);
    if first != TLS_HANDSHAKE {
        return server::serve_http(stream, limits, answer).await;
    }
    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => server::serve_http(tls, limits, answer).await,
        Ok(Err(e)) => tracing::debug!(error = %e, "probe TLS handshake refused"),
        Err(_) => tracing::debug!("probe TLS handshake timed out"),
    }
}
