use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::routes::{
    Authorization, Backend, BackendSettings, Endpoint, IdentityPattern, LbPolicy, RouteMatch,
    RouteTarget,
};

const WEST: &str = "spiffe://west.example/ns/default/sa/peer";
const HOST: &str = "podinfo.test.svc.cluster.local";

fn cfg() -> ExplainConfig {
    ExplainConfig {
        cluster_domain: "cluster.local".into(),
        export_label: "mirror.linkerd.io/exported".into(),
    }
}

fn settings(lb: LbPolicy) -> Arc<BackendSettings> {
    let mut s = BackendSettings::with_timeouts(
        Duration::from_secs(1),
        Duration::from_secs(1),
        Duration::from_secs(1),
    );
    s.lb = lb;
    Arc::new(s)
}

fn backend(name: &str, weight: u32, eps: &[&str], lb: LbPolicy) -> Backend {
    let eps = eps
        .iter()
        .map(|a| Arc::new(Endpoint::new(a.parse().expect("addr"))))
        .collect();
    Backend::new(name.into(), weight, eps, settings(lb))
}

fn allow(patterns: &[&str]) -> Authorization {
    Authorization::new(
        patterns
            .iter()
            .map(|p| IdentityPattern::parse(p).expect("pattern"))
            .collect(),
    )
}

fn table() -> RouteTable {
    let svc = Route {
        name: "service/test/podinfo:9898".into(),
        hosts: vec![
            HostMatch::Exact(HOST.into(), PortMatch::Port(9898)),
            HostMatch::Exact(HOST.into(), PortMatch::Absent),
        ],
        matcher: RouteMatch::any().into(),
        authz: allow(&["spiffe://west.example/*"]),
        target: RouteTarget::new(vec![backend(
            "test/podinfo:9898",
            1,
            &["10.0.0.1:9898", "10.0.0.2:9898", "10.0.0.3:9898"],
            LbPolicy::RoundRobin,
        )]),
    };
    let split = Route {
        name: "mapping/test/split".into(),
        hosts: vec![HostMatch::Wildcard(".split.example".into())],
        matcher: RouteMatch {
            prefix: "/api".into(),
            ..RouteMatch::any()
        }
        .into(),
        authz: allow(&["*"]),
        target: RouteTarget::new(vec![
            backend(
                "test/a:80",
                75,
                &["10.0.1.1:80", "10.0.1.2:80"],
                LbPolicy::LeastRequest,
            ),
            backend("test/b-east:80", 25, &[], LbPolicy::RoundRobin),
        ]),
    };
    let dead = Route {
        name: "mapping/test/dead".into(),
        hosts: vec![HostMatch::Exact("dead.example".into(), PortMatch::Any)],
        matcher: RouteMatch::any().into(),
        authz: allow(&["*"]),
        target: RouteTarget::new(vec![
            backend("test/dead:80", 1, &[], LbPolicy::RoundRobin).with_not_ready(2)
        ]),
    };
    let unexported: HashSet<String> = ["test/secret".to_string()].into();
    RouteTable::new(vec![svc, split, dead], 4, 5)
        .with_discovery_facts(Arc::from(Vec::new()), Arc::new(unexported))
}

fn ask(host: &str, path: &str, identity: &str) -> Value {
    explain(
        &table(),
        &cfg(),
        &Question {
            host: host.into(),
            path: path.into(),
            method: Method::GET,
            identity: identity.into(),
        },
    )
}

#[test]
fn a_served_request_names_route_source_pattern_backend_and_next_endpoint() {
    let a = ask("PodInfo.Test.svc.cluster.local.:9898", "/x/../y", WEST);
    assert_eq!(a["decision"], "proxy", "{a:#}");
    assert_eq!(a["authority"]["normalised"], format!("{HOST}:9898"));
    assert_eq!(a["path"], "/y");
    assert_eq!(a["route"]["name"], "service/test/podinfo:9898");
    assert_eq!(a["route"]["source"], "Service test/podinfo");
    assert_eq!(a["route"]["match_kind"], "exact host and port");
    assert_eq!(
        a["authorization"]["allowed_by"],
        json!(["spiffe://west.example/*"])
    );
    assert_eq!(a["backends"][0]["service"], "test/podinfo:9898");
    assert!(a["backends"][0]["endpoint"]["next"].is_string());
    assert_eq!(
        ask(HOST, "/", WEST)["route"]["match_kind"],
        "exact host, no port"
    );
}

