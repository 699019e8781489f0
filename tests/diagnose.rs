//! `isthmus diagnose` and `isthmus gateways` against a live pair: two API-server
//! doubles (west runs the mirror controller, east is the target read with the
//! token `isthmus link` wraps), each with its gateway Service, Deployment and
//! the ConfigMaps it mounts, and two real gateways whose certificates come
//! from one mesh CA. The binary is run as an operator would; each failure is
//! introduced on its own and must be named by its finding line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use isthmus::mirror::link::{Link, LinkSpec, ProbeSpec};
use isthmus::mirror::metrics::MirrorMetrics;
use isthmus::mirror::probe::SystemResolver;
use isthmus::mirror::{LeaseTiming, Mirror, MirrorOptions};
use isthmus::tls::dev::{CertAuthority, LeafSpec};
use isthmus_tests::apiserver::{ApiServer, Options};
use isthmus_tests::manifests::{service, slice, typed};
use isthmus_tests::{eventually_for, isthmus_bin, Harness, Upstream};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

const TOKEN: &str = "east-remote-access-token";
const WAIT: Duration = Duration::from_secs(20);
const WEST_ID: &str = "spiffe://west.example/ns/isthmus/sa/isthmus-gateway";
const EAST_ID: &str = "spiffe://east.example/ns/isthmus/sa/isthmus-gateway";

/// Certificate files for one gateway (cert, key, trust anchors).
struct Certs {
    cert: PathBuf,
    key: PathBuf,
    anchors: PathBuf,
}

/// Writes a gateway certificate for `identity` issued by `ca`, and `anchors_pem`
/// as its trust bundle, into `dir` under `name`.
fn gateway_certs(
    dir: &Path,
    name: &str,
    ca: &CertAuthority,
    identity: &str,
    days: i64,
    anchors_pem: &str,
) -> Certs {
    let mut spec = LeafSpec::gateway();
    spec.common_name = format!("{name} gateway");
    spec.uris = vec![identity.into()];
    spec.not_after =
        time::OffsetDateTime::now_utc() + time::Duration::days(days) + time::Duration::hours(1);
    let issued = ca.issue(&spec).expect("issue the gateway certificate");
    let certs = Certs {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        anchors: dir.join(format!("{name}-anchors.crt")),
    };
    std::fs::write(&certs.cert, issued.cert_pem()).expect("write cert");
    std::fs::write(&certs.key, issued.key_pem()).expect("write key");
    std::fs::write(&certs.anchors, anchors_pem).expect("write anchors");
    certs
}

/// Starts a gateway on `certs` (on `ports` when restarting: gateway, probe, admin).
async fn gateway(certs: &Certs, ports: Option<(SocketAddr, SocketAddr, SocketAddr)>) -> Harness {
    let (cert, key, anchors) = (certs.cert.clone(), certs.key.clone(), certs.anchors.clone());
    Harness::start_with(&[], move |cfg| {
        cfg.tls.cert = cert;
        cfg.tls.key = key;
        cfg.tls.trust_anchors = Some(anchors);
        if let Some((gw, probe, admin)) = ports {
            cfg.listen.gateway = gw;
            cfg.listen.probe = probe;
            cfg.listen.admin = admin;
        }
    })
    .await
}

