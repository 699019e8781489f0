//! Request-path decisions as plain functions: authority extraction, limits,
//! loop detection, route lookup, authorization, backend choice, upstream
//! rewrites and error classification. The admin port's `/explain` calls the
//! same functions, so what it says is what the proxy does.

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{FORWARDED, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Method};
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::RequestHeader;

use super::RequestLimits;
use crate::metrics::ErrorKind;
use crate::routes::{
    Authority, Backend, BackendSettings, Redirect, RewriteMode, Route, RouteTable,
};

/// The body the gateway sends with its own error answers. The same body for
/// unknown and non-exported hosts: nothing about what exists leaks.
pub fn error_body(kind: ErrorKind) -> &'static [u8] {
    match kind {
        ErrorKind::NoRoute => b"not found\n",
        ErrorKind::Forbidden => b"forbidden: peer identity not allowed\n",
        ErrorKind::NoEndpoints => b"no ready endpoints\n",
        ErrorKind::UpstreamConnect => b"upstream connect error\n",
        ErrorKind::UpstreamError => b"upstream error\n",
        ErrorKind::UpstreamTimeout => b"upstream timeout\n",
        ErrorKind::BadRequest => b"bad request\n",
        ErrorKind::HeadersTooLarge => b"request header fields too large\n",
        ErrorKind::Loop => b"loop detected: request already forwarded by this gateway\n",
        ErrorKind::Internal => b"internal error\n",
        ErrorKind::InvalidBackend => b"internal error: backend not found\n",
        ErrorKind::NotInCluster => b"forbidden: the egress only reaches in-cluster Services\n",
        ErrorKind::MethodNotAllowed => b"method not allowed\n",
        ErrorKind::GrpcNotH2 => b"the upstream does not speak HTTP/2 (gRPC needs h2c)\n",
        ErrorKind::UpgradeRefused => b"upgrade not allowed on this route\n",
    }
}

/// Refuses requests whose header section is over the configured limits.
pub fn check_limits(req: &RequestHeader, limits: &RequestLimits) -> Result<(), ErrorKind> {
    if req.headers.len() > limits.max_headers {
        return Err(ErrorKind::HeadersTooLarge);
    }
    let size: usize = req.raw_path().len()
        + req
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if size > limits.max_header_bytes {
        return Err(ErrorKind::HeadersTooLarge);
    }
    Ok(())
}

/// Refuses HTTP/1 framing that two hops could read two ways. `raw_head` is the
/// request line and header section as received; `req` is what pingora made of it.
///
/// - `Content-Length` together with `Transfer-Encoding`: pingora drops the
///   `Content-Length` and frames by `Transfer-Encoding`; RFC 9112 §6.1 allows
///   refusing instead, and a gateway that serves peers it does not control should.
/// - A bare LF line ending: RFC 9112 §2.2 allows accepting it, but no HTTP/1
///   client in this path sends one, and a hop that splits lines differently is
///   how requests are smuggled.
pub fn check_framing(raw_head: &[u8], req: &RequestHeader) -> Result<(), ErrorKind> {
    let mut prev = 0u8;
    for &b in raw_head {
        if b == b'\n' && prev != b'\r' {
            return Err(ErrorKind::BadRequest);
        }
        prev = b;
    }
    if req.headers.contains_key(TRANSFER_ENCODING)
        && raw_head.split(|b| *b == b'\n').skip(1).any(|line| {
            line.iter()
                .position(|b| *b == b':')
                .is_some_and(|colon| line[..colon].eq_ignore_ascii_case(b"content-length"))
        })
    {
        return Err(ErrorKind::BadRequest);
    }
    Ok(())
}

