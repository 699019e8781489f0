//! Assembly: one constructor builds the whole gateway (TLS, discovery, proxy,
//! admin and probe ports) from a [`Config`], for `main` and the tests alike.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::ServerConf;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::admin::{self, AdminState, Readiness, ServeLimits};
use crate::config::{Config, Discovery};
use crate::discovery::{self, files::FileSource, Index, Publisher};
use crate::listener::{
    ConnectionConfig, ConnectionLimits, Connections, Deadlines, GatewayListener, ShardThreads,
};
use crate::metrics::Metrics;
use crate::proxy::{GatewayProxy, RequestLimits};
use crate::routes::{self, PassiveHealth, SharedRoutes};
use crate::tls::{TlsError, TlsMaterial, TlsServer};

/// Why the gateway could not start. Each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Certificate, key or trust anchors unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A listening address could not be bound.
    #[error("cannot listen on {addr} ({what}): {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `gateway`, `admin` or `probe`.
        what: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
    /// The manifest directory is unusable.
    #[error("file discovery: {0}")]
    Files(#[from] discovery::files::FileError),
    /// No identity for loop detection.
    #[error("cannot determine this gateway's identity from {cert}: set `identity` in the config")]
    NoIdentity {
        /// The serving certificate.
        cert: String,
    },
    /// The Kubernetes client could not be built.
    #[error(transparent)]
    Kube(#[from] discovery::kube::KubeError),
    /// A thread (discovery, admin, serving shards) could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// This gateway's identity for loop detection: `identity` from the config,
/// else the serving certificate's (as `isthmus check` checks it too).
pub fn own_identity(cfg: &Config, material: &TlsMaterial) -> Result<String, StartError> {
    cfg.identity
        .clone()
        .or_else(|| material.identity().map(str::to_string))
        .ok_or_else(|| StartError::NoIdentity {
            cert: cfg.tls.cert.display().to_string(),
        })
}

/// Runs `make()` on a thread of its own (`isthmus-<name>`) with a
/// single-threaded runtime, so its work never queues behind (or delays) the
/// accept loop and proxied requests. Used for:
///
/// - discovery, which parses every watched object and rebuilds whole route
///   tables, and whose churned memory stays in one allocator heap that
///   [`crate::memory::release_freed`] can hand back to the OS after each publish;
/// - the admin and probe ports, so a flood of admin or probe connections never
///   runs on the thread that accepts gateway connections.
///
/// The returned handle completes when the future returns (on shutdown); tasks
/// it spawned end with its runtime.
fn spawn_thread<F, Fut>(name: &str, make: F) -> Result<JoinHandle<()>, StartError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Thread)?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("isthmus-{name}"))
        .spawn(move || {
            runtime.block_on(make());
            drop(done_tx);
        })
        .map_err(StartError::Thread)?;
    Ok(tokio::spawn(async move {
        let _ = done_rx.await;
    }))
}

/// A started gateway.
pub struct Gateway {
    /// The bound mTLS address (useful with port 0).
    pub gateway_addr: SocketAddr,
    /// The bound admin address.
    pub admin_addr: SocketAddr,
    /// The bound probe address (`/ready` and `/live`, plaintext or TLS).
    pub probe_addr: SocketAddr,
    /// The bound egress address, when the egress is on.
    pub egress_addr: Option<SocketAddr>,
    /// The published egress table (Services, mirrors, splits by in-cluster name).
    pub egress_routes: SharedRoutes,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The published routes.
    pub routes: SharedRoutes,
    /// Readiness flags.
    pub readiness: Arc<Readiness>,
    /// The swappable TLS state.
    pub tls: TlsServer,
    /// Open downstream connections.
    pub connections: Arc<Connections>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    accept: JoinHandle<()>,
    shards: ShardThreads,
    admin: JoinHandle<()>,
    admin_stop: watch::Sender<bool>,
}

