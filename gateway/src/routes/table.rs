//! The route table: an immutable snapshot mapping (authority, path, method,
//! headers) to a route, and each route to weighted backends and their endpoints.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::{json, Value};

use super::hosts::{HostEntry, HostIndex};
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
    /// An exact host and which ports it accepts (shared: a Service's name is
    /// one allocation for its routes and both host indexes).
    Exact(Arc<str>, PortMatch),
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
    /// `prefix` matches whole path elements (Gateway API `PathPrefix`):
    /// `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
    pub segment_prefix: bool,
    /// Query parameters that must all be present with exactly this value, sorted.
    pub query: Vec<HeaderMatch>,
    /// Set for Gateway API rules: the HTTPRoute's creationTimestamp (seconds),
    /// for its precedence rules (see [`RouteMatch::specificity`]).
    pub gateway: Option<i64>,
}

impl RouteMatch {
    /// Matches everything: prefix `/`, any method, no headers.
    pub fn any() -> Self {
        RouteMatch {
            prefix: "/".into(),
            prefix_exact: false,
            method: None,
            headers: Vec::new(),
            segment_prefix: false,
            query: Vec::new(),
            gateway: None,
        }
    }

    /// [`RouteMatch::any`], one allocation for every route that uses it.
    pub fn shared_any() -> Arc<RouteMatch> {
        static ANY: std::sync::LazyLock<Arc<RouteMatch>> =
            std::sync::LazyLock::new(|| Arc::new(RouteMatch::any()));
        ANY.clone()
    }

    fn matches(
        &self,
        path: &str,
        query: Option<&str>,
        method: &Method,
        headers: &HeaderMap,
    ) -> bool {
        let path_ok = if self.prefix_exact {
            path == self.prefix
        } else if self.segment_prefix {
            self.prefix == "/"
                || path.strip_prefix(self.prefix.as_str()).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with('/') || self.prefix.ends_with('/')
                })
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
            && self
                .query
                .iter()
                .all(|q| query_value(query, &q.name) == Some(q.value.as_str()))
    }

    /// Ordering key: more specific first. Exact path, then longer prefix;
    /// at equal path, Gateway API rules before Mapping and Service routes;
    /// Gateway API rules then by method, header count, query count and the
    /// oldest HTTPRoute (the spec's order); Mappings by header count, then
    /// method (as before). Remaining ties go by route name.
    fn specificity(&self) -> impl Ord {
        use std::cmp::Reverse as R;
        let (a, b, c, created) = match self.gateway {
            Some(created) => (
                usize::from(self.method.is_some()),
                self.headers.len(),
                self.query.len(),
                created,
            ),
            None => (self.headers.len(), usize::from(self.method.is_some()), 0, 0),
        };
        (
            R(self.prefix_exact),
            R(self.prefix.len()),
            self.gateway.is_none(),
            R(a),
            R(b),
            R(c),
            created,
        )
    }
}

/// The first value of query parameter `name` (exact, not percent-decoded:
/// the Gateway API matches query values as sent).
fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// How [`BackendSettings::rewrite`] changes the path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RewriteMode {
    /// Replace the matched prefix as a string (Mapping `rewrite`).
    #[default]
    Prefix,
    /// Replace the matched prefix as path elements (Gateway API `ReplacePrefixMatch`).
    PrefixSegments,
    /// Replace the whole path (Gateway API `ReplaceFullPath`).
    Full,
}

/// A Gateway API `RequestRedirect`: the gateway answers itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// `http` or `https`; default: the request's (`https`: peers use TLS).
    pub scheme: Option<String>,
    /// Hostname; default: the request's.
    pub hostname: Option<String>,
    /// Port; default: the request's, left out when it is the scheme's default.
    pub port: Option<u16>,
    /// The new path; prefix replacement follows [`RewriteMode::PrefixSegments`].
    pub path: Option<(RewriteMode, String)>,
    /// 301 or 302.
    pub status: u16,
}

/// What a backend answers without going upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectAnswer {
    /// An invalid Gateway API backendRef (missing Service or port): 500.
    InvalidBackend,
    /// A redirect.
    Redirect(Redirect),
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
    /// How `rewrite` applies.
    pub rewrite_mode: RewriteMode,
    /// `Host` sent upstream instead of the request's (Gateway API `URLRewrite.hostname`).
    pub rewrite_host: Option<HeaderValue>,
    /// Headers appended to the upstream request (kept besides existing values).
    pub append_request_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers appended to the response.
    pub append_response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers removed from the response.
    pub remove_response_headers: Vec<HeaderName>,
    /// Answer without an upstream (redirect, invalid backend).
    pub answer: Option<DirectAnswer>,
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
            rewrite_mode: RewriteMode::Prefix,
            rewrite_host: None,
            append_request_headers: Vec::new(),
            append_response_headers: Vec::new(),
            remove_response_headers: Vec::new(),
            answer: None,
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
    let paused = health_clock::PAUSED_AT.load(Ordering::Relaxed);
    if paused != 0 {
        return paused;
    }
    real_now_ms()
}

