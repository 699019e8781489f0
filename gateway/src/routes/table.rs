//! The route table: an immutable snapshot mapping (authority, path, method,
//! headers) to a route, and each route to weighted backends and their endpoints.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::{json, Value};

use super::{Authority, Authorization};

/// Which request ports an exact-host route accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortMatch {
    /// Only this port.
    Port(u16),
    /// Any port, or none (Mappings whose hostname has no port).
    Any,
    /// Only requests that name no port (a single-port Service's default).
    Absent,
}

/// How a route names hosts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostMatch {
    /// An exact host and which ports it accepts.
    Exact(String, PortMatch),
    /// `*.suffix`: any host ending in `.suffix` (stored with the leading dot).
    Wildcard(String),
    /// `*`: any host.
    Any,
}

/// One request header that must be present with exactly this value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeaderMatch {
    /// Lower-case header name.
    pub name: String,
    /// Exact value.
    pub value: String,
}

/// What a route matches besides the host.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteMatch {
    /// Path prefix (`/` matches everything).
    pub prefix: String,
    /// The path must equal `prefix` instead of starting with it.
    pub prefix_exact: bool,
    /// Only this method, if set.
    pub method: Option<String>,
    /// Headers that must all be present, sorted by name.
    pub headers: Vec<HeaderMatch>,
}

impl RouteMatch {
    /// Matches everything: prefix `/`, any method, no headers.
    pub fn any() -> Self {
        RouteMatch {
            prefix: "/".into(),
            prefix_exact: false,
            method: None,
            headers: Vec::new(),
        }
    }

    fn matches(&self, path: &str, method: &Method, headers: &HeaderMap) -> bool {
        let path_ok = if self.prefix_exact {
            path == self.prefix
        } else {
            path.starts_with(self.prefix.as_str())
        };
        path_ok
            && self.method.as_deref().is_none_or(|m| m == method.as_str())
            && self.headers.iter().all(|h| {
                headers
                    .get(h.name.as_str())
                    .is_some_and(|v| v.as_bytes() == h.value.as_bytes())
            })
    }

    /// Ordering key: more specific first.
    fn specificity(&self) -> impl Ord {
        (
            std::cmp::Reverse(self.prefix_exact),
            std::cmp::Reverse(self.prefix.len()),
            std::cmp::Reverse(self.headers.len()),
            std::cmp::Reverse(self.method.is_some()),
        )
    }
}

/// Endpoint selection among a backend's ready endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LbPolicy {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// The less busy of two random endpoints (power of two choices).
    LeastRequest,
}

/// Per-backend upstream settings (from the Mapping or the config defaults).
#[derive(Clone, Debug)]
pub struct BackendSettings {
    /// Replace the matched prefix with this, if set.
    pub rewrite: Option<String>,
    /// Time allowed for each upstream read (response headers and body gaps).
    pub timeout: Duration,
    /// Time allowed to connect to an endpoint.
    pub connect_timeout: Duration,
    /// Idle time of pooled upstream connections.
    pub idle_timeout: Duration,
    /// Headers set on the upstream request.
    pub add_request_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers removed from the upstream request.
    pub remove_request_headers: Vec<HeaderName>,
    /// Headers set on the response to the client.
    pub add_response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Extra attempts on another endpoint after a connect failure (idempotent requests).
    pub num_retries: u32,
    /// Endpoint selection policy.
    pub lb: LbPolicy,
    /// Set for a mirror Service's backend (egress): its endpoints are a remote
    /// gateway, reached over mTLS.
    pub remote: Option<RemoteTarget>,
    /// Speak HTTP/2 with prior knowledge (h2c) to the endpoints: a Service
    /// port with `appProtocol` h2c or gRPC, or a Mapping with `grpc: true`.
    pub upstream_h2: bool,
    /// `Upgrade` protocols (lower-case) passed through to the upstream.
    pub allow_upgrade: Vec<String>,
}

/// How the egress reaches a mirrored Service through its cluster's gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteTarget {
    /// The identity the remote gateway's certificate must carry
    /// (`mirror.linkerd.io/remote-gateway-identity`).
    pub identity: Arc<str>,
    /// `:authority` sent to the remote gateway: `remote-svc-fq-name:<port>`.
    pub authority: Arc<str>,
    /// The target cluster (`mirror.linkerd.io/cluster-name`), for metrics.
    pub cluster: Arc<str>,
}

impl BackendSettings {
    /// Defaults with the given timeouts.
    pub fn with_timeouts(
        timeout: Duration,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        BackendSettings {
            rewrite: None,
            timeout,
            connect_timeout,
            idle_timeout,
            add_request_headers: Vec::new(),
            remove_request_headers: Vec::new(),
            add_response_headers: Vec::new(),
            num_retries: 1,
            lb: LbPolicy::RoundRobin,
            remote: None,
            upstream_h2: false,
            allow_upgrade: Vec::new(),
        }
    }
}

