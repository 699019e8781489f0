//! Convergence benchmark: time from an API event to the route being served,
//! with N Services and 3N endpoints loaded through the API-server double
//! (10,000 and 100,000 by default, one fresh gateway each), the initial sync
//! time, and the gateway's resident memory at that size.
//!
//! The gateway runs as its own process (the release binary) so its RSS is its
//! own; the API double and the probing client run here. Every probe applies an
//! EndpointSlice for a Service that had none (503) and polls one keep-alive
//! HTTP/2 mTLS connection until the route answers 200.
//!
//! `cargo run --release -p isthmus-benches --bin convergence -- [sizes] [probes]`
//!
//! `sizes` is a comma-separated list of Service counts (default
//! `10000,100000`); each writes `convergence-<size>.json` (`10k`, `100k`),
//! into `benches/results/` when it is a recorded size run with 200 probes.
//! The initial sync is reported as wall time and as the gateway's own CPU
//! time until `/ready` (`initial_sync_gateway_cpu_ms`, steadier on a shared
//! machine). After the probes, a burst of 100 EndpointSlice changes is applied back to
//! back and timed until its last Service answers (coalesced publishes).
//!
//! `CONVERGENCE_EGRESS=off` runs the gateway without its egress listener
//! (and so without the egress table); results then go to
//! `convergence-<size>-no-egress.json`.
//!
//! `CONVERGENCE_SMAPS=1` prints the gateway's memory split after sync;
//! `CONVERGENCE_WRAP="heaptrack -o /tmp/gw"` runs it under a profiler
//! (`CONVERGENCE_READY_SECS` waits longer than 120 s for its sync) and
//! `CONVERGENCE_GATEWAY` picks another binary (heap profiles need one built
//! with `--no-default-features`, i.e. without mimalloc).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isthmus_benches::{write_report, GatewayProcess};
use isthmus_tests::apiserver::ApiServer as Api;
use isthmus_tests::manifests::{service, slice, slice_many, typed};
use isthmus_tests::{Alpn, Client, Upstream};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// How a size is named in file names: `10k`, `100k`, else the number.
fn size_label(services: usize) -> String {
    if services >= 1000 && services.is_multiple_of(1000) {
        format!("{}k", services / 1000)
    } else {
        services.to_string()
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let sizes: Vec<usize> = match args.next() {
        Some(a) => a
            .split(',')
            .map(|n| {
                n.parse()
                    .unwrap_or_else(|_| panic!("size {n:?} is not a number"))
            })
            .collect(),
        None => vec![10_000, 100_000],
    };
    let probes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    for services in sizes {
        let work = tempfile::tempdir().expect("tempdir");
        let report = run(services, probes, work.path()).await;
        let recorded = matches!(services, 10_000 | 100_000) && probes == 200;
        let suffix = match std::env::var("CONVERGENCE_EGRESS").as_deref() {
            Ok("off") => "-no-egress",
            _ => "",
        };
        let name = format!("convergence-{}{suffix}.json", size_label(services));
        write_report(&report, &name, recorded, work.path());
    }
}

/// Applies one EndpointSlice for each of `count` burst Services, one API
/// event each as fast as the double takes them, and returns the time until
/// the last of them answers 200; `None` if one was not served within 30 s.
async fn burst(
    api: &Api,
    session: &mut isthmus_tests::client::H2Session,
    up: std::net::SocketAddr,
    count: usize,
) -> Option<f64> {
    let t0 = Instant::now();
    for i in 0..count {
        api.apply(&typed::<EndpointSlice>(&slice(
            "burst",
            &format!("b-{i}-1"),
            &format!("b-{i}"),
            up,
            true,
        )));
    }
    for i in 0..count {
        let host = format!("b-{i}.burst.svc.cluster.local");
        while session.status(&host, "/").await.ok() != Some(200) {
            if t0.elapsed() > Duration::from_secs(30) {
                eprintln!("{host} was not served within 30 s of the burst");
                return None;
            }
        }
    }
    Some(t0.elapsed().as_secs_f64() * 1000.0)
}

/// Services in the burst.
const BURST: usize = 100;

async fn run(services: usize, probes: usize, work: &std::path::Path) -> serde_json::Value {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let isthmus = std::env::var_os("CONVERGENCE_GATEWAY")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/isthmus"));
    let certs = work.join("certs");
    isthmus::tls::dev::write_dev_certs(&certs).expect("certs");
    let api = Api::start().await;
    let up = Upstream::start("probe").await;
    let started = Instant::now();
    let svcs: Vec<Service> = (0..services)
        .map(|i| typed(&service("bench", &format!("svc-{i}"), true, 80)))
        .collect();
    let slices: Vec<EndpointSlice> = (0..services)
        .map(|i| {
            let ip =
                |k: usize| format!("127.{}.{}.{}", 1 + k / 65536 % 200, k / 256 % 256, k % 256);
            let eps: Vec<String> = (0..3).map(|j| ip(i * 3 + j)).collect();
            let eps: Vec<(&str, bool)> = eps.iter().map(|e| (e.as_str(), true)).collect();
            typed(&slice_many(
                "bench",
                &format!("svc-{i}-1"),
                &format!("svc-{i}"),
                8080,
                &eps,
            ))
        })
        .collect();
    api.apply_all(&svcs);
    api.apply_all(&slices);
    for i in 0..probes {
        api.apply(&typed::<Service>(&service(
            "probe",
            &format!("p-{i}"),
            true,
            80,
        )));
    }
    let burst_services: Vec<Service> = (0..BURST)
        .map(|i| typed(&service("burst", &format!("b-{i}"), true, 80)))
        .collect();
    api.apply_all(&burst_services);
    eprintln!(
        "loaded {} services, {} endpoints, {probes} probe services into the API double in {:?}",
        services,
        services * 3,
        started.elapsed()
    );

    std::fs::write(work.join("kubeconfig"), api.kubeconfig_yaml()).expect("kubeconfig");
    // CONVERGENCE_EGRESS=off runs without the egress listener (and its table).
    let egress_on = std::env::var("CONVERGENCE_EGRESS").map_or(true, |v| v != "off");
    let egress = if egress_on {
        "\"127.0.0.1:15140\""
    } else {
        "null"
    };
    std::fs::write(
        work.join("isthmus.yaml"),
        "listen: {gateway: \"127.0.0.1:15143\", admin: \"127.0.0.1:15191\", probe: \"127.0.0.1:15192\", egress: EGRESS}\n\
         tls: {cert: certs/gateway.crt, key: certs/gateway.key, trust_anchors: certs/ca.crt}\n\
         allowed_identities: [\"*\"]\n\
         discovery: {kubernetes: {kubeconfig: kubeconfig}}\n"
            .replace("EGRESS", egress),
    )
    .expect("config");
    let sync_start = Instant::now();
    // CONVERGENCE_WRAP="heaptrack -o /tmp/gw" runs the gateway under a profiler.
    let wrap = std::env::var("CONVERGENCE_WRAP").unwrap_or_default();
    let mut wrap = wrap.split_whitespace();
    let mut command = match wrap.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(wrap).arg(&isthmus);
            c
        }
        None => Command::new(&isthmus),
    };
    let child = command
        .args(["run", "--config"])
        .arg(work.join("isthmus.yaml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (build it with cargo build --release)",
                isthmus.display()
            )
        });
    let gateway = GatewayProcess(child);
    let pid = gateway.pid();
    let admin: std::net::SocketAddr = "127.0.0.1:15191".parse().expect("addr");
    // Under a profiler the sync takes longer: CONVERGENCE_READY_SECS waits more.
    let ready_within = std::env::var("CONVERGENCE_READY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    gateway
        .wait_ready(admin, Duration::from_secs(ready_within))
        .await;
    let sync = sync_start.elapsed();
    let rss_synced = gateway.status_kib("VmRSS:");
    let sync_cpu_ms = gateway.cpu_ms();
    if std::env::var_os("CONVERGENCE_SMAPS").is_some() {
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        eprintln!("threads: {}", gateway.status_kib("Threads:"));
        eprintln!(
            "{}",
            rollup
                .lines()
                .filter(|l| l.starts_with("Rss")
                    || l.starts_with("Anonymous")
                    || l.starts_with("Pss_File"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    let client = Client::new(
        "127.0.0.1:15143".parse().expect("addr"),
        &certs,
        Some("peer-west"),
        Alpn::Http2,
    );
    let mut session = client.h2_session().await.expect("h2 connection");
    let bulk = format!("svc-{}.bench.svc.cluster.local", services / 2);
    assert_eq!(
        session.status(&bulk, "/").await.ok(),
        Some(502),
        "bulk routes exist (endpoints are not listening)"
    );
    let mut samples = Vec::with_capacity(probes);
    for i in 0..probes {
        let host = format!("p-{i}.probe.svc.cluster.local");
        assert_eq!(
            session.status(&host, "/").await.ok(),
            Some(503),
            "{host} has no endpoints yet"
        );
        let t0 = Instant::now();
        api.apply(&typed::<EndpointSlice>(&slice(
            "probe",
            &format!("p-{i}-1"),
            &format!("p-{i}"),
            up.addr,
            true,
        )));
        loop {
            if session.status(&host, "/").await.ok() == Some(200) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{host} never became routable"
            );
        }
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    let burst_ms = burst(&api, &mut session, up.addr, BURST).await;
    let rss = gateway.status_kib("VmRSS:");
    let hwm = gateway.status_kib("VmHWM:");
    serde_json::json!({
        "services": services + probes + BURST,
        "endpoints": services * 3 + probes + BURST,
        "probes": probes,
        "egress": egress_on,
        "initial_sync_ms": sync.as_secs_f64() * 1000.0,
        "initial_sync_gateway_cpu_ms": sync_cpu_ms,
        "event_to_served_ms": {
            "p50": percentile(&samples, 0.5),
            "p99": percentile(&samples, 0.99),
            "max": samples.last().copied().unwrap_or(0.0),
        },
        "burst": {"changes": BURST, "all_served_ms": burst_ms},
        "gateway_rss_mib": {
            "after_sync": rss_synced as f64 / 1024.0,
            "after_probes": rss as f64 / 1024.0,
            "peak": hwm as f64 / 1024.0,
        },
    })
}
