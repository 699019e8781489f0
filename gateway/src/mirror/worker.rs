//! One Link's worker: watches the remote cluster and this cluster's mirrors,
//! probes the remote gateway, and keeps every mirror as [`super::desired`]
//! says, reporting on the Link's status.
//!
//! ```text
//! remote watch(Service by selector) ─┐
//! remote watch(EndpointSlice) ───────┤
//! local watch(mirrors of target) ────┼─▶ state ─▶ dirty keys ─▶ writer (16 at a time)
//! probe task (resolve + GET) ────────┘                     └─▶ Link status (≤ 1/s)
//! ```
//! Nothing is written before the remote and local lists are complete and
//! the gateway has been probed once: orphans are collected only against a
//! complete remote list (linkerd2#12499), and slices that were ready when the
//! controller stopped stay ready through the restart (linkerd2#8590). While
//! the remote API is unreachable the mirrors stay as they are.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{select_all, BoxStream};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::{mpsc, watch};

use super::desired::{self, GatewayView, Mirror, Refusal};
use super::latency::LatencyWindow;
use super::link::{Condition, GatewayStatus, Link, LinkSettings, ObjectRef, ServiceStatus};
use super::metrics::MirrorMetrics;
use super::probe::{self, Liveness, Resolve};
use super::state::{Key, Local, Remote};
use super::write::{Change, Synced, WriteError, Writer};

/// A reconcile of at least this many Services returns freed memory to the OS.
const RELEASE_AFTER_BATCH: usize = 256;

/// Entries listed in a Link's status at most (failures first).
const MAX_STATUS_ENTRIES: usize = 1000;
/// Keys written concurrently.
const WRITE_CONCURRENCY: usize = 16;

/// Keys reconciled together: bounds the objects a large batch holds at once.
const RECONCILE_CHUNK: usize = 128;
/// How often failed keys are retried and the remote API is checked.
const RESYNC: Duration = Duration::from_secs(5);

/// What a worker needs from the controller.
#[derive(Clone)]
pub struct Context {
    /// The Link's namespace.
    pub namespace: String,
    /// The Link's name.
    pub name: String,
    /// This cluster.
    pub local: Client,
    /// The target cluster.
    pub remote: Client,
    /// Metrics.
    pub metrics: MirrorMetrics,
    /// Gateway address resolver.
    pub resolver: Arc<dyn Resolve>,
    /// Why the Link's current spec is refused (the worker then keeps running
    /// on its last valid settings and says so in the `Valid` condition).
    pub invalid: watch::Receiver<Option<String>>,
}

enum Input {
    RemoteService(Result<Event<Service>, watcher::Error>),
    RemoteSlice(Result<Event<EndpointSlice>, watcher::Error>),
    LocalService(Result<Event<Service>, watcher::Error>),
    LocalSlice(Result<Event<EndpointSlice>, watcher::Error>),
}

/// One probe round's result.
struct ProbeReport {
    addresses: Result<Vec<IpAddr>, String>,
    result: Result<Duration, String>,
}

/// Why a selected remote Service is or is not mirrored.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Mirrored,
    Refused { refusal: Refusal, kept: bool },
    Failed(WriteError),
}

