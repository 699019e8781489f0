//! Certificate, key and trust-anchor rotation: the files are checked on an
//! interval; changed material is loaded and checked in full before it replaces
//! the current one for new handshakes. Existing connections keep what they
//! negotiated. A bad new file is refused with a log line and a metric, and the
//! previous material stays in force.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::{TlsMaterial, TlsServer};
use crate::config::Tls as TlsConfig;
use crate::metrics::Metrics;

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    // Follows symlinks: Kubernetes Secret volumes swap a `..data` link.
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn stamps(cfg: &TlsConfig) -> [Stamp; 3] {
    [stamp(&cfg.cert), stamp(&cfg.key), stamp(&cfg.trust_anchors)]
}

/// Watches the TLS files until `shutdown` flips.
pub async fn watch_files(
    cfg: TlsConfig,
    server: TlsServer,
    metrics: Arc<Metrics>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = stamps(&cfg);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = stamps(&cfg);
        if now == last {
            continue;
        }
        last = now;
        match TlsMaterial::load(&cfg) {
            Ok(material) => {
                server.replace(material);
                metrics.tls_reloads.with_label_values(&["ok"]).inc();
                tracing::info!("TLS certificate, key and trust anchors reloaded");
            }
            Err(e) => {
                metrics.tls_reloads.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "new TLS material refused; the previous certificate, key and trust anchors stay in force");
            }
        }
    }
}
