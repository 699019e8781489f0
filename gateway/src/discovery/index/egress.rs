//! The egress table: every Service by its in-cluster names
//! (`name.ns`, `name.ns.svc`, `name.ns.svc.<cluster_domain>`, with or without
//! port), mirror Services through their remote gateway, and TrafficSplit roots
//! split by weight over their backends. Built beside the ingress table from the
//! same objects; the proxy never sees kube types.
//!
//! A split applies to egress callers only: the ingress table keeps serving
//! an exported root Service itself.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::endpoints::{EndpointPool, Table};
use super::{Index, ObjectError, ObjectKey, Resolver, ServiceInfo, ServiceRef};
use crate::discovery::trafficsplit::Split;
use crate::routes::HostIndex;
use crate::routes::{
    Authorization, Backend, BackendSettings, HostMatch, PortMatch, RemoteTarget, Route, RouteMatch,
    RouteTable, RouteTarget,
};

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
    /// Brings the egress table up to date (called by [`Index::build`] when
    /// egress is on): the routes of the Services in `changed`, of the split
    /// roots whose split or backends changed, nothing else; each re-indexes
    /// its own hosts only.
    pub(super) fn build_egress(&mut self, changed: &[ObjectKey]) -> RouteTable {
        let mut resolver = Resolver {
            services: &self.services,
            slices: &self.slices,
            slices_of: &self.slices_of,
            endpoints: &mut self.endpoints,
        };
        let defaults = &self.cfg.defaults;
        // Roots by Service; of two splits on one root, the first by name wins.
        let mut roots: BTreeMap<ObjectKey, (&ObjectKey, &Split)> = BTreeMap::new();
        let mut all_problems: BTreeMap<ObjectKey, String> = BTreeMap::new();
        // Invalid splits were reported when they were converted.
        for (key, s) in self
            .splits
            .iter()
            .filter_map(|(k, s)| Some((k, s.as_ref().ok()?)))
        {
            let root = ObjectKey::new(&key.namespace, &s.root);
            if let Some((other, _)) = roots.get(&root) {
                all_problems.insert(
                    key.clone(),
                    format!("root {root} is already split by TrafficSplit {other}; ignored"),
                );
                continue;
            }
            roots.insert(root, (key, s));
        }
        let settings_for = |svc: Option<&ServiceInfo>, port: u16| -> Arc<BackendSettings> {
            let mut s = defaults.clone();
            if let Some(m) = svc.and_then(|s| s.mirror.as_ref()) {
                s.remote = Some(RemoteTarget {
                    identity: m.identity.clone(),
                    authority: format!("{}:{port}", m.fq_name).into(),
                    cluster: m.cluster.clone(),
                });
                // A remote gateway's pool is shared by every mirror behind it.
                s.num_retries = 1;
            }
            Arc::new(s)
        };
        // What to rebuild: changed Services, roots split differently than at
        // the last build, and roots with a changed backend.
        let roots_now: BTreeMap<ObjectKey, (ObjectKey, Split)> = roots
            .iter()
            .map(|(r, (k, s))| (r.clone(), ((*k).clone(), (*s).clone())))
            .collect();
        let mut todo: BTreeSet<ObjectKey> = changed.iter().cloned().collect();
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
        for key in todo {
            let mut routes = Vec::new();
            let mut services = 0;
            // This root's split problems, by split.
            let mut problems: BTreeMap<ObjectKey, String> = BTreeMap::new();
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
            let names = [
                format!("{}.{}", key.name, key.namespace),
                format!("{}.{}.svc", key.name, key.namespace),
                format!(
                    "{}.{}.svc.{}",
                    key.name, key.namespace, self.cfg.cluster_domain
                ),
            ];
            let split = roots.get(&key);
            for port in &svc.ports {
                let mut hosts: Vec<HostMatch> = names
                    .iter()
                    .map(|n| HostMatch::Exact(n.clone(), PortMatch::Port(port.port)))
                    .collect();
                if svc.ports.len() == 1 {
                    hosts.extend(
                        names
                            .iter()
                            .map(|n| HostMatch::Exact(n.clone(), PortMatch::Absent)),
                    );
                }
                let (name, target) = match split {
                    None => {
                        let (label, eps, not_ready) = resolver.resolve(&ServiceRef {
                            key: key.clone(),
                            port: Some(port.port),
                        });
                        services += 1;
                        let backend =
                            Backend::new(label, 1, eps, settings_for(Some(svc), port.port))
                                .with_not_ready(not_ready);
                        (
                            format!("egress/{}/{}:{}", key.namespace, key.name, port.port),
                            RouteTarget::new(vec![backend]),
                        )
                    }
                    Some((split_key, split)) => {
                        let mut backends = Vec::new();
                        let mut primary = None;
                        for (b, weight) in &split.backends {
                            let bkey = ObjectKey::new(&key.namespace, b);
                            let Some(bsvc) = resolver.services.get(&bkey) else {
                                problems.insert(
                                    (*split_key).clone(),
                                    format!("backend {bkey} does not exist; it gets no traffic"),
                                );
                                continue;
                            };
                            if bsvc.mirror_cluster.is_some() && bsvc.mirror.is_none() {
                                problems.insert(
                                    (*split_key).clone(),
                                    format!("backend {bkey} is a mirror without the remote-svc-fq-name and remote-gateway-identity annotations; it gets no traffic"),
                                );
                                continue;
                            }
                            if !bsvc.ports.iter().any(|p| p.port == port.port) {
                                problems.insert(
                                    (*split_key).clone(),
                                    format!(
                                        "backend {bkey} has no port {} (backends must share the root's ports); it gets no traffic on it",
                                        port.port
                                    ),
                                );
                                continue;
                            }
                            let (label, eps, not_ready) = resolver.resolve(&ServiceRef {
                                key: bkey,
                                port: Some(port.port),
                            });
                            services += 1;
                            if split.primary.as_deref() == Some(b.as_str()) {
                                primary = Some(backends.len());
                            }
                            backends.push(
                                Backend::new(
                                    label,
                                    *weight,
                                    eps,
                                    settings_for(Some(bsvc), port.port),
                                )
                                .with_not_ready(not_ready),
                            );
                        }
                        (
                            format!(
                                "split/{}/{}:{}",
                                split_key.namespace, split_key.name, port.port
                            ),
                            RouteTarget::new(backends).with_primary(primary),
                        )
                    }
                };
                routes.push(Arc::new(Route {
                    name: name.into(),
                    hosts,
                    matcher: RouteMatch::any(),
                    authz: Authorization::default(),
                    target,
                }));
            }
            self.egress
                .replace(&key, routes, services, resolver.endpoints);
            if problems.is_empty() {
                self.root_problems.remove(&key);
            } else {
                self.root_problems.insert(key, problems);
            }
        }
        for (key, (split_key, _)) in &roots {
            for (split, problem) in self.root_problems.get(key).into_iter().flatten() {
                all_problems.insert(split.clone(), problem.clone());
            }
            if !self.services.contains_key(key) {
                all_problems.insert(
                    (*split_key).clone(),
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
            .map(|(k, r)| ObjectError {
                kind: "TrafficSplit",
                key: k.clone(),
                reason: r.clone(),
            })
            .collect();
        self.reported_splits = self.split_problems.clone();
        new
    }
}