/// The request's authority: HTTP/2 `:authority` (else Host), HTTP/1 Host.
/// Two Host headers, or an absolute URI whose authority differs from Host,
/// are refused as ambiguous.
pub fn authority(req: &RequestHeader, http2: bool) -> Result<Authority, ErrorKind> {
    let mut hosts = req.headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ErrorKind::BadRequest);
    }
    let parse = |raw: &[u8]| parse_authority(raw).map_err(|_| ErrorKind::BadRequest);
    let from_uri = req
        .uri
        .authority()
        .map(|a| parse(a.as_str().as_bytes()))
        .transpose()?;
    let from_host = host.map(|h| parse(h.as_bytes())).transpose()?;
    match (from_uri, from_host) {
        (Some(u), Some(h)) if u != h => Err(ErrorKind::BadRequest),
        (Some(u), _) => Ok(u),
        (None, Some(h)) if !http2 || req.uri.authority().is_none() => Ok(h),
        _ => Err(ErrorKind::BadRequest),
    }
}

/// One Host / `:authority` value, normalised; refused values are a bad request.
pub fn parse_authority(raw: &[u8]) -> Result<Authority, crate::routes::AuthorityError> {
    Authority::parse(raw)
}

/// The request path as routes match it (see [`crate::routes::normalize_path`]);
/// a refused path is a bad request.
pub fn normalized_path(path: &str) -> Result<Cow<'_, str>, ErrorKind> {
    crate::routes::normalize_path(path).map_err(|_| ErrorKind::BadRequest)
}

/// Route lookup: the most specific route, or 404 (unknown and not exported
/// hosts alike).
pub fn route_for<'t>(
    table: &'t RouteTable,
    authority: &Authority,
    path: &str,
    query: Option<&str>,
    method: &Method,
    headers: &HeaderMap,
) -> Result<&'t Arc<Route>, ErrorKind> {
    table
        .lookup_query(authority, path, query, method, headers)
        .ok_or(ErrorKind::NoRoute)
}

/// Authorization: the peer identity must be admitted by the route. A
/// connection without identity never completes the handshake; denied regardless.
pub fn authorize(route: &Route, peer: Option<&str>) -> Result<(), ErrorKind> {
    match peer {
        Some(p) if route.authz.allows(p) => Ok(()),
        _ => Err(ErrorKind::Forbidden),
    }
}

/// Whether a chosen backend can take the request (it has a ready endpoint).
pub fn backend_can_serve(backend: &Backend) -> bool {
    !backend.endpoints.is_empty()
}

/// Backend choice: one backend by weight; 503 when the route has no weight
/// or the chosen backend has no ready endpoint.
pub fn choose_backend(route: &Route) -> Result<usize, ErrorKind> {
    match route.target.choose() {
        Some(i) if route.target.backends.get(i).is_some_and(backend_can_serve) => Ok(i),
        _ => Err(ErrorKind::NoEndpoints),
    }
}

/// Whether a `Forwarded` header names this gateway as `by=`: the request has
/// already passed through here.
pub fn is_loop(req: &RequestHeader, own_identity: &str) -> bool {
    req.headers.get_all(FORWARDED).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',' || *b == b';')
            .filter_map(|pair| {
                let pair = pair.trim_ascii();
                let (k, v) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
                k.eq_ignore_ascii_case(b"by").then_some(&v[1..])
            })
            .any(|by| {
                let by = by
                    .strip_prefix(b"\"")
                    .and_then(|b| b.strip_suffix(b"\""))
                    .unwrap_or(by);
                by == own_identity.as_bytes()
            })
    })
}

/// The request URI with its path normalised (see [`crate::routes::normalize_path`]);
/// `None` when it already is. A refused path is a bad request.
pub fn normalize_uri(uri: &http::Uri) -> Result<Option<http::Uri>, ErrorKind> {
    let path = match normalized_path(uri.path())? {
        Cow::Borrowed(_) => return Ok(None),
        Cow::Owned(p) => p,
    };
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query =
        Some(http::uri::PathAndQuery::try_from(pq).map_err(|_| ErrorKind::BadRequest)?);
    http::Uri::from_parts(parts)
        .map(Some)
        .map_err(|_| ErrorKind::BadRequest)
}

