//! Check: the CRDs Isthmus needs are served by this cluster's API server
//! (API discovery, as the controllers themselves find them).

use kube::{Client, CustomResourceExt, Resource};

use super::cluster::api_error;
use super::Finding;
use crate::discovery::crd::Mapping;
use crate::mirror::link::Link;

/// One finding per CRD: Link (required by `isthmus mirror`) and Mapping.
pub async fn check(client: &Client) -> Vec<Finding> {
    let wanted = [
        (
            Link::plural(&()).to_string(),
            Link::api_version(&()).to_string(),
            Link::crd(),
        ),
        (
            Mapping::plural(&()).to_string(),
            Mapping::api_version(&()).to_string(),
            Mapping::crd(),
        ),
    ];
    let mut out = Vec::new();
    for (plural, api_version, crd) in wanted {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let kind = crd.spec.names.kind.clone();
        match client.list_api_group_resources(&api_version).await {
            Ok(list) if list.resources.iter().any(|r| r.name == plural) => {
                out.push(Finding::ok(format!(
                    "CRD {name} is installed ({api_version} {kind})"
                )));
            }
            Ok(_) => out.push(missing(&name, &kind)),
            Err(kube::Error::Api(s)) if s.code == 404 => out.push(missing(&name, &kind)),
            Err(e) => out.push(Finding::fail(
                format!(
                    "cannot ask the API server whether CRD {name} is installed: {}",
                    api_error(&e)
                ),
                "check the kubeconfig, context and that the API server is reachable",
            )),
        }
    }
    out
}

fn missing(name: &str, kind: &str) -> Finding {
    Finding::fail(
        format!("CRD {name} is not installed: the API server does not serve {kind}"),
        format!(
            "install it: isthmus crds {} | kubectl apply -f -",
            kind.to_ascii_lowercase()
        ),
    )
}
