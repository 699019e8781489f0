//! The Gateway API route source (`gateway.networking.k8s.io/v1`): `HTTPRoute`,
//! `Gateway` and `GatewayClass` read as raw JSON into their own serde structs
//! (only the fields Isthmus uses), and each HTTPRoute validated into rules in
//! the index's terms. Which parents accept a route and what its backends
//! resolve to depend on other objects: that is the index's part
//! (`index/httproute.rs`).

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::routes::HeaderMatch;

/// The API group.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// The `controllerName` of a GatewayClass whose Gateways are this gateway.
pub const CONTROLLER_NAME: &str = "isthmus.dev/gateway";
/// Most backendRefs weights may be (the spec's maximum).
pub const MAX_WEIGHT: u32 = 1_000_000;

/// An `HTTPRoute`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    /// Standard metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec, decoded per object by [`HttpRoute::convert`].
    #[serde(default)]
    pub spec: Value,
    /// The status (compared before writing).
    #[serde(default)]
    pub status: Option<Value>,
}

/// A `Gateway` (only what route attachment needs).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Gateway {
    /// Standard metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec.
    #[serde(default)]
    pub spec: GatewaySpec,
}

/// `Gateway.spec`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The GatewayClass.
    #[serde(default)]
    pub gateway_class_name: String,
    /// Listeners.
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

/// One Gateway listener.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Section name.
    #[serde(default)]
    pub name: String,
    /// Hostname (exact or `*.suffix`), if any.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Port.
    #[serde(default)]
    pub port: Option<u16>,
    /// `allowedRoutes.namespaces.from`: `Same` (default) or `All`
    /// (`Selector` is not supported: no route attaches).
    #[serde(default)]
    pub allowed_routes: Option<Value>,
}

impl Listener {
    /// `allowedRoutes.namespaces.from`, default `Same`.
    pub fn allowed_from(&self) -> &str {
        self.allowed_routes
            .as_ref()
            .and_then(|a| a["namespaces"]["from"].as_str())
            .unwrap_or("Same")
    }
}

/// A `GatewayClass` (cluster-scoped).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClass {
    /// Standard metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec.
    #[serde(default)]
    pub spec: Value,
}

impl GatewayClass {
    /// Whether this class is Isthmus's.
    pub fn is_ours(&self) -> bool {
        self.spec["controllerName"].as_str() == Some(CONTROLLER_NAME)
    }
}

/// A `ReferenceGrant` (`gateway.networking.k8s.io/v1beta1`): in its own
/// namespace, lets objects of the `from` kinds and namespaces refer to its
/// `to` objects. Isthmus reads it for HTTPRoute backendRefs and for Mappings
/// whose `service` is in another namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceGrant {
    /// Standard metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec.
    #[serde(default)]
    pub spec: ReferenceGrantSpec,
}

/// `ReferenceGrant.spec`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceGrantSpec {
    /// Who may refer: `group`, `kind`, `namespace`.
    #[serde(default)]
    pub from: Vec<GrantFrom>,
    /// What they may refer to: `group`, `kind`, and an optional `name`.
    #[serde(default)]
    pub to: Vec<GrantTo>,
}

/// `ReferenceGrant.spec.from[]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GrantFrom {
    /// API group of the referring kind (`isthmus.dev`, `gateway.networking.k8s.io`).
    #[serde(default)]
    pub group: String,
    /// The referring kind (`Mapping`, `HTTPRoute`).
    #[serde(default)]
    pub kind: String,
    /// Namespace of the referring objects.
    #[serde(default)]
    pub namespace: String,
}

/// `ReferenceGrant.spec.to[]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GrantTo {
    /// API group of the referent (`""`: core, for Service).
    #[serde(default)]
    pub group: String,
    /// The referent kind (`Service`).
    #[serde(default)]
    pub kind: String,
    /// One object only; every object of the kind when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A `parentRef`, as given (echoed in status) and parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct ParentRef {
    /// The ref as written, for `status.parents[].parentRef`.
    pub raw: Value,
    /// `Gateway` or `Service` (anything else is unsupported).
    pub kind: ParentKind,
    /// Namespace (default: the route's).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `sectionName`.
    pub section: Option<String>,
    /// `port`.
    pub port: Option<u16>,
}

/// What a parentRef points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParentKind {
    /// `gateway.networking.k8s.io Gateway`.
    Gateway,
    /// Core `Service` (GAMMA).
    Service,
    /// Something else: `group/kind`.
    Other(String),
}

