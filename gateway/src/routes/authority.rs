//! Request authority: parse and normalise Host / `:authority`.
//!
//! Lower-cases, strips one trailing dot, validates DNS characters, splits the port.
//! Userinfo, IP literals and anything that is not a DNS name are refused: routes
//! are only ever named by DNS names.

use std::fmt;

/// A normalised request authority: a lower-case DNS name and an optional port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Authority {
    host: String,
    port: Option<u16>,
}

/// Why an authority was refused (the client gets a 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// No Host header and no authority in the URI.
    #[error("missing Host")]
    Missing,
    /// The value is not valid UTF-8 / visible ASCII.
    #[error("Host is not visible ASCII")]
    NotAscii,
    /// `user@host` forms are refused.
    #[error("Host carries userinfo")]
    Userinfo,
    /// IP literals are never routes.
    #[error("Host is an IP address")]
    IpLiteral,
    /// The port is not a number in 1..=65535.
    #[error("Host has an invalid port")]
    BadPort,
    /// The name is not a valid DNS name.
    #[error("Host is not a DNS name")]
    BadName,
}

impl Authority {
    /// Parses a Host header value or URI authority.
    pub fn parse(raw: &[u8]) -> Result<Authority, AuthorityError> {
        if raw.is_empty() {
            return Err(AuthorityError::Missing);
        }
        if !raw.iter().all(|b| b.is_ascii_graphic()) {
            return Err(AuthorityError::NotAscii);
        }
        if raw.contains(&b'@') {
            return Err(AuthorityError::Userinfo);
        }
        if raw[0] == b'[' {
            return Err(AuthorityError::IpLiteral);
        }
        let (name, port) = match raw.iter().rposition(|b| *b == b':') {
            Some(i) => (&raw[..i], Some(parse_port(&raw[i + 1..])?)),
            None => (raw, None),
        };
        let name = name.strip_suffix(b".").unwrap_or(name);
        if name.is_empty() || name.len() > 253 {
            return Err(AuthorityError::BadName);
        }
        let mut all_numeric_labels = true;
        for label in name.split(|b| *b == b'.') {
            if label.is_empty()
                || label.len() > 63
                || label[0] == b'-'
                || label[label.len() - 1] == b'-'
                || !label
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            {
                return Err(AuthorityError::BadName);
            }
            all_numeric_labels &= label.iter().all(u8::is_ascii_digit);
        }
        if all_numeric_labels {
            return Err(AuthorityError::IpLiteral);
        }
        // Checked above: only ASCII alphanumerics, '-' and '.'.
        let host = String::from_utf8_lossy(name).to_ascii_lowercase();
        Ok(Authority { host, port })
    }

    /// Builds an authority from parts already known to be valid (routes, tests).
    pub fn new(host: &str, port: Option<u16>) -> Result<Authority, AuthorityError> {
        match port {
            Some(p) => Authority::parse(format!("{host}:{p}").as_bytes()),
            None => Authority::parse(host.as_bytes()),
        }
    }

    /// The lower-case host name, without trailing dot.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, if the client gave one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

fn parse_port(raw: &[u8]) -> Result<u16, AuthorityError> {
    if raw.is_empty() || raw.len() > 5 || !raw.iter().all(u8::is_ascii_digit) {
        return Err(AuthorityError::BadPort);
    }
    let port = raw
        .iter()
        .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(AuthorityError::BadPort),
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{}", self.host, p),
            None => f.write_str(&self.host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (String, Option<u16>) {
        let a = Authority::parse(raw.as_bytes()).unwrap_or_else(|e| panic!("{raw}: {e}"));
        (a.host().to_string(), a.port())
    }

    #[test]
    fn normalises() {
        assert_eq!(
            ok("PodInfo.Test.svc.cluster.local.:9898"),
            ("podinfo.test.svc.cluster.local".into(), Some(9898))
        );
        assert_eq!(
            ok("podinfo.test.svc.cluster.local"),
            ("podinfo.test.svc.cluster.local".into(), None)
        );
        assert_eq!(ok("localhost"), ("localhost".into(), None));
    }

    #[test]
    fn refuses() {
        use AuthorityError::*;
        let cases: &[(&[u8], AuthorityError)] = &[
            (b"", Missing),
            (b"user@podinfo.test.svc.cluster.local", Userinfo),
            (b"127.0.0.1:4143", IpLiteral),
            (b"127.0.0.1", IpLiteral),
            (b"[::1]:80", IpLiteral),
            (b"podinfo:0", BadPort),
            (b"podinfo:65536", BadPort),
            (b"podinfo:", BadPort),
            (b"podinfo:12a", BadPort),
            (b"pod info", NotAscii),
            (b"pod\xffinfo", NotAscii),
            (b"podinfo..test", BadName),
            (b"-podinfo.test", BadName),
            (b"pod_info.test", BadName),
            (b".", BadName),
            (b"a:b:80", BadName),
        ];
        for (raw, want) in cases {
            assert_eq!(
                Authority::parse(raw).as_ref().map_err(Clone::clone),
                Err(want.clone()),
                "{}",
                raw.escape_ascii()
            );
        }
    }

    #[test]
    fn displays_round_trip() {
        let a = Authority::parse(b"A.b.C:80").expect("valid");
        assert_eq!(a.to_string(), "a.b.c:80");
        assert_eq!(
            Authority::parse(a.to_string().as_bytes()).expect("valid"),
            a
        );
    }
}
