//! Clients for the CLI views: this cluster from a kubeconfig file and context
//! (as `kubectl --kubeconfig F --context C`), and API errors in words.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

/// A client for the cluster of `context` in `kubeconfig` (default: `$KUBECONFIG`,
/// `~/.kube/config`, then in-cluster credentials when no context is named).
pub async fn connect(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Client, String> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..KubeConfigOptions::default()
    };
    let config = match kubeconfig {
        Some(p) => {
            let kc = Kubeconfig::read_from(p)
                .map_err(|e| format!("cannot read kubeconfig {}: {e}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", p.display()))?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| format!("kubeconfig ($KUBECONFIG, ~/.kube/config): {e}"))?,
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no kubeconfig or in-cluster credentials: {e}"))?,
    };
    Client::try_from(config).map_err(|e| format!("client: {e}"))
}

/// How an API call failed, for a finding: `401 Unauthorized: ...`, `403 ...`,
/// or the transport error.
pub fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

/// The HTTP status of an API error, if the server answered.
pub fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// The API server URL of a kubeconfig document's current context, if it names one.
pub fn server_url(kubeconfig: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(kubeconfig).ok()?;
    let kc = Kubeconfig::from_yaml(text).ok()?;
    let ctx_name = kc.current_context.clone()?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)?
        .context
        .clone()?;
    let cluster = kc.clusters.iter().find(|c| c.name == ctx.cluster)?;
    cluster.cluster.as_ref()?.server.clone()
}