fn real_now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

/// The passive-health clock, for tests of ejection windows in the same
/// process: paused, it stands still until advanced, so "still ejected" and
/// "ejection over" are decided by the test, not by how fast the machine is.
/// Never paused in the gateway itself.
pub mod health_clock {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// The paused reading (0: running).
    pub(super) static PAUSED_AT: AtomicU64 = AtomicU64::new(0);

    /// Stops the clock at its current reading (process-wide).
    pub fn pause() {
        let _ = PAUSED_AT.compare_exchange(
            0,
            super::real_now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Moves the paused clock forward; panics unless paused.
    pub fn advance(by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let before = PAUSED_AT
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                (p != 0).then(|| p.saturating_add(ms))
            })
            .unwrap_or(0);
        assert!(before != 0, "health_clock::advance needs a paused clock");
    }
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
    /// Endpoints the Service's slices list as not ready (never picked; shown
    /// on the admin page as ready/total).
    not_ready: usize,
    next: AtomicUsize,
}

/// What [`Backend::pick`] would choose for the next request, read without
/// advancing the round robin (see [`Backend::preview`]).
#[derive(Debug)]
pub enum EndpointPreview<'a> {
    /// No ready endpoint: the request would be answered 503.
    None,
    /// Round robin: this endpoint is next (unless another request takes it first).
    Next(&'a Arc<Endpoint>),
    /// Least request picks among these at random (two choices), so which one
    /// cannot be said in advance.
    OneOf(Vec<&'a Arc<Endpoint>>),
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
            not_ready: 0,
        }
    }

    /// Whether the backend has a ready endpoint that is not ejected.
    pub fn can_serve(&self) -> bool {
        self.endpoints.iter().any(|e| !e.is_ejected())
    }

    /// The same backend, recording `n` endpoints that are listed but not ready.
    pub fn with_not_ready(mut self, n: usize) -> Self {
        self.not_ready = n;
        self
    }

    /// Endpoints listed but not ready.
    pub fn not_ready(&self) -> usize {
        self.not_ready
    }

    /// Picks an endpoint, skipping `avoid` and ejected endpoints when there
    /// is another choice (when every endpoint is ejected, they are all tried
    /// rather than failing the request).
    pub fn pick(&self, avoid: Option<SocketAddr>) -> Option<&Arc<Endpoint>> {
        self.choose(avoid, true)
    }

    /// What [`Backend::pick`] would do for the next request, without moving
    /// the round robin on (for `/explain`).
    pub fn preview(&self) -> EndpointPreview<'_> {
        let eps = &self.endpoints;
        if self.settings.lb == LbPolicy::LeastRequest && eps.len() > 1 {
            let healthy: Vec<&Arc<Endpoint>> = eps.iter().filter(|e| !e.is_ejected()).collect();
            return EndpointPreview::OneOf(if healthy.is_empty() {
                eps.iter().collect()
            } else {
                healthy
            });
        }
        match self.choose(None, false) {
            Some(e) => EndpointPreview::Next(e),
            None => EndpointPreview::None,
        }
    }

    /// [`Backend::pick`]; `advance` false reads the round robin without moving it.
    fn choose(&self, avoid: Option<SocketAddr>, advance: bool) -> Option<&Arc<Endpoint>> {
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
            self.pick_among(healthy, advance)
        } else {
            self.pick_among(|e: &Arc<Endpoint>| Some(e.addr) != avoid, advance)
        }
    }

    fn pick_among(
        &self,
        ok: impl Fn(&Arc<Endpoint>) -> bool,
        advance: bool,
    ) -> Option<&Arc<Endpoint>> {
        let eps = &self.endpoints;
        let n = eps.len();
        match self.settings.lb {
            LbPolicy::RoundRobin => {
                let start = if advance {
                    self.next.fetch_add(1, Ordering::Relaxed)
                } else {
                    self.next.load(Ordering::Relaxed)
                };
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

    /// The sum of the backends' weights (0: the route never picks a backend).
    pub fn total_weight(&self) -> u32 {
        self.total_weight
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
    /// Path, method and header conditions (shared: every Service route
    /// matches everything, through one [`RouteMatch::shared_any`]).
    pub matcher: Arc<RouteMatch>,
    /// The identities admitted.
    pub authz: Authorization,
    /// The backends.
    pub target: RouteTarget,
}

impl Route {
    /// The object the route comes from, from its name: `("Service",
    /// "ns/name")` for `service/ns/name:port`, `("Mapping", "ns/name")` for
    /// `mapping/ns/name` (a split names its first Mapping).
    pub fn source(&self) -> (&'static str, &str) {
        route_source(&self.name)
    }
}

/// See [`Route::source`]; an unknown form is returned whole as kind `Route`.
pub fn route_source(name: &str) -> (&'static str, &str) {
    if let Some(rest) = name.strip_prefix("service/") {
        let object = rest.rsplit_once(':').map_or(rest, |(o, _)| o);
        return ("Service", object);
    }
    if let Some(rest) = name.strip_prefix("mapping/") {
        return ("Mapping", rest);
    }
    ("Route", name)
}

/// A mirror Service (labelled `mirror.linkerd.io/mirrored-service: "true"`
/// with `mirror.linkerd.io/cluster-name`) seen by discovery: the remote
/// gateways of the admin page are derived from these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorService {
    /// `mirror.linkerd.io/cluster-name`.
    pub cluster: Arc<str>,
    /// `ns/name` of the mirror Service.
    pub service: String,
    /// Ready endpoints in its EndpointSlices (the remote gateway addresses).
    pub ready: Vec<std::net::IpAddr>,
    /// Endpoints listed but not ready.
    pub not_ready: usize,
}

/// The immutable routing snapshot.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Routes by host (shared with the tables before and after this one).
    hosts: HostIndex,
    services: usize,
    endpoints: usize,
    /// Mirror Services, sorted by cluster then Service (for the admin page).
    mirrors: Arc<[MirrorService]>,
    /// `ns/name` of Services discovery knows but that are not exported (so
    /// `/explain` can tell the operator "not exported" from "unknown").
    unexported: Arc<std::collections::HashSet<String>>,
}

/// The order of routes within one host: more specific first, then by name.
pub(super) fn precedence(a: &Route, b: &Route) -> std::cmp::Ordering {
    a.matcher
        .specificity()
        .cmp(&b.matcher.specificity())
        .then_with(|| a.name.cmp(&b.name))
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

    /// [`RouteTable::new`] from routes that may also live in other tables.
    pub fn from_shared(routes: Vec<Arc<Route>>, services: usize, endpoints: usize) -> Self {
        Self::from_hosts(HostIndex::from_routes(routes), services, endpoints)
    }

    /// A table over a host index that discovery keeps changing in place (the
    /// index is cloned, which shares every host entry with it).
    pub fn from_hosts(hosts: HostIndex, services: usize, endpoints: usize) -> Self {
        RouteTable {
            hosts,
            services,
            endpoints,
            ..RouteTable::default()
        }
    }

    /// The routes of one exact host (shared with the tables that have the
    /// same routes for it).
    pub fn host_entry(&self, host: &str) -> Option<&Arc<HostEntry>> {
        self.hosts.exact(host)
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
        self.lookup_query(authority, path, None, method, headers)
    }

    /// [`RouteTable::lookup`] with the request's query string (for Gateway API
    /// `queryParams` matches).
    pub fn lookup_query(
        &self,
        authority: &Authority,
        path: &str,
        query: Option<&str>,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<&Arc<Route>> {
        let first = |routes: &'_ [Arc<Route>]| -> Option<usize> {
            routes
                .iter()
                .position(|r| r.matcher.matches(path, query, method, headers))
        };
        let host = authority.host();
        let port = match authority.port() {
            Some(p) => PortMatch::Port(p),
            None => PortMatch::Absent,
        };
        if let Some(entry) = self.hosts.exact(host) {
            for want in [port, PortMatch::Any] {
                if let Some(rs) = entry.routes(want) {
                    if let Some(i) = first(rs) {
                        return rs.get(i);
                    }
                }
            }
        }
        for (suffix, rs) in self.hosts.wildcards() {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                if let Some(i) = first(rs) {
                    return rs.get(i);
                }
            }
        }
        let any = self.hosts.any();
        first(any).and_then(|i| any.get(i))
    }

    /// Attaches what discovery knows beyond routes: mirror Services and
    /// Services that exist but are not exported.
    pub fn with_discovery_facts(
        mut self,
        mirrors: Arc<[MirrorService]>,
        unexported: Arc<std::collections::HashSet<String>>,
    ) -> Self {
        self.mirrors = mirrors;
        self.unexported = unexported;
        self
    }

    /// The ports an exact host has routes for (for `/explain` to say "this
    /// host, but not this port"); empty when the host has none.
    pub fn ports_of(&self, host: &str) -> Vec<PortMatch> {
        let mut ports: Vec<PortMatch> = self
            .hosts
            .exact(host)
            .map(|e| e.ports().collect())
            .unwrap_or_default();
        ports.sort();
        ports
    }

    /// Mirror Services, by cluster then name.
    pub fn mirrors(&self) -> &[MirrorService] {
        &self.mirrors
    }

    /// Whether `ns/name` is a Service discovery knows that is not exported.
    pub fn is_unexported(&self, namespaced_name: &str) -> bool {
        self.unexported.contains(namespaced_name)
    }

    /// Number of routes.
    pub fn route_count(&self) -> usize {
        self.hosts.route_count()
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
        self.hosts
            .iter()
            .filter(move |r| seen.insert(Arc::as_ptr(r)))
    }

    /// A JSON description of every route, sorted for stable output.
    pub fn describe(&self) -> Value {
        self.page("", 0, usize::MAX)
    }

    /// One page of `/routes`: the routes whose name, hosts or backend
    /// Services contain `filter` (case-insensitive), sorted by host then
    /// name, `limit` of them from `offset`; with the counts of the table and
    /// of the routes that matched (`total`). Only the page is serialised.
    pub fn page(&self, filter: &str, offset: usize, limit: usize) -> Value {
        let needle = filter.to_ascii_lowercase();
        let mut matched: Vec<(String, &Arc<Route>)> = self
            .iter()
            .filter(|r| needle.is_empty() || route_mentions(r, &needle))
            .map(|r| (r.hosts.first().map(host_label).unwrap_or_default(), r))
            .collect();
        matched.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
        let total = matched.len();
        let routes: Vec<Value> = matched
            .iter()
            .skip(offset)
            .take(limit)
            .map(|(_, r)| describe_route(r))
            .collect();
        json!({
            "routes": routes,
            "total": total,
            "offset": offset,
            "limit": limit.min(total),
            "counts": {"routes": self.route_count(), "services": self.services, "endpoints": self.endpoints},
        })
    }
}