/// The objects of an installed gateway, as manifests/ lays them out: the
/// Service (load balancer on 127.0.0.1), the Deployment, its config ConfigMap
/// and the trust-anchor ConfigMap it mounts.
fn install_gateway(api: &ApiServer, h: &Harness, identity: &str, anchors_pem: &str) {
    let gw = h.gateway.gateway_addr.port();
    let probe = h.gateway.probe_addr.port();
    api.apply(&typed::<Service>(&format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: isthmus-gateway
  namespace: isthmus
  labels: {{mirror.linkerd.io/multicluster-gateway: "true"}}
  annotations:
    mirror.linkerd.io/gateway-identity: {identity}
    mirror.linkerd.io/probe-path: /ready
spec:
  type: LoadBalancer
  selector: {{app.kubernetes.io/name: isthmus-gateway}}
  ports:
    - {{name: mc-gateway, port: {gw}, targetPort: gateway}}
    - {{name: mc-probe, port: {probe}, targetPort: probe}}
status:
  loadBalancer:
    ingress: [{{ip: 127.0.0.1}}]
"#
    )));
    api.apply_json(
        "deployments",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "isthmus-gateway", "namespace": "isthmus"},
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": "isthmus-gateway"}},
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/name": "isthmus-gateway"}},
                    "spec": {
                        "containers": [{"name": "gateway", "image": "isthmus",
                            "args": ["run", "--config", "/etc/isthmus/config.yaml"],
                            "volumeMounts": [
                                {"name": "config", "mountPath": "/etc/isthmus", "readOnly": true},
                                {"name": "tls", "mountPath": "/var/run/isthmus/tls", "readOnly": true},
                                {"name": "trust", "mountPath": "/var/run/isthmus/trust", "readOnly": true}]}],
                        "volumes": [
                            {"name": "config", "configMap": {"name": "isthmus-gateway"}},
                            {"name": "tls", "secret": {"secretName": "isthmus-gateway-tls"}},
                            {"name": "trust", "configMap": {"name": "isthmus-trust-anchors"}}]}}}}),
    );
    api.apply_json(
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "isthmus-gateway", "namespace": "isthmus"},
            "data": {"config.yaml": "tls:\n  cert: /var/run/isthmus/tls/tls.crt\n  key: /var/run/isthmus/tls/tls.key\n  trust_anchors: /var/run/isthmus/trust/ca.crt\n"}}),
    );
    api.apply_json(
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "isthmus-trust-anchors", "namespace": "isthmus"},
            "data": {"ca.crt": anchors_pem}}),
    );
}

/// West and east, linked, with the mirror controller running in west.
struct Pair {
    west: ApiServer,
    east: ApiServer,
    _west_gw: Harness,
    east_gw: Option<Harness>,
    east_ports: (SocketAddr, SocketAddr, SocketAddr),
    up: Upstream,
    dir: tempfile::TempDir,
    mesh: CertAuthority,
    mirror: Option<Mirror>,
    kubeconfig: PathBuf,
}

impl Pair {
    /// Everything installed; the mirror controller started when `mirror`.
    async fn start(mirror: bool) -> Pair {
        let dir = tempfile::tempdir().expect("tempdir");
        let mesh = CertAuthority::new("mesh root").expect("CA");
        let west_certs = gateway_certs(dir.path(), "west", &mesh, WEST_ID, 365, mesh.cert_pem());
        let east_certs = gateway_certs(dir.path(), "east", &mesh, EAST_ID, 365, mesh.cert_pem());
        let west_gw = gateway(&west_certs, None).await;
        let east_gw = gateway(&east_certs, None).await;
        let east_ports = (
            east_gw.gateway.gateway_addr,
            east_gw.gateway.probe_addr,
            east_gw.gateway.admin_addr,
        );
        let east = ApiServer::start_with(Options {
            require_token: Some(TOKEN.into()),
            ..Options::default()
        })
        .await;
        let west = ApiServer::start().await;
        install_gateway(&west, &west_gw, WEST_ID, mesh.cert_pem());
        install_gateway(&east, &east_gw, EAST_ID, mesh.cert_pem());
        let up = Upstream::start("podinfo-east").await;
        let mut pair = Pair {
            kubeconfig: west.kubeconfig(dir.path()),
            west,
            east,
            _west_gw: west_gw,
            east_gw: Some(east_gw),
            east_ports,
            up,
            dir,
            mesh,
            mirror: None,
        };
        pair.export(true);
        pair.west.apply_json("secrets", pair.credentials(TOKEN));
        pair.west.apply(&pair.link());
        if mirror {
            pair.start_mirror().await;
            pair.wait_linked().await;
        }
        pair
    }

