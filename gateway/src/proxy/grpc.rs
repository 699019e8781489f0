//! The gRPC stage of the request path: recognising a gRPC caller, its
//! deadline (`grpc-timeout`), and the gateway's own errors as gRPC statuses.

use std::time::Duration;

use http::header::CONTENT_TYPE;
use pingora_http::{RequestHeader, ResponseHeader};

use crate::metrics::ErrorKind;

/// Whether the caller speaks gRPC: `content-type: application/grpc[+proto|;...]`.
pub fn is_grpc(req: &RequestHeader) -> bool {
    req.headers
        .get(CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .is_some_and(|v| {
            v.len() >= 16
                && v[..16].eq_ignore_ascii_case(b"application/grpc")
                && matches!(v.get(16), None | Some(b'+' | b';'))
        })
}

/// The caller's deadline from `grpc-timeout` (`1*8DIGIT unit`, unit one of
/// `H M S m u n`); `None` when absent or malformed (the gRPC spec says to
/// treat a malformed value as absent).
pub fn timeout(req: &RequestHeader) -> Option<Duration> {
    let v = req.headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n.checked_mul(3600)?),
        b"M" => Duration::from_secs(n.checked_mul(60)?),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status code a gateway error is answered with. Follows gRPC's
/// "HTTP to gRPC status code mapping" except where the gateway knows more
/// (a timeout is `DEADLINE_EXCEEDED`, not `UNAVAILABLE`).
pub fn status(kind: ErrorKind) -> u8 {
    match kind {
        // UNIMPLEMENTED: gRPC maps 404 so; unknown and not exported look the same.
        ErrorKind::NoRoute | ErrorKind::GrpcNotH2 | ErrorKind::MethodNotAllowed => 12,
        // PERMISSION_DENIED
        ErrorKind::Forbidden | ErrorKind::NotInCluster | ErrorKind::UpgradeRefused => 7,
        // UNAVAILABLE: safe to retry elsewhere.
        ErrorKind::NoEndpoints | ErrorKind::UpstreamConnect | ErrorKind::UpstreamError => 14,
        // DEADLINE_EXCEEDED
        ErrorKind::UpstreamTimeout => 4,
        // RESOURCE_EXHAUSTED
        ErrorKind::HeadersTooLarge => 8,
        // INTERNAL
        ErrorKind::BadRequest
        | ErrorKind::Loop
        | ErrorKind::Internal
        | ErrorKind::InvalidBackend => 13,
    }
}

/// A trailers-only gRPC answer: HTTP 200 with `grpc-status` and
/// `grpc-message` in the (only) header block.
pub fn error_response(kind: ErrorKind, message: &[u8]) -> Option<ResponseHeader> {
    let mut resp = ResponseHeader::build(200, Some(4)).ok()?;
    resp.insert_header(CONTENT_TYPE, "application/grpc").ok()?;
    resp.insert_header("grpc-status", status(kind).to_string())
        .ok()?;
    resp.insert_header("grpc-message", percent_encode(message.trim_ascii_end()))
        .ok()?;
    resp.insert_header("x-isthmus-error", kind.label()).ok()?;
    Some(resp)
}

/// `grpc-message` is percent-encoded: printable ASCII except `%` as is.
fn percent_encode(msg: &[u8]) -> String {
    let mut out = String::with_capacity(msg.len());
    for &b in msg {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, value: &str) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/svc/Method", None).expect("request");
        r.insert_header(name.to_string(), value).expect("header");
        r
    }

    #[test]
    fn grpc_content_types() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;charset=utf-8",
        ] {
            assert!(is_grpc(&req("content-type", ct)), "{ct}");
        }
        for ct in [
            "application/grpc-web",
            "application/json",
            "application/grp",
        ] {
            assert!(!is_grpc(&req("content-type", ct)), "{ct}");
        }
    }

    #[test]
    fn grpc_timeouts() {
        let t = |v: &str| timeout(&req("grpc-timeout", v));
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    #[test]
    fn errors_are_trailers_only_statuses() {
        let r = error_response(ErrorKind::UpstreamTimeout, b"upstream timeout\n").expect("resp");
        assert_eq!(r.status.as_u16(), 200);
        assert_eq!(r.headers["grpc-status"], "4");
        assert_eq!(r.headers["grpc-message"], "upstream timeout");
        assert_eq!(percent_encode("é 100%".as_bytes()), "%C3%A9 100%25");
        assert_eq!(status(ErrorKind::NoEndpoints), 14);
        assert_eq!(status(ErrorKind::Forbidden), 7);
        assert_eq!(status(ErrorKind::GrpcNotH2), 12);
    }
}
