//! The bounded HTTP server under the admin and probe ports: an accept loop
//! that backs off on accept errors and closes connections beyond a cap at
//! accept, and per connection a first-byte and header-read deadline and an
//! idle timeout.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use crate::metrics::Metrics;

/// Bounds on one plain-HTTP port (admin or probe).
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Time allowed for the first byte, a TLS handshake (probe port), and each
    /// HTTP/1 request header section (which also bounds idle keep-alive).
    pub header_timeout: Duration,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
}

/// Which port a server runs: names its spans, logs and limit metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Port {
    Admin,
    Probe,
}

impl Port {
    fn name(self) -> &'static str {
        match self {
            Port::Admin => "admin",
            Port::Probe => "probe",
        }
    }

    /// The `isthmus_limits_exceeded_total{limit}` label for the connection cap.
    fn cap_label(self) -> &'static str {
        match self {
            Port::Admin => "admin_max_connections",
            Port::Probe => "probe_max_connections",
        }
    }
}

/// The delay before accepting again after `failures` accept errors in a row
/// (EMFILE and friends): 5 ms, doubling each time, at most 1 s; none before
/// the first failure.
pub fn accept_backoff(failures: u32) -> Duration {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);
    match failures {
        0 => Duration::ZERO,
        n => FIRST.saturating_mul(1 << (n - 1).min(16)).min(MAX),
    }
}

/// Accepts connections until `shutdown` flips (or its sender goes away) and
/// runs `serve` on each one in its own task, at most `max_connections` at once.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    port: Port,
    limits: ServeLimits,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    mut serve: F,
) where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut failures = 0u32;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    failures = 0;
                    stream
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = accept_backoff(failures);
                    tracing::warn!(error = %e, ?delay, "accept failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics
                .limits_exceeded
                .with_label_values(&[port.cap_label()])
                .inc();
            tracing::debug!(
                max = limits.max_connections,
                "connection cap reached; closing a new connection"
            );
            drop(stream);
            continue;
        };
        let conn = serve(stream);
        tokio::spawn(
            async move {
                conn.await;
                drop(permit);
            }
            .instrument(tracing::debug_span!("connection", port = port.name())),
        );
    }
}

/// Waits up to `within` for the first byte and returns it without consuming
/// it; `None` if the peer closed, failed or stayed silent.
pub(crate) async fn first_byte(stream: &TcpStream, within: Duration) -> Option<u8> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(within, stream.peek(&mut byte)).await {
        Ok(Ok(1)) => Some(byte[0]),
        Ok(Ok(_)) => None,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection failed before its first byte");
            None
        }
        Err(_) => {
            tracing::debug!(?within, "no first byte in time; closing");
            None
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 (by preface) on `io` with `handler`, within the
/// header and idle timeouts of `limits`.
pub(crate) async fn serve_http<I, H>(io: I, limits: ServeLimits, handler: H)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(&Method, &http::Uri) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let activity = Activity::new();
    let io = Idle {
        inner: io,
        activity: activity.clone(),
    };
    let svc = service_fn(move |req: Request<Incoming>| {
        let resp = handler(req.method(), req.uri());
        async move { Ok::<_, Infallible>(resp) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    match until_idle(conn, &activity, limits.idle_timeout).await {
        Some(Ok(())) => {}
        Some(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
        None => tracing::debug!(idle = ?limits.idle_timeout, "idle timeout; closing"),
    }
}

/// Runs `conn` until it ends (`Some`) or no byte moved for `idle` (`None`:
/// `conn` is dropped, which closes the connection).
async fn until_idle<F: Future>(conn: F, activity: &Activity, idle: Duration) -> Option<F::Output> {
    tokio::pin!(conn);
    loop {
        let deadline = activity.last() + idle;
        tokio::select! {
            out = &mut conn => return Some(out),
            _ = tokio::time::sleep_until(deadline) => {
                if activity.last() + idle <= Instant::now() {
                    return None;
                }
            }
        }
    }
}

/// When a connection last moved a byte.
#[derive(Clone, Debug)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: Arc::default(),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// An I/O stream that records its activity.
struct Idle<I> {
    inner: I,
    activity: Activity,
}

impl<I: AsyncRead + Unpin> AsyncRead for Idle<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Idle<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
