//! Time and size limits on a downstream HTTP/1 connection, enforced on the
//! decrypted stream pingora reads requests from.
//!
//! pingora bounds each single read (60 s), so a client that sends one header
//! byte every few seconds (slowloris) holds a connection forever. Here:
//! - **idle**: between requests (and before the first), the next byte must
//!   arrive within the idle timeout, else the connection ends as if the client
//!   had closed it;
//! - **request header**: from a request's first byte, the whole header
//!   section must arrive within the header timeout, else the client gets a
//!   `408` and the connection ends;
//! - **header size**: a header section still without its end once it is
//!   [`HEADER_SLACK`] bytes over `max_header_bytes` gets a `431` and the
//!   connection ends (pingora alone would buffer up to 1 MiB of it).
//!
//! The end of a header section is the first empty line (`\n\n` or
//! `\n\r\n`). A request is over once its final (not `1xx`) response head is
//! written and, for a request that reached the gateway's hooks, once the proxy
//! has finished it (its `logging` hook ran): a streaming response is not idle
//! time. The next bytes read start a new request. Only the bytes of a
//! response head are looked at, never a response body.
//! The wrapper also counts what pingora's HTTP/1 parser refuses on its own
//! (an error answer written for a request that never reached the gateway's
//! hooks) as `isthmus_request_errors_total{reason="unparsable_request"}`.
//!
//! After a `101 Switching Protocols` head (WebSocket) no deadline applies.
//! HTTP/2 connections are not wrapped (pingora's `h2_idle_timeout` applies,
//! counted only while no stream is open).

mod head;

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

use self::head::ResponseHead;
use crate::metrics::Metrics;
use crate::tls::PeerIdentity;

const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// The gateway's own `431` (as `proxy` answers it, `x-isthmus-error` included).
const HEADERS_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
content-type: text/plain; charset=utf-8\r\ncontent-length: 32\r\n\
x-isthmus-error: headers_too_large\r\nconnection: close\r\n\r\n\
request header fields too large\n";

/// Raw header bytes allowed beyond `max_header_bytes` before the end of the
/// section: the gateway's own count leaves out the request line's method and
/// version, line ends and optional whitespace, so an accepted header section
/// is somewhat longer on the wire.
pub(super) const HEADER_SLACK: usize = 1024;

/// The limits, from the config.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// Longest wait for the first byte of the next request.
    pub idle: Duration,
    /// Longest time from a request's first byte to the end of its header section.
    pub header: Duration,
    /// `limits.max_request_header_bytes`; see [`HEADER_SLACK`].
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request to start.
    Idle,
    /// Reading a header section: `seen` bytes so far, `tail` the last bytes.
    Header { seen: usize, tail: [u8; 2] },
    /// Header complete (`hooks` requests had reached the gateway's hooks
    /// then): body, then the response head being written.
    Request { hooks: u64, head: ResponseHead },
    /// The final response head is written; its body goes out until the
    /// proxy has finished the request.
    Responding,
    /// After a `101 Switching Protocols`: a tunnel, no deadlines.
    Upgraded,
    /// A limit was hit: writing `answer` (`sent` bytes so far), then done.
    Refusing { answer: &'static [u8], sent: usize },
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

    fn peer(&self) -> Option<&PeerIdentity> {
        self.digest
            .as_ref()
            .and_then(|d| d.extension.get::<PeerIdentity>())
    }

    /// Requests of this connection that reached the gateway's hooks.
    fn hooks_seen(&self) -> u64 {
        self.peer().map_or(0, PeerIdentity::requests_seen)
    }

    fn arm(&mut self, after: Duration) {
        self.timer.as_mut().reset(Instant::now() + after);
    }

    fn go_idle(&mut self) {
        self.phase = Phase::Idle;
        let idle = self.limits.idle;
        self.arm(idle);
    }

    fn count(&self, limit: &str) {
        self.metrics
            .limits_exceeded
            .with_label_values(&[limit])
            .inc();
    }

    fn count_error(&self, reason: &str) {
        self.metrics
            .request_errors
            .with_label_values(&[reason])
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
                    head: ResponseHead::default(),
                };
                return;
            }
            *tail = [tail[1], b];
        }
        *seen += data.len();
        if *seen > self.limits.max_header_bytes.saturating_add(HEADER_SLACK) {
            tracing::debug!(
                bytes = *seen,
                "request header section too large; answering 431"
            );
            self.count_error("headers_too_large");
            self.phase = Phase::Refusing {
                answer: HEADERS_TOO_LARGE,
                sent: 0,
            };
        }
    }

    /// Follows the bytes just written through the response head.
    fn observe_written(&mut self, mut data: &[u8]) {
        if let Phase::Header { .. } = self.phase {
            // An answer before the header section ended: pingora's parser refused it.
            self.phase = Phase::Request {
                hooks: self.hooks_seen(),
                head: ResponseHead::default(),
            };
        }
        while let Phase::Request { hooks, head } = &mut self.phase {
            let Some(end) = head.feed(data) else {
                return;
            };
            data = &data[end..];
            let (hooks, status) = (*hooks, head.status());
            match status {
                Some(101) => self.phase = Phase::Upgraded,
                // `100 Continue` and friends: the request (its body) goes on.
                Some(100..=199) => *head = ResponseHead::default(),
                _ if hooks == self.hooks_seen() => {
                    // Never reached the hooks: nothing else will end it.
                    if status.is_some_and(|s| (400..500).contains(&s)) {
                        self.count_error("unparsable_request");
                    }
                    self.go_idle();
                }
                _ => self.phase = Phase::Responding,
            }
        }
    }

    /// Writes the refusal and ends the stream.
    fn poll_refuse(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Phase::Refusing { answer, sent } = self.phase {
            if sent == answer.len() {
                // Best effort: the client is gone or slow, nothing to wait for.
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
                self.phase = Phase::Done;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &answer[sent..]) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    self.phase = Phase::Refusing {
                        answer,
                        sent: sent + n,
                    }
                }
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
            Phase::Refusing { .. } => return this.poll_refuse(cx),
            Phase::Responding if this.peer().is_none_or(PeerIdentity::all_done) => this.go_idle(),
            _ => {}
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.observe(&buf.filled()[before..]);
                if let Phase::Refusing { .. } = this.phase {
                    // Nothing of a refused header reaches pingora.
                    buf.set_filled(before);
                    ready!(this.poll_refuse(cx))?;
                }
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
                this.phase = Phase::Refusing {
                    answer: REQUEST_TIMEOUT,
                    sent: 0,
                };
                ready!(this.poll_refuse(cx))?;
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
        this.observe_written(&data[..n]);
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
