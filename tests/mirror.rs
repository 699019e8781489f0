//! The mirror controller end to end: two API-server doubles play west (where
//! the controller runs and writes) and east (the target, read with the token
//! `isthmus link` wraps), and a real Isthmus gateway is east's gateway, probed
//! over real sockets.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use isthmus::mirror::link::{Link, LinkSpec, ProbeSpec};
use isthmus::mirror::metrics::MirrorMetrics;
use isthmus::mirror::probe::{Resolve, SystemResolver};
use isthmus::mirror::{LeaseTiming, Mirror, MirrorOptions};
use isthmus_tests::apiserver::{ApiServer, Options};
use isthmus_tests::manifests::{service, slice, typed};
use isthmus_tests::{
    eventually_for, isthmus_bin, kubectl_apply, kubectl_available, Harness, Upstream,
};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

const TOKEN: &str = "east-remote-access-token";
const WAIT: Duration = Duration::from_secs(20);

/// East: its API double (token required), its gateway, a podinfo upstream.
struct East {
    api: ApiServer,
    gateway: Option<Harness>,
    up: Upstream,
    admin: std::net::SocketAddr,
    probe: std::net::SocketAddr,
    gateway_addr: std::net::SocketAddr,
}

impl East {
    async fn start() -> East {
        let api = ApiServer::start_with(Options {
            require_token: Some(TOKEN.into()),
            ..Options::default()
        })
        .await;
        let up = Upstream::start("podinfo-east").await;
        let gateway = Harness::start(&[]).await;
        let admin = gateway.gateway.admin_addr;
        let probe = gateway.gateway.probe_addr;
        let gateway_addr = gateway.gateway.gateway_addr;
        let east = East {
            api,
            gateway: Some(gateway),
            up,
            admin,
            probe,
            gateway_addr,
        };
        east.api.apply(&typed::<Service>(&gateway_service(
            gateway_addr.port(),
            probe.port(),
        )));
        east.api.apply_json(
            "secrets",
            json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "isthmus-mirror-remote-access", "namespace": "isthmus",
                    "annotations": {"kubernetes.io/service-account.name": "isthmus-mirror-remote-access"}},
                "type": "kubernetes.io/service-account-token",
                "stringData": {"token": TOKEN}}),
        );
        east.export("podinfo", 9898, true);
        east
    }

    fn export(&self, name: &str, port: u16, ready: bool) {
        self.api
            .apply(&typed::<Service>(&service("test", name, true, port)));
        self.api.apply(&typed::<EndpointSlice>(&slice(
            "test",
            &format!("{name}-1"),
            name,
            self.up.addr,
            ready,
        )));
    }

    async fn stop_gateway(&mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown(Duration::from_millis(100)).await;
        }
    }

    /// Starts the gateway again on the same ports.
    async fn start_gateway(&mut self) {
        let (admin, probe, gw) = (self.admin, self.probe, self.gateway_addr);
        self.gateway = Some(
            Harness::start_with(&[], |cfg| {
                cfg.listen.admin = admin;
                cfg.listen.probe = probe;
                cfg.listen.gateway = gw;
            })
            .await,
        );
    }
}

fn gateway_service(gateway_port: u16, probe_port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: isthmus-gateway
  namespace: isthmus
  labels: {{mirror.linkerd.io/multicluster-gateway: "true"}}
  annotations:
    mirror.linkerd.io/gateway-identity: spiffe://east.example/ns/isthmus/sa/isthmus-gateway
    mirror.linkerd.io/probe-path: /ready
    mirror.linkerd.io/probe-period: "1"
spec:
  type: LoadBalancer
  ports:
    - {{name: mc-gateway, port: {gateway_port}, targetPort: gateway}}
    - {{name: mc-probe, port: {probe_port}, targetPort: probe}}
status:
  loadBalancer:
    ingress: [{{ip: 127.0.0.1}}]
"#
    )
}

fn credentials(east: &ApiServer, token: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "cluster-credentials-east", "namespace": "isthmus"},
        "type": "mirror.linkerd.io/remote-kubeconfig",
        "stringData": {"kubeconfig": east.kubeconfig_yaml_with_token(token)}})
}