#[test]
fn round_robin_preview_is_what_the_proxy_picks_next_and_does_not_advance() {
    let t = table();
    let q = Question {
        host: HOST.into(),
        path: "/".into(),
        method: Method::GET,
        identity: WEST.into(),
    };
    let first = explain(&t, &cfg(), &q)["backends"][0]["endpoint"]["next"].clone();
    let again = explain(&t, &cfg(), &q)["backends"][0]["endpoint"]["next"].clone();
    assert_eq!(first, again, "explain must not consume round-robin state");
    let a = Authority::parse(HOST.as_bytes()).expect("authority");
    let route =
        request::route_for(&t, &a, "/", None, &Method::GET, &HeaderMap::new()).expect("route");
    let picked = route.target.backends[0].pick(None).expect("endpoint");
    assert_eq!(first, json!(picked.addr.to_string()));
    let after = explain(&t, &cfg(), &q)["backends"][0]["endpoint"]["next"].clone();
    assert_ne!(after, first, "the proxy's pick moved the round robin on");
}

#[test]
fn refusals_name_their_rule() {
    let bad = ask("bad host", "/", WEST);
    assert_eq!(
        (&bad["status"], &bad["rule"]),
        (&json!(400), &json!("bad authority"))
    );
    let ip = ask("10.0.0.1:80", "/", WEST);
    assert_eq!(ip["status"], 400);

    let unknown = ask("nothing.test.svc.cluster.local", "/", WEST);
    assert_eq!(
        (&unknown["status"], &unknown["rule"]),
        (&json!(404), &json!("no route"))
    );
    let wrong_port = ask(&format!("{HOST}:80"), "/", WEST);
    assert_eq!(wrong_port["status"], 404);
    assert!(
        wrong_port["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ports: 9898, no port")),
        "{wrong_port:#}"
    );
    let hidden = ask("secret.test.svc.cluster.local:80", "/", WEST);
    assert_eq!(
        (&hidden["status"], &hidden["rule"]),
        (&json!(404), &json!("not exported"))
    );
    assert!(hidden["reason"].as_str().is_some_and(
        |r| r.contains("Service test/secret") && r.contains("mirror.linkerd.io/exported")
    ));

    let east = ask(HOST, "/", "spiffe://east.example/ns/default/sa/peer");
    assert_eq!(
        (&east["status"], &east["rule"]),
        (&json!(403), &json!("not authorized"))
    );
    assert_eq!(
        east["authorization"]["patterns"],
        json!(["spiffe://west.example/*"])
    );
    let anonymous = ask(HOST, "/", "");
    assert_eq!(anonymous["status"], 403);

    let dead = ask("dead.example:8080", "/", WEST);
    assert_eq!(
        (&dead["status"], &dead["rule"]),
        (&json!(503), &json!("no ready endpoints"))
    );
    assert_eq!(dead["route"]["match_kind"], "exact host, any port");
    assert_eq!(dead["backends"][0]["ready"], 0);
    assert_eq!(dead["backends"][0]["total"], 2);

    let hidden_slash = ask(HOST, "/a%2Fb", WEST);
    assert_eq!(
        (&hidden_slash["status"], &hidden_slash["rule"]),
        (&json!(400), &json!("bad path"))
    );
}

#[test]
fn a_split_gives_shares_and_least_request_says_one_of() {
    let a = ask("www.split.example", "/api/v1", WEST);
    assert_eq!(a["decision"], "proxy", "{a:#}");
    assert_eq!(a["route"]["source"], "Mapping test/split");
    assert_eq!(a["route"]["match_kind"], "wildcard host");
    assert_eq!(a["backends"][0]["share_percent"], 75.0);
    assert_eq!(
        a["backends"][0]["endpoint"]["one_of"],
        json!(["10.0.1.1:80", "10.0.1.2:80"])
    );
    assert_eq!(a["backends"][1]["can_serve"], false);
    assert!(a["reason"].as_str().is_some_and(|r| r.contains("25%")));
    // Outside the prefix: no route.
    assert_eq!(ask("www.split.example", "/other", WEST)["status"], 404);
}

#[test]
fn query_parameters_are_checked() {
    let q = |s: &str| Question::from_query(&crate::admin::query::parse(Some(s)));
    assert!(q("identity=x").is_err_and(|e| e.contains("host")));
    assert!(q("host=a.example").is_err_and(|e| e.contains("identity")));
    assert!(q("host=a.example&identity=x&method=G%20T").is_err_and(|e| e.contains("method")));
    assert!(q("host=a.example&identity=x&path=nope").is_err_and(|e| e.contains("path")));
    let ok = q("host=a.example&identity=x&method=post").expect("valid");
    assert_eq!((ok.path.as_str(), ok.method), ("/", Method::POST));
}

#[test]
fn service_hosts_are_recognised() {
    assert_eq!(
        service_of_host("podinfo.test.svc.cluster.local", "cluster.local"),
        Some(("podinfo", "test"))
    );
    assert_eq!(
        service_of_host("podinfo.test.svc", "cluster.local"),
        Some(("podinfo", "test"))
    );
    assert_eq!(
        service_of_host("a.b.c.svc.cluster.local", "cluster.local"),
        None
    );
    assert_eq!(service_of_host("example.com", "cluster.local"), None);
}
