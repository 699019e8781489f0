//! Egress upstream connections: plaintext HTTP/1.1 to local endpoints (h2c
//! with prior knowledge when the Service port's `appProtocol` says h2c or
//! gRPC), and mTLS to remote gateways (HTTP/2 when the gateway offers it in
//! ALPN, else HTTP/1.1), pooled per (address, expected identity).
//!
//! An HTTP/2 connection is shared by every request to that gateway; HTTP/1.1
//! connections go back to an idle list once their response head arrived and
//! are reused when hyper says they are ready again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::tls::client::server_name;
use crate::tls::TlsServer;

/// The request body type sent upstream.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// Why a request could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// TCP connect failed or timed out (nothing was sent).
    #[error("connect {addr}: {error}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        error: String,
        /// A timeout rather than a refusal.
        timeout: bool,
    },
    /// The TLS handshake failed; `identity` when the gateway's certificate
    /// does not carry the expected identity (nothing was sent).
    #[error("TLS to {addr}: {error}")]
    Tls {
        /// Where.
        addr: SocketAddr,
        /// Why.
        error: String,
        /// The certificate lacked the expected identity.
        identity: bool,
    },
    /// The connection broke before a response head arrived.
    #[error("{addr}: {error}")]
    Broken {
        /// Where.
        addr: SocketAddr,
        /// Why.
        error: String,
        /// hyper says the request was not sent at all.
        unsent: bool,
    },
    /// No response head within the timeout.
    #[error("{addr}: no response within {timeout:?}")]
    Timeout {
        /// Where.
        addr: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
}

impl SendError {
    /// Whether nothing reached the upstream (a retry elsewhere is safe for any request).
    pub fn nothing_sent(&self) -> bool {
        match self {
            SendError::Connect { .. } | SendError::Tls { .. } => true,
            SendError::Broken { unsent, .. } => *unsent,
            SendError::Timeout { .. } => false,
        }
    }
}

enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    addr: SocketAddr,
    identity: Option<Arc<str>>,
}

#[derive(Default)]
struct Idle {
    h1: Vec<http1::SendRequest<Body>>,
    h2: Option<http2::SendRequest<Body>>,
}

/// Idle HTTP/1.1 connections kept per key.
const MAX_IDLE: usize = 64;

/// The egress's upstream pools.
pub struct Upstreams {
    tls: TlsServer,
    pools: Mutex<HashMap<Key, Idle>>,
}

/// Where one attempt goes.
pub struct Target<'a> {
    /// The endpoint (a pod, or a remote gateway).
    pub addr: SocketAddr,
    /// For a remote gateway: the identity its certificate must carry.
    pub identity: Option<&'a Arc<str>>,
    /// A local endpoint that speaks h2c (prior knowledge); remote gateways
    /// choose by ALPN instead.
    pub h2c: bool,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Time to the response head.
    pub timeout: Duration,
}

