//! Label and field selectors, as in `?labelSelector=app=web,tier!=db`.
//!
//! Supports equality (`k=v`, `k==v`), inequality (`k!=v`), existence (`k`, `!k`)
//! and the set forms (`k in (a,b)`, `k notin (a,b)`); terms are ANDed.

use serde_json::Value;

/// One term of a selector.
#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Selector(Vec<Requirement>);

impl Selector {
    /// Parses selector text; an error names the offending term.
    pub(crate) fn parse(text: &str) -> Result<Selector, String> {
        split_terms(text)
            .into_iter()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(parse_term)
            .collect::<Result<Vec<_>, _>>()
            .map(Selector)
    }

    /// True for the empty selector.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every term holds, looking keys up with `get`.
    pub(crate) fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|req| match req {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        })
    }

    /// Matches against `metadata.labels` of an object.
    pub(crate) fn matches_labels(&self, obj: &Value) -> bool {
        self.is_empty()
            || self.matches(|k| {
                obj.pointer("/metadata/labels")
                    .and_then(|l| l.get(k)?.as_str())
            })
    }

    /// Matches against dotted field paths of an object (`metadata.name`, `spec.type`).
    pub(crate) fn matches_fields(&self, obj: &Value) -> bool {
        self.is_empty()
            || self.matches(|path| {
                path.split('.')
                    .try_fold(obj, |v, seg| v.get(seg))
                    .and_then(Value::as_str)
            })
    }
}

/// Splits on commas that are not inside `( )`.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn parse_term(term: &str) -> Result<Requirement, String> {
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        if k.is_empty() || k.contains(|c: char| c.is_whitespace() || "=!()".contains(c)) {
            Err(format!("invalid selector term {term:?}"))
        } else {
            Ok(k.to_string())
        }
    };
    if let Some(rest) = term.strip_prefix('!') {
        return Ok(Requirement::NotExists(key(rest)?));
    }
    if let Some((k, set)) = term.split_once(" notin ") {
        return Ok(Requirement::NotIn(key(k)?, parse_set(term, set)?));
    }
    if let Some((k, set)) = term.split_once(" in ") {
        return Ok(Requirement::In(key(k)?, parse_set(term, set)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotEq(key(k)?, v.trim().to_string()));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Eq(key(k)?, v.trim().to_string()));
    }
    Ok(Requirement::Exists(key(term)?))
}

fn parse_set(term: &str, set: &str) -> Result<Vec<String>, String> {
    let inner = set
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("invalid set in selector term {term:?}"))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
}