fn link(east: &East, address: &str, period: &str, threshold: &str) -> Link {
    let mut l = Link::new(
        "east",
        LinkSpec {
            target_cluster_name: "east".into(),
            cluster_credentials_secret: "cluster-credentials-east".into(),
            gateway_address: address.into(),
            gateway_port: east.gateway_addr.port().to_string(),
            gateway_identity: "spiffe://east.example/ns/isthmus/sa/isthmus-gateway".into(),
            probe_spec: ProbeSpec {
                path: Some("/ready".into()),
                port: Some(east.probe.port().to_string()),
                period: Some(period.into()),
                timeout: Some(period.into()),
                failure_threshold: Some(threshold.into()),
            },
            ..LinkSpec::default()
        },
    );
    l.metadata.namespace = Some("isthmus".into());
    l
}

fn fast_lease() -> LeaseTiming {
    LeaseTiming {
        lease_duration: Duration::from_millis(1500),
        renew_deadline: Duration::from_millis(1000),
        retry_period: Duration::from_millis(200),
    }
}

async fn start_mirror(
    west: &ApiServer,
    identity: &str,
    resolver: Arc<dyn Resolve>,
) -> (Mirror, MirrorMetrics) {
    let metrics = MirrorMetrics::new();
    let m = Mirror::start(MirrorOptions {
        client: west.client().await,
        namespace: "isthmus".into(),
        identity: identity.into(),
        lease: fast_lease(),
        resolver,
        metrics: metrics.clone(),
    });
    (m, metrics)
}

fn mirror_svc(west: &ApiServer, name: &str) -> Option<Service> {
    west.get::<Service>("test", name)
}

fn mirror_slice(west: &ApiServer, name: &str) -> Option<EndpointSlice> {
    west.get::<EndpointSlice>("test", name)
}

fn ready(west: &ApiServer, name: &str) -> Option<bool> {
    let s = mirror_slice(west, name)?;
    Some(
        !s.endpoints.is_empty()
            && s.endpoints
                .iter()
                .all(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true)),
    )
}

fn link_status(west: &ApiServer) -> Value {
    west.get_json("links", "isthmus", "east")
        .and_then(|l| l.get("status").cloned())
        .unwrap_or(Value::Null)
}

fn condition(status: &Value, type_: &str) -> Option<(String, String, String)> {
    status["conditions"].as_array()?.iter().find_map(|c| {
        (c["type"] == type_).then(|| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
                c["message"].as_str().unwrap_or("").to_string(),
            )
        })
    })
}

fn service_condition(status: &Value, remote: &str) -> Option<(String, String, String)> {
    status["mirrorServices"].as_array()?.iter().find_map(|e| {
        (e["remoteRef"]["name"] == remote).then(|| {
            let c = &e["conditions"][0];
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
                c["message"].as_str().unwrap_or("").to_string(),
            )
        })
    })
}

async fn wait(what: &str, mut check: impl FnMut() -> bool) {
    eventually_for(what, WAIT, || std::future::ready(check())).await;
}

async fn linked() -> (East, ApiServer, Mirror, MirrorMetrics) {
    let east = East::start().await;
    let west = ApiServer::start().await;
    west.apply_json("secrets", credentials(&east.api, TOKEN));
    west.apply(&link(&east, "127.0.0.1", "200ms", "2"));
    let (m, metrics) = start_mirror(&west, "a", Arc::new(SystemResolver)).await;
    wait("podinfo-east mirrored and ready", || {
        ready(&west, "podinfo-east") == Some(true)
    })
    .await;
    (east, west, m, metrics)
}