/// Whether an inbound header could pass for one the gateway vouches for: the
/// headers it sets (`x-isthmus-peer-identity`, `forwarded`) spelt with `_` for
/// `-` (servers such as CGI or Node frameworks read them as the same), and the
/// client-address headers (`x-forwarded-*`, `x-real-ip`, any spelling) that a
/// peer could fill with whatever it likes. `name` is lower-case.
fn is_spoofable(name: &str) -> bool {
    if name.contains('_') {
        let dashed = name.replace('_', "-");
        return matches!(
            dashed.as_str(),
            "x-isthmus-peer-identity" | "forwarded" | "x-real-ip"
        ) || dashed.starts_with("x-forwarded-");
    }
    name == "x-real-ip" || name.starts_with("x-forwarded-")
}

/// The `by=` pairs of a `Forwarded` value (one per element that has one):
/// earlier hops' identities for loop detection, without the `for=`, `host=`
/// and `proto=` a peer can set to anything.
fn forwarded_by_only(value: &str) -> Vec<&str> {
    fn pair<'a>(out: &mut Vec<&'a str>, p: &'a str) {
        let p = p.trim();
        if p.get(..3).is_some_and(|k| k.eq_ignore_ascii_case("by=")) && p.len() > 3 {
            out.push(p);
        }
    }
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in value.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b';' | b',' if !quoted => {
                pair(&mut out, &value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pair(&mut out, &value[start..]);
    out
}

/// Removes what a peer must not be able to tell the upstream (see
/// [`is_spoofable`]), and reduces inbound `Forwarded` to its `by=` pairs.
pub fn strip_spoofable(upstream: &mut RequestHeader) {
    let spoofable: Vec<http::HeaderName> = upstream
        .headers
        .keys()
        .filter(|n| is_spoofable(n.as_str()))
        .cloned()
        .collect();
    for name in &spoofable {
        upstream.remove_header(name);
    }
    let forwarded = &http::header::FORWARDED;
    if !upstream.headers.contains_key(forwarded) {
        return;
    }
    let by: Vec<String> = upstream
        .headers
        .get_all(forwarded)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(forwarded_by_only)
        .map(str::to_string)
        .collect();
    upstream.remove_header(forwarded);
    if !by.is_empty() {
        let _ = upstream.append_header(forwarded.clone(), by.join(", "));
    }
}

/// Rewrites the matched prefix, applies header edits, and sends origin-form.
pub fn rewrite_upstream(
    upstream: &mut RequestHeader,
    prefix: &str,
    settings: &BackendSettings,
) -> pingora_error::Result<()> {
    let new_path = rewritten_path(upstream.uri.path(), prefix, settings);
    if new_path.is_some() || upstream.uri.authority().is_some() {
        // An HTTP/2 request's authority lives in the URI; keep it as Host
        // (pingora's h2 upstream rebuilds `:authority` from Host).
        if let Some(a) = upstream.uri.authority().map(|a| a.as_str().to_string()) {
            if !upstream.headers.contains_key(HOST) {
                upstream.insert_header(HOST, a)?;
            }
        }
        let path = new_path.as_deref().unwrap_or(upstream.uri.path());
        let pq = match upstream.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let uri = pq
            .parse::<http::Uri>()
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "rewritten path", e))?;
        upstream.set_uri(uri);
    }
    for name in &settings.remove_request_headers {
        upstream.remove_header(name);
    }
    for (name, value) in &settings.add_request_headers {
        upstream.insert_header(name.clone(), value.clone())?;
    }
    for (name, value) in &settings.append_request_headers {
        upstream.append_header(name.clone(), value.clone())?;
    }
    if let Some(host) = &settings.rewrite_host {
        upstream.insert_header(HOST, host.clone())?;
    }
    Ok(())
}

