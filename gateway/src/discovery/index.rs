//! The discovery index: watched objects in, route tables out.
//!
//! Pure and synchronous: `apply` / `delete` / `replace` per object kind, then
//! `build` produces an immutable [`RouteTable`]. Converting a Kubernetes object
//! into internal form is a separate fallible step; a malformed object is
//! reported and skipped, never stalling the others.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::crd::Mapping;
use super::httproute::{Gateway, GatewayClass, HttpRoute, ReferenceGrant, ReferenceGrantSpec};
use super::trafficsplit::{Split, TrafficSplit};
use crate::hash::{HashMap, HashSet};
use crate::metrics::ObjectKind;
use crate::routes::{
    Authority, Authorization, Backend, BackendSettings, Endpoint, HeaderMatch, HostIndex,
    HostMatch, IdentityPattern, LbPolicy, MirrorService, PortMatch, Route, RouteMatch, RouteTable,
    RouteTarget,
};
pub use claims::Refusal;
use endpoints::{EndpointPool, Table};
use httproute::{GatewayInfo, HttpRouteEntry};
pub use httproute::{ParentStatus, RouteCondition, RouteStatus};

/// The label that marks a mirror Service (written by Linkerd's service
/// mirror and by `isthmus mirror`).
pub const MIRRORED_SERVICE_LABEL: &str = "mirror.linkerd.io/mirrored-service";
/// The label naming a mirror Service's remote cluster.
pub const CLUSTER_NAME_LABEL: &str = "mirror.linkerd.io/cluster-name";

/// What the index needs from the config.
#[derive(Clone, Debug)]
pub struct IndexConfig {
    /// Cluster DNS domain.
    pub cluster_domain: String,
    /// Label whose value `"true"` exports a Service.
    pub export_label: String,
    /// Namespaces considered; empty means all.
    pub namespaces: Vec<String>,
    /// Global allowed identities (exported Services, Mappings without their own).
    pub allowed: Arc<[IdentityPattern]>,
    /// Upstream defaults.
    pub defaults: BackendSettings,
    /// Also build the egress table (Services, mirrors and splits by their
    /// in-cluster names) on every build.
    pub egress: bool,
}

/// `namespace/name` of an object.
///
/// The parts are shared strings: the index keeps each key in several maps
/// (a Service under its key, its routes, its slices' owner, the egress
/// routes), and a clone is two reference counts, not two allocations.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
}

impl ObjectKey {
    /// Builds a key.
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A watched object.
#[derive(Clone, Debug)]
pub enum Object {
    /// `v1 Service`.
    Service(Box<Service>),
    /// `discovery.k8s.io/v1 EndpointSlice`.
    EndpointSlice(Box<EndpointSlice>),
    /// `isthmus.dev/v1alpha1 Mapping`.
    Mapping(Box<Mapping>),
    /// `split.smi-spec.io TrafficSplit`.
    TrafficSplit(Box<TrafficSplit>),
    /// `gateway.networking.k8s.io/v1 HTTPRoute`.
    HttpRoute(Box<HttpRoute>),
    /// `gateway.networking.k8s.io/v1 Gateway`.
    Gateway(Box<Gateway>),
    /// `gateway.networking.k8s.io/v1 GatewayClass` (cluster-scoped).
    GatewayClass(Box<GatewayClass>),
    /// `gateway.networking.k8s.io/v1beta1 ReferenceGrant`.
    ReferenceGrant(Box<ReferenceGrant>),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Service(_) => ObjectKind::Service,
            Object::EndpointSlice(_) => ObjectKind::EndpointSlice,
            Object::Mapping(_) => ObjectKind::Mapping,
            Object::TrafficSplit(_) => ObjectKind::TrafficSplit,
            Object::HttpRoute(_) => ObjectKind::HttpRoute,
            Object::Gateway(_) => ObjectKind::Gateway,
            Object::GatewayClass(_) => ObjectKind::GatewayClass,
            Object::ReferenceGrant(_) => ObjectKind::ReferenceGrant,
        }
    }

    /// `namespace/name` (namespace `default` when unset, as kubectl does).
    pub fn key(&self) -> ObjectKey {
        let (ns, name) = match self {
            Object::Service(o) => (o.namespace(), o.name_any()),
            Object::EndpointSlice(o) => (o.namespace(), o.name_any()),
            Object::Mapping(o) => (o.namespace(), o.name_any()),
            Object::TrafficSplit(o) => (
                o.metadata.namespace.clone(),
                o.metadata.name.clone().unwrap_or_default(),
            ),
            Object::HttpRoute(o) => (
                o.metadata.namespace.clone(),
                o.metadata.name.clone().unwrap_or_default(),
            ),
            Object::Gateway(o) => (
                o.metadata.namespace.clone(),
                o.metadata.name.clone().unwrap_or_default(),
            ),
            Object::ReferenceGrant(o) => (
                o.metadata.namespace.clone(),
                o.metadata.name.clone().unwrap_or_default(),
            ),
            // Cluster-scoped: the empty namespace.
            Object::GatewayClass(o) => (
                Some(String::new()),
                o.metadata.name.clone().unwrap_or_default(),
            ),
        };
        ObjectKey {
            namespace: ns.as_deref().unwrap_or("default").into(),
            name: name.into(),
        }
    }
}

/// An object that was refused, with a reason a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {key}: {reason}")]
pub struct ObjectError {
    /// `Service`, `EndpointSlice` or `Mapping`.
    pub kind: &'static str,
    /// The object.
    pub key: ObjectKey,
    /// Why it was refused.
    pub reason: String,
}

/// Whether a Mapping was accepted, for its status condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingState {
    /// `metadata.generation` the state was computed from.
    pub generation: Option<i64>,
    /// `Ok` when accepted, else the message.
    pub accepted: Result<(), String>,
    /// The condition reason: `Accepted`, `Invalid`, or a [`Refusal`]'s
    /// (`HostnameNotOwned`, `RefNotPermitted`).
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq)]
enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, PartialEq)]
struct ServicePort {
    name: String,
    port: u16,
    target: TargetPort,
    /// `appProtocol` says HTTP/2 with prior knowledge (see [`is_h2_app_protocol`]).
    h2: bool,
}

/// Whether a Service port's `appProtocol` means HTTP/2 without TLS:
/// `kubernetes.io/h2c` (KEP-3726), or gRPC (`grpc`, `kubernetes.io/grpc`).
fn is_h2_app_protocol(p: &str) -> bool {
    matches!(
        p.to_ascii_lowercase().as_str(),
        "kubernetes.io/h2c" | "h2c" | "grpc" | "kubernetes.io/grpc"
    )
}

#[derive(Clone, Debug, PartialEq)]
struct ServiceInfo {
    /// `<name>.<ns>.svc.<cluster domain>`: one allocation shared by the
    /// Service's ingress and egress routes and both host indexes.
    fqdn: Arc<str>,
    exported: bool,
    ports: Vec<ServicePort>,
    /// `mirror.linkerd.io/cluster-name` of a mirror Service.
    mirror_cluster: Option<String>,
    /// Set on a mirror Service (`mirror.linkerd.io/mirrored-service: "true"`).
    mirror: Option<MirrorInfo>,
}

/// What a mirror Service's annotations say of its remote side.
#[derive(Clone, Debug, PartialEq)]
struct MirrorInfo {
    /// `mirror.linkerd.io/remote-svc-fq-name`.
    fq_name: String,
    /// `mirror.linkerd.io/remote-gateway-identity`.
    identity: Arc<str>,
    /// `mirror.linkerd.io/cluster-name`.
    cluster: Arc<str>,
}

