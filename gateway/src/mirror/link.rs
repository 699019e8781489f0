//! The `Link` custom resource (`isthmus.dev/v1alpha1`) and its validated form.
//!
//! Spec field names follow Linkerd's Link (`multicluster.linkerd.io/v1alpha3`),
//! so a Linkerd Link ports by changing `apiVersion`. [`LinkSettings::from_spec`]
//! turns a spec into the settings the controller runs on, or a reason to refuse it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::validate;

/// A link to a target cluster whose exported Services are mirrored here.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "isthmus.dev",
    version = "v1alpha1",
    kind = "Link",
    namespaced,
    status = "LinkStatus",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.targetClusterName"}"#,
    printcolumn = r#"{"name":"Gateway","type":"string","jsonPath":".spec.gatewayAddress"}"#,
    printcolumn = r#"{"name":"Alive","type":"boolean","jsonPath":".status.gateway.alive"}"#,
    printcolumn = r#"{"name":"Mirrored","type":"integer","jsonPath":".status.mirroredServices"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LinkSpec {
    /// The target cluster's name; mirrors are named `<service>-<targetClusterName>`.
    pub target_cluster_name: String,
    /// The target cluster's DNS domain (default `cluster.local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cluster_domain: Option<String>,
    /// Linkerd's field, accepted and ignored (Isthmus has no control-plane namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cluster_linkerd_namespace: Option<String>,
    /// Secret in the Link's namespace, type `mirror.linkerd.io/remote-kubeconfig`, key `kubeconfig`.
    pub cluster_credentials_secret: String,
    /// The remote gateway: comma-separated IP addresses or DNS names.
    pub gateway_address: String,
    /// The remote gateway's mTLS port (a string in Linkerd's Link).
    #[schemars(length(max = 5))]
    pub gateway_port: String,
    /// The identity the remote gateway's certificate must carry.
    pub gateway_identity: String,
    /// How the remote gateway is probed.
    #[serde(default)]
    pub probe_spec: ProbeSpec,
    /// Remote Services to mirror (default `mirror.linkerd.io/exported=true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Linkerd's flat-mode selector, accepted and not used (gateway mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_discovery_selector: Option<LabelSelector>,
    /// Linkerd's federated-service selector, accepted and not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federated_service_selector: Option<LabelSelector>,
    /// Label keys not copied to mirrors (`prefix/*` globs allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_labels: Vec<String>,
    /// Annotation keys not copied to mirrors (`prefix/*` globs allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_annotations: Vec<String>,
}

/// `probeSpec`: Linkerd's names and string forms (`period: 3s`, `port: "4191"`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    /// HTTP path probed (default `/ready`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Port probed on the gateway addresses (default `4191`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 5))]
    pub port: Option<String>,
    /// Time between probes, a Go duration (default `3s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// Time one probe may take (default `30s`; capped at the period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Consecutive failures before the gateway counts as dead (default `3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 3))]
    pub failure_threshold: Option<String>,
}

/// What the mirror controller reports on the Link.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    /// Link-level conditions: `Valid`, `CredentialsValid`, `RemoteSynced` (False = stale).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The remote gateway as probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayStatus>,
    /// How many remote Services are mirrored now.
    #[serde(default)]
    pub mirrored_services: u32,
    /// One entry per selected remote Service (Linkerd's v1alpha2 shape).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirror_services: Vec<ServiceStatus>,
}

/// The remote gateway's health as the last probes saw it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// Whether the gateway counts as alive (fewer than `failureThreshold` failures in a row).
    pub alive: bool,
    /// Latency of the last successful probe, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Percentiles of the last 100 successful probes' latency (`isthmus gateways`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyPercentiles>,
    /// The addresses the gateway address resolved to at the last probe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// RFC 3339 time of the last probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<String>,
}

/// Probe latency percentiles over the recent successful probes, in microseconds.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LatencyPercentiles {
    /// Median.
    pub p50_micros: u64,
    /// 95th percentile.
    pub p95_micros: u64,
    /// 99th percentile.
    pub p99_micros: u64,
    /// How many probes they are computed from (at most 100).
    pub samples: u32,
}

/// Whether one remote Service is mirrored, and why not.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// `Mirrored` condition.
    pub conditions: Vec<Condition>,
    /// `isthmus.dev/mirror` (Linkerd writes `linkerd.io/service-mirror`).
    pub controller_name: String,
    /// The remote Service.
    pub remote_ref: ObjectRef,
    /// The mirror Service here.
    pub local_ref: ObjectRef,
}

