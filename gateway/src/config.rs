//! Typed configuration: the YAML file, its defaults, and validation.
//!
//! Unknown keys are errors that name the key; relative paths resolve against the
//! folder that holds the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::routes::IdentityPattern;

/// A configuration error, with the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {error}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The YAML is malformed or names an unknown key.
    #[error("invalid config file {path}: {error}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// serde_yaml's message, which names the field, line and column.
        error: serde_yaml::Error,
    },
    /// A value is well-formed YAML but not acceptable.
    #[error("invalid config file {path}: {field}: {reason}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The dotted key path, e.g. `allowed_identities[2]`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The gateway configuration, as read from the YAML file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listening addresses.
    #[serde(default)]
    pub listen: Listen,
    /// Serving certificate, key and the trust anchors for client certificates.
    pub tls: Tls,
    /// The cluster DNS domain; implicit routes are `<svc>.<ns>.svc.<cluster_domain>`.
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: String,
    /// The label that exports a Service; its value must be `"true"`.
    #[serde(default = "default_export_label")]
    pub export_label: String,
    /// Peer identities allowed on exported Services (exact or `*` wildcards). Empty denies all.
    #[serde(default)]
    pub allowed_identities: Vec<String>,
    /// Namespaces whose objects are considered; empty means all.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// This gateway's own identity, used for loop detection (`Forwarded: by=`).
    /// Defaults to the serving certificate's first URI SAN, else first DNS SAN.
    #[serde(default)]
    pub identity: Option<String>,
    /// Where routes come from.
    pub discovery: Discovery,
    /// Request and connection limits.
    #[serde(default)]
    pub limits: Limits,
    /// Upstream defaults, overridable per Mapping.
    #[serde(default)]
    pub upstream: Upstream,
    /// Bounds on metric labels.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Serving threads (shards, one runtime each); 0 means one per core.
    #[serde(default)]
    pub threads: usize,
    /// Log output.
    #[serde(default)]
    pub log: Log,
}

/// `metrics:` label bounds.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Distinct peer identities with a `peer` label value of their own in
    /// `isthmus_requests_total` (first come); the others are counted as `other`.
    #[serde(default = "default_max_peer_labels")]
    pub max_peer_labels: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_peer_labels: default_max_peer_labels(),
        }
    }
}

fn default_max_peer_labels() -> usize {
    1_000
}

/// `listen:` addresses.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// The mTLS gateway port.
    #[serde(default = "default_gateway_addr")]
    pub gateway: SocketAddr,
    /// The plain-HTTP admin port (`/ready`, `/live`, `/metrics`, `/routes`).
    #[serde(default = "default_admin_addr")]
    pub admin: SocketAddr,
    /// The probe port: only `/ready` and `/live`, plaintext or TLS (client
    /// certificate optional), whatever the Host. The one the LoadBalancer exposes
    /// for peers' probes.
    #[serde(default = "default_probe_addr")]
    pub probe: SocketAddr,
    /// The plaintext egress for in-cluster callers (HTTP/1.1 and h2c):
    /// Services, mirrors and splits by their in-cluster names. `null` turns it off.
    #[serde(default = "default_egress_addr")]
    pub egress: Option<SocketAddr>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            gateway: default_gateway_addr(),
            admin: default_admin_addr(),
            probe: default_probe_addr(),
            egress: default_egress_addr(),
        }
    }
}

/// `tls:` file paths.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain served to peers.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM bundle of CAs that client certificates must chain to (several
    /// allowed); any of them may assert any identity. Prefer `trust_domains`.
    #[serde(default)]
    pub trust_anchors: Option<PathBuf>,
    /// Trust anchors bound to the identities their certificates may assert
    /// (a SPIFFE trust bundle per trust domain). Instead of `trust_anchors`.
    #[serde(default)]
    pub trust_domains: Vec<TrustDomain>,
    /// Resume TLS sessions (session cache and TLS 1.3 tickets). Resumed sessions
    /// keep the identity verified in their full handshake.
    #[serde(default = "default_true")]
    pub session_resumption: bool,
    /// How often the three files are checked for changes (rotation).
    #[serde(default = "default_tls_reload_ms")]
    pub reload_interval_ms: u64,
}

/// `tls.trust_domains[]`: one PEM bundle of CAs and the identities that
/// certificates chaining to them may carry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustDomain {
    /// PEM bundle of the trust domain's CAs (several allowed: rotation).
    pub trust_anchors: PathBuf,
    /// Identity patterns (the syntax of `allowed_identities`) these CAs may
    /// assert, e.g. `spiffe://west.example/*`, `*.west.example`.
    pub identities: Vec<String>,
}

