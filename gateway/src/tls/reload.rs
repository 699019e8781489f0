//! Certificate, key and trust-anchor rotation: the files are checked on an
//! interval; changed material is loaded and checked in full before it replaces
//! the current one for new handshakes. Existing connections keep what they
//! negotiated. A bad new file is refused with a log line and a metric, and the
//! previous material stays in force.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{TlsMaterial, TlsServer};
use crate::config::Tls as TlsConfig;
use crate::metrics::Metrics;
use crate::poll::{Stamp, Ticker};

/// The stamps of every file the material is read from: certificate, key, the
/// legacy bundle and each trust domain's bundle.
fn stamps(cfg: &TlsConfig) -> Vec<Option<Stamp>> {
    [&cfg.cert, &cfg.key]
        .into_iter()
        .chain(cfg.trust_anchors.as_ref())
        .chain(cfg.trust_domains.iter().map(|d| &d.trust_anchors))
        .map(|p| Stamp::of_path(p))
        .collect()
}

/// Watches the TLS files until `shutdown` flips.
pub async fn watch_files(
    cfg: TlsConfig,
    server: TlsServer,
    metrics: Arc<Metrics>,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let mut last = stamps(&cfg);
    let mut ticker = Ticker::new(interval, shutdown);
    while ticker.tick().await {
        let now = stamps(&cfg);
        if now == last {
            continue;
        }
        last = now;
        match TlsMaterial::load(&cfg) {
            Ok(material) => {
                material.record_expiry(&metrics);
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