#[derive(Clone, Debug, PartialEq)]
struct SliceInfo {
    service: ObjectKey,
    /// `(port name, port number)`; an empty name matches an unnamed Service port.
    ports: Vec<(String, Option<u16>)>,
    ready: Vec<IpAddr>,
    /// Addresses listed with `conditions.ready: false` (counted, never routed).
    not_ready: Vec<IpAddr>,
}

#[derive(Clone, Debug)]
struct ServiceRef {
    key: ObjectKey,
    port: Option<u16>,
}

#[derive(Clone, Debug)]
struct MappingRoute {
    host: HostMatch,
    matcher: RouteMatch,
    service: ServiceRef,
    weight: Option<u32>,
    settings: Arc<BackendSettings>,
    allowed: Option<Arc<[IdentityPattern]>>,
}

#[derive(Clone, Debug)]
struct MappingEntry {
    generation: Option<i64>,
    route: Result<MappingRoute, String>,
}

impl MappingEntry {
    /// The group an accepted Mapping joins: Mappings with the same host and
    /// match form one route.
    fn group(&self) -> Option<(GroupKey, &ObjectKey)> {
        let m = self.route.as_ref().ok()?;
        Some(((m.host.clone(), m.matcher.clone()), &m.service.key))
    }
}

/// The host and match a group of Mappings shares.
type GroupKey = (HostMatch, RouteMatch);

/// The route of a group of Mappings, and its backends that no Service
/// route covers (counted as Services of their own).
struct GroupRoute {
    route: Arc<Route>,
    uncovered: Vec<Arc<str>>,
}

/// The ingress routes as a host index (shared with the published tables),
/// with the endpoints they hold and the route names gone since the last
/// publish (whose metric series go too).
#[derive(Default)]
struct IngressRoutes {
    hosts: HostIndex,
    names: HashMap<Arc<str>, usize>,
    gone: Vec<Arc<str>>,
}

impl IngressRoutes {
    fn add(&mut self, route: &Arc<Route>, pool: &mut EndpointPool) {
        pool.hold(route, Table::Ingress);
        self.hosts.insert(route);
        *self.names.entry(route.name.clone()).or_default() += 1;
    }

    fn remove(&mut self, route: &Arc<Route>, pool: &mut EndpointPool) {
        pool.release(route, Table::Ingress);
        self.hosts.remove(route);
        if let Some(n) = self.names.get_mut(&route.name) {
            *n -= 1;
            if *n == 0 {
                self.names.remove(&route.name);
                self.gone.push(route.name.clone());
            }
        }
    }
}

/// An object in the index's compact form (see [`Index::convert`]).
#[derive(Debug)]
pub struct Converted {
    key: ObjectKey,
    item: Option<Item>,
    /// Parts of the object left out (an EndpointSlice's refused addresses).
    refused: Vec<String>,
}

#[derive(Debug)]
enum Item {
    Service(ServiceInfo),
    Slice(SliceInfo),
    Mapping(MappingEntry),
    Split(Result<Split, String>),
    HttpRoute(HttpRouteEntry),
    Gateway(GatewayInfo),
    /// Whether the class is Isthmus's.
    GatewayClass(bool),
    Grant(ReferenceGrantSpec),
}

impl Converted {
    /// The object's key.
    pub fn key(&self) -> &ObjectKey {
        &self.key
    }

    /// Why a converted Mapping is not accepted, if it is not; what an
    /// EndpointSlice had refused (its other endpoints are kept).
    pub fn error(&self) -> Option<ObjectError> {
        match &self.item {
            Some(Item::Mapping(MappingEntry {
                route: Err(reason), ..
            })) => Some(ObjectError {
                kind: "Mapping",
                key: self.key.clone(),
                reason: reason.clone(),
            }),
            Some(Item::HttpRoute(HttpRouteEntry {
                spec: Err(reason), ..
            })) => Some(ObjectError {
                kind: "HTTPRoute",
                key: self.key.clone(),
                reason: reason.clone(),
            }),
            Some(Item::HttpRoute(HttpRouteEntry { spec: Ok(s), .. })) => {
                s.rules.as_ref().err().map(|reason| ObjectError {
                    kind: "HTTPRoute",
                    key: self.key.clone(),
                    reason: reason.clone(),
                })
            }
            Some(Item::Split(Err(reason))) => Some(ObjectError {
                kind: "TrafficSplit",
                key: self.key.clone(),
                reason: reason.clone(),
            }),
            Some(Item::Slice(_)) if !self.refused.is_empty() => Some(ObjectError {
                kind: "EndpointSlice",
                key: self.key.clone(),
                reason: format!(
                    "{}; refused, the other endpoints are kept",
                    self.refused.join(", ")
                ),
            }),
            _ => None,
        }
    }
}

/// The pure index of Services, EndpointSlices and Mappings.
pub struct Index {
    cfg: IndexConfig,
    services: HashMap<ObjectKey, ServiceInfo>,
    slices: HashMap<ObjectKey, SliceInfo>,
    mappings: BTreeMap<ObjectKey, MappingEntry>,
    /// TrafficSplits (egress split roots); invalid ones kept with their reason.
    splits: BTreeMap<ObjectKey, Result<Split, String>>,
    /// The egress table of the last [`Index::build`], when egress is on.
    egress_table: Option<RouteTable>,
    /// The egress routes, the split roots they were built with, and the
    /// problems each root's split had.
    egress: egress::EgressRoutes,
    egress_roots: BTreeMap<ObjectKey, (ObjectKey, Split)>,
    /// The Mapping groups that split a root (see `egress.rs`).
    mapping_splits: egress::MappingSplits,
    root_problems: HashMap<ObjectKey, BTreeMap<egress::ProblemKey, String>>,
    /// Split problems found by builds, by object, and which were reported.
    split_problems: BTreeMap<egress::ProblemKey, String>,
    reported_splits: BTreeMap<egress::ProblemKey, String>,
    /// EndpointSlices by the Service they belong to.
    slices_of: HashMap<ObjectKey, Vec<ObjectKey>>,
    /// Endpoint objects shared across builds so in-flight counts survive.
    endpoints: EndpointPool,
    /// The routes of each exported Service, kept until the Service or one of
    /// its EndpointSlices changes: one endpoint change among 100,000 Services
    /// rebuilds one Service's routes and re-indexes its host, nothing else.
    service_routes: HashMap<ObjectKey, Vec<Arc<Route>>>,
    /// Service port routes in `service_routes`.
    service_route_count: usize,
    /// Services (existing or not) changed since the last build.
    stale: HashSet<ObjectKey>,
    /// Accepted Mappings by group, and by the Service they send to.
    groups: HashMap<GroupKey, BTreeSet<ObjectKey>>,
    mappings_of: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// The route of each group of Mappings, and the groups to rebuild.
    group_routes: HashMap<GroupKey, GroupRoute>,
    stale_groups: HashSet<GroupKey>,
    /// Backend labels of Mapping routes no Service route covers, with the
    /// number of times groups list each.
    mapping_only: HashMap<Arc<str>, usize>,
    /// The HTTPRoute routes, the Services they name, and whether an input
    /// changed since they were built.
    httproute_routes: Vec<Arc<Route>>,
    httproute_refs: HashSet<ObjectKey>,
    httproutes_dirty: bool,
    /// Every ingress route, by host.
    ingress: IngressRoutes,
    /// Mirror Services for the table (see [`RouteTable::mirrors`]), rebuilt
    /// only when a Service or a mirror's EndpointSlice changed.
    mirrors: Arc<[MirrorService]>,
    mirrors_dirty: bool,
    /// Known, not exported Services (`ns/name`), rebuilt only when a Service changed.
    unexported: Arc<std::collections::HashSet<String>>,
    unexported_dirty: bool,
    /// HTTPRoutes, Gateways and GatewayClasses (name → Isthmus's).
    httproutes: BTreeMap<ObjectKey, HttpRouteEntry>,
    gateways: BTreeMap<ObjectKey, GatewayInfo>,
    gateway_classes: BTreeMap<String, bool>,
    /// HTTPRoute statuses of the last build.
    route_statuses: BTreeMap<ObjectKey, RouteStatus>,
    /// ReferenceGrants (their specs), by `namespace/name`.
    grants: BTreeMap<ObjectKey, ReferenceGrantSpec>,
    /// Mappings the last build refused by the claim rules (`claims.rs`), and
    /// which of those were reported.
    refusals: BTreeMap<ObjectKey, Refusal>,
    reported_refusals: BTreeMap<ObjectKey, Refusal>,
    /// Namespace names, one allocation each for the keys of every Service
    /// and EndpointSlice in them; pruned of unused ones as it doubles.
    namespaces: HashSet<Arc<str>>,
    namespaces_pruned_at: usize,
}

