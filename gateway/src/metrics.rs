//! Metrics: one Prometheus registry, built once and passed to every stage.
//!
//! Label values come from fixed enums ([`ErrorKind`], [`HandshakeFailure`],
//! [`ObjectKind`]) plus the route name, whose series leave with the route, and
//! the peer identity, capped by `metrics.max_peer_labels` ([`labels`]).

mod labels;

use std::sync::Arc;

pub use labels::OTHER_PEER;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the gateway exports, registered in one [`Registry`].
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `isthmus_requests_total{route, peer, status_class}`.
    pub requests: IntCounterVec,
    /// `isthmus_request_duration_seconds{route}`.
    pub request_duration: HistogramVec,
    /// `isthmus_request_errors_total{reason}`: every error answer the gateway
    /// gives ([`ErrorKind`] labels), plus `unparsable_request` for HTTP/1
    /// requests pingora's parser refuses before the gateway's hooks run.
    pub request_errors: IntCounterVec,
    /// `isthmus_tls_handshake_failures_total{reason}`.
    pub handshake_failures: IntCounterVec,
    /// `isthmus_tls_reloads_total{result}`: certificate/key/trust-anchor reloads (ok, error).
    pub tls_reloads: IntCounterVec,
    /// `isthmus_open_connections`.
    pub open_connections: IntGauge,
    /// `isthmus_requests_in_flight`: requests read and not yet answered in full.
    pub requests_in_flight: IntGauge,
    /// `isthmus_upstream_connect_errors_total`.
    pub upstream_connect_errors: IntCounter,
    /// `isthmus_limits_exceeded_total{limit}`: connections ended by a limit
    /// (`max_connections`, `max_connections_per_identity`, `max_handshakes`,
    /// `max_handshakes_per_source`, `request_header_timeout`, `idle_timeout`; on
    /// the admin and probe ports `admin_max_connections`, `probe_max_connections`).
    pub limits_exceeded: IntCounterVec,
    /// `isthmus_endpoint_ejections_total`: endpoints taken out of rotation
    /// after consecutive connect failures (passive health).
    pub endpoint_ejections: IntCounter,
    /// `isthmus_table_routes`, `isthmus_table_services`, `isthmus_table_endpoints`.
    pub table_size: IntGaugeVec,
    /// `isthmus_discovery_events_total{kind}`.
    pub discovery_events: IntCounterVec,
    /// `isthmus_discovery_errors_total{kind}`: objects or files that were rejected.
    pub discovery_errors: IntCounterVec,
    /// `isthmus_discovery_watch_errors_total{kind}`: API watch/list failures (retried with backoff).
    pub watch_errors: IntCounterVec,
    /// `isthmus_mapping_status_writes_total{result}`: Mapping status patches.
    pub status_writes: IntCounterVec,
    /// `isthmus_discovery_publish_delay_seconds`: source change seen → table published.
    pub publish_delay: Histogram,
    /// `isthmus_ready`: 1 once discovery has synced and certificates are loaded.
    pub ready: IntGauge,
    /// `isthmus_egress_requests_total{target_cluster_name,status_class}`:
    /// egress requests by where they went (`local` for this cluster).
    pub egress_requests: IntCounterVec,
    /// `isthmus_egress_tls_failures_total{reason}`: mTLS connections to remote
    /// gateways refused (`identity_mismatch`, `handshake`); no request was sent.
    pub egress_tls_failures: IntCounterVec,
    /// `isthmus_tls_certificate_expiry_timestamp_seconds`: not-after of the
    /// serving certificate in force (unix seconds).
    pub certificate_expiry: IntGauge,
    /// `isthmus_tls_trust_anchor_expiry_timestamp_seconds{subject}`: not-after of
    /// each CA in the trust bundle in force.
    pub trust_anchor_expiry: IntGaugeVec,
    /// `isthmus_discovery_last_sync_timestamp_seconds{source}`: last successful
    /// contact with the route source (see [`crate::discovery::Publisher`]).
    pub discovery_last_sync: IntGaugeVec,
    /// `isthmus_table_generation`: route tables published since start.
    pub table_generation: IntGauge,
    peer_labels: Arc<labels::PeerLabels>,
}

