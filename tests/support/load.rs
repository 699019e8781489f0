//! Load while something changes: a paced load generator over real mTLS
//! keep-alive connections (HTTP/1.1 and HTTP/2), and upstreams that count
//! what reaches them.
//!
//! [`Load::start`] runs workers until [`Load::stop`]; each worker sends one
//! request at a time on its connection, so [`Load::settle`] can wait until
//! every request started before a point in time has finished. Every answer
//! that is not the expected `200` from a named upstream is a failure, counted
//! by kind with the first few kept as samples in the [`Report`].
//!
//! Every connection the load opens is a counted TLS handshake, tallied by the
//! server certificate it presented ([`LoadConfig::reconnect_every`] keeps
//! HTTP/1.1 workers handshaking). After [`Load::mark_drain`], a request the
//! server closes or refuses at the connection level is not a failure if it
//! was sent (or, never sent, attempted) after the mark: that is what a drain
//! does to requests arriving after it began. Requests sent before the mark
//! must still be answered.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

use crate::Client;

/// Failure samples kept in a [`Report`].
const SAMPLES: usize = 20;

/// What one request asks for and which answers count as success.
#[derive(Clone, Debug)]
pub struct Target {
    /// Authority (`Host` / `:authority`).
    pub host: String,
    /// Request path.
    pub path: String,
    /// Upstream names allowed to answer (the JSON `upstream` field); empty: any.
    pub upstreams: Vec<String>,
    /// Paths the upstream may see (after rewrites); empty: any.
    pub upstream_paths: Vec<String>,
}

impl Target {
    /// GET `path` on `host`, answered by one of `upstreams` (empty: any upstream).
    pub fn new(host: &str, path: &str, upstreams: &[&str]) -> Target {
        Target {
            host: host.to_string(),
            path: path.to_string(),
            upstreams: upstreams.iter().map(|s| s.to_string()).collect(),
            upstream_paths: Vec::new(),
        }
    }

    /// Also require the upstream to see one of these paths.
    pub fn seen_as(mut self, paths: &[&str]) -> Target {
        self.upstream_paths = paths.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `Ok(upstream name)` when `resp` is a success for this target, else the failure kind.
    fn check(&self, resp: &crate::Response) -> Result<String, String> {
        if resp.status != 200 {
            let reason = resp
                .headers
                .get("x-isthmus-error")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            return Err(format!(
                "status {} (x-isthmus-error: {reason})",
                resp.status
            ));
        }
        let json = resp.json();
        let Some(name) = json["upstream"].as_str() else {
            return Err("200 without an upstream's answer".to_string());
        };
        if !self.upstreams.is_empty() && !self.upstreams.iter().any(|u| u == name) {
            return Err(format!("answered by unexpected upstream {name}"));
        }
        let path = json["path"].as_str().unwrap_or("");
        if !self.upstream_paths.is_empty() && !self.upstream_paths.iter().any(|p| p == path) {
            return Err(format!("upstream saw unexpected path {path}"));
        }
        Ok(name.to_string())
    }
}

/// The shape of the load.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// HTTP/1.1 keep-alive connections (one worker each).
    pub h1_connections: usize,
    /// HTTP/2 connections.
    pub h2_connections: usize,
    /// Workers (concurrent streams) per HTTP/2 connection.
    pub h2_streams: usize,
    /// Requests per second each worker sends at most.
    pub rate_per_worker: u32,
    /// HTTP/1.1 workers close their connection after this many requests on it
    /// and open a new one (a new TLS handshake) for the next; `None`: they keep
    /// it. HTTP/2 connections are always kept, so both kinds coexist.
    pub reconnect_every: Option<u32>,
    /// Whether a worker replaces a connection the server closed (HTTP/1.1
    /// `Connection: close`, HTTP/2 GOAWAY, or the connection ended). `false`:
    /// the worker stops sending once its connection is closed by the server,
    /// as a client does when the server drains.
    pub reopen_closed: bool,
}