/// `discovery:`: exactly one source.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "DiscoveryKeys")]
pub enum Discovery {
    /// A directory of Kubernetes YAML manifests, reloaded on change.
    Files(FilesDiscovery),
    /// Kubernetes API watches.
    Kubernetes(KubernetesDiscovery),
}

/// The YAML form of `discovery:`; exactly one key must be set.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscoveryKeys {
    files: Option<FilesDiscovery>,
    kubernetes: Option<KubernetesDiscovery>,
}

impl TryFrom<DiscoveryKeys> for Discovery {
    type Error = String;
    fn try_from(k: DiscoveryKeys) -> Result<Self, String> {
        match (k.files, k.kubernetes) {
            (Some(f), None) => Ok(Discovery::Files(f)),
            (None, Some(k)) => Ok(Discovery::Kubernetes(k)),
            _ => Err("exactly one of `files` or `kubernetes` must be set".into()),
        }
    }
}

/// `discovery.files`: either a bare path or `{dir, poll_interval_ms}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum FilesDiscovery {
    /// `files: manifests`.
    Dir(PathBuf),
    /// `files: {dir: manifests, poll_interval_ms: 200}`.
    Detailed {
        /// The directory.
        dir: PathBuf,
        /// How often the directory is checked for changes.
        #[serde(default = "default_poll_ms")]
        poll_interval_ms: u64,
    },
}

impl FilesDiscovery {
    /// The manifest directory.
    pub fn dir(&self) -> &Path {
        match self {
            FilesDiscovery::Dir(d) => d,
            FilesDiscovery::Detailed { dir, .. } => dir,
        }
    }

    /// How often the directory is rescanned.
    pub fn poll_interval(&self) -> Duration {
        match self {
            FilesDiscovery::Dir(_) => Duration::from_millis(default_poll_ms()),
            FilesDiscovery::Detailed {
                poll_interval_ms, ..
            } => Duration::from_millis((*poll_interval_ms).max(10)),
        }
    }
}

/// `discovery.kubernetes`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesDiscovery {
    /// Path of a kubeconfig; default: in-cluster, then `$KUBECONFIG`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Label selector applied to watched Services (EndpointSlices and Mappings are not filtered).
    #[serde(default)]
    pub label_selector: Option<String>,
    /// How often the API server is asked for `/version` once synced, so that
    /// `isthmus_discovery_last_sync_timestamp_seconds` moves in a quiet cluster.
    #[serde(default = "default_contact_interval_ms")]
    pub contact_interval_ms: u64,
    /// How often API discovery is asked again for a CRD that was not installed
    /// (Mapping, TrafficSplit, the Gateway API's); its watch starts when it appears.
    #[serde(default = "default_contact_interval_ms")]
    pub crd_recheck_interval_ms: u64,
}

impl Default for KubernetesDiscovery {
    fn default() -> Self {
        KubernetesDiscovery {
            kubeconfig: None,
            label_selector: None,
            contact_interval_ms: default_contact_interval_ms(),
            crd_recheck_interval_ms: default_contact_interval_ms(),
        }
    }
}

/// `log:`: how log lines are written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// `text` (default) or `json` (one JSON object per line).
    #[serde(default)]
    pub format: LogFormat,
}

/// The log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (tracing-subscriber's default format).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`, `span`, `spans`.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}: json or text")),
        }
    }
}

/// `limits:` on downstream requests and connections.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request header section accepted, in bytes (431 beyond).
    #[serde(default = "default_max_header_bytes")]
    pub max_request_header_bytes: usize,
    /// Most request header fields accepted (431 beyond).
    #[serde(default = "default_max_headers")]
    pub max_request_headers: usize,
    /// Time allowed for a TLS handshake.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// On SIGTERM: how long in-flight requests may take to finish.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Time from a request's first byte to the end of its header section
    /// (HTTP/1; slowloris): `408` and the connection closes beyond.
    #[serde(default = "default_request_header_timeout_ms")]
    pub request_header_timeout_ms: u64,
    /// Idle time allowed on a downstream connection before its first and
    /// between requests (HTTP/1 and HTTP/2); then it is closed.
    #[serde(default = "default_downstream_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Downstream connections open at once; new ones are closed at accept beyond.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one peer identity may hold open; more are closed right
    /// after the handshake.
    #[serde(default = "default_max_connections_per_identity")]
    pub max_connections_per_identity: usize,
    /// Connections open at once on the admin port; new ones are closed at accept beyond.
    #[serde(default = "default_admin_max_connections")]
    pub admin_max_connections: usize,
    /// Connections open at once on the probe port; new ones are closed at accept beyond.
    #[serde(default = "default_probe_max_connections")]
    pub probe_max_connections: usize,
    /// Admin and probe ports: time allowed for a request's header section (HTTP/1;
    /// counted from when the connection waits for it, so it also ends idle
    /// keep-alive connections), and for the probe port's first byte and TLS handshake.
    #[serde(default = "default_admin_header_timeout_ms")]
    pub admin_header_timeout_ms: u64,
    /// Admin and probe ports: a connection with no bytes in either direction for
    /// this long is closed (HTTP/1 and HTTP/2).
    #[serde(default = "default_admin_idle_timeout_ms")]
    pub admin_idle_timeout_ms: u64,
    /// Connections in their TLS handshake at once (a budget apart from
    /// `max_connections`); new ones are closed at accept beyond.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// Connections from one source address in their TLS handshake at once;
    /// new ones from it are closed at accept beyond.
    #[serde(default = "default_max_handshakes_per_source")]
    pub max_handshakes_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_header_bytes: default_max_header_bytes(),
            max_request_headers: default_max_headers(),
            handshake_timeout_ms: default_handshake_timeout_ms(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            request_header_timeout_ms: default_request_header_timeout_ms(),
            idle_timeout_ms: default_downstream_idle_timeout_ms(),
            max_connections: default_max_connections(),
            max_connections_per_identity: default_max_connections_per_identity(),
            admin_max_connections: default_admin_max_connections(),
            probe_max_connections: default_probe_max_connections(),
            admin_header_timeout_ms: default_admin_header_timeout_ms(),
            admin_idle_timeout_ms: default_admin_idle_timeout_ms(),
            max_handshakes: default_max_handshakes(),
            max_handshakes_per_source: default_max_handshakes_per_source(),
        }
    }
}

