//! The admin page in a real browser: headless Chromium driven by selenium
//! (`tests/support/browser.py`) against an in-process gateway with routes,
//! a peer that made requests, a dead remote gateway (a mirror Service
//! whose EndpointSlice has no ready endpoint) beside a live one, and a
//! broken manifest file. Asserts each section's DOM
//! and the Explain form's answers, checks the page fits a phone screen, and
//! writes `docs/screenshots/admin-page.png`.
//!
//! Needs `chromium`, `chromium-driver` (Debian) and Python `selenium`
//! (`.ci/setup` installs them). Without them the test is skipped with a
//! message, except under `CI=true`, where it fails.

use std::path::PathBuf;
use std::time::Duration;

use isthmus_tests::{manifests, workspace_path, Harness, Upstream};

const HOST: &str = "podinfo.test.svc.cluster.local:9898";
const WEST: &str = "spiffe://west.example/ns/default/sa/peer";

/// A mirror Service `<name>` of remote cluster `cluster`, as the mirror
/// controller writes it, with one gateway endpoint `gateway` ready or not.
fn mirror(name: &str, cluster: &str, gateway: &str, ready: bool) -> String {
    let labels = format!(
        "    mirror.linkerd.io/mirrored-service: \"true\"\n    mirror.linkerd.io/cluster-name: {cluster}\n"
    );
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: test\n  labels:\n{labels}  annotations:\n    mirror.linkerd.io/remote-svc-fq-name: podinfo.test.svc.cluster.local\nspec:\n  ports:\n    - name: http\n      port: 9898\n      targetPort: http\n---\n{}",
        manifests::slice(
            "test",
            &format!("{name}-1"),
            name,
            gateway.parse().expect("addr"),
            ready,
        )
        .replace(
            &format!("    kubernetes.io/service-name: {name}\n"),
            &format!("    kubernetes.io/service-name: {name}\n{labels}"),
        )
    )
}