/// The path sent upstream when `settings` rewrite the matched `prefix` of
/// `path`; `None` when the path goes as it came.
pub fn rewritten_path(path: &str, prefix: &str, settings: &BackendSettings) -> Option<String> {
    match &settings.rewrite {
        Some(rewrite) if settings.rewrite_mode != RewriteMode::Prefix => {
            Some(replace_path(path, prefix, settings.rewrite_mode, rewrite))
        }
        Some(rewrite) if path.starts_with(prefix) => {
            let rest = &path[prefix.len()..];
            let joined = if rewrite.ends_with('/') && rest.starts_with('/') {
                format!("{}{}", rewrite, &rest[1..])
            } else {
                format!("{rewrite}{rest}")
            };
            // `/pub` on `/pub../x` leaves `../x`: never send `/../x`.
            Some(match crate::routes::normalize_path(&joined) {
                Ok(p) => p.into_owned(),
                Err(_) => joined,
            })
        }
        _ => None,
    }
}

/// A Gateway API path replacement: the whole path, or the matched prefix by
/// path elements (`/foo` → `/bar` turns `/foo/x` into `/bar/x`, `/foo` into `/bar`).
pub fn replace_path(path: &str, prefix: &str, mode: RewriteMode, with: &str) -> String {
    match mode {
        RewriteMode::Full => with.to_string(),
        RewriteMode::Prefix | RewriteMode::PrefixSegments => {
            let prefix = prefix.trim_end_matches('/');
            let rest = path.strip_prefix(prefix).unwrap_or(path);
            let rest = rest.trim_start_matches('/');
            let base = with.trim_end_matches('/');
            match (base.is_empty(), rest.is_empty()) {
                (true, true) => "/".to_string(),
                (true, false) => format!("/{rest}"),
                (false, true) => base.to_string(),
                (false, false) => format!("{base}/{rest}"),
            }
        }
    }
}

/// Edits the response headers as the backend's settings say.
pub fn edit_response(
    resp: &mut pingora_http::ResponseHeader,
    settings: &BackendSettings,
) -> pingora_error::Result<()> {
    for name in &settings.remove_response_headers {
        resp.remove_header(name);
    }
    for (name, value) in &settings.add_response_headers {
        resp.insert_header(name.clone(), value.clone())?;
    }
    for (name, value) in &settings.append_response_headers {
        resp.append_header(name.clone(), value.clone())?;
    }
    Ok(())
}

/// The `Location` of a redirect for a request to `authority` with `path`
/// (and `query`) matched by `prefix`. Peers reach the gateway over TLS, so the
/// default scheme is `https`; the port is left out when it is the scheme's default.
pub fn redirect_location(
    r: &Redirect,
    authority: &Authority,
    path: &str,
    query: Option<&str>,
    prefix: &str,
) -> String {
    let scheme = r.scheme.as_deref().unwrap_or("https");
    let host = r.hostname.as_deref().unwrap_or(authority.host());
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        // A new scheme without a port: that scheme's default port.
        (None, Some(_)) => None,
        (None, None) => authority.port(),
    };
    let port = port.filter(|p| !matches!((scheme, *p), ("http", 80) | ("https", 443)));
    let path = match &r.path {
        Some((mode, with)) => replace_path(path, prefix, *mode, with),
        None => path.to_string(),
    };
    let mut loc = format!("{scheme}://{host}");
    if let Some(p) = port {
        loc.push_str(&format!(":{p}"));
    }
    loc.push_str(&path);
    if let Some(q) = query {
        loc.push('?');
        loc.push_str(q);
    }
    loc
}