    fn export(&self, ready: bool) {
        self.east
            .apply(&typed::<Service>(&service("test", "podinfo", true, 9898)));
        self.east.apply(&typed::<EndpointSlice>(&slice(
            "test",
            "podinfo-1",
            "podinfo",
            self.up.addr,
            ready,
        )));
    }

    fn credentials(&self, token: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "cluster-credentials-east", "namespace": "isthmus"},
            "type": "mirror.linkerd.io/remote-kubeconfig",
            "stringData": {"kubeconfig": self.east.kubeconfig_yaml_with_token(token)}})
    }

    fn link(&self) -> Link {
        let (gw, probe, _) = self.east_ports;
        let mut l = Link::new(
            "east",
            LinkSpec {
                target_cluster_name: "east".into(),
                cluster_credentials_secret: "cluster-credentials-east".into(),
                gateway_address: "127.0.0.1".into(),
                gateway_port: gw.port().to_string(),
                gateway_identity: EAST_ID.into(),
                probe_spec: ProbeSpec {
                    path: Some("/ready".into()),
                    port: Some(probe.port().to_string()),
                    period: Some("200ms".into()),
                    timeout: Some("200ms".into()),
                    failure_threshold: Some("2".into()),
                },
                ..LinkSpec::default()
            },
        );
        l.metadata.namespace = Some("isthmus".into());
        l
    }

    async fn start_mirror(&mut self) {
        self.mirror = Some(Mirror::start(MirrorOptions {
            client: self.west.client().await,
            namespace: "isthmus".into(),
            identity: "a".into(),
            lease: LeaseTiming {
                lease_duration: Duration::from_millis(1500),
                renew_deadline: Duration::from_millis(1000),
                retry_period: Duration::from_millis(200),
            },
            resolver: Arc::new(SystemResolver),
            metrics: MirrorMetrics::new(),
        }));
    }

    fn status(&self) -> Value {
        self.west
            .get_json("links", "isthmus", "east")
            .and_then(|l| l.get("status").cloned())
            .unwrap_or(Value::Null)
    }

    fn mirror_ready(&self) -> Option<bool> {
        let s = self.west.get::<EndpointSlice>("test", "podinfo-east")?;
        Some(
            !s.endpoints.is_empty()
                && s.endpoints
                    .iter()
                    .all(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true)),
        )
    }

    /// The mirror is ready and the status carries latencies.
    async fn wait_linked(&self) {
        wait(
            "podinfo-east mirrored, ready, latencies in the Link status",
            || {
                let st = self.status();
                self.mirror_ready() == Some(true)
                    && st["mirroredServices"] == 1
                    && st["gateway"]["alive"] == true
                    && st["gateway"]["latency"]["samples"].as_u64().unwrap_or(0) >= 2
            },
        )
        .await;
    }

    /// Replaces east's gateway (same ports) by one serving `certs`.
    async fn restart_east(&mut self, certs: Option<&Certs>) {
        if let Some(g) = self.east_gw.take() {
            g.shutdown(Duration::from_millis(100)).await;
        }
        if let Some(c) = certs {
            self.east_gw = Some(gateway(c, Some(self.east_ports)).await);
        }
    }

    /// Runs `isthmus ARGS --kubeconfig <west>`: exit code and stdout.
    async fn run(&self, args: &[&str]) -> (i32, String) {
        let out = tokio::process::Command::new(isthmus_bin())
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .output()
            .await
            .expect("run isthmus");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        eprintln!(
            "$ isthmus {}\n{stdout}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), stdout)
    }

    async fn diagnose(&self) -> (i32, String) {
        self.run(&["diagnose"]).await
    }

    async fn shutdown(mut self) {
        if let Some(m) = self.mirror.take() {
            m.shutdown().await;
        }
    }
}

async fn wait(what: &str, mut check: impl FnMut() -> bool) {
    eventually_for(what, WAIT, || std::future::ready(check())).await;
}