impl Default for LoadConfig {
    /// 3 HTTP/1.1 connections and 2 HTTP/2 connections with 2 streams each,
    /// 7 workers at up to 60 requests/s: about 400 requests/s in all, on
    /// connections kept open (closed ones are replaced).
    fn default() -> LoadConfig {
        LoadConfig {
            h1_connections: 3,
            h2_connections: 2,
            h2_streams: 2,
            rate_per_worker: 60,
            reconnect_every: None,
            reopen_closed: true,
        }
    }
}

/// Per-worker progress, for [`Load::settle`].
#[derive(Default)]
struct Progress {
    started: AtomicU64,
    completed: AtomicU64,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failures: BTreeMap<String, u64>,
    samples: Vec<String>,
    by_upstream: BTreeMap<String, u64>,
    by_protocol: BTreeMap<&'static str, (u64, u64)>,
    expected: BTreeMap<String, u64>,
    before_drain: (u64, u64),
    after_drain: (u64, u64),
    in_flight_answered: u64,
    handshakes: u64,
    resumed: u64,
    server_certs: BTreeMap<Vec<u8>, u64>,
}

/// How one request went wrong.
enum Failure {
    /// The server answered, but not with the expected `200` from a named
    /// upstream: always a failure.
    Answer(String),
    /// The connection could not carry it (refused, closed, reset, GOAWAY):
    /// expected after [`Load::mark_drain`] for requests sent after the mark.
    Connection(String),
}

/// One finished request, as [`Shared::record`] classifies it.
struct Attempt<'a> {
    protocol: &'static str,
    target: &'a Target,
    /// When its bytes went out (ns since the load started); `None`: never sent.
    sent: Option<u64>,
    /// When it finished.
    ended: u64,
    result: Result<String, Failure>,
}

/// No drain marked (see [`Load::mark_drain`]).
const NO_DRAIN: u64 = u64::MAX;

struct Shared {
    targets: Vec<Target>,
    started: Instant,
    completed: AtomicU64,
    failed: AtomicU64,
    handshakes: AtomicU64,
    initial_connections: u64,
    drain_at: AtomicU64,
    tally: Mutex<Tally>,
    progress: Vec<Progress>,
}

impl Shared {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Nanoseconds since the load started.
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    fn handshake(&self, resumed: bool, server_cert: Option<Vec<u8>>) {
        let mut t = self.tally();
        t.handshakes += 1;
        t.resumed += u64::from(resumed);
        *t.server_certs
            .entry(server_cert.unwrap_or_default())
            .or_default() += 1;
        drop(t);
        self.handshakes.fetch_add(1, Ordering::SeqCst);
    }

    fn record(&self, a: Attempt<'_>) {
        let drain = self.drain_at.load(Ordering::SeqCst);
        // Sent after the drain began, or never sent and given up after it began.
        let after_drain = a.sent.unwrap_or(a.ended) >= drain;
        let mut t = self.tally();
        let per_protocol = t.by_protocol.entry(a.protocol).or_default();
        per_protocol.0 += 1;
        let phase = if after_drain {
            &mut t.after_drain
        } else {
            &mut t.before_drain
        };
        phase.0 += 1;
        match a.result {
            Ok(upstream) => {
                phase.1 += 1;
                t.ok += 1;
                t.in_flight_answered += u64::from(!after_drain && a.ended >= drain);
                *t.by_upstream.entry(upstream).or_default() += 1;
            }
            Err(Failure::Connection(kind)) if after_drain => {
                let key = format!("{}: {}", a.protocol, short(&kind));
                *t.expected.entry(key).or_default() += 1;
            }
            Err(Failure::Answer(kind) | Failure::Connection(kind)) => {
                if let Some(p) = t.by_protocol.get_mut(a.protocol) {
                    p.1 += 1;
                }
                if t.samples.len() < SAMPLES {
                    let at = self.started.elapsed().as_secs_f64() * 1000.0;
                    let sample = format!(
                        "{at:8.1} ms {} {}{}: {kind}",
                        a.protocol, a.target.host, a.target.path
                    );
                    t.samples.push(sample);
                }
                *t.failures.entry(short(&kind)).or_default() += 1;
                self.failed.fetch_add(1, Ordering::SeqCst);
            }
        }
        drop(t);
        self.completed.fetch_add(1, Ordering::SeqCst);
    }
}

