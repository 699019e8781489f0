//! Discovery: sources of Kubernetes objects feed the pure [`Index`], which
//! builds route tables that a [`Publisher`] swaps in for the proxy.
//!
//! ```text
//! source (kube watches | directory of manifests) → Object
//!   → Index (pure) → RouteTable → ArcSwap publish → proxy
//! ```

pub mod crd;
pub mod files;
pub mod index;
pub mod kube;
pub mod status;

use std::sync::Arc;
use std::time::Instant;

pub use index::{Index, IndexConfig, Object, ObjectError, ObjectKey};
pub use status::{DiscoveryStatus, ObjectCounts};

use crate::admin::recent::RecentErrors;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::routes::{BackendSettings, SharedRoutes};

/// Publishes freshly built tables and keeps the table-size metrics current,
/// and what the admin page shows of discovery ([`DiscoveryStatus`], and
/// discovery errors among the [`RecentErrors`]).
#[derive(Clone)]
pub struct Publisher {
    routes: SharedRoutes,
    metrics: Arc<Metrics>,
    status: Arc<DiscoveryStatus>,
    recent: Arc<RecentErrors>,
}

impl Publisher {
    /// A publisher writing into `routes`.
    pub fn new(routes: SharedRoutes, metrics: Arc<Metrics>) -> Self {
        Publisher {
            routes,
            metrics,
            status: Arc::new(DiscoveryStatus::new("unknown")),
            recent: Arc::default(),
        }
    }

    /// The same publisher, recording into `status` and `recent`.
    pub fn observed(mut self, status: Arc<DiscoveryStatus>, recent: Arc<RecentErrors>) -> Self {
        self.status = status;
        self.recent = recent;
        self
    }

    /// Records a source failure (a failed watch, an unreadable folder or
    /// file) for the admin page; `reason` is the metric-style label.
    pub fn source_error(&self, reason: &'static str, message: String) {
        if self.status.error(&message) {
            self.recent.discovery(reason, message);
        }
    }

    /// Builds the index's table and swaps it in; `changed_at` is when the source
    /// change was first seen, for the publish-delay histogram.
    pub fn publish(&self, index: &mut Index, changed_at: Instant) {
        let table = index.build();
        let gauge = |kind: &str, n: usize| {
            self.metrics
                .table_size
                .with_label_values(&[kind])
                .set(i64::try_from(n).unwrap_or(i64::MAX))
        };
        gauge("routes", table.route_count());
        gauge("services", table.service_count());
        gauge("endpoints", table.endpoint_count());
        // The old table is usually freed right here (no request holds it).
        self.routes.store(Arc::new(table));
        self.status.published(index.object_counts());
        crate::memory::release_freed();
        self.metrics
            .publish_delay
            .observe(changed_at.elapsed().as_secs_f64());
    }

    /// Counts and logs a refused object.
    pub fn report(&self, error: &ObjectError, origin: Option<&str>) {
        let kind = match error.kind {
            "Service" => "service",
            "EndpointSlice" => "endpointslice",
            _ => "mapping",
        };
        self.metrics
            .discovery_errors
            .with_label_values(&[kind])
            .inc();
        match origin {
            Some(file) => tracing::warn!(file, %error, "object refused; other routes unaffected"),
            None => tracing::warn!(%error, "object refused; other routes unaffected"),
        }
        let message = match origin {
            Some(file) => format!("{error} (in {file})"),
            None => error.to_string(),
        };
        let reason = match kind {
            "service" => "service_refused",
            "endpointslice" => "endpointslice_refused",
            _ => "mapping_refused",
        };
        self.source_error(reason, message);
    }
}

/// The index configuration derived from the gateway config.
pub fn index_config(cfg: &Config) -> IndexConfig {
    let ms = std::time::Duration::from_millis;
    IndexConfig {
        cluster_domain: cfg.cluster_domain.clone(),
        export_label: cfg.export_label.clone(),
        namespaces: cfg.namespaces.clone(),
        allowed: cfg.identity_patterns().into(),
        defaults: BackendSettings::with_timeouts(
            ms(cfg.upstream.timeout_ms),
            ms(cfg.upstream.connect_timeout_ms),
            ms(cfg.upstream.idle_timeout_ms),
        ),
    }
}
