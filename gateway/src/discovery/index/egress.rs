//! The egress table: every Service by its full in-cluster name
//! (`name.ns.svc.<cluster_domain>`, with or without port; the egress completes
//! `name.ns` and `name.ns.svc` to it before looking up), mirror Services through their remote gateway, and split roots split
//! by weight over their backends. Built beside the ingress table from the
//! same objects; the proxy never sees kube types.
//!
//! Two kinds of object split a root Service:
//! - a TrafficSplit (`spec.service` = the root): every request to the root;
//! - Mappings with weights whose `hostname` is one of the root's in-cluster
//!   names, from the root's own namespace (Emissary's canary semantics: the
//!   Mappings of one host and match share its traffic by weight). Their
//!   match, rewrite and header edits apply; requests their match does not
//!   take go to the root itself (or its TrafficSplit). A Mapping on `/`
//!   replaces the root's own route, unless a TrafficSplit already splits it.
//!
//! A split applies to egress callers only: the ingress table keeps serving
//! an exported root Service itself.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::claims::Refusal;
use super::endpoints::{EndpointPool, Table};
use super::{
    port_hosts, split_weights, GroupKey, Index, MappingEntry, MappingRoute, ObjectError, ObjectKey,
    Resolver, ServiceInfo, ServiceRef,
};
use crate::discovery::trafficsplit::Split;
use crate::hash::{HashMap, HashSet};
use crate::routes::HostIndex;
use crate::routes::{
    Authorization, Backend, BackendSettings, HostMatch, PortMatch, RemoteTarget, Route, RouteMatch,
    RouteTable, RouteTarget,
};

