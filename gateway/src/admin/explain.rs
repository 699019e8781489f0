//! `GET /explain?host=&path=&method=&identity=`: what the gateway would do
//! with such a request now, step by step, and which rule refuses it.
//!
//! Every decision is made by the functions the proxy itself calls
//! ([`crate::proxy::request`]: authority parse, path normalisation, route
//! lookup, authorization, backend choice), on the same published table, so
//! the answer cannot drift from the real one. Only the random parts are
//! described instead of drawn: the weighted backend choice (each backend's
//! share) and, for least-request backends, the endpoint ("one of"); a
//! round-robin backend names the endpoint that is next, read without moving
//! the round robin on.
//!
//! Unlike a client, the operator is told *why* a host has no route: unknown,
//! or a Service that exists but is not exported.

use http::{HeaderMap, Method};
use serde_json::{json, Value};

use crate::metrics::ErrorKind;
use crate::proxy::request;
use crate::routes::{
    describe_route, Authority, EndpointPreview, HostMatch, PortMatch, Route, RouteTable,
};

/// What `/explain` needs besides the table.
#[derive(Clone, Debug)]
pub struct ExplainConfig {
    /// Cluster DNS domain (to recognise `<name>.<ns>.svc.<domain>`).
    pub cluster_domain: String,
    /// The export label (named when a Service is not exported).
    pub export_label: String,
}

/// The request to explain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// Host / `:authority` as a client would send it.
    pub host: String,
    /// Request path (default `/`).
    pub path: String,
    /// Method (default `GET`).
    pub method: Method,
    /// The peer identity; empty: a connection without one.
    pub identity: String,
}

impl Question {
    /// Reads the query parameters; `Err` names what is missing or invalid.
    pub fn from_query(pairs: &[(String, String)]) -> Result<Question, String> {
        let get = |name| super::query::get(pairs, name);
        let host = get("host").ok_or("missing parameter: host")?;
        let identity = get("identity").ok_or(
            "missing parameter: identity (the peer identity, e.g. spiffe://west.example/ns/default/sa/peer)",
        )?;
        let path = match get("path") {
            None | Some("") => "/",
            Some(p) => p,
        };
        let method = match get("method") {
            None | Some("") => Method::GET,
            Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("invalid parameter: method {m:?} is not an HTTP method"))?,
        };
        if !path.starts_with('/') {
            return Err(format!(
                "invalid parameter: path {path:?} must start with '/'"
            ));
        }
        Ok(Question {
            host: host.to_string(),
            path: path.to_string(),
            method,
            identity: identity.to_string(),
        })
    }
}

/// How a route's host matched the authority, in the order lookup tries them.
pub fn match_kind(route: &Route, authority: &Authority) -> &'static str {
    let host = authority.host();
    let port = authority.port();
    let exact = |want: &dyn Fn(&PortMatch) -> bool| {
        route
            .hosts
            .iter()
            .any(|h| matches!(h, HostMatch::Exact(n, p) if **n == *host && want(p)))
    };
    if exact(&|p| match port {
        Some(n) => *p == PortMatch::Port(n),
        None => *p == PortMatch::Absent,
    }) {
        return if port.is_some() {
            "exact host and port"
        } else {
            "exact host, no port"
        };
    }
    if exact(&|p| *p == PortMatch::Any) {
        return "exact host, any port";
    }
    if route
        .hosts
        .iter()
        .any(|h| matches!(h, HostMatch::Wildcard(s) if host.len() > s.len() && host.ends_with(s.as_str())))
    {
        return "wildcard host";
    }
    "any host (*)"
}

/// `ns/name` when `host` is `<name>.<ns>.svc.<cluster_domain>`.
pub fn service_of_host<'h>(host: &'h str, cluster_domain: &str) -> Option<(&'h str, &'h str)> {
    let rest = host
        .strip_suffix(cluster_domain)
        .and_then(|r| r.strip_suffix(".svc."))
        .or_else(|| host.strip_suffix(".svc"))?;
    let (name, ns) = rest.split_once('.')?;
    (!name.is_empty() && !ns.is_empty() && !ns.contains('.')).then_some((name, ns))
}

