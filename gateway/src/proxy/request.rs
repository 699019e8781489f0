//! Request-path decisions as plain functions: authority extraction, limits,
//! loop detection, upstream rewrites and error classification.

use http::header::{FORWARDED, HOST, TRANSFER_ENCODING};
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::RequestHeader;

use super::RequestLimits;
use crate::metrics::ErrorKind;
use crate::routes::{Authority, BackendSettings};

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
    let parse = |raw: &[u8]| Authority::parse(raw).map_err(|_| ErrorKind::BadRequest);
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
    let path = match crate::routes::normalize_path(uri.path()) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(None),
        Ok(std::borrow::Cow::Owned(p)) => p,
        Err(_) => return Err(ErrorKind::BadRequest),
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

/// Rewrites the matched prefix, applies header edits, and sends origin-form.
pub fn rewrite_upstream(
    upstream: &mut RequestHeader,
    prefix: &str,
    settings: &BackendSettings,
) -> pingora_error::Result<()> {
    let path = upstream.uri.path();
    let new_path = match &settings.rewrite {
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
    };
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
    Ok(())
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