impl Index {
    /// An empty index.
    pub fn new(cfg: IndexConfig) -> Self {
        Index {
            cfg,
            services: HashMap::default(),
            slices: HashMap::default(),
            mappings: BTreeMap::new(),
            splits: BTreeMap::new(),
            egress_table: None,
            egress: egress::EgressRoutes::default(),
            egress_roots: BTreeMap::new(),
            mapping_splits: egress::MappingSplits::default(),
            root_problems: HashMap::default(),
            split_problems: BTreeMap::new(),
            reported_splits: BTreeMap::new(),
            slices_of: HashMap::default(),
            endpoints: EndpointPool::default(),
            service_routes: HashMap::default(),
            service_route_count: 0,
            stale: HashSet::default(),
            groups: HashMap::default(),
            mappings_of: HashMap::default(),
            group_routes: HashMap::default(),
            stale_groups: HashSet::default(),
            mapping_only: HashMap::default(),
            httproute_routes: Vec::new(),
            httproute_refs: HashSet::default(),
            httproutes_dirty: false,
            ingress: IngressRoutes::default(),
            mirrors: Arc::from(Vec::new()),
            mirrors_dirty: false,
            unexported: Arc::default(),
            unexported_dirty: false,
            httproutes: BTreeMap::new(),
            gateways: BTreeMap::new(),
            gateway_classes: BTreeMap::new(),
            route_statuses: BTreeMap::new(),
            grants: BTreeMap::new(),
            refusals: BTreeMap::new(),
            reported_refusals: BTreeMap::new(),
            namespaces: HashSet::default(),
            namespaces_pruned_at: 0,
        }
    }

    /// Marks the mirror list out of date when `service` is a mirror Service.
    fn touch_slice_of(&mut self, service: &ObjectKey) {
        if self
            .services
            .get(service)
            .is_some_and(|s| s.mirror_cluster.is_some())
        {
            self.mirrors_dirty = true;
        }
    }

    /// Rebuilds the mirror and not-exported lists if their inputs changed.
    fn refresh_facts(&mut self) {
        if self.unexported_dirty {
            self.unexported_dirty = false;
            self.unexported = Arc::new(
                self.services
                    .iter()
                    .filter(|(_, s)| !s.exported)
                    .map(|(k, _)| k.to_string())
                    .collect(),
            );
        }
        if self.mirrors_dirty {
            self.mirrors_dirty = false;
            type Seen = (Vec<IpAddr>, usize);
            let mut by_service: BTreeMap<(&str, &ObjectKey), Seen> = self
                .services
                .iter()
                .filter_map(|(k, s)| Some(((s.mirror_cluster.as_deref()?, k), Seen::default())))
                .collect();
            for ((_, service), (ready, not_ready)) in by_service.iter_mut() {
                let slices = self.slices_of.get(*service).into_iter().flatten();
                for slice in slices.filter_map(|k| self.slices.get(k)) {
                    ready.extend(&slice.ready);
                    *not_ready += slice.not_ready.len();
                }
            }
            let mut cluster_names: HashMap<&str, Arc<str>> = HashMap::default();
            self.mirrors = by_service
                .into_iter()
                .map(|((cluster, key), (mut ready, not_ready))| {
                    ready.sort();
                    ready.dedup();
                    MirrorService {
                        cluster: cluster_names
                            .entry(cluster)
                            .or_insert_with(|| cluster.into())
                            .clone(),
                        service: key.to_string(),
                        ready,
                        not_ready,
                    }
                })
                .collect();
        }
    }

    fn namespace_allowed(&self, ns: &str) -> bool {
        self.cfg.namespaces.is_empty() || self.cfg.namespaces.iter().any(|n| n == ns)
    }