/// How `/routes` names one host match.
pub fn host_label(h: &HostMatch) -> String {
    match h {
        HostMatch::Exact(h, PortMatch::Port(p)) => format!("{h}:{p}"),
        HostMatch::Exact(h, PortMatch::Any) => h.to_string(),
        HostMatch::Exact(h, PortMatch::Absent) => format!("{h} (no port)"),
        HostMatch::Wildcard(s) => format!("*{s}"),
        HostMatch::Any => "*".into(),
    }
}

/// A route's match besides the host, in words: `prefix /api (exact), GET, x-env=blue`.
pub fn match_label(m: &RouteMatch) -> String {
    let mut out = format!("prefix {}", m.prefix);
    if m.prefix_exact {
        out.push_str(" (exact)");
    }
    if let Some(method) = &m.method {
        out.push_str(", ");
        out.push_str(method);
    }
    for h in &m.headers {
        out.push_str(&format!(", {}={}", h.name, h.value));
    }
    out
}

/// Whether the route's name, hosts or backends contain `needle` (lower-case).
fn route_mentions(r: &Route, needle: &str) -> bool {
    let has = |s: &str| s.to_ascii_lowercase().contains(needle);
    has(&r.name)
        || r.hosts.iter().any(|h| has(&host_label(h)))
        || r.target.backends.iter().any(|b| has(&b.service))
}

