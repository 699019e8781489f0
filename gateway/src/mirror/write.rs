//! The thin writer: makes one remote Service's mirror here match what
//! [`super::desired`] computed, with create, replace and delete calls.
//!
//! Never overwrites what is not ours: a create that finds an object of the
//! same name that is not a mirror of this Link is a name collision, reported,
//! and the object is left alone.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, PostParams};
use kube::Client;

use super::desired::{self, Mirror, SliceHave, ANN_LINK, LABEL_MANAGED_BY, MANAGED_BY};
use super::metrics::MirrorMetrics;
use super::state::Key;

/// How one key's write went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// A Service or slice of the mirror's name exists and is not ours.
    Collision(String),
    /// The API server refused or failed a call.
    Failed(String),
}

/// A cache update from one write.
#[derive(Debug)]
pub enum Change<T> {
    /// The object as the API server now holds it.
    Put(T),
    /// The object is gone.
    Gone,
}

/// The result of syncing one key.
#[derive(Debug)]
pub struct Synced {
    /// The remote Service.
    pub key: Key,
    /// What happened to the mirror Service.
    pub service: Option<Change<Service>>,
    /// What happened to each slice, by name.
    pub slices: Vec<(String, Change<EndpointSlice>)>,
    /// The namespace now exists.
    pub namespace_ok: bool,
    /// The write's outcome.
    pub result: Result<(), WriteError>,
}

/// The clients and context one key's sync needs.
#[derive(Clone)]
pub struct Writer {
    /// The local cluster.
    pub client: Client,
    /// `<ns>/<link>`.
    pub link_ref: String,
    /// Metrics.
    pub metrics: MirrorMetrics,
}

fn api_err(e: &kube::Error) -> Option<&kube::core::Status> {
    match e {
        kube::Error::Api(s) => Some(s),
        _ => None,
    }
}

