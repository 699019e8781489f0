//! One side's gateway as installed: its Service (the address peers use), the
//! Deployment behind it, and the trust anchors that Deployment really mounts,
//! found by following `--config` to the config file's volume, the config's
//! `tls.trust_anchors` path to its volume, and that volume to its ConfigMap
//! or Secret key. No object name is assumed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, PodSpec, Secret, Service};
use kube::api::{Api, ListParams};
use kube::Client;
use rustls::pki_types::CertificateDer;

use super::cluster::{api_code, api_error};
use super::trust::{self, Presented};
use super::{Finding, Options};

/// The config path when the container names none (the image's default).
const DEFAULT_CONFIG: &str = "/etc/isthmus/config.yaml";

/// A trust bundle and where it was read from.
#[derive(Clone, Debug)]
pub struct Anchors {
    /// `ConfigMap isthmus/isthmus-trust-anchors key ca.crt`.
    pub source: String,
    /// The CA certificates.
    pub certs: Vec<CertificateDer<'static>>,
}

impl Anchors {
    /// The anchors' subjects, `[CN=a, CN=b]`.
    pub fn subjects(&self) -> String {
        let names: Vec<String> = self.certs.iter().map(|c| trust::subject(c)).collect();
        format!("[{}]", names.join("; "))
    }
}

/// One cluster's gateway as found.
#[derive(Clone, Debug, Default)]
pub struct Side {
    /// `this cluster` or the target's name.
    pub name: String,
    /// The trust anchors its gateway uses.
    pub anchors: Option<Anchors>,
    /// The chain its gateway presents (this cluster only), or why it was not taken.
    pub presented: Option<Result<Presented, String>>,
    /// What was found.
    pub findings: Vec<Finding>,
}

/// Where a file in the pod comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A ConfigMap key.
    ConfigMap {
        /// ConfigMap name.
        name: String,
        /// Key.
        key: String,
    },
    /// A Secret key.
    Secret {
        /// Secret name.
        name: String,
        /// Key.
        key: String,
    },
}

impl Source {
    fn describe(&self, ns: &str) -> String {
        match self {
            Source::ConfigMap { name, key } => format!("ConfigMap {ns}/{name} key {key}"),
            Source::Secret { name, key } => format!("Secret {ns}/{name} key {key}"),
        }
    }
}

impl Side {
    /// Reads the gateway of the cluster `client` talks to. `gateway` overrides
    /// the Service's address for the presented-chain check (this cluster only;
    /// `None` with `take_chain` false for a remote side).
    pub async fn read(
        client: &Client,
        opts: &Options,
        name: &str,
        gateway: Option<SocketAddr>,
    ) -> Side {
        Side::read_with(client, opts, name, gateway, true).await
    }

    /// [`read`](Self::read), taking the presented chain only when `take_chain`.
    pub async fn read_with(
        client: &Client,
        opts: &Options,
        name: &str,
        gateway: Option<SocketAddr>,
        take_chain: bool,
    ) -> Side {
        let mut side = Side {
            name: name.to_string(),
            ..Side::default()
        };
        let ns = &opts.gateway_namespace;
        let svc_ref = format!("{ns}/{}", opts.gateway_name);
        let services: Api<Service> = Api::namespaced(client.clone(), ns);
        let svc = match services.get_opt(&opts.gateway_name).await {
            Ok(s) => s,
            Err(e) => {
                side.findings.push(Finding::fail(
                    format!(
                        "cannot read {name}'s gateway Service {svc_ref}: {}",
                        api_error(&e)
                    ),
                    permission_hint(name, &e),
                ));
                None
            }
        };
        if svc.is_none() && side.findings.is_empty() {
            side.findings.push(Finding::fail(
                format!("{name} has no gateway Service {svc_ref}"),
                "install the gateway (kubectl apply -k manifests/), or name it with --gateway-namespace/--gateway-name",
            ));
        }
        let address = gateway.or_else(|| svc.as_ref().and_then(service_address));
        match deployment(client, ns, &opts.gateway_name, svc.as_ref()).await {
            Ok(d) => match anchors_of(client, ns, &d).await {
                Ok(a) => {
                    side.findings.push(Finding::ok(format!(
                        "{name}'s gateway trusts {} from {} (mounted by Deployment {ns}/{})",
                        a.subjects(),
                        a.source,
                        d.metadata.name.clone().unwrap_or_default()
                    )));
                    for c in &a.certs {
                        side.findings.extend(trust::expiry(c, &format!("{name}'s trust anchor"), &format!("rotate the trust anchor in {} before it expires; every peer must trust the new one first", a.source)));
                    }
                    side.anchors = Some(a);
                }
                Err(f) => side.findings.push(f),
            },
            Err(f) => side.findings.push(f),
        }
        if take_chain {
            side.presented = Some(match address {
                Some(addr) => {
                    let r = trust::presented(addr, None).await;
                    match &r {
                        Ok(p) => {
                            side.findings.push(Finding::ok(format!(
                                "{name}'s gateway at {addr} presents {}",
                                p.describe()
                            )));
                            if let Some(leaf) = p.chain.first() {
                                side.findings.extend(trust::expiry(leaf, &format!("{name}'s gateway certificate"), "issue a new gateway certificate (cert-manager renews it if it manages the Secret)"));
                            }
                        }
                        Err(e) => side.findings.push(Finding::fail(
                            format!("cannot take the certificate {name}'s gateway presents at {addr}: {e}"),
                            "is the gateway running and its Service reachable from here? (or give its address with --local-gateway)",
                        )),
                    }
                    r
                }
                None => {
                    let why = format!("{name}'s gateway Service has no load-balancer address");
                    side.findings.push(Finding::warn(
                        why.clone(),
                        "give the gateway's address with --local-gateway HOST:PORT",
                    ));
                    Err(why)
                }
            });
        }
        side
    }
}

