//! The admin port: `/ready`, `/live`, `/metrics` (Prometheus text),
//! `/routes` (JSON of the current table, paged: `?filter=&offset=&limit=`),
//! `/explain` (what the gateway would do with a request, [`explain`]), the
//! web page `/` and its data `/status.json` ([`page`]); and beside it the
//! [`probe`] port. The admin port is never exposed through the LoadBalancer.
//!
//! Both are served from shared state only, so a reload never blocks them, on
//! their own thread (see [`crate::gateway`]) so admin work never runs where
//! gateway connections are accepted, and both are bounded ([`ServeLimits`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode, Uri};
use http_body_util::Full;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::discovery::DiscoveryStatus;
use crate::metrics::Metrics;
use crate::routes::SharedRoutes;
use crate::tls::TlsServer;

pub mod explain;
pub mod page;
pub mod peers;
pub mod probe;
pub mod query;
pub mod recent;
pub(crate) mod server;
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
    /// Whether discovery has completed its first full sync.
    pub fn discovery_synced(&self) -> bool {
        self.discovery.load(Ordering::Acquire)
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
    /// The TLS material in force (`None` in tests without TLS).
    pub tls: Option<TlsServer>,
    /// Discovery's state for the page.
    pub discovery: Arc<DiscoveryStatus>,
    /// The last error answers and discovery errors.
    pub recent: Arc<recent::RecentErrors>,
    /// Peers seen, sampled from the requests metric.
    pub peers: Arc<peers::PeersSeen>,
    /// What `/explain` needs from the config.
    pub explain: Arc<explain::ExplainConfig>,
    /// This gateway's identity.
    pub identity: Arc<str>,
}

/// Default and largest `limit` of `/routes`.
pub const ROUTES_DEFAULT_LIMIT: usize = 100;
/// See [`ROUTES_DEFAULT_LIMIT`].
pub const ROUTES_MAX_LIMIT: usize = 1000;

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

fn json_answer(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = text(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

fn bad_param(message: String) -> Response<Full<Bytes>> {
    json_answer(StatusCode::BAD_REQUEST, &json!({"error": message}))
}

/// A `usize` query parameter: absent or empty gives `default`.
fn number(pairs: &[(String, String)], name: &str, default: usize) -> Result<usize, String> {
    match query::get(pairs, name) {
        None | Some("") => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("invalid parameter: {name} {v:?} is not a number")),
    }
}

/// `/routes?filter=&offset=&limit=`: one page of the table (default and
/// largest limit [`ROUTES_DEFAULT_LIMIT`] / [`ROUTES_MAX_LIMIT`]).
fn routes_page(state: &AdminState, uri: &Uri) -> Response<Full<Bytes>> {
    let pairs = query::parse(uri.query());
    let (offset, limit) = match (
        number(&pairs, "offset", 0),
        number(&pairs, "limit", ROUTES_DEFAULT_LIMIT),
    ) {
        (Ok(o), Ok(l)) => (o, l.min(ROUTES_MAX_LIMIT)),
        (Err(e), _) | (_, Err(e)) => return bad_param(e),
    };
    let filter = query::get(&pairs, "filter").unwrap_or_default();
    let page = state.routes.load().page(filter, offset, limit);
    json_answer(StatusCode::OK, &page)
}

fn explain_answer(state: &AdminState, uri: &Uri) -> Response<Full<Bytes>> {
    let pairs = query::parse(uri.query());
    match explain::Question::from_query(&pairs) {
        Ok(q) => json_answer(
            StatusCode::OK,
            &explain::explain(&state.routes.load(), &state.explain, &q),
        ),
        Err(e) => bad_param(e),
    }
}

/// Answers one admin request.
pub fn handle(state: &AdminState, method: &Method, uri: &Uri) -> Response<Full<Bytes>> {
    let path = uri.path();
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
        "/routes" => routes_page(state, uri),
        "/explain" => explain_answer(state, uri),
        "/status.json" => json_answer(StatusCode::OK, &page::status(state)),
        "/" => {
            let mut resp = text(StatusCode::OK, "text/html; charset=utf-8", page::PAGE);
            resp.headers_mut().insert(
                http::header::CONTENT_SECURITY_POLICY,
                http::HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
                ),
            );
            resp
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
    let (peers, sampled, mut stop) = (state.peers.clone(), metrics.clone(), shutdown.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(peers::SAMPLE_PERIOD);
        loop {
            tokio::select! {
                _ = tick.tick() => peers.sample(&sampled),
                _ = stop.changed() => return,
            }
        }
    });
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
                let answer = move |method: &Method, uri: &Uri| handle(&state, method, uri);
                server::serve_http(stream, limits, answer).await;
            }
        },
    )
    .await;
}
