//! Routing state: the immutable [`RouteTable`] the proxy reads per request, the
//! authority parser that normalises Host / `:authority`, the path normaliser, and
//! identity patterns.
//!
//! Everything here is pure data and matching; discovery builds tables and
//! publishes them through a [`SharedRoutes`] handle (an `ArcSwap`, no lock on the
//! request path).

mod authority;
mod hosts;
mod identity;
mod path;
mod table;

pub use authority::{Authority, AuthorityError};
pub use hosts::{HostEntry, HostIndex};
pub use identity::{Authorization, IdentityPattern};
pub use path::{normalize_path, PathError};
pub use table::health_clock;
pub use table::{
    describe_route, host_label, match_label, route_source, Backend, BackendSettings, DirectAnswer,
    Endpoint, EndpointPreview, HeaderMatch, HostMatch, InFlight, LbPolicy, MirrorService,
    PassiveHealth, PortMatch, Redirect, RemoteTarget, RewriteMode, Route, RouteMatch, RouteTable,
    RouteTarget,
};

use std::sync::Arc;

use arc_swap::ArcSwap;

/// The published route table, shared between discovery (writer) and the proxy (readers).
pub type SharedRoutes = Arc<ArcSwap<RouteTable>>;

/// An empty table behind a fresh shared handle.
pub fn shared_empty() -> SharedRoutes {
    Arc::new(ArcSwap::from_pointee(RouteTable::default()))
}
