//! Authorization: which peer identities a route admits.
//!
//! Patterns are exact strings or a single leading/trailing `*` wildcard
//! (`*.west.example`, `spiffe://west.example/*`), as in DESIGN.md; the
//! wildcard stands for whole DNS labels (a leading `*` is followed by `.`) or
//! whole path segments (a trailing `*` follows `/`).

use std::sync::Arc;

/// One allowed-identity pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityPattern {
    /// `*`: any verified peer.
    Any,
    /// Matches the identity exactly.
    Exact(String),
    /// `*<suffix>`: the identity ends with the suffix.
    Suffix(String),
    /// `<prefix>*`: the identity starts with the prefix.
    Prefix(String),
}

impl IdentityPattern {
    /// Parses a pattern; a `*` anywhere but at one end is refused.
    pub fn parse(raw: &str) -> Result<IdentityPattern, String> {
        if raw.is_empty() {
            return Err("empty identity pattern".into());
        }
        if raw == "*" {
            return Ok(IdentityPattern::Any);
        }
        let stars = raw.matches('*').count();
        if stars == 0 {
            return Ok(IdentityPattern::Exact(raw.to_string()));
        }
        if stars == 1 {
            // The wildcard must stand for whole labels or path segments:
            // `*west.example` would admit `evilwest.example`, and
            // `spiffe://west.example*` would admit `spiffe://west.example.evil/...`.
            if let Some(s) = raw.strip_prefix('*') {
                if !s.starts_with('.') {
                    return Err(format!(
                        "{raw:?}: a leading '*' must be followed by '.' (\"*.west.example\")"
                    ));
                }
                return Ok(IdentityPattern::Suffix(s.to_string()));
            }
            if let Some(p) = raw.strip_suffix('*') {
                if !p.ends_with('/') {
                    return Err(format!(
                        "{raw:?}: a trailing '*' must follow '/' (\"spiffe://west.example/*\")"
                    ));
                }
                return Ok(IdentityPattern::Prefix(p.to_string()));
            }
        }
        Err(format!(
            "{raw:?}: a wildcard '*' may only stand alone or at the start or end of the pattern"
        ))
    }

    /// Whether `identity` matches.
    pub fn matches(&self, identity: &str) -> bool {
        match self {
            IdentityPattern::Any => true,
            IdentityPattern::Exact(e) => e == identity,
            IdentityPattern::Suffix(s) => {
                identity.len() > s.len() && identity.ends_with(s.as_str())
            }
            IdentityPattern::Prefix(p) => {
                identity.len() > p.len() && identity.starts_with(p.as_str())
            }
        }
    }
}

/// The identities a route admits: a peer passes when every policy in the list
/// admits it (a traffic split whose Mappings differ is only open to peers all allow).
#[derive(Clone, Debug, Default)]
pub struct Authorization {
    policies: Vec<Arc<[IdentityPattern]>>,
}

impl Authorization {
    /// A single policy.
    pub fn new(patterns: Arc<[IdentityPattern]>) -> Self {
        Authorization {
            policies: vec![patterns],
        }
    }

    /// Adds a policy that must also admit the peer.
    pub fn and(&mut self, patterns: Arc<[IdentityPattern]>) {
        if !self
            .policies
            .iter()
            .any(|p| Arc::ptr_eq(p, &patterns) || **p == *patterns)
        {
            self.policies.push(patterns);
        }
    }

    /// Whether `identity` is admitted. No policies, or an empty one, admits nobody.
    pub fn allows(&self, identity: &str) -> bool {
        !self.policies.is_empty()
            && self
                .policies
                .iter()
                .all(|ps| ps.iter().any(|p| p.matches(identity)))
    }

    /// Why `identity` is or is not admitted, for `/explain`; agrees with
    /// [`Authorization::allows`]. `Ok`: the pattern of each policy that
    /// admitted it. `Err`: the patterns of the first policy that admits it
    /// not (empty when the route has no policy at all).
    pub fn explain(&self, identity: &str) -> Result<Vec<String>, Vec<String>> {
        if self.policies.is_empty() {
            return Err(Vec::new());
        }
        let mut admitted = Vec::with_capacity(self.policies.len());
        for ps in &self.policies {
            match ps.iter().find(|p| p.matches(identity)) {
                Some(p) => admitted.push(p.to_string()),
                None => return Err(ps.iter().map(IdentityPattern::to_string).collect()),
            }
        }
        Ok(admitted)
    }

