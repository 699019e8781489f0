//! The admin port: `/ready`, `/live`, `/metrics` (Prometheus text) and
//! `/routes` (JSON of the current table); and beside it the [`probe`] port.
//!
//! Both are served from shared state only, so a reload never blocks them, on
//! their own thread (see [`crate::gateway`]) so admin work never runs where
//! gateway connections are accepted, and both are bounded ([`ServeLimits`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::routes::SharedRoutes;

pub mod probe;
mod server;
pub use server::{accept_backoff, ServeLimits};

/// What `/ready` reports: certificates loaded, discovery synced, not draining.
#[derive(Debug, Default)]
pub struct Readiness {
    certs: AtomicBool,
    discovery: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// Marks the certificates as loaded.
    pub fn set_certs_loaded(&self) {
        self.certs.store(true, Ordering::Release);
    }
    /// Marks discovery as having completed its first full sync.
    pub fn set_discovery_synced(&self) {
        self.discovery.store(true, Ordering::Release);
    }
    /// Marks the gateway as shutting down: `/ready` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
    /// Whether the gateway should receive traffic.
    pub fn is_ready(&self) -> bool {
        self.certs.load(Ordering::Acquire)
            && self.discovery.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
    }
}

/// Shared state the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// Readiness flags.
    pub readiness: Arc<Readiness>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The published routes.
    pub routes: SharedRoutes,
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

/// Answers one admin request.
pub fn handle(state: &AdminState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        );
    }
    match path {
        "/ready" => {
            let ready = state.readiness.is_ready();
            state.metrics.ready.set(i64::from(ready));
            if ready {
                text(StatusCode::OK, "text/plain", "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        "/live" => text(StatusCode::OK, "text/plain", "live\n"),
        "/metrics" => {
            state
                .metrics
                .ready
                .set(i64::from(state.readiness.is_ready()));
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                state.metrics.render(),
            )
        }
        "/routes" => {
            let body =
                serde_json::to_vec_pretty(&state.routes.load().describe()).unwrap_or_default();
            text(StatusCode::OK, "application/json", body)
        }
        _ => not_found(),
    }
}

/// The 404 answer of both ports.
fn not_found() -> Response<Full<Bytes>> {
    text(StatusCode::NOT_FOUND, "text/plain", "not found\n")
}

/// Serves the admin endpoints on `listener` until `shutdown` flips, within `limits`.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    limits: ServeLimits,
    shutdown: watch::Receiver<bool>,
) {
    let metrics = state.metrics.clone();
    server::accept_loop(
        listener,
        server::Port::Admin,
        limits,
        metrics,
        shutdown,
        move |stream| {
            let state = state.clone();
            async move {
                if server::first_byte(&stream, limits.header_timeout)
                    .await
                    .is_none()
                {
                    return;
                }
                let answer = move |method: &Method, path: &str| handle(&state, method, path);
                server::serve_http(stream, limits, answer).await;
            }
        },
    )
    .await;
}