impl Upstreams {
    /// Pools presenting `tls`'s certificate to remote gateways.
    pub fn new(tls: TlsServer) -> Upstreams {
        Upstreams {
            tls,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `req` (origin-form URI and Host already set; for HTTP/2 the
    /// scheme and authority come from the target and `authority`).
    pub async fn send(
        &self,
        target: &Target<'_>,
        authority: &http::uri::Authority,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, SendError> {
        let key = Key {
            addr: target.addr,
            identity: target.identity.cloned(),
        };
        let sender = match self.take(&key) {
            Some(s) => s,
            None => self.connect(target, &key).await?,
        };
        let addr = target.addr;
        let broken = |e: hyper::Error| SendError::Broken {
            addr,
            unsent: e.is_canceled() || e.is_closed(),
            error: e.to_string(),
        };
        let fut = async {
            match sender {
                Sender::H1(mut s) => {
                    *req.version_mut() = http::Version::HTTP_11;
                    let r = s.send_request(req).await.map_err(broken);
                    if r.is_ok() {
                        self.put_h1(&key, s);
                    }
                    r
                }
                Sender::H2(mut s) => {
                    let mut parts = req.uri().clone().into_parts();
                    parts.scheme = Some(if target.identity.is_some() {
                        http::uri::Scheme::HTTPS
                    } else {
                        http::uri::Scheme::HTTP
                    });
                    parts.authority = Some(authority.clone());
                    if let Ok(uri) = http::Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                    }
                    req.headers_mut().remove(http::header::HOST);
                    *req.version_mut() = http::Version::HTTP_2;
                    s.send_request(req).await.map_err(broken)
                }
            }
        };
        tokio::time::timeout(target.timeout, fut)
            .await
            .unwrap_or(Err(SendError::Timeout {
                addr,
                timeout: target.timeout,
            }))
    }

    fn take(&self, key: &Key) -> Option<Sender> {
        let mut pools = self.pools.lock().ok()?;
        let idle = pools.get_mut(key)?;
        if let Some(h2) = &idle.h2 {
            if !h2.is_closed() {
                return Some(Sender::H2(h2.clone()));
            }
            idle.h2 = None;
        }
        while let Some(s) = idle.h1.pop() {
            if s.is_ready() {
                return Some(Sender::H1(s));
            }
            if !s.is_closed() {
                // Still streaming its last response: not reusable yet; a new
                // connection is opened instead (it is dropped when done).
                continue;
            }
        }
        None
    }

    fn put_h1(&self, key: &Key, s: http1::SendRequest<Body>) {
        if let Ok(mut pools) = self.pools.lock() {
            let idle = pools.entry(key.clone()).or_default();
            if idle.h1.len() < MAX_IDLE {
                idle.h1.push(s);
            }
        }
    }

    async fn connect(&self, target: &Target<'_>, key: &Key) -> Result<Sender, SendError> {
        let addr = target.addr;
        let tcp = tokio::time::timeout(target.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| SendError::Connect {
                addr,
                error: format!("timed out after {:?}", target.connect_timeout),
                timeout: true,
            })?
            .map_err(|e| SendError::Connect {
                addr,
                error: e.to_string(),
                timeout: false,
            })?;
        let _ = tcp.set_nodelay(true);
        let Some(identity) = target.identity else {
            return if target.h2c {
                self.h2(tcp, addr, key).await
            } else {
                h1(tcp, addr).await
            };
        };
        let connector = tokio_rustls::TlsConnector::from(self.tls.client_config(identity));
        let handshake = connector.connect(server_name(identity, addr.ip()), tcp);
        let tls = tokio::time::timeout(target.connect_timeout, handshake)
            .await
            .map_err(|_| SendError::Tls {
                addr,
                error: format!("handshake timed out after {:?}", target.connect_timeout),
                identity: false,
            })?
            .map_err(|e| {
                let identity = matches!(
                    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
                    Some(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::ApplicationVerificationFailure
                    ))
                );
                SendError::Tls {
                    addr,
                    error: if identity {
                        format!(
                            "the gateway's certificate does not carry the identity {:?}",
                            target.identity
                        )
                    } else {
                        e.to_string()
                    },
                    identity,
                }
            })?;
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            self.h2(tls, addr, key).await
        } else {
            h1(tls, addr).await
        }
    }

    /// An HTTP/2 client connection over `io`, shared from now on by every
    /// request to `key`.
    async fn h2<T>(&self, io: T, addr: SocketAddr, key: &Key) -> Result<Sender, SendError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (s, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(handshake_failed(addr))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        if let Ok(mut pools) = self.pools.lock() {
            pools.entry(key.clone()).or_default().h2 = Some(s.clone());
        }
        Ok(Sender::H2(s))
    }
}

/// An HTTP/1.1 client connection over `io`, its connection task spawned.
async fn h1<T>(io: T, addr: SocketAddr) -> Result<Sender, SendError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (s, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(handshake_failed(addr))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Sender::H1(s))
}

/// An HTTP handshake that failed on a new connection: nothing was sent.
fn handshake_failed(addr: SocketAddr) -> impl FnOnce(hyper::Error) -> SendError {
    move |e| SendError::Broken {
        addr,
        error: e.to_string(),
        unsent: true,
    }
}