    /// Converts an object into the index's compact form: the fallible step,
    /// separate so a relist can convert objects as they arrive instead of
    /// buffering whole Kubernetes objects. Objects outside the configured
    /// namespaces convert to nothing. A malformed Service or EndpointSlice is an
    /// error; an invalid Mapping converts (as not accepted, so its status can say
    /// why) and carries its error in [`Converted::error`].
    pub fn convert(&self, obj: &Object) -> Result<Converted, ObjectError> {
        let key = obj.key();
        let err = |kind: &'static str, reason: String| ObjectError {
            kind,
            key: key.clone(),
            reason,
        };
        let mut refused = Vec::new();
        let cluster_scoped = matches!(obj, Object::GatewayClass(_));
        let item = if !cluster_scoped && !self.namespace_allowed(&key.namespace) {
            None
        } else {
            Some(match obj {
                Object::Service(svc) => {
                    let info = convert_service(svc, &key, &self.cfg);
                    Item::Service(info.map_err(|r| err("Service", r))?)
                }
                Object::EndpointSlice(slice) => {
                    let (info, left_out) =
                        convert_slice(slice, &key).map_err(|r| err("EndpointSlice", r))?;
                    refused = left_out;
                    Item::Slice(info)
                }
                Object::Mapping(m) => Item::Mapping(MappingEntry {
                    generation: m.metadata.generation,
                    route: convert_mapping(m, &key, &self.cfg),
                }),
                Object::TrafficSplit(t) => Item::Split(t.split()),
                Object::HttpRoute(r) => Item::HttpRoute(HttpRouteEntry {
                    generation: r.metadata.generation,
                    spec: r.convert(&key.namespace),
                }),
                Object::Gateway(g) => Item::Gateway(GatewayInfo {
                    class: g.spec.gateway_class_name.clone(),
                    listeners: g.spec.listeners.clone(),
                }),
                Object::GatewayClass(c) => Item::GatewayClass(c.is_ours()),
                Object::ReferenceGrant(g) => Item::Grant(g.spec.clone()),
            })
        };
        Ok(Converted { key, item, refused })
    }

    /// An object the source could not even decode into its type: the error
    /// to report, and for a Mapping its compact form as not accepted (so its
    /// status can say why and an earlier version stops routing).
    pub fn undecodable(
        &self,
        kind: ObjectKind,
        key: ObjectKey,
        generation: Option<i64>,
        reason: String,
    ) -> (Option<Converted>, ObjectError) {
        let error = ObjectError {
            kind: kind.object_kind(),
            key: key.clone(),
            reason: reason.clone(),
        };
        let converted = (kind == ObjectKind::Mapping && self.namespace_allowed(&key.namespace))
            .then(|| Converted {
                key,
                item: Some(Item::Mapping(MappingEntry {
                    generation,
                    route: Err(reason),
                })),
                refused: Vec::new(),
            });
        (converted, error)
    }

    /// Adds or replaces an object already converted (see [`Index::convert`]).
    pub fn apply_converted(&mut self, c: Converted) {
        self.insert(c);
    }

    /// The shared allocation of namespace `ns`.
    fn namespace(&mut self, ns: &Arc<str>) -> Arc<str> {
        if let Some(n) = self.namespaces.get(ns) {
            return n.clone();
        }
        if self.namespaces.len() >= 2 * self.namespaces_pruned_at.max(64) {
            self.namespaces.retain(|n| Arc::strong_count(n) > 1);
            self.namespaces_pruned_at = self.namespaces.len();
        }
        self.namespaces.insert(ns.clone());
        ns.clone()
    }

    fn insert(&mut self, mut c: Converted) {
        match &mut c.item {
            Some(Item::Service(_)) => c.key.namespace = self.namespace(&c.key.namespace),
            Some(Item::Slice(info)) => {
                c.key.namespace = self.namespace(&c.key.namespace);
                info.service.namespace = c.key.namespace.clone();
            }
            _ => {}
        }
        match c.item {
            None => {}
            Some(Item::Service(info)) if self.services.get(&c.key) != Some(&info) => {
                self.stale.insert(c.key.clone());
                let old = self.services.get(&c.key);
                // The lists change only when a Service joins or leaves them.
                let was_unexported = old.is_some_and(|o| !o.exported);
                let is_unexported = !info.exported;
                self.unexported_dirty |= was_unexported != is_unexported;
                self.mirrors_dirty |= info.mirror_cluster.is_some()
                    || old.is_some_and(|o| o.mirror_cluster.is_some());
                self.services.insert(c.key, info);
            }
            Some(Item::Service(_)) => {}
            Some(Item::Slice(info)) => {
                let old = self.slices.get(&c.key);
                if old != Some(&info) {
                    if let Some(old) = old.map(|o| o.service.clone()) {
                        self.touch_slice_of(&old);
                        self.unlink_slice(&c.key, &old);
                        self.stale.insert(old);
                    }
                    self.touch_slice_of(&info.service);
                    self.stale.insert(info.service.clone());
                    // Most Services have one slice: exact growth (a pushed
                    // `Vec` would keep room for four keys each).
                    let keys = self.slices_of.entry(info.service.clone()).or_default();
                    keys.reserve_exact(1);
                    keys.push(c.key.clone());
                    self.slices.insert(c.key, info);
                }
            }
            Some(Item::Mapping(entry)) => {
                self.unlink_mapping(&c.key);
                if let Some((group, service)) = entry.group() {
                    self.mappings_of
                        .entry(service.clone())
                        .or_default()
                        .insert(c.key.clone());
                    self.groups
                        .entry(group.clone())
                        .or_default()
                        .insert(c.key.clone());
                    self.stale_groups.insert(group);
                }
                self.mappings.insert(c.key, entry);
            }
            Some(Item::Split(split)) => {
                self.splits.insert(c.key, split);
            }
            Some(Item::HttpRoute(entry)) => {
                self.httproutes_dirty = true;
                self.httproutes.insert(c.key, entry);
            }
            Some(Item::Gateway(info)) => {
                self.httproutes_dirty = true;
                self.gateways.insert(c.key, info);
            }
            Some(Item::GatewayClass(ours)) => {
                self.httproutes_dirty = true;
                self.gateway_classes.insert(c.key.name.to_string(), ours);
            }
            Some(Item::Grant(spec)) if self.grants.get(&c.key) != Some(&spec) => {
                self.grants.insert(c.key, spec);
                self.grants_changed();
            }
            Some(Item::Grant(_)) => {}
        }
    }

    fn remove(&mut self, kind: ObjectKind, key: &ObjectKey) {
        match kind {
            ObjectKind::Service => {
                if let Some(old) = self.services.remove(key) {
                    self.stale.insert(key.clone());
                    self.unexported_dirty |= !old.exported;
                    self.mirrors_dirty |= old.mirror_cluster.is_some();
                }
            }
            ObjectKind::EndpointSlice => {
                if let Some(old) = self.slices.remove(key) {
                    self.touch_slice_of(&old.service);
                    self.unlink_slice(key, &old.service);
                    self.stale.insert(old.service);
                }
            }
            ObjectKind::Mapping => {
                self.unlink_mapping(key);
                self.mappings.remove(key);
            }
            ObjectKind::TrafficSplit => {
                self.splits.remove(key);
            }
            ObjectKind::HttpRoute => {
                self.httproutes_dirty |= self.httproutes.remove(key).is_some();
            }
            ObjectKind::Gateway => {
                self.httproutes_dirty |= self.gateways.remove(key).is_some();
            }
            ObjectKind::GatewayClass => {
                self.httproutes_dirty |= self.gateway_classes.remove(&*key.name).is_some();
            }
            ObjectKind::ReferenceGrant => {
                if self.grants.remove(key).is_some() {
                    self.grants_changed();
                }
            }
            ObjectKind::File => {}
        }
    }

    /// A grant came, changed or went: every Mapping group and the HTTPRoutes
    /// are checked again (grants are few and rarely change).
    fn grants_changed(&mut self) {
        self.stale_groups.extend(self.groups.keys().cloned());
        self.httproutes_dirty = true;
    }

    /// Forgets that slice `key` belongs to `service`.
    fn unlink_slice(&mut self, key: &ObjectKey, service: &ObjectKey) {
        if let Some(keys) = self.slices_of.get_mut(service) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.slices_of.remove(service);
            }
        }
    }

    /// Takes Mapping `key` (as held now) out of its group, whose route is
    /// then rebuilt.
    fn unlink_mapping(&mut self, key: &ObjectKey) {
        let Some((group, service)) = self.mappings.get(key).and_then(MappingEntry::group) else {
            return;
        };
        if let Some(keys) = self.mappings_of.get_mut(service) {
            keys.remove(key);
            if keys.is_empty() {
                self.mappings_of.remove(service);
            }
        }
        if let Some(keys) = self.groups.get_mut(&group) {
            keys.remove(key);
            if keys.is_empty() {
                self.groups.remove(&group);
            }
        }
        self.stale_groups.insert(group);
    }

    /// Adds or replaces an object. A Service or EndpointSlice that cannot be
    /// converted keeps its previous version; an invalid Mapping is kept as
    /// not accepted (no route) so its status can say why.
    pub fn apply(&mut self, obj: &Object) -> Result<(), ObjectError> {
        let c = self.convert(obj)?;
        let error = c.error();
        self.insert(c);
        error.map_or(Ok(()), Err)
    }

    /// Removes an object.
    pub fn delete(&mut self, kind: ObjectKind, key: &ObjectKey) {
        self.remove(kind, key);
    }

    /// Replaces every object of `kind` (in `namespace`, or everywhere when
    /// `None`) with `objects` (a relist): objects absent from the list are gone
    /// afterwards. Returns the objects that were refused.
    pub fn replace(
        &mut self,
        kind: ObjectKind,
        namespace: Option<&str>,
        objects: &[Object],
    ) -> Vec<ObjectError> {
        let mut errors = Vec::new();
        let mut converted = Vec::new();
        for o in objects.iter().filter(|o| o.kind() == kind) {
            match self.convert(o) {
                Ok(c) => {
                    errors.extend(c.error());
                    converted.push(c);
                }
                Err(e) => errors.push(e),
            }
        }
        self.replace_converted(kind, namespace, converted);
        errors
    }

    /// [`Index::replace`] with objects already converted (errors already reported).
    pub fn replace_converted(
        &mut self,
        kind: ObjectKind,
        namespace: Option<&str>,
        objects: Vec<Converted>,
    ) {
        // Remove what the list no longer holds; unchanged objects stay as they
        // are, so their cached routes survive the relist.
        let listed: HashSet<&ObjectKey> = objects.iter().map(|c| &c.key).collect();
        let gone =
            |k: &&ObjectKey| namespace.is_none_or(|ns| *k.namespace == *ns) && !listed.contains(*k);
        let gone: Vec<ObjectKey> = match kind {
            ObjectKind::Service => self.services.keys().filter(gone).cloned().collect(),
            ObjectKind::EndpointSlice => self.slices.keys().filter(gone).cloned().collect(),
            ObjectKind::Mapping => self.mappings.keys().filter(gone).cloned().collect(),
            ObjectKind::TrafficSplit => self.splits.keys().filter(gone).cloned().collect(),
            ObjectKind::HttpRoute => self.httproutes.keys().filter(gone).cloned().collect(),
            ObjectKind::Gateway => self.gateways.keys().filter(gone).cloned().collect(),
            ObjectKind::ReferenceGrant => self.grants.keys().filter(gone).cloned().collect(),
            ObjectKind::GatewayClass => self
                .gateway_classes
                .keys()
                .map(|n| ObjectKey::new("", n))
                .filter(|k| !listed.contains(k))
                .collect(),
            ObjectKind::File => Vec::new(),
        };
        drop(listed);
        for key in &gone {
            self.remove(kind, key);
        }
        for c in objects {
            self.insert(c);
        }
    }

    /// Replaces every object of every kind (the file source's reload).
    pub fn replace_all(&mut self, objects: &[Object]) -> Vec<ObjectError> {
        [
            ObjectKind::Service,
            ObjectKind::EndpointSlice,
            ObjectKind::Mapping,
            ObjectKind::TrafficSplit,
            ObjectKind::HttpRoute,
            ObjectKind::Gateway,
            ObjectKind::GatewayClass,
            ObjectKind::ReferenceGrant,
        ]
        .into_iter()
        .flat_map(|k| self.replace(k, None, objects))
        .collect()
    }

    /// Objects held, by kind (for the admin page).
    pub fn object_counts(&self) -> super::ObjectCounts {
        super::ObjectCounts {
            services: self.services.len(),
            endpoint_slices: self.slices.len(),
            mappings: self.mappings.len(),
        }
    }

    /// Acceptance of every Mapping, for status write-back (the claim rules'
    /// verdicts as of the last build).
    pub fn mapping_states(&self) -> impl Iterator<Item = (&ObjectKey, MappingState)> {
        self.mappings.iter().map(|(k, e)| {
            let (accepted, reason) = match (&e.route, self.refusals.get(k)) {
                (Err(why), _) => (Err(why.clone()), "Invalid"),
                (Ok(_), Some(r)) => (Err(r.to_string()), r.reason()),
                (Ok(_), None) => (Ok(()), "Accepted"),
            };
            (
                k,
                MappingState {
                    generation: e.generation,
                    accepted,
                    reason,
                },
            )
        })
    }

    /// Mappings refused by the claim rules since the last call (each reported
    /// once, and again only when its refusal changes).
    pub fn take_mapping_refusals(&mut self) -> Vec<ObjectError> {
        let new = self
            .refusals
            .iter()
            .filter(|(k, r)| self.reported_refusals.get(*k) != Some(*r))
            .map(|(k, r)| ObjectError {
                kind: "Mapping",
                key: k.clone(),
                reason: r.to_string(),
            })
            .collect();
        self.reported_refusals = self.refusals.clone();
        new
    }

    /// The claim rules' verdict on Mapping `key` (`claims.rs`): hostnames of
    /// other namespaces' Services, and Services of other namespaces without
    /// a ReferenceGrant, are refused.
    fn claim(&self, key: &ObjectKey, m: &MappingRoute) -> Result<(), Refusal> {
        claims::check_mapping(
            &key.namespace,
            &m.host,
            &m.service.key,
            &self.cfg.cluster_domain,
            &self.grants,
        )
    }

    /// What each HTTPRoute's status should say, as of the last build.
    pub fn httproute_states(&self) -> impl Iterator<Item = (&ObjectKey, &RouteStatus)> {
        self.route_statuses.iter()
    }

    /// Builds the route table for the current objects. Only what changed
    /// since the last build is rebuilt: the routes of changed Services (a
    /// Service, or one of its EndpointSlices), the groups of Mappings that
    /// changed or send to a changed Service, and the HTTPRoute routes when
    /// an HTTPRoute, Gateway or a Service they name changed; each re-indexes
    /// its own hosts only. The table shares every other host with the last one.
    pub fn build(&mut self) -> RouteTable {
        // The claim rules first: a refused Mapping joins no route. A verdict
        // changes only with its Mapping (whose group is then stale) or with
        // a grant (every group is).
        self.refusals = self
            .mappings
            .iter()
            .filter_map(|(k, e)| {
                let m = e.route.as_ref().ok()?;
                self.claim(k, m).err().map(|r| (k.clone(), r))
            })
            .collect();
        // Taken, not drained: after the initial sync the set held every
        // Service, and its capacity would stay.
        let stale: Vec<ObjectKey> = std::mem::take(&mut self.stale).into_iter().collect();
        let changed = if self.cfg.egress {
            stale.clone()
        } else {
            Vec::new()
        };
        for key in &stale {
            for m in self.mappings_of.get(key).into_iter().flatten() {
                if let Some((group, _)) = self.mappings.get(m).and_then(MappingEntry::group) {
                    self.stale_groups.insert(group);
                }
            }
            self.httproutes_dirty |= self.httproute_refs.contains(key);
        }
        let mut resolver = Resolver {
            services: &self.services,
            slices: &self.slices,
            slices_of: &self.slices_of,
            endpoints: &mut self.endpoints,
        };
        // Implicit Service routes pass WebSocket upgrades through.
        let defaults = Arc::new(BackendSettings {
            allow_upgrade: vec!["websocket".into()],
            ..self.cfg.defaults.clone()
        });
        let defaults_h2 = Arc::new(BackendSettings {
            upstream_h2: true,
            ..(*defaults).clone()
        });
        let defaults = [defaults, defaults_h2];

        // Implicit routes: every port of every exported Service. New routes
        // go in before the old ones leave, so shared endpoints stay pooled.
        for key in stale {
            let routes = match self.services.get(&key) {
                Some(svc) if svc.exported => {
                    service_routes(&key, svc, &self.cfg, &defaults, &mut resolver)
                }
                _ => Vec::new(),
            };
            for r in &routes {
                self.ingress.add(r, resolver.endpoints);
            }
            self.service_route_count += routes.len();
            let old = if routes.is_empty() {
                self.service_routes.remove(&key)
            } else {
                self.service_routes.insert(key, routes)
            };
            for r in old.into_iter().flatten() {
                self.service_route_count -= 1;
                self.ingress.remove(&r, resolver.endpoints);
            }
        }

        // Mapping routes of the groups that changed (the egress table has
        // Mapping splits too).
        let changed_groups: Vec<GroupKey> = if self.cfg.egress {
            self.stale_groups.iter().cloned().collect()
        } else {
            Vec::new()
        };
        for group in std::mem::take(&mut self.stale_groups) {
            let new = self.groups.get(&group).and_then(|members| {
                mapping_route(
                    members,
                    &self.mappings,
                    &self.refusals,
                    &self.service_routes,
                    &self.cfg,
                    &mut resolver,
                )
            });
            if let Some(g) = &new {
                self.ingress.add(&g.route, resolver.endpoints);
                for label in &g.uncovered {
                    *self.mapping_only.entry(label.clone()).or_default() += 1;
                }
            }
            let old = match new {
                Some(g) => self.group_routes.insert(group, g),
                None => self.group_routes.remove(&group),
            };
            if let Some(g) = old {
                self.ingress.remove(&g.route, resolver.endpoints);
                for label in &g.uncovered {
                    if let Some(n) = self.mapping_only.get_mut(label) {
                        *n -= 1;
                        if *n == 0 {
                            self.mapping_only.remove(label);
                        }
                    }
                }
            }
        }

        // HTTPRoute routes (and the status each should carry).
        let httproutes_rebuilt = std::mem::take(&mut self.httproutes_dirty);
        if httproutes_rebuilt {
            let view = httproute::GatewayView {
                cfg: &self.cfg,
                services: &self.services,
                httproutes: &self.httproutes,
                gateways: &self.gateways,
                gateway_classes: &self.gateway_classes,
                grants: &self.grants,
            };
            let mut routes = Vec::new();
            self.route_statuses = view.build(&mut resolver, &mut routes);
            for r in &routes {
                self.ingress.add(r, resolver.endpoints);
            }
            for r in std::mem::replace(&mut self.httproute_routes, routes) {
                self.ingress.remove(&r, resolver.endpoints);
            }
        }
        if httproutes_rebuilt {
            self.httproute_refs = self.httproute_services().collect();
        }
        if self.cfg.egress {
            self.egress_table = Some(self.build_egress(&changed, &changed_groups));
        }
        self.endpoints.sweep();
        // Each Service port route is one backend; Mapping backends add the
        // Service ports no Service route covers (non-exported or portless).
        let services = self.service_route_count + self.mapping_only.len();
        self.refresh_facts();
        RouteTable::from_hosts(
            self.ingress.hosts.clone(),
            services,
            self.endpoints.ingress_used(),
        )
        .with_discovery_facts(self.mirrors.clone(), self.unexported.clone())
    }

    /// Names of routes gone from the table since the last call (their
    /// metric series can go too).
    pub fn take_gone_routes(&mut self) -> Vec<Arc<str>> {
        let mut gone = std::mem::take(&mut self.ingress.gone);
        gone.retain(|n| !self.ingress.names.contains_key(n));
        gone.sort();
        gone.dedup();
        gone
    }
}