#[tokio::test]
async fn mirrors_follow_export_port_change_unexport_delete_reexport() {
    let (east, west, m, metrics) = linked().await;
    let svc = mirror_svc(&west, "podinfo-east").expect("mirror Service");
    let labels = svc.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["mirror.linkerd.io/mirrored-service"], "true");
    assert_eq!(labels["mirror.linkerd.io/cluster-name"], "east");
    assert!(!labels.contains_key("mirror.linkerd.io/exported"));
    let ann = svc.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        ann["mirror.linkerd.io/remote-svc-fq-name"],
        "podinfo.test.svc.cluster.local"
    );
    assert_eq!(
        ann["mirror.linkerd.io/remote-gateway-identity"],
        "spiffe://east.example/ns/isthmus/sa/isthmus-gateway"
    );
    let spec = svc.spec.clone().unwrap_or_default();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.ports.as_ref().map(|p| p[0].port), Some(9898));
    let s = mirror_slice(&west, "podinfo-east").expect("mirror slice");
    let sl = s.metadata.labels.clone().unwrap_or_default();
    assert_eq!(sl["kubernetes.io/service-name"], "podinfo-east");
    assert_eq!(
        sl["endpointslice.kubernetes.io/managed-by"],
        "isthmus.dev/mirror"
    );
    assert_eq!(s.endpoints[0].addresses, ["127.0.0.1"]);
    assert_eq!(
        s.ports.as_ref().and_then(|p| p[0].port),
        Some(i32::from(east.gateway_addr.port())),
        "every port maps to the gateway port"
    );
    let sa = s.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        sa["mirror.linkerd.io/remote-svc-fq-name"],
        "podinfo.test.svc.cluster.local"
    );
    assert!(
        west.get_json("namespaces", "", "test").is_some(),
        "namespace created"
    );
    wait("Link status says mirrored", || {
        let st = link_status(&west);
        service_condition(&st, "podinfo").is_some_and(|c| c.0 == "True")
            && st["mirroredServices"] == 1
            && st["gateway"]["alive"] == true
            && condition(&st, "RemoteSynced").is_some_and(|c| c.0 == "True")
    })
    .await;

    // Port change.
    east.export("podinfo", 9899, true);
    wait("port change reflected", || {
        mirror_svc(&west, "podinfo-east")
            .and_then(|s| s.spec?.ports)
            .is_some_and(|p| p[0].port == 9899)
    })
    .await;
    // Label change (a copied label appears).
    let mut v = east
        .api
        .get_json("services", "test", "podinfo")
        .expect("remote svc");
    v["metadata"]["labels"]["tier"] = json!("gold");
    east.api.apply_json("services", v);
    wait("label change reflected", || {
        mirror_svc(&west, "podinfo-east")
            .and_then(|s| s.metadata.labels)
            .is_some_and(|l| l.get("tier").map(String::as_str) == Some("gold"))
    })
    .await;
    // Remote Service scaled to zero ready endpoints → not ready.
    east.export("podinfo", 9899, false);
    wait("no ready remote endpoint → mirror not ready", || {
        ready(&west, "podinfo-east") == Some(false)
    })
    .await;
    east.export("podinfo", 9899, true);
    wait("ready again", || ready(&west, "podinfo-east") == Some(true)).await;
    // Unexport.
    east.api
        .apply(&typed::<Service>(&service("test", "podinfo", false, 9899)));
    wait("unexport removes the mirror", || {
        mirror_svc(&west, "podinfo-east").is_none() && mirror_slice(&west, "podinfo-east").is_none()
    })
    .await;
    // Re-export, then delete.
    east.export("podinfo", 9899, true);
    wait("re-export mirrors again", || {
        ready(&west, "podinfo-east") == Some(true)
    })
    .await;
    east.api.delete::<Service>("test", "podinfo");
    wait("delete removes the mirror", || {
        mirror_svc(&west, "podinfo-east").is_none()
    })
    .await;
    assert!(metrics.render().contains("isthmus_mirror_writes_total"));
    m.shutdown().await;
}

#[tokio::test]
async fn dead_gateway_marks_mirrors_not_ready_then_recovers() {
    let (mut east, west, m, metrics) = linked().await;
    // threshold 2 × period 200 ms + one period, plus the write.
    let budget = Duration::from_millis(2 * 200 + 200 + 500);
    east.stop_gateway().await;
    let stopped = Instant::now();
    wait("gateway dead → not ready", || {
        ready(&west, "podinfo-east") == Some(false)
    })
    .await;
    let took = stopped.elapsed();
    eprintln!("gateway stopped -> mirror not ready after {took:?} (budget {budget:?})");
    assert!(
        took <= budget,
        "not ready after {took:?}, budget {budget:?}"
    );
    wait("Link status: gateway dead", || {
        let st = link_status(&west);
        st["gateway"]["alive"] == false
            && condition(&st, "GatewayAlive").is_some_and(|c| c.0 == "False")
    })
    .await;
    assert!(metrics
        .render()
        .contains("isthmus_gateway_alive{target_cluster_name=\"east\"} 0"));
    east.start_gateway().await;
    wait("gateway back → ready", || {
        ready(&west, "podinfo-east") == Some(true)
    })
    .await;
    let text = metrics.render();
    assert!(
        text.contains("isthmus_gateway_alive{target_cluster_name=\"east\"} 1"),
        "{text}"
    );
    assert!(text
        .contains("isthmus_gateway_probes_total{result=\"failed\",target_cluster_name=\"east\"}"));
    m.shutdown().await;
}

