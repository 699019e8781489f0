//! The `isthmus` command line: `run`, `check`, `certs dev`, `crds`, `mirror`, `link`,
//! `gateways`, `diagnose`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use isthmus::config::{Config, Discovery, LogFormat};
use isthmus::discovery::{self, files::FileSource, Index};
use isthmus::gateway::Gateway;
use isthmus::tls::{dev, TlsMaterial};
use kube::CustomResourceExt;

/// mimalloc: fewer cycles per allocation than glibc malloc under the proxy's many small,
/// short-lived allocations (measured with benches/run). Build with
/// `--no-default-features` to use the system allocator (heap profilers such as
/// heaptrack see only malloc).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `isthmus --version`: `isthmus 0.1.0 (commit abc1234)`; the commit comes from build.rs.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ISTHMUS_COMMIT"),
    ")"
);

/// Isthmus: mTLS ingress gateway for cross-cluster Kubernetes traffic.
#[derive(Parser)]
#[command(name = "isthmus", version = VERSION, about)]
struct Cli {
    /// Log line format: `text` or `json` (one JSON object per line). Default:
    /// $ISTHMUS_LOG_FORMAT, else the config's `log.format` (`run`), else `text`.
    #[arg(long, global = true, value_name = "FORMAT", value_parser = parse_log_format)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    s.parse()
}

/// The environment variable that sets the log format when `--log-format` is not given.
const LOG_FORMAT_ENV: &str = "ISTHMUS_LOG_FORMAT";