/// The implicit routes of an exported Service: one per port, by its
/// cluster name with that port (and without one when it is the only port).
fn service_routes(
    key: &ObjectKey,
    svc: &ServiceInfo,
    cfg: &IndexConfig,
    [defaults, defaults_h2]: &[Arc<BackendSettings>; 2],
    resolver: &mut Resolver<'_>,
) -> Vec<Arc<Route>> {
    let fqdn = &svc.fqdn;
    svc.ports
        .iter()
        .map(|port| {
            let hosts = port_hosts(fqdn, port.port, svc.ports.len() == 1);
            let (label, eps, not_ready) = resolver.resolve(&ServiceRef {
                key: key.clone(),
                port: Some(port.port),
            });
            let settings = if port.h2 { defaults_h2 } else { defaults };
            Arc::new(Route {
                name: format!("service/{}/{}:{}", key.namespace, key.name, port.port).into(),
                hosts,
                matcher: RouteMatch::shared_any(),
                authz: Authorization::new(cfg.allowed.clone()),
                target: RouteTarget::new(vec![
                    Backend::new(label, 1, eps, settings.clone()).with_not_ready(not_ready)
                ]),
            })
        })
        .collect()
}

/// The hosts of a Service's route on `port`: `fqdn:port`, and `fqdn`
/// without a port when it is the Service's only port (sized exactly: held
/// by every Service route).
fn port_hosts(fqdn: &Arc<str>, port: u16, single_port: bool) -> Vec<HostMatch> {
    let mut hosts = Vec::with_capacity(if single_port { 2 } else { 1 });
    hosts.push(HostMatch::Exact(fqdn.clone(), PortMatch::Port(port)));
    if single_port {
        hosts.push(HostMatch::Exact(fqdn.clone(), PortMatch::Absent));
    }
    hosts
}

