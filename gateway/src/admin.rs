//! The admin port: `/ready`, `/live`, `/metrics` (Prometheus text) and
//! `/routes` (JSON of the current table).
//!
//! Served on the data-plane runtime from shared state only, so a reload never
//! blocks it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::routes::SharedRoutes;

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
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` flips.
pub async fn serve(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = handle(&state, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
