//! The data plane's threads. Each shard is one thread with its own
//! single-threaded tokio runtime and its own pingora app, hence its own
//! upstream connection pool. A connection lives on one shard from its
//! handshake to its close, so the request path has no work stealing and no
//! wake-ups across threads: a client's request, the upstream exchange it
//! causes and the response all run on the thread that read the request, as in
//! nginx's or haproxy's workers.
//!
//! The accept loop (on the control runtime) hands each new connection to the
//! shard with the fewest open connections, so a handful of long-lived HTTP/2
//! connections still spreads evenly over the cores.

use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::{Connection, ConnectionConfig, ConnectionGuard, HandshakeSlot};

/// An accepted TCP connection on its way to a shard.
pub(super) struct Accepted {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    /// Counts the connection as open from accept to close.
    pub guard: ConnectionGuard,
    /// Its place in the handshake budget, until the handshake ends.
    pub handshake: HandshakeSlot,
}

/// The accept loop's side: where the next connection goes.
pub struct Dispatch {
    shards: Vec<ShardHandle>,
    next: usize,
}

struct ShardHandle {
    tx: mpsc::UnboundedSender<Accepted>,
    open: Arc<AtomicUsize>,
}

impl Dispatch {
    /// Sends `accepted` to the shard with the fewest open connections; ties
    /// go round robin. Dropping the `Dispatch` tells every shard that no more
    /// connections will come (they then start their drain).
    pub(super) fn send(&mut self, accepted: Accepted) {
        let n = self.shards.len();
        let start = self.next;
        self.next = (self.next + 1) % n;
        let pick = (0..n)
            .map(|i| (start + i) % n)
            .min_by_key(|&i| self.shards[i].open.load(Ordering::Relaxed))
            .unwrap_or(start);
        let shard = &self.shards[pick];
        shard.open.fetch_add(1, Ordering::Relaxed);
        if shard.tx.send(accepted).is_err() {
            // The shard is stopping; the connection is dropped (closed).
            shard.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The running shard threads. [`ShardThreads::stop`] (or dropping this)
/// ends them; connections still open then are closed.
pub struct ShardThreads {
    stop: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ShardThreads {
    /// Stops every shard at once and waits for its thread to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Starts one shard per app, each serving connections as `config` describes.
pub(super) fn start<A: ServerApp + Send + Sync + 'static>(
    apps: Vec<A>,
    config: Arc<ConnectionConfig>,
) -> std::io::Result<(Dispatch, ShardThreads)> {
    let (stop, stop_rx) = watch::channel(false);
    let mut shards = Vec::with_capacity(apps.len());
    let mut threads = Vec::with_capacity(apps.len());
    for (i, app) in apps.into_iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        let shard = Shard {
            config: config.clone(),
            app: Arc::new(app),
            open: open.clone(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(crate::memory::release_freed_when_idle)
            .build()?;
        let stop_rx = stop_rx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("isthmus-shard-{i}"))
            .spawn(move || runtime.block_on(shard.run(rx, stop_rx)))?;
        shards.push(ShardHandle { tx, open });
        threads.push(thread);
    }
    Ok((Dispatch { shards, next: 0 }, ShardThreads { stop, threads }))
}

/// One shard's state, owned by its thread.
struct Shard<A> {
    config: Arc<ConnectionConfig>,
    app: Arc<A>,
    /// Connections on this shard, read by [`Dispatch`].
    open: Arc<AtomicUsize>,
}

impl<A: ServerApp + Send + Sync + 'static> Shard<A> {
    /// Serves what the accept loop sends until told to stop (or until the
    /// [`ShardThreads`] is gone). When the accept loop ends, tells the app so
    /// it ends idle keep-alive connections, and keeps serving the open ones.
    async fn run(
        self,
        mut accepted: mpsc::UnboundedReceiver<Accepted>,
        stop: watch::Receiver<bool>,
    ) {
        let mut accepting = true;
        let mut stop = stop;
        loop {
            tokio::select! {
                next = accepted.recv(), if accepting => match next {
                    Some(a) => self.spawn(a),
                    None => {
                        accepting = false;
                        self.app.cleanup().await;
                    }
                },
                // Ok: told to stop; Err: the handle is gone. Either way, stop.
                _ = stop.wait_for(|stop| *stop) => break,
            }
        }
    }

    fn spawn(&self, a: Accepted) {
        let on_shard = OnShard(self.open.clone());
        let tcp = match tokio::net::TcpStream::from_std(a.stream) {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(error = %e, "cannot register an accepted connection");
                return;
            }
        };
        let mut stream = L4Stream::from(tcp);
        let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
        let _ = digest.peer_addr.set(Some(a.peer.into()));
        stream.set_socket_digest(digest);
        let conn = Connection {
            config: self.config.clone(),
            app: self.app.clone(),
        };
        let (guard, handshake) = (a.guard, a.handshake);
        tokio::spawn(
            async move {
                let _counted = (guard, on_shard);
                conn.serve(stream, handshake).await;
            }
            .instrument(tracing::debug_span!("conn", client = %a.peer)),
        );
    }
}

/// Uncounts a connection from its shard when dropped.
struct OnShard(Arc<AtomicUsize>);

impl Drop for OnShard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::Connections;
    use crate::metrics::Metrics;

    /// Inboxes with no threads behind them: what `Dispatch` decides is
    /// visible in the queues and the open counts.
    fn dispatch(n: usize) -> (Dispatch, Vec<mpsc::UnboundedReceiver<Accepted>>) {
        let (shards, inboxes) = (0..n)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                let open = Arc::new(AtomicUsize::new(0));
                (ShardHandle { tx, open }, rx)
            })
            .unzip();
        (Dispatch { shards, next: 0 }, inboxes)
    }

    fn accepted(listener: &std::net::TcpListener) -> Accepted {
        let addr = listener.local_addr().expect("addr");
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        let guard =
            ConnectionGuard::new(Arc::new(Metrics::new()), Arc::new(Connections::default()));
        let (handshake, _) = crate::listener::Handshakes::new(1000, 1000)
            .admit(addr.ip())
            .expect("a handshake slot");
        Accepted {
            stream,
            peer: addr,
            guard,
            handshake,
        }
    }

    fn open(d: &Dispatch) -> Vec<usize> {
        d.shards
            .iter()
            .map(|s| s.open.load(Ordering::Relaxed))
            .collect()
    }

    #[test]
    fn connections_go_to_the_shard_with_the_fewest_open() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let (mut d, mut inboxes) = dispatch(2);
        for _ in 0..8 {
            d.send(accepted(&listener));
        }
        assert_eq!(open(&d), [4, 4]);
        // Three connections on shard 1 end: the next three all go there.
        d.shards[1].open.fetch_sub(3, Ordering::Relaxed);
        for _ in 0..3 {
            d.send(accepted(&listener));
        }
        assert_eq!(open(&d), [4, 4]);
        let queued: Vec<usize> = inboxes.iter_mut().map(|rx| rx.len()).collect();
        assert_eq!(queued, [4, 7]);
    }

    #[test]
    fn a_stopped_shard_does_not_count_what_it_cannot_take() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let (mut d, mut inboxes) = dispatch(1);
        inboxes.clear();
        d.send(accepted(&listener));
        assert_eq!(open(&d), [0]);
    }
}