/// A problem of a split source, by the kind and key of the object that has it.
pub(super) type ProblemKey = (&'static str, ObjectKey);

/// The groups of Mappings that split a root's egress traffic, both ways.
#[derive(Default)]
pub(super) struct MappingSplits {
    root_of: HashMap<GroupKey, ObjectKey>,
    groups_of: HashMap<ObjectKey, BTreeSet<GroupKey>>,
}

impl MappingSplits {
    /// Records that `group` splits `root` (or nothing); returns the roots
    /// whose egress routes change.
    fn set(&mut self, group: &GroupKey, root: Option<ObjectKey>) -> Vec<ObjectKey> {
        let old = match &root {
            Some(r) => self.root_of.insert(group.clone(), r.clone()),
            None => self.root_of.remove(group),
        };
        if let Some(old) = &old {
            if let Some(groups) = self.groups_of.get_mut(old) {
                groups.remove(group);
                if groups.is_empty() {
                    self.groups_of.remove(old);
                }
            }
        }
        if let Some(r) = &root {
            self.groups_of
                .entry(r.clone())
                .or_default()
                .insert(group.clone());
        }
        old.into_iter().chain(root).collect()
    }
}

/// The Service an in-cluster host names (`name.ns`, `name.ns.svc`,
/// `name.ns.svc.<domain>`), existing or not.
fn service_of_host(host: &str, domain: &str) -> Option<ObjectKey> {
    let short = host
        .strip_suffix(domain)
        .and_then(|h| h.strip_suffix(".svc."))
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(host);
    let (name, namespace) = short.split_once('.')?;
    if name.is_empty() || namespace.is_empty() || namespace.contains('.') {
        return None;
    }
    Some(ObjectKey::new(namespace, name))
}

/// A backend's settings for the egress: `plain` (the defaults, or the
/// Mapping's) shared as they are, with the remote gateway of a mirror, or
/// h2c for a local port whose `appProtocol` says so (`h2c`: shared too).
fn backend_settings(
    plain: &Arc<BackendSettings>,
    h2c: Option<&Arc<BackendSettings>>,
    svc: Option<&ServiceInfo>,
    port: u16,
) -> Arc<BackendSettings> {
    if let Some(m) = svc.and_then(|s| s.mirror.as_ref()) {
        let mut s = (**plain).clone();
        s.remote = Some(RemoteTarget {
            identity: m.identity.clone(),
            authority: format!("{}:{port}", m.fq_name).into(),
            cluster: m.cluster.clone(),
        });
        // A remote gateway's pool is shared by every mirror behind it.
        s.num_retries = 1;
        // The remote gateway picks its upstream's protocol itself.
        s.upstream_h2 = false;
        return Arc::new(s);
    }
    if svc.is_some_and(|s| s.ports.iter().any(|p| p.port == port && p.h2)) {
        return match h2c {
            Some(h2c) => h2c.clone(),
            None => Arc::new(BackendSettings {
                upstream_h2: true,
                ..(**plain).clone()
            }),
        };
    }
    plain.clone()
}

/// The default settings of egress backends, allocated once per build and
/// shared by every Service that needs nothing of its own.
struct Defaults {
    plain: Arc<BackendSettings>,
    h2c: Arc<BackendSettings>,
}

/// The egress routes of each Service, by host, with the counts of their table.
#[derive(Default)]
pub(super) struct EgressRoutes {
    by_service: HashMap<ObjectKey, (Vec<Arc<Route>>, usize, usize)>,
    hosts: HostIndex,
    services: usize,
    endpoints: usize,
}

impl EgressRoutes {
    /// Replaces the routes of `key` (its new routes go in before the old
    /// ones leave, so shared endpoints stay pooled).
    fn replace(
        &mut self,
        key: &ObjectKey,
        routes: Vec<Arc<Route>>,
        services: usize,
        pool: &mut EndpointPool,
    ) {
        let endpoints: usize = routes
            .iter()
            .flat_map(|r| &r.target.backends)
            .map(|b| b.endpoints.len())
            .sum();
        for r in &routes {
            pool.hold(r, Table::Egress);
            self.hosts.insert(r);
        }
        self.services += services;
        self.endpoints += endpoints;
        let old = if routes.is_empty() {
            self.by_service.remove(key)
        } else {
            self.by_service
                .insert(key.clone(), (routes, services, endpoints))
        };
        if let Some((routes, services, endpoints)) = old {
            for r in &routes {
                pool.release(r, Table::Egress);
                self.hosts.remove(r);
            }
            self.services -= services;
            self.endpoints -= endpoints;
        }
    }

    fn table(&self) -> RouteTable {
        RouteTable::from_hosts(self.hosts.clone(), self.services, self.endpoints)
    }
}

impl Index {
    /// The root Service a group of Mappings splits for egress callers: its
    /// hostname names a Service in-cluster and a member has a `weight`.
    fn mapping_split_root(&self, group: &GroupKey) -> Option<ObjectKey> {
        let (HostMatch::Exact(host, _), _) = group else {
            return None;
        };
        let members = self.groups.get(group)?;
        let weighted = members
            .iter()
            .filter(|k| !self.refusals.contains_key(*k))
            .filter_map(|k| self.mappings.get(k)?.route.as_ref().ok())
            .any(|m| m.weight.is_some());
        if !weighted {
            return None;
        }
        service_of_host(host, &self.cfg.cluster_domain)
    }

    /// Brings the egress table up to date (called by [`Index::build`] when
    /// egress is on): the routes of the Services in `changed`, of the split
    /// roots whose split (TrafficSplit, or a group in `stale_groups`) or
    /// backends changed, nothing else; each re-indexes its own hosts only.
    pub(super) fn build_egress(
        &mut self,
        changed: &[ObjectKey],
        stale_groups: &[GroupKey],
    ) -> RouteTable {
        let mut todo: BTreeSet<ObjectKey> = changed.iter().cloned().collect();
        for group in stale_groups {
            let root = self.mapping_split_root(group);
            todo.extend(self.mapping_splits.set(group, root));
        }
        let mut resolver = Resolver {
            services: &self.services,
            slices: &self.slices,
            slices_of: &self.slices_of,
            endpoints: &mut self.endpoints,
        };
        let defaults = Defaults {
            plain: Arc::new(self.cfg.defaults.clone()),
            h2c: Arc::new(BackendSettings {
                upstream_h2: true,
                ..self.cfg.defaults.clone()
            }),
        };
        // Roots by Service; of two splits on one root, the first by name wins.
        let mut roots: BTreeMap<ObjectKey, (&ObjectKey, &Split)> = BTreeMap::new();
        let mut all_problems: BTreeMap<ProblemKey, String> = BTreeMap::new();
        // Invalid splits were reported when they were converted.
        for (key, s) in self
            .splits
            .iter()
            .filter_map(|(k, s)| Some((k, s.as_ref().ok()?)))
        {
            let root = ObjectKey::new(&key.namespace, &s.root);
            if let Some((other, _)) = roots.get(&root) {
                all_problems.insert(
                    ("TrafficSplit", key.clone()),
                    format!("root {root} is already split by TrafficSplit {other}; ignored"),
                );
                continue;
            }
            roots.insert(root, (key, s));
        }
        // What else to rebuild: roots split differently than at the last
        // build, and roots with a changed backend.
        let roots_now: BTreeMap<ObjectKey, (ObjectKey, Split)> = roots
            .iter()
            .map(|(r, (k, s))| (r.clone(), ((*k).clone(), (*s).clone())))
            .collect();
        let changed: HashSet<&ObjectKey> = changed.iter().collect();
        for (root, split) in &roots_now {
            let backend_changed = split
                .1
                .backends
                .iter()
                .any(|(b, _)| changed.contains(&ObjectKey::new(&root.namespace, b)));
            if backend_changed || self.egress_roots.get(root) != Some(split) {
                todo.insert(root.clone());
            }
        }
        for root in self.egress_roots.keys() {
            if !roots_now.contains_key(root) {
                todo.insert(root.clone());
            }
        }
        for (root, groups) in &self.mapping_splits.groups_of {
            let backend_changed = groups
                .iter()
                .filter_map(|g| self.groups.get(g))
                .flatten()
                .filter_map(|k| self.mappings.get(k)?.route.as_ref().ok())
                .any(|m| changed.contains(&m.service.key));
            if backend_changed {
                todo.insert(root.clone());
            }
        }
        for key in todo {
            let svc = self
                .services
                .get(&key)
                // A mirror without its remote's name and identity: unreachable
                // (never sent in plaintext to a remote gateway).
                .filter(|svc| svc.mirror_cluster.is_none() || svc.mirror.is_some());
            let Some(svc) = svc else {
                self.egress.replace(&key, Vec::new(), 0, resolver.endpoints);
                self.root_problems.remove(&key);
                continue;
            };
            let mut root = RootBuild {
                key: &key,
                svc,
                ingress: self.service_routes.get(&key).map(Vec::as_slice),
                // The egress completes `name.ns` and `name.ns.svc` to this
                // before it looks a host up (`egress::full_name`).
                name: svc.fqdn.clone(),
                routes: Vec::new(),
                services: 0,
                problems: BTreeMap::new(),
            };
            let split = roots.get(&key).copied();
            let groups = mapping_groups_of(
                &key,
                MappingView {
                    splits: &self.mapping_splits,
                    groups: &self.groups,
                    mappings: &self.mappings,
                    refusals: &self.refusals,
                },
                &mut root.problems,
            );
            for port in &svc.ports {
                let p = port.port;
                let mut catch_all = false;
                for (group, members) in &groups {
                    let (HostMatch::Exact(_, pm), matcher) = group else {
                        continue;
                    };
                    if !matches!(pm, PortMatch::Any) && *pm != PortMatch::Port(p) {
                        continue;
                    }
                    if *matcher == RouteMatch::any() {
                        if let Some((split_key, _)) = split {
                            for (m, _, _) in members {
                                root.problems.insert(
                                    ("Mapping", (*m).clone()),
                                    format!("egress traffic of {key} is already split by TrafficSplit {split_key}; this Mapping does not split it"),
                                );
                            }
                            continue;
                        }
                        catch_all = true;
                    }
                    root.mapping_route(group, members, p, &mut resolver);
                }
                if !catch_all {
                    match split {
                        None => root.service_route(p, &defaults, &mut resolver),
                        Some((split_key, split)) => {
                            root.split_route(split_key, split, p, &defaults, &mut resolver)
                        }
                    }
                }
            }
            let RootBuild {
                routes,
                services,
                problems,
                ..
            } = root;
            self.egress
                .replace(&key, routes, services, resolver.endpoints);
            if problems.is_empty() {
                self.root_problems.remove(&key);
            } else {
                self.root_problems.insert(key, problems);
            }
        }
        for problems in self.root_problems.values() {
            all_problems.extend(problems.iter().map(|(k, p)| (k.clone(), p.clone())));
        }
        for (key, (split_key, _)) in &roots {
            if !self.services.contains_key(key) {
                all_problems.insert(
                    ("TrafficSplit", (*split_key).clone()),
                    format!("root Service {key} does not exist; the split has no effect"),
                );
            }
        }
        self.split_problems = all_problems;
        self.egress_roots = roots_now;
        self.egress.table()
    }

    /// The egress table of the last build (once).
    pub fn take_egress(&mut self) -> Option<RouteTable> {
        self.egress_table.take()
    }

    /// Split problems found since the last call (each reported once, and
    /// again only when it changes).
    pub fn take_split_problems(&mut self) -> Vec<ObjectError> {
        let new: Vec<ObjectError> = self
            .split_problems
            .iter()
            .filter(|(k, r)| self.reported_splits.get(*k) != Some(*r))
            .map(|((kind, key), r)| ObjectError {
                kind,
                key: key.clone(),
                reason: r.clone(),
            })
            .collect();
        self.reported_splits = self.split_problems.clone();
        new
    }
}

/// What [`mapping_groups_of`] reads of the index.
struct MappingView<'a> {
    splits: &'a MappingSplits,
    groups: &'a HashMap<GroupKey, BTreeSet<ObjectKey>>,
    mappings: &'a BTreeMap<ObjectKey, MappingEntry>,
    refusals: &'a BTreeMap<ObjectKey, Refusal>,
}