/// Where Mappings become a route: the accepted Mappings of one group (same
/// host and match, in key order) form one weighted route (Emissary's
/// traffic-split semantics), named after the first. `None` when no member
/// is left.
fn mapping_route(
    members: &BTreeSet<ObjectKey>,
    mappings: &BTreeMap<ObjectKey, MappingEntry>,
    refused: &BTreeMap<ObjectKey, Refusal>,
    service_routes: &HashMap<ObjectKey, Vec<Arc<Route>>>,
    cfg: &IndexConfig,
    resolver: &mut Resolver<'_>,
) -> Option<GroupRoute> {
    let members: Vec<(&ObjectKey, &MappingRoute)> = members
        .iter()
        .filter(|k| !refused.contains_key(*k))
        .filter_map(|k| Some((k, mappings.get(k)?.route.as_ref().ok()?)))
        .collect();
    let (first, head) = *members.first()?;
    let weights = split_weights(members.iter().map(|(_, m)| m.weight));
    let mut authz = Authorization::default();
    let mut backends = Vec::with_capacity(members.len());
    let mut uncovered = Vec::new();
    for ((_, m), weight) in members.iter().zip(weights) {
        authz.and(m.allowed.clone().unwrap_or_else(|| cfg.allowed.clone()));
        let (label, eps, not_ready) = resolver.resolve(&m.service);
        // The same Service port as a Service route: one backend, not two.
        let covered = service_routes.get(&m.service.key).is_some_and(|rs| {
            rs.iter()
                .flat_map(|r| &r.target.backends)
                .any(|b| b.service == label)
        });
        if !covered {
            uncovered.push(label.clone());
        }
        let settings = if !m.settings.upstream_h2 && resolver.port_is_h2(&m.service) {
            Arc::new(BackendSettings {
                upstream_h2: true,
                ..(*m.settings).clone()
            })
        } else {
            m.settings.clone()
        };
        backends.push(Backend::new(label, weight, eps, settings).with_not_ready(not_ready));
    }
    Some(GroupRoute {
        route: Arc::new(Route {
            name: format!("mapping/{}/{}", first.namespace, first.name).into(),
            hosts: vec![head.host.clone()],
            matcher: head.matcher.clone().into(),
            authz,
            target: RouteTarget::new(backends),
        }),
        uncovered,
    })
}