/// The finding lines (`✔ ...`, `✘ ...`, `‼ ...`, `- ...`) of a report.
fn findings(report: &str) -> Vec<String> {
    report
        .lines()
        .map(str::trim)
        .filter(|l| ["✔ ", "✘ ", "‼ ", "- "].iter().any(|m| l.starts_with(m)))
        .map(str::to_string)
        .collect()
}

fn marked(report: &str, mark: &str) -> Vec<String> {
    findings(report)
        .into_iter()
        .filter(|l| l.starts_with(mark))
        .collect()
}

fn assert_line(report: &str, want: &str) {
    assert!(
        findings(report).iter().any(|l| l.starts_with(want)),
        "no finding line starting with {want:?} in:\n{report}"
    );
}

#[tokio::test]
async fn healthy_pair_every_check_ok() {
    let p = Pair::start(true).await;
    let (code, out) = p.diagnose().await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(marked(&out, "✘"), Vec::<String>::new(), "{out}");
    assert_eq!(marked(&out, "‼"), Vec::<String>::new(), "{out}");
    assert_eq!(marked(&out, "-"), Vec::<String>::new(), "{out}");
    for want in [
        "✔ CRD links.isthmus.dev is installed".to_string(),
        "✔ CRD mappings.isthmus.dev is installed".to_string(),
        "✔ this cluster's gateway trusts [CN=mesh root] from ConfigMap isthmus/isthmus-trust-anchors key ca.crt (mounted by Deployment isthmus/isthmus-gateway)".to_string(),
        "✔ all 1 mirror Services here have ready endpoints".to_string(),
        "✔ the Link's spec is valid".to_string(),
        "✔ the mirror controller accepts the Link (Valid=True)".to_string(),
        format!("✔ east's API server ({}) accepts the credentials", p.east.url()),
        "✔ east's gateway trusts [CN=mesh root] from ConfigMap isthmus/isthmus-trust-anchors key ca.crt".to_string(),
        "✔ east's gateway certificate CN=east gateway (issued by CN=mesh root) chains to this cluster's trust anchors [CN=mesh root]".to_string(),
        format!("✔ east's gateway certificate carries the Link's gatewayIdentity {EAST_ID}"),
        "✔ this cluster's gateway certificate CN=west gateway (issued by CN=mesh root) is trusted by east's trust anchors [CN=mesh root]".to_string(),
        format!("✔ east's gateway answers its probe http://127.0.0.1:{}/ready with 200", p.east_ports.1.port()),
        "✔ all 1 exported Services in east have ready endpoints".to_string(),
    ] {
        assert_line(&out, &want);
    }
    p.shutdown().await;
}