/// Passive health: when an endpoint is taken out of rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Consecutive connect failures that eject an endpoint.
    pub consecutive_failures: u32,
    /// How long an ejected endpoint is skipped.
    pub ejection: Duration,
}

/// Milliseconds on a process-wide monotonic clock (0 is never "now").
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

/// One upstream endpoint, with its live in-flight count and passive-health
/// state (shared across tables, so both survive rebuilds).
#[derive(Debug)]
pub struct Endpoint {
    /// Address the gateway connects to.
    pub addr: SocketAddr,
    in_flight: AtomicUsize,
    failures: AtomicU32,
    /// [`now_ms`] until which the endpoint is skipped; 0 when it is not.
    ejected_until: AtomicU64,
}

impl Endpoint {
    /// A new endpoint with nothing in flight.
    pub fn new(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }

    /// Records a failed connection; returns true when this failure ejects the
    /// endpoint for `policy.ejection`.
    pub fn connect_failed(&self, policy: &PassiveHealth) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < policy.consecutive_failures.max(1) {
            return false;
        }
        self.failures.store(0, Ordering::Relaxed);
        let ms = u64::try_from(policy.ejection.as_millis()).unwrap_or(u64::MAX);
        self.ejected_until
            .store(now_ms().saturating_add(ms), Ordering::Relaxed);
        true
    }

    /// Records a working connection: the failure count starts over.
    pub fn connected(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.ejected_until.load(Ordering::Relaxed) != 0 {
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the endpoint is out of rotation now.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// Requests currently in flight to this endpoint.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// Decrements an endpoint's in-flight count when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    /// The endpoint this request went to.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A Service port behind a route, with its ready endpoints.
#[derive(Debug)]
pub struct Backend {
    /// `ns/name:port`, for logs and `/routes`.
    pub service: Arc<str>,
    /// Share of the route's traffic.
    pub weight: u32,
    /// Ready endpoints.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Upstream settings.
    pub settings: Arc<BackendSettings>,
    next: AtomicUsize,
}

impl Backend {
    /// A backend starting its round-robin at a random endpoint.
    pub fn new(
        service: Arc<str>,
        weight: u32,
        endpoints: Vec<Arc<Endpoint>>,
        settings: Arc<BackendSettings>,
    ) -> Self {
        Backend {
            service,
            weight,
            next: AtomicUsize::new(fastrand::usize(..endpoints.len().max(1))),
            endpoints,
            settings,
        }
    }

    /// Whether the backend has a ready endpoint that is not ejected.
    pub fn can_serve(&self) -> bool {
        self.endpoints.iter().any(|e| !e.is_ejected())
    }

    /// Picks an endpoint, skipping `avoid` and ejected endpoints when there
    /// is another choice (when every endpoint is ejected, they are all tried
    /// rather than failing the request).
    pub fn pick(&self, avoid: Option<SocketAddr>) -> Option<&Arc<Endpoint>> {
        let eps = &self.endpoints;
        let n = eps.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return eps.first();
        }
        let healthy = |e: &Arc<Endpoint>| Some(e.addr) != avoid && !e.is_ejected();
        if eps.iter().any(healthy) {
            self.pick_among(healthy)
        } else {
            self.pick_among(|e: &Arc<Endpoint>| Some(e.addr) != avoid)
        }
    }

    fn pick_among(&self, ok: impl Fn(&Arc<Endpoint>) -> bool) -> Option<&Arc<Endpoint>> {
        let eps = &self.endpoints;
        let n = eps.len();
        match self.settings.lb {
            LbPolicy::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|i| &eps[(start + i) % n])
                    .find(|e| ok(e))
                    .or_else(|| eps.get(start % n))
            }
            LbPolicy::LeastRequest => {
                let a = &eps[fastrand::usize(..n)];
                let b = &eps[fastrand::usize(..n)];
                let best = match (ok(a), ok(b)) {
                    (true, true) => {
                        if b.in_flight() < a.in_flight() {
                            b
                        } else {
                            a
                        }
                    }
                    (true, false) => a,
                    (false, true) => b,
                    (false, false) => eps.iter().find(|e| ok(e)).unwrap_or(a),
                };
                Some(best)
            }
        }
    }
}

/// Where a route sends traffic: one or more weighted backends.
#[derive(Debug)]
pub struct RouteTarget {
    /// Backends with non-zero weight.
    pub backends: Vec<Backend>,
    total_weight: u32,
    /// Primary/backup (`failover.linkerd.io/primary-service`): this backend
    /// takes everything while it can serve.
    pub primary: Option<usize>,
}