/// Emissary's weights: explicit weights as given; Mappings without one share
/// what is left of 100 equally; when none has a weight, all are equal.
fn split_weights(weights: impl Iterator<Item = Option<u32>>) -> Vec<u32> {
    let weights: Vec<Option<u32>> = weights.collect();
    let explicit: u32 = weights.iter().flatten().sum();
    let unweighted = weights.iter().filter(|w| w.is_none()).count() as u32;
    if unweighted as usize == weights.len() {
        return vec![1; weights.len()];
    }
    let share = match 100u32.saturating_sub(explicit).checked_div(unweighted) {
        Some(0) if explicit < 100 => 1,
        Some(s) => s,
        None => 0,
    };
    weights.iter().map(|w| w.unwrap_or(share)).collect()
}

struct Resolver<'a> {
    services: &'a HashMap<ObjectKey, ServiceInfo>,
    slices: &'a HashMap<ObjectKey, SliceInfo>,
    slices_of: &'a HashMap<ObjectKey, Vec<ObjectKey>>,
    endpoints: &'a mut EndpointPool,
}

impl Resolver<'_> {
    /// Whether the referenced Service port's `appProtocol` is h2c or gRPC.
    fn port_is_h2(&self, r: &ServiceRef) -> bool {
        let Some(svc) = self.services.get(&r.key) else {
            return false;
        };
        match r.port {
            Some(p) => svc.ports.iter().any(|sp| sp.port == p && sp.h2),
            None => svc.ports.len() == 1 && svc.ports[0].h2,
        }
    }

    /// The backend label, ready endpoints and the number of not-ready ones of
    /// a Service port; none when the Service, the port, or ready endpoints are
    /// missing (the route answers 503).
    fn resolve(&mut self, r: &ServiceRef) -> (Arc<str>, Vec<Arc<Endpoint>>, usize) {
        let port_label = r.port.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let label: Arc<str> = format!("{}:{}", r.key, port_label).into();
        let Some(svc) = self.services.get(&r.key) else {
            return (label, Vec::new(), 0);
        };
        let port = match r.port {
            Some(p) => svc.ports.iter().find(|sp| sp.port == p),
            None if svc.ports.len() == 1 => svc.ports.first(),
            None => None,
        };
        let Some(port) = port else {
            return (label, Vec::new(), 0);
        };
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut not_ready = 0;
        let slices = self.slices_of.get(&r.key).into_iter().flatten();
        for slice in slices.filter_map(|k| self.slices.get(k)) {
            let target = slice
                .ports
                .iter()
                .find(|(name, _)| *name == port.name)
                .map(|(_, n)| *n);
            let number = match (target, &port.target) {
                (Some(Some(n)), _) => n,
                (None, TargetPort::Number(n)) if slice.ports.is_empty() => *n,
                _ => continue,
            };
            addrs.extend(slice.ready.iter().map(|ip| SocketAddr::new(*ip, number)));
            not_ready += slice.not_ready.len();
        }
        addrs.sort();
        addrs.dedup();
        let eps = addrs.into_iter().map(|a| self.endpoints.get(a)).collect();
        (label, eps, not_ready)
    }
}

fn convert_service(
    svc: &Service,
    key: &ObjectKey,
    cfg: &IndexConfig,
) -> Result<ServiceInfo, String> {
    let exported = svc
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(&cfg.export_label))
        .is_some_and(|v| v == "true");
    let spec = svc.spec.as_ref().ok_or("has no spec")?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err("type ExternalName is not routable through the gateway".into());
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            continue;
        }
        let port = u16::try_from(p.port)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("spec.ports[{i}].port {} is not a valid port", p.port))?;
        let target = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => TargetPort::Number(
                u16::try_from(*n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("spec.ports[{i}].targetPort {n} is not a valid port"))?,
            ),
            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                Ok(n) if n > 0 => TargetPort::Number(n),
                _ => TargetPort::Name(s.clone()),
            },
        };
        ports.push(ServicePort {
            name: p.name.clone().unwrap_or_default(),
            port,
            target,
            h2: p.app_protocol.as_deref().is_some_and(is_h2_app_protocol),
        });
    }
    let labels = svc.metadata.labels.as_ref();
    let mirror_cluster = labels
        .filter(|l| l.get(MIRRORED_SERVICE_LABEL).is_some_and(|v| v == "true"))
        .and_then(|l| l.get(CLUSTER_NAME_LABEL))
        .filter(|c| !c.is_empty())
        .cloned();
    let annotations = svc.metadata.annotations.as_ref();
    let mirrored = labels
        .and_then(|l| l.get("mirror.linkerd.io/mirrored-service"))
        .is_some_and(|v| v == "true");
    let mirror = if mirrored {
        let ann = |k: &str| annotations.and_then(|a| a.get(k)).filter(|v| !v.is_empty());
        // Without both annotations the egress cannot reach it (and will not
        // send it plaintext): the Service is no egress destination.
        let fq = ann("mirror.linkerd.io/remote-svc-fq-name")
            .filter(|fq| Authority::parse(fq.as_bytes()).is_ok());
        let identity = ann("mirror.linkerd.io/remote-gateway-identity");
        fq.zip(identity).map(|(fq, identity)| MirrorInfo {
            fq_name: fq.clone(),
            identity: identity.as_str().into(),
            cluster: mirror_cluster.clone().unwrap_or_default().into(),
        })
    } else {
        None
    };
    // Held for the Service's lifetime: no spare capacity (at 100,000
    // Services a push-grown `Vec` wastes megabytes).
    ports.shrink_to_fit();
    Ok(ServiceInfo {
        fqdn: format!("{}.{}.svc.{}", key.name, key.namespace, cfg.cluster_domain).into(),
        exported,
        ports,
        mirror_cluster,
        mirror,
    })
}

/// A slice's compact form, and the addresses it refused (with why).
fn convert_slice(
    slice: &EndpointSlice,
    key: &ObjectKey,
) -> Result<(SliceInfo, Vec<String>), String> {
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/service-name"))
        .ok_or("has no kubernetes.io/service-name label")?;
    if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
        return Err(format!(
            "addressType {} is not supported (IPv4 or IPv6)",
            slice.address_type
        ));
    }
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let number = match p.port {
            None => None,
            Some(n) => Some(
                u16::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("ports[{i}].port {n} is not a valid port"))?,
            ),
        };
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            continue;
        }
        ports.push((p.name.clone().unwrap_or_default(), number));
    }
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    let mut refused = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let is_ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        for a in &ep.addresses {
            let ip: IpAddr = a
                .parse()
                .map_err(|_| format!("endpoints[{i}].addresses: {a:?} is not an IP address"))?;
            if let Some(why) = refused_endpoint(ip) {
                refused.push(format!("endpoints[{i}].addresses: {a:?} is {why}"));
            } else if is_ready {
                ready.push(ip);
            } else {
                not_ready.push(ip);
            }
        }
    }
    ports.shrink_to_fit();
    ready.shrink_to_fit();
    not_ready.shrink_to_fit();
    Ok((
        SliceInfo {
            service: ObjectKey {
                namespace: key.namespace.clone(),
                name: service.as_str().into(),
            },
            ports,
            ready,
            not_ready,
        },
        refused,
    ))
}

/// Why an endpoint address never receives traffic: link-local addresses
/// reach the node's own services (cloud metadata at 169.254.169.254), and an
/// unspecified one means "this host". Loopback stays allowed (see README).
fn refused_endpoint(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Some("unspecified"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local (169.254.0.0/16)"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("unspecified"),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Some("link-local (fe80::/10)"),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .and_then(|v4| refused_endpoint(IpAddr::V4(v4))),
        IpAddr::V4(_) => None,
    }
}

