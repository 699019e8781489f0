//! What one Link's worker knows: the remote Services it selects and whether
//! each has a ready endpoint, and the mirrors that exist here. Pure: watch
//! events in, the keys whose mirror may need a write out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;

use super::desired::{
    SliceHave, ANN_LINK, LABEL_CLUSTER, LABEL_MANAGED_BY, LABEL_MIRRORED, LABEL_SERVICE_NAME,
    MANAGED_BY,
};

/// A remote Service: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Namespace.
    pub namespace: String,
    /// Name (the remote one, without the cluster suffix).
    pub name: String,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn meta_key(m: &ObjectMeta) -> Key {
    Key {
        namespace: m.namespace.clone().unwrap_or_default(),
        name: m.name.clone().unwrap_or_default(),
    }
}

/// Drops what no decision here reads and a real API server makes large:
/// `managedFields` (often bigger than the rest of the object) and status.
fn strip_meta(m: &mut ObjectMeta) {
    m.managed_fields = None;
    if let Some(a) = m.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// A Service as kept in memory: without managed fields and status, and its
/// lists at their length (decoding leaves room for four entries or more).
fn strip_service(mut s: Service) -> Service {
    strip_meta(&mut s.metadata);
    s.status = None;
    if let Some(spec) = s.spec.as_mut() {
        if let Some(p) = spec.ports.as_mut() {
            p.shrink_to_fit();
        }
    }
    s
}

/// Handles `Init`/`InitApply`/`InitDone` as one atomic relist.
#[derive(Debug)]
struct Relist<T> {
    buffer: Option<Vec<T>>,
    synced: bool,
}

impl<T> Default for Relist<T> {
    fn default() -> Self {
        Relist {
            buffer: None,
            synced: false,
        }
    }
}

/// The remote cluster as one Link's watches see it.
#[derive(Debug, Default)]
pub struct Remote {
    services: BTreeMap<Key, Arc<Service>>,
    /// slice (ns/name) → (its Service, ready endpoints in it).
    slices: HashMap<Key, (Key, usize)>,
    ready: HashMap<Key, usize>,
    service_list: Relist<Arc<Service>>,
    /// Listed slices, already reduced to what [`Remote::put_slice`] keeps.
    slice_list: Relist<SliceCount>,
}

/// A remote slice reduced to what readiness needs: its key, its Service and
/// how many endpoints in it are not marked unready.
#[derive(Debug)]
struct SliceCount {
    key: Key,
    service: Option<Key>,
    ready: usize,
}

impl SliceCount {
    fn of(s: &EndpointSlice) -> SliceCount {
        let key = meta_key(&s.metadata);
        let service = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SERVICE_NAME))
            .map(|name| Key {
                namespace: key.namespace.clone(),
                name: name.clone(),
            });
        let ready = s
            .endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .count();
        SliceCount {
            key,
            service,
            ready,
        }
    }
}

impl Remote {
    /// Whether both watches have completed a list.
    pub fn synced(&self) -> bool {
        self.service_list.synced && self.slice_list.synced
    }

    /// The selected remote Services.
    pub fn services(&self) -> &BTreeMap<Key, Arc<Service>> {
        &self.services
    }

    /// Whether the remote Service has at least one ready endpoint.
    pub fn has_ready_endpoint(&self, key: &Key) -> bool {
        self.ready.get(key).copied().unwrap_or(0) > 0
    }

    /// Applies a Service event; returns the keys that changed.
    pub fn apply_service(&mut self, event: Event<Service>) -> BTreeSet<Key> {
        let mut dirty = BTreeSet::new();
        match event {
            Event::Init => self.service_list.buffer = Some(Vec::new()),
            Event::InitApply(s) => self
                .service_list
                .buffer
                .get_or_insert_with(Vec::new)
                .push(Arc::new(strip_service(s))),
            Event::InitDone => {
                let listed = self.service_list.buffer.take().unwrap_or_default();
                let next: BTreeMap<Key, Arc<Service>> = listed
                    .into_iter()
                    .map(|s| (meta_key(&s.metadata), s))
                    .collect();
                dirty.extend(self.services.keys().cloned());
                dirty.extend(next.keys().cloned());
                self.services = next;
                self.service_list.synced = true;
            }
            Event::Apply(s) => {
                let key = meta_key(&s.metadata);
                self.services
                    .insert(key.clone(), Arc::new(strip_service(s)));
                dirty.insert(key);
            }
            Event::Delete(s) => {
                let key = meta_key(&s.metadata);
                self.services.remove(&key);
                dirty.insert(key);
            }
        }
        dirty
    }

