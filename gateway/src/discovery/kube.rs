//! The Kubernetes source: kube-rs watchers for Services, EndpointSlices and
//! Mappings feeding the pure [`Index`], and Mapping status write-back.
//!
//! ```text
//! watcher(Service) ─┐
//! watcher(EndpointSlice) ─┼─▶ one task: Init/InitApply/InitDone = atomic relist,
//! watcher(Mapping) ─┘        Apply/Delete; batch; publish once every watch synced
//!                                    └─▶ status writer: Accepted=True/False per Mapping
//! ```
//! Watch errors back off and resume (a stale resourceVersion re-lists); while
//! the API server is away, the last published table keeps serving. Objects are
//! watched as raw JSON and decoded one by one, so one that does not fit its
//! type (a Mapping `weight` beyond `u32`) is refused alone: logged, counted,
//! and for a Mapping marked `Accepted=False`; the watch goes on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{select_all, BoxStream};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::watch;
use tracing::Instrument;

use super::crd::{Mapping, MappingCondition, MappingStatus};
use super::httproute::{Gateway, GatewayClass, HttpRoute, ReferenceGrant, CONTROLLER_NAME};
use super::index::Converted;
use super::index::RouteStatus;
use super::lenient::Lenient;
use super::trafficsplit::TrafficSplit;
use super::{Index, Object, ObjectKey, Publisher};
use crate::admin::Readiness;
use crate::metrics::{Metrics, ObjectKind};

/// Why the Kubernetes client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("kubernetes discovery: {0}")]
pub struct KubeError(String);

/// Builds a client from an explicit kubeconfig, else in-cluster credentials,
/// else `$KUBECONFIG` / `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| {
                KubeError(format!("cannot read kubeconfig {}: {e}", path.display()))
            })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| KubeError(format!("kubeconfig {}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError(format!("no in-cluster or kubeconfig credentials: {e}")))?,
    };
    Client::try_from(config).map_err(|e| KubeError(e.to_string()))
}

/// What the watchers observe.
#[derive(Clone, Debug)]
pub struct WatchScope {
    /// Namespaces to watch; empty means all (one cluster-wide watch per kind).
    pub namespaces: Vec<String>,
    /// Label selector for Services.
    pub service_selector: Option<String>,
    /// How often a synced source asks the API server for `/version`; a success
    /// counts as a sync (the watches are quiet, not lost).
    pub contact_interval: Duration,
    /// How often API discovery is asked again for CRDs that were not
    /// installed (Mapping, TrafficSplit); a watch starts when one appears.
    pub crd_recheck_interval: Duration,
}

/// One event from one watch stream.
struct Tagged {
    stream: usize,
    kind: ObjectKind,
    namespace: Option<String>,
    event: Result<Event<Watched>, watcher::Error>,
}

/// A watched object: decoded into its type, or why it could not be.
enum Watched {
    Decoded(Object),
    Undecodable(Undecodable),
}

/// An object that does not decode into its type.
struct Undecodable {
    key: ObjectKey,
    generation: Option<i64>,
    /// For a Mapping: the status it carries (to compare before writing).
    status: Option<MappingStatus>,
    reason: String,
}

/// One watched object as the index takes it.
fn decode<K>(obj: Lenient<K>, wrap: fn(K) -> Object) -> Watched {
    let Lenient {
        metadata: meta,
        decoded,
    } = obj;
    let rejected = match decoded {
        Ok(k) => return Watched::Decoded(wrap(k)),
        Err(r) => r,
    };
    Watched::Undecodable(Undecodable {
        key: ObjectKey::new(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        ),
        generation: meta.generation,
        status: rejected
            .status
            .and_then(|s| serde_json::from_value::<MappingStatus>(s).ok()),
        reason: rejected.reason,
    })
}

fn watch_stream<K>(
    client: &Client,
    namespace: Option<&str>,
    config: watcher::Config,
    stream: usize,
    kind: ObjectKind,
    wrap: fn(K) -> Object,
) -> BoxStream<'static, Tagged>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    watch_dynamic(
        client,
        namespace,
        ApiResource::erase::<K>(&()),
        config,
        stream,
        kind,
        wrap,
    )
}

