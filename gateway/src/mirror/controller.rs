//! The Link supervisor: watches the Links in the controller's namespace and
//! runs one worker per valid Link, while this replica holds the Lease.
//!
//! A Link that cannot run (invalid spec, missing or unusable credentials
//! Secret) gets a condition saying why, a log line and a metric, is retried,
//! and never stops the other Links. A deleted Link's mirrors are removed;
//! mirrors of Links that no longer exist are collected once the Link list is
//! complete.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::desired::{ANN_LINK, LABEL_MANAGED_BY, LABEL_MIRRORED, LABEL_SERVICE_NAME, MANAGED_BY};
use super::link::{Condition, Link, LinkSettings, LinkSpec};
use super::metrics::MirrorMetrics;
use super::probe::Resolve;
use super::worker::{self, Context};

/// Secret type of Link credentials.
pub const CREDENTIALS_TYPE: &str = "mirror.linkerd.io/remote-kubeconfig";

/// How often a Link that could not start is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Spec keys a Link may carry (Linkerd's v1alpha3 names).
const SPEC_KEYS: &[&str] = &[
    "targetClusterName",
    "targetClusterDomain",
    "targetClusterLinkerdNamespace",
    "clusterCredentialsSecret",
    "gatewayAddress",
    "gatewayPort",
    "gatewayIdentity",
    "probeSpec",
    "selector",
    "remoteDiscoverySelector",
    "federatedServiceSelector",
    "excludedLabels",
    "excludedAnnotations",
];
const PROBE_KEYS: &[&str] = &["path", "port", "period", "timeout", "failureThreshold"];

struct Running {
    settings: LinkSettings,
    tx: watch::Sender<LinkSettings>,
    invalid: watch::Sender<Option<String>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// The Secret's content the worker was started with.
    credentials: Vec<u8>,
}

/// A Link that should run but could not start yet.
struct Waiting {
    settings: LinkSettings,
}

/// The supervisor's state.
pub struct Supervisor {
    local: Client,
    namespace: String,
    metrics: MirrorMetrics,
    resolver: Arc<dyn Resolve>,
    running: HashMap<String, Running>,
    waiting: BTreeMap<String, Waiting>,
    /// Last Link-level error written per Link, to avoid rewriting it.
    reported: HashMap<String, String>,
}

/// Parses a Link object: typed spec, unknown fields refused.
pub fn parse_link(obj: &Value) -> Result<LinkSettings, String> {
    let spec = obj.get("spec").ok_or("the Link has no spec")?;
    if let Some(map) = spec.as_object() {
        if let Some(k) = map.keys().find(|k| !SPEC_KEYS.contains(&k.as_str())) {
            return Err(format!("unknown field spec.{k}"));
        }
        if let Some(probe) = map.get("probeSpec").and_then(Value::as_object) {
            if let Some(k) = probe.keys().find(|k| !PROBE_KEYS.contains(&k.as_str())) {
                return Err(format!("unknown field spec.probeSpec.{k}"));
            }
        }
    }
    let spec: LinkSpec = serde_json::from_value(spec.clone()).map_err(|e| format!("spec: {e}"))?;
    LinkSettings::from_spec(&spec)
}

/// Builds a client for the remote cluster from a credentials Secret.
pub async fn remote_client(secret: &Secret) -> Result<(Client, Vec<u8>), String> {
    if secret.type_.as_deref() != Some(CREDENTIALS_TYPE) {
        return Err(format!(
            "Secret has type {:?}; expected {CREDENTIALS_TYPE}",
            secret.type_.as_deref().unwrap_or("")
        ));
    }
    let raw = secret
        .data
        .as_ref()
        .and_then(|d| d.get("kubeconfig"))
        .map(|b| b.0.clone())
        .ok_or("Secret has no `kubeconfig` key")?;
    let text = std::str::from_utf8(&raw).map_err(|_| "`kubeconfig` is not UTF-8")?;
    let kc =
        Kubeconfig::from_yaml(text).map_err(|e| format!("`kubeconfig` does not parse: {e}"))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("`kubeconfig` is unusable: {e}"))?;
    let client = Client::try_from(config).map_err(|e| format!("remote client: {e}"))?;
    Ok((client, raw))
}

impl Supervisor {
    /// A supervisor for the Links in `namespace`.
    pub fn new(
        local: Client,
        namespace: &str,
        metrics: MirrorMetrics,
        resolver: Arc<dyn Resolve>,
    ) -> Supervisor {
        Supervisor {
            local,
            namespace: namespace.into(),
            metrics,
            resolver,
            running: HashMap::new(),
            waiting: BTreeMap::new(),
            reported: HashMap::new(),
        }
    }

