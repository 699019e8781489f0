//! A real mTLS client: rustls with the dev CA and a client certificate from
//! files, hyper HTTP/1.1 or HTTP/2 on top, or raw bytes for malformed requests.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Which protocol to offer with ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// `http/1.1`.
    Http1,
    /// `h2`.
    Http2,
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body as text.
    pub body: String,
    /// HTTP version used.
    pub version: Version,
    /// Whether the TLS handshake was full or resumed.
    pub handshake: Option<rustls::HandshakeKind>,
    /// The server's leaf certificate (DER).
    pub server_cert: Option<Vec<u8>>,
}

impl Response {
    /// The `upstream` field of a demo upstream's JSON answer.
    pub fn upstream(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        v.get("upstream")?.as_str().map(str::to_string)
    }

    /// A field of the demo upstream's JSON answer.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A failed exchange: connection, TLS or HTTP.
#[derive(Debug)]
pub struct ClientError(pub Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

impl ClientError {
    /// The TLS alert the server sent, if that is why it failed.
    pub fn alert(&self) -> Option<AlertDescription> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self.0.as_ref());
        while let Some(e) = cur {
            if let Some(rustls::Error::AlertReceived(a)) = e.downcast_ref::<rustls::Error>() {
                return Some(*a);
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if let Some(rustls::Error::AlertReceived(a)) =
                    io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
                {
                    return Some(*a);
                }
            }
            cur = e.source();
        }
        None
    }
}

fn err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ClientError {
    ClientError(e.into())
}

/// An mTLS client for one gateway address.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    alpn: Alpn,
    server_name: ServerName<'static>,
}

fn load_certs(path: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .expect("certificate PEM")
}

impl Client {
    /// A client trusting `certs/ca.crt` and presenting `certs/<name>.crt/.key`.
    pub fn new(addr: SocketAddr, certs: &Path, name: Option<&str>, alpn: Alpn) -> Client {
        Client::with_versions(addr, certs, name, alpn, rustls::DEFAULT_VERSIONS)
    }

    /// Same, limited to the given TLS versions.
    pub fn with_versions(
        addr: SocketAddr,
        certs: &Path,
        name: Option<&str>,
        alpn: Alpn,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Client {
        let cert_key = name.map(|n| {
            let chain = load_certs(&certs.join(format!("{n}.crt")));
            let key_pem = std::fs::read(certs.join(format!("{n}.key"))).expect("key file");
            let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
                .expect("key PEM")
                .expect("a private key");
            (chain, key)
        });
        Client::from_parts(addr, &certs.join("ca.crt"), cert_key, alpn, versions)
    }

    /// A client from in-memory client certificate material.
    pub fn from_parts(
        addr: SocketAddr,
        ca: &Path,
        cert_key: Option<(
            Vec<rustls::pki_types::CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        )>,
        alpn: Alpn,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Client {
        let mut roots = RootCertStore::empty();
        for c in load_certs(ca) {
            roots.add(c).expect("CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots);
        let mut config = match cert_key {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = match alpn {
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::Http2 => vec![b"h2".to_vec()],
        };
        Client {
            addr,
            config: Arc::new(config),
            alpn,
            server_name: ServerName::try_from("localhost").expect("server name"),
        }
    }

    /// The same client speaking HTTP/2.
    pub fn http2(&self) -> Client {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Client {
            config: Arc::new(config),
            alpn: Alpn::Http2,
            ..self.clone()
        }
    }

    /// Sends SNI `name` instead of `localhost`.
    pub fn with_sni(&self, name: &str) -> Client {
        Client {
            server_name: ServerName::try_from(name.to_string()).expect("server name"),
            ..self.clone()
        }
    }

    async fn connect(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
        let tcp = TcpStream::connect(self.addr).await.map_err(err)?;
        tcp.set_nodelay(true).map_err(err)?;
        TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(err)
    }

    /// GET `path` with authority `host`, on a new connection.
    pub async fn get(&self, host: &str, path: &str) -> Result<Response, ClientError> {
        self.send(
            self.request(host, path)
                .body(Full::new(Bytes::new()))
                .map_err(err)?,
        )
        .await
    }

    /// The status of GET `path` on `host`; panics if the exchange itself fails.
    pub async fn status(&self, host: &str, path: &str) -> u16 {
        match self.get(host, path).await {
            Ok(r) => r.status,
            Err(e) => panic!("GET {host}{path}: {e}"),
        }
    }

    /// A request builder with the authority set the way each protocol carries it.
    pub fn request(&self, host: &str, path: &str) -> http::request::Builder {
        match self.alpn {
            Alpn::Http1 => Request::get(path).header(http::header::HOST, host),
            Alpn::Http2 => Request::get(format!("https://{host}{path}")),
        }
    }

    /// Sends one request on a new connection and reads the whole response.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response, ClientError> {
        let tls = self.connect().await?;
        let handshake = tls.get_ref().1.handshake_kind();
        let server_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec());
        let io = TokioIo::new(tls);
        let resp = match self.alpn {
            Alpn::Http1 => {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(err)?;
                tokio::spawn(conn);
                sender.send_request(req).await.map_err(err)?
            }
            Alpn::Http2 => {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(err)?;
                tokio::spawn(conn);
                sender.send_request(req).await.map_err(err)?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(err)?.to_bytes();
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            version: parts.version,
            handshake,
            server_cert,
        })
    }

    /// Opens one HTTP/2 connection for many requests (keep-alive polling).
    pub async fn h2_session(&self) -> Result<H2Session, ClientError> {
        let tls = self.http2().connect().await?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(err)?;
        tokio::spawn(conn);
        Ok(H2Session { sender })
    }

    /// Writes raw bytes over TLS and returns everything read until the server
    /// closes or goes quiet for 2 s.
    pub async fn raw(&self, bytes: &[u8]) -> Result<String, ClientError> {
        let mut tls = self.connect().await?;
        tls.write_all(bytes).await.map_err(err)?;
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(2), tls.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Ok(Err(e)) if out.is_empty() => return Err(err(e)),
                Ok(Err(_)) => break,
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// A plain-HTTP GET (admin port): (status, body).
pub async fn plain_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.expect("connect admin");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("admin handshake");
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(http::header::HOST, "admin")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = sender.send_request(req).await.expect("admin response");
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("admin body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// One HTTP/2 connection reused for many requests.
pub struct H2Session {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2Session {
    /// GET `path` on `host`; returns the status.
    pub async fn status(&mut self, host: &str, path: &str) -> Result<u16, ClientError> {
        let req = Request::get(format!("https://{host}{path}"))
            .body(Full::new(Bytes::new()))
            .map_err(err)?;
        let resp = self.sender.send_request(req).await.map_err(err)?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await.map_err(err)?;
        Ok(status)
    }
}
