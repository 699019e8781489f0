//! Time limits on a downstream HTTP/1 connection, enforced on the decrypted
//! stream pingora reads requests from.
//!
//! pingora bounds each single read (60 s), so a client that sends one header
//! byte every few seconds (slowloris) holds a connection forever. Here:
//! - **idle**: between requests (and before the first), the next byte must
//!   arrive within the idle timeout, else the connection ends as if the client
//!   had closed it;
//! - **request header**: from a request's first byte, the whole header
//!   section must arrive within the header timeout, else the client gets a
//!   `408` and the connection ends.
//!
//! The end of a header section is the first empty line (`\n\n` or
//! `\n\r\n`). A final (not `1xx`) response write ends the request: the next
//! bytes read start a new one. A header section larger than `max_header_bytes` is refused by
//! pingora itself; bytes read beyond that without an empty line are a
//! request body (after a `100 Continue`), so the header clock stops there.
//! The wrapper also counts what pingora's HTTP/1 parser refuses on its own
//! (an error answer written for a request that never reached the gateway's
//! hooks) as `isthmus_request_errors_total{reason="unparsable_request"}`.
//!
//! After a `101 Switching Protocols` (WebSocket) no deadline applies. HTTP/2
//! connections are not wrapped (pingora's `h2_idle_timeout` applies).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{Shutdown, Ssl, Stream, ALPN};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;
use crate::tls::PeerIdentity;

const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// The limits, from the config.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// Longest wait for the first byte of the next request.
    pub idle: Duration,
    /// Longest time from a request's first byte to the end of its header section.
    pub header: Duration,
    /// Header bytes pingora accepts (beyond: a body, not a header).
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request to start.
    Idle,
    /// Reading a header section: `seen` bytes so far, `tail` the last bytes.
    Header { seen: usize, tail: [u8; 2] },
    /// Header complete (`hooks` requests had reached the gateway's hooks
    /// then): body, response, until the response is written.
    Request { hooks: u64 },
    /// After a `101 Switching Protocols`: a tunnel, no deadlines.
    Upgraded,
    /// The header timed out: writing the 408 (`sent` bytes so far).
    TimingOut { sent: usize },
    /// The connection is over (reads return end of stream).
    Done,
}

/// A pingora stream with idle and request-header deadlines.
pub(super) struct WithDeadlines {
    inner: Stream,
    limits: Deadlines,
    phase: Phase,
    timer: Pin<Box<Sleep>>,
    metrics: Arc<Metrics>,
    /// The TLS digest, whose extension holds the connection's [`PeerIdentity`].
    digest: Option<Arc<SslDigest>>,
}

impl fmt::Debug for WithDeadlines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithDeadlines")
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl WithDeadlines {
    pub(super) fn new(inner: Stream, limits: Deadlines, metrics: Arc<Metrics>) -> Self {
        let digest = inner.get_ssl_digest();
        WithDeadlines {
            inner,
            limits,
            phase: Phase::Idle,
            timer: Box::pin(tokio::time::sleep(limits.idle)),
            metrics,
            digest,
        }
    }

    /// Requests of this connection that reached the gateway's hooks.
    fn hooks_seen(&self) -> u64 {
        self.digest
            .as_ref()
            .and_then(|d| d.extension.get::<PeerIdentity>())
            .map_or(0, PeerIdentity::requests_seen)
    }

    fn arm(&mut self, after: Duration) {
        self.timer.as_mut().reset(Instant::now() + after);
    }

    fn count(&self, limit: &str) {
        self.metrics
            .limits_exceeded
            .with_label_values(&[limit])
            .inc();
    }

    /// Follows the bytes just read through the header section.
    fn observe(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.phase == Phase::Idle {
            self.phase = Phase::Header {
                seen: 0,
                tail: [0, 0],
            };
            let header = self.limits.header;
            self.arm(header);
        }
        let Phase::Header { seen, tail } = &mut self.phase else {
            return;
        };
        for &b in data {
            if b == b'\n' && (tail[1] == b'\n' || (tail[1] == b'\r' && tail[0] == b'\n')) {
                self.phase = Phase::Request {
                    hooks: self.hooks_seen(),
                };
                return;
            }
            *tail = [tail[1], b];
        }
        *seen += data.len();
        if *seen > self.limits.max_header_bytes {
            self.phase = Phase::Request {
                hooks: self.hooks_seen(),
            };
        }
    }

    /// Writes the 408 and ends the stream.
    fn poll_time_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Phase::TimingOut { sent } = self.phase {
            if sent == REQUEST_TIMEOUT.len() {
                // Best effort: the client is gone or slow, nothing to wait for.
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
                self.phase = Phase::Done;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &REQUEST_TIMEOUT[sent..]) {
                Poll::Ready(Ok(n)) if n > 0 => self.phase = Phase::TimingOut { sent: sent + n },
                Poll::Ready(_) => self.phase = Phase::Done,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for WithDeadlines {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.phase {
            Phase::Done => return Poll::Ready(Ok(())),
            Phase::TimingOut { .. } => return this.poll_time_out(cx),
            _ => {}
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled();
                this.observe(&filled[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let timed = matches!(this.phase, Phase::Idle | Phase::Header { .. });
                if !timed || this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if this.phase == Phase::Idle {
                    this.count("idle_timeout");
                    this.phase = Phase::Done;
                    return Poll::Ready(Ok(()));
                }
                this.count("request_header_timeout");
                tracing::debug!("request header not complete in time; answering 408");
                this.phase = Phase::TimingOut { sent: 0 };
                ready!(this.poll_time_out(cx))?;
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for WithDeadlines {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, data))?;
        if data.starts_with(b"HTTP/1.1 101 ") {
            // An upgraded connection (WebSocket) carries no more requests.
            this.phase = Phase::Upgraded;
        } else if data.starts_with(b"HTTP/1.1 1") {
            // `100 Continue` and friends: the request (its body) goes on.
            return Poll::Ready(Ok(n));
        }
        let refused_by_parser = match this.phase {
            Phase::Header { .. } => true,
            Phase::Request { hooks } => hooks == this.hooks_seen(),
            _ => false,
        };
        if refused_by_parser && data.starts_with(b"HTTP/1.1 4") {
            this.metrics
                .request_errors
                .with_label_values(&["unparsable_request"])
                .inc();
        }
        // A response is going out: the next byte read starts a new request.
        if matches!(this.phase, Phase::Request { .. } | Phase::Header { .. }) {
            this.phase = Phase::Idle;
            let idle = this.limits.idle;
            this.arm(idle);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for WithDeadlines {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl Ssl for WithDeadlines {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

super::delegate_stream_digests!(WithDeadlines);
