//! The endpoint pool: one [`Endpoint`] per address, shared by every route and
//! table that uses it (so in-flight counts and passive health survive
//! rebuilds), counted by the routes holding it and forgotten when none does.
//! Counting per route keeps a build's cost to the routes it changed: no
//! per-build walk over every endpoint of 100,000 Services.

use std::borrow::Borrow;
use std::cell::Cell;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::hash::HashSet;
use crate::routes::{Endpoint, Route};

/// Which table a route is in (the ingress table's endpoints are the ones counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Table {
    Ingress,
    Egress,
}

/// A pooled endpoint, keyed by its own address (the set holds no second
/// copy of a 32-byte `SocketAddr`: at 300,000 endpoints, 16 MiB less).
#[derive(Debug)]
struct Pooled {
    endpoint: Arc<Endpoint>,
    /// Backends of ingress routes listing it.
    ingress: Cell<u32>,
    /// Backends of egress routes listing it.
    egress: Cell<u32>,
}

impl Pooled {
    fn unheld(&self) -> bool {
        self.ingress.get() == 0 && self.egress.get() == 0
    }
}

impl Borrow<SocketAddr> for Pooled {
    fn borrow(&self) -> &SocketAddr {
        &self.endpoint.addr
    }
}

impl PartialEq for Pooled {
    fn eq(&self, other: &Self) -> bool {
        self.endpoint.addr == other.endpoint.addr
    }
}

impl Eq for Pooled {}

impl Hash for Pooled {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As the `SocketAddr` it borrows as.
        self.endpoint.addr.hash(state);
    }
}

#[derive(Debug, Default)]
pub(super) struct EndpointPool {
    pooled: HashSet<Pooled>,
    /// Addresses that may have no holder left (handed out, or released).
    unheld: Vec<SocketAddr>,
    /// Addresses some ingress route holds.
    ingress_used: usize,
}

impl EndpointPool {
    /// The endpoint of `addr`, the pooled one when there is one.
    pub(super) fn get(&mut self, addr: SocketAddr) -> Arc<Endpoint> {
        if let Some(p) = self.pooled.get(&addr) {
            return p.endpoint.clone();
        }
        let endpoint = Arc::new(Endpoint::new(addr));
        self.unheld.push(addr);
        self.pooled.insert(Pooled {
            endpoint: endpoint.clone(),
            ingress: Cell::new(0),
            egress: Cell::new(0),
        });
        endpoint
    }

    fn endpoints(route: &Route) -> impl Iterator<Item = SocketAddr> + '_ {
        route
            .target
            .backends
            .iter()
            .flat_map(|b| &b.endpoints)
            .map(|e| e.addr)
    }

    /// Counts `route`'s endpoints as held by a route of `table`.
    pub(super) fn hold(&mut self, route: &Route, table: Table) {
        for addr in Self::endpoints(route) {
            let Some(p) = self.pooled.get(&addr) else {
                continue;
            };
            match table {
                Table::Ingress => {
                    p.ingress.set(p.ingress.get() + 1);
                    if p.ingress.get() == 1 {
                        self.ingress_used += 1;
                    }
                }
                Table::Egress => p.egress.set(p.egress.get() + 1),
            }
        }
    }

    /// Undoes [`EndpointPool::hold`] for a route leaving `table`.
    pub(super) fn release(&mut self, route: &Route, table: Table) {
        for addr in Self::endpoints(route) {
            let Some(p) = self.pooled.get(&addr) else {
                continue;
            };
            match table {
                Table::Ingress if p.ingress.get() > 0 => {
                    p.ingress.set(p.ingress.get() - 1);
                    if p.ingress.get() == 0 {
                        self.ingress_used -= 1;
                    }
                }
                Table::Ingress => {}
                Table::Egress => p.egress.set(p.egress.get().saturating_sub(1)),
            }
            if p.unheld() {
                self.unheld.push(addr);
            }
        }
    }

    /// Forgets endpoints no route holds (call once the build is done).
    pub(super) fn sweep(&mut self) {
        for addr in std::mem::take(&mut self.unheld) {
            if self.pooled.get(&addr).is_some_and(Pooled::unheld) {
                self.pooled.remove(&addr);
            }
        }
    }

    /// Distinct endpoints the ingress table uses.
    pub(super) fn ingress_used(&self) -> usize {
        self.ingress_used
    }
}