/// A watch of `resource`, each object decoded into `K` on its own.
fn watch_dynamic<K: DeserializeOwned + Clone + std::fmt::Debug + Send + 'static>(
    client: &Client,
    namespace: Option<&str>,
    resource: ApiResource,
    config: watcher::Config,
    stream: usize,
    kind: ObjectKind,
    wrap: fn(K) -> Object,
) -> BoxStream<'static, Tagged> {
    let api: Api<Lenient<K>> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let ns = namespace.map(str::to_string);
    watcher::watcher(api, config)
        .default_backoff()
        .map(move |event| Tagged {
            stream,
            kind,
            namespace: ns.clone(),
            event: event.map(|e| match e {
                Event::Apply(o) => Event::Apply(decode(o, wrap)),
                Event::Delete(o) => Event::Delete(decode(o, wrap)),
                Event::InitApply(o) => Event::InitApply(decode(o, wrap)),
                Event::Init => Event::Init,
                Event::InitDone => Event::InitDone,
            }),
        })
        .boxed()
}

/// A CRD-backed kind: watched only where its CRD is installed. A cluster
/// without it logs one warning, readiness does not wait for it, and API
/// discovery is asked again every [`WatchScope::crd_recheck_interval`] until it
/// appears; its watch starts then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OptionalKind {
    /// `isthmus.dev/v1alpha1 Mapping`.
    Mapping,
    /// `split.smi-spec.io TrafficSplit` (the version the server prefers).
    TrafficSplit,
    /// `gateway.networking.k8s.io/v1` HTTPRoute, Gateway and GatewayClass.
    GatewayApi,
    /// `gateway.networking.k8s.io` ReferenceGrant (`v1beta1` in the standard
    /// channel): cross-namespace references of Mappings and HTTPRoutes.
    ReferenceGrant,
}

impl OptionalKind {
    const ALL: [OptionalKind; 4] = [
        OptionalKind::Mapping,
        OptionalKind::TrafficSplit,
        OptionalKind::GatewayApi,
        OptionalKind::ReferenceGrant,
    ];

    fn group(self) -> &'static str {
        match self {
            OptionalKind::Mapping => "isthmus.dev",
            OptionalKind::TrafficSplit => super::trafficsplit::GROUP,
            OptionalKind::GatewayApi | OptionalKind::ReferenceGrant => super::httproute::GROUP,
        }
    }

    /// The kinds that must all be served.
    fn kinds(self) -> &'static [&'static str] {
        match self {
            OptionalKind::Mapping => &["Mapping"],
            OptionalKind::TrafficSplit => &["TrafficSplit"],
            OptionalKind::GatewayApi => &["HTTPRoute", "Gateway", "GatewayClass"],
            OptionalKind::ReferenceGrant => &["ReferenceGrant"],
        }
    }

    /// The CRD name(s) and how to install them, for the warning.
    fn missing_message(self) -> &'static str {
        match self {
            OptionalKind::Mapping => "the Mapping CRD (mappings.isthmus.dev) is not installed: Mappings are off until it is; install it with `isthmus crds | kubectl apply -f -` (or crds/)",
            OptionalKind::GatewayApi => "the Gateway API CRDs (httproutes, gateways, gatewayclasses.gateway.networking.k8s.io, v1) are not installed: HTTPRoutes are off until they are; install them with the Gateway API standard channel (kubectl apply -f https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.2.1/standard-install.yaml)",
            OptionalKind::ReferenceGrant => "the Gateway API ReferenceGrant CRD (referencegrants.gateway.networking.k8s.io) is not installed: Mappings and HTTPRoutes cannot refer to Services in other namespaces until it is; install it with the Gateway API standard channel",
            OptionalKind::TrafficSplit => "the SMI TrafficSplit CRD (trafficsplits.split.smi-spec.io) is not installed: egress splits come from Mappings only until it is; install it with the SMI split CRD (for example the one Linkerd's linkerd-smi extension ships)",
        }
    }
}