impl Writer {
    fn count(&self, kind: &str, op: &str, ok: bool) {
        self.metrics
            .writes
            .with_label_values(&[kind, op, if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Makes `key`'s mirror here match `want` (`None`: no mirror).
    pub async fn sync(
        &self,
        key: Key,
        want: Option<Mirror>,
        have: Option<Service>,
        have_slices: BTreeMap<String, SliceHave>,
        namespace_known: bool,
    ) -> Synced {
        let mut out = Synced {
            key: key.clone(),
            service: None,
            slices: Vec::new(),
            namespace_ok: namespace_known,
            result: Ok(()),
        };
        let services: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &key.namespace);
        let Some(want) = want else {
            for (name, _) in have_slices {
                match self.delete(&slices, &name, "endpointslice").await {
                    Ok(()) => out.slices.push((name, Change::Gone)),
                    Err(e) => out.result = Err(e),
                }
            }
            if let Some(svc) = have {
                let name = svc.metadata.name.clone().unwrap_or_default();
                match self.delete(&services, &name, "service").await {
                    Ok(()) => out.service = Some(Change::Gone),
                    Err(e) => out.result = Err(e),
                }
            }
            return out;
        };
        if !namespace_known {
            match self.ensure_namespace(&key.namespace).await {
                Ok(()) => out.namespace_ok = true,
                Err(e) => {
                    out.result = Err(e);
                    return out;
                }
            }
        }
        let svc = match have {
            Some(h) if desired::service_matches(&h, &want.service) => h,
            Some(h) => {
                let next = desired::service_update(&h, &want.service);
                let name = next.metadata.name.clone().unwrap_or_default();
                let r = services.replace(&name, &PostParams::default(), &next).await;
                self.count("service", "replace", r.is_ok());
                match r {
                    Ok(s) => {
                        out.service = Some(Change::Put(s.clone()));
                        s
                    }
                    Err(e) => {
                        out.result =
                            Err(WriteError::Failed(format!("replace Service {name}: {e}")));
                        return out;
                    }
                }
            }
            None => match self.create(&services, &want.service, "service").await {
                Ok(s) => {
                    out.service = Some(Change::Put(s.clone()));
                    s
                }
                Err(e) => {
                    out.result = Err(e);
                    return out;
                }
            },
        };
        let owner = owner_ref(&svc);
        let mut keep = HashSet::new();
        for mut slice in want.slices {
            let name = slice.metadata.name.clone().unwrap_or_default();
            keep.insert(name.clone());
            slice.metadata.owner_references = owner.clone().map(|o| vec![o]);
            let written = match have_slices.get(&name) {
                Some(h) if h.matches(&slice) => continue,
                Some(h) => {
                    slice.metadata.resource_version = h.resource_version.clone();
                    let r = slices.replace(&name, &PostParams::default(), &slice).await;
                    self.count("endpointslice", "replace", r.is_ok());
                    r.map_err(|e| WriteError::Failed(format!("replace EndpointSlice {name}: {e}")))
                }
                None => self.create(&slices, &slice, "endpointslice").await,
            };
            match written {
                Ok(s) => out.slices.push((name, Change::Put(s))),
                Err(e) => out.result = Err(e),
            }
        }
        for name in have_slices.keys().filter(|n| !keep.contains(*n)) {
            match self.delete(&slices, name, "endpointslice").await {
                Ok(()) => out.slices.push((name.clone(), Change::Gone)),
                Err(e) => out.result = Err(e),
            }
        }
        out
    }

    /// Creates `obj`; an existing object of that name is adopted only if it
    /// is already ours (a cache that lags our own write), else a collision.
    async fn create<K>(&self, api: &Api<K>, obj: &K, kind: &str) -> Result<K, WriteError>
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let name = obj.meta().name.clone().unwrap_or_default();
        let r = api.create(&PostParams::default(), obj).await;
        self.count(kind, "create", r.is_ok());
        match r {
            Ok(o) => Ok(o),
            Err(e) if api_err(&e).is_some_and(|s| s.is_already_exists()) => {
                let existing = api
                    .get_opt(&name)
                    .await
                    .map_err(|e| WriteError::Failed(format!("get {kind} {name}: {e}")))?;
                match existing {
                    Some(o) if self.is_ours(o.meta()) => Ok(o),
                    Some(_) => Err(WriteError::Collision(format!(
                        "a {kind} named {name} already exists here and is not a mirror of this Link; it is left alone"
                    ))),
                    None => Err(WriteError::Failed(format!(
                        "{kind} {name} existed and vanished; will retry"
                    ))),
                }
            }
            Err(e) => Err(WriteError::Failed(format!("create {kind} {name}: {e}"))),
        }
    }

    fn is_ours(&self, m: &ObjectMeta) -> bool {
        let annotated = m
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANN_LINK))
            .is_some_and(|v| *v == self.link_ref);
        let managed = m
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_MANAGED_BY))
            .is_some_and(|v| v == MANAGED_BY);
        annotated || managed
    }

    async fn delete<K>(&self, api: &Api<K>, name: &str, kind: &str) -> Result<(), WriteError>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let r = api.delete(name, &DeleteParams::default()).await;
        self.count(kind, "delete", r.is_ok());
        match r {
            Ok(_) => Ok(()),
            Err(e) if api_err(&e).is_some_and(|s| s.is_not_found()) => Ok(()),
            Err(e) => Err(WriteError::Failed(format!("delete {kind} {name}: {e}"))),
        }
    }

    async fn ensure_namespace(&self, name: &str) -> Result<(), WriteError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api.get_opt(name).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {}
            Err(e) => return Err(WriteError::Failed(format!("get Namespace {name}: {e}"))),
        }
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let r = api.create(&PostParams::default(), &ns).await;
        self.count("namespace", "create", r.is_ok());
        match r {
            Ok(_) => Ok(()),
            Err(e) if api_err(&e).is_some_and(|s| s.is_already_exists()) => Ok(()),
            Err(e) => Err(WriteError::Failed(format!("create Namespace {name}: {e}"))),
        }
    }
}

/// The slice's owner: its mirror Service (Kubernetes' garbage collector then
/// removes the slices with the Service).
fn owner_ref(svc: &Service) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.metadata.name.clone()?,
        uid: svc.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}
