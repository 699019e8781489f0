//! Check: each Link is valid, re-validated with the controller's own code
//! ([`crate::mirror::controller::parse_link`]), and the controller's verdict
//! in its status (`Valid`; whether it reported at all).

use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::ApiResource;
use kube::Client;

use super::cluster::api_error;
use super::Finding;
use crate::mirror::controller::parse_link;
use crate::mirror::link::{Link, LinkSettings, LinkStatus};

/// One Link as listed, with its validated settings when valid.
#[derive(Clone, Debug)]
pub struct LinkView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The spec's settings; `None` when the spec is refused.
    pub settings: Option<LinkSettings>,
    /// What the controller reported.
    pub status: Option<LinkStatus>,
    /// The validity findings.
    pub findings: Vec<Finding>,
}

impl LinkView {
    /// The target cluster's name (the Link's name when the spec is refused).
    pub fn target(&self) -> &str {
        self.settings
            .as_ref()
            .map_or(&self.name, |s| s.target.as_str())
    }
}

/// The Links of `namespace` (all when `None`), each checked.
pub async fn list(client: &Client, namespace: Option<&str>) -> Result<Vec<LinkView>, Finding> {
    let ar = ApiResource::erase::<Link>(&());
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let list = api.list(&ListParams::default()).await.map_err(|e| {
        Finding::fail(
            format!("cannot list Links: {}", api_error(&e)),
            "check that this kubeconfig may list links.isthmus.dev",
        )
    })?;
    Ok(list.items.iter().map(view).collect())
}

/// Checks one listed Link.
pub fn view(obj: &DynamicObject) -> LinkView {
    let namespace = obj.metadata.namespace.clone().unwrap_or_default();
    let name = obj.metadata.name.clone().unwrap_or_default();
    let value = serde_json::to_value(obj).unwrap_or_default();
    let mut findings = Vec::new();
    let settings = match parse_link(&value) {
        Ok(s) => {
            findings.push(Finding::ok("the Link's spec is valid"));
            Some(s)
        }
        Err(why) => {
            findings.push(Finding::fail(
                format!("the Link's spec is invalid: {why}"),
                format!("fix it (kubectl -n {namespace} edit link {name}) or regenerate it with `isthmus link`"),
            ));
            None
        }
    };
    let status: Option<LinkStatus> = value
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    match &status {
        None => findings.push(Finding::fail(
            "the mirror controller has not reported on this Link (no status)",
            format!("is `isthmus mirror` running and watching namespace {namespace}? kubectl -n {namespace} logs deploy/isthmus-mirror"),
        )),
        Some(st) => match st.conditions.iter().find(|c| c.type_ == "Valid") {
            Some(c) if c.status == "True" => {
                findings.push(Finding::ok("the mirror controller accepts the Link (Valid=True)"))
            }
            Some(c) => findings.push(Finding::fail(
                format!("the mirror controller refuses the Link: Valid={} {}: {}", c.status, c.reason, c.message),
                format!("fix the Link: kubectl -n {namespace} edit link {name}"),
            )),
            None => findings.push(Finding::fail(
                "the Link status has no Valid condition",
                "upgrade `isthmus mirror` or check its logs",
            )),
        },
    }
    LinkView {
        namespace,
        name,
        settings,
        status,
        findings,
    }
}
