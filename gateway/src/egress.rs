//! The egress (`listen.egress`, 4140): in-cluster callers' plaintext HTTP/1.1
//! and h2c, to local Services, to mirrors through their remote gateway over
//! mTLS, and to split roots by weight with failover.
//!
//! ```text
//! accept → HTTP/1.1 | h2c → CONNECT? 405 → authority (absolute-form or Host)
//!   → path normalised → egress table lookup (404 in-cluster, 403 not_in_cluster)
//!   → backend that can serve (primary first; by weight; 503 if none)
//!   → the backend's Mapping edits (rewrite, headers), if it came from one
//!   → endpoint → upstream.rs: plain HTTP/1.1 or h2c, or mTLS to the remote gateway
//!     (its identity verified; `:authority` = remote-svc-fq-name:port)
//!   → retry an idempotent request without body elsewhere when nothing was sent
//! ```
//! The table comes from the same discovery as the ingress's (see
//! `discovery/index/egress.rs`); this module only reads it.
//!
//! Built on hyper rather than pingora: pingora 0.9's rustls connector checks
//! the server certificate only against a DNS name or IP (its
//! `connectors/tls/rustls/mod.rs` takes the SNI as the name and offers no
//! verifier hook), and a remote gateway's identity is often a SPIFFE URI SAN.

pub mod upstream;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use self::upstream::{SendError, Target, Upstreams};
use crate::metrics::{ErrorKind, Metrics};
use crate::proxy::request::rewritten_path;
use crate::routes::{Authority, Backend, BackendSettings, PassiveHealth, Route, SharedRoutes};
use crate::tls::TlsServer;

/// Headers that belong to one hop only (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The egress's shared state.
pub struct Egress {
    routes: SharedRoutes,
    cluster_domain: String,
    upstreams: Upstreams,
    metrics: Arc<Metrics>,
    health: PassiveHealth,
}

type Answer = Response<http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>>;

impl Egress {
    /// An egress reading `routes` (the egress table).
    pub fn new(
        routes: SharedRoutes,
        cluster_domain: &str,
        tls: TlsServer,
        metrics: Arc<Metrics>,
        health: PassiveHealth,
    ) -> Egress {
        Egress {
            routes,
            cluster_domain: cluster_domain.trim_end_matches('.').to_ascii_lowercase(),
            upstreams: Upstreams::new(tls),
            metrics,
            health,
        }
    }