/// Chromium, chromedriver and python3 with selenium, or why not.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let find = |names: &[&str]| {
        names.iter().find_map(|n| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join(n))
                    .find(|p| p.is_file())
            })
        })
    };
    let chromium = find(&["chromium", "chromium-browser", "google-chrome"])
        .ok_or("no chromium on PATH (apt-get install chromium)")?;
    let driver = find(&["chromedriver"])
        .ok_or("no chromedriver on PATH (apt-get install chromium-driver)")?;
    let selenium = std::process::Command::new("python3")
        .args(["-c", "import selenium"])
        .status()
        .map_err(|e| format!("no python3: {e}"))?;
    if !selenium.success() {
        return Err("python3 has no selenium (python3 -m pip install selenium)".into());
    }
    Ok((chromium, driver))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_in_a_real_browser() {
    let (chromium, driver) = match browser() {
        Ok(b) => b,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true and the browser test cannot run: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED admin_page_in_a_real_browser: {why}");
            return;
        }
    };
    let up = Upstream::start("podinfo").await;
    let h = Harness::start(&[
        (
            "podinfo.yaml",
            manifests::exported_service("test", "podinfo", 9898, up.addr),
        ),
        (
            "www.yaml",
            manifests::mapping(
                "test",
                "www",
                "    hostname: www.example.test\n    prefix: /shop/\n    service: podinfo.test:9898\n",
            ),
        ),
        ("secret.yaml", manifests::service("test", "secret", false, 80)),
        (
            "mirror-east.yaml",
            mirror("podinfo-east", "east", "192.0.2.10:4143", false),
        ),
        (
            "mirror-north.yaml",
            mirror("podinfo-north", "north", "192.0.2.20:4143", true),
        ),
    ])
    .await;

    // A peer that made requests: three served, one refused (unknown host).
    let west = h.client("peer-west");
    for _ in 0..3 {
        assert_eq!(west.status(HOST, "/").await, 200);
    }
    assert_eq!(west.status("nothing.example.test", "/").await, 404);
    h.wait_metric("isthmus_request_errors_total{reason=\"no_route\"}", 1.0)
        .await;

    // A discovery error: a manifest that is not YAML.
    h.write_manifest("broken.yaml", "kind: [unclosed\n");
    isthmus_tests::eventually("the broken manifest is reported", || async {
        let (_, body) = h.admin_get("/status.json").await;
        serde_json::from_str::<serde_json::Value>(&body)
            .is_ok_and(|s| s["discovery"]["errors"].as_u64() >= Some(1))
    })
    .await;

    let (status, html) = h.admin_get("/").await;
    assert_eq!(status, 200);
    assert!(html.len() < 48 * 1024, "page is {} bytes", html.len());

    let shot = workspace_path("docs/screenshots/admin-page.png");
    std::fs::create_dir_all(shot.parent().expect("folder")).expect("screenshot folder");
    let job = serde_json::json!({
        "explain": [
            {"host": HOST, "path": "/", "method": "GET", "identity": WEST, "want": "proxy"},
            {"host": HOST, "path": "/", "method": "GET", "identity": "spiffe://east.example/ns/default/sa/peer", "want": "403"},
            {"host": "secret.test.svc.cluster.local:80", "path": "/", "method": "GET", "identity": WEST, "want": "404"},
        ],
        "filter": "www.example",
        "phone_screenshot": std::env::temp_dir().join("isthmus-admin-page-phone.png"),
    });
    let url = format!("http://{}/", h.gateway.admin_addr);
    let run = tokio::process::Command::new("python3")
        .arg(workspace_path("tests/support/browser.py"))
        .arg(&url)
        .arg(&shot)
        .arg(&chromium)
        .arg(&driver)
        .arg(job.to_string())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("browser run within 120 s")
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "browser.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    });
    let section = |id: &str| {
        seen["sections"][id]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    eprintln!("{:#}", seen);

    assert_eq!(seen["title"], "Isthmus gateway");
    assert!(seen["header"].as_str().is_some_and(|t| t.contains("ready")));

    let routes = section("routes");
    for want in [
        "podinfo.test.svc.cluster.local:9898",
        "Service test/podinfo",
        "test/podinfo:9898",
        "1/1 ready",
        "www.example.test",
        "prefix /shop/",
        "Mapping test/www",
    ] {
        assert!(routes.contains(want), "routes lack {want:?}:\n{routes}");
    }

    let peers = section("peers");
    assert!(peers.contains(WEST), "peers:\n{peers}");
    // 4 requests, 1 error, seen just now.
    assert!(
        peers.contains('4') && peers.contains("s ago"),
        "peers:\n{peers}"
    );

    let remotes = section("remotes");
    for want in [
        "east",
        "dead",
        "n/a",
        "none ready",
        "north",
        "alive",
        "192.0.2.20",
    ] {
        assert!(
            remotes.contains(want),
            "remote gateways lack {want:?}:\n{remotes}"
        );
    }

    let discovery = section("discovery");
    for want in [
        "files",
        "synced",
        "4 Services",
        "3 EndpointSlices",
        "1 Mapping",
        "broken.yaml",
    ] {
        assert!(
            discovery.contains(want),
            "discovery lacks {want:?}:\n{discovery}"
        );
    }

    let tls = section("tls");
    for want in [
        "Serving certificate",
        "Trust anchors (1)",
        "SANs",
        "not after",
        "days left",
    ] {
        assert!(tls.contains(want), "TLS lacks {want:?}:\n{tls}");
    }

    let errors = section("errors");
    assert!(
        errors.contains("404 no_route") && errors.contains("nothing.example.test"),
        "recent errors:\n{errors}"
    );
    assert!(
        errors.contains("discovery") && errors.contains("broken.yaml"),
        "recent errors:\n{errors}"
    );

    let explained = seen["explain"].as_array().expect("explain answers");
    let served = explained[0]["text"].as_str().unwrap_or_default();
    for want in [
        "proxied",
        "Service test/podinfo",
        "exact host and port",
        "allowed by spiffe://west.example/*",
        &format!("next {}", up.addr),
    ] {
        assert!(served.contains(want), "explain lacks {want:?}:\n{served}");
    }
    let denied = explained[1]["text"].as_str().unwrap_or_default();
    assert!(
        denied.contains("403 not authorized") && denied.contains("spiffe://west.example/*"),
        "explain (east):\n{denied}"
    );
    let hidden = explained[2]["text"].as_str().unwrap_or_default();
    assert!(
        hidden.contains("404 not exported") && hidden.contains("Service test/secret"),
        "explain (secret):\n{hidden}"
    );

    let filtered = seen["filtered_routes"].as_str().unwrap_or_default();
    assert!(
        filtered.contains("www.example.test") && !filtered.contains("podinfo.test.svc"),
        "filtered routes:\n{filtered}"
    );

    let phone = &seen["phone"];
    assert!(
        phone["scroll"].as_i64() <= phone["inner"].as_i64().map(|w| w + 1),
        "the page is wider than a phone screen: {phone}"
    );
    assert!(seen["refreshed"].as_i64().is_some_and(|n| n >= 1));
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
}
