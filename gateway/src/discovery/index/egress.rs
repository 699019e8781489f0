//! The egress table: every Service by its in-cluster names
//! (`name.ns`, `name.ns.svc`, `name.ns.svc.<cluster_domain>`, with or without
//! port), mirror Services through their remote gateway, and TrafficSplit roots
//! split by weight over their backends. Built beside the ingress table from the
//! same objects; the proxy never sees kube types.
//!
//! A split applies to egress callers only: the ingress table keeps serving
//! an exported root Service itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Index, ObjectError, ObjectKey, Resolver, ServiceInfo, ServiceRef};
use crate::discovery::trafficsplit::Split;
use crate::routes::{
    Authorization, Backend, BackendSettings, HostMatch, PortMatch, RemoteTarget, Route, RouteMatch,
    RouteTable, RouteTarget,
};

impl Index {
    /// Builds the egress routes, with the Service and endpoint counts of
    /// their table (called by [`Index::build`] when egress is on).
    pub(super) fn build_egress(&mut self) -> (Vec<Arc<Route>>, usize, usize) {
        let mut resolver = Resolver {
            services: &self.services,
            slices: &self.slices,
            slices_of: &self.slices_of,
            endpoints: &mut self.endpoints,
        };
        let defaults = &self.cfg.defaults;
        // Roots by Service; of two splits on one root, the first by name wins.
        let mut roots: BTreeMap<ObjectKey, (&ObjectKey, &Split)> = BTreeMap::new();
        let mut problems: BTreeMap<ObjectKey, String> = BTreeMap::new();
        // Invalid splits were reported when they were converted.
        for (key, s) in self
            .splits
            .iter()
            .filter_map(|(k, s)| Some((k, s.as_ref().ok()?)))
        {
            let root = ObjectKey::new(&key.namespace, &s.root);
            if let Some((other, _)) = roots.get(&root) {
                problems.insert(
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
        let mut routes = Vec::new();
        let mut services = 0;
        for (key, svc) in self.services.iter() {
            if svc.mirror_cluster.is_some() && svc.mirror.is_none() {
                // A mirror without its remote's name and identity: unreachable
                // (never sent in plaintext to a remote gateway).
                continue;
            }
            let names = [
                format!("{}.{}", key.name, key.namespace),
                format!("{}.{}.svc", key.name, key.namespace),
                format!(
                    "{}.{}.svc.{}",
                    key.name, key.namespace, self.cfg.cluster_domain
                ),
            ];
            let split = roots.get(key);
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
                routes.push(Route {
                    name: name.into(),
                    hosts,
                    matcher: RouteMatch::any(),
                    authz: Authorization::default(),
                    target,
                });
            }
        }
        for (key, (split_key, _)) in &roots {
            if !self.services.contains_key(key) {
                problems.insert(
                    (*split_key).clone(),
                    format!("root Service {key} does not exist; the split has no effect"),
                );
            }
        }
        self.split_problems = problems;
        let endpoints = routes
            .iter()
            .flat_map(|r| &r.target.backends)
            .map(|b| b.endpoints.len())
            .sum();
        (
            routes.into_iter().map(Arc::new).collect(),
            services,
            endpoints,
        )
    }

    /// The egress table of the last build (once).
    pub fn take_egress(&mut self) -> Option<RouteTable> {
        self.egress.take()
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