/// Installs the global subscriber: `RUST_LOG` filter (default `info`, pingora
/// at `warn`), on stderr, as text or as one JSON object per line.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,pingora_core=warn,pingora_proxy=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // Field names are tracing-subscriber's: timestamp, level, target,
        // fields{message, ...}, span, spans (see the README).
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Config file (YAML).
        #[arg(long, short)]
        config: PathBuf,
        /// Create development certificates next to `tls.cert` when they are missing.
        #[arg(long)]
        dev_certs: bool,
        /// Also start the demo upstream on this address (for the embedded example).
        #[arg(long, value_name = "ADDR")]
        demo_upstream: Option<SocketAddr>,
        /// The name the demo upstream answers with.
        #[arg(long, value_name = "NAME", default_value = "podinfo")]
        demo_name: String,
        /// Kubeconfig for `discovery.kubernetes` (overrides the config's `kubeconfig`).
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
    },
    /// Validate the config, the certificates and the manifests; exit non-zero on any error.
    Check {
        /// Config file (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Certificate helpers.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Print the CustomResourceDefinitions (YAML): all, or one kind.
    Crds {
        /// `mapping` or `link`; all when omitted.
        kind: Option<String>,
    },
    /// Run the mirror controller: keep `<svc>-<cluster>` mirrors of each Link's
    /// exported remote Services in this cluster.
    Mirror {
        /// Kubeconfig of this cluster (default: in-cluster, then $KUBECONFIG).
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
        /// Namespace of the Links, their Secrets and the Lease.
        #[arg(long, default_value = "isthmus")]
        namespace: String,
        /// Admin address (`/metrics`, `/ready`, `/live`).
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:4191")]
        admin: SocketAddr,
        /// This replica's name in the Lease (default: $POD_NAME, else host name and pid).
        #[arg(long)]
        identity: Option<String>,
    },
    /// Print the Secret and Link that link this cluster (the target) from
    /// another: `isthmus link --cluster-name east | kubectl --context west apply -f -`.
    Link(LinkArgs),
    /// One row per Link: the remote gateway's liveness, mirrored Services and
    /// probe latency percentiles, from the Link status.
    Gateways {
        /// Kubeconfig of this cluster (default: $KUBECONFIG, ~/.kube/config, in-cluster).
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
        /// Context in that kubeconfig.
        #[arg(long)]
        context: Option<String>,
        /// Only the Links of this namespace (default: all namespaces).
        #[arg(long)]
        namespace: Option<String>,
        /// `table` or `json`.
        #[arg(long, short, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
    /// Check a live installation (CRDs, Links, credentials, trust on the real
    /// certificate chains, expiry, probes, endpoints); exit 1 on any failure.
    Diagnose(DiagnoseArgs),
}

#[derive(clap::Args)]
struct DiagnoseArgs {
    /// Kubeconfig of this cluster (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Context in that kubeconfig.
    #[arg(long)]
    context: Option<String>,
    /// Only the Links of this namespace (default: all namespaces).
    #[arg(long)]
    namespace: Option<String>,
    /// Namespace of the gateway Service and Deployment (in every cluster).
    #[arg(long, default_value = "isthmus")]
    gateway_namespace: String,
    /// The gateway Service (in every cluster).
    #[arg(long, default_value = "isthmus-gateway")]
    gateway_name: String,
    /// This cluster's gateway (HOST:PORT) instead of its Service's load-balancer address.
    #[arg(long, value_name = "ADDR")]
    local_gateway: Option<SocketAddr>,
}

#[derive(clap::Args)]
struct LinkArgs {
    /// The target cluster's name (the Link's name and the mirrors' suffix).
    #[arg(long)]
    cluster_name: String,
    /// Kubeconfig of the target cluster (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Context in that kubeconfig.
    #[arg(long)]
    context: Option<String>,
    /// Namespace of the gateway Service and the remote-access ServiceAccount.
    #[arg(long, default_value = "isthmus")]
    gateway_namespace: String,
    /// The gateway Service.
    #[arg(long, default_value = "isthmus-gateway")]
    gateway_name: String,
    /// Gateway addresses (comma-separated IPs or DNS names) instead of the load balancer's.
    #[arg(long, value_name = "A,B")]
    gateway_addresses: Option<String>,
    /// API server URL written into the credentials (default: the kubeconfig's).
    #[arg(long, value_name = "URL")]
    api_server_address: Option<String>,
    /// The target cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Namespace of the Secret and Link in the calling cluster.
    #[arg(long, default_value = "isthmus")]
    namespace: String,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write development certificates into DIR: ca.crt/.key, gateway.crt/.key,
    /// peer-west, peer-dns, peer-expired, untrusted-ca.crt and peer-untrusted.
    Dev {
        /// Output directory (created if needed).
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let explicit = match cli.log_format {
        Some(f) => Some(f),
        None => match std::env::var(LOG_FORMAT_ENV) {
            Ok(v) => match v.parse() {
                Ok(f) => Some(f),
                Err(e) => {
                    eprintln!("error: {LOG_FORMAT_ENV}: {e}");
                    return ExitCode::FAILURE;
                }
            },
            Err(_) => None,
        },
    };
    // `run` reads its config before logging starts, so that `log.format`
    // applies from the first line on.
    let loaded = match &cli.command {
        Command::Run { config, .. } => Some(Config::load(config)),
        _ => None,
    };
    let from_config = loaded
        .as_ref()
        .and_then(|r| r.as_ref().ok())
        .map(|c| c.log.format);
    let format = explicit.or(from_config).unwrap_or_default();
    init_logging(format);
    let result = match cli.command {
        Command::Run {
            config: _,
            dev_certs,
            demo_upstream,
            demo_name,
            kubeconfig,
        } => match loaded {
            Some(Ok(cfg)) => run(
                cfg,
                dev_certs,
                demo_upstream.map(|a| (a, demo_name)),
                kubeconfig,
            ),
            Some(Err(e)) => Err(e.into()),
            None => Err(anyhow::anyhow!("the config was not read")),
        },
        Command::Check { config } => check(&config),
        Command::Certs {
            command: CertsCommand::Dev { dir },
        } => dev::write_dev_certs(&dir)
            .map(|()| println!("wrote development certificates to {}", dir.display()))
            .map_err(Into::into),
        Command::Crds { kind } => crds(kind.as_deref()),
        Command::Mirror {
            kubeconfig,
            namespace,
            admin,
            identity,
        } => mirror(kubeconfig, namespace, admin, identity),
        Command::Link(args) => link(args),
        Command::Gateways {
            kubeconfig,
            context,
            namespace,
            output,
        } => gateways(kubeconfig, context, namespace, &output),
        Command::Diagnose(args) => diagnose(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match format {
                LogFormat::Text => eprintln!("error: {e:#}"),
                LogFormat::Json => tracing::error!(error = format!("{e:#}"), "exiting"),
            }
            ExitCode::FAILURE
        }
    }
}

fn crds(kind: Option<&str>) -> anyhow::Result<()> {
    use isthmus::discovery::crd::Mapping;
    use isthmus::mirror::link::Link;
    let all = [("mapping", Mapping::crd()), ("link", Link::crd())];
    let chosen: Vec<_> = all
        .iter()
        .filter(|(k, _)| kind.is_none_or(|want| want.eq_ignore_ascii_case(k)))
        .collect();
    if chosen.is_empty() {
        bail!(
            "unknown kind {:?}: mapping or link",
            kind.unwrap_or_default()
        );
    }
    let docs: Result<Vec<String>, _> = chosen
        .iter()
        .map(|(_, c)| serde_yaml::to_string(c))
        .collect();
    print!("{}", docs?.join("---\n"));
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn mirror(
    kubeconfig: Option<PathBuf>,
    namespace: String,
    admin: SocketAddr,
    identity: Option<String>,
) -> anyhow::Result<()> {
    use isthmus::mirror::{self, metrics::MirrorMetrics, probe::SystemResolver};
    // Long-lived state, no request path: freed pages go back at once.
    isthmus::memory::purge_eagerly();
    let identity = identity
        .or_else(|| std::env::var("POD_NAME").ok())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
    runtime()?.block_on(async move {
        let signals = Signals::install()?;
        let client = discovery::kube::client(kubeconfig.as_deref()).await?;
        let metrics = MirrorMetrics::new();
        let listener = tokio::net::TcpListener::bind(admin)
            .await
            .with_context(|| format!("cannot listen on {admin} (mirror admin)"))?;
        mirror::log_admin(listener.local_addr()?);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(mirror::serve_admin(listener, metrics.clone(), stop_rx));
        let controller = mirror::Mirror::start(mirror::MirrorOptions {
            client,
            namespace,
            identity,
            lease: mirror::LeaseTiming::default(),
            resolver: std::sync::Arc::new(SystemResolver),
            metrics,
        });
        signals.wait().await;
        tracing::info!("stopping the mirror controller");
        controller.shutdown().await;
        stop_tx.send_replace(true);
        Ok(())
    })
}

fn link(args: LinkArgs) -> anyhow::Result<()> {
    use isthmus::mirror::linkgen::{self, ApiServer, LinkOptions};
    use kube::config::{KubeConfigOptions, Kubeconfig};
    isthmus::mirror::validate::dns_label(&args.cluster_name)
        .map_err(|e| anyhow::anyhow!("--cluster-name {:?}: {e}", args.cluster_name))?;
    runtime()?.block_on(async move {
        let kc = match &args.kubeconfig {
            Some(p) => Kubeconfig::read_from(p)
                .map_err(|e| anyhow::anyhow!("cannot read kubeconfig {}: {e}", p.display()))?,
            None => Kubeconfig::read()
                .map_err(|e| anyhow::anyhow!("no kubeconfig ($KUBECONFIG, ~/.kube/config): {e}"))?,
        };
        let options = KubeConfigOptions {
            context: args.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kc.clone(), &options)
            .await
            .map_err(|e| anyhow::anyhow!("kubeconfig: {e}"))?;
        let server = ApiServer {
            url: config
                .cluster_url
                .to_string()
                .trim_end_matches('/')
                .to_string(),
            ca_pem: kube_ca_pem(&kc, args.context.as_deref()),
            insecure: config.accept_invalid_certs,
        };
        let client = kube::Client::try_from(config)?;
        let opts = LinkOptions {
            cluster_name: args.cluster_name,
            cluster_domain: args.cluster_domain,
            gateway_namespace: args.gateway_namespace,
            gateway_name: args.gateway_name,
            gateway_addresses: args.gateway_addresses,
            api_server_address: args.api_server_address,
            namespace: args.namespace,
        };
        let yaml = linkgen::generate(&client, &server, &opts)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        print!("{yaml}");
        Ok(())
    })
}

fn gateways(
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    namespace: Option<String>,
    output: &str,
) -> anyhow::Result<()> {
    use isthmus::mirror::gateways;
    runtime()?.block_on(async move {
        let client = isthmus::diagnose::cluster::connect(kubeconfig.as_deref(), context.as_deref())
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let rows = gateways::list(&client, namespace.as_deref())
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot list Links: {}",
                    isthmus::diagnose::cluster::api_error(&e)
                )
            })?;
        if output == "json" {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            print!("{}", gateways::table(&rows));
        }
        Ok(())
    })
}