    /// The patterns, for `/routes`.
    pub fn describe(&self) -> Vec<Vec<String>> {
        self.policies
            .iter()
            .map(|ps| ps.iter().map(IdentityPattern::to_string).collect())
            .collect()
    }
}

impl std::fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentityPattern::Any => f.write_str("*"),
            IdentityPattern::Exact(e) => f.write_str(e),
            IdentityPattern::Suffix(s) => write!(f, "*{s}"),
            IdentityPattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_agrees_with_allows_and_names_the_pattern() {
        let mut a = Authorization::new(pats(&["spiffe://west.example/*", "*.dns.example"]));
        a.and(pats(&["spiffe://west.example/ns/a/*"]));
        for id in [
            "spiffe://west.example/ns/a/sa/x",
            "spiffe://west.example/ns/b/sa/x",
            "x.dns.example",
            "spiffe://east.example/ns/a/sa/x",
        ] {
            assert_eq!(a.explain(id).is_ok(), a.allows(id), "{id}");
        }
        assert_eq!(
            a.explain("spiffe://west.example/ns/a/sa/x"),
            Ok(vec![
                "spiffe://west.example/*".to_string(),
                "spiffe://west.example/ns/a/*".to_string()
            ])
        );
        assert_eq!(
            a.explain("spiffe://west.example/ns/b/sa/x"),
            Err(vec!["spiffe://west.example/ns/a/*".to_string()])
        );
        assert_eq!(Authorization::default().explain("x"), Err(Vec::new()));
    }

    fn pats(raw: &[&str]) -> Arc<[IdentityPattern]> {
        raw.iter()
            .map(|r| IdentityPattern::parse(r).expect("valid pattern"))
            .collect()
    }

    #[test]
    fn patterns_match() {
        let west = IdentityPattern::parse("spiffe://west.example/*").expect("valid");
        assert!(west.matches("spiffe://west.example/ns/default/sa/peer"));
        assert!(!west.matches("spiffe://west.example.evil/ns/x"));
        assert!(
            !west.matches("spiffe://west.example/"),
            "empty remainder is not a match"
        );
        let dns = IdentityPattern::parse("*.west.example").expect("valid");
        assert!(dns.matches("peer.west.example"));
        assert!(!dns.matches("peerwest.example"));
        let exact = IdentityPattern::parse("a.b").expect("valid");
        assert!(exact.matches("a.b") && !exact.matches("a.bc"));
        assert!(IdentityPattern::parse("*")
            .expect("valid")
            .matches("anything"));
    }

    #[test]
    fn bad_patterns() {
        for bad in [
            "",
            "a*b",
            "**",
            "*a*",
            "spiffe://*/x",
            // A wildcard must end at a boundary: these would admit
            // `spiffe://west.example.evil/...` and `evilwest.example`.
            "spiffe://west.example*",
            "*west.example",
            "spiffe://west.example/ns*",
            "*-west.example",
        ] {
            assert!(IdentityPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn boundary_wildcards_are_accepted() {
        for good in [
            "spiffe://west.example/*",
            "*.west.example",
            "spiffe://west.example/ns/a/*",
        ] {
            assert!(IdentityPattern::parse(good).is_ok(), "{good}");
        }
        let west = IdentityPattern::parse("spiffe://west.example/*").expect("valid");
        assert!(!west.matches("spiffe://west.example.evil/ns/x"));
    }

    #[test]
    fn empty_denies_and_policies_intersect() {
        assert!(!Authorization::default().allows("x"));
        assert!(!Authorization::new(pats(&[])).allows("x"));
        let mut a = Authorization::new(pats(&["spiffe://west.example/*"]));
        assert!(a.allows("spiffe://west.example/ns/a/sa/b"));
        a.and(pats(&["spiffe://west.example/ns/a/*"]));
        assert!(a.allows("spiffe://west.example/ns/a/sa/b"));
        assert!(!a.allows("spiffe://west.example/ns/b/sa/b"));
    }
}