/// `upstream:` defaults for every route.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Time to establish an upstream TCP connection.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time to wait for each read from the upstream (response headers, body gaps).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Idle time after which a pooled upstream connection is closed.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Consecutive connect failures after which an endpoint is ejected (passive health).
    #[serde(default = "default_eject_after_failures")]
    pub eject_after_failures: u32,
    /// How long an ejected endpoint is skipped.
    #[serde(default = "default_ejection_ms")]
    pub ejection_ms: u64,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            connect_timeout_ms: default_connect_timeout_ms(),
            timeout_ms: default_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            eject_after_failures: default_eject_after_failures(),
            ejection_ms: default_ejection_ms(),
        }
    }
}

fn default_tls_reload_ms() -> u64 {
    1_000
}
fn default_true() -> bool {
    true
}
fn default_cluster_domain() -> String {
    "cluster.local".to_string()
}
fn default_export_label() -> String {
    "mirror.linkerd.io/exported".to_string()
}
fn default_gateway_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 4143))
}
fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 4191))
}
fn default_egress_addr() -> Option<SocketAddr> {
    Some(SocketAddr::from(([0, 0, 0, 0], 4140)))
}
fn default_probe_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 4192))
}
fn default_contact_interval_ms() -> u64 {
    30_000
}
fn default_poll_ms() -> u64 {
    250
}
fn default_max_header_bytes() -> usize {
    32 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_handshake_timeout_ms() -> u64 {
    3_000
}
fn default_shutdown_grace_ms() -> u64 {
    30_000
}
fn default_request_header_timeout_ms() -> u64 {
    10_000
}
fn default_downstream_idle_timeout_ms() -> u64 {
    60_000
}
fn default_max_connections() -> usize {
    20_000
}
fn default_max_handshakes() -> usize {
    1_024
}
fn default_max_handshakes_per_source() -> usize {
    256
}
fn default_max_connections_per_identity() -> usize {
    2_000
}
fn default_admin_max_connections() -> usize {
    64
}
fn default_probe_max_connections() -> usize {
    16
}
fn default_admin_header_timeout_ms() -> u64 {
    5_000
}
fn default_admin_idle_timeout_ms() -> u64 {
    30_000
}
fn default_eject_after_failures() -> u32 {
    3
}
fn default_ejection_ms() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    1_000
}
fn default_timeout_ms() -> u64 {
    15_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}

