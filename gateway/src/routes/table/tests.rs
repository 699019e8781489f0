use super::*;
use crate::routes::IdentityPattern;
use std::collections::HashMap;

fn settings() -> Arc<BackendSettings> {
    Arc::new(BackendSettings::with_timeouts(
        Duration::from_secs(1),
        Duration::from_secs(1),
        Duration::from_secs(1),
    ))
}

fn route(name: &str, host: HostMatch, prefix: &str, eps: &[&str]) -> Route {
    let endpoints = eps
        .iter()
        .map(|a| Arc::new(Endpoint::new(a.parse().expect("addr"))))
        .collect();
    Route {
        name: name.into(),
        hosts: vec![host],
        matcher: RouteMatch {
            prefix: prefix.into(),
            ..RouteMatch::any()
        }
        .into(),
        authz: Authorization::new(Arc::from(vec![IdentityPattern::Any])),
        target: RouteTarget::new(vec![Backend::new(name.into(), 1, endpoints, settings())]),
    }
}

fn lookup<'a>(t: &'a RouteTable, authority: &str, path: &str) -> Option<&'a str> {
    let a = Authority::parse(authority.as_bytes()).expect("authority");
    t.lookup(&a, path, &Method::GET, &HeaderMap::new())
        .map(|r| &*r.name)
}

fn exact(h: &str, p: Option<u16>) -> HostMatch {
    HostMatch::Exact(h.into(), p.map_or(PortMatch::Any, PortMatch::Port))
}

#[test]
fn exact_port_then_any_port_then_wildcard_then_any() {
    let t = RouteTable::new(
        vec![
            route("port", exact("a.example", Some(80)), "/", &[]),
            route("noport", exact("a.example", None), "/", &[]),
            route("wild", HostMatch::Wildcard(".example".into()), "/", &[]),
            route("any", HostMatch::Any, "/", &[]),
        ],
        0,
        0,
    );
    assert_eq!(lookup(&t, "a.example:80", "/"), Some("port"));
    assert_eq!(lookup(&t, "a.example:81", "/"), Some("noport"));
    assert_eq!(lookup(&t, "a.example", "/"), Some("noport"));
    assert_eq!(lookup(&t, "b.example", "/"), Some("wild"));
    let portless = RouteTable::new(
        vec![route(
            "default",
            HostMatch::Exact("a.example".into(), PortMatch::Absent),
            "/",
            &[],
        )],
        0,
        0,
    );
    assert_eq!(lookup(&portless, "a.example", "/"), Some("default"));
    assert_eq!(
        lookup(&portless, "a.example:80", "/"),
        None,
        "a portless default is not any port"
    );
    assert_eq!(
        lookup(&t, "example", "/"),
        Some("any"),
        "wildcard needs a label before the suffix"
    );
    assert_eq!(lookup(&t, "other", "/x"), Some("any"));
}

#[test]
fn longest_prefix_wins_and_no_match_is_none() {
    let t = RouteTable::new(
        vec![
            route("root", exact("a", None), "/api", &[]),
            route("v1", exact("a", None), "/api/v1", &[]),
        ],
        0,
        0,
    );
    assert_eq!(lookup(&t, "a", "/api/v1/x"), Some("v1"));
    assert_eq!(lookup(&t, "a", "/api/v2"), Some("root"));
    assert_eq!(lookup(&t, "a", "/other"), None);
    assert_eq!(lookup(&t, "b", "/api"), None);
}

#[test]
fn header_and_method_conditions() {
    let mut canary = route("canary", exact("a", None), "/", &[]);
    Arc::make_mut(&mut canary.matcher).headers = vec![HeaderMatch {
        name: "x-canary".into(),
        value: "1".into(),
    }];
    let mut post = route("post", exact("a", None), "/", &[]);
    Arc::make_mut(&mut post.matcher).method = Some("POST".into());
    let t = RouteTable::new(
        vec![route("plain", exact("a", None), "/", &[]), canary, post],
        0,
        0,
    );
    let a = Authority::parse(b"a").expect("authority");
    let mut h = HeaderMap::new();
    assert_eq!(
        &*t.lookup(&a, "/", &Method::GET, &h).expect("route").name,
        "plain"
    );
    assert_eq!(
        &*t.lookup(&a, "/", &Method::POST, &h).expect("route").name,
        "post"
    );
    h.insert("x-canary", HeaderValue::from_static("1"));
    assert_eq!(
        &*t.lookup(&a, "/", &Method::GET, &h).expect("route").name,
        "canary"
    );
}

#[test]
fn round_robin_visits_every_endpoint_and_avoids() {
    let r = route(
        "r",
        HostMatch::Any,
        "/",
        &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
    );
    let b = &r.target.backends[0];
    let mut seen: Vec<SocketAddr> = (0..3)
        .map(|_| b.pick(None).expect("endpoint").addr)
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3);
    let avoid: SocketAddr = "10.0.0.2:80".parse().expect("addr");
    for _ in 0..10 {
        assert_ne!(b.pick(Some(avoid)).expect("endpoint").addr, avoid);
    }
}