/// A namespaced object reference.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct ObjectRef {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
}

/// One status condition (the Kubernetes shape).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason (CamelCase).
    pub reason: String,
    /// What a person should know or do.
    pub message: String,
    /// RFC 3339 time of the last status change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// A Link's spec, validated: what the controller runs on.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkSettings {
    /// The target cluster's name (a DNS label).
    pub target: String,
    /// The target cluster's domain.
    pub target_domain: String,
    /// The credentials Secret's name.
    pub credentials_secret: String,
    /// Gateway addresses as written (IPs or DNS names), in order.
    pub gateway_addresses: Vec<String>,
    /// Gateway mTLS port.
    pub gateway_port: u16,
    /// Gateway identity.
    pub gateway_identity: String,
    /// Probe settings.
    pub probe: ProbeSettings,
    /// Selector of remote Services in the API's string form (`k=v,k2 in (a,b)`).
    pub selector: String,
    /// Excluded label keys or `prefix/*` globs.
    pub excluded_labels: Vec<String>,
    /// Excluded annotation keys or `prefix/*` globs.
    pub excluded_annotations: Vec<String>,
}

/// Validated `probeSpec`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSettings {
    /// Path (starts with `/`).
    pub path: String,
    /// Port.
    pub port: u16,
    /// Period between probes.
    pub period: Duration,
    /// Timeout of one probe (at most the period).
    pub timeout: Duration,
    /// Failures in a row before the gateway is dead (at least 1).
    pub failure_threshold: u32,
}

/// The default export selector, as Linkerd's.
pub const DEFAULT_SELECTOR: &str = "mirror.linkerd.io/exported=true";

impl LinkSettings {
    /// Validates a spec; the error names the field and what is wrong.
    pub fn from_spec(spec: &LinkSpec) -> Result<LinkSettings, String> {
        let target = spec.target_cluster_name.trim().to_string();
        validate::dns_label(&target).map_err(|e| format!("targetClusterName {target:?}: {e}"))?;
        let target_domain = spec
            .target_cluster_domain
            .clone()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "cluster.local".into());
        validate::dns_subdomain(&target_domain)
            .map_err(|e| format!("targetClusterDomain {target_domain:?}: {e}"))?;
        validate::dns_subdomain(&spec.cluster_credentials_secret).map_err(|e| {
            format!(
                "clusterCredentialsSecret {:?}: {e}",
                spec.cluster_credentials_secret
            )
        })?;
        let gateway_addresses: Vec<String> = spec
            .gateway_address
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        if gateway_addresses.is_empty() {
            return Err("gatewayAddress: empty; give one or more IPs or DNS names".into());
        }
        for a in &gateway_addresses {
            if a.parse::<std::net::IpAddr>().is_err() {
                validate::dns_subdomain(a).map_err(|e| format!("gatewayAddress {a:?}: {e}"))?;
            }
        }
        let gateway_port = port(&spec.gateway_port).map_err(|e| format!("gatewayPort: {e}"))?;
        let gateway_identity = spec.gateway_identity.trim().to_string();
        if gateway_identity.is_empty()
            || gateway_identity
                .bytes()
                .any(|b| b.is_ascii_control() || b == b' ' || b == b'*')
        {
            return Err(format!(
                "gatewayIdentity {gateway_identity:?}: must be a DNS name or SPIFFE ID"
            ));
        }
        let probe = ProbeSettings::from_spec(&spec.probe_spec)?;
        let selector = match &spec.selector {
            None => DEFAULT_SELECTOR.to_string(),
            Some(s) => selector_string(s).map_err(|e| format!("selector: {e}"))?,
        };
        for (field, keys) in [
            ("excludedLabels", &spec.excluded_labels),
            ("excludedAnnotations", &spec.excluded_annotations),
        ] {
            for k in keys {
                let key = k.strip_suffix("/*").unwrap_or(k);
                let ok = if k.ends_with("/*") {
                    validate::dns_subdomain(key)
                } else {
                    validate::label_key(key)
                };
                ok.map_err(|e| format!("{field} {k:?}: {e}"))?;
            }
        }
        Ok(LinkSettings {
            target,
            target_domain,
            credentials_secret: spec.cluster_credentials_secret.clone(),
            gateway_addresses,
            gateway_port,
            gateway_identity,
            probe,
            selector,
            excluded_labels: spec.excluded_labels.clone(),
            excluded_annotations: spec.excluded_annotations.clone(),
        })
    }
}