impl Gateway {
    /// Loads TLS material, runs the first discovery sync, binds both ports and
    /// starts serving on the current tokio runtime.
    pub async fn start(cfg: &Config) -> Result<Gateway, StartError> {
        let metrics = Arc::new(Metrics::new());
        metrics.limit_peer_labels(cfg.metrics.max_peer_labels);
        let connections = Arc::new(Connections::default());
        let readiness = Arc::new(Readiness::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();

        let material = TlsMaterial::load(&cfg.tls)?;
        let own_identity = own_identity(cfg, &material)?;
        material.record_expiry(&metrics);
        let tls = TlsServer::new(material);
        readiness.set_certs_loaded();
        tasks.push(tokio::spawn(
            crate::tls::reload::watch_files(
                cfg.tls.clone(),
                tls.clone(),
                metrics.clone(),
                Duration::from_millis(cfg.tls.reload_interval_ms.max(10)),
                shutdown_rx.clone(),
            )
            .instrument(tracing::info_span!("tls_reload")),
        ));

        let routes = routes::shared_empty();
        let egress_routes = routes::shared_empty();
        let source = match &cfg.discovery {
            Discovery::Files(_) => discovery::Source::Files,
            Discovery::Kubernetes(_) => discovery::Source::Kubernetes,
        };
        let recent = Arc::new(admin::recent::RecentErrors::default());
        let discovery_status = Arc::new(discovery::DiscoveryStatus::new(source.label()));
        let publisher = Publisher::new(routes.clone(), metrics.clone(), source)
            .with_egress(egress_routes.clone())
            .observed(discovery_status.clone(), recent.clone());
        let mut index = Index::new(discovery::index_config(cfg));
        match &cfg.discovery {
            Discovery::Files(files) => {
                let started = Instant::now();
                let mut source = FileSource::new(files.dir());
                let scan = source.scan()?;
                discovery::files::apply_scan(&source, &scan, &mut index, &publisher, &metrics);
                publisher.publish(&mut index, started);
                readiness.set_discovery_synced();
                tracing::info!(dir = %files.dir().display(), routes = routes.load().route_count(), "file discovery synced");
                let (metrics, interval, stop) =
                    (metrics.clone(), files.poll_interval(), shutdown_rx.clone());
                tasks.push(spawn_thread("discovery", move || {
                    discovery::files::run(source, index, publisher, metrics, interval, stop)
                        .instrument(tracing::info_span!("discovery", source = "files"))
                })?);
            }
            Discovery::Kubernetes(k) => {
                let scope = discovery::kube::WatchScope {
                    namespaces: cfg.namespaces.clone(),
                    service_selector: k.label_selector.clone(),
                    contact_interval: Duration::from_millis(k.contact_interval_ms),
                    crd_recheck_interval: Duration::from_millis(k.crd_recheck_interval_ms),
                };
                let kubeconfig = k.kubeconfig.clone();
                let (readiness, metrics, stop) =
                    (readiness.clone(), metrics.clone(), shutdown_rx.clone());
                // The client is built on the discovery thread (its connection
                // tasks live there); its errors come back here.
                let (client_tx, client_rx) = tokio::sync::oneshot::channel();
                tasks.push(spawn_thread("discovery", move || async move {
                    let client = match discovery::kube::client(kubeconfig.as_deref()).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = client_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = client_tx.send(Ok(()));
                    discovery::kube::run(client, scope, index, publisher, readiness, metrics, stop)
                        .instrument(tracing::info_span!("discovery", source = "kubernetes"))
                        .await
                })?);
                match client_rx.await {
                    Ok(result) => result?,
                    Err(_) => {
                        return Err(StartError::Thread(std::io::Error::other(
                            "discovery thread ended before building its client",
                        )))
                    }
                }
            }
        }

        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|error| StartError::Bind { addr, what, error })
        };
        let gateway_listener = bind(cfg.listen.gateway, "gateway").await?;
        let admin_listener = bind(cfg.listen.admin, "admin").await?;
        let probe_listener = bind(cfg.listen.probe, "probe").await?;
        let local = |l: &TcpListener, addr: SocketAddr, what| {
            l.local_addr()
                .map_err(|error| StartError::Bind { addr, what, error })
        };
        let gateway_addr = local(&gateway_listener, cfg.listen.gateway, "gateway")?;
        let admin_addr = local(&admin_listener, cfg.listen.admin, "admin")?;
        let probe_addr = local(&probe_listener, cfg.listen.probe, "probe")?;
        let egress_listener = match cfg.listen.egress {
            Some(addr) => {
                let l = bind(addr, "egress").await?;
                let bound = local(&l, addr, "egress")?;
                Some((l, bound))
            }
            None => None,
        };