/// What API discovery says of an optional kind.
enum Presence {
    /// Served: the resources to watch, in [`OptionalKind::kinds`] order.
    Installed(Vec<ApiResource>),
    /// Definitely not served (group or kind missing).
    Absent(String),
    /// Discovery failed (API server unreachable): ask again.
    Unknown(String),
}

async fn presence(client: &Client, kind: OptionalKind) -> Presence {
    // Bounded: an API server that accepts but never answers is "cannot say".
    let asked = tokio::time::timeout(
        Duration::from_secs(10),
        kube::discovery::group(client, kind.group()),
    )
    .await;
    let Ok(answer) = asked else {
        return Presence::Unknown("API discovery timed out".into());
    };
    match answer {
        Ok(g) => {
            let found: Option<Vec<ApiResource>> = kind
                .kinds()
                .iter()
                .map(|k| match kind {
                    // Served at v1beta1 while the group prefers v1: the kind
                    // at its most stable version, not the group's preferred one.
                    OptionalKind::ReferenceGrant => g
                        .resources_by_stability()
                        .into_iter()
                        .find(|(r, _)| r.kind == *k)
                        .map(|(r, _)| r),
                    _ => g.recommended_kind(k).map(|(r, _)| r),
                })
                .collect();
            match found {
                Some(rs) => Presence::Installed(rs),
                None => Presence::Absent(format!(
                    "{} is served without {}",
                    kind.group(),
                    kind.kinds().join(", ")
                )),
            }
        }
        Err(kube::Error::Discovery(e)) => Presence::Absent(e.to_string()),
        Err(kube::Error::Api(e)) if e.code == 404 => Presence::Absent(e.to_string()),
        Err(e) => Presence::Unknown(e.to_string()),
    }
}

/// What the CRD discovery task tells the watch loop.
enum CrdEvent {
    /// An optional kind is served: watch these resources.
    Found(OptionalKind, Vec<ApiResource>),
    /// Every optional kind had its first answer (found or not).
    Answered,
}