    /// Applies an EndpointSlice event; returns the Services whose readiness changed.
    pub fn apply_slice(&mut self, event: Event<EndpointSlice>) -> BTreeSet<Key> {
        let mut dirty = BTreeSet::new();
        match event {
            Event::Init => self.slice_list.buffer = Some(Vec::new()),
            Event::InitApply(s) => self
                .slice_list
                .buffer
                .get_or_insert_with(Vec::new)
                .push(SliceCount::of(&s)),
            Event::InitDone => {
                let listed = self.slice_list.buffer.take().unwrap_or_default();
                let before: BTreeMap<Key, usize> =
                    self.ready.iter().map(|(k, v)| (k.clone(), *v)).collect();
                self.slices.clear();
                self.ready.clear();
                for s in listed {
                    self.put_slice(s);
                }
                let after: BTreeMap<Key, usize> =
                    self.ready.iter().map(|(k, v)| (k.clone(), *v)).collect();
                for k in before.keys().chain(after.keys()) {
                    if (before.get(k).copied().unwrap_or(0) > 0)
                        != (after.get(k).copied().unwrap_or(0) > 0)
                    {
                        dirty.insert(k.clone());
                    }
                }
                self.slice_list.synced = true;
            }
            Event::Apply(s) => {
                let removed = self.remove_slice(&meta_key(&s.metadata));
                let added = self.put_slice(SliceCount::of(&s));
                dirty.extend(removed.into_iter().chain(added));
            }
            Event::Delete(s) => {
                dirty.extend(self.remove_slice(&meta_key(&s.metadata)));
            }
        }
        dirty
    }

    fn put_slice(&mut self, s: SliceCount) -> Option<Key> {
        let svc = s.service?;
        *self.ready.entry(svc.clone()).or_default() += s.ready;
        self.slices.insert(s.key, (svc.clone(), s.ready));
        Some(svc)
    }

    fn remove_slice(&mut self, key: &Key) -> Option<Key> {
        let (svc, ready) = self.slices.remove(key)?;
        if let Some(n) = self.ready.get_mut(&svc) {
            *n = n.saturating_sub(ready);
            if *n == 0 {
                self.ready.remove(&svc);
            }
        }
        Some(svc)
    }
}

/// The mirrors of one Link that exist here (Services and slices labelled as
/// mirrors of its target cluster), by the remote Service they mirror.
#[derive(Debug, Default)]
pub struct Local {
    target: String,
    link_ref: String,
    services: BTreeMap<Key, Service>,
    /// By remote Service and slice name: one map, not one per Service (a
    /// B-tree node holds room for eleven slices however few it has).
    slices: BTreeMap<(Key, String), SliceHave>,
    service_list: Relist<Service>,
    /// Listed slices, already reduced to what is kept of them.
    slice_list: Relist<((Key, String), SliceHave)>,
    /// Objects this worker wrote whose own watch event has not arrived yet.
    echoes: Echoes,
}

