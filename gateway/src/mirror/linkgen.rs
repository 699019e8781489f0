//! `isthmus link`: reads the target cluster's gateway Service and remote-access
//! token and prints the credentials Secret and the Link to apply in the
//! calling cluster (as `linkerd multicluster link-gen` does).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::Api;
use kube::Client;

use super::controller::CREDENTIALS_TYPE;
use super::link::{match_labels, Link, LinkSpec, ProbeSpec, DEFAULT_SELECTOR};

/// The ServiceAccount (and its token Secret) the calling cluster uses.
pub const REMOTE_ACCESS: &str = "isthmus-mirror-remote-access";

/// What `isthmus link` was asked for.
#[derive(Clone, Debug)]
pub struct LinkOptions {
    /// The target cluster's name (the Link's name and the mirrors' suffix).
    pub cluster_name: String,
    /// The target cluster's DNS domain.
    pub cluster_domain: String,
    /// Namespace of the gateway Service and the remote-access ServiceAccount.
    pub gateway_namespace: String,
    /// The gateway Service's name.
    pub gateway_name: String,
    /// Overrides the load balancer's addresses.
    pub gateway_addresses: Option<String>,
    /// The API server address written into the kubeconfig (default: the one used now).
    pub api_server_address: Option<String>,
    /// Namespace the Secret and Link go to in the calling cluster.
    pub namespace: String,
}

/// What the target cluster's kubeconfig says of its API server.
#[derive(Clone, Debug)]
pub struct ApiServer {
    /// Its URL.
    pub url: String,
    /// Its CA bundle (PEM), when the kubeconfig has one.
    pub ca_pem: Option<Vec<u8>>,
    /// Skip TLS verification (as the source kubeconfig does).
    pub insecure: bool,
}