fn convert_mapping(
    m: &Mapping,
    key: &ObjectKey,
    cfg: &IndexConfig,
) -> Result<MappingRoute, String> {
    let spec = &m.spec;
    if !spec.prefix.starts_with('/') {
        return Err(format!("prefix {:?} must start with '/'", spec.prefix));
    }
    let host = parse_hostname(spec.hostname.as_deref().unwrap_or("*"))?;
    let service = parse_service_ref(&spec.service, &key.namespace, &cfg.cluster_domain)?;
    if !cfg.namespaces.is_empty() && !cfg.namespaces.iter().any(|n| **n == *service.key.namespace) {
        return Err(format!(
            "service {:?} is in namespace {}, which this gateway does not serve",
            spec.service, service.key.namespace
        ));
    }
    let mut headers = Vec::new();
    for (name, value) in spec.headers.iter().flatten() {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("headers: {name:?} is not a valid header name"))?;
        headers.push(HeaderMatch {
            name: name.as_str().to_string(),
            value: value.clone(),
        });
    }
    headers.sort();
    let method = match &spec.method {
        None => None,
        Some(m) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) => {
            Some(m.to_ascii_uppercase())
        }
        Some(m) => return Err(format!("method {m:?} is not an HTTP method")),
    };
    if let Some(w) = spec.weight {
        if w > 100 {
            return Err(format!("weight {w} must be between 0 and 100"));
        }
    }

    let mut settings = cfg.defaults.clone();
    settings.rewrite = match spec.rewrite.as_deref() {
        None => Some("/".to_string()),
        Some("") => None,
        Some(r) if r.starts_with('/') => Some(r.to_string()),
        Some(r) => {
            return Err(format!(
                "rewrite {r:?} must start with '/' (or be \"\" to keep the path)"
            ))
        }
    };
    if let Some(ms) = spec.timeout_ms {
        settings.timeout = positive_ms("timeout_ms", ms)?;
    }
    if let Some(ms) = spec.connect_timeout_ms {
        settings.connect_timeout = positive_ms("connect_timeout_ms", ms)?;
    }
    if let Some(ms) = spec.idle_timeout_ms {
        settings.idle_timeout = positive_ms("idle_timeout_ms", ms)?;
    }
    if let Some(lb) = &spec.load_balancer {
        settings.lb = match lb.policy.as_str() {
            "round_robin" => LbPolicy::RoundRobin,
            "least_request" => LbPolicy::LeastRequest,
            other => {
                return Err(format!(
                    "load_balancer.policy {other:?} is not supported (round_robin or least_request)"
                ))
            }
        };
    }
    if let Some(rp) = &spec.retry_policy {
        if let Some(on) = rp.retry_on.as_deref() {
            if on != "connect-failure" {
                return Err(format!(
                    "retry_policy.retry_on {on:?} is not supported (connect-failure)"
                ));
            }
        }
        if rp.per_try_timeout.is_some() {
            return Err("retry_policy.per_try_timeout is not supported; use timeout_ms".into());
        }
        settings.num_retries = rp.num_retries.unwrap_or(1).min(5);
    }
    settings.add_request_headers =
        header_pairs("add_request_headers", spec.add_request_headers.as_ref())?;
    settings.add_response_headers =
        header_pairs("add_response_headers", spec.add_response_headers.as_ref())?;
    for name in spec.remove_request_headers.iter().flatten() {
        settings.remove_request_headers.push(
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                format!("remove_request_headers: {name:?} is not a valid header name")
            })?,
        );
    }
    settings.upstream_h2 = spec.grpc.unwrap_or(false);
    settings.allow_upgrade = Vec::new();
    for (i, proto) in spec.allow_upgrade.iter().flatten().enumerate() {
        if proto.is_empty() || !proto.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return Err(format!(
                "allow_upgrade[{i}]: {proto:?} is not an Upgrade protocol token"
            ));
        }
        settings.allow_upgrade.push(proto.to_ascii_lowercase());
    }
    let allowed = match &spec.allowed_identities {
        None => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, s)| {
                    IdentityPattern::parse(s).map_err(|e| format!("allowed_identities[{i}]: {e}"))
                })
                .collect::<Result<Arc<[_]>, _>>()?,
        ),
    };
    Ok(MappingRoute {
        host,
        matcher: RouteMatch {
            prefix: spec.prefix.clone(),
            prefix_exact: spec.prefix_exact.unwrap_or(false),
            method,
            headers,
            ..RouteMatch::any()
        },
        service,
        weight: spec.weight,
        settings: Arc::new(settings),
        allowed,
    })
}

/// The longest Mapping timeout (as the CRD schema's `maximum`).
const MAX_TIMEOUT_MS: u64 = 86_400_000;

fn positive_ms(field: &str, ms: u64) -> Result<Duration, String> {
    if ms == 0 || ms > MAX_TIMEOUT_MS {
        return Err(format!(
            "{field} must be between 1 and {MAX_TIMEOUT_MS} (one day), not {ms}"
        ));
    }
    Ok(Duration::from_millis(ms))
}

fn header_pairs(
    field: &str,
    map: Option<&BTreeMap<String, String>>,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    map.into_iter()
        .flatten()
        .map(|(k, v)| {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("{field}: {k:?} is not a valid header name"))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| format!("{field}: value of {k:?} is not a valid header value"))?;
            Ok((name, value))
        })
        .collect()
}

/// `hostname`: `*`, `*.suffix`, or `host[:port]`.
fn parse_hostname(raw: &str) -> Result<HostMatch, String> {
    if raw == "*" {
        return Ok(HostMatch::Any);
    }
    if let Some(suffix) = raw.strip_prefix("*.") {
        let a =
            Authority::parse(suffix.as_bytes()).map_err(|e| format!("hostname {raw:?}: {e}"))?;
        if a.port().is_some() {
            return Err(format!(
                "hostname {raw:?}: a wildcard hostname cannot carry a port"
            ));
        }
        return Ok(HostMatch::Wildcard(format!(".{}", a.host())));
    }
    let a = Authority::parse(raw.as_bytes()).map_err(|e| format!("hostname {raw:?}: {e}"))?;
    Ok(HostMatch::Exact(
        a.host().into(),
        a.port().map_or(PortMatch::Any, PortMatch::Port),
    ))
}

/// `service`: `[http://]name[.namespace[.svc[.<cluster domain>]]][:port]`.
fn parse_service_ref(
    raw: &str,
    default_ns: &str,
    cluster_domain: &str,
) -> Result<ServiceRef, String> {
    let bad = |why: &str| format!("service {raw:?}: {why}");
    let rest = raw.strip_prefix("http://").unwrap_or(raw);
    if rest.contains("://") {
        return Err(bad("only plain HTTP upstreams (http://) are supported"));
    }
    let a = Authority::parse(rest.as_bytes()).map_err(|e| bad(&e.to_string()))?;
    let mut labels = a.host().splitn(3, '.');
    let name = labels.next().unwrap_or_default();
    let ns = labels.next().unwrap_or(default_ns);
    match labels.next() {
        None => {}
        Some(tail) if tail == "svc" || tail == format!("svc.{cluster_domain}") => {}
        Some(_) => {
            return Err(bad(&format!(
                "expected name[.namespace][:port] or name.namespace.svc.{cluster_domain}"
            )))
        }
    }
    Ok(ServiceRef {
        key: ObjectKey::new(ns, name),
        port: a.port(),
    })
}

mod claims;
mod egress;
mod endpoints;
mod httproute;
#[cfg(test)]
mod tests;