    fn error(&self, kind: ErrorKind) -> Answer {
        self.metrics
            .request_errors
            .with_label_values(&[kind.label()])
            .inc();
        let body = crate::proxy::request::error_body(kind);
        let mut r = Response::new(
            Full::new(Bytes::from_static(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *r.status_mut() = StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::BAD_GATEWAY);
        let h = r.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert("x-isthmus-error", HeaderValue::from_static(kind.label()));
        r
    }

    /// Answers one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Answer {
        if req.method() == Method::CONNECT {
            return self.error(ErrorKind::MethodNotAllowed);
        }
        let raw = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            });
        let Some(authority) = raw.and_then(|a| Authority::parse(a.as_bytes()).ok()) else {
            return self.error(ErrorKind::BadRequest);
        };
        let completed = full_name(&authority, &self.cluster_domain);
        let path = match crate::routes::normalize_path(req.uri().path()) {
            Ok(p) => p.into_owned(),
            Err(_) => return self.error(ErrorKind::BadRequest),
        };
        let table = self.routes.load_full();
        let Some(route) = table
            .lookup(
                completed.as_ref().unwrap_or(&authority),
                &path,
                req.method(),
                req.headers(),
            )
            .cloned()
        else {
            return if in_cluster(authority.host(), &self.cluster_domain) {
                self.error(ErrorKind::NoRoute)
            } else {
                self.error(ErrorKind::NotInCluster)
            };
        };
        self.forward(&route, req, &path).await
    }

    async fn forward(&self, route: &Route, req: Request<Incoming>, path_in: &str) -> Answer {
        let (mut parts, body) = req.into_parts();
        // gRPC needs `te: trailers` to reach the server (RFC 9113 §8.2.2
        // allows it, and only it, on HTTP/2).
        let te_trailers = parts
            .headers
            .get(http::header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        for h in HOP_BY_HOP {
            parts.headers.remove(*h);
        }
        if te_trailers {
            parts
                .headers
                .insert(http::header::TE, HeaderValue::from_static("trailers"));
        }
        let query = parts.uri.query().map(str::to_string);
        let host = parts.headers.get(http::header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        // Only a request without body can be sent again.
        let replayable = hyper::body::Body::is_end_stream(&body);
        let mut body = Some(body.boxed_unsync());
        let idempotent = parts.method.is_idempotent();
        let attempts = 1 + route
            .target
            .backends
            .first()
            .map_or(1, |b| b.settings.num_retries.max(1)) as usize;
        let mut avoid_backend = None;
        let mut avoid_endpoint = None;
        let mut last = ErrorKind::NoEndpoints;
        let mut last_cluster = String::from("local");
        for attempt in 0..attempts {
            let Some(i) = route.target.choose_servable(avoid_backend) else {
                break;
            };
            let backend: &Backend = &route.target.backends[i];
            let Some(endpoint) = backend.pick(avoid_endpoint).cloned() else {
                break;
            };
            let s = &backend.settings;
            let remote = s.remote.as_ref();
            let cluster = remote.map_or("local", |r| &r.cluster);
            let authority: http::uri::Authority = match remote {
                Some(r) => match r.authority.parse() {
                    Ok(a) => a,
                    Err(_) => return self.error(ErrorKind::Internal),
                },
                None => match host.as_ref().and_then(|h| h.to_str().ok()?.parse().ok()) {
                    Some(a) => a,
                    None => return self.error(ErrorKind::BadRequest),
                },
            };
            let mut up = Request::from_parts(
                parts.clone(),
                match body.take() {
                    Some(b) => b,
                    None => Empty::new().map_err(|never| match never {}).boxed_unsync(),
                },
            );
            let path = rewritten_path(path_in, &route.matcher.prefix, s);
            let path = path.as_deref().unwrap_or(path_in);
            let origin = match &query {
                Some(q) => format!("{path}?{q}").parse::<http::Uri>(),
                None => path.parse::<http::Uri>(),
            };
            let Ok(origin) = origin else {
                return self.error(ErrorKind::BadRequest);
            };
            *up.uri_mut() = origin;
            match HeaderValue::from_str(authority.as_str()) {
                Ok(v) => {
                    up.headers_mut().insert(http::header::HOST, v);
                }
                Err(_) => return self.error(ErrorKind::BadRequest),
            }
            edit_request(up.headers_mut(), s);
            let target = Target {
                addr: endpoint.addr,
                identity: remote.map(|r| &r.identity),
                h2c: s.upstream_h2 && remote.is_none(),
                connect_timeout: s.connect_timeout,
                timeout: s.timeout,
            };
            let in_flight = endpoint.begin();
            match self.upstreams.send(&target, &authority, up).await {
                Ok(resp) => {
                    endpoint.connected();
                    drop(in_flight);
                    let (mut rp, rb) = resp.into_parts();
                    for h in HOP_BY_HOP {
                        rp.headers.remove(*h);
                    }
                    edit_response(&mut rp.headers, s);
                    self.count(cluster, rp.status.as_u16());
                    return Response::from_parts(rp, rb.boxed_unsync());
                }
                Err(e) => {
                    drop(in_flight);
                    last = self.failed(&e, &endpoint);
                    tracing::debug!(attempt, error = %e, "egress attempt failed");
                    // Again elsewhere only with nothing lost: no body, and
                    // either nothing reached the upstream or the method is
                    // idempotent (a broken connection before the response).
                    let again = replayable
                        && (e.nothing_sent() || idempotent)
                        && !matches!(e, SendError::Timeout { .. });
                    if !again {
                        self.count(cluster, last.status());
                        return self.error(last);
                    }
                    last_cluster = cluster.to_string();
                    // Another endpoint of the same backend, else another backend.
                    if backend.endpoints.len() > 1 {
                        avoid_endpoint = Some(endpoint.addr);
                    } else {
                        avoid_backend = Some(i);
                        avoid_endpoint = None;
                    }
                }
            }
        }
        self.count(&last_cluster, last.status());
        self.error(last)
    }

    fn failed(&self, e: &SendError, endpoint: &Arc<crate::routes::Endpoint>) -> ErrorKind {
        match e {
            SendError::Connect { timeout, .. } => {
                self.metrics.upstream_connect_errors.inc();
                if endpoint.connect_failed(&self.health) {
                    self.metrics.endpoint_ejections.inc();
                }
                if *timeout {
                    ErrorKind::UpstreamTimeout
                } else {
                    ErrorKind::UpstreamConnect
                }
            }
            SendError::Tls {
                identity, error, ..
            } => {
                let reason = if *identity {
                    "identity_mismatch"
                } else {
                    "handshake"
                };
                self.metrics
                    .egress_tls_failures
                    .with_label_values(&[reason])
                    .inc();
                tracing::warn!(endpoint = %endpoint.addr, %error, "mTLS to a remote gateway refused; nothing sent");
                if endpoint.connect_failed(&self.health) {
                    self.metrics.endpoint_ejections.inc();
                }
                ErrorKind::UpstreamConnect
            }
            SendError::Broken { .. } => ErrorKind::UpstreamError,
            SendError::Timeout { .. } => ErrorKind::UpstreamTimeout,
        }
    }

    fn count(&self, cluster: &str, status: u16) {
        self.metrics
            .egress_requests
            .with_label_values(&[cluster, crate::proxy::request::status_class(status)])
            .inc();
    }
}

/// A Mapping's request header edits (the ingress's, on `http` types);
/// `Host` is the remote gateway's authority for a mirror and is kept.
fn edit_request(h: &mut http::HeaderMap, s: &BackendSettings) {
    for name in &s.remove_request_headers {
        h.remove(name);
    }
    for (name, value) in &s.add_request_headers {
        h.insert(name.clone(), value.clone());
    }
    for (name, value) in &s.append_request_headers {
        h.append(name.clone(), value.clone());
    }
    if let (Some(host), None) = (&s.rewrite_host, &s.remote) {
        h.insert(http::header::HOST, host.clone());
    }
}

/// A Mapping's response header edits.
fn edit_response(h: &mut http::HeaderMap, s: &BackendSettings) {
    for name in &s.remove_response_headers {
        h.remove(name);
    }
    for (name, value) in &s.add_response_headers {
        h.insert(name.clone(), value.clone());
    }
    for (name, value) in &s.append_response_headers {
        h.append(name.clone(), value.clone());
    }
}

/// The egress table knows each Service by its full name only
/// (`name.ns.svc.<domain>`, a third of the host entries three names would
/// take): `name.ns` and `name.ns.svc` are completed first, the port kept.
/// `None` when the host is already full (or not a short in-cluster name).
pub fn full_name(authority: &Authority, domain: &str) -> Option<Authority> {
    let host = authority.host();
    let full = if host.ends_with(".svc") {
        format!("{host}.{domain}")
    } else if host.bytes().filter(|b| *b == b'.').count() == 1 {
        format!("{host}.svc.{domain}")
    } else {
        return None;
    };
    let full = match authority.port() {
        Some(p) => format!("{full}:{p}"),
        None => full,
    };
    Authority::parse(full.as_bytes()).ok()
}

/// Whether a host names something in this cluster (`*.svc` or
/// `*.svc.<domain>`): an unknown one gets 404; anything else is outside the
/// cluster and gets 403 (`name.namespace` hosts route when they exist).
fn in_cluster(host: &str, domain: &str) -> bool {
    host.ends_with(".svc")
        || host
            .strip_suffix(domain)
            .is_some_and(|h| h.ends_with(".svc."))
}

/// Serves the egress on `listener` until `shutdown` flips; connections in
/// progress get `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    egress: Arc<Egress>,
    mut shutdown: watch::Receiver<bool>,
    idle_timeout: Duration,
) {
    let mut failures = 0;
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => {
                    failures = 0;
                    s
                }
                Err(e) => {
                    tracing::warn!(error = %e, "egress accept failed");
                    failures += 1;
                    tokio::time::sleep(crate::admin::server::accept_backoff(failures)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let egress = egress.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let egress = egress.clone();
                async move { Ok::<_, Infallible>(egress.handle(req).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(idle_timeout);
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Some(idle_timeout));
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_completed_to_the_full_name() {
        let full = |a: &str| {
            let a = Authority::parse(a.as_bytes()).unwrap();
            let a = full_name(&a, "cluster.local").unwrap_or(a);
            match a.port() {
                Some(p) => format!("{}:{p}", a.host()),
                None => a.host().to_string(),
            }
        };
        assert_eq!(full("podinfo.test"), "podinfo.test.svc.cluster.local");
        assert_eq!(
            full("podinfo.test:9898"),
            "podinfo.test.svc.cluster.local:9898"
        );
        assert_eq!(
            full("podinfo.test.svc:9898"),
            "podinfo.test.svc.cluster.local:9898"
        );
        assert_eq!(
            full("podinfo.test.svc.cluster.local:9898"),
            "podinfo.test.svc.cluster.local:9898"
        );
        assert_eq!(full("www.example.com"), "www.example.com");
        assert_eq!(full("localhost"), "localhost");
    }

    #[test]
    fn in_cluster_names() {
        let d = "cluster.local";
        assert!(in_cluster("podinfo.test.svc", d));
        assert!(in_cluster("podinfo.test.svc.cluster.local", d));
        assert!(!in_cluster("example.com", d));
        assert!(!in_cluster("www.example.com", d));
        assert!(!in_cluster("svc.cluster.local.example.com", d));
        assert!(!in_cluster("x.svccluster.local", d));
    }
}
