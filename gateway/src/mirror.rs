//! The mirror controller (`isthmus mirror`): step 1 of the pattern, service
//! discovery across clusters. For each Link it copies the target cluster's
//! exported Services here as `<name>-<target>` mirrors whose endpoints are
//! the target's gateway, ready only while that gateway answers its probe and
//! the remote Service has a ready endpoint.
//!
//! ```text
//! Lease (coordination.k8s.io) ─▶ leader? ─▶ controller.rs: watch Links, one worker each
//!   worker.rs: remote watches + local mirrors + probe.rs ─▶ state.rs ─▶ desired.rs (pure)
//!              ─▶ write.rs (create / replace / delete) ─▶ Link status
//! ```
//! `link.rs` holds the Link CRD, `linkgen.rs` the `isthmus link` output, and
//! `validate.rs` the checks applied to everything a remote cluster sends.
//! The controller depends on neither the proxy nor the listeners.

pub mod controller;
pub mod desired;
pub mod gateways;
pub mod latency;
pub mod lease;
pub mod link;
pub mod linkgen;
pub mod metrics;
pub mod probe;
pub mod state;
pub mod validate;
pub mod worker;
pub mod write;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

pub use self::lease::LeaseTiming;
use self::metrics::MirrorMetrics;
use self::probe::Resolve;

/// The Lease the replicas elect a writer with.
pub const LEASE_NAME: &str = "isthmus-mirror";

use crate::discovery::kube::now_rfc3339;

/// How one controller process runs.
pub struct MirrorOptions {
    /// This cluster.
    pub client: Client,
    /// Namespace of the Links, the credentials Secrets and the Lease.
    pub namespace: String,
    /// This replica's identity in the Lease.
    pub identity: String,
    /// Lease timing.
    pub lease: LeaseTiming,
    /// Gateway address resolver.
    pub resolver: Arc<dyn Resolve>,
    /// Metrics.
    pub metrics: MirrorMetrics,
}

/// A started controller.
pub struct Mirror {
    /// Whether this replica currently writes.
    pub leader: watch::Receiver<bool>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Mirror {
    /// Starts electing and, while leader, mirroring.
    pub fn start(opts: MirrorOptions) -> Mirror {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (leader_tx, leader) = watch::channel(false);
        let elector = lease::Elector::new(
            opts.client.clone(),
            &opts.namespace,
            LEASE_NAME,
            &opts.identity,
            opts.lease,
        );
        let mut elect_stop = shutdown_rx.clone();
        let (elect_shutdown_tx, elect_shutdown_rx) = watch::channel(false);
        let elect = tokio::spawn(
            elector
                .run(leader_tx, elect_shutdown_rx)
                .instrument(tracing::info_span!("lease", identity = %opts.identity)),
        );
        let mut leader_rx = leader.clone();
        let task = tokio::spawn(async move {
            loop {
                // Follower: wait for the Lease.
                while !*leader_rx.borrow_and_update() {
                    opts.metrics.leader.set(0);
                    tokio::select! {
                        r = leader_rx.changed() => if r.is_err() { return },
                        _ = elect_stop.changed() => {
                            elect_shutdown_tx.send_replace(true);
                            let _ = elect.await;
                            return;
                        }
                    }
                }
                opts.metrics.leader.set(1);
                let (stop_tx, stop_rx) = watch::channel(false);
                let supervisor = controller::Supervisor::new(
                    opts.client.clone(),
                    &opts.namespace,
                    opts.metrics.clone(),
                    opts.resolver.clone(),
                );
                let mut sup = tokio::spawn(
                    supervisor
                        .run(stop_rx)
                        .instrument(tracing::info_span!("supervisor")),
                );
                let shutting_down = loop {
                    tokio::select! {
                        r = leader_rx.changed() => {
                            if r.is_err() || !*leader_rx.borrow_and_update() { break false; }
                        }
                        _ = elect_stop.changed() => break true,
                        _ = &mut sup => break false,
                    }
                };
                // Lost the Lease (or stopping): stop writing at once.
                stop_tx.send_replace(true);
                let _ = sup.await;
                opts.metrics.leader.set(0);
                if shutting_down {
                    elect_shutdown_tx.send_replace(true);
                    let _ = elect.await;
                    return;
                }
            }
        });
        Mirror {
            leader,
            shutdown,
            task,
        }
    }

    /// Stops writing, releases the Lease, and waits for the workers to end.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        let _ = self.task.await;
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// Serves `/metrics`, `/ready` and `/live` for the controller.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: MirrorMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = match req.uri().path() {
                    "/metrics" => text(StatusCode::OK, metrics.render()),
                    "/ready" | "/live" => text(StatusCode::OK, "ok\n"),
                    _ => text(StatusCode::NOT_FOUND, "not found\n"),
                };
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The address the admin listener is bound to, logged for port 0.
pub fn log_admin(addr: SocketAddr) {
    tracing::info!(%addr, "mirror admin listening");
}