impl RouteTarget {
    /// Builds a target; backends with weight 0 are kept for `/routes` but never chosen.
    pub fn new(backends: Vec<Backend>) -> Self {
        let total_weight = backends.iter().map(|b| b.weight).sum();
        RouteTarget {
            backends,
            total_weight,
            primary: None,
        }
    }

    /// The same with a primary backend.
    pub fn with_primary(mut self, primary: Option<usize>) -> Self {
        self.primary = primary.filter(|i| *i < self.backends.len());
        self
    }

    /// Failover choice (egress): the primary while it can serve; otherwise a
    /// backend by weight among those that can serve (a ready endpoint not
    /// ejected), skipping `avoid`. `None` only when no backend can serve.
    pub fn choose_servable(&self, avoid: Option<usize>) -> Option<usize> {
        let ok = |i: usize| Some(i) != avoid && self.backends[i].can_serve();
        if let Some(p) = self.primary {
            if ok(p) {
                return Some(p);
            }
        }
        let servable = |i: usize| ok(i) && Some(i) != self.primary && self.backends[i].weight > 0;
        let total: u32 = (0..self.backends.len())
            .filter(|i| servable(*i))
            .map(|i| self.backends[i].weight)
            .sum();
        if total == 0 {
            // linkerd-failover style backups carry weight 0: with the primary
            // down they share its traffic equally.
            self.primary?;
            let backups: Vec<usize> = (0..self.backends.len())
                .filter(|i| ok(*i) && Some(*i) != self.primary)
                .collect();
            return backups
                .get(fastrand::usize(..backups.len().max(1)))
                .copied();
        }
        let mut pick = fastrand::u32(..total);
        for i in (0..self.backends.len()).filter(|i| servable(*i)) {
            let w = self.backends[i].weight;
            if pick < w {
                return Some(i);
            }
            pick -= w;
        }
        None
    }

    /// Chooses a backend by weight; returns its index in `backends`.
    pub fn choose(&self) -> Option<usize> {
        if self.total_weight == 0 {
            return None;
        }
        if self.backends.len() == 1 {
            return Some(0);
        }
        let mut pick = fastrand::u32(..self.total_weight);
        for (i, b) in self.backends.iter().enumerate() {
            if pick < b.weight {
                return Some(i);
            }
            pick -= b.weight;
        }
        None
    }
}

/// A route: a match, who may use it, and where it goes.
#[derive(Debug)]
pub struct Route {
    /// `service/<ns>/<name>:<port>` or `mapping/<ns>/<name>`: the metric label.
    pub name: Arc<str>,
    /// The hosts this route answers for (a single-port Service: with and without port).
    pub hosts: Vec<HostMatch>,
    /// Path, method and header conditions.
    pub matcher: RouteMatch,
    /// The identities admitted.
    pub authz: Authorization,
    /// The backends.
    pub target: RouteTarget,
}

/// The routes of one exact host, by port.
type PortRoutes = Vec<(PortMatch, Vec<Arc<Route>>)>;

/// The immutable routing snapshot.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Exact hosts, then by port.
    exact: HashMap<Box<str>, PortRoutes>,
    /// `(suffix with leading dot, routes)`, longest suffix first.
    wildcard: Vec<(String, Vec<Arc<Route>>)>,
    any: Vec<Arc<Route>>,
    routes: usize,
    services: usize,
    endpoints: usize,
}

impl RouteTable {
    /// Builds a table from routes; `services` and `endpoints` are the counts to report.
    pub fn new(routes: Vec<Route>, services: usize, endpoints: usize) -> Self {
        Self::from_shared(
            routes.into_iter().map(Arc::new).collect(),
            services,
            endpoints,
        )
    }