/// A failure kind without the variable detail of transport errors.
fn short(kind: &str) -> String {
    kind.chars().take(120).collect()
}

/// A running load; stop it with [`Load::stop`] to get the [`Report`].
pub struct Load {
    stop: watch::Sender<bool>,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    /// Opens the connections with `client` (HTTP/1.1 and, through
    /// [`Client::http2`], HTTP/2) and starts the workers, each cycling through
    /// `targets` from a different offset. Panics if a connection cannot be
    /// opened: the gateway is expected to be up.
    pub async fn start(client: &Client, targets: Vec<Target>, cfg: LoadConfig) -> Load {
        assert!(!targets.is_empty(), "load needs at least one target");
        let workers = cfg.h1_connections + cfg.h2_connections * cfg.h2_streams.max(1);
        let shared = Arc::new(Shared {
            targets,
            started: Instant::now(),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            handshakes: AtomicU64::new(0),
            initial_connections: u64::try_from(cfg.h1_connections + cfg.h2_connections)
                .unwrap_or(u64::MAX),
            drain_at: AtomicU64::new(NO_DRAIN),
            tally: Mutex::new(Tally::default()),
            progress: (0..workers).map(|_| Progress::default()).collect(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let h1 = client.clone();
        let h2 = client.http2();
        let mut conns: Vec<(Client, &'static str, Conn)> = Vec::new();
        for _ in 0..cfg.h1_connections {
            let c = Conn::open(&h1, &shared)
                .await
                .unwrap_or_else(|e| panic!("open an HTTP/1.1 load connection: {e}"));
            conns.push((h1.clone(), "h1", c));
        }
        for _ in 0..cfg.h2_connections {
            let c = Conn::open(&h2, &shared)
                .await
                .unwrap_or_else(|e| panic!("open an HTTP/2 load connection: {e}"));
            for _ in 1..cfg.h2_streams {
                conns.push((h2.clone(), "h2", c.stream().expect("an HTTP/2 stream")));
            }
            conns.push((h2.clone(), "h2", c));
        }
        let workers = conns
            .into_iter()
            .enumerate()
            .map(|(i, (client, protocol, conn))| {
                tokio::spawn(worker(
                    i,
                    client,
                    protocol,
                    conn,
                    cfg.clone(),
                    Arc::clone(&shared),
                    stop_rx.clone(),
                ))
            })
            .collect();
        Load {
            stop,
            shared,
            workers,
        }
    }

    /// Requests finished so far (successes and failures).
    pub fn completed(&self) -> u64 {
        self.shared.completed.load(Ordering::SeqCst)
    }

    /// Failed requests so far.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// Successful answers per upstream so far.
    pub fn by_upstream(&self) -> BTreeMap<String, u64> {
        self.shared.tally().by_upstream.clone()
    }

    /// Connections (TLS handshakes) the load has opened so far, the first
    /// ones included.
    pub fn handshakes(&self) -> u64 {
        self.shared.handshakes.load(Ordering::SeqCst)
    }

    /// Handshakes so far per server certificate presented (DER; a resumed
    /// session counts under the certificate of its full handshake).
    pub fn server_certs(&self) -> BTreeMap<Vec<u8>, u64> {
        self.shared.tally().server_certs.clone()
    }

    /// Handshakes so far whose server presented `cert` (DER).
    pub fn handshakes_with(&self, cert: &[u8]) -> u64 {
        self.server_certs().get(cert).copied().unwrap_or(0)
    }

    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Marks the start of a drain: from now on a request the server closes or
    /// refuses at the connection level (closed keep-alive connection, HTTP/2
    /// GOAWAY, refused new connection) is counted as expected, not failed, if
    /// it was sent after this call (HTTP/1.1: its bytes were written after it;
    /// HTTP/2: it was started after it) or was never sent at all. Requests
    /// sent before still have to be answered with the expected `200`.
    pub fn mark_drain(&self) {
        let now = self.shared.now();
        self.shared.drain_at.store(now, Ordering::SeqCst);
    }

    /// Waits until every request started before this call has finished: each
    /// worker (one request at a time) finishes a request it started after the
    /// call, or has stopped. After this, no request chosen from an older route
    /// table is still on its way to an upstream, and no handshake begun before
    /// is still in progress.
    pub async fn settle(&self) {
        let marks: Vec<u64> = self
            .shared
            .progress
            .iter()
            .map(|p| p.started.load(Ordering::SeqCst))
            .collect();
        crate::eventually(
            "every load worker finished a request started after now",
            || {
                let done = self
                    .shared
                    .progress
                    .iter()
                    .zip(&marks)
                    .zip(&self.workers)
                    .all(|((p, m), w)| p.completed.load(Ordering::SeqCst) > *m || w.is_finished());
                async move { done }
            },
        )
        .await;
    }

    /// Waits until `n` more requests have finished.
    pub async fn wait_requests(&self, n: u64) {
        let want = self.completed() + n;
        crate::eventually(&format!("{n} more load requests"), || {
            let done = self.completed() >= want;
            async move { done }
        })
        .await;
    }

    /// Waits until the load has opened `n` more connections.
    pub async fn wait_handshakes(&self, n: u64) {
        let want = self.handshakes() + n;
        crate::eventually(&format!("{n} more load handshakes"), || {
            let done = self.handshakes() >= want;
            async move { done }
        })
        .await;
    }

    /// Keeps the load running until it has lasted at least `total` (the bounded
    /// load duration; returns at once when it already has).
    pub async fn run_for_at_least(&self, total: Duration) {
        let left = total.saturating_sub(self.elapsed());
        tokio::time::sleep(left).await;
    }

    /// Whether every worker has stopped on its own (see
    /// [`LoadConfig::reopen_closed`]).
    pub fn all_stopped(&self) -> bool {
        self.workers.iter().all(JoinHandle::is_finished)
    }

    /// Signals the workers to stop, waits for their last requests to finish,
    /// and reports.
    pub async fn stop(self) -> Report {
        let _ = self.stop.send(true);
        for w in self.workers {
            w.await.expect("load worker panicked");
        }
        let elapsed = self.shared.started.elapsed();
        let drain = self.shared.drain_at.load(Ordering::SeqCst);
        let t = self.shared.tally();
        Report {
            total: self.shared.completed.load(Ordering::SeqCst),
            ok: t.ok,
            failures: t.failures.clone(),
            samples: t.samples.clone(),
            by_upstream: t.by_upstream.clone(),
            by_protocol: t.by_protocol.clone(),
            elapsed,
            handshakes: t.handshakes,
            initial_connections: self.shared.initial_connections,
            resumed: t.resumed,
            server_certs: t.server_certs.clone(),
            drain: (drain != NO_DRAIN).then(|| DrainReport {
                at: Duration::from_nanos(drain),
                before: t.before_drain,
                after: t.after_drain,
                in_flight_answered: t.in_flight_answered,
                expected: t.expected.clone(),
            }),
        }
    }
}

async fn worker(
    index: usize,
    client: Client,
    protocol: &'static str,
    conn: Conn,
    cfg: LoadConfig,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let reconnect_every = if protocol == "h1" {
        cfg.reconnect_every
    } else {
        None
    };
    let mut conn = Some(conn);
    let period = Duration::from_secs_f64(1.0 / f64::from(cfg.rate_per_worker.max(1)));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let targets = shared.targets.len();
    let progress = &shared.progress[index];
    let mut next = index % targets;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => {}
            _ = ticker.tick() => {}
        }
        if *stop.borrow() {
            return;
        }
        let target = &shared.targets[next];
        next = (next + 1) % targets;
        progress.started.fetch_add(1, Ordering::SeqCst);
        let start = shared.now();
        let mut attempt = Attempt {
            protocol,
            target,
            sent: None,
            ended: 0,
            result: Ok(String::new()),
        };
        let mut retire = false;
        let c = match conn.take() {
            Some(c) => Some(c),
            None => match Conn::open(&client, &shared).await {
                Ok(c) => Some(c),
                Err(e) => {
                    attempt.result = Err(Failure::Connection(format!("connect error: {e}")));
                    None
                }
            },
        };
        if let Some(mut c) = c {
            let exchange = c.get(target).await;
            attempt.sent = c.sent_at(start, exchange.went_out());
            match exchange {
                Exchange::Answer(resp) => {
                    attempt.result = target.check(&resp).map_err(Failure::Answer);
                    let server_closes = closes(&resp);
                    retire = server_closes && !cfg.reopen_closed;
                    let reconnect = reconnect_every.is_some_and(|n| c.requests >= n);
                    if !server_closes && !reconnect {
                        conn = Some(c);
                    }
                }
                // The connection broke: the next request opens a new one.
                Exchange::Lost(e) => {
                    let what = if protocol == "h2" {
                        "sent, stream refused or connection lost before the answer"
                    } else {
                        "sent, connection closed or reset before the answer"
                    };
                    attempt.result = Err(Failure::Connection(format!("{what}: {e}")));
                    retire = !cfg.reopen_closed;
                }
                // The server closed the connection since the last request (or,
                // HTTP/2, sent GOAWAY): nothing went out. Without reopening,
                // the worker sends nothing more, as a client seeing that would.
                Exchange::NotSent(e) => {
                    let what = if protocol == "h2" {
                        "not sent, the server sent GOAWAY or closed the connection"
                    } else {
                        "not sent, the server closed the keep-alive connection"
                    };
                    attempt.result = Err(Failure::Connection(format!("{what}: {e}")));
                    retire = !cfg.reopen_closed;
                }
            }
        }
        attempt.ended = shared.now();
        shared.record(attempt);
        progress.completed.fetch_add(1, Ordering::SeqCst);
        if retire {
            return;
        }
    }
}

/// Whether the server announced it closes the connection after this response
/// (HTTP/1.1 `Connection: close`): the next request then needs a new one.
fn closes(resp: &crate::Response) -> bool {
    resp.headers
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("close"))
        })
}

