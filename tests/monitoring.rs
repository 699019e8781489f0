//! Monitoring: the metrics that alerts need move as they should (certificate
//! rotation, table publishes, Kubernetes contact), and every metric that
//! `manifests/monitoring/alerts.yaml`, its PrometheusRule twin and
//! `dashboard.json` query is one the gateway or the mirror controller exports.

use isthmus::config::{Discovery, KubernetesDiscovery};
use isthmus::mirror::metrics::MirrorMetrics;
use isthmus::tls::dev::{CertAuthority, LeafSpec};
use isthmus_tests::apiserver::ApiServer;
use isthmus_tests::manifests::exported_service;
use isthmus_tests::{eventually, replace_file, workspace_path, Harness, Upstream};
use std::collections::BTreeSet;

const HOST: &str = "podinfo.test.svc.cluster.local:9898";

/// Every `isthmus_*` identifier in a PromQL expression.
fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("isthmus_") {
        let start = i + at;
        let boundary = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_' || b == b':')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(expr[start..end].to_string());
        }
        i = end;
    }
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace_path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn rule_groups(rel: &str, doc: &serde_yaml::Value) -> Vec<serde_yaml::Value> {
    let groups = doc["groups"]
        .as_sequence()
        .or_else(|| doc["spec"]["groups"].as_sequence())
        .unwrap_or_else(|| panic!("{rel}: no groups"));
    groups.clone()
}

/// The metric names every alert rule and dashboard query uses.
fn referenced_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for rel in [
        "manifests/monitoring/alerts.yaml",
        "manifests/monitoring/prometheusrule.yaml",
    ] {
        let doc: serde_yaml::Value = serde_yaml::from_str(&read(rel)).expect("rules YAML");
        for g in rule_groups(rel, &doc) {
            for r in g["rules"].as_sequence().expect("rules") {
                metric_names(r["expr"].as_str().expect("expr"), &mut names);
            }
        }
    }
    let dash: serde_json::Value =
        serde_json::from_str(&read("manifests/monitoring/dashboard.json")).expect("dashboard JSON");
    assert_eq!(dash["schemaVersion"], 39);
    fn walk(v: &serde_json::Value, names: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v.as_str()) {
                        ("expr" | "definition", Some(e)) => metric_names(e, names),
                        _ => walk(v, names),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, names)),
            _ => {}
        }
    }
    walk(&dash, &mut names);
    names
}

/// `ISTHMUS_BLESS=1` rewrites prometheusrule.yaml from alerts.yaml instead of comparing.
#[test]
fn prometheusrule_wraps_the_same_rules() {
    let plain: serde_yaml::Value =
        serde_yaml::from_str(&read("manifests/monitoring/alerts.yaml")).expect("YAML");
    if std::env::var_os("ISTHMUS_BLESS").is_some() {
        let doc = serde_json::json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {"name": "isthmus", "namespace": "isthmus",
                         "labels": {"app.kubernetes.io/name": "isthmus"}},
            "spec": {"groups": serde_json::to_value(&plain["groups"]).expect("groups")},
        });
        let header = "# alerts.yaml wrapped as a Prometheus Operator PrometheusRule (same groups; the\n\
                      # operator's ruleSelector may need a label of your own). Written from alerts.yaml by\n\
                      # `ISTHMUS_BLESS=1 cargo test -p isthmus-tests --test monitoring prometheusrule`;\n\
                      # that test fails when the two differ.\n";
        let yaml = serde_yaml::to_string(&doc).expect("YAML");
        std::fs::write(
            workspace_path("manifests/monitoring/prometheusrule.yaml"),
            format!("{header}{yaml}"),
        )
        .expect("write prometheusrule.yaml");
    }
    let wrapped: serde_yaml::Value =
        serde_yaml::from_str(&read("manifests/monitoring/prometheusrule.yaml")).expect("YAML");
    assert_eq!(wrapped["kind"], "PrometheusRule");
    assert_eq!(
        rule_groups("alerts.yaml", &plain),
        rule_groups("prometheusrule.yaml", &wrapped),
        "prometheusrule.yaml drifted from alerts.yaml"
    );
}

#[tokio::test]
async fn every_metric_the_alerts_and_dashboard_use_exists() {
    let (h, _up) = Harness::podinfo().await;
    let ok = h.client("peer-west").get(HOST, "/").await.expect("request");
    assert_eq!(ok.status, 200);
    // Request metrics are recorded just after the response is sent.
    eventually("the request is counted", || async {
        h.admin_get("/metrics")
            .await
            .1
            .contains("isthmus_request_duration_seconds_count{")
    })
    .await;
    let (_, text) = h.admin_get("/metrics").await;
    let mut exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    for must in [
        "isthmus_requests_total",
        "isthmus_request_duration_seconds",
        "isthmus_tls_certificate_expiry_timestamp_seconds",
        "isthmus_tls_trust_anchor_expiry_timestamp_seconds",
        "isthmus_discovery_last_sync_timestamp_seconds",
        "isthmus_table_generation",
        "isthmus_ready",
    ] {
        assert!(exported.contains(must), "{must} not rendered:\n{text}");
    }
    // Vectors that saw no label set yet (no reload, no watch error) do not
    // render; the registries name them all.
    exported.extend(h.gateway.metrics.names());
    exported.extend(MirrorMetrics::new().names());

    let referenced = referenced_metrics();
    assert!(
        referenced.len() > 20,
        "extraction found too little: {referenced:?}"
    );
    let missing: Vec<&String> = referenced
        .iter()
        .filter(|n| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .filter(|b| exported.contains(*b));
            !exported.contains(*n) && base.is_none()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\nexported: {exported:?}"
    );
}

