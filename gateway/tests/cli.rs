//! The `isthmus` binary itself: `certs dev`, `check`, `crds`, `--help`,
//! `--version`, and start-up failures that must be loud.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The longest any one `isthmus` process may run before the test kills it and
/// fails with what it printed: a hang is a failure, never a stuck CI run.
const PROCESS_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `isthmus` to completion, bounded by [`PROCESS_DEADLINE`].
fn isthmus(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_isthmus"));
    cmd.args(args).env("RUST_LOG", "error");
    Running::spawn(cmd, &format!("{args:?}")).finish()
}

/// Which pipe a line came from.
#[derive(Clone, Copy, PartialEq)]
enum Stream {
    Out,
    Err,
}

enum Event {
    Line(Stream, Vec<u8>),
    Exited(ExitStatus),
}

/// A spawned `isthmus` with a deadline: its output arrives line by line from
/// reader threads, its exit from a waiter thread, so nothing here blocks past
/// the deadline. Killed on timeout and on drop.
struct Running {
    what: String,
    pid: u32,
    events: Receiver<Event>,
    deadline: Instant,
    budget: Duration,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<ExitStatus>,
}

impl Running {
    fn spawn(cmd: Command, what: &str) -> Self {
        Self::spawn_within(cmd, what, PROCESS_DEADLINE)
    }

    fn spawn_within(mut cmd: Command, what: &str, budget: Duration) -> Self {
        let mut child: Child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn isthmus");
        let (tx, events) = mpsc::channel();
        fn forward(pipe: impl Read + Send + 'static, stream: Stream, tx: mpsc::Sender<Event>) {
            std::thread::spawn(move || {
                let mut r = BufReader::new(pipe);
                loop {
                    let mut line = Vec::new();
                    match r.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            if tx.send(Event::Line(stream, line)).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
        forward(
            child.stdout.take().expect("stdout"),
            Stream::Out,
            tx.clone(),
        );
        forward(
            child.stderr.take().expect("stderr"),
            Stream::Err,
            tx.clone(),
        );
        let pid = child.id();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = tx.send(Event::Exited(status));
            }
        });
        Running {
            what: what.to_string(),
            pid,
            events,
            deadline: Instant::now() + budget,
            budget,
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: None,
        }
    }

    fn output_so_far(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        )
    }

    /// The next event, or a kill and a failure with the output at the deadline.
    /// `None` once the process has exited and both pipes are closed.
    fn next(&mut self, waiting_for: &str) -> Option<Stream> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(left) {
            Ok(Event::Line(stream, line)) => {
                match stream {
                    Stream::Out => self.stdout.extend_from_slice(&line),
                    Stream::Err => self.stderr.extend_from_slice(&line),
                }
                Some(stream)
            }
            Ok(Event::Exited(status)) => {
                self.status = Some(status);
                self.next(waiting_for)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                self.kill("KILL");
                panic!(
                    "isthmus {}: no {waiting_for} within {:?}; killed. Output:\n{}",
                    self.what,
                    self.budget,
                    self.output_so_far()
                )
            }
        }
    }

    /// Reads output until a line of `stream` contains `needle`; false when the
    /// process ends first. Fails at the deadline.
    fn wait_line(&mut self, stream: Stream, needle: &str) -> bool {
        loop {
            let seen = match stream {
                Stream::Out => self.stdout.len(),
                Stream::Err => self.stderr.len(),
            };
            match self.next(&format!("line containing {needle:?}")) {
                None => return false,
                Some(s) if s == stream => {
                    let buf = match stream {
                        Stream::Out => &self.stdout,
                        Stream::Err => &self.stderr,
                    };
                    if String::from_utf8_lossy(&buf[seen..]).contains(needle) {
                        return true;
                    }
                }
                Some(_) => {}
            }
        }
    }

    fn kill(&self, signal: &str) {
        if self.status.is_none() {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &self.pid.to_string()])
                .status();
        }
    }

    /// Waits for the exit (and the end of the output), bounded by the deadline.
    fn finish(mut self) -> Output {
        while self.next("exit").is_some() {}
        let status = self.status.take().unwrap_or_else(|| {
            panic!(
                "isthmus {}: pipes closed without an exit status. Output:\n{}",
                self.what,
                self.output_so_far()
            )
        });
        Output {
            status,
            stdout: std::mem::take(&mut self.stdout),
            stderr: std::mem::take(&mut self.stderr),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill("KILL");
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn examples() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
}

#[test]
fn help_for_every_command() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check", "--help"],
        &["certs", "dev", "--help"],
        &["crds", "--help"],
        &["gateways", "--help"],
        &["diagnose", "--help"],
    ] {
        let o = isthmus(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("Usage"), "{args:?}");
    }
}

