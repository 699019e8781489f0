//! The request path: pingora's `ProxyHttp` hooks for one request through the
//! gateway, in order.
//!
//! ```text
//! request_filter     framing → limits → authority → loop check → route lookup →
//!                    authorization → backend → protocol (gRPC needs h2c, Upgrade
//!                    allowed, Linkerd's l5d-orig-proto)
//! upstream_peer      endpoint choice (round robin / least request), timeouts
//! upstream_request   rewrite, header edits, Forwarded by=<own identity>
//! response_filter    response header edits
//! fail_to_connect    connect errors, retry on another endpoint when safe
//! fail_to_proxy      error → status (502/504/400) with the gateway's own body
//! logging            metrics and the access log line
//! ```
//! Each hook is short; the decisions live in [`request`] as plain functions.

pub mod grpc;
pub mod request;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::admin::recent::{ErrorEvent, RecentErrors};
use crate::metrics::{ErrorKind, Metrics};
use crate::routes::{DirectAnswer, InFlight, PassiveHealth, Route, SharedRoutes};
use crate::tls::PeerIdentity;

/// Header carrying the verified peer identity to upstreams (inbound copies are dropped).
pub const PEER_IDENTITY_HEADER: &str = "x-isthmus-peer-identity";

/// Limits the request path enforces itself.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    /// Largest request header section, in bytes.
    pub max_header_bytes: usize,
    /// Most request header fields.
    pub max_headers: usize,
}

/// The gateway's `ProxyHttp` implementation. Clones share the route table,
/// metrics and endpoint health (one per serving shard).
#[derive(Clone)]
pub struct GatewayProxy {
    routes: SharedRoutes,
    metrics: Arc<Metrics>,
    /// Error answers for the admin page (one lock-free ring write per error).
    recent: Arc<RecentErrors>,
    /// `by="<identity>"`: the value this gateway adds to `Forwarded`.
    forwarded_by: http::HeaderValue,
    own_identity: Arc<str>,
    limits: RequestLimits,
    health: PassiveHealth,
}

impl GatewayProxy {
    /// A proxy reading `routes`, counting into `metrics` and `recent`,
    /// identifying itself as `own_identity`.
    pub fn new(
        routes: SharedRoutes,
        metrics: Arc<Metrics>,
        recent: Arc<RecentErrors>,
        own_identity: &str,
        limits: RequestLimits,
        health: PassiveHealth,
    ) -> Self {
        GatewayProxy {
            routes,
            metrics,
            recent,
            forwarded_by: http::HeaderValue::from_str(&format!("by=\"{own_identity}\""))
                .unwrap_or_else(|_| http::HeaderValue::from_static("by=unknown")),
            own_identity: own_identity.into(),
            limits,
            health,
        }
    }

    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        kind: ErrorKind,
    ) -> Result<bool> {
        ctx.error = Some(kind);
        respond(session, kind, ctx.grpc).await;
        Ok(true)
    }
}

/// Per-request state.
pub struct RequestCtx {
    started: Instant,
    peer: Option<Arc<str>>,
    /// The `peer` metric label (the identity, or `other` past the cap).
    peer_label: Option<Arc<str>>,
    route: Option<Arc<Route>>,
    backend: usize,
    in_flight: Option<InFlight>,
    connect_failures: u32,
    error: Option<ErrorKind>,
    /// The caller speaks gRPC: errors are answered as gRPC statuses.
    grpc: bool,
    /// The caller's gRPC deadline (`grpc-timeout`).
    deadline: Option<Duration>,
    /// Linkerd's `l5d-orig-proto` was stripped: the caller's proxy upgraded
    /// an HTTP/1 request and wants the marker back on the response.
    orig_proto: bool,
    /// An allowed `Upgrade` (WebSocket): a tunnel once the upstream answers 101.
    upgrade: bool,
    _active: ActiveRequest,
}

/// Counts a request in `isthmus_requests_in_flight` until its context is dropped.
struct ActiveRequest(prometheus::IntGauge);