/// `name{labels} value` lines of one metric.
async fn samples(h: &Harness, name: &str) -> Vec<String> {
    let (_, text) = h.admin_get("/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn expiry_gauges_follow_certificate_and_trust_anchor_rotation() {
    let up = Upstream::start("podinfo").await;
    let h = Harness::start_with(
        &[("p.yaml", exported_service("test", "podinfo", 9898, up.addr))],
        |cfg| cfg.tls.reload_interval_ms = 20,
    )
    .await;
    let cert = "isthmus_tls_certificate_expiry_timestamp_seconds";
    let anchors = "isthmus_tls_trust_anchor_expiry_timestamp_seconds";
    let now = isthmus::metrics::unix_now() as f64;
    let first = h.metric(cert).await;
    assert!(
        first > now + 300.0 * 86400.0,
        "dev certificate: a year, got {first}"
    );
    assert_eq!(
        samples(&h, anchors).await.len(),
        1,
        "one CA in the dev bundle"
    );

    // A new serving certificate that expires in ten days.
    let ca1 = h.ca();
    let mut spec = LeafSpec::gateway();
    spec.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let want = spec.not_after.unix_timestamp() as f64;
    let rotated = ca1.issue(&spec).expect("issue");
    let certs = h.certs();
    replace_file(&certs.join("gateway.key"), &rotated.key_pem());
    replace_file(&certs.join("gateway.crt"), &rotated.cert_pem());
    h.wait_metric(cert, want).await;

    // Trust-anchor rotation: both CAs, then the new one alone.
    let ca2 = CertAuthority::new("rotated CA").expect("CA");
    replace_file(
        &certs.join("ca.crt"),
        &format!("{}{}", ca1.cert_pem(), ca2.cert_pem()),
    );
    eventually("two trust-anchor series", || async {
        samples(&h, anchors).await.len() == 2
    })
    .await;
    let old: Vec<String> = samples(&h, anchors)
        .await
        .into_iter()
        .filter(|l| !l.contains("rotated CA"))
        .collect();
    assert_eq!(old.len(), 1, "{old:?}");
    replace_file(&certs.join("ca.crt"), ca2.cert_pem());
    eventually("the removed CA's series is gone", || async {
        let s = samples(&h, anchors).await;
        s.len() == 1 && s[0].contains("rotated CA")
    })
    .await;
    assert_eq!(h.metric(cert).await, want, "serving certificate unchanged");
}

#[tokio::test]
async fn a_publish_moves_the_generation_and_the_sync_time() {
    let (h, up) = Harness::podinfo().await;
    let generation = "isthmus_table_generation";
    let synced = "isthmus_discovery_last_sync_timestamp_seconds{source=\"files\"}";
    let g0 = h.metric(generation).await;
    assert!(g0 >= 1.0, "the start-up publish counts");
    assert!(h.metric(synced).await >= isthmus::metrics::unix_now() as f64 - 60.0);
    h.write_manifest(
        "second.yaml",
        &exported_service("test", "second", 9898, up.addr),
    );
    eventually("the new route is served", || async {
        h.client("peer-west")
            .get("second.test.svc.cluster.local:9898", "/")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert_eq!(
        h.metric(generation).await,
        g0 + 1.0,
        "one publish, one step"
    );
    // A quiet directory is still a successful sync: the time is written again.
    h.gateway
        .metrics
        .discovery_last_sync
        .with_label_values(&["files"])
        .set(0);
    eventually("a rescan writes the sync time", || async {
        h.metric(synced).await > 0.0
    })
    .await;
    assert_eq!(
        h.metric(generation).await,
        g0 + 1.0,
        "no change, no publish"
    );
}

#[tokio::test]
async fn a_quiet_cluster_still_counts_as_synced() {
    let api = ApiServer::start().await;
    let kubeconfig =
        std::env::temp_dir().join(format!("isthmus-monitoring-{}.yaml", api.addr().port()));
    std::fs::write(&kubeconfig, api.kubeconfig_yaml()).expect("write kubeconfig");
    let h = Harness::start_with(&[], |cfg| {
        cfg.discovery = Discovery::Kubernetes(KubernetesDiscovery {
            kubeconfig: Some(kubeconfig),
            contact_interval_ms: 20,
            ..Default::default()
        });
    })
    .await;
    eventually("gateway ready", || async {
        h.admin_get("/ready").await.0 == 200
    })
    .await;
    let synced = "isthmus_discovery_last_sync_timestamp_seconds{source=\"kubernetes\"}";
    let generation = h.metric("isthmus_table_generation").await;
    assert!(h.metric(synced).await > 0.0, "the first publish is a sync");
    // Nothing changes in the cluster: only the API server contact can write it.
    h.gateway
        .metrics
        .discovery_last_sync
        .with_label_values(&["kubernetes"])
        .set(0);
    eventually("an API server round trip writes the sync time", || async {
        h.metric(synced).await > 0.0
    })
    .await;
    assert_eq!(h.metric("isthmus_table_generation").await, generation);
}