/// Builds the Secret and Link YAML, or one line naming what to fix.
pub async fn generate(
    client: &Client,
    server: &ApiServer,
    opts: &LinkOptions,
) -> Result<String, String> {
    let gw_ns = &opts.gateway_namespace;
    let gw = &opts.gateway_name;
    let services: Api<Service> = Api::namespaced(client.clone(), gw_ns);
    let svc = services
        .get_opt(gw)
        .await
        .map_err(|e| format!("cannot read gateway Service {gw_ns}/{gw} in the target cluster: {e}"))?
        .ok_or_else(|| {
            format!("gateway Service {gw_ns}/{gw} not found in the target cluster: apply manifests/ there (kubectl apply -k manifests/) or pass --gateway-namespace/--gateway-name")
        })?;
    let addresses = match &opts.gateway_addresses {
        Some(a) if !a.trim().is_empty() => a.trim().to_string(),
        _ => {
            let ingress = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.clone())
                .unwrap_or_default();
            let addrs: Vec<String> = ingress
                .into_iter()
                .filter_map(|i| i.ip.or(i.hostname))
                .filter(|a| !a.is_empty())
                .collect();
            if addrs.is_empty() {
                return Err(format!("gateway Service {gw_ns}/{gw} has no load-balancer address yet (status.loadBalancer.ingress is empty): wait for it, or pass --gateway-addresses"));
            }
            addrs.join(",")
        }
    };
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let port_named = |name: &str| {
        ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.port)
    };
    let gateway_port = port_named("mc-gateway")
        .ok_or_else(|| format!("gateway Service {gw_ns}/{gw} has no port named mc-gateway"))?;
    let annotations = svc.metadata.annotations.clone().unwrap_or_default();
    let ann = |k: &str| annotations.get(&format!("mirror.linkerd.io/{k}")).cloned();
    let identity = ann("gateway-identity").filter(|i| !i.is_empty()).ok_or_else(|| {
        format!("gateway Service {gw_ns}/{gw} lacks the annotation mirror.linkerd.io/gateway-identity")
    })?;
    let probe_port = port_named("mc-probe")
        .map(|p| p.to_string())
        .or_else(|| ann("probe-port"))
        .ok_or_else(|| format!("gateway Service {gw_ns}/{gw} has no port named mc-probe and no mirror.linkerd.io/probe-port annotation"))?;
    let seconds = |v: Option<String>| {
        v.map(|s| {
            if s.trim().chars().all(|c| c.is_ascii_digit()) {
                format!("{}s", s.trim())
            } else {
                s
            }
        })
    };
    let probe_spec = ProbeSpec {
        path: Some(ann("probe-path").unwrap_or_else(|| "/ready".into())),
        port: Some(probe_port),
        period: Some(seconds(ann("probe-period")).unwrap_or_else(|| "3s".into())),
        timeout: seconds(ann("probe-timeout")),
        failure_threshold: ann("probe-failure-threshold"),
    };

    let secrets: Api<Secret> = Api::namespaced(client.clone(), gw_ns);
    let token_secret = secrets
        .get_opt(REMOTE_ACCESS)
        .await
        .map_err(|e| format!("cannot read Secret {gw_ns}/{REMOTE_ACCESS} in the target cluster: {e}"))?
        .ok_or_else(|| format!("Secret {gw_ns}/{REMOTE_ACCESS} not found in the target cluster: apply manifests/ there (it creates the remote-access ServiceAccount and its token)"))?;
    let data = token_secret.data.unwrap_or_default();
    let token = data
        .get("token")
        .map(|b| b.0.clone())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("Secret {gw_ns}/{REMOTE_ACCESS} has no token yet (the token controller fills it in): try again in a moment"))?;
    let token = String::from_utf8(token)
        .map_err(|_| format!("Secret {gw_ns}/{REMOTE_ACCESS}: token is not text"))?;
    let ca = data
        .get("ca.crt")
        .map(|b| b.0.clone())
        .or_else(|| server.ca_pem.clone());
    let url = opts
        .api_server_address
        .clone()
        .unwrap_or_else(|| server.url.clone());
    let kubeconfig = kubeconfig_yaml(
        &opts.cluster_name,
        &url,
        ca.as_deref(),
        server.insecure,
        token.trim(),
    );

    let secret_name = format!("cluster-credentials-{}", opts.cluster_name);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.clone()),
            namespace: Some(opts.namespace.clone()),
            labels: Some(BTreeMap::from([(
                "mirror.linkerd.io/cluster-name".to_string(),
                opts.cluster_name.clone(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some(CREDENTIALS_TYPE.into()),
        data: Some(BTreeMap::from([(
            "kubeconfig".to_string(),
            ByteString(kubeconfig.into_bytes()),
        )])),
        ..Secret::default()
    };
    let (key, value) = DEFAULT_SELECTOR
        .split_once('=')
        .unwrap_or((DEFAULT_SELECTOR, "true"));
    let mut link = Link::new(
        &opts.cluster_name,
        LinkSpec {
            target_cluster_name: opts.cluster_name.clone(),
            target_cluster_domain: Some(opts.cluster_domain.clone()),
            cluster_credentials_secret: secret_name,
            gateway_address: addresses,
            gateway_port: gateway_port.to_string(),
            gateway_identity: identity,
            probe_spec,
            selector: Some(match_labels(&[(key, value)])),
            ..LinkSpec::default()
        },
    );
    link.metadata.namespace = Some(opts.namespace.clone());
    let secret_yaml = serde_yaml::to_string(&secret).map_err(|e| e.to_string())?;
    let link_yaml = serde_yaml::to_string(&link).map_err(|e| e.to_string())?;
    Ok(format!("{secret_yaml}---\n{link_yaml}"))
}

/// A kubeconfig with one cluster, one token user and one context.
fn kubeconfig_yaml(
    name: &str,
    url: &str,
    ca: Option<&[u8]>,
    insecure: bool,
    token: &str,
) -> String {
    use base64::Engine;
    let mut cluster = serde_json::json!({ "server": url });
    if let Some(ca) = ca {
        cluster["certificate-authority-data"] =
            base64::engine::general_purpose::STANDARD.encode(ca).into();
    }
    if insecure {
        cluster["insecure-skip-tls-verify"] = true.into();
    }
    let kc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": name, "cluster": cluster }],
        "users": [{ "name": format!("{REMOTE_ACCESS}-{name}"), "user": { "token": token } }],
        "contexts": [{ "name": name, "context": { "cluster": name, "user": format!("{REMOTE_ACCESS}-{name}") } }],
        "current-context": name,
    });
    serde_yaml::to_string(&kc).unwrap_or_default()
}