/// A resolver whose answers the test changes.
#[derive(Default)]
struct TestResolver(Mutex<Vec<IpAddr>>);

impl Resolve for TestResolver {
    fn resolve<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, String>> {
        let ips = self.0.lock().map(|v| v.clone()).unwrap_or_default();
        Box::pin(async move { Ok(ips) })
    }
}

#[tokio::test]
async fn dns_answer_change_updates_every_mirror() {
    let east = East::start().await;
    east.export("other", 8080, true);
    let west = ApiServer::start().await;
    west.apply_json("secrets", credentials(&east.api, TOKEN));
    west.apply(&link(&east, "gw.east.example", "200ms", "3"));
    let resolver = Arc::new(TestResolver::default());
    *resolver.0.lock().unwrap() = vec!["127.0.0.1".parse().unwrap()];
    let (m, _) = start_mirror(&west, "a", resolver.clone()).await;
    let addr_of = |name: &str| {
        mirror_slice(&west, name).map(|s| {
            s.endpoints
                .iter()
                .flat_map(|e| e.addresses.clone())
                .collect::<Vec<_>>()
        })
    };
    wait("both mirrored at 127.0.0.1", || {
        addr_of("podinfo-east") == Some(vec!["127.0.0.1".into()])
            && addr_of("other-east") == Some(vec!["127.0.0.1".into()])
    })
    .await;
    *resolver.0.lock().unwrap() = vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()];
    wait("every mirror has the new answer", || {
        let want = Some(vec!["127.0.0.1".to_string(), "127.0.0.2".to_string()]);
        addr_of("podinfo-east") == want && addr_of("other-east") == want
    })
    .await;
    // An address list edited on the Link works the same way.
    west.apply(&link(&east, "127.0.0.3", "200ms", "3"));
    wait("Link edit moves every mirror", || {
        addr_of("podinfo-east") == Some(vec!["127.0.0.3".into()])
            && addr_of("other-east") == Some(vec!["127.0.0.3".into()])
    })
    .await;
    m.shutdown().await;
}

#[tokio::test]
async fn remote_api_outage_keeps_mirrors_then_catches_up() {
    let (east, west, m, metrics) = linked().await;
    let before = mirror_svc(&west, "podinfo-east").expect("mirror");
    east.api.stop().await;
    wait("Link says the remote is unreachable", || {
        condition(&link_status(&west), "RemoteSynced")
            .is_some_and(|c| c.0 == "False" && c.1 == "RemoteUnreachable")
    })
    .await;
    assert!(metrics
        .render()
        .contains("isthmus_mirror_remote_stale{target_cluster_name=\"east\"} 1"));
    let during = mirror_svc(&west, "podinfo-east").expect("mirror kept during the outage");
    assert_eq!(during.metadata.uid, before.metadata.uid, "never deleted");
    // Changes made while the controller cannot see them.
    east.export("added", 7070, true);
    east.api.delete::<Service>("test", "podinfo");
    east.api.compact();
    east.api.restart().await;
    wait("caught up after the outage (410 → relist)", || {
        mirror_svc(&west, "added-east").is_some() && mirror_svc(&west, "podinfo-east").is_none()
    })
    .await;
    wait("stale condition cleared", || {
        condition(&link_status(&west), "RemoteSynced").is_some_and(|c| c.0 == "True")
    })
    .await;
    // Dropped watches resume without losing events.
    east.api.drop_watches();
    east.export("later", 7071, true);
    wait("event after dropped watches", || {
        mirror_svc(&west, "later-east").is_some()
    })
    .await;
    m.shutdown().await;
}