/// Why a request was answered by the gateway itself instead of an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// 404: no route for the authority (unknown or not exported; indistinguishable).
    NoRoute,
    /// 403: the peer identity is not allowed on the route.
    Forbidden,
    /// 503: the route's backends have no ready endpoints.
    NoEndpoints,
    /// 502: the upstream refused or failed the connection.
    UpstreamConnect,
    /// 504: the upstream did not answer in time.
    UpstreamTimeout,
    /// 502: the upstream connection broke mid-exchange.
    UpstreamError,
    /// 400: the request itself is malformed.
    BadRequest,
    /// 431: the request headers exceed the configured limit.
    HeadersTooLarge,
    /// 508: the request already passed through this gateway.
    Loop,
    /// 500: a bug or an internal failure.
    Internal,
    /// A Gateway API backendRef that does not resolve (missing Service or port): 500.
    InvalidBackend,
    /// 403 (egress): the host is outside the cluster; the egress is not an open proxy.
    NotInCluster,
    /// 405 (egress): CONNECT.
    MethodNotAllowed,
    /// 502, as gRPC `UNIMPLEMENTED`: a gRPC request on a route whose upstream
    /// speaks HTTP/1.1 (no h2c `appProtocol`, no `grpc: true`).
    GrpcNotH2,
    /// 403: an `Upgrade` (or extended CONNECT) the route does not allow.
    UpgradeRefused,
}

impl ErrorKind {
    /// Every kind, for tests that enumerate the metric's label values.
    pub const ALL: [ErrorKind; 15] = [
        ErrorKind::NoRoute,
        ErrorKind::Forbidden,
        ErrorKind::NoEndpoints,
        ErrorKind::UpstreamConnect,
        ErrorKind::UpstreamTimeout,
        ErrorKind::UpstreamError,
        ErrorKind::BadRequest,
        ErrorKind::HeadersTooLarge,
        ErrorKind::Loop,
        ErrorKind::Internal,
        ErrorKind::NotInCluster,
        ErrorKind::MethodNotAllowed,
        ErrorKind::InvalidBackend,
        ErrorKind::GrpcNotH2,
        ErrorKind::UpgradeRefused,
    ];

    /// The HTTP status a client sees for this error.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::NoRoute => 404,
            ErrorKind::Forbidden => 403,
            ErrorKind::NoEndpoints => 503,
            ErrorKind::UpstreamConnect | ErrorKind::UpstreamError => 502,
            ErrorKind::UpstreamTimeout => 504,
            ErrorKind::BadRequest => 400,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::Loop => 508,
            ErrorKind::Internal => 500,
            ErrorKind::InvalidBackend => 500,
            ErrorKind::NotInCluster => 403,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::GrpcNotH2 => 502,
            ErrorKind::UpgradeRefused => 403,
        }
    }

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no_route",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NoEndpoints => "no_endpoints",
            ErrorKind::UpstreamConnect => "upstream_connect",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamError => "upstream_error",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::Loop => "loop",
            ErrorKind::Internal => "internal",
            ErrorKind::InvalidBackend => "invalid_backend",
            ErrorKind::NotInCluster => "not_in_cluster",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::GrpcNotH2 => "grpc_upstream_http1",
            ErrorKind::UpgradeRefused => "upgrade_refused",
        }
    }
}

/// Why a TLS handshake was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client presented no certificate.
    NoClientCert,
    /// The chain does not lead to a trust anchor.
    UnknownCa,
    /// The certificate is expired or not yet valid.
    Expired,
    /// The certificate may not be used for client authentication, or carries no usable SAN.
    BadCertificate,
    /// The certificate's identity holds a control byte, whitespace or `*`.
    BadIdentity,
    /// Anything else rustls refused (versions, ciphers, garbage bytes).
    Protocol,
    /// The handshake did not complete within the handshake timeout.
    Timeout,
    /// The client went away during the handshake.
    Closed,
    /// The client offered Linkerd's opaque transport (ALPN `transport.l5d.io/v1`).
    OpaqueTransport,
    /// The chain verified, but its trust anchor's trust domain
    /// (`tls.trust_domains[].identities`) does not cover the certificate's identity.
    OutsideTrustDomain,
}

