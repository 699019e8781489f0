//! Micro-benchmarks of the hot pure code: authority parsing and normalisation,
//! route lookup in a table of 10,000 routes, identity matching.
//!
//! `cargo bench -p isthmus-benches --bench micro`

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use isthmus::routes::{
    Authority, Authorization, Backend, BackendSettings, Endpoint, HostMatch, IdentityPattern,
    PortMatch, Route, RouteMatch, RouteTable, RouteTarget,
};

fn table(n: usize) -> RouteTable {
    let settings = Arc::new(BackendSettings::with_timeouts(
        Duration::from_secs(1),
        Duration::from_secs(1),
        Duration::from_secs(1),
    ));
    let routes = (0..n)
        .map(|i| {
            let ep = Arc::new(Endpoint::new(
                ([127, 1, (i >> 8) as u8, i as u8], 8080).into(),
            ));
            Route {
                name: format!("service/bench/svc-{i}:80").into(),
                hosts: vec![HostMatch::Exact(
                    format!("svc-{i}.bench.svc.cluster.local").into(),
                    PortMatch::Port(80),
                )],
                matcher: RouteMatch::any().into(),
                authz: Authorization::new(Arc::from(vec![IdentityPattern::Any])),
                target: RouteTarget::new(vec![Backend::new(
                    format!("bench/svc-{i}:80").into(),
                    1,
                    vec![ep],
                    settings.clone(),
                )]),
            }
        })
        .collect();
    RouteTable::new(routes, n, n)
}

fn bench(c: &mut Criterion) {
    c.bench_function("authority_parse", |b| {
        b.iter(|| Authority::parse(black_box(b"PodInfo.Test.svc.cluster.local.:9898")))
    });
    let t = table(10_000);
    let a = Authority::parse(b"svc-7777.bench.svc.cluster.local:80").expect("authority");
    let headers = HeaderMap::new();
    c.bench_function("route_lookup_10k", |b| {
        b.iter(|| {
            t.lookup(black_box(&a), "/api/x", &Method::GET, &headers)
                .is_some()
        })
    });
    let miss = Authority::parse(b"nothing.bench.svc.cluster.local:80").expect("authority");
    c.bench_function("route_lookup_10k_miss", |b| {
        b.iter(|| {
            t.lookup(black_box(&miss), "/", &Method::GET, &headers)
                .is_none()
        })
    });
    let authz = Authorization::new(Arc::from(vec![
        IdentityPattern::parse("spiffe://south.example/*").expect("pattern"),
        IdentityPattern::parse("*.serviceaccount.identity.linkerd.cluster.local").expect("pattern"),
        IdentityPattern::parse("spiffe://west.example/*").expect("pattern"),
    ]));
    c.bench_function("identity_match", |b| {
        b.iter(|| authz.allows(black_box("spiffe://west.example/ns/default/sa/peer")))
    });
}

criterion_group! {
    name = micro;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(micro);