#[tokio::test]
async fn restart_collects_orphans_and_never_deletes_live_mirrors() {
    let (east, west, m, _) = linked().await;
    m.shutdown().await;
    let live = mirror_svc(&west, "podinfo-east").expect("mirror");
    // Stale state left behind: a mirror whose remote is gone, a mirror of a
    // Link that no longer exists, and a Linkerd service mirror's object.
    let ours = |name: &str, link: &str| {
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "test",
                "labels": {"mirror.linkerd.io/mirrored-service": "true", "mirror.linkerd.io/cluster-name": name.rsplit('-').next()},
                "annotations": {"isthmus.dev/mirror-link": link}},
            "spec": {"ports": [{"name": "http", "port": 80}]}})
    };
    west.apply_json("services", ours("gone-east", "isthmus/east"));
    west.apply_json("services", ours("old-south", "isthmus/south"));
    west.apply_json(
        "services",
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "linkerd-east", "namespace": "test",
                "labels": {"mirror.linkerd.io/mirrored-service": "true", "mirror.linkerd.io/cluster-name": "east"}},
            "spec": {"ports": [{"name": "http", "port": 80}]}}),
    );
    // Watch the live mirror's slice through the restart: it must never flap.
    let client = west.client().await;
    let flapped = Arc::new(Mutex::new(Vec::new()));
    let seen = flapped.clone();
    let watch = tokio::spawn(async move {
        use futures::StreamExt;
        let api: kube::Api<EndpointSlice> = kube::Api::namespaced(client, "test");
        let cfg = kube::runtime::watcher::Config::default().fields("metadata.name=podinfo-east");
        let mut s = kube::runtime::watcher(api, cfg).boxed();
        while let Some(e) = s.next().await {
            if let Ok(
                kube::runtime::watcher::Event::Apply(s) | kube::runtime::watcher::Event::Delete(s),
            ) = e
            {
                let ready = s
                    .endpoints
                    .iter()
                    .all(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true));
                if !ready {
                    seen.lock()
                        .unwrap()
                        .push(s.metadata.resource_version.clone());
                }
            }
        }
    });
    east.export("fresh", 6060, true);
    let (m, _) = start_mirror(&west, "b", Arc::new(SystemResolver)).await;
    wait("orphans collected, new export mirrored", || {
        mirror_svc(&west, "gone-east").is_none()
            && mirror_svc(&west, "old-south").is_none()
            && mirror_svc(&west, "fresh-east").is_some()
    })
    .await;
    let after = mirror_svc(&west, "podinfo-east").expect("live mirror kept");
    assert_eq!(
        after.metadata.uid, live.metadata.uid,
        "the live mirror was never deleted"
    );
    assert!(
        mirror_svc(&west, "linkerd-east").is_some(),
        "a Linkerd mirror is not ours to touch"
    );
    assert!(
        !west
            .requests()
            .iter()
            .any(|r| r.starts_with("DELETE") && r.contains("/services/podinfo-east")),
        "no DELETE of the live mirror"
    );
    assert_eq!(ready(&west, "podinfo-east"), Some(true));
    watch.abort();
    assert!(
        flapped.lock().unwrap().is_empty(),
        "the ready slice flapped: {:?}",
        flapped.lock().unwrap()
    );
    m.shutdown().await;
}