impl HandshakeFailure {
    /// Every reason, for tests that enumerate the metric's label values.
    pub const ALL: [HandshakeFailure; 10] = [
        HandshakeFailure::NoClientCert,
        HandshakeFailure::UnknownCa,
        HandshakeFailure::Expired,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::BadIdentity,
        HandshakeFailure::Protocol,
        HandshakeFailure::Timeout,
        HandshakeFailure::Closed,
        HandshakeFailure::OpaqueTransport,
        HandshakeFailure::OutsideTrustDomain,
    ];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::NoClientCert => "no_client_cert",
            HandshakeFailure::UnknownCa => "unknown_ca",
            HandshakeFailure::Expired => "expired",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::BadIdentity => "bad_identity",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::OpaqueTransport => "opaque_transport",
            HandshakeFailure::OutsideTrustDomain => "identity_outside_trust_domain",
        }
    }
}

/// The kinds of objects discovery watches, for metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// `v1 Service`.
    Service,
    /// `discovery.k8s.io/v1 EndpointSlice`.
    EndpointSlice,
    /// `isthmus.dev/v1alpha1 Mapping`.
    Mapping,
    /// `split.smi-spec.io TrafficSplit` (any supported version).
    TrafficSplit,
    /// `gateway.networking.k8s.io/v1 HTTPRoute`.
    HttpRoute,
    /// `gateway.networking.k8s.io/v1 Gateway`.
    Gateway,
    /// `gateway.networking.k8s.io/v1 GatewayClass`.
    GatewayClass,
    /// `gateway.networking.k8s.io/v1beta1 ReferenceGrant`.
    ReferenceGrant,
    /// A manifest file as a whole (file source only).
    File,
}

impl ObjectKind {
    /// Every kind, for tests that enumerate the metric's label values.
    pub const ALL: [ObjectKind; 6] = [
        ObjectKind::Service,
        ObjectKind::EndpointSlice,
        ObjectKind::Mapping,
        ObjectKind::TrafficSplit,
        ObjectKind::ReferenceGrant,
        ObjectKind::File,
    ];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            ObjectKind::Service => "service",
            ObjectKind::EndpointSlice => "endpointslice",
            ObjectKind::Mapping => "mapping",
            ObjectKind::TrafficSplit => "trafficsplit",
            ObjectKind::HttpRoute => "httproute",
            ObjectKind::Gateway => "gateway",
            ObjectKind::GatewayClass => "gatewayclass",
            ObjectKind::ReferenceGrant => "referencegrant",
            ObjectKind::File => "file",
        }
    }

    /// The Kubernetes kind, as [`crate::discovery::ObjectError`] names it.
    pub fn object_kind(self) -> &'static str {
        match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Mapping => "Mapping",
            ObjectKind::TrafficSplit => "TrafficSplit",
            ObjectKind::HttpRoute => "HTTPRoute",
            ObjectKind::Gateway => "Gateway",
            ObjectKind::GatewayClass => "GatewayClass",
            ObjectKind::ReferenceGrant => "ReferenceGrant",
            ObjectKind::File => "File",
        }
    }
}