/// One load connection: HTTP/1.1 or HTTP/2 (several workers may share an
/// HTTP/2 one through [`Conn::stream`]) over an mTLS stream whose writes are
/// timed.
struct Conn {
    sender: Sender,
    /// When this connection last wrote bytes (ns since the load started).
    wrote: Arc<AtomicU64>,
    /// Requests this worker sent on it.
    requests: u32,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// What became of a request on a connection.
enum Exchange {
    /// A whole response.
    Answer(crate::Response),
    /// Handed to the connection, which failed before the whole answer arrived.
    Lost(String),
    /// Never sent: the connection was closed or refused new requests first
    /// (hyper handed the request back).
    NotSent(String),
}

impl Exchange {
    fn went_out(&self) -> bool {
        !matches!(self, Exchange::NotSent(_))
    }
}

impl Conn {
    /// Connects and handshakes (counted, with the server certificate seen),
    /// then speaks the negotiated protocol.
    async fn open(client: &Client, shared: &Shared) -> Result<Conn, String> {
        let tls = client.open().await.map_err(|e| e.to_string())?;
        let session = tls.get_ref().1;
        let h2 = session.alpn_protocol() == Some(b"h2");
        shared.handshake(
            session.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            session
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec()),
        );
        let wrote = Arc::new(AtomicU64::new(0));
        let io = TokioIo::new(Timed {
            io: tls,
            wrote: Arc::clone(&wrote),
            started: shared.started,
            dirty: false,
        });
        let sender = if h2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| chain(&e))?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| chain(&e))?;
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Ok(Conn {
            sender,
            wrote,
            requests: 0,
        })
    }

    /// Another handle on the same HTTP/2 connection (`None` for HTTP/1.1).
    fn stream(&self) -> Option<Conn> {
        match &self.sender {
            Sender::H2(s) => Some(Conn {
                sender: Sender::H2(s.clone()),
                wrote: Arc::clone(&self.wrote),
                requests: 0,
            }),
            Sender::H1(_) => None,
        }
    }

    /// When the request started at `start` went out. HTTP/1.1 carries one
    /// request at a time and the client writes nothing else, so the last write
    /// after `start` is this request's. HTTP/2 writes of other streams and
    /// control frames share the connection: there the start is used (hyper
    /// hands a request back unsent when GOAWAY came first, see [`Exchange`]).
    fn sent_at(&self, start: u64, sent: bool) -> Option<u64> {
        if !sent {
            return None;
        }
        match self.sender {
            Sender::H1(_) => Some(self.wrote.load(Ordering::SeqCst)).filter(|w| *w >= start),
            Sender::H2(_) => Some(start),
        }
    }

    async fn get(&mut self, target: &Target) -> Exchange {
        let req = match self.sender {
            Sender::H1(_) => Request::get(&target.path).header(http::header::HOST, &target.host),
            Sender::H2(_) => Request::get(format!("https://{}{}", target.host, target.path)),
        }
        .body(Full::new(Bytes::new()))
        .expect("request");
        self.requests += 1;
        let sent = match &mut self.sender {
            Sender::H1(s) => match s.ready().await {
                Ok(()) => s.try_send_request(req).await,
                Err(e) => return Exchange::NotSent(chain(&e)),
            },
            Sender::H2(s) => match s.ready().await {
                Ok(()) => s.try_send_request(req).await,
                Err(e) => return Exchange::NotSent(chain(&e)),
            },
        };
        let resp = match sent {
            Ok(resp) => resp,
            Err(mut e) => {
                let unsent = e.take_message().is_some();
                let e = chain(e.error());
                return if unsent {
                    Exchange::NotSent(e)
                } else {
                    Exchange::Lost(e)
                };
            }
        };
        let (parts, body) = resp.into_parts();
        match body.collect().await {
            Ok(body) => Exchange::Answer(crate::Response {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                version: parts.version,
                handshake: None,
                server_cert: None,
            }),
            Err(e) => Exchange::Lost(format!("reading the body: {}", chain(&e))),
        }
    }
}