#[test]
fn least_request_prefers_idle_endpoint() {
    let mut r = route("r", HostMatch::Any, "/", &["10.0.0.1:80", "10.0.0.2:80"]);
    let mut s = BackendSettings::clone(&settings());
    s.lb = LbPolicy::LeastRequest;
    let eps = r.target.backends[0].endpoints.clone();
    r.target = RouteTarget::new(vec![Backend::new("b".into(), 1, eps.clone(), Arc::new(s))]);
    let _busy: Vec<InFlight> = (0..5).map(|_| eps[0].begin()).collect();
    let b = &r.target.backends[0];
    let picks = (0..200)
        .filter(|_| b.pick(None).expect("endpoint").addr == eps[1].addr)
        .count();
    // Both random choices land on the busy endpoint only in 1/4 of the draws.
    assert!(picks > 120, "idle endpoint chosen {picks}/200 times");
    drop(_busy);
    assert_eq!(eps[0].in_flight(), 0);
}

#[test]
fn weights_split_traffic() {
    let eps = vec![Arc::new(Endpoint::new(
        "10.0.0.1:80".parse().expect("addr"),
    ))];
    let target = RouteTarget::new(vec![
        Backend::new("a".into(), 90, eps.clone(), settings()),
        Backend::new("b".into(), 10, eps.clone(), settings()),
        Backend::new("c".into(), 0, eps, settings()),
    ]);
    let mut counts = HashMap::new();
    for _ in 0..10_000 {
        let i = target.choose().expect("backend");
        *counts
            .entry(target.backends[i].service.to_string())
            .or_insert(0) += 1;
    }
    assert!(!counts.contains_key("c"), "weight 0 is never chosen");
    let a = counts["a"];
    assert!((8700..9300).contains(&a), "a chosen {a} of 10000");
}

#[test]
fn consecutive_connect_failures_eject_an_endpoint_until_it_connects_or_expires() {
    let r = route(
        "svc",
        exact("a", None),
        "/",
        &["10.0.0.1:80", "10.0.0.2:80"],
    );
    let b = &r.target.backends[0];
    let (bad, good) = (&b.endpoints[0], &b.endpoints[1]);
    let policy = PassiveHealth {
        consecutive_failures: 2,
        ejection: Duration::from_secs(60),
    };

    assert!(!bad.connect_failed(&policy), "one failure is not enough");
    bad.connected();
    assert!(
        !bad.connect_failed(&policy),
        "a success started the count over"
    );
    assert!(
        bad.connect_failed(&policy),
        "second consecutive failure ejects"
    );
    assert!(bad.is_ejected());
    for _ in 0..10 {
        assert_eq!(b.pick(None).map(|e| e.addr), Some(good.addr));
    }
    // When every endpoint is ejected, they are still tried.
    good.connect_failed(&policy);
    good.connect_failed(&policy);
    assert!(b.pick(None).is_some());
    // A working connection brings an endpoint back at once.
    bad.connected();
    assert!(!bad.is_ejected());
    for _ in 0..10 {
        assert_eq!(b.pick(None).map(|e| e.addr), Some(bad.addr));
    }

    let brief = PassiveHealth {
        consecutive_failures: 1,
        ejection: Duration::from_millis(1),
    };
    assert!(good.connect_failed(&brief));
    // Ejection ends by itself: wait on the condition, bounded.
    let started = std::time::Instant::now();
    while good.is_ejected() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "ejection never expired"
        );
        std::thread::yield_now();
    }
}

fn backend(name: &str, weight: u32, eps: &[&str]) -> Backend {
    let endpoints = eps
        .iter()
        .map(|a| Arc::new(Endpoint::new(a.parse().expect("addr"))))
        .collect();
    Backend::new(name.into(), weight, endpoints, settings())
}

fn shares(t: &RouteTarget, n: usize) -> Vec<usize> {
    let mut counts = vec![0; t.backends.len()];
    for _ in 0..n {
        if let Some(i) = t.choose_servable(None) {
            counts[i] += 1;
        }
    }
    counts
}

#[test]
fn failover_skips_backends_that_cannot_serve() {
    let t = RouteTarget::new(vec![
        backend("local", 50, &["127.0.0.1:1"]),
        backend("remote", 50, &[]),
    ]);
    assert_eq!(shares(&t, 1000), vec![1000, 0], "no endpoints, no traffic");
    let both = RouteTarget::new(vec![
        backend("local", 50, &["127.0.0.1:1"]),
        backend("remote", 50, &["127.0.0.1:2"]),
    ]);
    let s = shares(&both, 10_000);
    assert!((4_500..5_500).contains(&s[0]), "{s:?}");
    let none = RouteTarget::new(vec![backend("a", 1, &[]), backend("b", 1, &[])]);
    assert_eq!(none.choose_servable(None), None);
    // An ejected endpoint counts as unable to serve.
    let policy = PassiveHealth {
        consecutive_failures: 1,
        ejection: Duration::from_secs(60),
    };
    assert!(both.backends[1].endpoints[0].connect_failed(&policy));
    assert_eq!(shares(&both, 1000), vec![1000, 0]);
    // `avoid` (a retry) picks another backend.
    assert_eq!(both.choose_servable(Some(0)), None, "the other is ejected");
}

#[test]
fn primary_takes_all_while_it_can_serve() {
    let t = RouteTarget::new(vec![
        backend("primary", 1, &["127.0.0.1:1"]),
        backend("backup", 0, &["127.0.0.1:2"]),
    ])
    .with_primary(Some(0));
    assert_eq!(shares(&t, 1000), vec![1000, 0]);
    let down = RouteTarget::new(vec![
        backend("primary", 1, &[]),
        backend("backup", 0, &["127.0.0.1:2"]),
    ])
    .with_primary(Some(0));
    assert_eq!(shares(&down, 1000), vec![0, 1000], "weight-0 backups share");
}