/// What this worker wrote and its watch has not shown back yet.
///
/// A write's response is recorded at once (write-through), so the next write
/// carries the new `resourceVersion`. The watch is ordered but lags: events
/// of older versions of the same object can still be on their way, and
/// applying one would put a stale version back, so the next replace gets a
/// 409. Until the watch delivers the written version (or, after our delete,
/// a delete), the object's events are older than what is recorded and are
/// skipped. No `resourceVersion` is compared for order, as the API
/// conventions require; a relist is authoritative and clears everything.
#[derive(Debug, Default)]
struct Echoes(HashMap<(&'static str, String, String), Echo>);

#[derive(Debug, PartialEq, Eq)]
enum Echo {
    /// We wrote this `resourceVersion`.
    Version(String),
    /// We deleted the object.
    Deleted,
}

impl Echoes {
    fn id(kind: &'static str, m: &ObjectMeta) -> (&'static str, String, String) {
        (
            kind,
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    }

    /// Records our write of `m` (`deleted`: our delete).
    fn wrote(&mut self, kind: &'static str, m: &ObjectMeta, deleted: bool) {
        let echo = match (&m.resource_version, deleted) {
            (_, true) => Echo::Deleted,
            (Some(v), false) => Echo::Version(v.clone()),
            // Nothing to wait for: the next event is as good as any.
            (None, false) => {
                self.0.remove(&Self::id(kind, m));
                return;
            }
        };
        self.0.insert(Self::id(kind, m), echo);
    }

    /// Whether a watch event for `m` is older than our own write of it.
    fn stale(&mut self, kind: &'static str, m: &ObjectMeta, deleted: bool) -> bool {
        let id = Self::id(kind, m);
        let Some(echo) = self.0.get(&id) else {
            return false;
        };
        let ours = match echo {
            Echo::Version(v) => !deleted && m.resource_version.as_ref() == Some(v),
            Echo::Deleted => deleted,
        };
        if ours {
            self.0.remove(&id);
        }
        !ours
    }
}

impl Local {
    /// An empty view for the mirrors Link `link_ref` (`ns/name`) wrote for `target`.
    pub fn new(target: &str, link_ref: &str) -> Local {
        Local {
            target: target.into(),
            link_ref: link_ref.into(),
            ..Local::default()
        }
    }

    /// Whether both local watches have completed a list.
    pub fn synced(&self) -> bool {
        self.service_list.synced && self.slice_list.synced
    }

    /// The remote key a local mirror name stands for.
    fn remote_key(&self, namespace: &str, mirror: &str) -> Option<Key> {
        let name = mirror.strip_suffix(&format!("-{}", self.target))?;
        Some(Key {
            namespace: namespace.into(),
            name: name.into(),
        })
    }

    fn labelled(&self, m: &ObjectMeta) -> bool {
        let l = m.labels.as_ref();
        l.and_then(|l| l.get(LABEL_MIRRORED)).map(String::as_str) == Some("true")
            && l.and_then(|l| l.get(LABEL_CLUSTER)) == Some(&self.target)
    }

    /// The mirror Service of `key`, if one exists here.
    pub fn service(&self, key: &Key) -> Option<&Service> {
        self.services.get(key)
    }

    /// The slices of `key`'s mirror, by slice name.
    pub fn slices(&self, key: &Key) -> BTreeMap<String, SliceHave> {
        self.slices_of(key)
            .map(|((_, name), s)| (name.clone(), s.clone()))
            .collect()
    }

    fn slices_of<'a>(
        &'a self,
        key: &'a Key,
    ) -> impl Iterator<Item = (&'a (Key, String), &'a SliceHave)> + 'a {
        self.slices
            .range((key.clone(), String::new())..)
            .take_while(move |((k, _), _)| k == key)
    }

    /// Every remote key with a mirror object here.
    pub fn keys(&self) -> BTreeSet<Key> {
        self.services
            .keys()
            .chain(self.slices.keys().map(|(k, _)| k))
            .cloned()
            .collect()
    }

    /// Whether any slice here marks an endpoint ready (adopted at start).
    pub fn any_ready(&self) -> bool {
        self.slices.values().any(|s| s.any_ready)
    }

    /// Records the result of our write of `key`'s mirror Service: the object
    /// the API server answered with, or `None` after our delete.
    pub fn wrote_service(&mut self, key: &Key, svc: Option<Service>) {
        match svc {
            Some(s) => {
                self.echoes.wrote("Service", &s.metadata, false);
                self.services.insert(key.clone(), strip_service(s));
            }
            None => {
                if let Some(old) = self.services.remove(key) {
                    self.echoes.wrote("Service", &old.metadata, true);
                }
            }
        }
    }

    /// Records the result of our write of one of `key`'s mirror slices.
    pub fn wrote_slice(&mut self, key: &Key, name: &str, slice: Option<EndpointSlice>) {
        match &slice {
            Some(s) => self.echoes.wrote("EndpointSlice", &s.metadata, false),
            None => {
                if self.slices.contains_key(&(key.clone(), name.to_string())) {
                    let m = ObjectMeta {
                        namespace: Some(key.namespace.clone()),
                        name: Some(name.to_string()),
                        ..ObjectMeta::default()
                    };
                    self.echoes.wrote("EndpointSlice", &m, true);
                }
            }
        }
        self.put_slice(key, name, slice.as_ref());
    }

    fn put_slice(&mut self, key: &Key, name: &str, slice: Option<&EndpointSlice>) {
        let id = (key.clone(), name.to_string());
        match slice {
            Some(s) => self.slices.insert(id, SliceHave::of(s)),
            None => self.slices.remove(&id),
        };
    }

    /// Applies a local Service event; returns the key to re-check.
    pub fn apply_service(&mut self, event: Event<Service>) -> BTreeSet<Key> {
        let mut dirty = BTreeSet::new();
        match event {
            Event::Init => self.service_list.buffer = Some(Vec::new()),
            Event::InitApply(s) => self
                .service_list
                .buffer
                .get_or_insert_with(Vec::new)
                .push(strip_service(s)),
            Event::InitDone => {
                dirty.extend(self.services.keys().cloned());
                self.services.clear();
                self.echoes.0.retain(|(kind, _, _), _| *kind != "Service");
                for s in self.service_list.buffer.take().unwrap_or_default() {
                    if let Some(k) = self.service_key(&s) {
                        dirty.insert(k.clone());
                        self.services.insert(k, s);
                    }
                }
                self.service_list.synced = true;
            }
            Event::Apply(s) => {
                if let Some(k) = self.service_key(&s) {
                    if !self.echoes.stale("Service", &s.metadata, false) {
                        dirty.insert(k.clone());
                        self.services.insert(k, strip_service(s));
                    }
                }
            }
            Event::Delete(s) => {
                if let Some(k) = self.service_key(&s) {
                    if !self.echoes.stale("Service", &s.metadata, true) {
                        self.services.remove(&k);
                        dirty.insert(k);
                    }
                }
            }
        }
        dirty
    }

    /// Ours: labelled as a mirror of this target and carrying our annotation
    /// (a Linkerd service mirror's mirror of the same cluster is not ours).
    fn service_key(&self, s: &Service) -> Option<Key> {
        let annotated = s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANN_LINK))
            .is_some_and(|v| *v == self.link_ref);
        if !self.labelled(&s.metadata) || !annotated {
            return None;
        }
        self.remote_key(
            s.metadata.namespace.as_deref()?,
            s.metadata.name.as_deref()?,
        )
    }

    fn slice_key(&self, s: &EndpointSlice) -> Option<(Key, String)> {
        let managed = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_MANAGED_BY));
        if !self.labelled(&s.metadata) || managed.map(String::as_str) != Some(MANAGED_BY) {
            return None;
        }
        let service = s.metadata.labels.as_ref()?.get(LABEL_SERVICE_NAME)?;
        let key = self.remote_key(s.metadata.namespace.as_deref()?, service)?;
        Some((key, s.metadata.name.clone()?))
    }

    /// Applies a local EndpointSlice event; returns the key to re-check.
    pub fn apply_slice(&mut self, event: Event<EndpointSlice>) -> BTreeSet<Key> {
        let mut dirty = BTreeSet::new();
        match event {
            Event::Init => self.slice_list.buffer = Some(Vec::new()),
            Event::InitApply(s) => {
                if let Some(id) = self.slice_key(&s) {
                    let have = SliceHave::of(&s);
                    self.slice_list
                        .buffer
                        .get_or_insert_with(Vec::new)
                        .push((id, have));
                }
            }
            Event::InitDone => {
                dirty.extend(self.slices.keys().map(|(k, _)| k.clone()));
                self.slices.clear();
                self.echoes
                    .0
                    .retain(|(kind, _, _), _| *kind != "EndpointSlice");
                for (id, have) in self.slice_list.buffer.take().unwrap_or_default() {
                    dirty.insert(id.0.clone());
                    self.slices.insert(id, have);
                }
                self.slice_list.synced = true;
            }
            Event::Apply(s) => {
                if let Some((k, name)) = self.slice_key(&s) {
                    if !self.echoes.stale("EndpointSlice", &s.metadata, false) {
                        dirty.insert(k.clone());
                        self.put_slice(&k, &name, Some(&s));
                    }
                }
            }
            Event::Delete(s) => {
                if let Some((k, name)) = self.slice_key(&s) {
                    if !self.echoes.stale("EndpointSlice", &s.metadata, true) {
                        self.put_slice(&k, &name, None);
                        dirty.insert(k);
                    }
                }
            }
        }
        dirty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(rv: &str, port: i32) -> Service {
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_MIRRORED.to_string(), "true".to_string());
        labels.insert(LABEL_CLUSTER.to_string(), "east".to_string());
        let mut annotations = BTreeMap::new();
        annotations.insert(ANN_LINK.to_string(), "isthmus/east".to_string());
        Service {
            metadata: ObjectMeta {
                name: Some("podinfo-east".into()),
                namespace: Some("test".into()),
                resource_version: Some(rv.into()),
                labels: Some(labels),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                ports: Some(vec![k8s_openapi::api::core::v1::ServicePort {
                    port,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn key() -> Key {
        Key {
            namespace: "test".into(),
            name: "podinfo".into(),
        }
    }

    fn version(local: &Local) -> Option<String> {
        local.service(&key())?.metadata.resource_version.clone()
    }

    #[test]
    fn watch_events_older_than_our_write_do_not_replace_it() {
        let mut local = Local::new("east", "isthmus/east");
        local.apply_service(Event::Init);
        local.apply_service(Event::InitApply(mirror("3", 80)));
        local.apply_service(Event::InitDone);
        // Our write answered with version 5; the watch still delivers 4
        // (someone's earlier change, or our own previous write).
        local.wrote_service(&key(), Some(mirror("5", 81)));
        assert!(local
            .apply_service(Event::Apply(mirror("4", 80)))
            .is_empty());
        assert_eq!(version(&local).as_deref(), Some("5"));
        // The echo of our write clears the wait; later changes apply again.
        local.apply_service(Event::Apply(mirror("5", 81)));
        assert!(!local
            .apply_service(Event::Apply(mirror("7", 82)))
            .is_empty());
        assert_eq!(version(&local).as_deref(), Some("7"));
    }

    #[test]
    fn after_our_delete_only_the_delete_event_is_awaited() {
        let mut local = Local::new("east", "isthmus/east");
        local.apply_service(Event::Init);
        local.apply_service(Event::InitApply(mirror("3", 80)));
        local.apply_service(Event::InitDone);
        local.wrote_service(&key(), None);
        // A lagging update of the deleted object does not bring it back.
        local.apply_service(Event::Apply(mirror("4", 80)));
        assert!(local.service(&key()).is_none());
        local.apply_service(Event::Delete(mirror("6", 80)));
        // A later re-creation by anyone is seen.
        local.apply_service(Event::Apply(mirror("9", 80)));
        assert_eq!(version(&local).as_deref(), Some("9"));
    }

    #[test]
    fn a_relist_is_authoritative() {
        let mut local = Local::new("east", "isthmus/east");
        local.wrote_service(&key(), Some(mirror("5", 81)));
        local.apply_service(Event::Init);
        local.apply_service(Event::InitApply(mirror("8", 83)));
        local.apply_service(Event::InitDone);
        assert_eq!(version(&local).as_deref(), Some("8"));
        local.apply_service(Event::Apply(mirror("9", 84)));
        assert_eq!(version(&local).as_deref(), Some("9"));
    }
}
