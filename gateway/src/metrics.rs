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
    /// `max_handshakes_per_source`, `request_header_timeout`, `idle_timeout`).
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
}

impl ErrorKind {
    /// Every kind, for tests that enumerate the metric's label values.
    pub const ALL: [ErrorKind; 10] = [
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
}

impl HandshakeFailure {
    /// Every reason, for tests that enumerate the metric's label values.
    pub const ALL: [HandshakeFailure; 8] = [
        HandshakeFailure::NoClientCert,
        HandshakeFailure::UnknownCa,
        HandshakeFailure::Expired,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::BadIdentity,
        HandshakeFailure::Protocol,
        HandshakeFailure::Timeout,
        HandshakeFailure::Closed,
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
    /// A manifest file as a whole (file source only).
    File,
}

impl ObjectKind {
    /// Every kind, for tests that enumerate the metric's label values.
    pub const ALL: [ObjectKind; 4] = [
        ObjectKind::Service,
        ObjectKind::EndpointSlice,
        ObjectKind::Mapping,
        ObjectKind::File,
    ];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            ObjectKind::Service => "service",
            ObjectKind::EndpointSlice => "endpointslice",
            ObjectKind::Mapping => "mapping",
            ObjectKind::File => "file",
        }
    }

    /// The Kubernetes kind, as [`crate::discovery::ObjectError`] names it.
    pub fn object_kind(self) -> &'static str {
        match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Mapping => "Mapping",
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
        ]
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