/// Refuses what the chosen backend cannot carry: a gRPC request to an
/// HTTP/1.1 upstream (it would hang or fail obscurely: refused at once), a
/// plain `CONNECT` (the gateway is no tunnel), and an `Upgrade` to a
/// protocol the route does not allow (`allow_upgrade`; implicit Service
/// routes allow `websocket`), or any `Upgrade` towards an h2c upstream.
pub fn check_protocol(
    req: &RequestHeader,
    grpc: bool,
    settings: &BackendSettings,
) -> Result<(), ErrorKind> {
    if grpc && !settings.upstream_h2 {
        return Err(ErrorKind::GrpcNotH2);
    }
    if req.method == http::Method::CONNECT {
        return Err(ErrorKind::MethodNotAllowed);
    }
    let mut upgrades = req.headers.get_all(http::header::UPGRADE).iter().peekable();
    if upgrades.peek().is_some() && settings.upstream_h2 {
        // pingora drops `Upgrade` towards an HTTP/2 upstream: refuse, don't break it.
        return Err(ErrorKind::UpgradeRefused);
    }
    for value in upgrades {
        let Ok(value) = value.to_str() else {
            return Err(ErrorKind::UpgradeRefused);
        };
        for proto in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            // `websocket/13` names a version; the allow list names protocols.
            let name = proto.split('/').next().unwrap_or(proto);
            if !settings
                .allow_upgrade
                .iter()
                .any(|a| a.eq_ignore_ascii_case(name))
            {
                return Err(ErrorKind::UpgradeRefused);
            }
        }
    }
    Ok(())
}

/// Linkerd's header on an HTTP/1 request its proxy carried over HTTP/2.
pub const L5D_ORIG_PROTO: &str = "l5d-orig-proto";

/// Strips `l5d-orig-proto` from an HTTP/2 request, as linkerd2-proxy's
/// inbound `orig_proto::Downgrade` does; whether it was there (the request
/// then goes upstream as the HTTP/1.1 it was).
pub fn take_orig_proto(req: &mut RequestHeader) -> bool {
    let found = req.headers.contains_key(L5D_ORIG_PROTO);
    if found {
        req.remove_header(L5D_ORIG_PROTO);
    }
    found
}

/// On the response to an orig-proto request: `l5d-orig-proto: HTTP/1.x` when
/// the upstream answered in HTTP/1 (the caller's proxy then downgrades it),
/// nothing when it answered in HTTP/2 (as `Downgrade` does).
pub fn mark_orig_proto(resp: &mut pingora_http::ResponseHeader) -> pingora_error::Result<()> {
    let value = match resp.version {
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => return Ok(()),
    };
    resp.insert_header(L5D_ORIG_PROTO, value)?;
    resp.remove_header(&TRANSFER_ENCODING);
    Ok(())
}

/// Makes `peer` an HTTP/2-with-prior-knowledge (h2c) peer. pingora keeps h1
/// and h2 connections in separate pools, and the group key keeps the peer's
/// hash apart from an HTTP/1.1 peer of the same address as well.
pub fn h2c_peer(peer: &mut pingora_core::upstreams::peer::HttpPeer) {
    peer.options.set_http_version(2, 2);
    // pingora's default is one stream per connection.
    peer.options.max_h2_streams = 100;
    peer.group_key = H2C_GROUP;
}

/// [`h2c_peer`]'s group key.
pub const H2C_GROUP: u64 = 2;

/// Maps a proxying error to what the client is told; `None` when the client is
/// gone and nothing can be sent.
pub fn classify_proxy_error(e: &Error) -> Option<ErrorKind> {
    use ErrorType::*;
    Some(match (e.esource(), e.etype()) {
        (_, HTTPStatus(503)) => ErrorKind::NoEndpoints,
        (_, ConnectTimedout) => ErrorKind::UpstreamTimeout,
        (_, ConnectRefused | ConnectNoRoute | ConnectError | BindError | SocketError) => {
            ErrorKind::UpstreamConnect
        }
        (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => ErrorKind::UpstreamTimeout,
        (ErrorSource::Upstream, _) => ErrorKind::UpstreamError,
        (
            ErrorSource::Downstream,
            ReadError | WriteError | ConnectionClosed | ReadTimedout | WriteTimedout,
        ) => return None,
        (ErrorSource::Downstream, _) => ErrorKind::BadRequest,
        _ => ErrorKind::Internal,
    })
}

/// `2xx`, `4xx`... for the requests metric.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

#[cfg(test)]
mod tests;