    /// [`RouteTable::new`] from routes that may also live in other tables
    /// (discovery reuses the routes of unchanged Services across rebuilds).
    pub fn from_shared(routes: Vec<Arc<Route>>, services: usize, endpoints: usize) -> Self {
        // Sized once: growing a map of 10,000 hosts by doubling allocates it twice over.
        let exact_hosts = routes
            .iter()
            .map(|r| {
                let mut names = r.hosts.iter().filter_map(|h| match h {
                    HostMatch::Exact(name, _) => Some(name),
                    _ => None,
                });
                let first = names.next();
                usize::from(first.is_some()) + names.filter(|n| Some(*n) != first).count()
            })
            .sum();
        let mut t = RouteTable {
            exact: HashMap::with_capacity(exact_hosts),
            routes: routes.len(),
            services,
            endpoints,
            ..RouteTable::default()
        };
        let mut wild: HashMap<String, Vec<Arc<Route>>> = HashMap::new();
        for r in routes {
            for host in &r.hosts {
                match host {
                    HostMatch::Exact(h, p) => {
                        let ports = t.exact.entry(h.as_str().into()).or_default();
                        match ports.iter_mut().find(|(port, _)| port == p) {
                            Some((_, rs)) => rs.push(r.clone()),
                            None => ports.push((*p, vec![r.clone()])),
                        }
                    }
                    HostMatch::Wildcard(s) => wild.entry(s.clone()).or_default().push(r.clone()),
                    HostMatch::Any => t.any.push(r.clone()),
                }
            }
        }
        t.wildcard = wild.into_iter().collect();
        t.wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let sort = |v: &mut Vec<Arc<Route>>| {
            v.sort_by(|a, b| {
                a.matcher
                    .specificity()
                    .cmp(&b.matcher.specificity())
                    .then_with(|| a.name.cmp(&b.name))
            })
        };
        t.exact
            .values_mut()
            .flat_map(|ports| ports.iter_mut())
            .for_each(|(_, rs)| sort(rs));
        t.wildcard.iter_mut().for_each(|(_, v)| sort(v));
        sort(&mut t.any);
        t
    }

    /// Finds the most specific route: exact host and port (or no port), exact host with any port,
    /// longest wildcard suffix, then `*`; within a host, the most specific match.
    pub fn lookup(
        &self,
        authority: &Authority,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<&Arc<Route>> {
        let first = |routes: &'_ [Arc<Route>]| -> Option<usize> {
            routes
                .iter()
                .position(|r| r.matcher.matches(path, method, headers))
        };
        let host = authority.host();
        let port = match authority.port() {
            Some(p) => PortMatch::Port(p),
            None => PortMatch::Absent,
        };
        if let Some(ports) = self.exact.get(host) {
            for want in [port, PortMatch::Any] {
                if let Some((_, rs)) = ports.iter().find(|(p, _)| *p == want) {
                    if let Some(i) = first(rs) {
                        return rs.get(i);
                    }
                }
            }
        }
        for (suffix, rs) in &self.wildcard {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                if let Some(i) = first(rs) {
                    return rs.get(i);
                }
            }
        }
        first(&self.any).and_then(|i| self.any.get(i))
    }

    /// Number of routes.
    pub fn route_count(&self) -> usize {
        self.routes
    }

    /// Number of distinct Service ports referenced.
    pub fn service_count(&self) -> usize {
        self.services
    }

    /// Number of distinct endpoints referenced.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints
    }

    /// Every route once.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        let mut seen = std::collections::HashSet::new();
        self.exact
            .values()
            .flatten()
            .flat_map(|(_, rs)| rs)
            .chain(self.wildcard.iter().flat_map(|(_, v)| v))
            .chain(self.any.iter())
            .filter(move |r| seen.insert(Arc::as_ptr(r)))
    }

    /// A JSON description for `/routes`, sorted for stable output.
    pub fn describe(&self) -> Value {
        let mut routes: Vec<Value> = self
            .iter()
            .map(|r| {
                let hosts: Vec<String> = r
                    .hosts
                    .iter()
                    .map(|h| match h {
                        HostMatch::Exact(h, PortMatch::Port(p)) => format!("{h}:{p}"),
                        HostMatch::Exact(h, PortMatch::Any) => h.clone(),
                        HostMatch::Exact(h, PortMatch::Absent) => format!("{h} (no port)"),
                        HostMatch::Wildcard(s) => format!("*{s}"),
                        HostMatch::Any => "*".into(),
                    })
                    .collect();
                json!({
                    "name": &*r.name,
                    "host": hosts.first(),
                    "hosts": hosts,
                    "prefix": r.matcher.prefix,
                    "prefix_exact": r.matcher.prefix_exact,
                    "method": r.matcher.method,
                    "headers": r.matcher.headers.iter().map(|h| json!({"name": h.name, "value": h.value})).collect::<Vec<_>>(),
                    "allowed_identities": r.authz.describe(),
                    "backends": r.target.backends.iter().map(|b| json!({
                        "service": &*b.service,
                        "weight": b.weight,
                        "endpoints": b.endpoints.iter().map(|e| e.addr.to_string()).collect::<Vec<_>>(),
                        "rewrite": b.settings.rewrite,
                        "timeout_ms": b.settings.timeout.as_millis() as u64,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        routes.sort_by(|a, b| {
            (a["host"].as_str(), a["name"].as_str()).cmp(&(b["host"].as_str(), b["name"].as_str()))
        });
        json!({
            "routes": routes,
            "counts": {"routes": self.routes, "services": self.services, "endpoints": self.endpoints},
        })
    }
}

#[cfg(test)]
mod tests;
