use std::time::Duration;

use super::*;
use crate::routes::{
    Authorization, Backend, BackendSettings, IdentityPattern, RouteMatch, RouteTarget,
};

fn route(name: &str, hosts: Vec<HostMatch>, prefix: &str) -> Arc<Route> {
    let settings = Arc::new(BackendSettings::with_timeouts(
        Duration::from_secs(1),
        Duration::from_secs(1),
        Duration::from_secs(1),
    ));
    Arc::new(Route {
        name: name.into(),
        hosts,
        matcher: RouteMatch {
            prefix: prefix.into(),
            ..RouteMatch::any()
        }
        .into(),
        authz: Authorization::new(Arc::from(vec![IdentityPattern::Any])),
        target: RouteTarget::new(vec![Backend::new(name.into(), 1, Vec::new(), settings)]),
    })
}

fn exact(h: &str) -> HostMatch {
    HostMatch::Exact(h.into(), PortMatch::Any)
}

fn names(rs: &[Arc<Route>]) -> Vec<&str> {
    rs.iter().map(|r| &*r.name).collect()
}

#[test]
fn inserted_in_any_order_routes_go_most_specific_first() {
    let a = route("a", vec![exact("h")], "/");
    let b = route("b", vec![exact("h")], "/api");
    let c = route("c", vec![exact("h")], "/api/v1");
    let d = route("d", vec![exact("h")], "/api");
    for order in [[&a, &b, &c, &d], [&d, &c, &b, &a], [&b, &d, &a, &c]] {
        let index = HostIndex::from_routes(order.into_iter().cloned());
        let entry = index.exact("h").expect("host");
        assert_eq!(
            names(entry.routes(PortMatch::Any).expect("port")),
            ["c", "b", "d", "a"]
        );
        assert_eq!(index.route_count(), 4);
    }
}

#[test]
fn removing_a_route_removes_it_from_every_host_and_drops_empty_hosts() {
    let both = route("both", vec![exact("x"), exact("y")], "/");
    let x = route("x", vec![exact("x")], "/");
    let wild = route("wild", vec![HostMatch::Wildcard(".example".into())], "/");
    let any = route("any", vec![HostMatch::Any], "/");
    let mut index = HostIndex::from_routes([both.clone(), x.clone(), wild.clone(), any.clone()]);
    assert_eq!(index.route_count(), 4);
    index.remove(&both);
    assert!(index.exact("y").is_none(), "a host without routes is gone");
    let entry = index.exact("x").expect("x keeps its own route");
    assert_eq!(names(entry.routes(PortMatch::Any).expect("port")), ["x"]);
    index.remove(&wild);
    index.remove(&any);
    assert!(index.wildcards().is_empty());
    assert!(index.any().is_empty());
    assert_eq!(index.route_count(), 1);
    // An equal route that is not the one inserted removes nothing.
    index.remove(&route("x", vec![exact("x")], "/"));
    assert_eq!(index.route_count(), 1);
}

#[test]
fn a_change_to_one_host_leaves_the_published_copy_and_other_hosts_alone() {
    let hosts: Vec<Arc<Route>> = (0..5000)
        .map(|i| route(&format!("r{i}"), vec![exact(&format!("h{i}"))], "/"))
        .collect();
    let mut index = HostIndex::from_routes(hosts.iter().cloned());
    let published = index.clone();
    let extra = route("extra", vec![exact("h1")], "/x");
    index.insert(&extra);
    // The published copy still has one route on h1; the index has two.
    let old = published.exact("h1").expect("h1");
    assert_eq!(names(old.routes(PortMatch::Any).expect("port")), ["r1"]);
    let new = index.exact("h1").expect("h1");
    assert_eq!(
        names(new.routes(PortMatch::Any).expect("port")),
        ["extra", "r1"]
    );
    // Every other host is the very same entry in both.
    for i in (0..5000).filter(|i| *i != 1) {
        let h = format!("h{i}");
        let (a, b) = (
            published.exact(&h).expect("host"),
            index.exact(&h).expect("host"),
        );
        assert!(Arc::ptr_eq(a, b), "{h} was copied");
    }
}
