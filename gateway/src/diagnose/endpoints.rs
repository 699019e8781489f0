//! Check: every mirror Service here (labelled by the controller) and every
//! exported Service, here and in each target, has a ready endpoint.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::Client;

use super::cluster::api_error;
use super::credentials::Remote;
use super::links::LinkView;
use super::Finding;
use crate::mirror::desired::{LABEL_CLUSTER, LABEL_MIRRORED};
use crate::mirror::link::{LinkSettings, DEFAULT_SELECTOR};

/// Ready endpoints per `namespace/service`, from every EndpointSlice
/// (an endpoint counts as ready unless its `ready` condition is false).
async fn ready_counts(client: &Client) -> Result<BTreeMap<String, usize>, kube::Error> {
    let api: Api<EndpointSlice> = Api::all(client.clone());
    let slices = api.list(&ListParams::default()).await?;
    let mut out = BTreeMap::new();
    for s in &slices.items {
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            continue;
        };
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let ready = s
            .endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .count();
        *out.entry(format!("{ns}/{svc}")).or_insert(0) += ready;
    }
    Ok(out)
}

fn key(s: &Service) -> String {
    format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or_default(),
        s.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Mirrors and exported Services of this cluster.
pub async fn mirrors_here(client: &Client, links: &[LinkView]) -> Vec<Finding> {
    let counts = match ready_counts(client).await {
        Ok(c) => c,
        Err(e) => {
            return vec![Finding::fail(
                format!("cannot list EndpointSlices here: {}", api_error(&e)),
                "check that this kubeconfig may list endpointslices",
            )]
        }
    };
    let api: Api<Service> = Api::all(client.clone());
    let mut out = Vec::new();
    match api
        .list(&ListParams::default().labels(&format!("{LABEL_MIRRORED}=true")))
        .await
    {
        Err(e) => out.push(Finding::fail(
            format!("cannot list mirror Services here: {}", api_error(&e)),
            "check that this kubeconfig may list services",
        )),
        Ok(list) => {
            let mut bad = 0;
            for svc in &list.items {
                let k = key(svc);
                if counts.get(&k).copied().unwrap_or(0) > 0 {
                    continue;
                }
                bad += 1;
                let target = svc
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_CLUSTER))
                    .cloned()
                    .unwrap_or_default();
                let link = links.iter().find(|l| l.target() == target).map_or_else(
                    || format!("the Link to {target}"),
                    |l| format!("link {}/{}", l.namespace, l.name),
                );
                let remote = svc
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("mirror.linkerd.io/remote-svc-fq-name"))
                    .cloned()
                    .unwrap_or_default();
                out.push(Finding::fail(
                    format!("mirror {k} (of {remote} in {target}) has no ready endpoints"),
                    format!("its endpoint is {target}'s gateway, ready only while that gateway answers its probe and the remote Service has a ready endpoint: see the checks of {link}"),
                ));
            }
            if bad == 0 {
                out.push(Finding::ok(format!(
                    "all {} mirror Services here have ready endpoints",
                    list.items.len()
                )));
            }
        }
    }
    out.extend(exported(client, DEFAULT_SELECTOR, &counts, "here").await);
    out
}

/// The exported Services of one Link's target.
pub async fn exported_there(s: &LinkSettings, remote: &Remote) -> Vec<Finding> {
    let Some(client) = &remote.client else {
        return vec![Finding::skipped(format!(
            "{}'s exported Services not checked: the credentials do not work",
            s.target
        ))];
    };
    match ready_counts(client).await {
        Ok(counts) => exported(client, &s.selector, &counts, &format!("in {}", s.target)).await,
        Err(e) => vec![Finding::fail(
            format!(
                "cannot list {}'s EndpointSlices: {}",
                s.target,
                api_error(&e)
            ),
            format!(
                "apply manifests/remote-access.yaml in {} (the ClusterRole reads endpointslices)",
                s.target
            ),
        )],
    }
}

async fn exported(
    client: &Client,
    selector: &str,
    counts: &BTreeMap<String, usize>,
    place: &str,
) -> Vec<Finding> {
    let api: Api<Service> = Api::all(client.clone());
    let list = match api.list(&ListParams::default().labels(selector)).await {
        Ok(l) => l,
        Err(e) => {
            return vec![Finding::fail(
                format!("cannot list exported Services {place}: {}", api_error(&e)),
                "check the credentials' permissions (list services)",
            )]
        }
    };
    let mut out = Vec::new();
    for svc in &list.items {
        let k = key(svc);
        if counts.get(&k).copied().unwrap_or(0) == 0 {
            out.push(Finding::fail(
                format!("exported Service {k} {place} has no ready endpoints"),
                format!("its pods are not ready or not running {place}: kubectl -n {} get pods,endpointslices", svc.metadata.namespace.as_deref().unwrap_or_default()),
            ));
        }
    }
    if out.is_empty() {
        out.push(Finding::ok(format!(
            "all {} exported Services {place} have ready endpoints",
            list.items.len()
        )));
    }
    out
}
