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

    /// Waits until a metric sample is present and equals `want` (request
    /// metrics are recorded just after the response is sent, so a scrape may
    /// briefly lag). A sample that never appears fails, whatever `want` is.
    pub async fn wait_metric(&self, sample: &str, want: f64) {
        self.wait_metric_by(sample, want, false).await
    }

    /// [`Harness::wait_metric`] for a labelled series that may not exist yet
    /// (a counter no one has bumped): absent reads as 0, and the sample's
    /// name, label names and closed-set label values must be ones the gateway
    /// exports (see [`check_sample_name`]).
    pub async fn wait_metric_or_absent(&self, sample: &str, want: f64) {
        check_sample_name(sample);
        self.wait_metric_by(sample, want, true).await
    }

    async fn wait_metric_by(&self, sample: &str, want: f64, absent_is_zero: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, text) = self.admin_get("/metrics").await;
            let got = match metric_value(&text, sample) {
                Some(v) => v,
                None if absent_is_zero => 0.0,
                None if Instant::now() >= deadline => {
                    sample_value(&text, sample);
                    unreachable!("sample_value panics for an absent sample")
                }
                None => f64::NAN,
            };
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{sample} is {got}, want {want}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The value of one metric sample, e.g. `isthmus_request_errors_total{reason="no_route"}`.
    /// Panics when the scrape has no such sample: a misspelled name never reads as 0.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
        sample_value(&text, sample)
    }

    /// The value of a labelled series that may legitimately be absent (never
    /// bumped): absent reads as 0. Panics unless the sample is spelled as the
    /// gateway exports it ([`check_sample_name`]).
    pub async fn metric_or_absent(&self, sample: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
        sample_value_or_absent(&text, sample)
    }
}

/// Reads one sample from Prometheus text; `None` when absent.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok()).flatten()
    })
}

/// Reads one sample that must be present; panics (showing the samples of the
/// same family that are there) when it is not.
pub fn sample_value(text: &str, sample: &str) -> f64 {
    metric_value(text, sample).unwrap_or_else(|| {
        let family = sample.split('{').next().unwrap_or(sample);
        let present: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.starts_with(family))
            .collect();
        panic!(
            "metric sample {sample} is absent from /metrics; present of that family: {present:?}"
        )
    })
}

/// Reads one sample that may be absent (0 then), after checking that its
/// spelling is one the gateway can export ([`check_sample_name`]).
pub fn sample_value_or_absent(text: &str, sample: &str) -> f64 {
    check_sample_name(sample);
    metric_value(text, sample).unwrap_or(0.0)
}

/// The closed sets of label values, per (family, label): a sample naming a
/// value outside them is misspelled. Labels not listed (route, peer,
/// status_class, le) are open and only their names are checked.
fn known_label_values(family: &str, label: &str) -> Option<Vec<String>> {
    use isthmus::metrics::{ErrorKind, HandshakeFailure, ObjectKind};
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    Some(match (family, label) {
        ("isthmus_request_errors_total", "reason") => ErrorKind::ALL
            .iter()
            .map(|k| k.label().to_string())
            .chain(["unparsable_request".to_string()])
            .collect(),
        ("isthmus_tls_handshake_failures_total", "reason") => HandshakeFailure::ALL
            .iter()
            .map(|k| k.label().to_string())
            .collect(),
        ("isthmus_tls_reloads_total" | "isthmus_mapping_status_writes_total", "result") => {
            owned(&["ok", "error"])
        }
        ("isthmus_limits_exceeded_total", "limit") => owned(&[
            "max_connections",
            "max_connections_per_identity",
            "max_handshakes",
            "max_handshakes_per_source",
            "request_header_timeout",
            "idle_timeout",
            "admin_max_connections",
            "probe_max_connections",
        ]),
        ("isthmus_egress_tls_failures_total", "reason") => {
            owned(&["identity_mismatch", "handshake"])
        }
        (
            "isthmus_discovery_events_total"
            | "isthmus_discovery_errors_total"
            | "isthmus_discovery_watch_errors_total",
            "kind",
        ) => ObjectKind::ALL
            .iter()
            .map(|k| k.label().to_string())
            .collect(),
        ("isthmus_table_objects", "kind") => owned(&["routes", "services", "endpoints"]),
        _ => return None,
    })
}

