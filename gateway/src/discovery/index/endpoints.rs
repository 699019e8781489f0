//! The endpoint pool: one [`Endpoint`] per address, shared by every route and
//! table that uses it (so in-flight counts and passive health survive
//! rebuilds), counted by the routes holding it and forgotten when none does.
//! Counting per route keeps a build's cost to the routes it changed: no
//! per-build walk over every endpoint of 100,000 Services.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::hash::HashMap;
use crate::routes::{Endpoint, Route};

/// Which table a route is in (the ingress table's endpoints are the ones counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Table {
    Ingress,
    Egress,
}

#[derive(Debug)]
struct Pooled {
    endpoint: Arc<Endpoint>,
    /// Backends of ingress routes listing it.
    ingress: u32,
    /// Backends of egress routes listing it.
    egress: u32,
}

#[derive(Debug, Default)]
pub(super) struct EndpointPool {
    pooled: HashMap<SocketAddr, Pooled>,
    /// Addresses that may have no holder left (handed out, or released).
    unheld: Vec<SocketAddr>,
    /// Addresses some ingress route holds.
    ingress_used: usize,
}

impl EndpointPool {
    /// The endpoint of `addr`, the pooled one when there is one.
    pub(super) fn get(&mut self, addr: SocketAddr) -> Arc<Endpoint> {
        let unheld = &mut self.unheld;
        self.pooled
            .entry(addr)
            .or_insert_with(|| {
                unheld.push(addr);
                Pooled {
                    endpoint: Arc::new(Endpoint::new(addr)),
                    ingress: 0,
                    egress: 0,
                }
            })
            .endpoint
            .clone()
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
            let Some(p) = self.pooled.get_mut(&addr) else {
                continue;
            };
            match table {
                Table::Ingress => {
                    p.ingress += 1;
                    if p.ingress == 1 {
                        self.ingress_used += 1;
                    }
                }
                Table::Egress => p.egress += 1,
            }
        }
    }

    /// Undoes [`EndpointPool::hold`] for a route leaving `table`.
    pub(super) fn release(&mut self, route: &Route, table: Table) {
        for addr in Self::endpoints(route) {
            let Some(p) = self.pooled.get_mut(&addr) else {
                continue;
            };
            match table {
                Table::Ingress if p.ingress > 0 => {
                    p.ingress -= 1;
                    if p.ingress == 0 {
                        self.ingress_used -= 1;
                    }
                }
                Table::Ingress => {}
                Table::Egress => p.egress = p.egress.saturating_sub(1),
            }
            if p.ingress == 0 && p.egress == 0 {
                self.unheld.push(addr);
            }
        }
    }

    /// Forgets endpoints no route holds (call once the build is done).
    pub(super) fn sweep(&mut self) {
        for addr in std::mem::take(&mut self.unheld) {
            if self
                .pooled
                .get(&addr)
                .is_some_and(|p| p.ingress == 0 && p.egress == 0)
            {
                self.pooled.remove(&addr);
            }
        }
    }

    /// Distinct endpoints the ingress table uses.
    pub(super) fn ingress_used(&self) -> usize {
        self.ingress_used
    }
}