#[tokio::test]
async fn bad_links_are_reported_and_others_keep_mirroring() {
    let (east, west, m, metrics) = linked().await;
    let bad = |name: &str, spec: Value| {
        json!({"apiVersion": "isthmus.dev/v1alpha1", "kind": "Link",
            "metadata": {"name": name, "namespace": "isthmus"}, "spec": spec})
    };
    let good_spec = serde_json::to_value(&link(&east, "127.0.0.1", "200ms", "2").spec).unwrap();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut s = good_spec.clone();
        edit(&mut s);
        s
    };
    west.apply_json(
        "links",
        bad(
            "nosecret",
            with(&|s| {
                s["targetClusterName"] = json!("north");
                s["clusterCredentialsSecret"] = json!("missing");
            }),
        ),
    );
    west.apply_json(
        "links",
        bad(
            "unknownfield",
            with(&|s| {
                s["targetClusterName"] = json!("south");
                s["gatewayAdress"] = json!("typo");
            }),
        ),
    );
    west.apply_json(
        "links",
        bad(
            "badselector",
            with(&|s| {
                s["targetClusterName"] = json!("west2");
                s["selector"] =
                    json!({"matchExpressions": [{"key": "a", "operator": "Sometimes"}]});
            }),
        ),
    );
    west.apply_json("secrets", json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "garbage", "namespace": "isthmus"},
        "type": "mirror.linkerd.io/remote-kubeconfig", "stringData": {"kubeconfig": "{not: [yaml"}}));
    west.apply_json(
        "links",
        bad(
            "garbage",
            with(&|s| {
                s["targetClusterName"] = json!("garbage");
                s["clusterCredentialsSecret"] = json!("garbage");
            }),
        ),
    );
    let mut wrong = credentials(&east.api, "wrong-token");
    wrong["metadata"]["name"] = json!("wrongtoken");
    west.apply_json("secrets", wrong);
    west.apply_json(
        "links",
        bad(
            "wrongtoken",
            with(&|s| {
                s["targetClusterName"] = json!("eastprime");
                s["clusterCredentialsSecret"] = json!("wrongtoken");
            }),
        ),
    );
    let cond = |link: &str, type_: &str| {
        west.get_json("links", "isthmus", link)
            .and_then(|l| condition(&l["status"], type_))
    };
    wait("each bad Link has its reason", || {
        cond("nosecret", "CredentialsValid").is_some_and(|c| c.1 == "MissingSecret")
            && cond("unknownfield", "Valid")
                .is_some_and(|c| c.1 == "InvalidSpec" && c.2.contains("gatewayAdress"))
            && cond("badselector", "Valid").is_some_and(|c| c.2.contains("Sometimes"))
            && cond("garbage", "CredentialsValid").is_some_and(|c| c.1 == "InvalidKubeconfig")
            && cond("wrongtoken", "CredentialsValid")
                .is_some_and(|c| c.0 == "False" && c.1 == "Unauthorized")
    })
    .await;
    assert!(metrics
        .render()
        .contains("isthmus_mirror_link_errors_total{reason=\"invalid\"} 2"));

    // A local Service that holds a mirror's name is never overwritten.
    west.apply(&typed::<Service>(&service(
        "test",
        "taken-east",
        false,
        1234,
    )));
    east.export("taken", 5050, true);
    wait("collision reported on the Link", || {
        service_condition(&link_status(&west), "taken").is_some_and(|c| c.1 == "NameCollision")
    })
    .await;
    let kept = mirror_svc(&west, "taken-east").expect("local Service");
    assert!(!kept
        .metadata
        .labels
        .unwrap_or_default()
        .contains_key("mirror.linkerd.io/mirrored-service"));
    assert_eq!(
        kept.spec.and_then(|s| s.ports).map(|p| p[0].port),
        Some(1234)
    );
    // A remote Service with a hostile label is refused alone.
    east.api.apply_json(
        "services",
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "hostile", "namespace": "test",
            "labels": {"mirror.linkerd.io/exported": "true", "bad key!": "x"}},
        "spec": {"ports": [{"name": "http", "port": 80}]}}),
    );
    east.export("fine", 4040, true);
    wait("hostile refused, fine mirrored", || {
        service_condition(&link_status(&west), "hostile")
            .is_some_and(|c| c.1 == "InvalidRemoteService")
            && ready(&west, "fine-east") == Some(true)
    })
    .await;
    assert!(mirror_svc(&west, "hostile-east").is_none());
    assert_eq!(
        ready(&west, "podinfo-east"),
        Some(true),
        "the good Link kept mirroring"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn two_controllers_in_process_one_writer_then_handover() {
    let east = East::start().await;
    let west = ApiServer::start().await;
    west.apply_json("secrets", credentials(&east.api, TOKEN));
    west.apply(&link(&east, "127.0.0.1", "200ms", "2"));
    let (a, ma) = start_mirror(&west, "a", Arc::new(SystemResolver)).await;
    wait("a leads", || *a.leader.borrow()).await;
    let (b, mb) = start_mirror(&west, "b", Arc::new(SystemResolver)).await;
    wait("mirrored by a", || {
        ready(&west, "podinfo-east") == Some(true)
    })
    .await;
    east.export("second", 3030, true);
    wait("a mirrors the next export", || {
        mirror_svc(&west, "second-east").is_some()
    })
    .await;
    assert!(!*b.leader.borrow(), "b follows");
    assert!(
        !mb.render().contains("isthmus_mirror_writes_total{"),
        "the follower wrote nothing"
    );
    assert!(ma.render().contains("isthmus_mirror_leader 1"));
    let holder = || {
        west.get_json("leases", "isthmus", "isthmus-mirror")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    };
    assert_eq!(holder().as_deref(), Some("a"));
    // a dies without releasing the Lease: drop its task (no release).
    drop(a);
    let died = Instant::now();
    wait("b takes over", || *b.leader.borrow()).await;
    assert!(
        died.elapsed() < Duration::from_secs(15),
        "takeover took {:?}",
        died.elapsed()
    );
    assert_eq!(holder().as_deref(), Some("b"));
    east.export("third", 2020, true);
    wait("b mirrors after the takeover", || {
        mirror_svc(&west, "third-east").is_some()
    })
    .await;
    b.shutdown().await;
    assert!(holder().is_none(), "a clean stop releases the Lease");
}

fn run_link(kubeconfig: &std::path::Path) -> std::process::Output {
    std::process::Command::new(isthmus_bin())
        .args(["link", "--cluster-name", "east", "--kubeconfig"])
        .arg(kubeconfig)
        .output()
        .expect("run isthmus link")
}

#[tokio::test]
async fn isthmus_link_output_is_applied_by_kubectl_then_mirrored() {
    if !kubectl_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let east = East::start().await;
    let west = ApiServer::start().await;
    let east_kc = dir.path().join("east.kubeconfig");
    std::fs::write(&east_kc, east.api.kubeconfig_yaml_with_token(TOKEN)).expect("write");
    let west_kc = west.kubeconfig(dir.path());
    let out = tokio::task::spawn_blocking(move || run_link(&east_kc))
        .await
        .expect("join");
    let yaml = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        yaml.contains("type: mirror.linkerd.io/remote-kubeconfig"),
        "{yaml}"
    );
    assert!(
        yaml.contains("kind: Link") && yaml.contains("gatewayAddress: 127.0.0.1"),
        "{yaml}"
    );
    let cache = dir.path().join("kubectl-cache");
    let applied = tokio::task::spawn_blocking(move || kubectl_apply(&west_kc, &cache, &yaml))
        .await
        .expect("join");
    assert!(
        applied.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let link = west
        .get_json("links", "isthmus", "east")
        .expect("Link applied");
    assert_eq!(
        link["spec"]["gatewayPort"],
        east.gateway_addr.port().to_string()
    );
    assert_eq!(
        link["spec"]["probeSpec"]["port"],
        east.probe.port().to_string()
    );
    assert_eq!(link["spec"]["probeSpec"]["period"], "1s");
    let (m, _) = start_mirror(&west, "a", Arc::new(SystemResolver)).await;
    wait("the applied Link mirrors podinfo", || {
        ready(&west, "podinfo-east") == Some(true)
    })
    .await;
    m.shutdown().await;
}

#[tokio::test]
async fn isthmus_link_errors_name_what_to_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let east = East::start().await;
    let kc = dir.path().join("east.kubeconfig");
    std::fs::write(&kc, east.api.kubeconfig_yaml_with_token(TOKEN)).expect("write");
    let fails_with = |want: &'static str| {
        let kc = kc.clone();
        async move {
            let out = tokio::task::spawn_blocking(move || run_link(&kc))
                .await
                .expect("join");
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert!(out.stdout.is_empty());
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
            assert!(err.contains(want), "{err} should say {want}");
        }
    };
    // No load-balancer address yet.
    let mut svc = east
        .api
        .get_json("services", "isthmus", "isthmus-gateway")
        .expect("gw");
    svc["status"] = json!({"loadBalancer": {}});
    east.api.apply_json("services", svc);
    fails_with("no load-balancer address yet").await;
    // No token Secret.
    east.api
        .delete::<k8s_openapi::api::core::v1::Secret>("isthmus", "isthmus-mirror-remote-access");
    east.api.apply(&typed::<Service>(&gateway_service(1, 2)));
    fails_with("isthmus-mirror-remote-access not found").await;
    // No gateway Service.
    east.api.delete::<Service>("isthmus", "isthmus-gateway");
    fails_with("gateway Service isthmus/isthmus-gateway not found").await;
    // Credentials the API refuses.
    std::fs::write(&kc, east.api.kubeconfig_yaml_with_token("nope")).expect("write");
    fails_with("401").await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Controller {
    child: std::process::Child,
    admin: u16,
}