impl Metrics {
    /// Builds and registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let m = Metrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "isthmus_requests_total",
                    "Requests answered, by route, peer identity and status class",
                ),
                &["route", "peer", "status_class"],
            )
            .expect("valid metric"),
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "isthmus_request_duration_seconds",
                    "Time from request headers to the end of the response",
                )
                .buckets(latency_buckets.clone()),
                &["route"],
            )
            .expect("valid metric"),
            request_errors: IntCounterVec::new(
                Opts::new(
                    "isthmus_request_errors_total",
                    "Requests answered with an error by the gateway itself, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            handshake_failures: IntCounterVec::new(
                Opts::new(
                    "isthmus_tls_handshake_failures_total",
                    "TLS handshakes refused or failed, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            tls_reloads: IntCounterVec::new(
                Opts::new(
                    "isthmus_tls_reloads_total",
                    "TLS material reloads after the files changed, by result (ok, error)",
                ),
                &["result"],
            )
            .expect("valid metric"),
            open_connections: IntGauge::new(
                "isthmus_open_connections",
                "Downstream connections currently open",
            )
            .expect("valid metric"),
            requests_in_flight: IntGauge::new(
                "isthmus_requests_in_flight",
                "Requests read from downstream and not yet answered in full",
            )
            .expect("valid metric"),
            upstream_connect_errors: IntCounter::new(
                "isthmus_upstream_connect_errors_total",
                "Failed connection attempts to upstream endpoints",
            )
            .expect("valid metric"),
            endpoint_ejections: IntCounter::new(
                "isthmus_endpoint_ejections_total",
                "Endpoints ejected after consecutive connect failures",
            )
            .expect("valid metric"),
            limits_exceeded: IntCounterVec::new(
                Opts::new(
                    "isthmus_limits_exceeded_total",
                    "Downstream connections ended by a configured limit",
                ),
                &["limit"],
            )
            .expect("valid metric"),
            table_size: IntGaugeVec::new(
                Opts::new(
                    "isthmus_table_objects",
                    "Entries in the published route table, by kind (routes, services, endpoints)",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            discovery_events: IntCounterVec::new(
                Opts::new(
                    "isthmus_discovery_events_total",
                    "Objects applied or deleted by discovery, by kind",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            discovery_errors: IntCounterVec::new(
                Opts::new(
                    "isthmus_discovery_errors_total",
                    "Objects, files or watches that failed, by kind",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            watch_errors: IntCounterVec::new(
                Opts::new(
                    "isthmus_discovery_watch_errors_total",
                    "Kubernetes list/watch failures, by kind; retried with backoff",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            status_writes: IntCounterVec::new(
                Opts::new(
                    "isthmus_mapping_status_writes_total",
                    "Mapping status patches, by result (ok, error)",
                ),
                &["result"],
            )
            .expect("valid metric"),
            publish_delay: Histogram::with_opts(
                HistogramOpts::new(
                    "isthmus_discovery_publish_delay_seconds",
                    "Time from a change seen in the source to the new route table being published",
                )
                .buckets(vec![
                    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ]),
            )
            .expect("valid metric"),
            ready: IntGauge::new(
                "isthmus_ready",
                "1 once discovery has synced and certificates are loaded",
            )
            .expect("valid metric"),
            egress_requests: IntCounterVec::new(
                Opts::new(
                    "isthmus_egress_requests_total",
                    "Egress requests by target cluster (local for this one) and status class",
                ),
                &["target_cluster_name", "status_class"],
            )
            .expect("valid metric"),
            egress_tls_failures: IntCounterVec::new(
                Opts::new(
                    "isthmus_egress_tls_failures_total",
                    "mTLS connections to remote gateways refused, by reason; no request was sent",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            certificate_expiry: IntGauge::new(
                "isthmus_tls_certificate_expiry_timestamp_seconds",
                "Not-after of the serving certificate in force, unix seconds",
            )
            .expect("valid metric"),
            trust_anchor_expiry: IntGaugeVec::new(
                Opts::new(
                    "isthmus_tls_trust_anchor_expiry_timestamp_seconds",
                    "Not-after of each trust anchor (CA) in the bundle in force, by subject, unix seconds",
                ),
                &["subject"],
            )
            .expect("valid metric"),
            discovery_last_sync: IntGaugeVec::new(
                Opts::new(
                    "isthmus_discovery_last_sync_timestamp_seconds",
                    "Last successful contact with the route source (files: a scan; kubernetes: a publish or an API server round trip), unix seconds",
                ),
                &["source"],
            )
            .expect("valid metric"),
            table_generation: IntGauge::new(
                "isthmus_table_generation",
                "Route tables published since start; moves on every publish",
            )
            .expect("valid metric"),
            registry,
            peer_labels: Arc::default(),
        };
        m.register_all();
        m
    }

    /// Every exported metric family as (name, variable label names), for
    /// checking a sample's spelling against what the gateway can export.
    pub fn families(&self) -> Vec<(String, Vec<String>)> {
        self.collectors()
            .iter()
            .flat_map(|c| c.desc().into_iter())
            .map(|d| (d.fq_name.clone(), d.variable_labels.clone()))
            .collect()
    }

    fn register_all(&self) {
        for c in self.collectors() {
            self.registry
                .register(c)
                .expect("metric names are unique within the registry");
        }
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.requests.clone()),
            Box::new(self.request_duration.clone()),
            Box::new(self.request_errors.clone()),
            Box::new(self.handshake_failures.clone()),
            Box::new(self.tls_reloads.clone()),
            Box::new(self.open_connections.clone()),
            Box::new(self.requests_in_flight.clone()),
            Box::new(self.upstream_connect_errors.clone()),
            Box::new(self.limits_exceeded.clone()),
            Box::new(self.endpoint_ejections.clone()),
            Box::new(self.table_size.clone()),
            Box::new(self.discovery_events.clone()),
            Box::new(self.discovery_errors.clone()),
            Box::new(self.watch_errors.clone()),
            Box::new(self.status_writes.clone()),
            Box::new(self.publish_delay.clone()),
            Box::new(self.ready.clone()),
            Box::new(self.egress_requests.clone()),
            Box::new(self.egress_tls_failures.clone()),
            Box::new(self.certificate_expiry.clone()),
            Box::new(self.trust_anchor_expiry.clone()),
            Box::new(self.discovery_last_sync.clone()),
            Box::new(self.table_generation.clone()),
        ]
    }

    /// Records the expiry of the TLS material now in force: the serving
    /// certificate's not-after (when it parses) and one series per trust-anchor
    /// subject; series of subjects no longer in the bundle are removed. Two CAs
    /// with the same subject share a series holding the earlier not-after.
    pub fn record_tls_expiry(&self, certificate: Option<i64>, anchors: &[(String, i64)]) {
        if let Some(t) = certificate {
            self.certificate_expiry.set(t);
        }
        let mut soonest: std::collections::BTreeMap<&str, i64> = Default::default();
        for (subject, t) in anchors {
            let e = soonest.entry(subject.as_str()).or_insert(*t);
            *e = (*e).min(*t);
        }
        for old in label_values(&self.trust_anchor_expiry, "subject") {
            if !soonest.contains_key(old.as_str()) {
                let _ = self.trust_anchor_expiry.remove_label_values(&[&old]);
            }
        }
        for (subject, t) in soonest {
            self.trust_anchor_expiry
                .with_label_values(&[subject])
                .set(t);
        }
    }

    /// The names of every registered metric family, vectors included even
    /// before any label set was observed (those do not render yet).
    pub fn names(&self) -> Vec<String> {
        descriptor_names(&self.collectors())
    }

    /// Renders the registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "failed to encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The current value of one label across a vector's series.
fn label_values(vec: &IntGaugeVec, label: &str) -> Vec<String> {
    use prometheus::core::Collector;
    vec.collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .filter_map(|m| {
            m.get_label()
                .iter()
                .find(|l| l.name() == label)
                .map(|l| l.value().to_string())
        })
        .collect()
}

/// The metric family names of some collectors, from their descriptions (so
/// vectors without series are named too), sorted.
pub fn descriptor_names(collectors: &[Box<dyn prometheus::core::Collector>]) -> Vec<String> {
    let mut names: Vec<String> = collectors
        .iter()
        .flat_map(|c| c.desc())
        .map(|d| d.fq_name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Seconds since the Unix epoch, for `*_timestamp_seconds` gauges.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_anchor_series_follow_the_bundle() {
        let m = Metrics::new();
        m.record_tls_expiry(
            Some(2_000),
            &[("CN=old".into(), 3_000), ("CN=new".into(), 9_000)],
        );
        let text = m.render();
        assert!(text.contains("isthmus_tls_certificate_expiry_timestamp_seconds 2000"));
        assert!(text.contains(
            "isthmus_tls_trust_anchor_expiry_timestamp_seconds{subject=\"CN=old\"} 3000"
        ));
        // Rotation: the old CA leaves the bundle, a same-named pair keeps the earlier time.
        m.record_tls_expiry(
            Some(5_000),
            &[("CN=new".into(), 9_000), ("CN=new".into(), 8_000)],
        );
        let text = m.render();
        assert!(text.contains("isthmus_tls_certificate_expiry_timestamp_seconds 5000"));
        assert!(!text.contains("CN=old"), "{text}");
        assert!(text.contains(
            "isthmus_tls_trust_anchor_expiry_timestamp_seconds{subject=\"CN=new\"} 8000"
        ));
    }

    #[test]
    fn names_include_vectors_without_series() {
        let names = Metrics::new().names();
        for n in [
            "isthmus_requests_total",
            "isthmus_request_duration_seconds",
            "isthmus_tls_trust_anchor_expiry_timestamp_seconds",
            "isthmus_discovery_last_sync_timestamp_seconds",
            "isthmus_table_generation",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
    }
}