fn permission_hint(name: &str, e: &kube::Error) -> String {
    match api_code(e) {
        Some(403) => {
            format!("let the credentials read it: apply manifests/remote-access.yaml in {name}")
        }
        Some(401) => "the credentials are refused; see the credentials check".into(),
        _ => "check that the API server is reachable".into(),
    }
}

/// The gateway address of a Service: its first load-balancer IP (or the
/// cluster IP) and the `mc-gateway` port (else the first).
pub fn service_address(svc: &Service) -> Option<SocketAddr> {
    let spec = svc.spec.as_ref()?;
    let ports = spec.ports.as_ref()?;
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("mc-gateway"))
        .or_else(|| ports.first())?
        .port;
    let ip = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .and_then(|i| i.iter().find_map(|i| i.ip.as_ref()?.parse().ok()))
        .or_else(|| spec.cluster_ip.as_ref()?.parse().ok())?;
    Some(SocketAddr::new(ip, u16::try_from(port).ok()?))
}

/// The gateway Deployment: the one whose pods the Service selects, else the
/// one named like the Service.
async fn deployment(
    client: &Client,
    ns: &str,
    name: &str,
    svc: Option<&Service>,
) -> Result<Deployment, Finding> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let list = api.list(&ListParams::default()).await.map_err(|e| {
        Finding::fail(
            format!("cannot list Deployments in {ns} to find the gateway's: {}", api_error(&e)),
            "let the credentials read them: apply manifests/remote-access.yaml (Role isthmus-mirror-remote-access)",
        )
    })?;
    let selector = svc
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    let selected = |d: &&Deployment| {
        let labels = d
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.as_ref());
        !selector.is_empty()
            && labels.is_some_and(|l| selector.iter().all(|(k, v)| l.get(k) == Some(v)))
    };
    list.items
        .iter()
        .find(selected)
        .or_else(|| list.items.iter().find(|d| d.metadata.name.as_deref() == Some(name)))
        .cloned()
        .ok_or_else(|| {
            Finding::fail(
                format!("no Deployment in {ns} runs the gateway (none matches Service {ns}/{name}'s selector or name)"),
                "install the gateway Deployment (manifests/deployment.yaml)",
            )
        })
}

/// Follows the Deployment to the trust anchors its gateway container reads.
async fn anchors_of(client: &Client, ns: &str, d: &Deployment) -> Result<Anchors, Finding> {
    let dname = d.metadata.name.clone().unwrap_or_default();
    let dref = format!("Deployment {ns}/{dname}");
    let fix = "the gateway container must mount its config and trust anchors from ConfigMap or Secret volumes";
    let pod = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .ok_or_else(|| Finding::fail(format!("{dref} has no pod spec"), fix))?;
    let container = pod
        .containers
        .iter()
        .find(|c| c.args.iter().flatten().any(|a| a == "run"))
        .or_else(|| pod.containers.first())
        .ok_or_else(|| Finding::fail(format!("{dref} has no container"), fix))?;
    let config_path = config_arg(container).unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let config_src = mounted(pod, container, &config_path).ok_or_else(|| {
        Finding::fail(
            format!(
                "{dref}: no volume of container {} holds its config {}",
                container.name,
                config_path.display()
            ),
            fix,
        )
    })?;
    let config = read(client, ns, &config_src).await?;
    let config: serde_yaml::Value = serde_yaml::from_slice(&config).map_err(|e| {
        Finding::fail(
            format!(
                "the gateway config in {} does not parse: {e}",
                config_src.describe(ns)
            ),
            "run `isthmus check --config` on it",
        )
    })?;
    let anchors_path = config
        .get("tls")
        .and_then(|t| t.get("trust_anchors"))
        .and_then(serde_yaml::Value::as_str)
        .ok_or_else(|| {
            Finding::fail(
                format!(
                    "the gateway config in {} has no tls.trust_anchors",
                    config_src.describe(ns)
                ),
                "set tls.trust_anchors to the CA bundle file",
            )
        })?;
    let mut path = PathBuf::from(anchors_path);
    if path.is_relative() {
        path = config_path.parent().unwrap_or(Path::new("/")).join(path);
    }
    let src = mounted(pod, container, &path).ok_or_else(|| {
        Finding::fail(
            format!(
                "{dref}: no volume of container {} holds tls.trust_anchors {}",
                container.name,
                path.display()
            ),
            fix,
        )
    })?;
    let pem = read(client, ns, &src).await?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            Finding::fail(
                format!("the trust anchors in {} are not PEM: {e}", src.describe(ns)),
                "put the CA certificates there as PEM",
            )
        })?;
    if certs.is_empty() {
        return Err(Finding::fail(
            format!(
                "the trust anchors in {} hold no certificate",
                src.describe(ns)
            ),
            "put the CA certificates there as PEM",
        ));
    }
    Ok(Anchors {
        source: src.describe(ns),
        certs,
    })
}