fn diagnose(args: DiagnoseArgs) -> anyhow::Result<()> {
    use isthmus::diagnose::{self, Options};
    runtime()?.block_on(async move {
        let client =
            diagnose::cluster::connect(args.kubeconfig.as_deref(), args.context.as_deref())
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
        let opts = Options {
            namespace: args.namespace,
            gateway_namespace: args.gateway_namespace,
            gateway_name: args.gateway_name,
            local_gateway: args.local_gateway,
            resolver: std::sync::Arc::new(isthmus::mirror::probe::SystemResolver),
        };
        let report = diagnose::run(&client, &opts).await;
        print!("{}", report.render());
        if report.failed() {
            bail!("diagnose found failures (✘ above)");
        }
        Ok(())
    })
}

/// The CA bundle the kubeconfig names for its (current or given) context.
fn kube_ca_pem(kc: &kube::config::Kubeconfig, context: Option<&str>) -> Option<Vec<u8>> {
    use base64::Engine;
    let ctx_name = context
        .map(str::to_string)
        .or_else(|| kc.current_context.clone())?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)?
        .context
        .as_ref()?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)?
        .cluster
        .as_ref()?;
    if let Some(data) = &cluster.certificate_authority_data {
        return base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .ok();
    }
    std::fs::read(cluster.certificate_authority.as_ref()?).ok()
}

