//! The seed's demo end to end, with two clusters in network namespaces: west
//! and east each have their own API-server double, gateway (a real `isthmus
//! run` process inside the namespace) and podinfo-like upstream answering with
//! its cluster's name; `isthmus mirror` runs in west, linked to east by the
//! output of `isthmus link` applied with kubectl. A client sends through
//! west's egress.
//!
//! ```text
//!             root namespace: this test, both API doubles (0.0.0.0), kubectl
//!              10.250.1.1 │                          │ 10.250.2.1
//!              10.250.1.2 │                          │ 10.250.2.2
//!   west: gateway (egress 4140), podinfo, mirror     east: gateway (4143, probe 4192), podinfo
//!              10.250.0.1 └──────── veth ────────────┘ 10.250.0.2
//! ```
//! The namespaces and links are made by the test and removed afterwards, also
//! when it fails; traffic goes only to their addresses. Where namespaces
//! cannot be made the test says SKIPPED (and `.ci/run` fails under CI if
//! `ip netns add` works there).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use isthmus::tls::dev::{CertAuthority, LeafSpec};
use isthmus_tests::apiserver::{ApiServer, Options};
use isthmus_tests::manifests::{service, slice, typed};
use isthmus_tests::{eventually_for, isthmus_bin, kubectl_apply, kubectl_available};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

const WEST_ID: &str = "spiffe://west.example/ns/isthmus/sa/isthmus-gateway";
const EAST_ID: &str = "spiffe://east.example/ns/isthmus/sa/isthmus-gateway";
const TOKEN: &str = "east-remote-access";
const PODINFO: &str = "podinfo.test.svc.cluster.local:9898";
const PODINFO_EAST: &str = "podinfo-east.test.svc.cluster.local:9898";
const WAIT: Duration = Duration::from_secs(30);

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The two namespaces and their links; removed on drop (also on panic).
struct Topology {
    west: String,
    east: String,
    links: Vec<String>,
}

impl Topology {
    fn create() -> Result<Topology, String> {
        let n = std::process::id() % 10_000;
        // Leftovers of an earlier run that was killed.
        if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = line
                    .split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next().unwrap_or(n))
                {
                    if name.starts_with("isthr") {
                        let _ = sh(&["ip", "link", "del", name]);
                    }
                }
            }
        }
        let t = Topology {
            west: format!("isthmus-w{n}"),
            east: format!("isthmus-e{n}"),
            links: vec![
                format!("isthrw{n}"),
                format!("isthre{n}"),
                format!("isthx{n}"),
            ],
        };
        sh(&["ip", "netns", "add", &t.west])?;
        sh(&["ip", "netns", "add", &t.east])?;
        let (w, e) = (t.west.as_str(), t.east.as_str());
        let (rw, re, x) = (&t.links[0], &t.links[1], &t.links[2]);
        let (wr, er, xe) = (format!("iwr{n}"), format!("ier{n}"), format!("ixe{n}"));
        for cmd in [
            vec!["ip", "link", "add", rw, "type", "veth", "peer", "name", &wr],
            vec!["ip", "link", "add", re, "type", "veth", "peer", "name", &er],
            vec!["ip", "link", "add", x, "type", "veth", "peer", "name", &xe],
            vec!["ip", "link", "set", &wr, "netns", w],
            vec!["ip", "link", "set", &er, "netns", e],
            vec!["ip", "link", "set", x, "netns", w],
            vec!["ip", "link", "set", &xe, "netns", e],
            vec!["ip", "addr", "add", "10.250.1.1/30", "dev", rw],
            vec!["ip", "addr", "add", "10.250.2.1/30", "dev", re],
            vec!["ip", "link", "set", rw, "up"],
            vec!["ip", "link", "set", re, "up"],
            vec!["ip", "-n", w, "addr", "add", "10.250.1.2/30", "dev", &wr],
            vec!["ip", "-n", e, "addr", "add", "10.250.2.2/30", "dev", &er],
            vec!["ip", "-n", w, "addr", "add", "10.250.0.1/30", "dev", x],
            vec!["ip", "-n", e, "addr", "add", "10.250.0.2/30", "dev", &xe],
            vec!["ip", "-n", w, "link", "set", "lo", "up"],
            vec!["ip", "-n", e, "link", "set", "lo", "up"],
            vec!["ip", "-n", w, "link", "set", &wr, "up"],
            vec!["ip", "-n", e, "link", "set", &er, "up"],
            vec!["ip", "-n", w, "link", "set", x, "up"],
            vec!["ip", "-n", e, "link", "set", &xe, "up"],
        ] {
            sh(&cmd)?;
        }
        Ok(t)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for l in &self.links {
            let _ = sh(&["ip", "link", "del", l]);
        }
        let _ = sh(&["ip", "netns", "del", &self.west]);
        let _ = sh(&["ip", "netns", "del", &self.east]);
    }
}