impl ActiveRequest {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        ActiveRequest(gauge.clone())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl RequestCtx {
    fn backend(&self) -> Option<&crate::routes::Backend> {
        self.route.as_ref()?.target.backends.get(self.backend)
    }
}

/// The connection's identity record, set by the handshake.
fn peer_identity(session: &Session) -> Option<&PeerIdentity> {
    session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .and_then(|s| s.extension.get::<PeerIdentity>())
}

async fn respond(session: &mut Session, kind: ErrorKind, grpc: bool) {
    if grpc {
        if let Some(resp) = grpc::error_response(kind, request::error_body(kind)) {
            if let Err(e) = session.write_response_header(Box::new(resp), true).await {
                tracing::debug!(error = %e, "could not write gRPC error response");
            }
            // Trailers-only: the header block ends the stream.
            let _ = session.finish_body().await;
        }
        return;
    }
    let body = Bytes::from_static(request::error_body(kind));
    let mut resp = match ResponseHeader::build(kind.status(), Some(3)) {
        Ok(r) => r,
        Err(_) => return,
    };
    let _ = resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8");
    let _ = resp.insert_header(http::header::CONTENT_LENGTH, body.len());
    let _ = resp.insert_header("x-isthmus-error", kind.label());
    if matches!(
        kind,
        ErrorKind::BadRequest | ErrorKind::HeadersTooLarge | ErrorKind::Loop
    ) {
        // The connection may be in an unknown state after a malformed request.
        session.set_keepalive(None);
    }
    if let Err(e) = session.write_error_response(resp, body).await {
        tracing::debug!(error = %e, "could not write error response");
    }
}

/// A redirect the gateway answers itself (Gateway API `RequestRedirect`).
async fn redirect(session: &mut Session, status: u16, location: &str) {
    let Ok(mut resp) = ResponseHeader::build(status, Some(2)) else {
        return;
    };
    let _ = resp.insert_header(http::header::LOCATION, location);
    let _ = resp.insert_header(http::header::CONTENT_LENGTH, 0);
    if let Err(e) = session.write_error_response(resp, Bytes::new()).await {
        tracing::debug!(error = %e, "could not write redirect");
    }
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            peer: None,
            peer_label: None,
            route: None,
            backend: 0,
            in_flight: None,
            connect_failures: 0,
            error: None,
            grpc: false,
            deadline: None,
            orig_proto: false,
            upgrade: false,
            _active: ActiveRequest::new(&self.metrics.requests_in_flight),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if let Some(p) = peer_identity(session) {
            p.request_seen();
            ctx.peer = Some(p.0.clone());
            ctx.peer_label = Some(p.metric_label(|id| self.metrics.peer_label(id)));
        }
        if let Some(h1) = session.as_downstream().as_http1() {
            let framing = request::check_framing(&h1.get_headers_raw_bytes(), h1.req_header());
            if let Err(kind) = framing {
                return self.answer(session, ctx, kind).await;
            }
        }
        ctx.grpc = grpc::is_grpc(session.req_header());
        if let Err(kind) = request::check_limits(session.req_header(), &self.limits) {
            return self.answer(session, ctx, kind).await;
        }
        // Matched and sent upstream in normal form only.
        match request::normalize_uri(&session.req_header().uri) {
            Ok(None) => {}
            Ok(Some(uri)) => session.req_header_mut().set_uri(uri),
            Err(kind) => return self.answer(session, ctx, kind).await,
        }
        let req = session.req_header();
        let authority = match request::authority(req, session.is_http2()) {
            Ok(a) => a,
            Err(kind) => return self.answer(session, ctx, kind).await,
        };
        if request::is_loop(req, &self.own_identity) {
            return self.answer(session, ctx, ErrorKind::Loop).await;
        }
        let table = self.routes.load();
        let route = match request::route_for(
            &table,
            &authority,
            req.uri.path(),
            req.uri.query(),
            &req.method,
            &req.headers,
        ) {
            Ok(r) => r.clone(),
            Err(kind) => return self.answer(session, ctx, kind).await,
        };
        drop(table);
        ctx.route = Some(route.clone());
        if let Err(kind) = request::authorize(&route, ctx.peer.as_deref()) {
            return self.answer(session, ctx, kind).await;
        }
        let choice = route.target.choose();
        if let Some(answer) = choice.and_then(|i| route.target.backends[i].settings.answer.as_ref())
        {
            ctx.backend = choice.unwrap_or_default();
            return match answer {
                DirectAnswer::InvalidBackend => {
                    self.answer(session, ctx, ErrorKind::InvalidBackend).await
                }
                DirectAnswer::Redirect(r) => {
                    let req = session.req_header();
                    let location = request::redirect_location(
                        r,
                        &authority,
                        req.uri.path(),
                        req.uri.query(),
                        &route.matcher.prefix,
                    );
                    redirect(session, r.status, &location).await;
                    Ok(true)
                }
            };
        }
        match choice {
            Some(i)
                if route
                    .target
                    .backends
                    .get(i)
                    .is_some_and(request::backend_can_serve) =>
            {
                ctx.backend = i
            }
            _ => return self.answer(session, ctx, ErrorKind::NoEndpoints).await,
        }
        let settings = &route.target.backends[ctx.backend].settings;
        if let Err(kind) = request::check_protocol(session.req_header(), ctx.grpc, settings) {
            return self.answer(session, ctx, kind).await;
        }
        ctx.deadline = grpc::timeout(session.req_header());
        ctx.upgrade = session
            .req_header()
            .headers
            .contains_key(http::header::UPGRADE);
        if session.is_http2() {
            ctx.orig_proto = request::take_orig_proto(session.req_header_mut());
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let avoid = ctx.in_flight.take().map(|f| f.endpoint().addr);
        let backend = ctx
            .backend()
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "no backend chosen"))?;
        let endpoint = backend
            .pick(avoid)
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "no ready endpoints"))?
            .clone();
        let s = &backend.settings;
        let mut peer = HttpPeer::new(endpoint.addr, false, String::new());
        if s.upstream_h2 {
            request::h2c_peer(&mut peer);
        }
        // A gRPC deadline shortens the route's timeout, never lengthens it.
        let timeout = match (ctx.deadline, ctx.upgrade) {
            (Some(d), _) => d.min(s.timeout),
            // A tunnel may be quiet longer than a response may take.
            (None, true) => s.timeout.max(s.idle_timeout),
            (None, false) => s.timeout,
        };
        peer.options.connection_timeout = Some(s.connect_timeout);
        peer.options.read_timeout = Some(timeout);
        peer.options.write_timeout = Some(timeout);
        peer.options.idle_timeout = Some(s.idle_timeout);
        ctx.in_flight = Some(endpoint.begin());
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(f) = &ctx.in_flight {
            f.endpoint().connected();
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (Some(route), Some(backend)) = (ctx.route.as_ref(), ctx.backend()) else {
            return Ok(());
        };
        // Inbound first: a Mapping's add_request_headers may set x-forwarded-*.
        request::strip_spoofable(upstream);
        request::rewrite_upstream(upstream, &route.matcher.prefix, &backend.settings)?;
        upstream.remove_header(PEER_IDENTITY_HEADER);
        if let Some(peer) = &ctx.peer {
            upstream.insert_header(PEER_IDENTITY_HEADER, peer.as_ref())?;
        }
        // `by=` only: it is what loop detection needs, and reading the client
        // address costs a getpeername(2) per request in pingora's TLS sessions.
        upstream.append_header(http::header::FORWARDED, self.forwarded_by.clone())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if session.is_process_shutting_down() {
            // Draining: tell HTTP/1.1 clients this connection ends after this
            // response, so none sends another request into the close.
            session.set_keepalive(None);
        }
        if ctx.orig_proto {
            request::mark_orig_proto(upstream)?;
        }
        if let Some(b) = ctx.backend() {
            request::edit_response(upstream, &b.settings)?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.metrics.upstream_connect_errors.inc();
        ctx.connect_failures += 1;
        if let Some(f) = &ctx.in_flight {
            if f.endpoint().connect_failed(&self.health) {
                self.metrics.endpoint_ejections.inc();
                tracing::info!(endpoint = %f.endpoint().addr, ejection = ?self.health.ejection, "endpoint ejected after consecutive connect failures");
            }
        }
        let retries = ctx
            .backend()
            .map(|b| (b.settings.num_retries, b.endpoints.len()));
        let retry = retries.is_some_and(|(n, eps)| ctx.connect_failures <= n && eps > 1)
            && session.req_header().method.is_idempotent();
        tracing::debug!(peer = %peer, error = %e, retry, "upstream connect failed");
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let kind = match ctx.error {
            Some(k) => Some(k),
            None => request::classify_proxy_error(e),
        };
        let code = match kind {
            Some(kind) => {
                ctx.error = Some(kind);
                if session.response_written().is_none() {
                    respond(session, kind, ctx.grpc).await;
                }
                kind.status()
            }
            None => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.peer.is_some() {
            // The HTTP/1 deadlines count idle time only once this is done.
            if let Some(p) = peer_identity(session) {
                p.request_done();
            }
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or_else(|| ctx.error.map(ErrorKind::status))
            .unwrap_or(0);
        let route = ctx.route.as_ref().map_or("-", |r| &*r.name);
        let peer = ctx.peer.as_deref().unwrap_or("-");
        let elapsed = ctx.started.elapsed();
        let peer_label = ctx.peer_label.as_deref().unwrap_or("-");
        self.metrics
            .requests
            .with_label_values(&[route, peer_label, request::status_class(status)])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
        if let Some(kind) = ctx.error {
            self.metrics
                .request_errors
                .with_label_values(&[kind.label()])
                .inc();
            // Error answers only: the event (a string and an Arc) and a
            // lock-free slot store; the success path records nothing.
            let req = session.req_header();
            self.recent.record(ErrorEvent {
                seq: 0,
                at: std::time::SystemTime::now(),
                source: "request",
                reason: kind.label(),
                status: kind.status(),
                route: ctx.route.as_ref().map(|r| r.name.clone()),
                peer: ctx.peer.clone(),
                detail: format!(
                    "{} {}{}",
                    req.method,
                    request_authority(req),
                    req.uri.path()
                ),
            });
        }
        drop(ctx.in_flight.take());
        if tracing::enabled!(target: "isthmus::access", tracing::Level::INFO) {
            let req = session.req_header();
            tracing::info!(
                target: "isthmus::access",
                route,
                peer,
                status,
                method = %req.method,
                authority = %request_authority(req),
                path = req.uri.path(),
                upstream = ctx.backend().map_or("-", |b| &*b.service),
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                error = e.map(|e| e.etype().as_str()).unwrap_or(""),
                "request"
            );
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, error: &Error) -> bool {
        // Errors the gateway answered itself are already in the access log and metrics.
        ctx.error.is_some() || matches!(error.esource(), ErrorSource::Downstream)
    }
}

/// The authority as the client sent it (URI, else Host), for logs; `-` if none.
fn request_authority(req: &RequestHeader) -> &str {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("-")
}

/// How long pingora keeps an idle downstream HTTP/1.1 connection.
pub const DOWNSTREAM_KEEPALIVE: Duration = Duration::from_secs(60);