/// Runs the worker until `shutdown` flips or the settings channel closes.
pub async fn run(
    ctx: Context,
    mut settings: watch::Receiver<LinkSettings>,
    mut shutdown: watch::Receiver<bool>,
) {
    let initial = settings.borrow_and_update().clone();
    let target = initial.target.clone();
    let link_ref = format!("{}/{}", ctx.namespace, ctx.name);
    let mut inputs = streams(&ctx, &initial);
    let (probe_tx, mut probe_rx) = mpsc::channel(4);
    let prober = tokio::spawn(probe_loop(settings.clone(), ctx.resolver.clone(), probe_tx));
    let mut invalid = ctx.invalid.clone();
    let writer = Writer {
        client: ctx.local.clone(),
        link_ref: link_ref.clone(),
        metrics: ctx.metrics.clone(),
    };
    let local = Local::new(&target, &link_ref);
    let mut w = Worker {
        settings: initial,
        link_ref,
        remote: Remote::default(),
        local,
        liveness: None,
        pending_probes: Vec::new(),
        gateway: GatewayView::default(),
        probed: false,
        latency: None,
        window: LatencyWindow::default(),
        last_probe: None,
        last_good: HashMap::new(),
        outcomes: BTreeMap::new(),
        dirty: BTreeSet::new(),
        seen: HashMap::new(),
        namespaces: HashSet::new(),
        stale: None,
        credentials: None,
        conditions: BTreeMap::new(),
        status_dirty: true,
    };
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status_tick = tokio::time::interval(Duration::from_secs(1));
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(link = %w.link_ref, target = %target, "mirroring");
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            changed = settings.changed() => {
                if changed.is_err() { break; }
                w.settings = settings.borrow_and_update().clone();
                if let Some(l) = w.liveness.as_mut() {
                    l.set_threshold(w.settings.probe.failure_threshold);
                }
                w.dirty_all();
            }
            changed = invalid.changed() => {
                if changed.is_err() { break; }
                w.status_dirty = true;
            }
            input = inputs.next() => match input {
                Some(i) => w.input(i, &ctx.metrics),
                None => break,
            },
            Some(report) = probe_rx.recv() => w.probed(report, &ctx.metrics),
            _ = resync.tick() => {
                w.retry_failed();
                w.check_remote(&ctx).await;
            }
            _ = status_tick.tick() => {
                if w.status_dirty {
                    w.write_status(&ctx).await;
                }
            }
        }
        if w.writable() && !w.dirty.is_empty() {
            let batch = w.dirty.len();
            w.reconcile(&writer).await;
            if batch >= RELEASE_AFTER_BATCH {
                // A relist or a first sync freed thousands of listed objects
                // and write futures at once; hand those pages back now.
                crate::memory::release_freed();
            }
        }
        ctx.metrics
            .mirrored_services
            .with_label_values(&[target.as_str()])
            .set(w.count(|o| *o == Outcome::Mirrored));
        ctx.metrics
            .refused_services
            .with_label_values(&[target.as_str()])
            .set(w.count(|o| *o != Outcome::Mirrored));
    }
    prober.abort();
}

fn streams(ctx: &Context, s: &LinkSettings) -> BoxStream<'static, Input> {
    let remote_services: Api<Service> = Api::all(ctx.remote.clone());
    let remote_slices: Api<EndpointSlice> = Api::all(ctx.remote.clone());
    let local_services: Api<Service> = Api::all(ctx.local.clone());
    let local_slices: Api<EndpointSlice> = Api::all(ctx.local.clone());
    let mine = desired::mirrors_selector(&s.target);
    let cfg = watcher::Config::default();
    select_all(vec![
        watcher::watcher(remote_services, cfg.clone().labels(&s.selector))
            .default_backoff()
            .map(Input::RemoteService)
            .boxed(),
        watcher::watcher(remote_slices, cfg.clone())
            .default_backoff()
            .map(Input::RemoteSlice)
            .boxed(),
        watcher::watcher(local_services, cfg.clone().labels(&mine))
            .default_backoff()
            .map(Input::LocalService)
            .boxed(),
        watcher::watcher(local_slices, cfg.labels(&mine))
            .default_backoff()
            .map(Input::LocalSlice)
            .boxed(),
    ])
    .boxed()
}

/// Probes the gateway every period; settings edits apply from the next round.
async fn probe_loop(
    mut settings: watch::Receiver<LinkSettings>,
    resolver: Arc<dyn Resolve>,
    tx: mpsc::Sender<ProbeReport>,
) {
    loop {
        let s = settings.borrow_and_update().clone();
        let addresses = probe::resolve_all(&resolver, &s.gateway_addresses).await;
        let host = format!("probe-{}:{}", s.target, s.probe.port);
        let result = match &addresses {
            Ok(a) => probe::probe(a, s.probe.port, &s.probe.path, &host, s.probe.timeout).await,
            Err(e) => Err(e.clone()),
        };
        if tx.send(ProbeReport { addresses, result }).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(s.probe.period) => {}
            changed = settings.changed() => if changed.is_err() { return },
        }
    }
}

