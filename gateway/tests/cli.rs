//! The `isthmus` binary itself: `certs dev`, `check`, `crds`, `--help`,
//! `--version`, and start-up failures that must be loud.

use std::path::Path;
use std::process::{Command, Output};

fn isthmus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run isthmus")
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
    use std::io::{BufRead, BufReader};
    let dir = example_copy();
    let config = dir.path().join("isthmus.yaml");
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(
        &config,
        text.replace("127.0.0.1:4143", "127.0.0.1:0")
            .replace("127.0.0.1:4191", "127.0.0.1:0")
            .replace("127.0.0.1:4192", "127.0.0.1:0"),
    )
    .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(["run", "--config", config.to_str().expect("utf8")])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn isthmus");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("isthmus gateway serving"));
    assert!(serving, "gateway never reported serving");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let drained = lines.map_while(Result::ok).any(|l| l.contains("drained"));
    let status = child.wait().expect("wait");
    assert!(drained, "no drain log line");
    assert_eq!(status.code(), Some(0), "SIGTERM must end in exit code 0");
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
        original
            .replace("127.0.0.1:4143", &format!("127.0.0.1:{port}"))
            .replace("127.0.0.1:4191", "127.0.0.1:0")
            .replace("127.0.0.1:4192", "127.0.0.1:0"),
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
