//! End-to-end test support: development certificates, real upstream servers, an
//! in-process gateway started through the same constructor as `main`, and a real
//! mTLS client (rustls + hyper, HTTP/1.1 or HTTP/2, or raw bytes).

pub mod apiserver;
pub mod client;
pub mod grpc;
pub mod load;
pub mod manifests;
pub mod raw_upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isthmus::config::Config;
use isthmus::gateway::Gateway;
use isthmus::tls::dev::{CertAuthority, LeafSpec};
use tempfile::TempDir;

pub use client::{Alpn, Client, ClientError, H2Session, Response};

/// Installs a test log subscriber once (`RUST_LOG` to see gateway logs).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `check` every 10 ms until it returns true; panics naming `what` after 10 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A demo upstream (the same server `isthmus run --demo-upstream` starts) on a
/// loopback port, answering JSON that names it.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream called `name` on `127.0.0.1:0`.
    pub async fn start(name: &str) -> Upstream {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = l.local_addr().expect("local addr");
        let task = tokio::spawn(isthmus::demo::serve(l, name.to_string()));
        Upstream { addr, task }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback address where nothing listens (connections are refused).
pub async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("local addr")
}

/// A gateway running in this process on loopback ports, with its own folder
/// holding `config.yaml`, `certs/` (the dev set) and `manifests/`.
pub struct Harness {
    /// The running gateway.
    pub gateway: Gateway,
    dir: TempDir,
}

/// Minimal config used by the harness; tests adjust the parsed [`Config`].
pub const BASE_CONFIG: &str = r#"
listen: {gateway: "127.0.0.1:0", admin: "127.0.0.1:0", probe: "127.0.0.1:0", egress: "127.0.0.1:0"}
tls: {cert: certs/gateway.crt, key: certs/gateway.key, trust_anchors: certs/ca.crt}
allowed_identities: ["spiffe://west.example/*"]
discovery: {files: {dir: manifests, poll_interval_ms: 20}}
upstream: {connect_timeout_ms: 500, timeout_ms: 5000}
"#;

impl Harness {
    /// Starts a gateway over the given manifest files (`name`, YAML).
    pub async fn start(manifests: &[(&str, String)]) -> Harness {
        Harness::start_with(manifests, |_| {}).await
    }

    /// Starts a gateway, letting the test adjust the config first.
    pub async fn start_with(
        manifests: &[(&str, String)],
        adjust: impl FnOnce(&mut Config),
    ) -> Harness {
        init_logging();
        let dir = tempfile::tempdir().expect("tempdir");
        isthmus::tls::dev::write_dev_certs(&dir.path().join("certs")).expect("dev certs");
        std::fs::create_dir_all(dir.path().join("manifests")).expect("manifests dir");
        for (name, yaml) in manifests {
            std::fs::write(dir.path().join("manifests").join(name), yaml).expect("write manifest");
        }
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, BASE_CONFIG).expect("write config");
        let mut cfg = Config::load(&path).expect("base config");
        adjust(&mut cfg);
        let gateway = Gateway::start(&cfg).await.expect("gateway starts");
        Harness { gateway, dir }
    }

    /// A gateway with one exported Service, `podinfo.test.svc.cluster.local:9898`,
    /// backed by a demo upstream called `podinfo` (the upstream must outlive the test).
    pub async fn podinfo() -> (Harness, Upstream) {
        let up = Upstream::start("podinfo").await;
        let h = Harness::start(&[(
            "podinfo.yaml",
            manifests::exported_service("test", "podinfo", 9898, up.addr),
        )])
        .await;
        (h, up)
    }

    /// Drains and stops the gateway (what SIGTERM does); returns the connections
    /// still open when `grace` ran out.
    pub async fn shutdown(self, grace: Duration) -> usize {
        self.gateway.shutdown(grace).await
    }

    /// The folder with the dev certificates.
    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// The harness's development CA (`certs/ca.crt` and `ca.key`).
    pub fn ca(&self) -> CertAuthority {
        let read = |f: &str| std::fs::read_to_string(self.certs().join(f)).expect("dev CA file");
        CertAuthority::from_pem(&read("ca.crt"), &read("ca.key")).expect("load CA")
    }

    /// Issues a client certificate under the harness CA as `certs/<name>.crt/.key`.
    pub fn issue_cert(&self, name: &str, spec: &LeafSpec) {
        self.issue_cert_by(&self.ca(), name, spec);
    }

    /// Issues a certificate under `ca` as `certs/<name>.crt/.key`.
    pub fn issue_cert_by(&self, ca: &CertAuthority, name: &str, spec: &LeafSpec) {
        let cert = ca.issue(spec).expect("issue");
        let dir = self.certs();
        std::fs::write(dir.join(format!("{name}.crt")), cert.cert_pem()).expect("write");
        std::fs::write(dir.join(format!("{name}.key")), cert.key_pem()).expect("write");
    }

    /// The watched manifest folder.
    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// Writes (or replaces) a manifest file atomically (write + rename).
    pub fn write_manifest(&self, name: &str, yaml: &str) {
        replace_file(&self.manifests().join(name), yaml);
    }

    /// An HTTP/1.1 client presenting `certs/<name>.crt` (e.g. `peer-west`).
    pub fn client(&self, name: &str) -> Client {
        Client::new(
            self.gateway.gateway_addr,
            &self.certs(),
            Some(name),
            Alpn::Http1,
        )
    }

    /// A client presenting no certificate.
    pub fn anonymous_client(&self) -> Client {
        Client::new(self.gateway.gateway_addr, &self.certs(), None, Alpn::Http1)
    }

    /// GET on the admin port: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        client::plain_get(self.gateway.admin_addr, path).await
    }

    /// Waits until a metric sample equals `want` (request metrics are recorded
    /// just after the response is sent, so a scrape may briefly lag).
    pub async fn wait_metric(&self, sample: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.metric(sample).await;
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{sample} is {got}, want {want}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The value of one metric sample, e.g. `isthmus_request_errors_total{reason="no_route"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
        metric_value(&text, sample)
    }
}

/// Reads one sample from Prometheus text; 0 when absent.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Path to a file under the workspace root.
pub fn workspace_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Replaces a file the way a Secret update or `mv` does: write a dot-file
/// beside it (which the file source skips), then rename it over.
pub fn replace_file(path: &Path, content: &str) {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file name");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// [`eventually`] with a deadline of the caller's choosing.
pub async fn eventually_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out after {limit:?} waiting for: {what}");
}

/// The `isthmus` binary `cargo test --workspace` built beside the test binaries.
pub fn isthmus_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("isthmus"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p isthmus` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// Whether `kubectl` runs here; under `CI=true` its absence fails the test.
pub fn kubectl_available() -> bool {
    let found = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "kubectl is required under CI (.ci/setup installs it)"
        );
        eprintln!("SKIPPED: kubectl is not on PATH (run .ci/setup)");
    }
    found
}

/// `kubectl --kubeconfig K apply --validate=false -f -` with `yaml` on stdin.
pub fn kubectl_apply(kubeconfig: &Path, cache: &Path, yaml: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(["apply", "--validate=false", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write");
    child.wait_with_output().expect("kubectl output")
}
