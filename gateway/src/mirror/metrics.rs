//! The mirror controller's metrics: one registry, passed in, served on its
//! admin address. Names are DESIGN.md's (`isthmus_gateway_*`,
//! `isthmus_mirrored_services`) plus the controller's own `isthmus_mirror_*`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric of `isthmus mirror`.
#[derive(Clone)]
pub struct MirrorMetrics {
    registry: Registry,
    /// `isthmus_gateway_alive{target_cluster_name}`: 1 while the remote gateway counts as alive.
    pub gateway_alive: IntGaugeVec,
    /// `isthmus_gateway_probe_duration_seconds{target_cluster_name}`: successful probes.
    pub probe_duration: HistogramVec,
    /// `isthmus_gateway_probes_total{target_cluster_name,result}`: `ok`, `failed`, `unresolved`.
    pub probes: IntCounterVec,
    /// `isthmus_mirrored_services{target_cluster_name}`: remote Services mirrored now.
    pub mirrored_services: IntGaugeVec,
    /// `isthmus_mirror_refused_services{target_cluster_name}`: selected but not mirrored.
    pub refused_services: IntGaugeVec,
    /// `isthmus_mirror_remote_stale{target_cluster_name}`: 1 while the remote API is unreachable.
    pub remote_stale: IntGaugeVec,
    /// `isthmus_mirror_remote_errors_total{target_cluster_name}`: remote watch/list failures.
    pub remote_errors: IntCounterVec,
    /// `isthmus_mirror_writes_total{kind,op,result}`: writes to this cluster.
    pub writes: IntCounterVec,
    /// `isthmus_mirror_link_errors_total{reason}`: Links that cannot run (invalid, credentials).
    pub link_errors: IntCounterVec,
    /// `isthmus_mirror_write_delay_seconds`: remote change seen → mirror written.
    pub write_delay: prometheus::Histogram,
    /// `isthmus_mirror_leader`: 1 while this replica holds the Lease and writes.
    pub leader: IntGauge,
}

impl Default for MirrorMetrics {
    fn default() -> Self {
        MirrorMetrics::new()
    }
}

impl MirrorMetrics {
    /// Builds and registers every metric.
    pub fn new() -> MirrorMetrics {
        let registry = Registry::new();
        let t = &["target_cluster_name"];
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), t).expect("metric");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let gateway_alive = gauge(
            "isthmus_gateway_alive",
            "Remote gateway alive (1) or dead (0).",
        );
        let mirrored_services = gauge("isthmus_mirrored_services", "Remote Services mirrored.");
        let refused_services = gauge(
            "isthmus_mirror_refused_services",
            "Remote Services selected by a Link but not mirrored (see the Link's status).",
        );
        let remote_stale = gauge(
            "isthmus_mirror_remote_stale",
            "1 while the remote API server cannot be reached; mirrors are kept as they are.",
        );
        let probes = counter(
            "isthmus_gateway_probes_total",
            "Remote gateway probes by result.",
            &["target_cluster_name", "result"],
        );
        let remote_errors = counter(
            "isthmus_mirror_remote_errors_total",
            "Remote watch and list failures (retried with backoff).",
            t,
        );
        let writes = counter(
            "isthmus_mirror_writes_total",
            "Writes to this cluster by object kind, operation and result.",
            &["kind", "op", "result"],
        );
        let link_errors = counter(
            "isthmus_mirror_link_errors_total",
            "Links that cannot run, by reason.",
            &["reason"],
        );
        let probe_duration = HistogramVec::new(
            HistogramOpts::new(
                "isthmus_gateway_probe_duration_seconds",
                "Latency of successful remote gateway probes.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            t,
        )
        .expect("metric");
        registry
            .register(Box::new(probe_duration.clone()))
            .expect("register");
        let write_delay = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "isthmus_mirror_write_delay_seconds",
                "Time from a remote change being seen to its mirror written here.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("metric");
        registry
            .register(Box::new(write_delay.clone()))
            .expect("register");
        let leader = IntGauge::new(
            "isthmus_mirror_leader",
            "1 while this replica holds the Lease and writes.",
        )
        .expect("metric");
        registry
            .register(Box::new(leader.clone()))
            .expect("register");
        MirrorMetrics {
            registry,
            gateway_alive,
            probe_duration,
            probes,
            mirrored_services,
            refused_services,
            remote_stale,
            remote_errors,
            writes,
            link_errors,
            write_delay,
            leader,
        }
    }

    /// Drops every series of a target cluster (its Link is gone).
    pub fn forget(&self, target: &str) {
        for g in [
            &self.gateway_alive,
            &self.mirrored_services,
            &self.refused_services,
            &self.remote_stale,
        ] {
            let _ = g.remove_label_values(&[target]);
        }
        let _ = self.remote_errors.remove_label_values(&[target]);
        let _ = self.probe_duration.remove_label_values(&[target]);
        for r in ["ok", "failed", "unresolved"] {
            let _ = self.probes.remove_label_values(&[target, r]);
        }
    }

    /// The names of every metric family, vectors included before any series
    /// exists (those do not render yet).
    pub fn names(&self) -> Vec<String> {
        let c: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.gateway_alive.clone()),
            Box::new(self.probe_duration.clone()),
            Box::new(self.probes.clone()),
            Box::new(self.mirrored_services.clone()),
            Box::new(self.refused_services.clone()),
            Box::new(self.remote_stale.clone()),
            Box::new(self.remote_errors.clone()),
            Box::new(self.writes.clone()),
            Box::new(self.link_errors.clone()),
            Box::new(self.write_delay.clone()),
            Box::new(self.leader.clone()),
        ];
        crate::metrics::descriptor_names(&c)
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
