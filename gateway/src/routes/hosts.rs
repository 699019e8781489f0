//! The host index of a route table: routes by exact host and port, by
//! wildcard suffix, and for any host, each list most specific first.
//!
//! Built to be changed in place and shared between successive tables:
//! exact hosts live in shards of `Arc` host entries, so publishing a table
//! clones no host, and changing one route clones only the shard of each host
//! it names (a few hundred `Arc`s at 100,000 hosts), never the whole index.

use std::cmp::Ordering;
use std::hash::BuildHasher;
use std::sync::Arc;

use crate::hash::HashMap;

use super::table::{precedence, HostMatch, PortMatch, Route};

/// Shards of the exact-host map: about 100 hosts each at 100,000 Services.
const SHARDS: usize = 1024;

/// One exact host's routes, by port, each list most specific first.
#[derive(Clone, Debug, Default)]
pub struct HostEntry {
    ports: Vec<(PortMatch, Vec<Arc<Route>>)>,
}

impl HostEntry {
    /// The routes for one port match, most specific first.
    pub fn routes(&self, port: PortMatch) -> Option<&[Arc<Route>]> {
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, rs)| rs.as_slice())
    }

    /// The port matches this host has routes for, unsorted.
    pub fn ports(&self) -> impl Iterator<Item = PortMatch> + '_ {
        self.ports.iter().map(|(p, _)| *p)
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.ports.iter().flat_map(|(_, rs)| rs)
    }
}

type Shard = HashMap<Arc<str>, Arc<HostEntry>>;

/// Routes by host; cloning it (to publish a table) copies one `Arc` per part.
#[derive(Clone, Debug, Default)]
pub struct HostIndex {
    /// Exact hosts, [`SHARDS`] shards once the first host is added.
    exact: Arc<Vec<Arc<Shard>>>,
    /// `(suffix with leading dot, routes)`, longest suffix first.
    wildcard: Arc<Vec<(String, Vec<Arc<Route>>)>>,
    any: Arc<Vec<Arc<Route>>>,
    /// Routes added and not removed.
    routes: usize,
}

/// The shard of a host (a fixed hash: the same host, the same shard).
fn shard_of(host: &str) -> usize {
    let h = foldhash::fast::FixedState::with_seed(0).hash_one(host);
    (h % SHARDS as u64) as usize
}

/// Inserts `route` after the routes that go before it or tie with it (the
/// order of a stable sort by [`precedence`]).
fn insert_sorted(list: &mut Vec<Arc<Route>>, route: &Arc<Route>) {
    let at = list.partition_point(|r| precedence(r, route) != Ordering::Greater);
    list.insert(at, route.clone());
}

/// Removes `route` (this very route, not an equal one); whether it was there.
fn remove_route(list: &mut Vec<Arc<Route>>, route: &Arc<Route>) -> bool {
    let before = list.len();
    list.retain(|r| !Arc::ptr_eq(r, route));
    list.len() != before
}

/// Wildcard lists go longest suffix first, then by suffix.
fn wildcard_order(a: &str, b: &str) -> Ordering {
    b.len().cmp(&a.len()).then_with(|| a.cmp(b))
}

impl HostIndex {
    /// An index of `routes`.
    pub fn from_routes(routes: impl IntoIterator<Item = Arc<Route>>) -> Self {
        let mut index = HostIndex::default();
        for r in routes {
            index.insert(&r);
        }
        index
    }

    /// Adds a route under each of its hosts.
    pub fn insert(&mut self, route: &Arc<Route>) {
        self.routes += 1;
        for host in &route.hosts {
            match host {
                HostMatch::Exact(name, port) => {
                    let entry = self.entry_mut(name);
                    match entry.ports.iter_mut().find(|(p, _)| p == port) {
                        Some((_, rs)) => insert_sorted(rs, route),
                        None => {
                            // Most hosts have one or two port matches: no
                            // spare capacity for each of 100,000 hosts.
                            entry.ports.reserve_exact(1);
                            entry.ports.push((*port, vec![route.clone()]));
                        }
                    }
                }
                HostMatch::Wildcard(suffix) => {
                    let wild = Arc::make_mut(&mut self.wildcard);
                    match wild.binary_search_by(|(s, _)| wildcard_order(s, suffix)) {
                        Ok(i) => insert_sorted(&mut wild[i].1, route),
                        Err(i) => wild.insert(i, (suffix.clone(), vec![route.clone()])),
                    }
                }
                HostMatch::Any => insert_sorted(Arc::make_mut(&mut self.any), route),
            }
        }
    }

    /// Removes a route added with [`HostIndex::insert`] from each of its hosts.
    pub fn remove(&mut self, route: &Arc<Route>) {
        let mut found = false;
        for host in &route.hosts {
            match host {
                HostMatch::Exact(name, port) => {
                    if self.exact.is_empty() {
                        continue;
                    }
                    let shard = Arc::make_mut(&mut Arc::make_mut(&mut self.exact)[shard_of(name)]);
                    let Some(entry) = shard.get_mut(&**name) else {
                        continue;
                    };
                    let entry = Arc::make_mut(entry);
                    if let Some(i) = entry.ports.iter().position(|(p, _)| p == port) {
                        found |= remove_route(&mut entry.ports[i].1, route);
                        if entry.ports[i].1.is_empty() {
                            entry.ports.remove(i);
                        }
                    }
                    if entry.ports.is_empty() {
                        shard.remove(&**name);
                    }
                }
                HostMatch::Wildcard(suffix) => {
                    let wild = Arc::make_mut(&mut self.wildcard);
                    if let Ok(i) = wild.binary_search_by(|(s, _)| wildcard_order(s, suffix)) {
                        found |= remove_route(&mut wild[i].1, route);
                        if wild[i].1.is_empty() {
                            wild.remove(i);
                        }
                    }
                }
                HostMatch::Any => found |= remove_route(Arc::make_mut(&mut self.any), route),
            }
        }
        if found || route.hosts.is_empty() {
            self.routes = self.routes.saturating_sub(1);
        }
    }

    /// The entry of `host`, created (and made unique to this index) if needed.
    fn entry_mut(&mut self, host: &Arc<str>) -> &mut HostEntry {
        if self.exact.is_empty() {
            let empty = Arc::new(Shard::default());
            self.exact = Arc::new(vec![empty; SHARDS]);
        }
        let shard = Arc::make_mut(&mut Arc::make_mut(&mut self.exact)[shard_of(host)]);
        // The key shares the route's host string.
        Arc::make_mut(shard.entry(host.clone()).or_default())
    }

    /// The routes of an exact host.
    pub fn exact(&self, host: &str) -> Option<&Arc<HostEntry>> {
        self.exact.get(shard_of(host))?.get(host)
    }

    /// Wildcard suffixes (with their leading dot) and their routes, longest first.
    pub fn wildcards(&self) -> &[(String, Vec<Arc<Route>>)] {
        &self.wildcard
    }

    /// The routes for any host.
    pub fn any(&self) -> &[Arc<Route>] {
        &self.any
    }

    /// Routes in the index.
    pub fn route_count(&self) -> usize {
        self.routes
    }

    /// Every (route, host) pair's route: a route with several hosts comes
    /// once per host.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.exact
            .iter()
            .flat_map(|shard| shard.values())
            .flat_map(|entry| entry.iter())
            .chain(self.wildcard.iter().flat_map(|(_, rs)| rs))
            .chain(self.any.iter())
    }
}

#[cfg(test)]
mod tests;