#[test]
fn version_names_the_commit() {
    let o = isthmus(&["--version"]);
    assert!(o.status.success(), "{}", text(&o));
    // build.rs sets ISTHMUS_COMMIT for every target of the package, this test too.
    let commit = env!("ISTHMUS_COMMIT");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("isthmus {} (commit {commit})\n", env!("CARGO_PKG_VERSION"))
    );
    match env!("ISTHMUS_COMMIT_SOURCE") {
        // From git: the checkout's HEAD now (build.rs reruns when HEAD moves).
        "git" => {
            let head = Command::new("git")
                .args([
                    "-C",
                    env!("CARGO_MANIFEST_DIR"),
                    "rev-parse",
                    "--short",
                    "HEAD",
                ])
                .output()
                .expect("git");
            assert_eq!(
                commit,
                String::from_utf8_lossy(&head.stdout).trim(),
                "stale commit"
            );
        }
        "none" => assert_eq!(commit, "unknown"),
        _ => {} // ISTHMUS_COMMIT set at build time: whatever the builder said
    }
}

#[test]
fn certs_dev_writes_the_documented_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = isthmus(&["certs", "dev", dir.path().to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", text(&o));
    for f in isthmus::tls::dev::DEV_FILES {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
}

/// A copy of examples/ with dev certificates, so tests never touch the repo's files.
fn example_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        examples().join("isthmus.yaml"),
        dir.path().join("isthmus.yaml"),
    )
    .expect("copy config");
    std::fs::create_dir(dir.path().join("manifests")).expect("mkdir");
    for e in std::fs::read_dir(examples().join("manifests")).expect("examples/manifests") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), dir.path().join("manifests").join(e.file_name()))
            .expect("copy manifest");
    }
    isthmus::tls::dev::write_dev_certs(&dir.path().join("certs")).expect("certs");
    dir
}

