//! Soak: steady mTLS load through the gateway for ten minutes while every kind
//! of change is injected on a schedule, reporting requests, failures, p99 per
//! window and the gateway's RSS at the start and the end.
//!
//! The gateway runs as its own process (the release binary) with
//! `discovery.kubernetes` against the API-server double; the upstreams and
//! the double run here; `oha` (installed by `benches/run`) drives the load in
//! consecutive windows. Changes, one every `step` seconds, in a cycle:
//! endpoints added / made not ready / removed, Mapping weight split and edits,
//! a dead endpoint (retried, then ejected), serving certificate rotation,
//! trust-anchor bundle with an overlapping second CA, an API-server outage, and
//! a forced 410 relist with a change made during the gap.
//!
//! `cargo build --release -p isthmus -p isthmus-benches && target/release/soak [seconds] [window] [step]`
//! (defaults 600, 30, 8). `OHA` overrides the oha path.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isthmus::tls::dev::{CertAuthority, LeafSpec};
use isthmus_benches::{write_report, GatewayProcess};
use isthmus_tests::apiserver::ApiServer;
use isthmus_tests::manifests::{mapping, service, slice, typed};
use isthmus_tests::{replace_file, Upstream};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

const GATEWAY: &str = "127.0.0.1:16143";
const ADMIN: &str = "127.0.0.1:16191";
const PROBE: &str = "127.0.0.1:16192";
const HOST: &str = "soak.example";
const RATE: u32 = 300;

/// The Mapping that routes the load's host, split over `app` and `app2`.
fn soak_mapping(name: &str, service: &str, weight: Option<u32>, extra: &str) -> Mapping {
    let weight = weight
        .map(|w| format!("    weight: {w}\n"))
        .unwrap_or_default();
    typed(&mapping(
        "soak",
        name,
        &format!(
            "    hostname: {HOST}\n    prefix: /\n    service: {service}.soak:80\n{weight}{extra}"
        ),
    ))
}

type Mapping = isthmus::discovery::crd::Mapping;

struct Changes {
    api: ApiServer,
    certs: PathBuf,
    ca: CertAuthority,
    ca_pem: String,
    other_ca: CertAuthority,
    up: Vec<Upstream>,
    step: usize,
}

impl Changes {
    fn slice(&self, name: &str, svc: &str, up: usize, ready: bool) -> EndpointSlice {
        typed(&slice("soak", name, svc, self.up[up].addr, ready))
    }

    /// Applies the next change of the cycle; returns its name.
    async fn next(&mut self) -> &'static str {
        let api = &self.api;
        let step = self.step;
        self.step += 1;
        match step % 12 {
            0 => {
                api.apply(&self.slice("app-c", "app", 2, true));
                "endpoint added"
            }
            1 => {
                api.apply(&self.slice("app-a", "app", 0, false));
                "endpoint made not ready"
            }
            2 => {
                api.delete::<EndpointSlice>("soak", "app-b");
                api.apply(&self.slice("app-a", "app", 0, true));
                "endpoint removed, another ready again"
            }
            3 => {
                api.apply(&self.slice("app-b", "app", 1, true));
                api.delete::<EndpointSlice>("soak", "app-c");
                "endpoints restored"
            }
            4 => {
                api.apply(&soak_mapping("soak", "app", Some(50), ""));
                api.apply(&soak_mapping("soak-2", "app2", Some(50), ""));
                "Mapping split 50/50 over two Services"
            }
            5 => {
                api.delete::<Mapping>("soak", "soak-2");
                api.apply(&soak_mapping(
                    "soak",
                    "app",
                    None,
                    "    timeout_ms: 5000\n    add_request_headers: {x-soak: \"1\"}\n",
                ));
                "Mapping edited, split removed"
            }
            6 => {
                let mut dead = self.up[0].addr;
                dead.set_ip([127, 0, 0, 2].into());
                api.apply(&typed::<EndpointSlice>(&slice(
                    "soak", "app-dead", "app", dead, true,
                )));
                "dead endpoint added (retried, then ejected)"
            }
            7 => {
                api.delete::<EndpointSlice>("soak", "app-dead");
                let leaf = self.ca.issue(&LeafSpec::gateway()).expect("leaf");
                // Key first: for a moment the pair mismatches and the gateway
                // must refuse it and keep the old one.
                replace_file(&self.certs.join("gateway.key"), &leaf.key_pem());
                replace_file(&self.certs.join("gateway.crt"), &leaf.cert_pem());
                "dead endpoint removed; serving certificate rotated"
            }
            8 => {
                let bundle = format!("{}{}", self.ca_pem, self.other_ca.cert_pem());
                replace_file(&self.certs.join("ca.crt"), &bundle);
                "trust anchors: second CA added (overlap)"
            }
            9 => {
                replace_file(&self.certs.join("ca.crt"), &self.ca_pem);
                api.stop().await;
                "trust anchors: back to one CA; API server down"
            }
            10 => {
                api.restart().await;
                "API server back"
            }
            _ => {
                api.compact();
                api.apply(&self.slice("app-c", "app", 2, true));
                api.drop_watches();
                api.delete::<EndpointSlice>("soak", "app-c");
                "forced 410 relist with changes in the gap"
            }
        }
    }
}

