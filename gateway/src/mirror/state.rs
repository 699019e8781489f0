//! What one Link's worker knows: the remote Services it selects and whether
//! each has a ready endpoint, and the mirrors that exist here. Pure: watch
//! events in, the keys whose mirror may need a write out.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;

use super::desired::{
    ANN_LINK, LABEL_CLUSTER, LABEL_MANAGED_BY, LABEL_MIRRORED, LABEL_SERVICE_NAME, MANAGED_BY,
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

fn meta_key(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    Key {
        namespace: m.namespace.clone().unwrap_or_default(),
        name: m.name.clone().unwrap_or_default(),
    }
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
    services: BTreeMap<Key, Service>,
    /// slice (ns/name) → (its Service, ready endpoints in it).
    slices: HashMap<Key, (Key, usize)>,
    ready: HashMap<Key, usize>,
    service_list: Relist<Service>,
    slice_list: Relist<EndpointSlice>,
}

impl Remote {
    /// Whether both watches have completed a list.
    pub fn synced(&self) -> bool {
        self.service_list.synced && self.slice_list.synced
    }

    /// The selected remote Services.
    pub fn services(&self) -> &BTreeMap<Key, Service> {
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
                .push(s),
            Event::InitDone => {
                let listed = self.service_list.buffer.take().unwrap_or_default();
                let next: BTreeMap<Key, Service> = listed
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
                self.services.insert(key.clone(), s);
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
            Event::InitApply(s) => self.slice_list.buffer.get_or_insert_with(Vec::new).push(s),
            Event::InitDone => {
                let listed = self.slice_list.buffer.take().unwrap_or_default();
                let before: BTreeMap<Key, usize> =
                    self.ready.iter().map(|(k, v)| (k.clone(), *v)).collect();
                self.slices.clear();
                self.ready.clear();
                for s in listed {
                    self.put_slice(&s);
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
                let added = self.put_slice(&s);
                dirty.extend(removed.into_iter().chain(added));
            }
            Event::Delete(s) => {
                dirty.extend(self.remove_slice(&meta_key(&s.metadata)));
            }
        }
        dirty
    }

    fn put_slice(&mut self, s: &EndpointSlice) -> Option<Key> {
        let key = meta_key(&s.metadata);
        let service = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SERVICE_NAME))?;
        let svc = Key {
            namespace: key.namespace.clone(),
            name: service.clone(),
        };
        let ready = s
            .endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .count();
        *self.ready.entry(svc.clone()).or_default() += ready;
        self.slices.insert(key, (svc.clone(), ready));
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
    slices: BTreeMap<Key, BTreeMap<String, EndpointSlice>>,
    service_list: Relist<Service>,
    slice_list: Relist<EndpointSlice>,
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

    fn labelled(&self, m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
        let l = m.labels.as_ref();
        l.and_then(|l| l.get(LABEL_MIRRORED)).map(String::as_str) == Some("true")
            && l.and_then(|l| l.get(LABEL_CLUSTER)) == Some(&self.target)
    }

    /// The mirror Service of `key`, if one exists here.
    pub fn service(&self, key: &Key) -> Option<&Service> {
        self.services.get(key)
    }

    /// The slices of `key`'s mirror, by slice name.
    pub fn slices(&self, key: &Key) -> Option<&BTreeMap<String, EndpointSlice>> {
        self.slices.get(key)
    }

    /// Every remote key with a mirror object here.
    pub fn keys(&self) -> BTreeSet<Key> {
        self.services
            .keys()
            .chain(self.slices.keys())
            .cloned()
            .collect()
    }

    /// Whether any slice here marks an endpoint ready (adopted at start).
    pub fn any_ready(&self) -> bool {
        self.slices.values().flat_map(BTreeMap::values).any(|s| {
            s.endpoints
                .iter()
                .any(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        })
    }

    /// Records a Service as written (or seen); `None` after a delete.
    pub fn put_service(&mut self, key: &Key, svc: Option<Service>) {
        match svc {
            Some(s) => self.services.insert(key.clone(), s),
            None => self.services.remove(key),
        };
    }

    /// Records a slice as written (or seen); `None` after a delete.
    pub fn put_slice(&mut self, key: &Key, name: &str, slice: Option<EndpointSlice>) {
        match slice {
            Some(s) => {
                self.slices
                    .entry(key.clone())
                    .or_default()
                    .insert(name.into(), s);
            }
            None => {
                if let Some(m) = self.slices.get_mut(key) {
                    m.remove(name);
                    if m.is_empty() {
                        self.slices.remove(key);
                    }
                }
            }
        }
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
                .push(s),
            Event::InitDone => {
                dirty.extend(self.services.keys().cloned());
                self.services.clear();
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
                    dirty.insert(k.clone());
                    self.services.insert(k, s);
                }
            }
            Event::Delete(s) => {
                if let Some(k) = self.service_key(&s) {
                    self.services.remove(&k);
                    dirty.insert(k);
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
            Event::InitApply(s) => self.slice_list.buffer.get_or_insert_with(Vec::new).push(s),
            Event::InitDone => {
                dirty.extend(self.slices.keys().cloned());
                self.slices.clear();
                for s in self.slice_list.buffer.take().unwrap_or_default() {
                    if let Some((k, name)) = self.slice_key(&s) {
                        dirty.insert(k.clone());
                        self.put_slice(&k, &name, Some(s));
                    }
                }
                self.slice_list.synced = true;
            }
            Event::Apply(s) => {
                if let Some((k, name)) = self.slice_key(&s) {
                    dirty.insert(k.clone());
                    self.put_slice(&k, &name, Some(s));
                }
            }
            Event::Delete(s) => {
                if let Some((k, name)) = self.slice_key(&s) {
                    self.put_slice(&k, &name, None);
                    dirty.insert(k);
                }
            }
        }
        dirty
    }
}
