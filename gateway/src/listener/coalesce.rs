//! A write-coalescing wrapper for the downstream TCP stream, under TLS.
//!
//! rustls emits one record per write and tokio-rustls pushes it to the socket
//! at once; pingora writes a response header and its body separately and only
//! flushes after the body. Buffering writes until `flush` (or until the buffer
//! is full) sends both records in one syscall, as pingora's own listener does
//! with its L4 write buffer, which is crate-private and unused by a custom
//! accept loop.
//!
//! Coalescing starts only once [`CoalesceSwitch::enable`] is called after the
//! handshake: a refused handshake ends with an alert and no flush, and that
//! alert must reach the client.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{Shutdown, Ssl};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Flush threshold: one full TLS record plus header bytes fits without a split.
const CAPACITY: usize = 16 * 1024 + 512;

/// An L4 stream whose writes are held until flushed (once enabled).
#[derive(Debug)]
pub(super) struct Coalesced {
    inner: L4Stream,
    buf: Vec<u8>,
    written: usize,
    on: Arc<AtomicBool>,
}

/// Turns coalescing on for one connection.
#[derive(Clone, Debug)]
pub(super) struct CoalesceSwitch(Arc<AtomicBool>);

impl CoalesceSwitch {
    /// From now on, writes wait for a flush.
    pub(super) fn enable(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Coalesced {
    /// Wraps an accepted stream; writes pass straight through until the switch is enabled.
    pub(super) fn new(inner: L4Stream) -> (Self, CoalesceSwitch) {
        let on = Arc::new(AtomicBool::new(false));
        let stream = Coalesced {
            inner,
            buf: Vec::new(),
            written: 0,
            on: on.clone(),
        };
        (stream, CoalesceSwitch(on))
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Coalesced {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalesced {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.on.load(Ordering::Relaxed) && self.buf.is_empty() {
            return Pin::new(&mut self.inner).poll_write(cx, data);
        }
        if self.buf.len() + data.len() > CAPACITY {
            ready!(self.poll_drain(cx))?;
            if data.len() >= CAPACITY {
                return Pin::new(&mut self.inner).poll_write(cx, data);
            }
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Coalesced {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(self).await;
    }
}

impl Ssl for Coalesced {}

super::delegate_stream_digests!(Coalesced);
