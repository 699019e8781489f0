//! The `isthmus` command line: `run`, `check`, `certs dev`, `crds`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use isthmus::config::{Config, Discovery};
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

/// Isthmus: mTLS ingress gateway for cross-cluster Kubernetes traffic.
#[derive(Parser)]
#[command(name = "isthmus", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Print the Mapping CustomResourceDefinition (YAML).
    Crds,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,pingora_core=warn,pingora_proxy=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run {
            config,
            dev_certs,
            demo_upstream,
            kubeconfig,
        } => run(&config, dev_certs, demo_upstream, kubeconfig),
        Command::Check { config } => check(&config),
        Command::Certs {
            command: CertsCommand::Dev { dir },
        } => dev::write_dev_certs(&dir)
            .map(|()| println!("wrote development certificates to {}", dir.display()))
            .map_err(Into::into),
        Command::Crds => serde_yaml::to_string(&isthmus::discovery::crd::Mapping::crd())
            .map(|y| print!("{y}"))
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    config: &Path,
    dev_certs: bool,
    demo_upstream: Option<SocketAddr>,
    kubeconfig: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut cfg = Config::load(config)?;
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
        if let Some(addr) = demo_upstream {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (demo upstream)"))?;
            tracing::info!(%addr, "demo upstream serving");
            tokio::spawn(isthmus::demo::serve(l, "podinfo".into()));
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
        Err(e) => problems.push(format!("tls: {e}")),
    }
    match &cfg.discovery {
        Discovery::Files(files) => {
            let mut index = Index::new(discovery::index_config(&cfg));
            let mut source = FileSource::new(files.dir());
            match source.load_into(&mut index) {
                Ok((scan, errors)) => {
                    problems.extend(scan.errors.iter().map(ToString::to_string));
                    for e in errors {
                        let origin = source
                            .origin(e.kind, &e.key)
                            .map(|p| format!("{}: ", p.display()))
                            .unwrap_or_default();
                        problems.push(format!("{origin}{e}"));
                    }
                    let table = index.build();
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