/// An error with its sources, on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// A client stream that records when its written bytes were last flushed to
/// the socket (ns since the load started).
struct Timed<T> {
    io: T,
    wrote: Arc<AtomicU64>,
    started: Instant,
    dirty: bool,
}

impl<T> Timed<T> {
    fn stamp(&mut self) {
        let now = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.wrote.store(now, Ordering::SeqCst);
        self.dirty = false;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Timed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Timed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.dirty = true;
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.dirty = true;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) && self.dirty {
            self.stamp();
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How a load fared around a drain (see [`Load::mark_drain`]).
#[derive(Clone, Debug)]
pub struct DrainReport {
    /// When the drain was marked, since the load started.
    pub at: Duration,
    /// `(requests, expected answers)` sent before the mark.
    pub before: (u64, u64),
    /// `(requests, expected answers)` sent after the mark (or never sent).
    pub after: (u64, u64),
    /// Requests sent before the mark and answered (as expected) after it:
    /// in flight when the drain began.
    pub in_flight_answered: u64,
    /// Requests after the mark that the server closed or refused at the
    /// connection level, by kind: client-visible, but what a drain does.
    pub expected: BTreeMap<String, u64>,
}

/// What a load saw.
#[derive(Clone, Debug)]
pub struct Report {
    /// Requests finished.
    pub total: u64,
    /// Expected answers.
    pub ok: u64,
    /// Failures by kind.
    pub failures: BTreeMap<String, u64>,
    /// The first failures, with time since start, protocol and target.
    pub samples: Vec<String>,
    /// Expected answers per upstream name.
    pub by_upstream: BTreeMap<String, u64>,
    /// `(requests, failures)` per protocol (`h1`, `h2`).
    pub by_protocol: BTreeMap<&'static str, (u64, u64)>,
    /// How long the load ran.
    pub elapsed: Duration,
    /// Connections (TLS handshakes) opened, the first ones included.
    pub handshakes: u64,
    /// Connections opened when the load started.
    pub initial_connections: u64,
    /// Handshakes that resumed a session.
    pub resumed: u64,
    /// Handshakes per server certificate presented (DER).
    pub server_certs: BTreeMap<Vec<u8>, u64>,
    /// Set when a drain was marked ([`Load::mark_drain`]).
    pub drain: Option<DrainReport>,
}

impl Report {
    /// Connections opened while the load ran (after its first ones).
    pub fn new_connections(&self) -> u64 {
        self.handshakes - self.initial_connections
    }

    /// Failed requests.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Requests per second over the whole run.
    pub fn rate(&self) -> f64 {
        self.total as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Panics, printing the report, if any request failed or none succeeded.
    pub fn assert_no_failures(&self, what: &str) {
        assert!(
            self.failed() == 0 && self.ok > 0,
            "{what}: {} of {} requests failed\n{self}",
            self.failed(),
            self.total
        );
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} requests in {:.2} s ({:.0}/s): {} ok, {} failed",
            self.total,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.ok,
            self.failed()
        )?;
        for (p, (n, failed)) in &self.by_protocol {
            writeln!(f, "  {p}: {n} requests, {failed} failed")?;
        }
        writeln!(
            f,
            "  {} TLS handshakes ({} connections at start, {} opened during the load, {} resumed)",
            self.handshakes,
            self.initial_connections,
            self.new_connections(),
            self.resumed
        )?;
        for (cert, n) in &self.server_certs {
            writeln!(
                f,
                "  server certificate {}: {n} handshakes",
                cert_label(cert)
            )?;
        }
        if let Some(d) = &self.drain {
            writeln!(
                f,
                "  drain marked at {:.0} ms: sent before {} ({} ok, {} of them answered after the mark), \
                 sent after or not sent {} ({} ok)",
                d.at.as_secs_f64() * 1000.0,
                d.before.0,
                d.before.1,
                d.in_flight_answered,
                d.after.0,
                d.after.1
            )?;
            for (kind, n) in &d.expected {
                writeln!(f, "  expected during the drain x{n}: {kind}")?;
            }
        }
        for (u, n) in &self.by_upstream {
            writeln!(f, "  answered by {u}: {n}")?;
        }
        for (kind, n) in &self.failures {
            writeln!(f, "  failure x{n}: {kind}")?;
        }
        for s in &self.samples {
            writeln!(f, "  sample: {s}")?;
        }
        Ok(())
    }
}

/// A short name for a DER certificate: its last bytes (signature), in hex.
pub fn cert_label(der: &[u8]) -> String {
    if der.is_empty() {
        return "(none)".to_string();
    }
    let tail = &der[der.len().saturating_sub(6)..];
    let hex: String = tail.iter().map(|b| format!("{b:02x}")).collect();
    format!("...{hex}")
}

/// Request counters of a [`CountingUpstream`].
#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    in_flight: AtomicUsize,
    slow_in_flight: AtomicUsize,
    hold: Latch,
}