/// A group of Mappings with its members and their weights.
type GroupMembers<'a> = (&'a GroupKey, Vec<(&'a ObjectKey, &'a MappingRoute, u32)>);

/// The Mapping groups splitting `root`, each with its members that may
/// (accepted, from the root's namespace) and their weights.
fn mapping_groups_of<'a>(
    root: &ObjectKey,
    view: MappingView<'a>,
    problems: &mut BTreeMap<ProblemKey, String>,
) -> Vec<GroupMembers<'a>> {
    let groups = view.splits.groups_of.get(root).into_iter().flatten();
    groups
        .filter_map(|group| {
            let members: Vec<(&ObjectKey, &MappingRoute)> = view
                .groups
                .get(group)?
                .iter()
                .filter(|k| !view.refusals.contains_key(*k))
                .filter_map(|k| Some((k, view.mappings.get(k)?.route.as_ref().ok()?)))
                .filter(|(k, _)| {
                    let ours = k.namespace == root.namespace;
                    if !ours {
                        problems.insert(
                            ("Mapping", (*k).clone()),
                            format!("only Mappings in namespace {} split the egress traffic of {root}; ignored by the egress", root.namespace),
                        );
                    }
                    ours
                })
                .collect();
            let weights = split_weights(members.iter().map(|(_, m)| m.weight));
            let members: Vec<_> = members
                .into_iter()
                .zip(weights)
                .map(|((k, m), w)| (k, m, w))
                .collect();
            (!members.is_empty()).then_some((group, members))
        })
        .collect()
}
/// The egress routes of one root Service while they are built.
struct RootBuild<'a> {
    key: &'a ObjectKey,
    svc: &'a ServiceInfo,
    /// The root's ingress routes (an exported Service's), one per port in
    /// `svc.ports` order, built just before: their backends are this
    /// build's resolution of the same Service ports.
    ingress: Option<&'a [Arc<Route>]>,
    name: Arc<str>,
    routes: Vec<Arc<Route>>,
    services: usize,
    problems: BTreeMap<ProblemKey, String>,
}