/// A backendRef, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendRef {
    /// `Service` when None; else `group/kind` (InvalidKind).
    pub other_kind: Option<String>,
    /// Namespace (default: the route's).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Port (required for a Service).
    pub port: Option<u16>,
    /// Weight, 0..=1,000,000 (default 1).
    pub weight: u32,
    /// Backend-level filters (the same kinds as rule filters).
    pub filters: Filters,
}

/// Path match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// `Exact`.
    Exact(String),
    /// `PathPrefix` (element-wise; stored without trailing `/` unless `/`).
    Prefix(String),
}

/// One `matches[]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Match {
    /// Path (default `PathPrefix /`).
    pub path: PathMatch,
    /// Exact headers, lower-case names, sorted.
    pub headers: Vec<HeaderMatch>,
    /// Exact query parameters, sorted.
    pub query: Vec<HeaderMatch>,
    /// Method, upper-case.
    pub method: Option<String>,
}

/// `URLRewrite.path` / `RequestRedirect.path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathModifier {
    /// `ReplaceFullPath`.
    Full(String),
    /// `ReplacePrefixMatch`.
    Prefix(String),
}

/// `RequestRedirect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// Hostname.
    pub hostname: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// Path.
    pub path: Option<PathModifier>,
    /// 301 or 302 (default 302).
    pub status: u16,
}

/// Header edits of one direction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderEdits {
    /// `set`: replace.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// `add`: append.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// `remove`.
    pub remove: Vec<HeaderName>,
}

/// A rule's (or backend's) filters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filters {
    /// `RequestHeaderModifier`.
    pub request: HeaderEdits,
    /// `ResponseHeaderModifier`.
    pub response: HeaderEdits,
    /// `URLRewrite`: hostname and path.
    pub rewrite_host: Option<String>,
    /// `URLRewrite.path`.
    pub rewrite_path: Option<PathModifier>,
    /// `RequestRedirect`.
    pub redirect: Option<Redirect>,
}

/// One `rules[]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Matches (at least one: the default `PathPrefix /`).
    pub matches: Vec<Match>,
    /// Filters.
    pub filters: Filters,
    /// Backends.
    pub backends: Vec<BackendRef>,
    /// `timeouts.request`.
    pub timeout: Option<Duration>,
}

/// An HTTPRoute in the index's terms.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteSpec {
    /// Parents (`parentRefs`).
    pub parents: Vec<ParentRef>,
    /// Hostnames (empty: any).
    pub hostnames: Vec<String>,
    /// Rules: validated, or why not (the route is then not accepted).
    pub rules: Result<Vec<Rule>, String>,
    /// `metadata.creationTimestamp` in seconds (precedence: oldest first).
    pub created: i64,
}

