//! Watched objects decoded straight into their type, one at a time.
//!
//! kube-rs decodes a LIST page or a WATCH event as a whole: with the typed
//! object as `K`, one object that does not fit (a Mapping `weight` beyond
//! `u32`) would fail the whole page, and the watch with it. [`Lenient<K>`]
//! is what the watcher decodes instead: each object as JSON first, then into
//! `K` on its own; one that does not fit is kept as the reason, with just
//! enough metadata to report it. The watch goes on.
//!
//! It replaces a round trip through `DynamicObject` (decode, encode to a
//! JSON value, decode into `K`) that was 14 % of the initial sync's CPU at
//! 100,000 Services (perf, `benches/src/bin/convergence.rs`).

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::ApiResource;
use kube::core::DynamicResourceScope;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// One watched object: decoded into `K`, or why it could not be.
#[derive(Clone, Debug)]
pub(super) struct Lenient<K> {
    /// Name, namespace, resourceVersion and generation (what the watcher
    /// and an error report need); the decoded object has all of its own.
    pub(super) metadata: ObjectMeta,
    /// The object, or why it does not fit `K`.
    pub(super) decoded: Result<K, Rejected>,
}

/// An object that does not decode into its type.
#[derive(Clone, Debug)]
pub(super) struct Rejected {
    /// serde's message, prefixed with "cannot be decoded".
    pub(super) reason: String,
    /// The object's `status`, as sent (a Mapping's, to compare before writing).
    pub(super) status: Option<Value>,
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Lenient<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let meta = value.get("metadata");
        let text = |field: &str| {
            meta.and_then(|m| m.get(field))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let metadata = ObjectMeta {
            name: text("name"),
            namespace: text("namespace"),
            resource_version: text("resourceVersion"),
            generation: meta
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64),
            ..ObjectMeta::default()
        };
        // Kept aside only in case the object is refused: a status is small
        // (a Service's load balancer, a Mapping's conditions).
        let status = value.get("status").cloned();
        let decoded = serde_json::from_value::<K>(value).map_err(|e| Rejected {
            reason: format!("cannot be decoded: {e}"),
            status,
        });
        Ok(Lenient { metadata, decoded })
    }
}

/// Like `DynamicObject`: the API resource is given at run time.
impl<K> Resource for Lenient<K> {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use kube::core::ObjectList;

    /// A list page with one object that does not fit its type: the others
    /// decode, the bad one is kept with its reason and metadata.
    #[test]
    fn one_bad_object_does_not_fail_its_list_page() {
        let page = r#"{
            "apiVersion": "v1", "kind": "ServiceList",
            "metadata": {"resourceVersion": "42"},
            "items": [
                {"metadata": {"name": "a", "namespace": "ns", "resourceVersion": "7"},
                 "spec": {"ports": [{"port": 80}]}},
                {"metadata": {"name": "b", "namespace": "ns", "resourceVersion": "8", "generation": 3},
                 "spec": {"ports": [{"port": "eighty"}]}, "status": {"loadBalancer": {}}}
            ]
        }"#;
        let list: ObjectList<Lenient<Service>> = serde_json::from_str(page).expect("page decodes");
        assert_eq!(list.items.len(), 2);
        let a = list.items[0].decoded.as_ref().expect("a fits");
        assert_eq!(a.metadata.name.as_deref(), Some("a"));
        assert_eq!(list.items[0].meta().resource_version.as_deref(), Some("7"));
        let b = &list.items[1];
        assert_eq!(b.meta().name.as_deref(), Some("b"));
        assert_eq!(b.meta().namespace.as_deref(), Some("ns"));
        assert_eq!(b.meta().generation, Some(3));
        let rejected = b.decoded.as_ref().expect_err("b does not fit");
        assert!(
            rejected.reason.starts_with("cannot be decoded: "),
            "{}",
            rejected.reason
        );
        assert!(rejected.status.is_some());
    }
}