fn refused(kind: ErrorKind, rule: &str, reason: String, mut answer: Value) -> Value {
    answer["decision"] = json!("refuse");
    answer["status"] = json!(kind.status());
    answer["error"] = json!(kind.label());
    answer["rule"] = json!(rule);
    answer["reason"] = json!(reason);
    answer
}

fn step(answer: &mut Value, name: &str, ok: bool, detail: String) {
    if let Some(steps) = answer["steps"].as_array_mut() {
        steps.push(json!({"step": name, "ok": ok, "detail": detail}));
    }
}

/// Explains `q` against `table`: the JSON answer of `/explain`.
pub fn explain(table: &RouteTable, cfg: &ExplainConfig, q: &Question) -> Value {
    let mut answer = json!({
        "request": {"host": q.host, "path": q.path, "method": q.method.as_str(), "identity": q.identity},
        "steps": [],
    });

    // 1. Authority, exactly as the proxy parses Host / :authority.
    let authority = match request::parse_authority(q.host.as_bytes()) {
        Ok(a) => a,
        Err(e) => {
            step(&mut answer, "authority", false, e.to_string());
            return refused(
                ErrorKind::BadRequest,
                "bad authority",
                format!("{:?} is refused: {e}", q.host),
                answer,
            );
        }
    };
    let normalised = match authority.port() {
        Some(p) => format!("{}:{p}", authority.host()),
        None => authority.host().to_string(),
    };
    answer["authority"] =
        json!({"host": authority.host(), "port": authority.port(), "normalised": normalised});
    step(&mut answer, "authority", true, normalised.clone());

    // 2. Path, normalised as the proxy matches and forwards it.
    let path = match request::normalized_path(&q.path) {
        Ok(p) => p.into_owned(),
        Err(kind) => {
            let why = crate::routes::normalize_path(&q.path)
                .err()
                .map_or_else(|| "refused".to_string(), |e| e.to_string());
            step(&mut answer, "path", false, why.clone());
            return refused(
                kind,
                "bad path",
                format!("path {:?} is refused: {why}", q.path),
                answer,
            );
        }
    };
    answer["path"] = json!(path);
    step(&mut answer, "path", true, path.clone());

    // 3. Route lookup (no request headers: header-matched routes do not apply).
    let route = match request::route_for(
        table,
        &authority,
        &path,
        None,
        &q.method,
        &HeaderMap::new(),
    ) {
        Ok(r) => r,
        Err(kind) => {
            let unexported = service_of_host(authority.host(), &cfg.cluster_domain)
                .map(|(name, ns)| format!("{ns}/{name}"))
                .filter(|s| table.is_unexported(s));
            let ports: Vec<String> = table
                .ports_of(authority.host())
                .iter()
                .map(|p| match p {
                    PortMatch::Port(n) => n.to_string(),
                    PortMatch::Any => "any port".to_string(),
                    PortMatch::Absent => "no port".to_string(),
                })
                .collect();
            let (rule, reason) = match unexported {
                None if !ports.is_empty() => (
                    "no route",
                    format!(
                        "{} has routes, but none for {normalised} {} {path} (ports: {}; check the port, path prefix, method and headers)",
                        authority.host(),
                        q.method,
                        ports.join(", ")
                    ),
                ),
                Some(svc) => (
                    "not exported",
                    format!(
                        "Service {svc} exists but is not exported (label {}: \"true\" missing); clients get the same 404 as for an unknown host",
                        cfg.export_label
                    ),
                ),
                None => (
                    "no route",
                    format!(
                        "no exported Service or Mapping answers {normalised} {} {path}",
                        q.method
                    ),
                ),
            };
            step(&mut answer, "route", false, reason.clone());
            return refused(kind, rule, reason, answer);
        }
    };
    let (kind, object) = route.source();
    let how = match_kind(route, &authority);
    answer["route"] = json!({
        "name": &*route.name,
        "source": format!("{kind} {object}"),
        "match_kind": how,
        "match": crate::routes::match_label(&route.matcher),
        "detail": describe_route(route),
    });
    step(
        &mut answer,
        "route",
        true,
        format!("{} ({kind} {object}), {how}", route.name),
    );

    // 4. Authorization.
    let peer = (!q.identity.is_empty()).then_some(q.identity.as_str());
    let verdict = request::authorize(route, peer);
    let why = route.authz.explain(&q.identity);
    match (&verdict, peer) {
        (Ok(()), _) => {
            let patterns = why.unwrap_or_default();
            answer["authorization"] = json!({"allowed": true, "allowed_by": patterns});
            step(
                &mut answer,
                "authorization",
                true,
                format!("allowed by {}", patterns.join(" and ")),
            );
        }
        (Err(kind), None) => {
            answer["authorization"] = json!({"allowed": false, "allowed_by": null});
            step(&mut answer, "authorization", false, "no identity".into());
            return refused(
                *kind,
                "not authorized",
                "a connection without a peer identity is never authorized".into(),
                answer,
            );
        }
        (Err(kind), Some(id)) => {
            let policy = why.err().unwrap_or_default();
            let reason = if policy.is_empty() {
                format!("{id} is not allowed: the route admits no identity")
            } else {
                format!(
                    "{id} is not allowed: no pattern matches among [{}]",
                    policy.join(", ")
                )
            };
            answer["authorization"] =
                json!({"allowed": false, "allowed_by": null, "patterns": policy});
            step(&mut answer, "authorization", false, reason.clone());
            return refused(*kind, "not authorized", reason, answer);
        }
    }

    // 5. Backend by weight, and 6. the endpoint each would use.
    let total = route.target.total_weight();
    let mut serving_share = 0u32;
    let mut backends = Vec::new();
    for b in &route.target.backends {
        let can_serve = request::backend_can_serve(b);
        if can_serve {
            serving_share += b.weight;
        }
        let endpoint = match b.preview() {
            EndpointPreview::None => json!({"none": true}),
            EndpointPreview::Next(e) => json!({"next": e.addr.to_string()}),
            EndpointPreview::OneOf(eps) => {
                json!({"one_of": eps.iter().map(|e| e.addr.to_string()).collect::<Vec<_>>()})
            }
        };
        backends.push(json!({
            "service": &*b.service,
            "weight": b.weight,
            "share_percent": if total == 0 { 0.0 } else { f64::from(b.weight) * 100.0 / f64::from(total) },
            "ready": b.endpoints.len(),
            "total": b.endpoints.len() + b.not_ready(),
            "can_serve": can_serve && b.weight > 0,
            "endpoint": endpoint,
        }));
    }
    answer["backends"] = json!(backends);
    if serving_share == 0 {
        step(
            &mut answer,
            "backend",
            false,
            "no backend with weight has a ready endpoint".into(),
        );
        return refused(
            ErrorKind::NoEndpoints,
            "no ready endpoints",
            format!("route {} has no backend with a ready endpoint", route.name),
            answer,
        );
    }
    let summary: Vec<String> = route
        .target
        .backends
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| {
            let ep = match b.preview() {
                EndpointPreview::None => "no ready endpoint: 503".to_string(),
                EndpointPreview::Next(e) => format!("next {}", e.addr),
                EndpointPreview::OneOf(eps) => format!("one of {} endpoints", eps.len()),
            };
            format!("{} weight {}/{total} ({ep})", b.service, b.weight)
        })
        .collect();
    step(&mut answer, "backend", true, summary.join("; "));
    answer["decision"] = json!("proxy");
    answer["status"] = Value::Null;
    answer["error"] = Value::Null;
    answer["rule"] = Value::Null;
    answer["reason"] = json!(if serving_share < total {
        format!(
            "proxied to an upstream; {:.0}% of requests pick a backend without ready endpoints and get 503",
            f64::from(total - serving_share) * 100.0 / f64::from(total)
        )
    } else {
        "proxied to an upstream".to_string()
    });
    answer
}

#[cfg(test)]
mod tests;