impl Controller {
    fn start(kubeconfig: &std::path::Path, identity: &str) -> Controller {
        let admin = free_port();
        let child = std::process::Command::new(isthmus_bin())
            .args([
                "mirror",
                "--namespace",
                "isthmus",
                "--identity",
                identity,
                "--kubeconfig",
            ])
            .arg(kubeconfig)
            .arg("--admin")
            .arg(format!("127.0.0.1:{admin}"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start isthmus mirror");
        Controller { child, admin }
    }

    async fn metrics(&self) -> String {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", self.admin).parse().expect("addr");
        isthmus_tests::client::plain_get(addr, "/metrics").await.1
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn two_controller_processes_one_writes_and_the_other_takes_over_a_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let east = East::start().await;
    let west = ApiServer::start().await;
    west.apply_json("secrets", credentials(&east.api, TOKEN));
    west.apply(&link(&east, "127.0.0.1", "200ms", "2"));
    let kc = west.kubeconfig(dir.path());
    let holder = || {
        west.get_json("leases", "isthmus", "isthmus-mirror")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    };
    let mut a = Controller::start(&kc, "replica-a");
    wait("replica-a holds the Lease", || {
        holder().as_deref() == Some("replica-a")
    })
    .await;
    let b = Controller::start(&kc, "replica-b");
    wait("mirrored", || ready(&west, "podinfo-east") == Some(true)).await;
    east.export("second", 3030, true);
    wait("the leader mirrors the next export", || {
        mirror_svc(&west, "second-east").is_some()
    })
    .await;
    eventually_for("b serves metrics", WAIT, || async {
        b.metrics().await.contains("isthmus_mirror_leader 0")
    })
    .await;
    let text = b.metrics().await;
    assert!(
        !text.contains("isthmus_mirror_writes_total{"),
        "the follower wrote: {text}"
    );
    assert!(a.metrics().await.contains("isthmus_mirror_leader 1"));
    // SIGKILL: no release, the Lease must expire.
    a.child.kill().expect("kill");
    let _ = a.child.wait();
    let killed = Instant::now();
    wait("replica-b takes over", || {
        holder().as_deref() == Some("replica-b")
    })
    .await;
    let took = killed.elapsed();
    eprintln!("takeover after SIGKILL: {took:?}");
    assert!(took < Duration::from_secs(15), "takeover took {took:?}");
    east.export("third", 2020, true);
    wait("replica-b mirrors after the takeover", || {
        mirror_svc(&west, "third-east").is_some()
    })
    .await;
    assert!(b.metrics().await.contains("isthmus_mirror_leader 1"));
}

#[tokio::test]
async fn a_link_edited_to_invalid_keeps_mirroring_and_says_why() {
    let (east, west, m, _) = linked().await;
    let mut v = west.get_json("links", "isthmus", "east").expect("link");
    v["spec"]["gatewayPort"] = json!("not-a-port");
    west.apply_json("links", v);
    // The worker's own status writes (every probe) must not hide the refusal.
    eventually_for("Valid=False stays", WAIT, || async {
        condition(&link_status(&west), "Valid")
            .is_some_and(|c| c.0 == "False" && c.2.contains("gatewayPort"))
    })
    .await;
    let probes_later = Instant::now();
    while probes_later.elapsed() < Duration::from_millis(600) {
        assert!(
            condition(&link_status(&west), "Valid").is_some_and(|c| c.0 == "False"),
            "the refusal was overwritten"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    east.export("during", 1111, true);
    wait("still mirroring on the last valid spec", || {
        mirror_svc(&west, "during-east").is_some()
    })
    .await;
    // A second Link for the same target cluster is refused.
    let mut dup = link(&east, "127.0.0.1", "200ms", "2");
    dup.metadata.name = Some("east-again".into());
    west.apply(&dup);
    wait("duplicate target refused", || {
        west.get_json("links", "isthmus", "east-again")
            .and_then(|l| condition(&l["status"], "Valid"))
            .is_some_and(|c| c.0 == "False" && c.2.contains("already linked"))
    })
    .await;
    m.shutdown().await;
}
