//! A write-coalescing wrapper for the downstream stream, above TLS.
//!
//! pingora writes an HTTP/1 response header and its body in separate writes
//! and flushes only after the body; rustls seals every plaintext write in a
//! record of its own. Coalescing below TLS (as this module used to) saved the
//! syscall but still sent two records per response: the benchmark's
//! `tls-records` relay counted 2.01 records per HTTP/1.1 response for Isthmus
//! and bare pingora against 1.09 for nginx and 1.10 for haproxy, and the
//! client spent more CPU per request (oha 31.8 vs 30.8 µs on h1, 40.9 vs
//! 31.8 µs on 10 KiB responses; loaded-machine dev run). Holding plaintext
//! here until `flush` hands rustls one buffer: a response of header and body
//! up to one record's payload (16 KiB) is one record and one syscall.
//!
//! Flush semantics are unchanged: every flush (pingora flushes the header of
//! a streamed body, each SSE/chunked write it wants out, every HTTP/2 frame
//! batch) drains the buffer to TLS and flushes TLS, so nothing streamed waits
//! on later data. The buffer holds at most [`CAPACITY`] bytes, and is freed
//! after each drain so an idle keep-alive connection holds no write buffer.
//!
//! The wrapper goes on after the handshake, so the handshake's flights and a
//! refused handshake's alert go straight to the socket as rustls writes them.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{Shutdown, Ssl, Stream, ALPN};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most plaintext held before a drain: one full TLS record's payload (the
/// TLS maximum fragment length), so a drain forced by a full buffer is one
/// record and a smaller response is always one.
const CAPACITY: usize = 16 * 1024;

/// A TLS stream whose plaintext writes are held until flushed.
#[derive(Debug)]
pub(super) struct Coalesced {
    inner: Stream,
    buf: Vec<u8>,
    written: usize,
}

impl Coalesced {
    /// Wraps an established TLS stream.
    pub(super) fn new(inner: Stream) -> Self {
        Coalesced {
            inner,
            buf: Vec::new(),
            written: 0,
        }
    }

    /// Hands the held plaintext to TLS (one write, so one record, when it
    /// fits in one), then frees the buffer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        // Freed rather than cleared: an idle connection keeps no 16 KiB buffer.
        self.buf = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Appends `data`; the caller has checked that it fits.
    fn hold(&mut self, data: &[u8]) {
        if self.buf.capacity() == 0 {
            // Most responses are small: size for this write and the next few,
            // and grow (to at most CAPACITY) for larger ones.
            self.buf.reserve(data.len().clamp(4096, CAPACITY));
        }
        self.buf.extend_from_slice(data);
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
        if self.buf.len() + data.len() > CAPACITY {
            ready!(self.poll_drain(cx))?;
            if data.len() >= CAPACITY {
                // Large bodies: rustls splits them into full records itself.
                return Pin::new(&mut self.inner).poll_write(cx, data);
            }
        }
        self.hold(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.buf.len() + total > CAPACITY {
            ready!(self.poll_drain(cx))?;
            if total >= CAPACITY {
                return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            self.hold(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
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

impl Ssl for Coalesced {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

super::delegate_stream_digests!(Coalesced);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes before a flush reach the stream below as one write, at the
    /// flush; a flush with nothing held still flushes; the buffer is freed.
    #[tokio::test]
    async fn holds_writes_until_flush_then_frees_the_buffer() {
        let (a, b) = tokio::net::UnixStream::pair().expect("socket pair");
        let inner: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(a));
        let mut s = Coalesced::new(inner);
        let mut peer = b;
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .expect("write");
        s.write_all(b"body").await.expect("write");
        let mut got = [0u8; 64];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(50), peer.read(&mut got)).await;
        assert!(early.is_err(), "nothing is sent before the flush");
        s.flush().await.expect("flush");
        assert_eq!(s.buf.capacity(), 0, "the buffer is freed after a drain");
        let n = peer.read(&mut got).await.expect("read");
        assert_eq!(&got[..n], b"HTTP/1.1 200 OK\r\n\r\nbody");
        // More than a record's worth: drained as it fills, all of it arrives.
        let big = vec![7u8; CAPACITY * 2 + 10];
        s.write_all(b"x").await.expect("write");
        s.write_all(&big).await.expect("write");
        s.flush().await.expect("flush");
        drop(s);
        let mut all = Vec::new();
        peer.read_to_end(&mut all).await.expect("read");
        assert_eq!(all.len(), 1 + big.len());
    }
}
