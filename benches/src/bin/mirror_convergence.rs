//! Mirror convergence benchmark: `isthmus mirror` (the release binary, its own
//! process, so its RSS is its own) linked to an east API double holding N
//! exported Services; time from a remote change to the mirror written in the
//! west API double, and the controller's memory.
//!
//! Each probe changes one remote Service's port in east and polls west's store
//! until the mirror carries the new port. The remote gateway's probe target is
//! a demo upstream answering 200, so the mirrors are ready.
//!
//! `cargo run --release -p isthmus-benches --bin mirror_convergence -- [services] [probes]`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isthmus::mirror::link::{Link, LinkSpec, ProbeSpec};
use isthmus_benches::{write_report, GatewayProcess};
use isthmus_tests::apiserver::ApiServer;
use isthmus_tests::manifests::{service, slice, typed};
use isthmus_tests::Upstream;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn port_of(api: &ApiServer, name: &str) -> Option<i32> {
    api.get::<Service>("bench", name)?
        .spec?
        .ports?
        .first()
        .map(|p| p.port)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let services: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5_000);
    let probes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let isthmus = root.join("target/release/isthmus");
    let work = tempfile::tempdir().expect("tempdir");
    let east = ApiServer::start().await;
    let west = ApiServer::start().await;
    let gw = Upstream::start("gateway").await;
    let svcs: Vec<Service> = (0..services)
        .map(|i| typed(&service("bench", &format!("svc-{i}"), true, 80)))
        .collect();
    let slices: Vec<EndpointSlice> = (0..services)
        .map(|i| {
            typed(&slice(
                "bench",
                &format!("svc-{i}-1"),
                &format!("svc-{i}"),
                gw.addr,
                true,
            ))
        })
        .collect();
    east.apply_all(&svcs);
    east.apply_all(&slices);
    west.apply_json(
        "secrets",
        serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "creds", "namespace": "isthmus"},
            "type": "mirror.linkerd.io/remote-kubeconfig",
            "stringData": {"kubeconfig": east.kubeconfig_yaml()}}),
    );
    let mut link = Link::new(
        "east",
        LinkSpec {
            target_cluster_name: "east".into(),
            cluster_credentials_secret: "creds".into(),
            gateway_address: "127.0.0.1".into(),
            gateway_port: "4143".into(),
            gateway_identity: "gw.east".into(),
            probe_spec: ProbeSpec {
                port: Some(gw.port().to_string()),
                period: Some("1s".into()),
                ..ProbeSpec::default()
            },
            ..LinkSpec::default()
        },
    );
    link.metadata.namespace = Some("isthmus".into());
    west.apply(&link);
    std::fs::write(work.path().join("west.kubeconfig"), west.kubeconfig_yaml()).expect("write");

    let started = Instant::now();
    let child = Command::new(&isthmus)
        .args(["mirror", "--namespace", "isthmus", "--identity", "bench"])
        .arg("--kubeconfig")
        .arg(work.path().join("west.kubeconfig"))
        .args(["--admin", "127.0.0.1:15291"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build --release)", isthmus.display()));
    let controller = GatewayProcess(child);
    let last = format!("svc-{}-east", services - 1);
    while west.count::<EndpointSlice>() < services || port_of(&west, &last).is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "initial mirroring did not finish: {} of {services}",
            west.count::<EndpointSlice>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sync = started.elapsed();
    let rss_synced = controller.status_kib("VmRSS:");
    eprintln!("{services} services mirrored in {sync:?}");

    let mut samples = Vec::with_capacity(probes);
    for i in 0..probes {
        let k = (i * 7919) % services;
        let port = 1000 + i as u16;
        let t0 = Instant::now();
        east.apply(&typed::<Service>(&service(
            "bench",
            &format!("svc-{k}"),
            true,
            port,
        )));
        let mirror = format!("svc-{k}-east");
        while port_of(&west, &mirror) != Some(i32::from(port)) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{mirror} never updated"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    let report = serde_json::json!({
        "services": services,
        "probes": probes,
        "initial_mirror_ms": sync.as_secs_f64() * 1000.0,
        "change_to_mirror_ms": {
            "p50": percentile(&samples, 0.5),
            "p99": percentile(&samples, 0.99),
            "max": samples.last().copied().unwrap_or(0.0),
        },
        "controller_rss_mib": {
            "after_sync": rss_synced as f64 / 1024.0,
            "after_probes": controller.status_kib("VmRSS:") as f64 / 1024.0,
            "peak": controller.status_kib("VmHWM:") as f64 / 1024.0,
        },
    });
    write_report(
        &report,
        "mirror_convergence.json",
        services == 5_000 && probes == 200,
        work.path(),
    );
}