/// Panics unless `sample` names a family the gateway registers, with exactly
/// that family's label names, and label values from its closed sets.
pub fn check_sample_name(sample: &str) {
    let (name, labels) = match sample.split_once('{') {
        Some((n, rest)) => (
            n,
            rest.strip_suffix('}')
                .unwrap_or_else(|| panic!("{sample}: unterminated label set")),
        ),
        None => (sample, ""),
    };
    let mut pairs = Vec::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("{sample}: malformed labels"));
        let end = after
            .find('"')
            .unwrap_or_else(|| panic!("{sample}: unterminated label value"));
        pairs.push((key, &after[..end]));
        rest = after[end + 1..]
            .strip_prefix(',')
            .unwrap_or(&after[end + 1..]);
    }
    let families = isthmus::metrics::Metrics::new().families();
    let found = families.iter().find_map(|(family, labels)| {
        if name == family {
            return Some((family, labels.clone()));
        }
        let suffix = name.strip_prefix(family.as_str())?;
        let mut labels = labels.clone();
        match suffix {
            "_sum" | "_count" => Some((family, labels)),
            "_bucket" => {
                labels.push("le".to_string());
                Some((family, labels))
            }
            _ => None,
        }
    });
    let Some((family, mut want)) = found else {
        panic!("{sample}: no metric family {name} is exported")
    };
    let mut got: Vec<String> = pairs.iter().map(|(k, _)| k.to_string()).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "{sample}: label names of {family}");
    for (key, value) in pairs {
        if let Some(known) = known_label_values(family, key) {
            assert!(
                known.iter().any(|k| k == value),
                "{sample}: {key}={value:?} is none of {known:?}"
            );
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "# TYPE isthmus_tls_reloads_total counter\n\
        isthmus_tls_reloads_total{result=\"ok\"} 2\n\
        isthmus_upstream_connect_errors_total 0\n";

    #[test]
    fn a_present_sample_reads_its_value() {
        assert_eq!(
            sample_value(SCRAPE, "isthmus_tls_reloads_total{result=\"ok\"}"),
            2.0
        );
        assert_eq!(
            sample_value(SCRAPE, "isthmus_upstream_connect_errors_total"),
            0.0
        );
        assert_eq!(
            sample_value_or_absent(SCRAPE, "isthmus_tls_reloads_total{result=\"error\"}"),
            0.0
        );
        assert_eq!(
            sample_value_or_absent(
                SCRAPE,
                "isthmus_request_duration_seconds_bucket{route=\"r\",le=\"0.5\"}"
            ),
            0.0
        );
    }

    #[test]
    #[should_panic(expected = "absent from /metrics")]
    fn a_misspelled_sample_name_panics() {
        sample_value(SCRAPE, "isthmus_upstream_conect_errors_total");
    }

    #[test]
    #[should_panic(expected = "absent from /metrics")]
    fn a_misspelled_label_value_panics() {
        sample_value(SCRAPE, "isthmus_tls_reloads_total{result=\"okk\"}");
    }

    #[test]
    #[should_panic(expected = "no metric family")]
    fn a_misspelled_family_panics_even_where_absence_is_allowed() {
        sample_value_or_absent(SCRAPE, "isthmus_tls_reload_total{result=\"error\"}");
    }

    #[test]
    #[should_panic(expected = "is none of")]
    fn a_misspelled_label_value_panics_even_where_absence_is_allowed() {
        sample_value_or_absent(SCRAPE, "isthmus_tls_reloads_total{result=\"eror\"}");
    }

    #[test]
    #[should_panic(expected = "label names")]
    fn a_misspelled_label_name_panics_even_where_absence_is_allowed() {
        sample_value_or_absent(SCRAPE, "isthmus_tls_reloads_total{reslt=\"error\"}");
    }
}