#[test]
fn check_accepts_the_example() {
    let dir = example_copy();
    let o = isthmus(&[
        "check",
        "--config",
        dir.path().join("isthmus.yaml").to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("2 routes"), "{}", text(&o));
}

#[test]
fn check_names_bad_keys_files_and_objects() {
    let dir = example_copy();
    let config = dir.path().join("isthmus.yaml");
    let cfg = config.to_str().expect("utf8");

    std::fs::write(
        dir.path().join("manifests/broken.yaml"),
        "kind: Service\napiVersion: v1\nmetadata: {name: x}\nspec: {ports: 3}\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("manifests/badmap.yaml"),
        "apiVersion: isthmus.dev/v1alpha1\nkind: Mapping\nmetadata: {name: m, namespace: test}\nspec: {prefix: x, service: podinfo}\n",
    )
    .expect("write");
    let o = isthmus(&["check", "--config", cfg]);
    assert!(!o.status.success());
    let out = text(&o);
    assert!(
        out.contains("broken.yaml") && out.contains("document 1 (Service x)"),
        "{out}"
    );
    assert!(
        out.contains("badmap.yaml")
            && out.contains("Mapping test/m")
            && out.contains("must start with '/'"),
        "{out}"
    );

    let original = std::fs::read_to_string(&config).expect("read");
    std::fs::write(&config, format!("{original}\nallowed_identites: []\n")).expect("write");
    let o = isthmus(&["check", "--config", cfg]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("unknown field `allowed_identites`"),
        "{}",
        text(&o)
    );
}

#[test]
fn run_fails_loudly_on_unusable_certificates() {
    let dir = example_copy();
    std::fs::write(dir.path().join("certs/gateway.key"), "not a key").expect("write");
    let o = isthmus(&[
        "run",
        "--config",
        dir.path().join("isthmus.yaml").to_str().expect("utf8"),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("gateway.key"), "{}", text(&o));
}

#[test]
fn crds_prints_the_mapping_crd() {
    let o = isthmus(&["crds"]);
    assert!(o.status.success());
    let out = text(&o);
    assert!(out.contains("name: mappings.isthmus.dev"), "{out}");
    assert!(out.contains("allowed_identities"), "{out}");
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let dir = example_copy();
    let config = dir.path().join("isthmus.yaml");
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(
        &config,
        text.replace("127.0.0.1:4143", "127.0.0.1:0")
            .replace("127.0.0.1:4191", "127.0.0.1:0")
            .replace("127.0.0.1:4192", "127.0.0.1:0")
            .replace("127.0.0.1:4140", "127.0.0.1:0"),
    )
    .expect("write");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_isthmus"));
    cmd.args(["run", "--config", config.to_str().expect("utf8")])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    let mut run = Running::spawn(cmd, "run (SIGTERM)");
    let serving = run.wait_line(Stream::Err, "isthmus gateway serving");
    assert!(
        serving,
        "gateway never reported serving:\n{}",
        run.output_so_far()
    );
    run.kill("TERM");
    let drained = run.wait_line(Stream::Err, "drained");
    let out = run.output_so_far();
    let o = run.finish();
    assert!(drained, "no drain log line:\n{out}");
    assert_eq!(
        o.status.code(),
        Some(0),
        "SIGTERM must end in exit code 0:\n{out}"
    );
}

#[test]
fn run_fails_loudly_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = example_copy();
    let config = dir.path().join("isthmus.yaml");
    let original = std::fs::read_to_string(&config).expect("read");
    std::fs::write(
        &config,
        // Admin first: a taken port such as 41919 would otherwise contain "4191".
        original
            .replace("\"127.0.0.1:4191\"", "\"127.0.0.1:0\"")
            .replace("\"127.0.0.1:4192\"", "\"127.0.0.1:0\"")
            .replace("\"127.0.0.1:4140\"", "\"127.0.0.1:0\"")
            .replace("\"127.0.0.1:4143\"", &format!("\"127.0.0.1:{port}\"")),
    )
    .expect("write");
    let o = isthmus(&["run", "--config", config.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("cannot listen on 127.0.0.1:{port} (gateway)")),
        "{}",
        text(&o)
    );
}

/// One request over mTLS with `peer-west`'s certificate; returns the status line.
fn mtls_get(certs: &Path, addr: &str, host: &str) -> String {
    use std::io::{Read, Write};
    use std::sync::Arc;
    let pem = |f: &str| std::fs::read(certs.join(f)).expect("read pem");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &pem("ca.crt")[..]) {
        roots.add(c.expect("ca")).expect("add ca");
    }
    let chain: Vec<_> = rustls_pemfile::certs(&mut &pem("peer-west.crt")[..])
        .map(|c| c.expect("cert"))
        .collect();
    let key = rustls_pemfile::private_key(&mut &pem("peer-west.key")[..])
        .expect("key")
        .expect("a key");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("client cert");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let tcp = std::net::TcpStream::connect(addr).expect("connect");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = Vec::new();
    // The gateway closes after the response (`connection: close`); a missing
    // close_notify is not this test's concern.
    let _ = tls.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.lines().next().unwrap_or_default().to_string()
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    use std::io::{BufRead, BufReader};
    let dir = example_copy();
    let config = dir.path().join("isthmus.yaml");
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(
        &config,
        text.replace("127.0.0.1:4143", "127.0.0.1:0")
            .replace("127.0.0.1:4191", "127.0.0.1:0")
            .replace("127.0.0.1:4192", "127.0.0.1:0")
            .replace("127.0.0.1:4140", "127.0.0.1:0")
            + "log:\n  format: json\n",
    )
    .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(["run", "--config", config.to_str().expect("utf8")])
        .env("RUST_LOG", "info")
        .env_remove("ISTHMUS_LOG_FORMAT")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn isthmus");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr"))
        .lines()
        .map_while(Result::ok);
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let parse = |line: &str| -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(v[key].is_string(), "no {key:?} in {line}");
        }
        assert!(
            v["fields"]["message"].is_string(),
            "no fields.message in {line}"
        );
        v
    };
    let serving = loop {
        let line = lines.next().expect("gateway exited before serving");
        let v = parse(&line);
        seen.push(v.clone());
        if v["fields"]["message"] == "isthmus gateway serving" {
            break v;
        }
    };
    let addr = serving["fields"]["gateway_addr"]
        .as_str()
        .expect("gateway_addr field")
        .to_string();
    let status = mtls_get(&dir.path().join("certs"), &addr, "unknown.example");
    assert!(status.contains("404"), "{status}");
    let access = loop {
        let line = lines.next().expect("gateway exited before the access log");
        let v = parse(&line);
        seen.push(v.clone());
        if v["target"] == "isthmus::access" {
            break v;
        }
    };
    assert_eq!(access["level"], "INFO");
    assert_eq!(access["fields"]["message"], "request");
    assert_eq!(access["fields"]["status"], 404);
    assert_eq!(access["fields"]["authority"], "unknown.example");
    assert_eq!(
        access["fields"]["peer"],
        isthmus::tls::dev::PEER_WEST_IDENTITY
    );
    assert!(access["fields"]["latency_ms"].is_number());
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    for line in lines {
        seen.push(parse(&line));
    }
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    assert!(
        seen.iter().any(|v| v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("drained"))),
        "no drain line among {seen:?}"
    );
}

