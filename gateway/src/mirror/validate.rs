//! Validation of names, labels and ports that arrive from a peer cluster.
//!
//! A remote cluster is another trust domain: everything it says is checked
//! against Kubernetes' own rules before anything is written here, so a bad or
//! hostile remote object is refused alone instead of failing a write (or
//! writing something the local API server would reject half-way).

/// A DNS-1123 label: 1-63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1-63 characters".into());
    }
    let b = s.as_bytes();
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-';
    if !b.iter().all(|c| ok(*c)) {
        return Err("must hold only lower-case letters, digits and '-'".into());
    }
    if b[0] == b'-' || b[b.len() - 1] == b'-' {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// A DNS-1035 label (Service names): a DNS-1123 label that starts with a letter.
pub fn service_name(s: &str) -> Result<(), String> {
    dns_label(s)?;
    if !s.as_bytes()[0].is_ascii_lowercase() {
        return Err("must start with a lower-case letter".into());
    }
    Ok(())
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err("must be 1-253 characters".into());
    }
    s.split('.').try_for_each(dns_label)
}

/// A qualified name (label or annotation key): `[prefix/]name`.
pub fn label_key(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        dns_subdomain(p).map_err(|e| format!("prefix {p:?}: {e}"))?;
    }
    if name.is_empty() {
        return Err("name part is empty".into());
    }
    label_value(name)
}

/// A label value: empty, or 1-63 of `[A-Za-z0-9-_.]`, alphanumeric at both ends.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    if s.len() > 63 {
        return Err("must be at most 63 characters".into());
    }
    let b = s.as_bytes();
    let ok = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    if !b.iter().all(|c| ok(*c)) {
        return Err("must hold only letters, digits, '-', '_' and '.'".into());
    }
    if !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// A Service port name: an IANA service name (1-15 of `[a-z0-9-]`, a letter somewhere).
pub fn port_name(s: &str) -> Result<(), String> {
    if s.len() > 15 {
        return Err("must be at most 15 characters".into());
    }
    dns_label(s)?;
    if s.contains("--") || !s.bytes().any(|c| c.is_ascii_lowercase()) {
        return Err("must hold a letter and no '--'".into());
    }
    Ok(())
}

/// Total size the annotations of one object may take (Kubernetes' limit).
pub const MAX_ANNOTATION_BYTES: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns_label("podinfo").is_ok());
        assert!(dns_label("Podinfo").is_err());
        assert!(dns_label("-a").is_err());
        assert!(dns_label(&"a".repeat(64)).is_err());
        assert!(service_name("1abc").is_err());
        assert!(dns_subdomain("gw.east.example").is_ok());
        assert!(dns_subdomain("gw..east").is_err());
        assert!(label_key("app.kubernetes.io/name").is_ok());
        assert!(label_key("bad key").is_err());
        assert!(label_key("/x").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_3").is_ok());
        assert!(label_value("a\nb").is_err());
        assert!(port_name("http").is_ok());
        assert!(port_name("8080").is_err());
        assert!(port_name("a-very-long-port-name").is_err());
    }
}
