//! After the handshake, for a connection that negotiated no ALPN (a Linkerd
//! proxy dialing with HTTP/2 prior knowledge does that): read up to the 24
//! bytes of the HTTP/2 connection preface and tell pingora which protocol it
//! is. pingora picks HTTP/2 on a TLS stream only from the negotiated ALPN
//! (`pingora-core` `apps/mod.rs`, `impl ServerApp for T: HttpServerApp`,
//! `process_new`: h2c sniffing is switched off when there is a TLS digest),
//! so the wrapper reports `h2` as its ALPN when the preface is there. The
//! bytes read are replayed to pingora first.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{Shutdown, Ssl, Stream, ALPN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A stream whose first bytes were read to look for the HTTP/2 preface.
#[derive(Debug)]
pub(super) struct Sniffed {
    inner: Stream,
    /// Read ahead, not yet handed to pingora.
    buffered: Vec<u8>,
    pos: usize,
    h2: bool,
}

impl Sniffed {
    /// Reads until the bytes are the whole preface or stop matching it (an
    /// HTTP/1 request line differs at its first byte), or the stream ends.
    pub(super) async fn read(mut inner: Stream) -> io::Result<Sniffed> {
        let mut buffered = Vec::with_capacity(PREFACE.len());
        let mut chunk = [0u8; 24];
        while buffered.len() < PREFACE.len() && PREFACE.starts_with(&buffered) {
            let want = PREFACE.len() - buffered.len();
            let n = inner.read(&mut chunk[..want]).await?;
            if n == 0 {
                break;
            }
            buffered.extend_from_slice(&chunk[..n]);
        }
        let h2 = buffered == PREFACE;
        Ok(Sniffed {
            inner,
            buffered,
            pos: 0,
            h2,
        })
    }

    /// Whether the client opened with the HTTP/2 preface.
    pub(super) fn is_h2(&self) -> bool {
        self.h2
    }
}

impl AsyncRead for Sniffed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.buffered.len() {
            let rest = &this.buffered[this.pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.pos += n;
            if this.pos == this.buffered.len() {
                this.buffered = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Sniffed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Sniffed {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl Ssl for Sniffed {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        if self.h2 {
            Some(ALPN::H2)
        } else {
            self.inner.selected_alpn_proto()
        }
    }
}

super::delegate_stream_digests!(Sniffed);

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::protocols::l4::stream::Stream as L4Stream;

    async fn sniff(client_sends: &'static [u8]) -> (bool, Vec<u8>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            c.write_all(client_sends).await.expect("write");
            c.shutdown().await.expect("shutdown");
            // Keep the socket until the server has read everything.
            let mut sink = Vec::new();
            let _ = c.read_to_end(&mut sink).await;
        });
        let (s, _) = l.accept().await.expect("accept");
        let stream: Stream = Box::new(L4Stream::from(s));
        let mut sniffed = Sniffed::read(stream).await.expect("sniff");
        let h2 = sniffed.is_h2();
        let mut all = Vec::new();
        sniffed.read_to_end(&mut all).await.expect("read");
        drop(sniffed);
        client.await.expect("client");
        (h2, all)
    }

    #[tokio::test]
    async fn preface_means_h2_and_every_byte_is_replayed() {
        let (h2, bytes) = sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00").await;
        assert!(h2);
        assert_eq!(bytes, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00");
    }

    #[tokio::test]
    async fn http1_and_short_requests_stay_http1() {
        let (h2, bytes) = sniff(b"GET / HTTP/1.0\r\n\r\n").await;
        assert!(!h2);
        assert_eq!(bytes, b"GET / HTTP/1.0\r\n\r\n");
        let (h2, bytes) = sniff(b"PRI * HTTP/1.1\r\n").await;
        assert!(!h2);
        assert_eq!(bytes, b"PRI * HTTP/1.1\r\n");
    }
}
