//! The mirror objects a remote Service should have here: a pure function of
//! the Link, the remote Service, the remote gateway's state and whether the
//! remote Service has a ready endpoint. No I/O; the writer compares its output
//! with what the cluster holds.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::link::{excluded, LinkSettings};
use super::validate;

/// Label on every mirror Service and EndpointSlice: `"true"`.
pub const LABEL_MIRRORED: &str = "mirror.linkerd.io/mirrored-service";
/// Label naming the target cluster of a mirror.
pub const LABEL_CLUSTER: &str = "mirror.linkerd.io/cluster-name";
/// Annotation: the remote Service's FQDN (`name.ns.svc.<domain>`).
pub const ANN_REMOTE_FQ_NAME: &str = "mirror.linkerd.io/remote-svc-fq-name";
/// Annotation: the identity the remote gateway must present.
pub const ANN_GATEWAY_IDENTITY: &str = "mirror.linkerd.io/remote-gateway-identity";
/// Annotation on the mirror Services this controller owns: `<ns>/<link>`.
/// Objects without it (e.g. a Linkerd service mirror's) are never touched.
pub const ANN_LINK: &str = "isthmus.dev/mirror-link";
/// EndpointSlice label naming the controller that manages it.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "isthmus.dev/mirror";
/// EndpointSlice label naming its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// The two objects that make one mirror.
#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    /// `<name>-<target>` in the remote Service's namespace.
    pub service: Service,
    /// Its endpoints: the remote gateway (one slice per address family present).
    pub slices: Vec<EndpointSlice>,
}

/// Why a remote Service is not mirrored. `reason` is a CamelCase condition reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Condition reason.
    pub reason: &'static str,
    /// What is wrong, naming the field.
    pub message: String,
}

impl Refusal {
    fn invalid(message: String) -> Refusal {
        Refusal {
            reason: "InvalidRemoteService",
            message,
        }
    }
}

/// What the controller knows of the remote gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayView {
    /// Resolved addresses, sorted, deduplicated.
    pub addresses: Vec<IpAddr>,
    /// Whether the gateway counts as alive.
    pub alive: bool,
}

/// The mirror Service's name.
pub fn mirror_name(remote: &str, target: &str) -> String {
    format!("{remote}-{target}")
}

/// The selector that finds every mirror of one Link here.
pub fn mirrors_selector(target: &str) -> String {
    format!("{LABEL_MIRRORED}=true,{LABEL_CLUSTER}={target}")
}