/// `--config F`, `--config=F`, `-c F` of the container's args.
fn config_arg(c: &Container) -> Option<PathBuf> {
    let args: Vec<&String> = c
        .command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .collect();
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
        (a.as_str() == "--config" || a.as_str() == "-c")
            .then(|| args.get(i + 1).map(|v| PathBuf::from(v.as_str())))
            .flatten()
    })
}

/// Which ConfigMap or Secret key is mounted at `path` in `container`.
pub fn mounted(pod: &PodSpec, container: &Container, path: &Path) -> Option<Source> {
    for m in container.volume_mounts.iter().flatten() {
        let mount = Path::new(&m.mount_path);
        let rel = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) if mount == path => PathBuf::from(sub),
            Some(_) => continue,
            None => match path.strip_prefix(mount) {
                Ok(r) if !r.as_os_str().is_empty() => r.to_path_buf(),
                _ => continue,
            },
        };
        let rel = rel.to_str()?.to_string();
        let volume = pod.volumes.iter().flatten().find(|v| v.name == m.name)?;
        if let Some(cm) = &volume.config_map {
            return Some(Source::ConfigMap {
                name: cm.name.clone(),
                key: key_for(cm.items.as_deref(), &rel)?,
            });
        }
        if let Some(s) = &volume.secret {
            return Some(Source::Secret {
                name: s.secret_name.clone()?,
                key: key_for(s.items.as_deref(), &rel)?,
            });
        }
        if let Some(p) = &volume.projected {
            for src in p.sources.iter().flatten() {
                if let Some(cm) = &src.config_map {
                    if let Some(key) =
                        key_for(cm.items.as_deref(), &rel).filter(|_| cm.items.is_some())
                    {
                        return Some(Source::ConfigMap {
                            name: cm.name.clone(),
                            key,
                        });
                    }
                }
                if let Some(s) = &src.secret {
                    if let Some(key) =
                        key_for(s.items.as_deref(), &rel).filter(|_| s.items.is_some())
                    {
                        return Some(Source::Secret {
                            name: s.name.clone(),
                            key,
                        });
                    }
                }
            }
        }
        return None;
    }
    None
}

/// The key projected to `rel`: through `items` when given, else `rel` itself.
fn key_for(items: Option<&[KeyToPath]>, rel: &str) -> Option<String> {
    match items {
        Some(items) => items.iter().find(|i| i.path == rel).map(|i| i.key.clone()),
        None => (!rel.contains('/')).then(|| rel.to_string()),
    }
}

async fn read(client: &Client, ns: &str, src: &Source) -> Result<Vec<u8>, Finding> {
    let what = src.describe(ns);
    let absent = |key: &str| {
        Finding::fail(
            format!("{what} is mounted but has no key {key}"),
            "add the key, or fix the Deployment's volume",
        )
    };
    match src {
        Source::ConfigMap { name, key } => {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            let cm = api
                .get(name)
                .await
                .map_err(|e| unreadable(&what, &e, false))?;
            cm.data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
                .or_else(|| {
                    cm.binary_data
                        .as_ref()
                        .and_then(|d| d.get(key))
                        .map(|b| b.0.clone())
                })
                .ok_or_else(|| absent(key))
        }
        Source::Secret { name, key } => {
            let api: Api<Secret> = Api::namespaced(client.clone(), ns);
            let s = api
                .get(name)
                .await
                .map_err(|e| unreadable(&what, &e, true))?;
            s.data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| b.0.clone())
                .ok_or_else(|| absent(key))
        }
    }
}

fn unreadable(what: &str, e: &kube::Error, secret: bool) -> Finding {
    let msg = format!("cannot read {what}: {}", api_error(e));
    match (api_code(e), secret) {
        (Some(403), true) => Finding::warn(
            format!("{msg}; the trust check against these anchors is skipped"),
            "mount the trust anchors from a ConfigMap (isthmus-trust-anchors, see manifests/deployment.yaml) so peers' credentials can read them",
        ),
        (Some(403), false) => Finding::fail(msg, "apply manifests/remote-access.yaml (Role isthmus-mirror-remote-access reads the gateway's ConfigMaps)"),
        _ => Finding::fail(msg, "fix the Deployment's volume or create the object"),
    }
}

#[cfg(test)]
mod tests;
