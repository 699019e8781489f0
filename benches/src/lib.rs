//! Shared pieces of the benchmarks (see `src/bin/`): the gateway as its own
//! process, its memory from `/proc`, and where results are written.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The release gateway running as a child process; stopped with SIGTERM (so
/// `MIMALLOC_SHOW_STATS=1` can print at exit), then killed if it lingers.
pub struct GatewayProcess(pub Child);

impl GatewayProcess {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:`, ...); 0 if absent.
    pub fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    /// CPU time the process has used so far (user + system), in ms: on a
    /// shared 2-core machine a steadier measure of work than wall time.
    pub fn cpu_ms(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields of the line, in clock ticks (100 per second).
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let ticks: u64 = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|f| f.parse::<u64>().ok())
            .sum();
        ticks as f64 * 10.0
    }

    /// Resident memory now, in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.status_kib("VmRSS:") as f64 / 1024.0
    }

    /// Waits until the admin port answers `/ready` with 200; panics after `within`.
    pub async fn wait_ready(&self, admin: SocketAddr, within: Duration) {
        let started = Instant::now();
        while tokio::net::TcpStream::connect(admin).await.is_err()
            || isthmus_tests::client::plain_get(admin, "/ready").await.0 != 200
        {
            assert!(
                started.elapsed() < within,
                "gateway not ready after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Prints a report and writes it as `name`: into `benches/results/` when
/// `recorded` (only the documented full-size runs replace recorded results),
/// else into `scratch`.
pub fn write_report(report: &serde_json::Value, name: &str, recorded: bool, scratch: &Path) {
    let text = serde_json::to_string_pretty(report).expect("json");
    println!("{text}");
    let out = if recorded {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("results")
            .join(name)
    } else {
        scratch.join(name)
    };
    std::fs::write(&out, text + "\n").expect("write results");
    eprintln!("wrote {}", out.display());
}