        let health = PassiveHealth {
            consecutive_failures: cfg.upstream.eject_after_failures,
            ejection: Duration::from_millis(cfg.upstream.ejection_ms),
        };
        let proxy = GatewayProxy::new(
            routes.clone(),
            metrics.clone(),
            recent.clone(),
            &own_identity,
            RequestLimits {
                max_header_bytes: cfg.limits.max_request_header_bytes,
                max_headers: cfg.limits.max_request_headers,
            },
            health,
        );
        let server_conf = Arc::new(ServerConf::default());
        let idle = Duration::from_millis(cfg.limits.idle_timeout_ms);
        let shard_count = match cfg.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let apps = (0..shard_count)
            .map(|_| {
                let mut app = pingora_proxy::http_proxy(&server_conf, proxy.clone());
                let mut options = HttpServerOptions::default();
                options.h2_idle_timeout = Some(idle);
                app.server_options = Some(options);
                app
            })
            .collect();
        let acceptor = Arc::new(tls.acceptor(cfg.tls.session_resumption));
        let connection = ConnectionConfig::new(
            acceptor,
            metrics.clone(),
            Duration::from_millis(cfg.limits.handshake_timeout_ms),
            ConnectionLimits {
                max_per_identity: cfg.limits.max_connections_per_identity,
                deadlines: Deadlines {
                    idle,
                    header: Duration::from_millis(cfg.limits.request_header_timeout_ms),
                    max_header_bytes: cfg.limits.max_request_header_bytes,
                },
            },
            shutdown_rx.clone(),
        );
        let (dispatch, shards) =
            crate::listener::start_shards(apps, connection).map_err(StartError::Thread)?;
        let listener = GatewayListener {
            listener: gateway_listener,
            dispatch,
            metrics: metrics.clone(),
            connections: connections.clone(),
            max_connections: cfg.limits.max_connections,
            handshakes: crate::listener::Handshakes::new(
                cfg.limits.max_handshakes,
                cfg.limits.max_handshakes_per_source,
            ),
        };
        let accept = tokio::spawn(
            listener
                .run(shutdown_rx.clone())
                .instrument(tracing::info_span!("gateway", addr = %gateway_addr)),
        );
        let admin_state = AdminState {
            readiness: readiness.clone(),
            metrics: metrics.clone(),
            routes: routes.clone(),
            tls: Some(tls.clone()),
            discovery: discovery_status,
            recent,
            peers: Arc::default(),
            explain: Arc::new(admin::explain::ExplainConfig {
                cluster_domain: cfg.cluster_domain.clone(),
                export_label: cfg.export_label.clone(),
            }),
            identity: own_identity.as_str().into(),
        };
        let (admin_stop, admin_stop_rx) = watch::channel(false);
        let limits = |max_connections| ServeLimits {
            max_connections,
            header_timeout: Duration::from_millis(cfg.limits.admin_header_timeout_ms),
            idle_timeout: Duration::from_millis(cfg.limits.admin_idle_timeout_ms),
        };
        let (admin_limits, probe_limits) = (
            limits(cfg.limits.admin_max_connections),
            limits(cfg.limits.probe_max_connections),
        );
        let probe_tls = tls.probe_config();
        // The listeners leave this runtime's reactor and join the admin thread's.
        let into_std = |l: TcpListener, addr: SocketAddr, what| {
            l.into_std()
                .map_err(|error| StartError::Bind { addr, what, error })
        };
        let admin_listener = into_std(admin_listener, admin_addr, "admin")?;
        let probe_listener = into_std(probe_listener, probe_addr, "probe")?;
        let admin = spawn_thread("admin", move || async move {
            let (admin_listener, probe_listener) = match (
                TcpListener::from_std(admin_listener),
                TcpListener::from_std(probe_listener),
            ) {
                (Ok(a), Ok(p)) => (a, p),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "cannot serve the admin and probe ports");
                    return;
                }
            };
            let admin = admin::serve(
                admin_listener,
                admin_state.clone(),
                admin_limits,
                admin_stop_rx.clone(),
            )
            .instrument(tracing::info_span!("admin", addr = %admin_addr));
            let probe = admin::probe::serve(
                probe_listener,
                probe_tls,
                admin_state,
                probe_limits,
                admin_stop_rx,
            )
            .instrument(tracing::info_span!("probe", addr = %probe_addr));
            tokio::join!(admin, probe);
        })?;
        let egress_addr = match egress_listener {
            None => None,
            Some((l, addr)) => {
                // An accept loop, egress and upstream pool per shard thread,
                // all on one socket (the first shard to wake takes a new
                // connection, so the less busy one takes more): a request
                // and its upstream exchange stay on one core.
                let l = into_std(l, addr, "egress")?;
                for shard in 0..shard_count {
                    let l = l.try_clone().map_err(StartError::Thread)?;
                    let egress = Arc::new(crate::egress::Egress::new(
                        egress_routes.clone(),
                        &cfg.cluster_domain,
                        tls.clone(),
                        metrics.clone(),
                        health,
                    ));
                    let (stop, idle) = (shutdown_rx.clone(), idle);
                    tasks.push(spawn_thread(
                        &format!("egress-{shard}"),
                        move || async move {
                            match TcpListener::from_std(l) {
                                Ok(l) => {
                                    crate::egress::serve(l, egress, stop, idle)
                                        .instrument(tracing::info_span!("egress", %addr, shard))
                                        .await
                                }
                                Err(e) => {
                                    tracing::error!(error = %e, "cannot serve the egress port")
                                }
                            }
                        },
                    )?);
                }
                Some(addr)
            }
        };
        tracing::info!(%gateway_addr, %admin_addr, %probe_addr, ?egress_addr, identity = %own_identity, "isthmus gateway serving");
        Ok(Gateway {
            gateway_addr,
            admin_addr,
            probe_addr,
            egress_addr,
            egress_routes,
            metrics,
            routes,
            readiness,
            tls,
            connections,
            shutdown,
            tasks,
            accept,
            shards,
            admin,
            admin_stop,
        })
    }

    /// Drains and stops: `/ready` answers 503 at once, the gateway port closes,
    /// idle keep-alive connections are closed, in-flight requests get up to
    /// `grace` to finish; then everything stops. Returns how many connections
    /// were still open when the grace period ended (0 after a clean drain).
    pub async fn shutdown(self, grace: Duration) -> usize {
        self.readiness.set_draining();
        let _ = self.shutdown.send(true);
        let _ = self.accept.await;
        let drained = tokio::time::timeout(grace, self.connections.wait_all_closed()).await;
        let left = self.connections.open();
        match drained {
            Ok(()) => tracing::info!("drained: all connections finished"),
            Err(_) => tracing::warn!(
                open = left,
                ?grace,
                "grace period over; closing remaining connections"
            ),
        }
        self.shards.stop().await;
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = self.admin_stop.send(true);
        let _ = self.admin.await;
        left
    }
}
