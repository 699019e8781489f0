//! Gateway API routes in the index: which parents (an Isthmus `Gateway`, or a
//! `Service` for GAMMA) accept each `HTTPRoute`, what its backendRefs resolve
//! to, its routes in the table and the `status.parents[]` it should carry.
//!
//! Pure: reads the index's Services, EndpointSlices, Gateways and
//! GatewayClasses; no I/O. A route that is not accepted, or a backendRef that
//! does not resolve, affects only that route (or that backend's share: 500).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderValue;
use serde_json::Value;

use super::{Index, IndexConfig, ObjectKey, Resolver, ServiceInfo, ServiceRef};
use crate::discovery::httproute::{
    BackendRef, Filters, Listener, ParentKind, ParentRef, PathMatch, PathModifier,
    ReferenceGrantSpec, RouteSpec, Rule, GROUP,
};
use crate::hash::HashMap;
use crate::routes::{
    Authorization, Backend, BackendSettings, DirectAnswer, HostMatch, PortMatch, Redirect,
    RewriteMode, Route, RouteMatch, RouteTarget,
};

/// An HTTPRoute as the index keeps it.
#[derive(Clone, Debug)]
pub(super) struct HttpRouteEntry {
    pub(super) generation: Option<i64>,
    pub(super) spec: Result<RouteSpec, String>,
}

/// A Gateway as the index keeps it.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct GatewayInfo {
    pub(super) class: String,
    pub(super) listeners: Vec<Listener>,
}

/// One condition of a route's parent status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteCondition {
    /// `True` or `False`.
    pub status: bool,
    /// The reason (`Accepted`, `NotAllowedByListeners`, `BackendNotFound`...).
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

/// The status of an HTTPRoute for one of its parents.
#[derive(Clone, Debug, PartialEq)]
pub struct ParentStatus {
    /// The parentRef as written.
    pub parent_ref: Value,
    /// `Accepted`.
    pub accepted: RouteCondition,
    /// `ResolvedRefs`.
    pub resolved_refs: RouteCondition,
}

/// What an HTTPRoute's status should say (parents this gateway is responsible for).
#[derive(Clone, Debug, PartialEq)]
pub struct RouteStatus {
    /// `metadata.generation` it was computed from.
    pub generation: Option<i64>,
    /// One entry per parentRef that names an Isthmus Gateway or a Service.
    pub parents: Vec<ParentStatus>,
}

fn cond(status: bool, reason: &'static str, message: impl Into<String>) -> RouteCondition {
    RouteCondition {
        status,
        reason,
        message: message.into(),
    }
}

/// `*.suffix` or an exact name, as the table matches it.
fn host_match(name: &str) -> HostMatch {
    match name.strip_prefix("*.") {
        Some(suffix) => HostMatch::Wildcard(format!(".{suffix}")),
        None => HostMatch::Exact(name.into(), PortMatch::Any),
    }
}

/// The intersection of a listener hostname and a route hostname (the more
/// specific of the two), if they overlap.
fn intersect(listener: &str, route: &str) -> Option<String> {
    let covers = |wild: &str, name: &str| {
        wild.strip_prefix('*')
            .is_some_and(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
    };
    if listener == route || covers(listener, route) {
        Some(route.to_string())
    } else if covers(route, listener) {
        Some(listener.to_string())
    } else {
        None
    }
}

/// What the HTTPRoute build reads of the index (borrowed beside the resolver).
pub(super) struct GatewayView<'a> {
    pub(super) cfg: &'a IndexConfig,
    pub(super) services: &'a HashMap<ObjectKey, ServiceInfo>,
    pub(super) httproutes: &'a BTreeMap<ObjectKey, HttpRouteEntry>,
    pub(super) gateways: &'a BTreeMap<ObjectKey, GatewayInfo>,
    pub(super) gateway_classes: &'a BTreeMap<String, bool>,
    /// ReferenceGrants, for backendRefs in other namespaces.
    pub(super) grants: &'a BTreeMap<ObjectKey, ReferenceGrantSpec>,
}