#[tokio::test]
async fn missing_crd_is_named() {
    let p = Pair::start(true).await;
    p.west.set_served("mappings", false);
    let (code, out) = p.diagnose().await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        marked(&out, "✘"),
        ["✘ CRD mappings.isthmus.dev is not installed: the API server does not serve Mapping"],
        "{out}"
    );
    assert!(
        out.contains("→ install it: isthmus crds mapping | kubectl apply -f -"),
        "{out}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn bad_credentials_are_named() {
    let p = Pair::start(true).await;
    p.west.apply_json("secrets", p.credentials("not-the-token"));
    let (code, out) = p.diagnose().await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        marked(&out, "✘"),
        [format!(
            "✘ east's API server ({}) refuses the credentials in Secret isthmus/cluster-credentials-east: 401 Unauthorized: Unauthorized",
            p.east.url()
        )],
        "{out}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn foreign_ca_is_named_with_both_sides_anchors() {
    let mut p = Pair::start(true).await;
    let foreign = CertAuthority::new("foreign root").expect("CA");
    let certs = gateway_certs(
        p.dir.path(),
        "east-foreign",
        &foreign,
        EAST_ID,
        365,
        p.mesh.cert_pem(),
    );
    p.restart_east(Some(&certs)).await;
    let (code, out) = p.diagnose().await;
    assert_eq!(code, 1, "{out}");
    let failed = marked(&out, "✘");
    assert_eq!(failed.len(), 1, "{out}");
    assert!(
        failed[0].starts_with("✘ east's gateway certificate CN=east-foreign gateway (issued by CN=foreign root) is not trusted by this cluster's trust anchors [CN=mesh root] ("),
        "{out}"
    );
    assert!(
        failed[0].ends_with("); east's anchors are [CN=mesh root]"),
        "{out}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn expiring_certificate_warns_and_exits_zero() {
    let mut p = Pair::start(true).await;
    let certs = gateway_certs(
        p.dir.path(),
        "east-expiring",
        &p.mesh,
        EAST_ID,
        10,
        p.mesh.cert_pem(),
    );
    p.restart_east(Some(&certs)).await;
    let (code, out) = p.diagnose().await;
    assert_eq!(code, 0, "warnings alone exit 0:\n{out}");
    assert_eq!(marked(&out, "✘"), Vec::<String>::new(), "{out}");
    let warned = marked(&out, "‼");
    assert_eq!(warned.len(), 1, "{out}");
    assert!(
        warned[0].starts_with(
            "‼ east's gateway certificate CN=east-expiring gateway expires in 10 days"
        ),
        "{out}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn dead_probe_is_named() {
    let mut p = Pair::start(true).await;
    p.restart_east(None).await;
    let (code, out) = p.diagnose().await;
    assert_eq!(code, 1, "{out}");
    assert_line(
        &out,
        &format!(
            "✘ east's gateway probe http://127.0.0.1:{port}/ready failed: 127.0.0.1:{port}: Connection refused",
            port = p.east_ports.1.port()
        ),
    );
    p.shutdown().await;
}

#[tokio::test]
async fn mirror_without_endpoints_is_named() {
    let p = Pair::start(true).await;
    p.export(false);
    wait("the mirror is not ready", || {
        p.mirror_ready() == Some(false)
    })
    .await;
    let (code, out) = p.diagnose().await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        marked(&out, "✘"),
        [
            "✘ mirror test/podinfo-east (of podinfo.test.svc.cluster.local in east) has no ready endpoints",
            "✘ exported Service test/podinfo in east has no ready endpoints",
        ],
        "{out}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn gateways_shows_unknown_then_alive_latencies_then_dead() {
    let mut p = Pair::start(false).await;
    let (code, out) = p.run(&["gateways"]).await;
    assert_eq!(code, 0, "{out}");
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        ["east", "unknown", "unknown", "unknown", "unknown", "unknown"],
        "{out}"
    );

    p.start_mirror().await;
    p.wait_linked().await;
    let (code, out) = p.run(&["gateways"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines()
            .next()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec![
            "CLUSTER",
            "ALIVE",
            "NUM_SVC",
            "LATENCY_P50",
            "LATENCY_P95",
            "LATENCY_P99"
        ])
    );
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..3], ["east", "True", "1"], "{out}");
    for l in &row[3..] {
        assert!(
            l.ends_with("ms") && l[..l.len() - 2].parse::<f64>().is_ok(),
            "latency {l:?}: {out}"
        );
    }
    let (code, json_out) = p.run(&["gateways", "-o", "json"]).await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&json_out).expect("json");
    assert_eq!(v[0]["cluster"], "east");
    assert_eq!(v[0]["alive"], true);
    assert_eq!(v[0]["services"], 1);
    let lat = &v[0]["latency"];
    assert!(lat["samples"].as_u64().unwrap_or(0) >= 2, "{json_out}");
    assert!(
        lat["p50Micros"].as_u64() <= lat["p99Micros"].as_u64(),
        "{json_out}"
    );

    p.restart_east(None).await;
    wait("the Link says the gateway is dead", || {
        p.status()["gateway"]["alive"] == false
    })
    .await;
    let (_, out) = p.run(&["gateways"]).await;
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..3], ["east", "False", "1"], "{out}");
    p.shutdown().await;
}
