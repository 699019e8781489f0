//! Discovery: sources of Kubernetes objects feed the pure [`Index`], which
//! builds route tables that a [`Publisher`] swaps in for the proxy.
//!
//! ```text
//! source (kube watches | directory of manifests) → Object
//!   → Index (pure) → RouteTable → ArcSwap publish → proxy
//! ```

pub mod crd;
pub mod files;
pub mod httproute;
pub mod index;
pub mod kube;
mod lenient;
pub mod status;
pub mod trafficsplit;

use std::sync::Arc;
use std::time::Instant;

pub use index::{Index, IndexConfig, Object, ObjectError, ObjectKey};
pub use status::{DiscoveryStatus, ObjectCounts};

use crate::admin::recent::RecentErrors;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::routes::{BackendSettings, SharedRoutes};

/// Where routes come from, for the `source` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A directory of manifests.
    Files,
    /// Kubernetes API watches.
    Kubernetes,
}

impl Source {
    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Source::Files => "files",
            Source::Kubernetes => "kubernetes",
        }
    }
}

/// Publishes freshly built tables and keeps the table metrics current (and
/// what the admin page shows of discovery: [`DiscoveryStatus`], and discovery
/// errors among the [`RecentErrors`]):
/// sizes, `isthmus_table_generation`, and the source's
/// `isthmus_discovery_last_sync_timestamp_seconds`.
#[derive(Clone)]
pub struct Publisher {
    routes: SharedRoutes,
    egress: Option<SharedRoutes>,
    metrics: Arc<Metrics>,
    source: Source,
    status: Arc<DiscoveryStatus>,
    recent: Arc<RecentErrors>,
}

impl Publisher {
    /// A publisher writing into `routes`, for tables built from `source`.
    pub fn new(routes: SharedRoutes, metrics: Arc<Metrics>, source: Source) -> Self {
        Publisher {
            routes,
            egress: None,
            metrics,
            source,
            status: Arc::new(DiscoveryStatus::new(source.label())),
            recent: Arc::default(),
        }
    }

    /// Also publishes the egress table into `egress`.
    pub fn with_egress(mut self, egress: SharedRoutes) -> Self {
        self.egress = Some(egress);
        self
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

    /// Notes a successful contact with the source that changed nothing (a
    /// rescan of an unchanged directory, an API server round trip): the source
    /// is known to be current as of now.
    pub fn synced(&self) {
        self.metrics
            .discovery_last_sync
            .with_label_values(&[self.source.label()])
            .set(crate::metrics::unix_now());
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
        // Series of routes that are gone would stay forever: drop them.
        let gone = index.take_gone_routes();
        self.metrics.forget_routes(gone.iter().map(|n| &**n));
        // The old table shares its hosts with the new one; what only it
        // held is usually freed right here (no request holds it).
        self.routes.store(Arc::new(table));
        if let (Some(shared), Some(egress)) = (&self.egress, index.take_egress()) {
            shared.store(Arc::new(egress));
        }
        for problem in index.take_split_problems() {
            self.report(&problem, None);
        }
        for refused in index.take_mapping_refusals() {
            self.report(&refused, None);
        }
        self.metrics.table_generation.inc();
        self.synced();
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
            "TrafficSplit" => "trafficsplit",
            "HTTPRoute" => "httproute",
            "Gateway" => "gateway",
            "GatewayClass" => "gatewayclass",
            "ReferenceGrant" => "referencegrant",
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
        egress: cfg.listen.egress.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn publish_moves_generation_and_last_sync() {
        let cfg = Config::parse(
            "tls: {cert: c, key: k, trust_anchors: a}\ndiscovery: {files: m}\n",
            Path::new("test.yaml"),
            Path::new("/"),
        )
        .expect("config");
        let metrics = Arc::new(Metrics::new());
        let publisher = Publisher::new(
            crate::routes::shared_empty(),
            metrics.clone(),
            Source::Kubernetes,
        );
        let mut index = Index::new(index_config(&cfg));
        let sync = || {
            metrics
                .discovery_last_sync
                .with_label_values(&["kubernetes"])
                .get()
        };
        assert_eq!(metrics.table_generation.get(), 0);
        let before = crate::metrics::unix_now();
        publisher.publish(&mut index, Instant::now());
        assert_eq!(metrics.table_generation.get(), 1);
        assert!(sync() >= before);
        publisher.publish(&mut index, Instant::now());
        assert_eq!(metrics.table_generation.get(), 2);
        // A contact without a change moves the sync time only.
        metrics
            .discovery_last_sync
            .with_label_values(&["kubernetes"])
            .set(0);
        publisher.synced();
        assert!(sync() >= before);
        assert_eq!(metrics.table_generation.get(), 2);
        assert!(!metrics.render().contains("source=\"files\""));
    }
}