struct Window {
    ok: u64,
    failures: u64,
    p99_ms: f64,
    samples: Vec<String>,
}

fn run_oha(oha: &Path, certs: &Path, seconds: u64) -> Window {
    let argv: Vec<String> = vec![
        "--no-tui".into(),
        "--output-format".into(),
        "json".into(),
        "-z".into(),
        format!("{seconds}s"),
        "-q".into(),
        RATE.to_string(),
        "-c".into(),
        "16".into(),
        "--http-version".into(),
        "1.1".into(),
        "--insecure".into(),
        "--cert".into(),
        certs.join("peer-west.crt").display().to_string(),
        "--key".into(),
        certs.join("peer-west.key").display().to_string(),
        "--connect-to".into(),
        format!("{HOST}:80:{GATEWAY}"),
        format!("https://{HOST}:80/"),
    ];
    let out = Command::new(oha)
        .args(&argv)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (install it with benches/run)", oha.display()));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("oha output: {e}\n{}", String::from_utf8_lossy(&out.stderr)));
    let mut w = Window {
        ok: 0,
        failures: 0,
        p99_ms: v["latencyPercentiles"]["p99"].as_f64().unwrap_or(0.0) * 1000.0,
        samples: Vec::new(),
    };
    if let Some(codes) = v["statusCodeDistribution"].as_object() {
        for (code, n) in codes {
            let n = n.as_u64().unwrap_or(0);
            if code.starts_with('2') {
                w.ok += n;
            } else {
                w.failures += n;
                w.samples.push(format!("status {code} x{n}"));
            }
        }
    }
    if let Some(errors) = v["errorDistribution"].as_object() {
        for (what, n) in errors {
            // Requests cut off by oha's own deadline are not failures.
            if !what.contains("deadline") {
                let n = n.as_u64().unwrap_or(0);
                w.failures += n;
                w.samples.push(format!("{what} x{n}"));
            }
        }
    }
    w
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(600);
    let window: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let step: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let oha = std::env::var_os("OHA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/isthmus/tools/bin/oha")
        });
    let work = tempfile::tempdir().expect("tempdir");
    let certs = work.path().join("certs");
    isthmus::tls::dev::write_dev_certs(&certs).expect("certs");
    let read = |name: &str| std::fs::read_to_string(certs.join(name)).expect("dev cert");
    let ca = CertAuthority::from_pem(&read("ca.crt"), &read("ca.key")).expect("dev CA");

    let api = ApiServer::start().await;
    let mut up = Vec::new();
    for name in ["a", "b", "c", "d"] {
        up.push(Upstream::start(name).await);
    }
    let mut changes = Changes {
        api,
        certs: certs.clone(),
        ca_pem: read("ca.crt"),
        ca,
        other_ca: CertAuthority::new("soak second CA").expect("CA"),
        up,
        step: 0,
    };
    for svc in ["app", "app2"] {
        changes
            .api
            .apply(&typed::<Service>(&service("soak", svc, true, 80)));
    }
    changes.api.apply(&changes.slice("app-a", "app", 0, true));
    changes.api.apply(&changes.slice("app-b", "app", 1, true));
    changes.api.apply(&changes.slice("app2-d", "app2", 3, true));
    changes.api.apply(&soak_mapping("soak", "app", None, ""));

    std::fs::write(
        work.path().join("kubeconfig"),
        changes.api.kubeconfig_yaml(),
    )
    .expect("kubeconfig");
    std::fs::write(
        work.path().join("isthmus.yaml"),
        format!(
            "listen: {{gateway: \"{GATEWAY}\", admin: \"{ADMIN}\", probe: \"{PROBE}\"}}\n\
             tls: {{cert: certs/gateway.crt, key: certs/gateway.key, trust_anchors: certs/ca.crt, reload_interval_ms: 200}}\n\
             allowed_identities: [\"*\"]\n\
             discovery: {{kubernetes: {{kubeconfig: kubeconfig}}}}\n"
        ),
    )
    .expect("config");
    let child = Command::new(root.join("target/release/isthmus"))
        .args(["run", "--config"])
        .arg(work.path().join("isthmus.yaml"))
        .env("RUST_LOG", "warn,pingora_core=error,pingora_proxy=error")
        .stdout(Stdio::null())
        .spawn()
        .expect("target/release/isthmus (cargo build --release)");
    let gateway = GatewayProcess(child);
    gateway
        .wait_ready(ADMIN.parse().expect("addr"), Duration::from_secs(30))
        .await;

    // Changes on their own task, one every `step` seconds.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let t0 = Instant::now();
    let injector = tokio::spawn(async move {
        let mut log = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(step));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop_rx.changed() => break,
            }
            let what = changes.next().await;
            eprintln!("{:>6.1}s  {what}", t0.elapsed().as_secs_f64());
            log.push(serde_json::json!({"t_s": t0.elapsed().as_secs(), "change": what}));
        }
        // Leave the API server running for the last window's stragglers.
        if !changes.api.is_running().await {
            changes.api.restart().await;
        }
        log
    });

    let mut windows = Vec::new();
    let (mut total_ok, mut total_failures) = (0u64, 0u64);
    let mut rss = Vec::new();
    for i in 0..(seconds / window).max(1) {
        let oha = oha.clone();
        let certs = certs.clone();
        let w = tokio::task::spawn_blocking(move || run_oha(&oha, &certs, window))
            .await
            .expect("oha task");
        let now = gateway.rss_mib();
        eprintln!(
            "window {i:>2}: {} ok, {} failed, p99 {:.2} ms, RSS {now:.1} MiB {}",
            w.ok,
            w.failures,
            w.p99_ms,
            w.samples.join(", ")
        );
        total_ok += w.ok;
        total_failures += w.failures;
        rss.push(now);
        windows.push(serde_json::json!({
            "end_s": t0.elapsed().as_secs(),
            "ok": w.ok,
            "failures": w.failures,
            "failure_samples": w.samples,
            "p99_ms": w.p99_ms,
            "rss_mib": now,
        }));
    }
    let _ = stop_tx.send(true);
    let changes_log = injector.await.unwrap_or_default();
    let (first, last) = (rss[0], *rss.last().unwrap_or(&rss[0]));
    let report = serde_json::json!({
        "seconds": seconds,
        "rate_per_s": RATE,
        "requests_ok": total_ok,
        "failures": total_failures,
        "changes_injected": changes_log.len(),
        "rss_mib": {"first_window": first, "last_window": last,
                    "change_pct": (last - first) / first * 100.0},
        "windows": windows,
        "changes": changes_log,
    });
    write_report(&report, "soak.json", seconds >= 600, work.path());
    assert_eq!(total_failures, 0, "failed requests during the soak");
    assert!(
        (last - first).abs() / first <= 0.10,
        "RSS moved more than 10 %: {first:.1} → {last:.1} MiB"
    );
}