/// Closed once: `/hold` requests wait for it.
struct Latch(tokio::sync::Semaphore);

impl Default for Latch {
    fn default() -> Self {
        Latch(tokio::sync::Semaphore::new(0))
    }
}

impl Latch {
    async fn wait(&self) {
        // No permit is ever added: acquire returns (an error) once closed.
        let _ = self.0.acquire().await;
    }
}

/// An upstream that counts the requests reaching it. Like the demo upstream it
/// answers JSON naming itself (`upstream`, `path`); `/delay/<seconds>` answers
/// late, `/hold` only once [`CountingUpstream::release_held`] was called. [`CountingUpstream::stop`] closes it as a pod going away would: no
/// more accepts and every open connection closed.
pub struct CountingUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its name (the `upstream` field of its answers).
    pub name: String,
    counters: Arc<Counters>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl CountingUpstream {
    /// Starts on `127.0.0.1:0`.
    pub async fn start(name: &str) -> CountingUpstream {
        CountingUpstream::start_at(name, SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind a counting upstream")
    }

    /// Starts on `addr` (port 0 picks one).
    pub async fn start_at(name: &str, addr: SocketAddr) -> std::io::Result<CountingUpstream> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(
            listener,
            name.to_string(),
            Arc::clone(&counters),
        ));
        Ok(CountingUpstream {
            addr,
            name: name.to_string(),
            counters,
            accept: Mutex::new(Some(accept)),
        })
    }

    /// Endpoints of one Service as Kubernetes has them: one port number on
    /// several pod IPs (`127.0.0.2`, `127.0.0.3`, ... on loopback).
    pub async fn pods(names: &[&str]) -> Vec<CountingUpstream> {
        'attempt: for _ in 0..20 {
            let mut pods = Vec::new();
            let mut port = 0;
            for (i, name) in names.iter().enumerate() {
                let last = u8::try_from(i + 2).expect("at most 253 pods");
                let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
                match CountingUpstream::start_at(name, SocketAddr::new(ip, port)).await {
                    Ok(p) => {
                        port = p.addr.port();
                        pods.push(p);
                    }
                    // That port is taken on this IP: try another port for all.
                    Err(_) => continue 'attempt,
                }
            }
            return pods;
        }
        panic!("no common free port for {names:?} on 127.0.0.2..");
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The IP as text (for EndpointSlices).
    pub fn ip(&self) -> String {
        self.addr.ip().to_string()
    }

    /// Requests received so far (counted on arrival).
    pub fn hits(&self) -> u64 {
        self.counters.hits.load(Ordering::SeqCst)
    }

    /// Requests being answered right now.
    pub fn in_flight(&self) -> usize {
        self.counters.in_flight.load(Ordering::SeqCst)
    }

    /// `/delay/...` and `/hold` requests being answered right now.
    pub fn slow_in_flight(&self) -> usize {
        self.counters.slow_in_flight.load(Ordering::SeqCst)
    }

    /// Answers every `/hold` request, now and from now on.
    pub fn release_held(&self) {
        self.counters.hold.0.close();
    }

    /// Stops accepting and closes every connection (requests in flight are
    /// cut); when it returns, the port is free and the connections are closed.
    pub async fn stop(&self) {
        let task = self
            .accept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        let task = self
            .accept
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
        }
    }
}

