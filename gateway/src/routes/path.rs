//! Request path normalisation, before route matching and upstream forwarding.
//!
//! A peer must not reach a route by spelling its path differently from how
//! the upstream will read it (`/public/../admin`, `/%61dmin`, `//admin`).
//! [`normalize_path`] therefore, on the path (never the query):
//! - decodes `%XX` of unreserved characters (RFC 3986 §2.3) and upper-cases
//!   the hex of the others (§6.2.2.1);
//! - refuses `%2F` and `%5C` (an encoded `/` or `\`, which servers split or
//!   not), `%00`, a raw `\` and malformed `%` escapes;
//! - merges repeated slashes;
//! - removes dot segments (§5.2.4), after decoding (`%2e%2e` is `..`).

use std::borrow::Cow;

/// Why a path is refused (answered `400 bad_request`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%2F` or `%5C`: a separator hidden from matching.
    #[error("encoded '/' or '\\' in the path")]
    EncodedSeparator,
    /// A raw `\`, which some servers read as `/`.
    #[error("'\\' in the path")]
    Backslash,
    /// `%00` (or a raw NUL).
    #[error("NUL in the path")]
    Nul,
    /// `%` not followed by two hex digits.
    #[error("malformed percent-encoding in the path")]
    BadEscape,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether the path is already in normal form (the common case: no copy).
fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return true;
    };
    if path.bytes().any(|b| matches!(b, b'%' | b'\\' | 0)) {
        return false;
    }
    let mut segs = rest.split('/').peekable();
    while let Some(seg) = segs.next() {
        if seg == "." || seg == ".." || (seg.is_empty() && segs.peek().is_some()) {
            return false;
        }
    }
    true
}

/// The normal form of a request path (see the module docs). A path that does
/// not start with `/` (`*`) is returned as is.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let mut decoded = Vec::with_capacity(path.len());
    let mut bytes = path.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (bytes.next(), bytes.next()) else {
                    return Err(PathError::BadEscape);
                };
                let (Some(hv), Some(lv)) = (hex(h), hex(l)) else {
                    return Err(PathError::BadEscape);
                };
                match hv << 4 | lv {
                    0 => return Err(PathError::Nul),
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    v if unreserved(v) => decoded.push(v),
                    _ => decoded.extend([b'%', h.to_ascii_uppercase(), l.to_ascii_uppercase()]),
                }
            }
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            _ => decoded.push(b),
        }
    }
    // Only ASCII was decoded into ASCII: still UTF-8.
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::BadEscape)?;
    let Some(rest) = decoded.strip_prefix('/') else {
        return Ok(Cow::Owned(decoded));
    };
    Ok(Cow::Owned(remove_dot_segments(rest)))
}

/// RFC 3986 §5.2.4 on the segments after the leading `/`, merging empty ones.
fn remove_dot_segments(rest: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = false;
    let count = rest.split('/').count();
    for (i, seg) in rest.split('/').enumerate() {
        let last = i + 1 == count;
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
        trailing = last && matches!(seg, "" | "." | "..");
    }
    let mut path = String::with_capacity(rest.len() + 1);
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() || trailing {
        path.push('/');
    }
    path
}

#[cfg(test)]
mod tests;