struct Worker {
    settings: LinkSettings,
    link_ref: String,
    remote: Remote,
    local: Local,
    liveness: Option<Liveness>,
    pending_probes: Vec<bool>,
    gateway: GatewayView,
    probed: bool,
    latency: Option<Duration>,
    /// Recent successful probe latencies (the status's percentiles).
    window: LatencyWindow,
    last_probe: Option<String>,
    /// The last remote Service of each key that could be mirrored.
    last_good: HashMap<Key, Arc<Service>>,
    outcomes: BTreeMap<Key, Outcome>,
    dirty: BTreeSet<Key>,
    /// When a remote change to the key was first seen (for the write delay).
    seen: HashMap<Key, Instant>,
    namespaces: HashSet<String>,
    /// Why the remote API counts as unreachable, if it does.
    stale: Option<String>,
    /// Why the credentials are refused, if they are.
    credentials: Option<String>,
    conditions: BTreeMap<&'static str, Condition>,
    status_dirty: bool,
}

fn auth_failure(e: &watcher::Error) -> Option<String> {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.as_ref(),
        watcher::Error::WatchError(s) => s.as_ref(),
        _ => return None,
    };
    matches!(status.code, 401 | 403).then(|| format!("{} {}", status.code, status.message))
}

impl Worker {
    fn writable(&self) -> bool {
        self.remote.synced() && self.local.synced() && self.probed && self.liveness.is_some()
    }