/// Accepts until aborted; aborting drops the set and so closes every connection.
async fn accept_loop(listener: TcpListener, name: String, counters: Arc<Counters>) {
    let name: Arc<str> = name.into();
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (name, counters) = (Arc::clone(&name), Arc::clone(&counters));
        connections.spawn(async move {
            let svc = service_fn(move |req| answer(Arc::clone(&name), Arc::clone(&counters), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(
    name: Arc<str>,
    counters: Arc<Counters>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    counters.hits.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::new(&counters, |c| &c.in_flight);
    let path = req.uri().path().to_string();
    if let Some(secs) = path.strip_prefix("/delay/") {
        let _slow = InFlight::new(&counters, |c| &c.slow_in_flight);
        let secs: f64 = secs.parse().unwrap_or(0.0);
        tokio::time::sleep(Duration::from_secs_f64(secs.clamp(0.0, 60.0))).await;
    } else if path == "/hold" {
        let _slow = InFlight::new(&counters, |c| &c.slow_in_flight);
        counters.hold.wait().await;
    }
    let body = json!({"upstream": &*name, "path": path});
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Counts a request in one gauge of [`Counters`] until dropped (also when its
/// connection is cut).
struct InFlight(Arc<Counters>, fn(&Counters) -> &AtomicUsize);

impl InFlight {
    fn new(counters: &Arc<Counters>, gauge: fn(&Counters) -> &AtomicUsize) -> InFlight {
        gauge(counters).fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(counters), gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::SeqCst);
    }
}