impl Index {
    /// The Services HTTPRoute backends name (their slices are needed by the build).
    pub(super) fn httproute_services(&self) -> impl Iterator<Item = ObjectKey> + '_ {
        self.httproutes
            .values()
            .filter_map(|e| e.spec.as_ref().ok())
            .filter_map(|s| s.rules.as_ref().ok())
            .flatten()
            .flat_map(|r| &r.backends)
            .map(|b| ObjectKey::new(&b.namespace, &b.name))
    }
}

impl GatewayView<'_> {
    /// The hosts a parent gives a route, or why it does not accept it;
    /// `None` when the parent is not this gateway's to answer for.
    fn attach(
        &self,
        key: &ObjectKey,
        spec: &RouteSpec,
        parent: &ParentRef,
    ) -> Option<Result<Vec<HostMatch>, RouteCondition>> {
        match &parent.kind {
            ParentKind::Other(kind) => Some(Err(cond(
                false,
                "UnsupportedValue",
                format!("parentRef kind {kind} is not supported (Gateway, Service)"),
            ))),
            ParentKind::Gateway => {
                let gw = self
                    .gateways
                    .get(&ObjectKey::new(&parent.namespace, &parent.name))?;
                if self.gateway_classes.get(&gw.class) != Some(&true) {
                    return None;
                }
                let listeners: Vec<&Listener> = gw
                    .listeners
                    .iter()
                    .filter(|l| parent.section.as_ref().is_none_or(|s| *s == l.name))
                    .filter(|l| parent.port.is_none_or(|p| l.port == Some(p)))
                    .collect();
                if listeners.is_empty() {
                    return Some(Err(cond(
                        false,
                        "NoMatchingParent",
                        "no listener of the Gateway matches sectionName/port",
                    )));
                }
                let allowed: Vec<&&Listener> = listeners
                    .iter()
                    .filter(|l| match l.allowed_from() {
                        "All" => true,
                        "Same" => *parent.namespace == *key.namespace,
                        _ => false,
                    })
                    .collect();
                if allowed.is_empty() {
                    return Some(Err(cond(
                        false,
                        "NotAllowedByListeners",
                        format!(
                            "the Gateway's listeners do not allow routes from namespace {} (allowedRoutes default: Same; Selector is not supported)",
                            key.namespace
                        ),
                    )));
                }
                let mut hosts = Vec::new();
                for l in allowed {
                    match (&l.hostname, spec.hostnames.is_empty()) {
                        (None, true) => hosts.push(HostMatch::Any),
                        (None, false) => hosts.extend(spec.hostnames.iter().map(|h| host_match(h))),
                        (Some(lh), true) => hosts.push(host_match(lh)),
                        (Some(lh), false) => hosts.extend(
                            spec.hostnames
                                .iter()
                                .filter_map(|h| intersect(lh, h))
                                .map(|h| host_match(&h)),
                        ),
                    }
                }
                if hosts.is_empty() {
                    return Some(Err(cond(
                        false,
                        "NoMatchingListenerHostname",
                        "no route hostname matches a listener hostname",
                    )));
                }
                Some(Ok(hosts))
            }
            ParentKind::Service => {
                if *parent.namespace != *key.namespace {
                    return Some(Err(cond(
                        false,
                        "NotAllowedByListeners",
                        "a Service parent must be in the route's namespace (consumer routes are not supported)",
                    )));
                }
                let svc_key = ObjectKey::new(&parent.namespace, &parent.name);
                let Some(svc) = self.services.get(&svc_key) else {
                    return Some(Err(cond(
                        false,
                        "NoMatchingParent",
                        format!("Service {svc_key} does not exist"),
                    )));
                };
                let fqdn = svc.fqdn.clone();
                let ports: Vec<u16> = svc
                    .ports
                    .iter()
                    .map(|p| p.port)
                    .filter(|p| parent.port.is_none_or(|want| want == *p))
                    .collect();
                if ports.is_empty() {
                    return Some(Err(cond(
                        false,
                        "NoMatchingParent",
                        format!("Service {svc_key} has no such port"),
                    )));
                }
                let mut hosts: Vec<HostMatch> = ports
                    .iter()
                    .map(|p| HostMatch::Exact(fqdn.clone(), PortMatch::Port(*p)))
                    .collect();
                if svc.ports.len() == 1 {
                    hosts.push(HostMatch::Exact(fqdn, PortMatch::Absent));
                }
                Some(Ok(hosts))
            }
        }
    }

    /// Whether a backendRef resolves; else the ResolvedRefs reason and message.
    fn check_backend(&self, route_ns: &str, b: &BackendRef) -> Result<(), RouteCondition> {
        if let Some(kind) = &b.other_kind {
            return Err(cond(
                false,
                "InvalidKind",
                format!("backendRef kind {kind} is not supported (Service)"),
            ));
        }
        let key = ObjectKey::new(&b.namespace, &b.name);
        if b.namespace != route_ns
            && !super::claims::permitted(self.grants, GROUP, "HTTPRoute", route_ns, &key)
        {
            return Err(cond(
                false,
                "RefNotPermitted",
                format!(
                    "backendRef {key} is in another namespace and no ReferenceGrant in namespace {} allows HTTPRoutes from {route_ns} to refer to it",
                    b.namespace
                ),
            ));
        }
        let Some(svc) = self.services.get(&key) else {
            return Err(cond(
                false,
                "BackendNotFound",
                format!("Service {key} does not exist"),
            ));
        };
        match b.port {
            None => Err(cond(
                false,
                "BackendNotFound",
                format!("backendRef {key} needs a port"),
            )),
            Some(p) if !svc.ports.iter().any(|sp| sp.port == p) => Err(cond(
                false,
                "BackendNotFound",
                format!("Service {key} has no port {p}"),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Builds the HTTPRoute routes into `routes` and records each route's status.
    pub(super) fn build(
        &self,
        resolver: &mut Resolver<'_>,
        routes: &mut Vec<Arc<Route>>,
    ) -> BTreeMap<ObjectKey, RouteStatus> {
        let mut statuses = BTreeMap::new();
        for (key, entry) in self.httproutes {
            let Ok(spec) = &entry.spec else { continue };
            // ResolvedRefs: the first backendRef that does not resolve.
            let resolved = match &spec.rules {
                Err(_) => cond(true, "ResolvedRefs", "not checked: the route is invalid"),
                Ok(rules) => rules
                    .iter()
                    .flat_map(|r| &r.backends)
                    .find_map(|b| self.check_backend(&key.namespace, b).err())
                    .unwrap_or_else(|| cond(true, "ResolvedRefs", "all backendRefs resolve")),
            };
            let mut parents = Vec::new();
            let mut hosts: Vec<HostMatch> = Vec::new();
            for parent in &spec.parents {
                let Some(attached) = self.attach(key, spec, parent) else {
                    continue;
                };
                let accepted = match (attached, &spec.rules) {
                    (Err(c), _) => c,
                    (Ok(_), Err(why)) => cond(false, "UnsupportedValue", why.clone()),
                    (Ok(hs), Ok(_)) => {
                        for h in hs {
                            if !hosts.contains(&h) {
                                hosts.push(h);
                            }
                        }
                        cond(true, "Accepted", "route is active")
                    }
                };
                parents.push(ParentStatus {
                    parent_ref: parent.raw.clone(),
                    accepted,
                    resolved_refs: resolved.clone(),
                });
            }
            statuses.insert(
                key.clone(),
                RouteStatus {
                    generation: entry.generation,
                    parents,
                },
            );
            let (Ok(rules), false) = (&spec.rules, hosts.is_empty()) else {
                continue;
            };
            for (i, rule) in rules.iter().enumerate() {
                let backends = self.rule_backends(key, rule, resolver);
                let backends = Arc::new(backends);
                for m in &rule.matches {
                    let (prefix, exact) = match &m.path {
                        PathMatch::Exact(p) => (p.clone(), true),
                        PathMatch::Prefix(p) => (p.clone(), false),
                    };
                    let target = RouteTarget::new(
                        backends
                            .iter()
                            .map(|(label, w, eps, s)| {
                                Backend::new(label.clone(), *w, eps.clone(), s.clone())
                            })
                            .collect(),
                    );
                    routes.push(Arc::new(Route {
                        name: format!("httproute/{}/{}/{:03}", key.namespace, key.name, i).into(),
                        hosts: hosts.clone(),
                        matcher: RouteMatch {
                            prefix,
                            prefix_exact: exact,
                            method: m.method.clone(),
                            headers: m.headers.clone(),
                            segment_prefix: !exact,
                            query: m.query.clone(),
                            gateway: Some(spec.created),
                        }
                        .into(),
                        authz: Authorization::new(self.cfg.allowed.clone()),
                        target,
                    }));
                }
            }
        }
        statuses
    }

    /// A rule's backends: `(label, weight, endpoints, settings)`.
    #[allow(clippy::type_complexity)]
    fn rule_backends(
        &self,
        key: &ObjectKey,
        rule: &Rule,
        resolver: &mut Resolver<'_>,
    ) -> Vec<(
        Arc<str>,
        u32,
        Vec<Arc<crate::routes::Endpoint>>,
        Arc<BackendSettings>,
    )> {
        let mut base = self.cfg.defaults.clone();
        if let Some(t) = rule.timeout.filter(|t| !t.is_zero()) {
            base.timeout = t;
        }
        apply_filters(&mut base, &rule.filters);
        let answer = |base: &BackendSettings, a: DirectAnswer| {
            let mut s = base.clone();
            s.answer = Some(a);
            Arc::new(s)
        };
        if let Some(r) = &rule.filters.redirect {
            let redirect = Redirect {
                scheme: r.scheme.clone(),
                hostname: r.hostname.clone(),
                port: r.port,
                path: r.path.as_ref().map(|p| match p {
                    PathModifier::Full(p) => (RewriteMode::Full, p.clone()),
                    PathModifier::Prefix(p) => (RewriteMode::PrefixSegments, p.clone()),
                }),
                status: r.status,
            };
            return vec![(
                "redirect".into(),
                1,
                Vec::new(),
                answer(&base, DirectAnswer::Redirect(redirect)),
            )];
        }
        let mut out = Vec::new();
        for b in &rule.backends {
            let label: Arc<str> = format!(
                "{}/{}:{}",
                b.namespace,
                b.name,
                b.port.map_or("-".to_string(), |p| p.to_string())
            )
            .into();
            if self.check_backend(&key.namespace, b).is_err() {
                out.push((
                    label,
                    b.weight,
                    Vec::new(),
                    answer(&base, DirectAnswer::InvalidBackend),
                ));
                continue;
            }
            let (label, eps, _not_ready) = resolver.resolve(&ServiceRef {
                key: ObjectKey::new(&b.namespace, &b.name),
                port: b.port,
            });
            let mut s = base.clone();
            apply_filters(&mut s, &b.filters);
            out.push((label, b.weight, eps, Arc::new(s)));
        }
        // No backend, or none with weight: every request gets a 500.
        if out.iter().all(|(_, w, _, _)| *w == 0) {
            out.push((
                "no-backend".into(),
                1,
                Vec::new(),
                answer(&base, DirectAnswer::InvalidBackend),
            ));
        }
        out
    }
}

fn apply_filters(s: &mut BackendSettings, f: &Filters) {
    s.add_request_headers.extend(f.request.set.iter().cloned());
    s.append_request_headers
        .extend(f.request.add.iter().cloned());
    s.remove_request_headers
        .extend(f.request.remove.iter().cloned());
    s.add_response_headers
        .extend(f.response.set.iter().cloned());
    s.append_response_headers
        .extend(f.response.add.iter().cloned());
    s.remove_response_headers
        .extend(f.response.remove.iter().cloned());
    if let Some(h) = f.rewrite_host.as_deref() {
        s.rewrite_host = HeaderValue::from_str(h).ok();
    }
    match &f.rewrite_path {
        Some(PathModifier::Full(p)) => {
            s.rewrite = Some(p.clone());
            s.rewrite_mode = RewriteMode::Full;
        }
        Some(PathModifier::Prefix(p)) => {
            s.rewrite = Some(p.clone());
            s.rewrite_mode = RewriteMode::PrefixSegments;
        }
        None => {}
    }
}