    fn dirty_all(&mut self) {
        self.dirty.extend(self.remote.services().keys().cloned());
        self.dirty.extend(self.local.keys());
        self.status_dirty = true;
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> i64 {
        i64::try_from(self.outcomes.values().filter(|o| f(o)).count()).unwrap_or(i64::MAX)
    }

    fn input(&mut self, input: Input, metrics: &MirrorMetrics) {
        let now = Instant::now();
        let (dirty, remote) = match input {
            Input::RemoteService(Ok(e)) => (self.remote.apply_service(e), true),
            Input::RemoteSlice(Ok(e)) => (self.remote.apply_slice(e), true),
            Input::LocalService(Ok(e)) => (self.local.apply_service(e), false),
            Input::LocalSlice(Ok(e)) => (self.local.apply_slice(e), false),
            Input::RemoteService(Err(e)) | Input::RemoteSlice(Err(e)) => {
                self.remote_error(&e, metrics);
                return;
            }
            Input::LocalService(Err(e)) | Input::LocalSlice(Err(e)) => {
                tracing::warn!(link = %self.link_ref, error = %e, "local watch failed; retrying");
                return;
            }
        };
        if remote {
            if self.stale.take().is_some() {
                tracing::info!(link = %self.link_ref, "remote API reachable again");
                self.status_dirty = true;
            }
            self.credentials = None;
            for k in &dirty {
                self.seen.entry(k.clone()).or_insert(now);
            }
        }
        if !dirty.is_empty() {
            self.status_dirty = true;
        }
        self.dirty.extend(dirty);
        if self.liveness.is_none() && self.local.synced() {
            // Adopt what the mirrors say now: ready slices mean the gateway
            // was alive when the previous controller stopped.
            let mut l = Liveness::new(
                self.settings.probe.failure_threshold,
                self.local.any_ready(),
            );
            for ok in self.pending_probes.drain(..) {
                l.record(ok);
            }
            self.gateway.alive = l.alive();
            self.liveness = Some(l);
        }
        let target = self.settings.target.as_str();
        metrics
            .remote_stale
            .with_label_values(&[target])
            .set(i64::from(self.stale.is_some()));
    }

    fn remote_error(&mut self, e: &watcher::Error, metrics: &MirrorMetrics) {
        let target = self.settings.target.as_str();
        metrics.remote_errors.with_label_values(&[target]).inc();
        if let Some(why) = auth_failure(e) {
            self.credentials = Some(why);
        }
        if self.stale.is_none() {
            tracing::warn!(link = %self.link_ref, error = %e, "remote watch failed; mirrors kept as they are, retrying");
        }
        self.stale = Some(e.to_string());
        metrics.remote_stale.with_label_values(&[target]).set(1);
        self.status_dirty = true;
    }

    /// A cheap list on the remote API: clears "stale" once it answers again.
    async fn check_remote(&mut self, ctx: &Context) {
        if self.stale.is_none() {
            return;
        }
        let api: Api<Service> = Api::all(ctx.remote.clone());
        let lp = ListParams::default()
            .labels(&self.settings.selector)
            .limit(1);
        match api.list_metadata(&lp).await {
            Ok(_) => {
                self.stale = None;
                self.credentials = None;
                self.status_dirty = true;
                ctx.metrics
                    .remote_stale
                    .with_label_values(&[self.settings.target.as_str()])
                    .set(0);
            }
            Err(kube::Error::Api(s)) if matches!(s.code, 401 | 403) => {
                self.credentials = Some(format!("{} {}", s.code, s.message));
            }
            Err(_) => {}
        }
    }

    fn probed(&mut self, report: ProbeReport, metrics: &MirrorMetrics) {
        let target = self.settings.target.clone();
        let ok = report.result.is_ok();
        let result = match (&report.addresses, &report.result) {
            (Err(_), _) => "unresolved",
            (_, Ok(_)) => "ok",
            (_, Err(_)) => "failed",
        };
        metrics.probes.with_label_values(&[&target, result]).inc();
        match &report.result {
            Ok(d) => {
                metrics
                    .probe_duration
                    .with_label_values(&[&target])
                    .observe(d.as_secs_f64());
                self.latency = Some(*d);
                self.window.record(*d);
            }
            Err(e) => {
                tracing::debug!(link = %self.link_ref, error = %e, "gateway probe failed")
            }
        }
        self.last_probe = Some(super::now_rfc3339());
        self.probed = true;
        let before = self.gateway.clone();
        // A failed resolution keeps the last addresses (counted as a failure).
        if let Ok(addrs) = report.addresses {
            self.gateway.addresses = addrs;
        }
        match self.liveness.as_mut() {
            Some(l) => {
                l.record(ok);
                self.gateway.alive = l.alive();
            }
            None => self.pending_probes.push(ok),
        }
        metrics
            .gateway_alive
            .with_label_values(&[&target])
            .set(i64::from(self.gateway.alive));
        if before != self.gateway {
            if before.alive != self.gateway.alive {
                tracing::info!(link = %self.link_ref, alive = self.gateway.alive, "remote gateway liveness changed");
            }
            self.dirty_all();
        }
        self.status_dirty = true;
    }

    fn retry_failed(&mut self) {
        let failed: Vec<Key> = self
            .outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
            .map(|(k, _)| k.clone())
            .collect();
        self.dirty.extend(failed);
    }

    /// What `key` should look like here, and the outcome to report.
    fn want(&mut self, key: &Key) -> (Option<Mirror>, Option<Outcome>) {
        let ready = self.remote.has_ready_endpoint(key);
        let Some(svc) = self.remote.services().get(key) else {
            self.last_good.remove(key);
            return (None, None);
        };
        match desired::mirror(&self.settings, &self.link_ref, svc, &self.gateway, ready) {
            Ok(m) => {
                self.last_good.insert(key.clone(), svc.clone());
                (Some(m), Some(Outcome::Mirrored))
            }
            Err(refusal) => {
                let kept = self.last_good.get(key).and_then(|g| {
                    desired::mirror(&self.settings, &self.link_ref, g, &self.gateway, ready).ok()
                });
                if self
                    .outcomes
                    .get(key)
                    .is_none_or(|o| !matches!(o, Outcome::Refused { .. }))
                {
                    tracing::warn!(link = %self.link_ref, service = %key, reason = refusal.reason, message = %refusal.message, "remote Service not mirrored");
                }
                let outcome = Outcome::Refused {
                    refusal,
                    kept: kept.is_some(),
                };
                (kept, Some(outcome))
            }
        }
    }

    /// Writes every dirty key, a chunk at a time: only one chunk's desired
    /// and written objects are in memory at once, not a whole relist's.
    async fn reconcile(&mut self, writer: &Writer) {
        let keys: Vec<Key> = std::mem::take(&mut self.dirty).into_iter().collect();
        for chunk in keys.chunks(RECONCILE_CHUNK) {
            self.reconcile_chunk(chunk, writer).await;
        }
    }

    async fn reconcile_chunk(&mut self, keys: &[Key], writer: &Writer) {
        let mut jobs = Vec::with_capacity(keys.len());
        for key in keys.iter().cloned() {
            let (want, outcome) = self.want(&key);
            let have = self.local.service(&key).cloned();
            let have_slices = self.local.slices(&key);
            let unchanged = match &want {
                None => have.is_none() && have_slices.is_empty(),
                Some(m) => {
                    have.as_ref()
                        .is_some_and(|h| desired::service_matches(h, &m.service))
                        && m.slices.len() == have_slices.len()
                        && m.slices.iter().all(|s| {
                            let name = s.metadata.name.clone().unwrap_or_default();
                            have_slices.get(&name).is_some_and(|h| h.matches(s))
                        })
                }
            };
            self.set_outcome(&key, outcome.clone());
            if unchanged {
                self.seen.remove(&key);
                continue;
            }
            let ns_known = self.namespaces.contains(&key.namespace);
            jobs.push((key, want, have, have_slices, ns_known, outcome));
        }
        let results: Vec<(Synced, Option<Outcome>)> = futures::stream::iter(jobs)
            .map(|(key, want, have, slices, ns_known, outcome)| {
                let writer = writer.clone();
                async move {
                    (
                        writer.sync(key, want, have, slices, ns_known).await,
                        outcome,
                    )
                }
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        for (synced, outcome) in results {
            let key = synced.key.clone();
            if synced.namespace_ok {
                self.namespaces.insert(key.namespace.clone());
            }
            match synced.service {
                Some(Change::Put(s)) => self.local.wrote_service(&key, Some(s)),
                Some(Change::Gone) => self.local.wrote_service(&key, None),
                None => {}
            }
            for (name, change) in synced.slices {
                match change {
                    Change::Put(s) => self.local.wrote_slice(&key, &name, Some(s)),
                    Change::Gone => self.local.wrote_slice(&key, &name, None),
                }
            }
            match synced.result {
                Ok(()) => {
                    if let Some(t) = self.seen.remove(&key) {
                        writer
                            .metrics
                            .write_delay
                            .observe(t.elapsed().as_secs_f64());
                    }
                    self.set_outcome(&key, outcome);
                }
                Err(e) => {
                    tracing::warn!(link = %self.link_ref, service = %key, error = ?e, "mirror not written");
                    self.set_outcome(&key, Some(Outcome::Failed(e)));
                }
            }
        }
    }

    fn set_outcome(&mut self, key: &Key, outcome: Option<Outcome>) {
        let changed = match outcome {
            Some(o) => self.outcomes.insert(key.clone(), o.clone()) != Some(o),
            None => self.outcomes.remove(key).is_some(),
        };
        self.status_dirty |= changed;
    }

    fn condition(&mut self, type_: &'static str, ok: bool, reason: &str, message: String) {
        let status = if ok { "True" } else { "False" };
        let prev = self.conditions.get(type_);
        let since = match prev {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Some(super::now_rfc3339()),
        };
        self.conditions.insert(
            type_,
            Condition {
                type_: type_.into(),
                status: status.into(),
                reason: reason.into(),
                message,
                last_transition_time: since,
            },
        );
    }

    async fn write_status(&mut self, ctx: &Context) {
        let invalid = ctx.invalid.borrow().clone();
        match invalid {
            None => self.condition("Valid", true, "Valid", "the Link's spec is valid".into()),
            Some(why) => self.condition(
                "Valid",
                false,
                "InvalidSpec",
                format!("{why}; still mirroring with the last valid spec"),
            ),
        }
        match &self.credentials {
            None => self.condition("CredentialsValid", true, "Authenticated", "the remote API accepts the credentials".into()),
            Some(why) => self.condition("CredentialsValid", false, "Unauthorized", format!("the remote API refuses the credentials: {why}; run `isthmus link` again and apply its Secret")),
        }
        match (&self.stale, self.remote.synced()) {
            (None, true) => self.condition(
                "RemoteSynced",
                true,
                "Synced",
                "watching the remote cluster".into(),
            ),
            (None, false) => self.condition(
                "RemoteSynced",
                false,
                "Syncing",
                "listing the remote cluster".into(),
            ),
            (Some(e), _) => self.condition(
                "RemoteSynced",
                false,
                "RemoteUnreachable",
                format!("the remote API cannot be reached ({e}); mirrors are kept as they are"),
            ),
        }
        let alive = self.gateway.alive;
        let gw_msg = if alive {
            "the remote gateway answers its probe".to_string()
        } else {
            format!(
                "the remote gateway failed {} probes in a row (or was never reached); mirror endpoints are not ready",
                self.settings.probe.failure_threshold
            )
        };
        self.condition(
            "GatewayAlive",
            alive,
            if alive {
                "ProbeSucceeded"
            } else {
                "ProbeFailed"
            },
            gw_msg,
        );
        let mut entries: Vec<ServiceStatus> = self
            .outcomes
            .iter()
            .map(|(key, o)| {
                let (ok, reason, message) = match o {
                    Outcome::Mirrored => (true, "Mirrored".to_string(), "mirrored".to_string()),
                    Outcome::Refused { refusal, kept } => (
                        false,
                        refusal.reason.to_string(),
                        if *kept {
                            format!("{}; the last valid mirror is kept", refusal.message)
                        } else {
                            refusal.message.clone()
                        },
                    ),
                    Outcome::Failed(WriteError::Collision(m)) => {
                        (false, "NameCollision".into(), m.clone())
                    }
                    Outcome::Failed(WriteError::Failed(m)) => {
                        (false, "WriteFailed".into(), m.clone())
                    }
                };
                ServiceStatus {
                    conditions: vec![Condition {
                        type_: "Mirrored".into(),
                        status: if ok { "True" } else { "False" }.into(),
                        reason,
                        message,
                        last_transition_time: None,
                    }],
                    controller_name: "isthmus.dev/mirror".into(),
                    remote_ref: ObjectRef {
                        name: key.name.clone(),
                        namespace: key.namespace.clone(),
                    },
                    local_ref: ObjectRef {
                        name: desired::mirror_name(&key.name, &self.settings.target),
                        namespace: key.namespace.clone(),
                    },
                }
            })
            .collect();
        entries.sort_by_key(|e| e.conditions[0].status == "True");
        entries.truncate(MAX_STATUS_ENTRIES);
        let status = super::link::LinkStatus {
            conditions: self.conditions.values().cloned().collect(),
            gateway: Some(GatewayStatus {
                alive,
                latency_ms: self
                    .latency
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                latency: self.window.percentiles(),
                addresses: self
                    .gateway
                    .addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                last_probe_time: self.last_probe.clone(),
            }),
            mirrored_services: u32::try_from(self.count(|o| *o == Outcome::Mirrored)).unwrap_or(0),
            mirror_services: entries,
        };
        let mut body = serde_json::to_value(&status).unwrap_or_default();
        if let Some(obj) = body.as_object_mut() {
            // A merge patch keeps what it does not mention: say "empty" outright.
            obj.entry("mirrorServices").or_insert(serde_json::json!([]));
        }
        let api: Api<Link> = Api::namespaced(ctx.local.clone(), &ctx.namespace);
        let patch = serde_json::json!({ "status": body });
        match api
            .patch_status(&ctx.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.status_dirty = false,
            Err(e) => {
                tracing::warn!(link = %self.link_ref, error = %e, "cannot write Link status; will retry")
            }
        }
    }
}