#[test]
fn log_format_flag_and_env_override_the_config() {
    // An invalid value is refused before anything runs, whichever way it comes.
    let o = isthmus(&["--log-format", "yaml", "crds"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("json or text"), "{}", text(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(["crds"])
        .env("ISTHMUS_LOG_FORMAT", "yaml")
        .output()
        .expect("run isthmus");
    assert!(!o.status.success());
    assert!(text(&o).contains("ISTHMUS_LOG_FORMAT"), "{}", text(&o));
    // `--log-format json` applies to a failing `run` too: the error is a JSON line.
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("none.yaml");
    let o = isthmus(&[
        "run",
        "--log-format",
        "json",
        "--config",
        missing.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let line = stderr.lines().last().expect("an error line");
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON error line");
    assert_eq!(v["level"], "ERROR");
    assert!(
        v["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot read config file")),
        "{line}"
    );
}

#[test]
fn check_reports_every_config_problem_at_once() {
    let dir = example_copy();
    let config = dir.path().join("isthmus.yaml");
    let original = std::fs::read_to_string(&config).expect("read");
    let broken = original
        .replace(
            "cluster_domain: cluster.local",
            "cluster_domain: .cluster.local",
        )
        .replace("\"spiffe://west.example/*\"", "\"spiffe://west.example*\"")
        .replace("files: manifests", "files: no-such-dir")
        + "limits: {max_request_headers: 0, idle_timeout_ms: 0}\n";
    std::fs::write(&config, broken).expect("write");
    let o = isthmus(&["check", "--config", config.to_str().expect("utf8")]);
    assert!(!o.status.success());
    let out = text(&o);
    for want in [
        "cluster_domain",
        "allowed_identities[0]",
        "limits.max_request_headers",
        "limits.idle_timeout_ms",
        "no-such-dir",
    ] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }
}

#[test]
fn check_reports_every_trust_domain_problem_and_refused_claims() {
    let dir = example_copy();
    let config = dir.path().join("isthmus.yaml");
    let original = std::fs::read_to_string(&config).expect("read");
    std::fs::write(dir.path().join("certs/garbage.crt"), "not a certificate\n").expect("write");
    let broken = original.replace(
        "  trust_anchors: certs/ca.crt\n",
        "  trust_domains:\n    - {trust_anchors: certs/missing-ca.crt, identities: [\"spiffe://west.example*\"]}\n    - {trust_anchors: certs/garbage.crt, identities: []}\n",
    );
    assert_ne!(broken, original, "the example names tls.trust_anchors");
    std::fs::write(&config, broken).expect("write");
    // A Mapping in another namespace claiming podinfo's name.
    std::fs::write(
        dir.path().join("manifests/takeover.yaml"),
        "apiVersion: isthmus.dev/v1alpha1\nkind: Mapping\nmetadata: {name: takeover, namespace: evil}\nspec: {hostname: podinfo.test.svc.cluster.local, prefix: /, service: thief:80}\n",
    )
    .expect("write");
    let o = isthmus(&["check", "--config", config.to_str().expect("utf8")]);
    assert!(!o.status.success());
    let out = text(&o);
    for want in [
        "tls.trust_domains[0].identities[0]",
        "tls.trust_domains[1].identities: must list at least one",
        "missing-ca.crt",
        "garbage.crt",
        "takeover.yaml: Mapping evil/takeover: hostname \"podinfo.test.svc.cluster.local\" is the name of Service test/podinfo",
    ] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }

    // Both forms at once are refused too.
    std::fs::write(
        &config,
        original.replace(
            "  trust_anchors: certs/ca.crt\n",
            "  trust_anchors: certs/ca.crt\n  trust_domains: [{trust_anchors: certs/ca.crt, identities: [\"*\"]}]\n",
        ),
    )
    .expect("write");
    let o = isthmus(&["check", "--config", config.to_str().expect("utf8")]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not both"), "{}", text(&o));
}

#[test]
fn check_refuses_what_run_refuses() {
    let dir = example_copy();
    let config = dir.path().join("isthmus.yaml");
    let cfg = config.to_str().expect("utf8");
    // A serving certificate with only an IP SAN: no gateway identity can be
    // derived for loop detection, and the config sets none.
    let ca = isthmus::tls::dev::CertAuthority::new("other ca").expect("ca");
    let leaf = ca
        .issue(&isthmus::tls::dev::LeafSpec {
            ips: vec!["127.0.0.1".parse().expect("ip")],
            ekus: vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
            ..Default::default()
        })
        .expect("leaf");
    std::fs::write(dir.path().join("certs/gateway.crt"), leaf.cert_pem()).expect("write");
    std::fs::write(dir.path().join("certs/gateway.key"), leaf.key_pem()).expect("write");
    let run = isthmus(&["run", "--config", cfg]);
    assert!(!run.status.success(), "{}", text(&run));
    assert!(text(&run).contains("identity"), "{}", text(&run));
    let check = isthmus(&["check", "--config", cfg]);
    assert!(
        !check.status.success(),
        "check passed what run refuses:\n{}",
        text(&check)
    );
    assert!(text(&check).contains("identity"), "{}", text(&check));

    // The same address for both listeners cannot be bound twice.
    let original = std::fs::read_to_string(&config).expect("read");
    std::fs::write(
        &config,
        original.replace("127.0.0.1:4191", "127.0.0.1:4143")
            + "identity: spiffe://east.example/gw\n",
    )
    .expect("write");
    let check = isthmus(&["check", "--config", cfg]);
    assert!(!check.status.success(), "{}", text(&check));
    assert!(text(&check).contains("listen.admin"), "{}", text(&check));
}

#[test]
fn a_process_that_hangs_is_killed_and_fails_with_its_output() {
    // `run` serves until signalled: with a short budget the harness must kill
    // it and fail, showing what it printed, instead of waiting forever.
    let dir = example_copy();
    let config = dir.path().join("isthmus.yaml");
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(
        &config,
        text.replace("127.0.0.1:4143", "127.0.0.1:0")
            .replace("127.0.0.1:4191", "127.0.0.1:0"),
    )
    .expect("write");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_isthmus"));
    cmd.args(["run", "--config", config.to_str().expect("utf8")])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    let started = Instant::now();
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let mut run = Running::spawn_within(cmd, "run (hangs)", Duration::from_secs(3));
        run.wait_line(Stream::Err, "a line the gateway never prints")
    }))
    .expect_err("a hung process must fail the test");
    let msg = failed.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("killed"), "{msg}");
    assert!(
        msg.contains("isthmus gateway serving"),
        "output shown: {msg}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}
