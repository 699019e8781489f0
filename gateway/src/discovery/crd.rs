//! The `Mapping` custom resource (`isthmus.dev/v1alpha1`).
//!
//! Spec field names follow Emissary's Mapping (snake_case), so an Emissary
//! Mapping ports by changing `apiVersion`; `allowed_identities` is Isthmus's own.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Routes requests for a hostname and path prefix to a Service.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "isthmus.dev",
    version = "v1alpha1",
    kind = "Mapping",
    namespaced,
    status = "MappingStatus",
    shortname = "imap",
    printcolumn = r#"{"name":"Hostname","type":"string","jsonPath":".spec.hostname"}"#,
    printcolumn = r#"{"name":"Prefix","type":"string","jsonPath":".spec.prefix"}"#,
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#
)]
pub struct MappingSpec {
    /// Host the Mapping serves: `name[:port]`, `*.suffix`, or `*` (the default).
    /// A name within `<ns>.svc.<cluster domain>` (a Service's FQDN) is only
    /// accepted from namespace `<ns>` (else Accepted=False, `HostnameNotOwned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Path prefix to match, starting with `/`.
    pub prefix: String,
    /// Match the path exactly instead of as a prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_exact: Option<bool>,
    /// Target Service: `name[.namespace][:port]` (namespace defaults to the Mapping's).
    /// Another namespace needs a ReferenceGrant there allowing `isthmus.dev`
    /// `Mapping`s from this namespace (else Accepted=False, `RefNotPermitted`).
    pub service: String,
    /// Replaces the matched prefix; Emissary's default `/` strips it; `""` disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// Request headers that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// Only this HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Time allowed for each upstream read, in milliseconds (1 to 86,400,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86_400_000))]
    pub timeout_ms: Option<u64>,
    /// Time allowed to connect upstream, in milliseconds (1 to 86,400,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86_400_000))]
    pub connect_timeout_ms: Option<u64>,
    /// Idle timeout of pooled upstream connections, in milliseconds (1 to 86,400,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86_400_000))]
    pub idle_timeout_ms: Option<u64>,
    /// Share of traffic among Mappings with the same match (0-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub weight: Option<u32>,
    /// Retries on upstream failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    /// Endpoint selection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Headers added to the upstream request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_request_headers: Option<BTreeMap<String, String>>,
    /// Headers removed from the upstream request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_request_headers: Option<Vec<String>>,
    /// Headers added to the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_response_headers: Option<BTreeMap<String, String>>,
    /// The upstream speaks gRPC: proxy over HTTP/2 with prior knowledge (h2c).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<bool>,
    /// `Upgrade` protocols passed to the upstream (`websocket`); others are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_upgrade: Option<Vec<String>>,
    /// Peer identities allowed on this Mapping (replaces the global list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_identities: Option<Vec<String>>,
}

/// Emissary's `retry_policy`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct RetryPolicy {
    /// Which failures are retried (`connect-failure`, `5xx`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    /// Extra attempts (0 to 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 5))]
    pub num_retries: Option<u32>,
    /// Timeout per attempt, e.g. `500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
}

/// Emissary's `load_balancer`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct LoadBalancer {
    /// `round_robin` or `least_request`.
    pub policy: String,
}

/// Status written back by the gateway.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct MappingStatus {
    /// `Accepted`, with a reason when false.
    #[serde(default)]
    pub conditions: Vec<MappingCondition>,
}

/// One status condition.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MappingCondition {
    /// Condition type, e.g. `Accepted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// Machine-readable reason: `Accepted`, `Invalid`, `HostnameNotOwned`, `RefNotPermitted`.
    pub reason: String,
    /// Explanation a person can act on.
    pub message: String,
    /// The generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    /// RFC 3339 time of the last status change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}