impl ProbeSettings {
    fn from_spec(spec: &ProbeSpec) -> Result<ProbeSettings, String> {
        let path = spec.path.clone().unwrap_or_else(|| "/ready".into());
        if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!(
                "probeSpec.path {path:?}: must start with / and hold no spaces"
            ));
        }
        let port = match &spec.port {
            None => 4191,
            Some(p) => port(p).map_err(|e| format!("probeSpec.port: {e}"))?,
        };
        let period = match &spec.period {
            None => Duration::from_secs(3),
            Some(p) => go_duration(p).map_err(|e| format!("probeSpec.period {p:?}: {e}"))?,
        };
        if period < Duration::from_millis(100) || period > Duration::from_secs(3600) {
            return Err(format!(
                "probeSpec.period {period:?}: must be between 100ms and 1h"
            ));
        }
        let timeout = match &spec.timeout {
            None => Duration::from_secs(30),
            Some(t) => go_duration(t).map_err(|e| format!("probeSpec.timeout {t:?}: {e}"))?,
        };
        // A probe still waiting when the next is due is as good as failed.
        let timeout = timeout.min(period).max(Duration::from_millis(10));
        let failure_threshold = match &spec.failure_threshold {
            None => 3,
            Some(f) => f
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| {
                    format!("probeSpec.failureThreshold {f:?}: must be a number from 1 to 100")
                })?,
        };
        Ok(ProbeSettings {
            path,
            port,
            period,
            timeout,
            failure_threshold,
        })
    }
}

fn port(s: &str) -> Result<u16, String> {
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?} is not a port from 1 to 65535"))
}

/// Parses a Go duration as Linkerd writes them: `3s`, `500ms`, `1m30s`, `2h`.
pub fn go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or("a number needs a unit (ms, s, m, h)")?;
        if digits == 0 {
            return Err("expected a number".into());
        }
        let value: f64 = rest[..digits].parse().map_err(|_| "bad number")?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("unknown unit {u:?}")),
        };
        rest = &rest[unit_len..];
        let secs = value * scale;
        if !secs.is_finite() || secs > 86_400.0 * 365.0 {
            return Err("too long".into());
        }
        total += Duration::from_secs_f64(secs);
    }
    Ok(total)
}

/// Renders a `LabelSelector` in the string form list/watch requests take.
pub fn selector_string(s: &LabelSelector) -> Result<String, String> {
    let mut parts = Vec::new();
    for (k, v) in s.match_labels.iter().flatten() {
        validate::label_key(k).map_err(|e| format!("matchLabels key {k:?}: {e}"))?;
        validate::label_value(v).map_err(|e| format!("matchLabels[{k}] {v:?}: {e}"))?;
        parts.push(format!("{k}={v}"));
    }
    for e in s.match_expressions.iter().flatten() {
        validate::label_key(&e.key)
            .map_err(|err| format!("matchExpressions key {:?}: {err}", e.key))?;
        let values = e.values.clone().unwrap_or_default();
        for v in &values {
            validate::label_value(v)
                .map_err(|err| format!("matchExpressions[{}] value {v:?}: {err}", e.key))?;
        }
        let part = match (e.operator.as_str(), values.is_empty()) {
            ("In", false) => format!("{} in ({})", e.key, values.join(",")),
            ("NotIn", false) => format!("{} notin ({})", e.key, values.join(",")),
            ("Exists", true) => e.key.clone(),
            ("DoesNotExist", true) => format!("!{}", e.key),
            (op @ ("In" | "NotIn"), true) => {
                return Err(format!("operator {op} on {:?} needs values", e.key))
            }
            (op @ ("Exists" | "DoesNotExist"), false) => {
                return Err(format!("operator {op} on {:?} takes no values", e.key))
            }
            (op, _) => return Err(format!("unknown operator {op:?}")),
        };
        parts.push(part);
    }
    if parts.is_empty() {
        return Err("empty selector would mirror every Service; name the labels".into());
    }
    Ok(parts.join(","))
}

/// Whether `key` is excluded by one of `patterns` (exact keys or `prefix/*`).
pub fn excluded(key: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| match p.strip_suffix("/*") {
        Some(prefix) => key
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/')),
        None => p == key,
    })
}

/// Selects labels by a `matchLabels`-only view (used by tests and `link`).
pub fn match_labels(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        match_expressions: None,
    }
}

#[cfg(test)]
mod tests;