impl RootBuild<'_> {
    /// The root's name on `port` (and without a port when it has one port).
    fn hosts(&self, port: u16) -> Vec<HostMatch> {
        port_hosts(&self.name, port, self.svc.ports.len() == 1)
    }

    fn push(&mut self, name: String, port: u16, matcher: Arc<RouteMatch>, target: RouteTarget) {
        self.routes.push(Arc::new(Route {
            name: name.into(),
            hosts: self.hosts(port),
            matcher,
            authz: Authorization::default(),
            target,
        }));
    }

    /// The root itself on `port`.
    fn service_route(&mut self, port: u16, defaults: &Defaults, resolver: &mut Resolver<'_>) {
        // An exported Service's port was resolved for its ingress route a
        // moment ago: its label and endpoints are taken from there.
        let resolved = self
            .svc
            .ports
            .iter()
            .position(|p| p.port == port)
            .and_then(|i| self.ingress?.get(i)?.target.backends.first())
            .map(|b| (b.service.clone(), b.endpoints.clone(), b.not_ready()));
        let (label, eps, not_ready) = resolved.unwrap_or_else(|| {
            resolver.resolve(&ServiceRef {
                key: self.key.clone(),
                port: Some(port),
            })
        });
        self.services += 1;
        let backend = Backend::new(
            label,
            1,
            eps,
            backend_settings(&defaults.plain, Some(&defaults.h2c), Some(self.svc), port),
        )
        .with_not_ready(not_ready);
        let name = format!("egress/{}/{}:{port}", self.key.namespace, self.key.name);
        self.push(
            name,
            port,
            RouteMatch::shared_any(),
            RouteTarget::new(vec![backend]),
        );
    }

    /// The root's TrafficSplit on `port`.
    fn split_route(
        &mut self,
        split_key: &ObjectKey,
        split: &Split,
        port: u16,
        defaults: &Defaults,
        resolver: &mut Resolver<'_>,
    ) {
        let mut backends = Vec::new();
        let mut primary = None;
        for (b, weight) in &split.backends {
            let bkey = ObjectKey::new(&self.key.namespace, b);
            let problem = ("TrafficSplit", split_key.clone());
            let Some(bsvc) = resolver.services.get(&bkey) else {
                self.problems.insert(
                    problem,
                    format!("backend {bkey} does not exist; it gets no traffic"),
                );
                continue;
            };
            if bsvc.mirror_cluster.is_some() && bsvc.mirror.is_none() {
                self.problems.insert(problem, unannotated_mirror(&bkey));
                continue;
            }
            if !bsvc.ports.iter().any(|p| p.port == port) {
                self.problems.insert(
                    problem,
                    format!(
                        "backend {bkey} has no port {port} (backends must share the root's ports); it gets no traffic on it"
                    ),
                );
                continue;
            }
            let (label, eps, not_ready) = resolver.resolve(&ServiceRef {
                key: bkey,
                port: Some(port),
            });
            self.services += 1;
            if split.primary.as_deref() == Some(b.as_str()) {
                primary = Some(backends.len());
            }
            backends.push(
                Backend::new(
                    label,
                    *weight,
                    eps,
                    backend_settings(&defaults.plain, Some(&defaults.h2c), Some(bsvc), port),
                )
                .with_not_ready(not_ready),
            );
        }
        let name = format!("split/{}/{}:{port}", split_key.namespace, split_key.name);
        let target = RouteTarget::new(backends).with_primary(primary);
        self.push(name, port, RouteMatch::shared_any(), target);
    }

    /// One group of Mappings on the root's `port`: their match, their
    /// backends by weight (a backend's port: the Mapping's, else the same
    /// port, else its only one).
    fn mapping_route(
        &mut self,
        (_, matcher): &GroupKey,
        members: &[(&ObjectKey, &MappingRoute, u32)],
        port: u16,
        resolver: &mut Resolver<'_>,
    ) {
        let mut backends = Vec::new();
        for (mkey, m, weight) in members {
            let problem = ("Mapping", (*mkey).clone());
            let bkey = &m.service.key;
            let Some(bsvc) = resolver.services.get(bkey) else {
                self.problems.insert(
                    problem,
                    format!("service {bkey} does not exist; it gets no egress traffic"),
                );
                continue;
            };
            if bsvc.mirror_cluster.is_some() && bsvc.mirror.is_none() {
                self.problems.insert(problem, unannotated_mirror(bkey));
                continue;
            }
            let bport =
                m.service
                    .port
                    .or_else(|| match bsvc.ports.iter().find(|p| p.port == port) {
                        Some(p) => Some(p.port),
                        None if bsvc.ports.len() == 1 => Some(bsvc.ports[0].port),
                        None => None,
                    });
            let Some(bport) = bport else {
                self.problems.insert(
                    problem,
                    format!("service {bkey} has no port {port} and more than one other; name one"),
                );
                continue;
            };
            let (label, eps, not_ready) = resolver.resolve(&ServiceRef {
                key: bkey.clone(),
                port: Some(bport),
            });
            self.services += 1;
            backends.push(
                Backend::new(
                    label,
                    *weight,
                    eps,
                    backend_settings(&m.settings, None, Some(bsvc), bport),
                )
                .with_not_ready(not_ready),
            );
        }
        let Some((first, _, _)) = members.first() else {
            return;
        };
        let name = format!("mapping/{}/{}:{port}", first.namespace, first.name);
        self.push(
            name,
            port,
            matcher.clone().into(),
            RouteTarget::new(backends),
        );
    }
}

fn unannotated_mirror(key: &ObjectKey) -> String {
    format!("backend {key} is a mirror without the remote-svc-fq-name and remote-gateway-identity annotations; it gets no traffic")
}

#[cfg(test)]
mod tests {
    use super::service_of_host;
    use crate::discovery::index::ObjectKey;

    #[test]
    fn in_cluster_hosts_name_their_service() {
        let d = "cluster.local";
        let k = Some(ObjectKey::new("test", "podinfo"));
        assert_eq!(service_of_host("podinfo.test", d), k);
        assert_eq!(service_of_host("podinfo.test.svc", d), k);
        assert_eq!(service_of_host("podinfo.test.svc.cluster.local", d), k);
        assert_eq!(service_of_host("podinfo.test.svc.other.domain", d), None);
        assert_eq!(service_of_host("podinfo", d), None);
        assert_eq!(service_of_host(".test", d), None);
        assert_eq!(service_of_host("a.b.c", d), None);
    }
}