impl HttpRoute {
    /// Validates and converts. Parents are read even when the rules are
    /// invalid, so the status can say why on each of them.
    pub fn convert(&self, namespace: &str) -> Result<RouteSpec, String> {
        let spec = &self.spec;
        let mut parents = Vec::new();
        for (i, p) in array(&spec["parentRefs"]).iter().enumerate() {
            let name = p["name"]
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("spec.parentRefs[{i}].name is required"))?;
            let group = p["group"].as_str().unwrap_or(GROUP);
            let kind = p["kind"].as_str().unwrap_or("Gateway");
            let kind = match (group, kind) {
                (GROUP, "Gateway") => ParentKind::Gateway,
                ("" | "core", "Service") => ParentKind::Service,
                (g, k) => ParentKind::Other(format!("{g}/{k}")),
            };
            parents.push(ParentRef {
                raw: p.clone(),
                kind,
                namespace: p["namespace"].as_str().unwrap_or(namespace).to_string(),
                name: name.to_string(),
                section: p["sectionName"].as_str().map(str::to_string),
                port: port(&p["port"]).map_err(|e| format!("spec.parentRefs[{i}].port: {e}"))?,
            });
        }
        let hostnames = array(&spec["hostnames"])
            .iter()
            .enumerate()
            .map(|(i, h)| {
                h.as_str()
                    .filter(|s| !s.is_empty())
                    .map(|s| s.to_ascii_lowercase())
                    .ok_or_else(|| format!("spec.hostnames[{i}] must be a hostname"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rules = array(&spec["rules"])
            .iter()
            .enumerate()
            .map(|(i, r)| rule(r, namespace).map_err(|e| format!("spec.rules[{i}].{e}")))
            .collect::<Result<Vec<_>, _>>();
        let created = self
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(0);
        Ok(RouteSpec {
            parents,
            hostnames,
            rules,
            created,
        })
    }
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn port(v: &Value) -> Result<Option<u16>, String> {
    match v {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| format!("{v} is not a port")),
    }
}

fn rule(r: &Value, namespace: &str) -> Result<Rule, String> {
    let mut matches = array(&r["matches"])
        .iter()
        .enumerate()
        .map(|(i, m)| route_match(m).map_err(|e| format!("matches[{i}].{e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if matches.is_empty() {
        matches.push(Match {
            path: PathMatch::Prefix("/".into()),
            headers: Vec::new(),
            query: Vec::new(),
            method: None,
        });
    }
    let rule_filters = filters(&r["filters"]).map_err(|e| format!("filters{e}"))?;
    let mut backends = Vec::new();
    for (i, b) in array(&r["backendRefs"]).iter().enumerate() {
        let at = |e: String| format!("backendRefs[{i}].{e}");
        let group = b["group"].as_str().unwrap_or("");
        let kind = b["kind"].as_str().unwrap_or("Service");
        let weight = match &b["weight"] {
            Value::Null => 1,
            w => w
                .as_u64()
                .filter(|w| *w <= u64::from(MAX_WEIGHT))
                .map(|w| w as u32)
                .ok_or_else(|| at(format!("weight {w} must be 0..{MAX_WEIGHT}")))?,
        };
        backends.push(BackendRef {
            other_kind: (!matches!((group, kind), ("" | "core", "Service")))
                .then(|| format!("{group}/{kind}")),
            namespace: b["namespace"].as_str().unwrap_or(namespace).to_string(),
            name: b["name"]
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| at("name is required".into()))?
                .to_string(),
            port: port(&b["port"]).map_err(|e| at(format!("port: {e}")))?,
            weight,
            filters: filters(&b["filters"]).map_err(|e| at(format!("filters{e}")))?,
        });
    }
    let timeout = match r["timeouts"]["request"].as_str() {
        None => None,
        Some(d) => Some(duration(d).map_err(|e| format!("timeouts.request: {e}"))?),
    };
    Ok(Rule {
        matches,
        filters: rule_filters,
        backends,
        timeout,
    })
}

fn route_match(m: &Value) -> Result<Match, String> {
    let path = match &m["path"] {
        Value::Null => PathMatch::Prefix("/".into()),
        p => {
            let value = p["value"].as_str().unwrap_or("/");
            if !value.starts_with('/') {
                return Err(format!("path.value {value:?} must start with '/'"));
            }
            match p["type"].as_str().unwrap_or("PathPrefix") {
                "Exact" => PathMatch::Exact(value.to_string()),
                "PathPrefix" => {
                    let v = value.trim_end_matches('/');
                    PathMatch::Prefix(if v.is_empty() { "/" } else { v }.to_string())
                }
                other => return Err(format!("path.type {other:?} is not supported")),
            }
        }
    };
    let exact_pairs = |field: &str, lower: bool| -> Result<Vec<HeaderMatch>, String> {
        let mut out = Vec::new();
        for (i, h) in array(&m[field]).iter().enumerate() {
            let ty = h["type"].as_str().unwrap_or("Exact");
            if ty != "Exact" {
                return Err(format!("{field}[{i}].type {ty:?} is not supported (Exact)"));
            }
            let name = h["name"]
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("{field}[{i}].name is required"))?;
            let name = if lower {
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("{field}[{i}].name {name:?} is not a header name"))?
                    .as_str()
                    .to_string()
            } else {
                name.to_string()
            };
            out.push(HeaderMatch {
                name,
                value: h["value"].as_str().unwrap_or_default().to_string(),
            });
        }
        out.sort();
        // The first of repeated names counts (the spec: later ones are ignored).
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
    };
    let method = match m["method"].as_str() {
        None => None,
        Some(x) if !x.is_empty() && x.bytes().all(|b| b.is_ascii_alphabetic()) => {
            Some(x.to_ascii_uppercase())
        }
        Some(x) => return Err(format!("method {x:?} is not an HTTP method")),
    };
    Ok(Match {
        path,
        headers: exact_pairs("headers", true)?,
        query: exact_pairs("queryParams", false)?,
        method,
    })
}

fn header_edits(v: &Value) -> Result<HeaderEdits, String> {
    let pairs = |field: &str| -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        array(&v[field])
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let name = h["name"].as_str().unwrap_or_default();
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("{field}[{i}].name {name:?} is not a header name"))?;
                let value = HeaderValue::from_str(h["value"].as_str().unwrap_or_default())
                    .map_err(|_| format!("{field}[{i}].value is not a header value"))?;
                Ok((name, value))
            })
            .collect()
    };
    let remove = array(&v["remove"])
        .iter()
        .map(|n| {
            let n = n.as_str().unwrap_or_default();
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| format!("remove: {n:?} is not a header name"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HeaderEdits {
        set: pairs("set")?,
        add: pairs("add")?,
        remove,
    })
}

fn path_modifier(v: &Value) -> Result<Option<PathModifier>, String> {
    if v.is_null() {
        return Ok(None);
    }
    let check = |p: &str| {
        if p.starts_with('/') {
            Ok(p.to_string())
        } else {
            Err(format!("path {p:?} must start with '/'"))
        }
    };
    match v["type"].as_str() {
        Some("ReplaceFullPath") => Ok(Some(PathModifier::Full(check(
            v["replaceFullPath"].as_str().unwrap_or("/"),
        )?))),
        Some("ReplacePrefixMatch") => Ok(Some(PathModifier::Prefix(check(
            v["replacePrefixMatch"].as_str().unwrap_or("/"),
        )?))),
        other => Err(format!("path.type {other:?} is not supported")),
    }
}

fn filters(v: &Value) -> Result<Filters, String> {
    let mut f = Filters::default();
    for (i, x) in array(v).iter().enumerate() {
        let at = |e: String| format!("[{i}].{e}");
        match x["type"].as_str().unwrap_or_default() {
            "RequestHeaderModifier" => {
                f.request = header_edits(&x["requestHeaderModifier"]).map_err(at)?
            }
            "ResponseHeaderModifier" => {
                f.response = header_edits(&x["responseHeaderModifier"]).map_err(at)?
            }
            "URLRewrite" => {
                let u = &x["urlRewrite"];
                f.rewrite_host = u["hostname"].as_str().map(str::to_string);
                f.rewrite_path = path_modifier(&u["path"]).map_err(at)?;
            }
            "RequestRedirect" => {
                let r = &x["requestRedirect"];
                let status = match r["statusCode"].as_u64() {
                    None => 302,
                    Some(c @ (301 | 302)) => c as u16,
                    Some(c) => {
                        return Err(at(format!("statusCode {c} is not supported (301, 302)")))
                    }
                };
                let scheme = r["scheme"].as_str().map(str::to_string);
                if scheme
                    .as_deref()
                    .is_some_and(|s| s != "http" && s != "https")
                {
                    return Err(at("scheme must be http or https".into()));
                }
                f.redirect = Some(Redirect {
                    scheme,
                    hostname: r["hostname"].as_str().map(str::to_string),
                    port: port(&r["port"]).map_err(|e| at(format!("port: {e}")))?,
                    path: path_modifier(&r["path"]).map_err(at)?,
                    status,
                });
            }
            other => return Err(at(format!("type {other:?} is not supported"))),
        }
    }
    if f.redirect.is_some() && (f.rewrite_host.is_some() || f.rewrite_path.is_some()) {
        return Err(": RequestRedirect and URLRewrite cannot both be set".into());
    }
    Ok(f)
}

/// A Gateway API duration (`1h2m3s4ms`, units h, m, s, ms).
fn duration(raw: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = raw;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{raw:?} is not a duration"))?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(n), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(n * 3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(n * 60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(n), 1)
        } else {
            return Err(format!("{raw:?} is not a duration (h, m, s, ms)"));
        };
        total += unit;
        rest = &rest[len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(duration("1m500ms").unwrap(), Duration::from_millis(60_500));
        assert!(duration("5x").is_err());
    }

    #[test]
    fn prefix_loses_its_trailing_slash_and_defaults_apply() {
        let r: HttpRoute = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "r", "namespace": "t"},
            "spec": {
                "parentRefs": [{"name": "gw"}],
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/foo/"}}],
                           "backendRefs": [{"name": "svc", "port": 80}]}]
            }
        }))
        .unwrap();
        let s = r.convert("t").unwrap();
        assert_eq!(s.parents[0].kind, ParentKind::Gateway);
        let rules = s.rules.unwrap();
        assert_eq!(rules[0].matches[0].path, PathMatch::Prefix("/foo".into()));
        assert_eq!(rules[0].backends[0].weight, 1);
    }
}