fn run(
    mut cfg: Config,
    dev_certs: bool,
    demo_upstream: Option<(SocketAddr, String)>,
    kubeconfig: Option<PathBuf>,
) -> anyhow::Result<()> {
    if let (Some(path), Discovery::Kubernetes(k)) = (kubeconfig, &mut cfg.discovery) {
        k.kubeconfig = Some(path);
    }
    if dev_certs {
        let dir = cfg.tls.cert.parent().unwrap_or(Path::new("."));
        if dev::ensure_dev_certs(dir)? {
            tracing::info!(dir = %dir.display(), "wrote development certificates");
        }
    }
    // The control runtime: accept loop, admin port, certificate reloads,
    // signals. Requests are served on the shards' own threads (`threads`).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        if let Some((addr, name)) = demo_upstream {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (demo upstream)"))?;
            tracing::info!(%addr, "demo upstream serving");
            tokio::spawn(isthmus::demo::serve(l, name));
        }
        // Handlers first: "serving" (and /ready) must never precede them, or a
        // SIGTERM right after start-up would kill the process undrained.
        let signals = Signals::install()?;
        let gateway = Gateway::start(&cfg).await?;
        signals.wait().await;
        let grace = std::time::Duration::from_millis(cfg.limits.shutdown_grace_ms);
        tracing::info!(?grace, "draining");
        gateway.shutdown(grace).await;
        Ok(())
    })
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Everything `run` would refuse, as far as it can be known without binding
/// ports or reaching an API server: every config value, the TLS files and the
/// identity derived from them, the manifests (or the kubeconfig).
fn check(config: &Path) -> anyhow::Result<()> {
    let (cfg, config_problems) = Config::load_all(config)?;
    let mut problems: Vec<String> = config_problems.iter().map(ToString::to_string).collect();
    match TlsMaterial::load(&cfg.tls) {
        Ok(m) => match isthmus::gateway::own_identity(&cfg, &m) {
            Ok(id) => println!("tls: ok (identity {id})"),
            Err(e) => problems.push(format!("identity: {e}")),
        },
        Err(e) => {
            let first = format!("tls: {e}");
            // Every bad trust-anchor file, not only the one load stopped at.
            let others: Vec<String> = TlsMaterial::anchor_problems(&cfg.tls)
                .iter()
                .map(|e| format!("tls: {e}"))
                .filter(|p| *p != first)
                .collect();
            problems.push(first);
            problems.extend(others);
        }
    }
    match &cfg.discovery {
        Discovery::Files(files) => {
            let mut index = Index::new(discovery::index_config(&cfg));
            let mut source = FileSource::new(files.dir());
            match source.load_into(&mut index) {
                Ok((scan, errors)) => {
                    problems.extend(scan.errors.iter().map(ToString::to_string));
                    let table = index.build();
                    // Then the Mappings the build refused (claim rules: hostname, ReferenceGrant).
                    for e in errors.into_iter().chain(index.take_mapping_refusals()) {
                        let origin = source
                            .origin(e.kind, &e.key)
                            .map(|p| format!("{}: ", p.display()))
                            .unwrap_or_default();
                        problems.push(format!("{origin}{e}"));
                    }
                    println!(
                        "discovery: {} routes, {} services, {} endpoints from {}",
                        table.route_count(),
                        table.service_count(),
                        table.endpoint_count(),
                        files.dir().display()
                    );
                }
                Err(e) => problems.push(format!("discovery: {e}")),
            }
        }
        Discovery::Kubernetes(k) => {
            // Builds the client as `run` does (credentials, kubeconfig), without
            // contacting the API server.
            let client = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("tokio runtime")?
                .block_on(discovery::kube::client(k.kubeconfig.as_deref()));
            match client {
                Ok(_) => {
                    println!("discovery: kubernetes (credentials ok; API server not contacted)")
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
    }
    if problems.is_empty() {
        println!("ok");
        return Ok(());
    }
    for p in &problems {
        eprintln!("{p}");
    }
    bail!(
        "{} problem(s) found in {}",
        problems.len(),
        config.display()
    )
}