    /// Runs until `shutdown` flips; then stops every worker.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let ar = ApiResource::erase::<Link>(&());
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.local.clone(), &self.namespace, &ar);
        let mut links = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut listing: Option<Vec<DynamicObject>> = None;
        let mut retry = tokio::time::interval(RETRY);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = retry.tick() => self.retry().await,
                e = links.next() => match e {
                    None => break,
                    Some(Err(e)) => tracing::warn!(error = %e, "Link watch failed; retrying"),
                    Some(Ok(Event::Init)) => listing = Some(Vec::new()),
                    Some(Ok(Event::InitApply(o))) => listing.get_or_insert_with(Vec::new).push(o),
                    Some(Ok(Event::InitDone)) => {
                        let all = listing.take().unwrap_or_default();
                        self.relisted(all).await;
                    }
                    Some(Ok(Event::Apply(o))) => self.apply(o).await,
                    Some(Ok(Event::Delete(o))) => {
                        if let Some(name) = o.metadata.name.clone() {
                            self.removed(&name).await;
                        }
                    }
                },
            }
        }
        for (_, r) in self.running.drain() {
            r.stop.send_replace(true);
            let _ = r.task.await;
        }
    }

    async fn relisted(&mut self, all: Vec<DynamicObject>) {
        let names: Vec<String> = all.iter().filter_map(|o| o.metadata.name.clone()).collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .chain(self.waiting.keys())
            .filter(|n| !names.contains(n))
            .cloned()
            .collect();
        for name in gone {
            self.removed(&name).await;
        }
        for o in all {
            self.apply(o).await;
        }
        self.collect_orphans(&names).await;
    }

    async fn apply(&mut self, obj: DynamicObject) {
        let Some(name) = obj.metadata.name.clone() else {
            return;
        };
        let raw = serde_json::to_value(&obj).unwrap_or_default();
        let parsed = parse_link(&raw).and_then(|s| {
            let taken = self
                .running
                .iter()
                .map(|(n, r)| (n, &r.settings))
                .chain(self.waiting.iter().map(|(n, w)| (n, &w.settings)))
                .find(|(n, other)| **n != name && other.target == s.target);
            match taken {
                Some((other, _)) => Err(format!(
                    "targetClusterName {} is already linked by Link {other}",
                    s.target
                )),
                None => Ok(s),
            }
        });
        let settings = match parsed {
            Ok(s) => s,
            Err(why) => {
                match self.running.get(&name) {
                    // Keep the worker on its last valid settings; it reports why.
                    Some(r) => {
                        if r.invalid.send_replace(Some(why.clone())).is_none() {
                            tracing::warn!(link = %name, "{why}");
                            self.metrics
                                .link_errors
                                .with_label_values(&["invalid"])
                                .inc();
                        }
                    }
                    None => {
                        self.refuse(&name, "Valid", "InvalidSpec", &why, "invalid")
                            .await
                    }
                }
                return;
            }
        };
        if let Some(r) = self.running.get(&name) {
            r.invalid.send_replace(None);
            let restart = r.settings.target != settings.target
                || r.settings.credentials_secret != settings.credentials_secret
                || r.settings.selector != settings.selector;
            if !restart {
                if r.settings != settings {
                    tracing::info!(link = %name, "Link changed");
                    r.tx.send_replace(settings.clone());
                    if let Some(r) = self.running.get_mut(&name) {
                        r.settings = settings;
                    }
                }
                return;
            }
            let old_target = r.settings.target.clone();
            self.stop(&name).await;
            if old_target != settings.target {
                self.delete_mirrors(&name).await;
            }
        }
        self.waiting.insert(name.clone(), Waiting { settings });
        self.start(&name).await;
    }

    async fn retry(&mut self) {
        let names: Vec<String> = self.waiting.keys().cloned().collect();
        for name in names {
            self.start(&name).await;
        }
        // A rotated credentials Secret restarts its worker.
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            let Some(r) = self.running.get(&name) else {
                continue;
            };
            let secrets: Api<Secret> = Api::namespaced(self.local.clone(), &self.namespace);
            if let Ok(Some(s)) = secrets.get_opt(&r.settings.credentials_secret).await {
                let now = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get("kubeconfig"))
                    .map(|b| b.0.clone());
                if now.as_deref() != Some(r.credentials.as_slice()) {
                    tracing::info!(link = %name, "credentials changed; restarting");
                    let settings = r.settings.clone();
                    self.stop(&name).await;
                    self.waiting.insert(name.clone(), Waiting { settings });
                    self.start(&name).await;
                }
            }
        }
    }

    async fn start(&mut self, name: &str) {
        let Some(w) = self.waiting.get(name) else {
            return;
        };
        let settings = w.settings.clone();
        let secrets: Api<Secret> = Api::namespaced(self.local.clone(), &self.namespace);
        let secret = match secrets.get_opt(&settings.credentials_secret).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                let why = format!(
                    "Secret {}/{} does not exist; create it with `isthmus link`",
                    self.namespace, settings.credentials_secret
                );
                self.refuse(
                    name,
                    "CredentialsValid",
                    "MissingSecret",
                    &why,
                    "credentials",
                )
                .await;
                return;
            }
            Err(e) => {
                let why = format!("cannot read Secret {}: {e}", settings.credentials_secret);
                self.refuse(
                    name,
                    "CredentialsValid",
                    "SecretUnreadable",
                    &why,
                    "credentials",
                )
                .await;
                return;
            }
        };
        let (remote, credentials) = match remote_client(&secret).await {
            Ok(c) => c,
            Err(why) => {
                let why = format!("Secret {}: {why}", settings.credentials_secret);
                self.refuse(
                    name,
                    "CredentialsValid",
                    "InvalidKubeconfig",
                    &why,
                    "credentials",
                )
                .await;
                return;
            }
        };
        self.waiting.remove(name);
        self.reported.remove(name);
        let (invalid, invalid_rx) = watch::channel(None);
        let ctx = Context {
            namespace: self.namespace.clone(),
            name: name.into(),
            local: self.local.clone(),
            remote,
            metrics: self.metrics.clone(),
            resolver: self.resolver.clone(),
            invalid: invalid_rx,
        };
        let (tx, rx) = watch::channel(settings.clone());
        let (stop, stop_rx) = watch::channel(false);
        let span = tracing::info_span!("link", link = %name, target = %settings.target);
        let task = tokio::spawn(worker::run(ctx, rx, stop_rx).instrument(span));
        self.running.insert(
            name.into(),
            Running {
                settings,
                tx,
                invalid,
                stop,
                task,
                credentials,
            },
        );
    }

    async fn stop(&mut self, name: &str) {
        if let Some(r) = self.running.remove(name) {
            r.stop.send_replace(true);
            let _ = r.task.await;
            self.metrics.forget(&r.settings.target);
        }
    }

    async fn removed(&mut self, name: &str) {
        tracing::info!(link = %name, "Link deleted; removing its mirrors");
        self.stop(name).await;
        self.waiting.remove(name);
        self.reported.remove(name);
        self.delete_mirrors(name).await;
    }

    /// Writes a failing Link-level condition (once per distinct reason).
    async fn refuse(&mut self, name: &str, type_: &str, reason: &str, why: &str, metric: &str) {
        if self.reported.get(name).map(String::as_str) == Some(why) {
            return;
        }
        tracing::warn!(link = %name, reason, "{why}");
        self.metrics.link_errors.with_label_values(&[metric]).inc();
        self.reported.insert(name.into(), why.into());
        let condition = Condition {
            type_: type_.into(),
            status: "False".into(),
            reason: reason.into(),
            message: why.into(),
            last_transition_time: Some(super::now_rfc3339()),
        };
        let api: Api<Link> = Api::namespaced(self.local.clone(), &self.namespace);
        let patch = serde_json::json!({"status": {"conditions": [condition]}});
        if let Err(e) = api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(link = %name, error = %e, "cannot write Link status");
        }
    }

    /// Deletes every mirror this controller wrote for Link `name`.
    async fn delete_mirrors(&self, name: &str) {
        let link_ref = format!("{}/{name}", self.namespace);
        self.delete_where(|v| v == link_ref).await;
    }

    /// Deletes mirrors of Links that are not in `names` (the complete list).
    async fn collect_orphans(&self, names: &[String]) {
        let ns = self.namespace.clone();
        let live: Vec<String> = names.iter().map(|n| format!("{ns}/{n}")).collect();
        // Only this controller's namespace: another mirror Deployment's Links are not ours.
        self.delete_where(|v| v.starts_with(&format!("{ns}/")) && !live.iter().any(|l| l == v))
            .await;
    }

    async fn delete_where(&self, doomed: impl Fn(&str) -> bool) {
        let services: Api<Service> = Api::all(self.local.clone());
        let lp = ListParams::default().labels(&format!("{LABEL_MIRRORED}=true"));
        let list = match services.list(&lp).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list mirrors to collect");
                return;
            }
        };
        for svc in list {
            let Some(link) = svc
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANN_LINK))
            else {
                continue;
            };
            if !doomed(link) {
                continue;
            }
            let (Some(ns), Some(name)) =
                (svc.metadata.namespace.clone(), svc.metadata.name.clone())
            else {
                continue;
            };
            let slices: Api<EndpointSlice> = Api::namespaced(self.local.clone(), &ns);
            let sel = format!("{LABEL_SERVICE_NAME}={name},{LABEL_MANAGED_BY}={MANAGED_BY}");
            if let Ok(list) = slices.list(&ListParams::default().labels(&sel)).await {
                for s in list {
                    if let Some(n) = s.metadata.name {
                        let _ = slices.delete(&n, &DeleteParams::default()).await;
                    }
                }
            }
            let api: Api<Service> = Api::namespaced(self.local.clone(), &ns);
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(service = %format!("{ns}/{name}"), link = %link, "mirror removed")
                }
                Err(e) => {
                    tracing::warn!(service = %format!("{ns}/{name}"), error = %e, "cannot remove mirror")
                }
            }
        }
    }
}