/// API discovery for the optional kinds: first a definite answer for each
/// (asking again, backing off up to 5 s, while the API server cannot say), then
/// every `interval` for the kinds not installed, until all are or shutdown.
async fn crd_discovery(
    client: Client,
    interval: Duration,
    events: tokio::sync::mpsc::UnboundedSender<CrdEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut missing = Vec::new();
    for kind in OptionalKind::ALL {
        let mut delay = Duration::from_millis(100);
        loop {
            match presence(&client, kind).await {
                Presence::Installed(rs) => {
                    tracing::info!(group = kind.group(), versions = ?rs.iter().map(|r| r.version.as_str()).collect::<Vec<_>>(), "watching {}", kind.kinds().join(", "));
                    if events.send(CrdEvent::Found(kind, rs)).is_err() {
                        return;
                    }
                    break;
                }
                Presence::Absent(why) => {
                    tracing::warn!(detail = %why, "{}", kind.missing_message());
                    missing.push(kind);
                    break;
                }
                Presence::Unknown(e) => {
                    tracing::debug!(group = kind.group(), error = %e, "API discovery failed; asking again");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
    if events.send(CrdEvent::Answered).is_err() {
        return;
    }
    let mut ticker = crate::poll::Ticker::new(interval.max(Duration::from_millis(50)), shutdown);
    ticker.tick().await; // the immediate first tick: discovery was just asked
    while !missing.is_empty() && ticker.tick().await {
        let mut still = Vec::new();
        for kind in missing {
            match presence(&client, kind).await {
                Presence::Installed(rs) => {
                    tracing::info!(group = kind.group(), kinds = ?kind.kinds(), "CRD installed; starting its watch");
                    if events.send(CrdEvent::Found(kind, rs)).is_err() {
                        return;
                    }
                }
                Presence::Absent(_) => still.push(kind),
                Presence::Unknown(e) => {
                    tracing::debug!(group = kind.group(), error = %e, "API discovery failed; asking again later");
                    still.push(kind);
                }
            }
        }
        missing = still;
    }
}

/// The watch streams of an optional kind, one per namespace scope, numbered from `next`.
fn optional_streams(
    client: &Client,
    namespaces: &[Option<&str>],
    kind: OptionalKind,
    resources: &[ApiResource],
    next: &mut usize,
) -> Vec<BoxStream<'static, Tagged>> {
    let mut streams = Vec::new();
    for (i, ns) in namespaces.iter().enumerate() {
        for resource in resources {
            // Cluster-scoped (GatewayClass): one watch of everything.
            if resource.kind == "GatewayClass" && i > 0 {
                continue;
            }
            let ns = if resource.kind == "GatewayClass" {
                &None
            } else {
                ns
            };
            let n = *next;
            *next += 1;
            let cfg = watcher::Config::default();
            streams.push(match kind {
                OptionalKind::GatewayApi => match resource.kind.as_str() {
                    "HTTPRoute" => watch_dynamic::<HttpRoute>(
                        client,
                        *ns,
                        resource.clone(),
                        cfg,
                        n,
                        ObjectKind::HttpRoute,
                        |o| Object::HttpRoute(Box::new(o)),
                    ),
                    "Gateway" => watch_dynamic::<Gateway>(
                        client,
                        *ns,
                        resource.clone(),
                        cfg,
                        n,
                        ObjectKind::Gateway,
                        |o| Object::Gateway(Box::new(o)),
                    ),
                    _ => watch_dynamic::<GatewayClass>(
                        client,
                        None,
                        resource.clone(),
                        cfg,
                        n,
                        ObjectKind::GatewayClass,
                        |o| Object::GatewayClass(Box::new(o)),
                    ),
                },
                OptionalKind::ReferenceGrant => watch_dynamic::<ReferenceGrant>(
                    client,
                    *ns,
                    resource.clone(),
                    cfg,
                    n,
                    ObjectKind::ReferenceGrant,
                    |o| Object::ReferenceGrant(Box::new(o)),
                ),
                OptionalKind::Mapping => watch_dynamic::<Mapping>(
                    client,
                    *ns,
                    resource.clone(),
                    cfg,
                    n,
                    ObjectKind::Mapping,
                    |o| Object::Mapping(Box::new(o)),
                ),
                OptionalKind::TrafficSplit => watch_dynamic::<TrafficSplit>(
                    client,
                    *ns,
                    resource.clone(),
                    cfg,
                    n,
                    ObjectKind::TrafficSplit,
                    |o| Object::TrafficSplit(Box::new(o)),
                ),
            });
        }
    }
    streams
}

/// The status a Mapping should carry, compared against what it has.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DesiredStatus {
    generation: Option<i64>,
    accepted: Result<(), String>,
    /// The condition reason (see [`super::index::MappingState::reason`]).
    reason: &'static str,
}

impl DesiredStatus {
    fn condition(&self) -> MappingCondition {
        let (status, reason, message) = match &self.accepted {
            Ok(()) => ("True", "Accepted", "route is active".to_string()),
            Err(why) => ("False", self.reason, why.clone()),
        };
        MappingCondition {
            type_: "Accepted".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: self.generation,
            last_transition_time: Some(now_rfc3339()),
        }
    }

    fn matches(&self, current: Option<&MappingStatus>) -> bool {
        let want = self.condition();
        current
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Accepted"))
            .is_some_and(|c| {
                c.status == want.status
                    && c.reason == want.reason
                    && c.message == want.message
                    && c.observed_generation == want.observed_generation
            })
    }
}

/// The current time as RFC 3339, for status conditions.
pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Runs the watchers until `shutdown` flips.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: Client,
    scope: WatchScope,
    mut index: Index,
    publisher: Publisher,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let namespaces: Vec<Option<&str>> = if scope.namespaces.is_empty() {
        vec![None]
    } else {
        scope.namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    let mut streams = Vec::new();
    for ns in &namespaces {
        let mut svc_cfg = watcher::Config::default();
        if let Some(sel) = &scope.service_selector {
            svc_cfg = svc_cfg.labels(sel);
        }
        let n = streams.len();
        streams.push(watch_stream::<Service>(
            &client,
            *ns,
            svc_cfg,
            n,
            ObjectKind::Service,
            |o| Object::Service(Box::new(o)),
        ));
        let n = streams.len();
        streams.push(watch_stream::<EndpointSlice>(
            &client,
            *ns,
            watcher::Config::default(),
            n,
            ObjectKind::EndpointSlice,
            |o| Object::EndpointSlice(Box::new(o)),
        ));
    }
    // CRD-backed kinds: watched (and waited for) where installed at the
    // first answer of API discovery; the others are warned about once and
    // picked up when they appear. Service and EndpointSlice watches run
    // meanwhile (an API server that is down shows in their errors).
    let mut next_stream = streams.len();
    let mut crds_answered = false;
    let (crd_tx, mut crd_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(
        crd_discovery(
            client.clone(),
            scope.crd_recheck_interval,
            crd_tx,
            shutdown.clone(),
        )
        .instrument(tracing::info_span!("crd-discovery")),
    );
    let mut unsynced: HashSet<usize> = (0..streams.len()).collect();
    let mut events = select_all(streams);
    let mut buffers: HashMap<usize, Vec<Converted>> = HashMap::new();
    let mut statuses: HashMap<ObjectKey, Option<MappingStatus>> = HashMap::new();
    let mut routes_seen: HashMap<ObjectKey, Option<serde_json::Value>> = HashMap::new();
    let (status_tx, status_rx) = watch::channel(Arc::new(BTreeMap::new()));
    tokio::spawn(write_statuses(
        client.clone(),
        ApiResource::erase::<Mapping>(&()),
        status_rx,
        |d: &DesiredStatus| json!({"status": MappingStatus { conditions: vec![d.condition()] }}),
        metrics.clone(),
    ));
    let (route_status_tx, route_status_rx) = watch::channel(Arc::new(BTreeMap::new()));
    tokio::spawn(write_statuses(
        client.clone(),
        httproute_resource(),
        route_status_rx,
        |body: &serde_json::Value| body.clone(),
        metrics.clone(),
    ));
    tokio::spawn(keep_contact(
        client.clone(),
        publisher.clone(),
        readiness.clone(),
        scope.contact_interval,
        shutdown.clone(),
    ));

    loop {
        let first = tokio::select! {
            e = events.next() => match e {
                Some(e) => Some(e),
                None => return,
            },
            Some(crd) = crd_rx.recv() => match crd {
                CrdEvent::Found(kind, resources) => {
                    // Found at the first answer: readiness waits for its
                    // list. Found later: it joins without holding anything
                    // up; its objects route once it has listed.
                    for st in optional_streams(&client, &namespaces, kind, &resources, &mut next_stream) {
                        if !crds_answered {
                            unsynced.insert(next_stream - 1);
                        }
                        events.push(st);
                    }
                    continue;
                }
                CrdEvent::Answered => {
                    crds_answered = true;
                    if !unsynced.is_empty() || readiness.is_ready() {
                        continue;
                    }
                    // Every watch had listed already: publish now.
                    None
                }
            },
            _ = shutdown.changed() => return,
        };
        let seen = Instant::now();
        let mut changed = first.is_none();
        let mut next = first;
        // Apply everything already waiting before publishing once.
        let mut batch = 0;
        while let Some(t) = next.take() {
            changed |= handle(
                t,
                &mut index,
                &mut buffers,
                &mut unsynced,
                &mut statuses,
                &mut routes_seen,
                &publisher,
                &metrics,
            );
            batch += 1;
            if batch < 10_000 {
                next = events.next().now_or_never().flatten();
            }
        }
        if !changed || !unsynced.is_empty() || !crds_answered {
            continue;
        }
        publisher.publish(&mut index, seen);
        if !readiness.is_ready() {
            readiness.set_discovery_synced();
            tracing::info!("kubernetes discovery synced");
        }
        let desired: BTreeMap<ObjectKey, DesiredStatus> = index
            .mapping_states()
            .map(|(k, s)| {
                (
                    k.clone(),
                    DesiredStatus {
                        generation: s.generation,
                        accepted: s.accepted,
                        reason: s.reason,
                    },
                )
            })
            .filter(|(k, d)| !d.matches(statuses.get(k).and_then(Option::as_ref)))
            .collect();
        status_tx.send_replace(Arc::new(desired));
        let routes: BTreeMap<ObjectKey, serde_json::Value> = index
            .httproute_states()
            .filter_map(|(k, s)| {
                let current = routes_seen.get(k).and_then(Option::as_ref);
                route_status_patch(s, current).map(|p| (k.clone(), p))
            })
            .collect();
        route_status_tx.send_replace(Arc::new(routes));
    }
}

/// A parentRef with the CRD schema's defaults (`group`, `kind`) filled in, as
/// the API server stores it: what is written compares equal to what is read back.
fn with_parent_defaults(mut parent: serde_json::Value) -> serde_json::Value {
    if let Some(o) = parent.as_object_mut() {
        o.entry("group")
            .or_insert_with(|| super::httproute::GROUP.into());
        o.entry("kind").or_insert_with(|| "Gateway".into());
    }
    parent
}

fn httproute_resource() -> ApiResource {
    ApiResource {
        group: super::httproute::GROUP.into(),
        version: "v1".into(),
        api_version: format!("{}/v1", super::httproute::GROUP),
        kind: "HTTPRoute".into(),
        plural: "httproutes".into(),
    }
}

/// The `status` merge patch an HTTPRoute needs, or `None` when it already
/// says that. Entries of other controllers are kept; ours are replaced.
fn route_status_patch(
    want: &RouteStatus,
    current: Option<&serde_json::Value>,
) -> Option<serde_json::Value> {
    let condition = |type_: &str, c: &super::index::RouteCondition| {
        json!({
            "type": type_,
            "status": if c.status { "True" } else { "False" },
            "reason": c.reason,
            "message": c.message,
            "observedGeneration": want.generation,
        })
    };
    let ours: Vec<serde_json::Value> = want
        .parents
        .iter()
        .map(|p| {
            json!({
                "parentRef": with_parent_defaults(p.parent_ref.clone()),
                "controllerName": CONTROLLER_NAME,
                "conditions": [condition("Accepted", &p.accepted), condition("ResolvedRefs", &p.resolved_refs)],
            })
        })
        .collect();
    let current_parents: Vec<serde_json::Value> = current
        .and_then(|s| s["parents"].as_array().cloned())
        .unwrap_or_default();
    let (mut theirs, mine): (Vec<_>, Vec<_>) = current_parents
        .into_iter()
        .partition(|p| p["controllerName"].as_str() != Some(CONTROLLER_NAME));
    let strip = |mut p: serde_json::Value| {
        p["parentRef"] = with_parent_defaults(p["parentRef"].take());
        if let Some(cs) = p["conditions"].as_array_mut() {
            for c in cs {
                if let Some(o) = c.as_object_mut() {
                    o.remove("lastTransitionTime");
                }
            }
        }
        p
    };
    let mine: Vec<serde_json::Value> = mine.into_iter().map(strip).collect();
    if mine == ours {
        return None;
    }
    let now = now_rfc3339();
    let mut ours = ours;
    for p in &mut ours {
        for c in p["conditions"].as_array_mut().into_iter().flatten() {
            c["lastTransitionTime"] = now.clone().into();
        }
    }
    theirs.extend(ours);
    Some(json!({"status": {"parents": theirs}}))
}

/// While discovery is synced, asks the API server for `/version` every
/// `interval`: a quiet cluster sends no watch events, and this is what tells
/// "nothing changed" from "cannot reach the API server" in
/// `isthmus_discovery_last_sync_timestamp_seconds{source="kubernetes"}`.
async fn keep_contact(
    client: Client,
    publisher: Publisher,
    readiness: Arc<Readiness>,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let interval = interval.max(Duration::from_millis(100));
    let mut ticker = crate::poll::Ticker::new(interval, shutdown);
    while ticker.tick().await {
        if !readiness.is_ready() {
            continue;
        }
        match tokio::time::timeout(interval, client.apiserver_version()).await {
            Ok(Ok(_)) => publisher.synced(),
            Ok(Err(e)) => tracing::debug!(error = %e, "API server contact failed"),
            Err(_) => tracing::debug!("API server contact timed out"),
        }
    }
}

/// Applies one watch event to the index; returns whether the index changed.
#[allow(clippy::too_many_arguments)]
fn handle(
    t: Tagged,
    index: &mut Index,
    buffers: &mut HashMap<usize, Vec<Converted>>,
    unsynced: &mut HashSet<usize>,
    statuses: &mut HashMap<ObjectKey, Option<MappingStatus>>,
    routes_seen: &mut HashMap<ObjectKey, Option<serde_json::Value>>,
    publisher: &Publisher,
    metrics: &Metrics,
) -> bool {
    let event = match t.event {
        Ok(e) => e,
        Err(e) => {
            metrics
                .watch_errors
                .with_label_values(&[t.kind.label()])
                .inc();
            tracing::warn!(kind = t.kind.label(), error = %e, "watch failed; retrying with backoff, last routes keep serving");
            publisher.source_error(
                "watch",
                format!("{} watch failed (retrying): {e}", t.kind.object_kind()),
            );
            return false;
        }
    };
    let mut remember =
        |statuses: &mut HashMap<ObjectKey, Option<MappingStatus>>, o: &Object| match o {
            Object::Mapping(m) => {
                statuses.insert(o.key(), m.status.clone());
            }
            Object::HttpRoute(r) => {
                routes_seen.insert(o.key(), r.status.clone());
            }
            _ => {}
        };
    // An undecodable object: reported; a Mapping is kept as not accepted.
    let refuse = |u: Undecodable, statuses: &mut HashMap<ObjectKey, Option<MappingStatus>>| {
        if t.kind == ObjectKind::Mapping {
            statuses.insert(u.key.clone(), u.status);
        }
        let (converted, error) = index.undecodable(t.kind, u.key, u.generation, u.reason);
        publisher.report(&error, None);
        converted
    };
    match event {
        Event::Init => {
            buffers.insert(t.stream, Vec::new());
            false
        }
        Event::InitApply(Watched::Undecodable(u)) => {
            if let Some(c) = refuse(u, statuses) {
                buffers.entry(t.stream).or_default().push(c);
            }
            false
        }
        Event::InitApply(Watched::Decoded(o)) => {
            // Convert now: only the compact form waits for InitDone.
            match index.convert(&o) {
                Ok(c) => {
                    if let Some(e) = c.error() {
                        publisher.report(&e, None);
                    }
                    remember(statuses, &o);
                    buffers.entry(t.stream).or_default().push(c);
                }
                Err(e) => publisher.report(&e, None),
            }
            false
        }
        Event::InitDone => {
            let objects = buffers.remove(&t.stream).unwrap_or_default();
            let count = objects.len();
            metrics
                .discovery_events
                .with_label_values(&[t.kind.label()])
                .inc_by(count as u64);
            index.replace_converted(t.kind, t.namespace.as_deref(), objects);
            // A relist leaves megabytes of parsed JSON behind; hand it back
            // before the table build needs more.
            crate::memory::release_freed();
            unsynced.remove(&t.stream);
            tracing::debug!(kind = t.kind.label(), objects = count, "relisted");
            true
        }
        Event::Apply(w) => {
            metrics
                .discovery_events
                .with_label_values(&[t.kind.label()])
                .inc();
            match w {
                Watched::Decoded(o) => {
                    remember(statuses, &o);
                    if let Err(e) = index.apply(&o) {
                        publisher.report(&e, None);
                    }
                }
                // A Service or EndpointSlice keeps its previous version, as
                // one that does not convert does.
                Watched::Undecodable(u) => {
                    if let Some(c) = refuse(u, statuses) {
                        index.apply_converted(c);
                    }
                }
            }
            true
        }
        Event::Delete(w) => {
            metrics
                .discovery_events
                .with_label_values(&[t.kind.label()])
                .inc();
            let key = match w {
                Watched::Decoded(o) => o.key(),
                Watched::Undecodable(u) => u.key,
            };
            statuses.remove(&key);
            if t.kind == ObjectKind::HttpRoute {
                routes_seen.remove(&key);
            }
            index.delete(t.kind, &key);
            true
        }
    }
}

/// Patches statuses (of Mappings, of HTTPRoutes) that differ from what the
/// index decided, `body` making each merge patch; failed patches are retried
/// every few seconds until they land or become moot.
async fn write_statuses<S: Clone + PartialEq + Send + Sync + 'static>(
    client: Client,
    resource: ApiResource,
    mut desired: watch::Receiver<Arc<BTreeMap<ObjectKey, S>>>,
    body: fn(&S) -> serde_json::Value,
    metrics: Arc<Metrics>,
) {
    let mut written: HashMap<ObjectKey, S> = HashMap::new();
    let kind = resource.kind.clone();
    loop {
        let todo = desired.borrow_and_update().clone();
        let mut failed = false;
        for (key, want) in todo.iter() {
            if written.get(key) == Some(want) {
                continue;
            }
            // Untyped: the answer is the object, which may not decode.
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &key.namespace, &resource);
            let patch = body(want);
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(m) => {
                    metrics.status_writes.with_label_values(&["ok"]).inc();
                    tracing::debug!(kind, object = %key, generation = ?m.metadata.generation, "status written");
                    written.insert(key.clone(), want.clone());
                }
                Err(e) => {
                    metrics.status_writes.with_label_values(&["error"]).inc();
                    tracing::warn!(object = %key, error = %e, "cannot write {kind} status; will retry");
                    failed = true;
                }
            }
        }
        written.retain(|k, _| todo.contains_key(k));
        let retry = tokio::time::sleep(if failed {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(3600)
        });
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            _ = retry => {}
        }
    }
}