/// Computes the mirror of `remote`, or why it cannot have one.
pub fn mirror(
    link: &LinkSettings,
    link_ref: &str,
    remote: &Service,
    gateway: &GatewayView,
    remote_ready: bool,
) -> Result<Mirror, Refusal> {
    let name = remote.metadata.name.as_deref().unwrap_or_default();
    let namespace = remote.metadata.namespace.as_deref().unwrap_or_default();
    validate::service_name(name).map_err(|e| Refusal::invalid(format!("name {name:?}: {e}")))?;
    validate::dns_label(namespace)
        .map_err(|e| Refusal::invalid(format!("namespace {namespace:?}: {e}")))?;
    let local = mirror_name(name, &link.target);
    if local.len() > 63 {
        return Err(Refusal {
            reason: "NameTooLong",
            message: format!(
                "mirror name {local:?} is longer than 63 characters; shorten the remote Service's name or the target cluster name"
            ),
        });
    }
    let spec = remote.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err(Refusal {
            reason: "UnsupportedServiceType",
            message: "ExternalName Services have no endpoints behind the gateway".into(),
        });
    }
    let ports = ports(spec.ports.as_deref().unwrap_or_default())?;
    let fq_name = format!("{name}.{namespace}.svc.{}", link.target_domain);
    let mut labels = copy(
        remote.metadata.labels.as_ref(),
        &link.excluded_labels,
        "label",
    )?;
    for (k, v) in &labels {
        validate::label_value(v).map_err(|e| Refusal::invalid(format!("label {k}: {e}")))?;
    }
    labels.insert(LABEL_MIRRORED.into(), "true".into());
    labels.insert(LABEL_CLUSTER.into(), link.target.clone());
    let mut annotations = copy(
        remote.metadata.annotations.as_ref(),
        &link.excluded_annotations,
        "annotation",
    )?;
    let size: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > validate::MAX_ANNOTATION_BYTES {
        return Err(Refusal::invalid(format!(
            "annotations take {size} bytes, over Kubernetes' {} byte limit",
            validate::MAX_ANNOTATION_BYTES
        )));
    }
    annotations.insert(ANN_REMOTE_FQ_NAME.into(), fq_name.clone());
    annotations.insert(ANN_GATEWAY_IDENTITY.into(), link.gateway_identity.clone());
    annotations.insert(ANN_LINK.into(), link_ref.into());

    let service = Service {
        metadata: ObjectMeta {
            name: Some(local.clone()),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            ports: Some(ports.clone()),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    let slices = slices(link, &local, namespace, &ports, gateway, remote_ready, {
        let mut a = BTreeMap::new();
        a.insert(ANN_REMOTE_FQ_NAME.to_string(), fq_name);
        a.insert(
            ANN_GATEWAY_IDENTITY.to_string(),
            link.gateway_identity.clone(),
        );
        a
    });
    Ok(Mirror { service, slices })
}

/// The slices of a mirror: every remote port mapped to the gateway port.
fn slices(
    link: &LinkSettings,
    local: &str,
    namespace: &str,
    ports: &[ServicePort],
    gateway: &GatewayView,
    remote_ready: bool,
    annotations: BTreeMap<String, String>,
) -> Vec<EndpointSlice> {
    let ready = gateway.alive && remote_ready;
    let endpoint_ports: Vec<EndpointPort> = ports
        .iter()
        .map(|p| EndpointPort {
            name: p.name.clone(),
            protocol: p.protocol.clone(),
            port: Some(i32::from(link.gateway_port)),
            app_protocol: p.app_protocol.clone(),
        })
        .collect();
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = gateway.addresses.iter().partition(|a| a.is_ipv4());
    let mut families = vec![("IPv4", v4, local.to_string())];
    if !v6.is_empty() {
        families.push(("IPv6", v6, format!("{local}-ipv6")));
    }
    families
        .into_iter()
        .map(|(family, addrs, slice_name)| {
            let mut labels = BTreeMap::new();
            labels.insert(LABEL_SERVICE_NAME.to_string(), local.to_string());
            labels.insert(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string());
            labels.insert(LABEL_MIRRORED.to_string(), "true".to_string());
            labels.insert(LABEL_CLUSTER.to_string(), link.target.clone());
            EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(slice_name),
                    namespace: Some(namespace.into()),
                    labels: Some(labels),
                    annotations: Some(annotations.clone()),
                    ..ObjectMeta::default()
                },
                address_type: family.into(),
                endpoints: addrs
                    .iter()
                    .map(|a| Endpoint {
                        addresses: vec![a.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: Some(ready),
                            serving: Some(ready),
                            terminating: Some(false),
                        }),
                        ..Endpoint::default()
                    })
                    .collect(),
                ports: Some(endpoint_ports.clone()),
            }
        })
        .collect()
}

/// Remote ports, validated, without `nodePort`.
fn ports(remote: &[ServicePort]) -> Result<Vec<ServicePort>, Refusal> {
    if remote.is_empty() {
        return Err(Refusal::invalid("the Service has no ports".into()));
    }
    if remote.len() > 100 {
        return Err(Refusal::invalid(format!(
            "{} ports; at most 100 are mirrored",
            remote.len()
        )));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(remote.len());
    for (i, p) in remote.iter().enumerate() {
        if !(1..=65535).contains(&p.port) {
            return Err(Refusal::invalid(format!(
                "ports[{i}].port {} is not a port",
                p.port
            )));
        }
        let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        if !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP") {
            return Err(Refusal::invalid(format!(
                "ports[{i}].protocol {protocol:?} is not TCP, UDP or SCTP"
            )));
        }
        match &p.name {
            Some(n) if !n.is_empty() => {
                validate::port_name(n)
                    .map_err(|e| Refusal::invalid(format!("ports[{i}].name {n:?}: {e}")))?;
                if !names.insert(n.clone()) {
                    return Err(Refusal::invalid(format!("ports[{i}].name {n:?} repeats")));
                }
            }
            _ if remote.len() > 1 => {
                return Err(Refusal::invalid(format!(
                    "ports[{i}] has no name; a Service with several ports must name them"
                )))
            }
            _ => {}
        }
        if let Some(ap) = &p.app_protocol {
            validate::label_key(ap)
                .map_err(|e| Refusal::invalid(format!("ports[{i}].appProtocol {ap:?}: {e}")))?;
        }
        out.push(ServicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            protocol: Some(protocol),
            port: p.port,
            // The mirror has no selector: no targetPort to resolve locally.
            target_port: None,
            app_protocol: p.app_protocol.clone(),
            node_port: None,
        });
    }
    Ok(out)
}