/// A process inside a namespace, killed on drop.
struct Proc(Child);

impl Proc {
    fn start(netns: &str, args: &[&str], log: &Path) -> Proc {
        let log = std::fs::File::create(log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(isthmus_bin())
            .args(args)
            .env(
                "RUST_LOG",
                "info,pingora_core=warn,pingora_proxy=warn,isthmus::access=off",
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a process in the namespace");
        Proc(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn gateway_config(
    dir: &Path,
    name: &str,
    kubeconfig: &Path,
    allowed: &str,
    egress: bool,
) -> PathBuf {
    let egress = if egress { "\"0.0.0.0:4140\"" } else { "null" };
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "listen: {{gateway: \"0.0.0.0:4143\", admin: \"0.0.0.0:4191\", probe: \"0.0.0.0:4192\", egress: {egress}}}\n\
             tls: {{cert: {name}.crt, key: {name}.key, trust_anchors: ca.crt}}\n\
             allowed_identities: [\"{allowed}\"]\n\
             discovery: {{kubernetes: {{kubeconfig: {}}}}}\n",
            kubeconfig.display()
        ),
    )
    .expect("write config");
    path
}

async fn ready(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok()
        && isthmus_tests::client::plain_get(addr, "/ready").await.0 == 200
}

/// A keep-alive HTTP/1.1 client of west's egress.
struct Caller {
    addr: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
}

impl Caller {
    /// (status, the upstream's name or the gateway's error, the upstream's view of the request)
    async fn get(&mut self, host: &str) -> (u16, String, serde_json::Value) {
        for _ in 0..2 {
            if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
                let tcp = tokio::net::TcpStream::connect(self.addr)
                    .await
                    .expect("egress");
                let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .expect("h1");
                tokio::spawn(conn);
                self.sender = Some(s);
            }
            let Some(s) = self.sender.as_mut() else {
                continue;
            };
            if s.ready().await.is_err() {
                self.sender = None;
                continue;
            }
            let req = http::Request::get("/")
                .header(http::header::HOST, host)
                .body(Empty::new())
                .expect("request");
            let fut = s.send_request(req);
            let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(10), fut).await else {
                return (0, "no answer".into(), serde_json::Value::Null);
            };
            let status = resp.status().as_u16();
            let err = resp
                .headers()
                .get("x-isthmus-error")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let who = err.unwrap_or_else(|| json["upstream"].as_str().unwrap_or("-").to_string());
            return (status, who, json);
        }
        (0, "connection failed".into(), serde_json::Value::Null)
    }

    /// Asks `host` until `ok` holds for the answer (or panics after [`WAIT`]).
    async fn until(
        &mut self,
        what: &str,
        host: &str,
        ok: impl Fn(&(u16, String, serde_json::Value)) -> bool,
    ) -> (u16, String, serde_json::Value) {
        let deadline = Instant::now() + WAIT;
        loop {
            let a = self.get(host).await;
            if ok(&a) {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for: {what} (last {a:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends batches of `n` to the split root until `ok` holds for one batch.
    async fn until_shares(
        &mut self,
        what: &str,
        n: usize,
        ok: impl Fn(&HashMap<String, usize>) -> bool,
    ) {
        let deadline = Instant::now() + WAIT;
        loop {
            let c = self.shares(n).await;
            if ok(&c) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for: {what} (last {c:?})"
            );
        }
    }

    async fn shares(&mut self, n: usize) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for _ in 0..n {
            let (status, who, _) = self.get(PODINFO).await;
            let key = if status == 200 {
                who
            } else {
                format!("{status} {who}")
            };
            *counts.entry(key).or_default() += 1;
        }
        counts
    }
}

fn write_certs(dir: &Path) {
    let ca = CertAuthority::new("two clusters ca").expect("ca");
    std::fs::write(dir.join("ca.crt"), ca.cert_pem()).expect("write");
    for (name, id) in [("west", WEST_ID), ("east", EAST_ID)] {
        let mut spec = LeafSpec::peer_uri(id);
        spec.ekus = Vec::new(); // server and client
        spec.ips = vec![
            "10.250.0.1".parse().expect("ip"),
            "10.250.0.2".parse().expect("ip"),
        ];
        let cert = ca.issue(&spec).expect("issue");
        std::fs::write(dir.join(format!("{name}.crt")), cert.cert_pem()).expect("write");
        std::fs::write(dir.join(format!("{name}.key")), cert.key_pem()).expect("write");
    }
}

/// Writes a TrafficSplit as a real API server presents a CRD object with
/// `conversion: None`: in every served version (the double stores each
/// version apart and does not convert).
fn apply_split(api: &ApiServer, obj: &serde_json::Value) {
    for v in isthmus::discovery::trafficsplit::VERSIONS {
        let mut o = obj.clone();
        o["apiVersion"] = json!(format!("split.smi-spec.io/{v}"));
        if *v != "v1alpha1" {
            // Later versions take integer weights: 500m → 500 (relative).
            for b in o["spec"]["backends"].as_array_mut().into_iter().flatten() {
                if b["weight"] == "500m" {
                    b["weight"] = json!(500);
                }
            }
        }
        api.apply_json(&format!("split.smi-spec.io/{v}/trafficsplits"), o);
    }
}

fn set_slice_ready(api: &ApiServer, name: &str, svc: &str, addr: SocketAddr, ready: bool) {
    api.apply(&typed::<EndpointSlice>(&slice(
        "test", name, svc, addr, ready,
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_demo_across_two_network_namespaces() {
    let topo = match Topology::create() {
        Ok(t) => t,
        Err(e) => {
            assert!(
                std::env::var("ISTHMUS_REQUIRE_NETNS").as_deref() != Ok("1"),
                "network namespaces work on this machine (ISTHMUS_REQUIRE_NETNS=1) but: {e}"
            );
            eprintln!("SKIPPED: network namespaces cannot be created here: {e}");
            return;
        }
    };
    if !kubectl_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_certs(d);
    let everywhere = Options {
        bind: "0.0.0.0".parse().expect("ip"),
        ..Options::default()
    };
    let west_api = ApiServer::start_with(everywhere.clone()).await;
    let east_api = ApiServer::start_with(Options {
        require_token: Some(TOKEN.into()),
        ..everywhere
    })
    .await;
    let (wp, ep) = (west_api.addr().port(), east_api.addr().port());
    // Kubeconfigs as each side reaches the doubles.
    let kc = |name: &str, text: String| {
        let p = d.join(name);
        std::fs::write(&p, text).expect("kubeconfig");
        p
    };
    let west_in = kc(
        "west-in.kubeconfig",
        west_api
            .kubeconfig_yaml()
            .replace("127.0.0.1", "10.250.1.1"),
    );
    let east_in = kc(
        "east-in.kubeconfig",
        east_api
            .kubeconfig_yaml_with_token(TOKEN)
            .replace("127.0.0.1", "10.250.2.1"),
    );
    let east_root = kc(
        "east-root.kubeconfig",
        east_api.kubeconfig_yaml_with_token(TOKEN),
    );
    let west_root = kc("west-root.kubeconfig", west_api.kubeconfig_yaml());

    // East: gateway Service (its LoadBalancer address is the veth's), the
    // remote-access token, podinfo exported.
    let east_podinfo: SocketAddr = "10.250.0.2:9898".parse().expect("addr");
    let west_podinfo: SocketAddr = "10.250.0.1:9898".parse().expect("addr");
    east_api.apply(&typed::<Service>(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: isthmus-gateway\n  namespace: isthmus\n  annotations:\n    mirror.linkerd.io/gateway-identity: spiffe://east.example/ns/isthmus/sa/isthmus-gateway\n    mirror.linkerd.io/probe-path: /ready\n    mirror.linkerd.io/probe-period: \"1\"\nspec:\n  type: LoadBalancer\n  ports:\n    - {name: mc-gateway, port: 4143}\n    - {name: mc-probe, port: 4192}\nstatus:\n  loadBalancer:\n    ingress: [{ip: 10.250.0.2}]\n",
    ));
    east_api.apply_json(
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "isthmus-mirror-remote-access", "namespace": "isthmus"},
            "type": "kubernetes.io/service-account-token", "stringData": {"token": TOKEN}}),
    );
    east_api.apply(&typed::<Service>(&service("test", "podinfo", true, 9898)));
    set_slice_ready(&east_api, "podinfo-1", "podinfo", east_podinfo, true);
    // West: its own podinfo and the 50/50 split (SMI v1alpha1, as Linkerd's docs).
    west_api.apply(&typed::<Service>(&service("test", "podinfo", false, 9898)));
    set_slice_ready(&west_api, "podinfo-1", "podinfo", west_podinfo, true);
    let split = |primary: bool| {
        let ann = if primary {
            json!({"failover.linkerd.io/primary-service": "podinfo"})
        } else {
            json!({})
        };
        json!({"apiVersion": "split.smi-spec.io/v1alpha1", "kind": "TrafficSplit",
            "metadata": {"name": "podinfo", "namespace": "test", "annotations": ann},
            "spec": {"service": "podinfo", "backends": [
                {"service": "podinfo", "weight": "500m"},
                {"service": "podinfo-east", "weight": "500m"}]}})
    };
    apply_split(&west_api, &split(false));

    let east_cfg = gateway_config(d, "east", &east_in, "spiffe://west.example/*", false);
    let west_cfg = gateway_config(d, "west", &west_in, "spiffe://east.example/*", true);
    let east_args = |cfg: &Path| -> Vec<String> {
        vec![
            "run".into(),
            "--config".into(),
            cfg.display().to_string(),
            "--demo-upstream".into(),
            east_podinfo.to_string(),
            "--demo-name".into(),
            "east".into(),
        ]
    };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let mut east = Proc::start(
        &topo.east,
        &args(&east_args(&east_cfg)),
        &d.join("east.log"),
    );
    let west_args: Vec<String> = vec![
        "run".into(),
        "--config".into(),
        west_cfg.display().to_string(),
        "--demo-upstream".into(),
        west_podinfo.to_string(),
        "--demo-name".into(),
        "west".into(),
    ];
    let _west = Proc::start(&topo.west, &args(&west_args), &d.join("west.log"));
    let east_admin: SocketAddr = "10.250.2.2:4191".parse().expect("addr");
    let west_admin: SocketAddr = "10.250.1.2:4191".parse().expect("addr");
    let logs = |what: &str| {
        let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
        format!(
            "{what}\n--- east\n{}\n--- west\n{}\n--- mirror\n{}",
            read("east.log"),
            read("west.log"),
            read("mirror.log")
        )
    };
    eventually_for("both gateways ready", WAIT, || async {
        ready(east_admin).await && ready(west_admin).await
    })
    .await;

    // Step 1: `isthmus link` against east, applied to west with kubectl.
    let link = Command::new(isthmus_bin())
        .args(["link", "--cluster-name", "east", "--kubeconfig"])
        .arg(&east_root)
        .args(["--api-server-address", &format!("http://10.250.1.1:{ep}")])
        .output()
        .expect("isthmus link");
    assert!(
        link.status.success(),
        "{}",
        String::from_utf8_lossy(&link.stderr)
    );
    let applied = kubectl_apply(
        &west_root,
        &d.join("kubectl"),
        &String::from_utf8_lossy(&link.stdout),
    );
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let _mirror = Proc::start(
        &topo.west,
        &[
            "mirror",
            "--kubeconfig",
            &west_in.display().to_string(),
            "--namespace",
            "isthmus",
            "--admin",
            "0.0.0.0:4291",
            "--identity",
            "west-mirror",
        ],
        &d.join("mirror.log"),
    );
    let mirror_ready = || {
        west_api
            .get::<EndpointSlice>("test", "podinfo-east")
            .is_some_and(|s| {
                !s.endpoints.is_empty()
                    && s.endpoints
                        .iter()
                        .all(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            })
    };
    eventually_for("podinfo-east mirrored and ready in west", WAIT, || {
        std::future::ready(mirror_ready())
    })
    .await;
    let _ = wp;

    // Step 2: the mirror name reaches east over mTLS, with west's identity.
    let mut caller = Caller {
        addr: "10.250.1.2:4140".parse().expect("addr"),
        sender: None,
    };
    let (_, who, seen) = caller
        .until("west's egress routes podinfo-east", PODINFO_EAST, |a| {
            a.0 == 200
        })
        .await;
    assert_eq!(
        who,
        "east",
        "{}",
        logs("podinfo-east answered by the wrong cluster")
    );
    assert_eq!(seen["headers"]["x-isthmus-peer-identity"], WEST_ID);
    assert_eq!(seen["headers"]["host"], PODINFO);

    // Step 3: the 50/50 split.
    let counts = caller.shares(1000).await;
    let east_share = counts.get("east").copied().unwrap_or(0);
    eprintln!("split over 1000 requests: {counts:?}");
    assert!((430..=570).contains(&east_share), "{counts:?}");
    assert_eq!(
        counts.get("east").copied().unwrap_or(0) + counts.get("west").copied().unwrap_or(0),
        1000,
        "{counts:?}"
    );

    // Disaster recovery: east killed mid-load.
    let load_start = Instant::now();
    let mut failed = 0;
    let mut last_east: Option<Duration> = None;
    let mut killed_at = None;
    while load_start.elapsed() < Duration::from_secs(8) {
        if killed_at.is_none() && load_start.elapsed() > Duration::from_secs(1) {
            east.kill();
            killed_at = Some(load_start.elapsed());
        }
        let (status, who, _) = caller.get(PODINFO).await;
        if status != 200 {
            failed += 1;
        } else if who == "east" {
            if let Some(k) = killed_at {
                last_east = Some(load_start.elapsed() - k);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("east killed mid-load: {failed} failed GETs; last answer from east {last_east:?} after the kill");
    assert_eq!(failed, 0, "{}", logs("GETs failed while east died"));
    assert!(
        last_east.is_none(),
        "east answered after it was killed: {last_east:?}"
    );
    eventually_for("the mirror goes not ready (probe)", WAIT, || {
        std::future::ready(!mirror_ready())
    })
    .await;
    let local = caller.shares(100).await;
    assert_eq!(local.get("west"), Some(&100), "{local:?}");
    east = Proc::start(
        &topo.east,
        &args(&east_args(&east_cfg)),
        &d.join("east.log"),
    );
    eventually_for("east back: the mirror is ready again", WAIT, || {
        std::future::ready(mirror_ready())
    })
    .await;
    let back = caller.shares(200).await;
    eprintln!("after east came back, 200 requests: {back:?}");
    assert!(back.get("east").copied().unwrap_or(0) > 50, "{back:?}");

    // Primary/backup with the linkerd-failover annotation.
    apply_split(&west_api, &split(true));
    caller
        .until_shares("all to the primary", 20, |c| c.get("west") == Some(&20))
        .await;
    set_slice_ready(&west_api, "podinfo-1", "podinfo", west_podinfo, false);
    let mut failed = 0;
    let mut saw_backup = false;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let (status, who, _) = caller.get(PODINFO).await;
        failed += usize::from(status != 200);
        saw_backup |= who == "east";
    }
    assert_eq!(failed, 0, "GETs failed when the primary's endpoints went");
    assert!(saw_backup);
    assert_eq!(
        caller.shares(50).await.get("east"),
        Some(&50),
        "all to the backup"
    );
    set_slice_ready(&west_api, "podinfo-1", "podinfo", west_podinfo, true);
    caller
        .until_shares("primary back: all to it", 20, |c| {
            c.get("west") == Some(&20)
        })
        .await;
    eprintln!("primary/backup: 0 failed GETs while the primary's endpoints went and came back");

    // Cluster isolation: a west identity east does not allow gets 403 there.
    east.kill();
    let strict = gateway_config(d, "east", &east_in, "spiffe://nobody.example/*", false);
    east = Proc::start(&topo.east, &args(&east_args(&strict)), &d.join("east.log"));
    eventually_for("east serves again", WAIT, || async {
        ready(east_admin).await
    })
    .await;
    let denied = caller
        .until("east refuses west's identity", PODINFO_EAST, |a| a.0 == 403)
        .await;
    assert_eq!(denied.1, "forbidden");
    let east_metrics = isthmus_tests::client::plain_get(east_admin, "/metrics")
        .await
        .1;
    assert!(
        isthmus_tests::sample_value(
            &east_metrics,
            "isthmus_request_errors_total{reason=\"forbidden\"}"
        ) >= 1.0
    );
    let west_metrics = isthmus_tests::client::plain_get(west_admin, "/metrics")
        .await
        .1;
    assert!(
        isthmus_tests::sample_value(
            &west_metrics,
            "isthmus_egress_requests_total{status_class=\"4xx\",target_cluster_name=\"east\"}"
        ) >= 1.0
    );

    // East unexports podinfo: the mirror goes, its name answers 404 at once.
    east_api.apply(&typed::<Service>(&service("test", "podinfo", false, 9898)));
    eventually_for("the mirror is gone", WAIT, || {
        std::future::ready(west_api.get::<Service>("test", "podinfo-east").is_none())
    })
    .await;
    caller
        .until("podinfo-east answers 404", PODINFO_EAST, |a| a.0 == 404)
        .await;
    let t0 = Instant::now();
    let (status, _, _) = caller.get(PODINFO_EAST).await;
    assert_eq!(status, 404);
    assert!(t0.elapsed() < Duration::from_secs(1), "nothing hangs");
    assert_eq!(
        caller.shares(50).await.get("west"),
        Some(&50),
        "the split serves locally"
    );
    drop(east);
}
