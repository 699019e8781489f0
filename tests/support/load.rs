//! Load while something changes: a paced load generator over real mTLS
//! keep-alive connections (HTTP/1.1 and HTTP/2), and upstreams that count
//! what reaches them.
//!
//! [`Load::start`] runs workers until [`Load::stop`]; each worker sends one
//! request at a time on its connection, so [`Load::settle`] can wait until
//! every request started before a point in time has finished. Every answer
//! that is not the expected `200` from a named upstream is a failure, counted
//! by kind with the first few kept as samples in the [`Report`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

use crate::client::KeepAlive;
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
}

impl Default for LoadConfig {
    /// 3 HTTP/1.1 connections and 2 HTTP/2 connections with 2 streams each,
    /// 7 workers at up to 60 requests/s: about 400 requests/s in all.
    fn default() -> LoadConfig {
        LoadConfig {
            h1_connections: 3,
            h2_connections: 2,
            h2_streams: 2,
            rate_per_worker: 60,
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
}

struct Shared {
    targets: Vec<Target>,
    started: Instant,
    completed: AtomicU64,
    failed: AtomicU64,
    tally: Mutex<Tally>,
    progress: Vec<Progress>,
}

impl Shared {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, protocol: &'static str, target: &Target, outcome: Result<String, String>) {
        let mut t = self.tally();
        let per_protocol = t.by_protocol.entry(protocol).or_default();
        per_protocol.0 += 1;
        match outcome {
            Ok(upstream) => {
                t.ok += 1;
                *t.by_upstream.entry(upstream).or_default() += 1;
            }
            Err(kind) => {
                per_protocol.1 += 1;
                if t.samples.len() < SAMPLES {
                    let at = self.started.elapsed().as_secs_f64() * 1000.0;
                    let sample = format!(
                        "{at:8.1} ms {protocol} {}{}: {kind}",
                        target.host, target.path
                    );
                    t.samples.push(sample);
                }
                // Kinds without the variable detail of transport errors.
                let key: String = kind.chars().take(120).collect();
                *t.failures.entry(key).or_default() += 1;
                self.failed.fetch_add(1, Ordering::SeqCst);
            }
        }
        drop(t);
        self.completed.fetch_add(1, Ordering::SeqCst);
    }
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
        let workers = cfg.h1_connections + cfg.h2_connections * cfg.h2_streams;
        let shared = Arc::new(Shared {
            targets,
            started: Instant::now(),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            tally: Mutex::new(Tally::default()),
            progress: (0..workers).map(|_| Progress::default()).collect(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let h1 = client.clone();
        let h2 = client.http2();
        let mut conns: Vec<(Client, &'static str, KeepAlive)> = Vec::new();
        for _ in 0..cfg.h1_connections {
            let c = h1
                .keep_alive()
                .await
                .expect("open an HTTP/1.1 load connection");
            conns.push((h1.clone(), "h1", c));
        }
        for _ in 0..cfg.h2_connections {
            let c = h2
                .keep_alive()
                .await
                .expect("open an HTTP/2 load connection");
            for _ in 1..cfg.h2_streams {
                conns.push((h2.clone(), "h2", c.stream().expect("an HTTP/2 stream")));
            }
            conns.push((h2.clone(), "h2", c));
        }
        let period = Duration::from_secs_f64(1.0 / f64::from(cfg.rate_per_worker.max(1)));
        let workers = conns
            .into_iter()
            .enumerate()
            .map(|(i, (client, protocol, conn))| {
                tokio::spawn(worker(
                    i,
                    client,
                    protocol,
                    conn,
                    period,
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

    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Waits until every request started before this call has finished: each
    /// worker (one request at a time) finishes a request it started after the
    /// call. After this, no request chosen from an older route table is still
    /// on its way to an upstream.
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
                    .all(|(p, m)| p.completed.load(Ordering::SeqCst) > *m);
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

    /// Keeps the load running until it has lasted at least `total` (the bounded
    /// load duration; returns at once when it already has).
    pub async fn run_for_at_least(&self, total: Duration) {
        let left = total.saturating_sub(self.elapsed());
        tokio::time::sleep(left).await;
    }

    /// Signals the workers to stop, waits for their last requests to finish,
    /// and reports.
    pub async fn stop(self) -> Report {
        let _ = self.stop.send(true);
        for w in self.workers {
            w.await.expect("load worker panicked");
        }
        let elapsed = self.shared.started.elapsed();
        let t = self.shared.tally();
        Report {
            total: self.shared.completed.load(Ordering::SeqCst),
            ok: t.ok,
            failures: t.failures.clone(),
            samples: t.samples.clone(),
            by_upstream: t.by_upstream.clone(),
            by_protocol: t.by_protocol.clone(),
            elapsed,
        }
    }
}

async fn worker(
    index: usize,
    client: Client,
    protocol: &'static str,
    conn: KeepAlive,
    period: Duration,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn = Some(conn);
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
        let outcome = match conn.as_mut() {
            Some(c) => match c.get(&target.host, &target.path).await {
                Ok(resp) => {
                    if closes(&resp) {
                        conn = None;
                    }
                    target.check(&resp)
                }
                Err(e) => {
                    // The connection broke; the next request opens a new one.
                    conn = None;
                    Err(format!("transport error: {e}"))
                }
            },
            None => match client.keep_alive().await {
                Ok(mut c) => match c.get(&target.host, &target.path).await {
                    Ok(resp) => {
                        if !closes(&resp) {
                            conn = Some(c);
                        }
                        target.check(&resp)
                    }
                    Err(e) => Err(format!("transport error on a new connection: {e}")),
                },
                Err(e) => Err(format!("connect error: {e}")),
            },
        };
        shared.record(protocol, target, outcome);
        progress.completed.fetch_add(1, Ordering::SeqCst);
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
}

impl Report {
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

/// Request counters of a [`CountingUpstream`].
#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    in_flight: AtomicUsize,
    slow_in_flight: AtomicUsize,
}

/// An upstream that counts the requests reaching it. Like the demo upstream it
/// answers JSON naming itself (`upstream`, `path`); `/delay/<seconds>` answers
/// late. [`CountingUpstream::stop`] closes it as a pod going away would: no
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

    /// `/delay/...` requests being answered right now.
    pub fn slow_in_flight(&self) -> usize {
        self.counters.slow_in_flight.load(Ordering::SeqCst)
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
