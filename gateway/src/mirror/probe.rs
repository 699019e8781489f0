//! Remote gateway health: address resolution and the HTTP probe, and the
//! failure-threshold state machine that turns probe results into "alive".
//!
//! The gateway address is re-resolved before every probe (a load balancer's
//! DNS name can change its answer; linkerd2#10635), and a controller that
//! starts with mirrors already ready keeps them ready until the threshold of
//! failures is reached (a restart must not flap a healthy gateway, linkerd2#8590).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

/// Whether the gateway counts as alive, from consecutive probe results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Liveness {
    threshold: u32,
    failures: u32,
    alive: bool,
}

impl Liveness {
    /// Starts `alive` (adopted from mirrors that are ready now) or not.
    pub fn new(threshold: u32, alive: bool) -> Liveness {
        Liveness {
            threshold: threshold.max(1),
            failures: 0,
            alive,
        }
    }

    /// Records one probe; returns whether `alive` changed.
    pub fn record(&mut self, ok: bool) -> bool {
        let before = self.alive;
        if ok {
            self.failures = 0;
            self.alive = true;
        } else {
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.threshold {
                self.alive = false;
            }
        }
        before != self.alive
    }

    /// Whether the gateway counts as alive.
    pub fn alive(&self) -> bool {
        self.alive
    }

    /// Changes the threshold (a Link edit) without losing the count.
    pub fn set_threshold(&mut self, threshold: u32) {
        self.threshold = threshold.max(1);
    }
}

/// Resolves gateway addresses (IPs or DNS names) to IPs.
pub trait Resolve: Send + Sync {
    /// The addresses `name` resolves to now.
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, String>>;
}

/// The system resolver (`getaddrinfo` through tokio).
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, String>> {
        Box::pin(async move {
            tokio::net::lookup_host((name, 0))
                .await
                .map(|addrs| addrs.map(|a| a.ip()).collect())
                .map_err(|e| e.to_string())
        })
    }
}

/// Resolves every entry of `names`; IP literals stand for themselves. The
/// result is sorted and deduplicated; names that fail are reported, and the
/// call fails only when nothing resolved.
pub async fn resolve_all(
    resolver: &Arc<dyn Resolve>,
    names: &[String],
) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for name in names {
        if let Ok(ip) = name.parse::<IpAddr>() {
            out.push(ip);
            continue;
        }
        match resolver.resolve(name).await {
            Ok(ips) if !ips.is_empty() => out.extend(ips),
            Ok(_) => errors.push(format!("{name}: no addresses")),
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(format!(
            "gateway address did not resolve ({})",
            errors.join("; ")
        ));
    }
    Ok(out)
}

/// Probes `path` on `port` of each address (plain HTTP/1.1, `Host:
/// probe-<target>:<port>` as Linkerd's prober sends); succeeds when any
/// address answers exactly 200 within `timeout`, with the fastest latency.
pub async fn probe(
    addresses: &[IpAddr],
    port: u16,
    path: &str,
    host: &str,
    timeout: Duration,
) -> Result<Duration, String> {
    if addresses.is_empty() {
        return Err("no gateway address".into());
    }
    let attempts = addresses.iter().map(|ip| {
        let addr = SocketAddr::new(*ip, port);
        async move {
            tokio::time::timeout(timeout, probe_one(addr, path, host))
                .await
                .unwrap_or_else(|_| Err(format!("{addr}: no answer within {timeout:?}")))
        }
    });
    let results = futures::future::join_all(attempts).await;
    let mut best: Option<Duration> = None;
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(d) => best = Some(best.map_or(d, |b| b.min(d))),
            Err(e) => errors.push(e),
        }
    }
    best.ok_or_else(|| errors.join("; "))
}

async fn probe_one(addr: SocketAddr, path: &str, host: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "isthmus-mirror-probe")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{addr}: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{addr}: {e}"));
    conn.abort();
    let status = resp?.status();
    if status != http::StatusCode::OK {
        return Err(format!("{addr}: answered {status}"));
    }
    Ok(start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_failures_make_dead_one_success_alive() {
        let mut l = Liveness::new(3, false);
        assert!(!l.record(false));
        assert!(l.record(true), "first success makes it alive");
        assert!(!l.record(false));
        assert!(!l.record(false));
        assert!(l.alive(), "two failures of three keep it alive");
        assert!(l.record(false));
        assert!(!l.alive());
        assert!(l.record(true));
    }

    #[test]
    fn adopted_alive_survives_until_threshold() {
        let mut l = Liveness::new(2, true);
        assert!(!l.record(false));
        assert!(l.alive(), "a restart must not flap a healthy gateway");
        assert!(l.record(false));
        assert!(!l.alive());
    }

    #[tokio::test]
    async fn probe_needs_exactly_200() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = l.accept().await.unwrap();
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(req.starts_with("GET /ready HTTP/1.1\r\n"), "{req}");
                assert!(req.to_ascii_lowercase().contains("host: probe-east:4191"));
                let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let host = "probe-east:4191";
        let t = Duration::from_secs(5);
        assert!(probe(&[ip], port, "/ready", host, t).await.is_ok());
        let e = probe(&[ip], port, "/ready", host, t).await.unwrap_err();
        assert!(e.contains("503"), "{e}");
    }
}