/// Endpoints listed per backend in `/routes`; the counts are always complete.
const LISTED_ENDPOINTS: usize = 20;

/// One route as `/routes` shows it.
pub fn describe_route(r: &Route) -> Value {
    let hosts: Vec<String> = r.hosts.iter().map(host_label).collect();
    let (kind, object) = r.source();
    json!({
        "name": &*r.name,
        "source": format!("{kind} {object}"),
        "host": hosts.first(),
        "hosts": hosts,
        "match": match_label(&r.matcher),
        "prefix": r.matcher.prefix,
        "prefix_exact": r.matcher.prefix_exact,
        "method": r.matcher.method,
        "headers": r.matcher.headers.iter().map(|h| json!({"name": h.name, "value": h.value})).collect::<Vec<_>>(),
        "query": r.matcher.query.iter().map(|h| json!({"name": h.name, "value": h.value})).collect::<Vec<_>>(),
        "path_elements": r.matcher.segment_prefix,
        "allowed_identities": r.authz.describe(),
        "backends": r.target.backends.iter().map(|b| json!({
            "service": &*b.service,
            "weight": b.weight,
            "ready": b.endpoints.len(),
            "total": b.endpoints.len() + b.not_ready(),
            "endpoints": b.endpoints.iter().take(LISTED_ENDPOINTS).map(|e| e.addr.to_string()).collect::<Vec<_>>(),
            "rewrite": b.settings.rewrite,
            "answer": match &b.settings.answer {
                None => None,
                Some(DirectAnswer::InvalidBackend) => Some("500 (backendRef does not resolve)".to_string()),
                Some(DirectAnswer::Redirect(r)) => Some(format!("{} redirect", r.status)),
            },
            "timeout_ms": b.settings.timeout.as_millis() as u64,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests;
