//! Check: the Link's remote credentials work. A client is built from the
//! Secret's kubeconfig exactly as the controller builds it, then reads the
//! remote gateway Service and lists the exported Services; 401, 403 and an
//! unreachable API server are each named.

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, ListParams};
use kube::Client;

use super::cluster::{api_code, api_error, server_url};
use super::links::LinkView;
use super::{Finding, Options};
use crate::mirror::controller::remote_client;
use crate::mirror::link::LinkSettings;

/// The remote cluster as reached with the Link's credentials.
pub struct Remote {
    /// A client that worked; `None` when the credentials do not.
    pub client: Option<Client>,
    /// The credentials findings.
    pub findings: Vec<Finding>,
}

/// Reads the Link's Secret, builds the remote client and tries it.
pub async fn check(
    local: &Client,
    link: &LinkView,
    settings: &LinkSettings,
    opts: &Options,
) -> Remote {
    let target = &settings.target;
    let secret_ref = format!("{}/{}", link.namespace, settings.credentials_secret);
    let secrets: Api<Secret> = Api::namespaced(local.clone(), &link.namespace);
    let again = format!(
        "run `isthmus link --cluster-name {target} --kubeconfig {target}.kubeconfig` and apply its output here"
    );
    let secret = match secrets.get(&settings.credentials_secret).await {
        Ok(s) => s,
        Err(e) => {
            let what = if api_code(&e) == Some(404) {
                format!("the credentials Secret {secret_ref} does not exist")
            } else {
                format!(
                    "cannot read the credentials Secret {secret_ref}: {}",
                    api_error(&e)
                )
            };
            return failed(Finding::fail(what, again));
        }
    };
    let (client, raw) = match remote_client(&secret).await {
        Ok(c) => c,
        Err(why) => {
            return failed(Finding::fail(
                format!("the credentials Secret {secret_ref} is unusable: {why}"),
                again,
            ))
        }
    };
    let url = server_url(&raw).unwrap_or_else(|| "(unknown)".into());
    let gateway_ref = format!("{}/{}", opts.gateway_namespace, opts.gateway_name);
    let services: Api<Service> = Api::namespaced(client.clone(), &opts.gateway_namespace);
    let first = match services.get_opt(&opts.gateway_name).await {
        Ok(found) => {
            let exported: Api<Service> = Api::all(client.clone());
            exported
                .list_metadata(&ListParams::default().labels(&settings.selector).limit(1))
                .await
                .map(|_| found)
        }
        Err(e) => Err(e),
    };
    match first {
        Ok(_) => Remote {
            client: Some(client),
            findings: vec![Finding::ok(format!(
                "{target}'s API server ({url}) accepts the credentials in Secret {secret_ref} (read Service {gateway_ref}, listed exported Services)"
            ))],
        },
        Err(e) => {
            let finding = match api_code(&e) {
                Some(401) => Finding::fail(
                    format!("{target}'s API server ({url}) refuses the credentials in Secret {secret_ref}: {}", api_error(&e)),
                    format!("the token is wrong, expired or revoked: {again}"),
                ),
                Some(403) => Finding::fail(
                    format!("{target}'s API server ({url}) forbids the credentials in Secret {secret_ref} to read Services: {}", api_error(&e)),
                    format!("apply manifests/remote-access.yaml in {target} (ClusterRole isthmus-mirror-remote-access and its binding)"),
                ),
                Some(_) => Finding::fail(
                    format!("{target}'s API server ({url}) failed a read with the credentials in Secret {secret_ref}: {}", api_error(&e)),
                    format!("check {target}'s API server"),
                ),
                None => Finding::fail(
                    format!("cannot reach {target}'s API server at {url}: {}", api_error(&e)),
                    "check the server address in the Secret's kubeconfig (`isthmus link --api-server-address`) and that it is reachable from here",
                ),
            };
            failed(finding)
        }
    }
}

fn failed(f: Finding) -> Remote {
    Remote {
        client: None,
        findings: vec![f],
    }
}