#[cfg(test)]
mod route_status_tests {
    use super::*;
    use crate::discovery::index::{ParentStatus, RouteCondition};

    fn want() -> RouteStatus {
        let c = |status, reason: &'static str| RouteCondition {
            status,
            reason,
            message: "m".into(),
        };
        RouteStatus {
            generation: Some(4),
            parents: vec![ParentStatus {
                parent_ref: json!({"name": "gw"}),
                accepted: c(true, "Accepted"),
                resolved_refs: c(false, "BackendNotFound"),
            }],
        }
    }

    #[test]
    fn written_status_read_back_needs_no_patch_and_others_are_kept() {
        let other = json!({"parentRef": {"name": "x"}, "controllerName": "example.com/other", "conditions": []});
        let current = json!({"parents": [other.clone()]});
        let patch = route_status_patch(&want(), Some(&current)).expect("a patch");
        let parents = patch["status"]["parents"].as_array().expect("parents");
        assert_eq!(parents.len(), 2);
        assert_eq!(parents[0], other);
        assert_eq!(parents[1]["parentRef"]["kind"], "Gateway");
        assert_eq!(parents[1]["conditions"][1]["reason"], "BackendNotFound");
        assert!(parents[1]["conditions"][0]["lastTransitionTime"].is_string());
        // What the API server stores (defaults filled, times set) compares equal.
        assert_eq!(route_status_patch(&want(), Some(&patch["status"])), None);
    }
}