/// Copies labels or annotations minus `mirror.linkerd.io/*`, kubectl's
/// last-applied copy and the Link's exclusions; keys are validated.
fn copy(
    from: Option<&BTreeMap<String, String>>,
    exclusions: &[String],
    what: &str,
) -> Result<BTreeMap<String, String>, Refusal> {
    let mut out = BTreeMap::new();
    for (k, v) in from.into_iter().flatten() {
        if k.starts_with("mirror.linkerd.io/")
            || k.starts_with("isthmus.dev/mirror")
            || k == "kubectl.kubernetes.io/last-applied-configuration"
            || excluded(k, exclusions)
        {
            continue;
        }
        validate::label_key(k).map_err(|e| Refusal::invalid(format!("{what} key {k:?}: {e}")))?;
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

/// Whether the Service here already says what `want` says (labels,
/// annotations, type, ports); fields the API server fills in are ignored.
pub fn service_matches(have: &Service, want: &Service) -> bool {
    let hs = have.spec.clone().unwrap_or_default();
    let ws = want.spec.clone().unwrap_or_default();
    let norm =
        |ports: Option<Vec<ServicePort>>| -> Vec<(Option<String>, String, i32, Option<String>)> {
            ports
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    (
                        p.name,
                        p.protocol.unwrap_or_else(|| "TCP".into()),
                        p.port,
                        p.app_protocol,
                    )
                })
                .collect()
        };
    have.metadata.labels == want.metadata.labels
        && have.metadata.annotations == want.metadata.annotations
        && hs.type_.as_deref().unwrap_or("ClusterIP") == ws.type_.as_deref().unwrap_or("ClusterIP")
        && hs.selector.unwrap_or_default().is_empty()
        && norm(hs.ports) == norm(ws.ports)
}

/// The labels a mirror slice carries; other labels on a slice here (added
/// by someone else) do not make it differ.
const SLICE_LABELS: [&str; 4] = [
    LABEL_SERVICE_NAME,
    LABEL_MANAGED_BY,
    LABEL_MIRRORED,
    LABEL_CLUSTER,
];

/// A mirror slice here, reduced to what deciding and writing need: a digest
/// of the fields a mirror sets, the version to replace, and whether any
/// endpoint is ready. Thousands of these are kept; whole slices would cost
/// a few KiB each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceHave {
    /// `metadata.resourceVersion`, for the replace.
    pub resource_version: Option<String>,
    /// [`slice_digest`] of the slice.
    pub digest: u64,
    /// Whether an endpoint in it is marked ready.
    pub any_ready: bool,
}

impl SliceHave {
    /// Summarises a slice read or written here.
    pub fn of(s: &EndpointSlice) -> SliceHave {
        SliceHave {
            resource_version: s.metadata.resource_version.clone(),
            digest: slice_digest(s),
            any_ready: s
                .endpoints
                .iter()
                .any(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true)),
        }
    }

    /// Whether the slice here already says what `want` says.
    pub fn matches(&self, want: &EndpointSlice) -> bool {
        self.digest == slice_digest(want)
    }
}

/// A digest of what a mirror slice sets: its own labels, annotations,
/// address type, endpoints and ports (not owner references, not what the
/// API server fills in). Equal digests: nothing to write.
pub fn slice_digest(s: &EndpointSlice) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let labels = s.metadata.labels.as_ref();
    for k in SLICE_LABELS {
        labels.and_then(|l| l.get(k)).hash(&mut h);
    }
    s.metadata.annotations.hash(&mut h);
    s.address_type.hash(&mut h);
    // Endpoint and EndpointPort implement no Hash: their JSON is canonical
    // (fields in declaration order, maps sorted).
    serde_json::to_vec(&s.endpoints)
        .unwrap_or_default()
        .hash(&mut h);
    serde_json::to_vec(&s.ports)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

/// Whether the slice here already says what `want` says.
pub fn slice_matches(have: &EndpointSlice, want: &EndpointSlice) -> bool {
    SliceHave::of(have).matches(want)
}

/// `want` as an update of `have`: the fields the API server owns (clusterIP,
/// resourceVersion, uid, ...) kept, ours replaced.
pub fn service_update(have: &Service, want: &Service) -> Service {
    let mut next = have.clone();
    next.metadata.labels = want.metadata.labels.clone();
    next.metadata.annotations = want.metadata.annotations.clone();
    let mut spec = have.spec.clone().unwrap_or_default();
    let ws = want.spec.clone().unwrap_or_default();
    spec.ports = ws.ports;
    spec.type_ = ws.type_;
    spec.selector = None;
    next.spec = Some(spec);
    next.status = None;
    next
}

#[cfg(test)]
mod tests;