impl Config {
    /// Reads, parses and validates a config file; relative paths are made absolute
    /// against the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, path, base)
    }

    /// Parses and validates config text; `path` is only used in messages.
    /// The first problem is the error; [`Config::parse_all`] gives them all.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let (cfg, problems) = Config::parse_all(text, path, base)?;
        match problems.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(cfg),
        }
    }

    /// Reads and parses a config file, with every validation problem found
    /// (for `isthmus check`); only unreadable or unparsable YAML is an error.
    pub fn load_all(path: &Path) -> Result<(Config, Vec<ConfigError>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse_all(&text, path, base)
    }

    /// Parses config text; returns it with every validation problem found.
    pub fn parse_all(
        text: &str,
        path: &Path,
        base: &Path,
    ) -> Result<(Config, Vec<ConfigError>), ConfigError> {
        let mut cfg: Config = serde_yaml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            error,
        })?;
        cfg.resolve_paths(base);
        let problems = cfg.problems(path);
        Ok((cfg, problems))
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.tls.cert);
        abs(&mut self.tls.key);
        if let Some(p) = self.tls.trust_anchors.as_mut() {
            abs(p);
        }
        for d in &mut self.tls.trust_domains {
            abs(&mut d.trust_anchors);
        }
        match &mut self.discovery {
            Discovery::Files(FilesDiscovery::Dir(dir))
            | Discovery::Files(FilesDiscovery::Detailed { dir, .. }) => abs(dir),
            Discovery::Kubernetes(k) => {
                if let Some(p) = k.kubeconfig.as_mut() {
                    abs(p)
                }
            }
        }
    }

    /// Every value that is well-formed but not acceptable, in key order.
    fn problems(&self, path: &Path) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        let mut invalid = |field: String, reason: String| {
            problems.push(ConfigError::Invalid {
                path: path.to_path_buf(),
                field,
                reason,
            })
        };
        // Port 0 (tests) binds two different ports.
        if self.listen.gateway == self.listen.admin && self.listen.admin.port() != 0 {
            invalid(
                "listen.admin".into(),
                format!("{} is also listen.gateway", self.listen.admin),
            );
        }
        if let Some(id) = &self.identity {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
                invalid(
                    "identity".into(),
                    format!("{id:?} must be visible ASCII without '\"'"),
                );
            }
        }
        match (&self.tls.trust_anchors, self.tls.trust_domains.is_empty()) {
            (None, true) => invalid(
                "tls.trust_domains".into(),
                "set tls.trust_domains (or the legacy tls.trust_anchors bundle)".into(),
            ),
            (Some(_), false) => invalid(
                "tls.trust_anchors".into(),
                "set tls.trust_domains or tls.trust_anchors, not both (a trust_anchors CA could assert any identity)".into(),
            ),
            _ => {}
        }
        for (i, d) in self.tls.trust_domains.iter().enumerate() {
            if d.identities.is_empty() {
                invalid(
                    format!("tls.trust_domains[{i}].identities"),
                    "must list at least one identity pattern".into(),
                );
            }
            for (j, id) in d.identities.iter().enumerate() {
                if let Err(reason) = IdentityPattern::parse(id) {
                    invalid(format!("tls.trust_domains[{i}].identities[{j}]"), reason);
                }
            }
        }
        for (i, id) in self.allowed_identities.iter().enumerate() {
            if let Err(reason) = IdentityPattern::parse(id) {
                invalid(format!("allowed_identities[{i}]"), reason);
            }
        }
        if self.cluster_domain.is_empty()
            || self.cluster_domain.starts_with('.')
            || self.cluster_domain.ends_with('.')
        {
            invalid(
                "cluster_domain".into(),
                format!(
                    "{:?} is not a DNS domain like cluster.local",
                    self.cluster_domain
                ),
            );
        }
        if self.export_label.is_empty() {
            invalid("export_label".into(), "must not be empty".into());
        }
        if self.limits.max_request_header_bytes < 1024 {
            invalid(
                "limits.max_request_header_bytes".into(),
                "must be at least 1024".into(),
            );
        }
        if self.limits.max_request_headers == 0 {
            invalid(
                "limits.max_request_headers".into(),
                "must be at least 1".into(),
            );
        }
        let at_least_one = [
            (
                "request_header_timeout_ms",
                self.limits.request_header_timeout_ms as usize,
            ),
            ("idle_timeout_ms", self.limits.idle_timeout_ms as usize),
            ("max_connections", self.limits.max_connections),
            (
                "max_connections_per_identity",
                self.limits.max_connections_per_identity,
            ),
            ("admin_max_connections", self.limits.admin_max_connections),
            ("probe_max_connections", self.limits.probe_max_connections),
            (
                "admin_header_timeout_ms",
                self.limits.admin_header_timeout_ms as usize,
            ),
            (
                "admin_idle_timeout_ms",
                self.limits.admin_idle_timeout_ms as usize,
            ),
            ("max_handshakes", self.limits.max_handshakes),
            (
                "max_handshakes_per_source",
                self.limits.max_handshakes_per_source,
            ),
            (
                "handshake_timeout_ms",
                self.limits.handshake_timeout_ms as usize,
            ),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                invalid(format!("limits.{key}"), "must be at least 1".into());
            }
        }
        if self.upstream.eject_after_failures == 0 {
            invalid(
                "upstream.eject_after_failures".into(),
                "must be at least 1".into(),
            );
        }
        problems
    }

    /// The compiled `allowed_identities`.
    pub fn identity_patterns(&self) -> Vec<IdentityPattern> {
        self.allowed_identities
            .iter()
            .filter_map(|s| IdentityPattern::parse(s).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests;
