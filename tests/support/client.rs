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
    /// Reads a whole hyper response.
    async fn read(
        resp: http::Response<hyper::body::Incoming>,
        handshake: Option<rustls::HandshakeKind>,
        server_cert: Option<Vec<u8>>,
    ) -> Result<Response, ClientError> {
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

    /// The same client offering exactly these ALPN protocols (none: empty).
    pub fn with_alpn(&self, protos: &[&[u8]]) -> Client {
        let mut config = (*self.config).clone();
        config.alpn_protocols = protos.iter().map(|p| p.to_vec()).collect();
        Client {
            config: Arc::new(config),
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

    /// A new connection with the handshake done, for tests that speak bytes.
    pub async fn open(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
        self.connect().await
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
        Response::read(resp, handshake, server_cert).await
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
    /// GET `path` on `host`; returns the status and the body as text.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<(u16, String), ClientError> {
        let req = Request::get(format!("https://{host}{path}"))
            .body(Full::new(Bytes::new()))
            .map_err(err)?;
        let resp = self.sender.send_request(req).await.map_err(err)?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(err)?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

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

/// What one raw HTTP/1 exchange produced: every byte the server sent, and
/// whether it then closed the connection.
#[derive(Debug)]
pub struct RawExchange {
    /// Everything the server sent.
    pub bytes: Vec<u8>,
    /// Whether the server closed the connection (EOF or reset) before the wait ran out.
    pub closed: bool,
}

impl RawExchange {
    /// The server's bytes as text (lossy), for messages and `contains` checks.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The responses in the byte stream, in order, as (status, head, body);
    /// framed by Content-Length, chunked coding, or the close.
    pub fn responses(&self) -> Vec<(u16, String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = self.bytes.as_slice();
        while let Some(end) = find(rest, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&rest[..end]).into_owned();
            rest = &rest[end + 4..];
            let status = head
                .strip_prefix("HTTP/1.1 ")
                .or_else(|| head.strip_prefix("HTTP/1.0 "))
                .and_then(|s| s.get(..3))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let header = |name: &str| {
                head.lines().skip(1).find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| v.trim().to_ascii_lowercase())
                })
            };
            let body = if let Some(len) = header("content-length").and_then(|v| v.parse().ok()) {
                let len = rest.len().min(len);
                let (body, tail) = rest.split_at(len);
                rest = tail;
                body.to_vec()
            } else if header("transfer-encoding").is_some_and(|v| v.ends_with("chunked")) {
                let mut body = Vec::new();
                while let Some(line_end) = find(rest, b"\r\n") {
                    let size = std::str::from_utf8(&rest[..line_end])
                        .ok()
                        .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                        .unwrap_or(0);
                    rest = &rest[line_end + 2..];
                    if size == 0 {
                        rest = find(rest, b"\r\n").map_or(&[][..], |e| &rest[e + 2..]);
                        break;
                    }
                    let size = size.min(rest.len());
                    body.extend_from_slice(&rest[..size]);
                    rest = rest.get(size + 2..).unwrap_or(&[]);
                }
                body
            } else {
                std::mem::take(&mut rest).to_vec()
            };
            out.push((status, head, body));
        }
        out
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Client {
    /// Sends SNI `name` but verifies the server certificate as issued for
    /// `localhost` (the dev gateway certificate), so a test can see what the
    /// gateway does with an SNI that names something else.
    pub fn with_foreign_sni(&self, name: &str, ca: &Path) -> Client {
        let mut roots = RootCertStore::empty();
        for c in load_certs(ca) {
            roots.add(c).expect("CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier");
        let mut config = (*self.config).clone();
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(VerifyAs {
                inner,
                name: ServerName::try_from("localhost").expect("server name"),
            }));
        Client {
            config: Arc::new(config),
            server_name: ServerName::try_from(name.to_string()).expect("server name"),
            ..self.clone()
        }
    }

    /// Writes raw bytes over TLS and reads until the server closes the
    /// connection or `wait` passes without it closing. A TLS alert before any
    /// byte arrived is an error (see [`ClientError::alert`]).
    pub async fn raw_exchange(
        &self,
        bytes: &[u8],
        wait: Duration,
    ) -> Result<RawExchange, ClientError> {
        let mut tls = self.connect().await?;
        let deadline = tokio::time::Instant::now() + wait;
        // The server may answer and close before it read everything (a refused
        // request); what it answered is what counts, so a failed write is not
        // an error by itself.
        let _ = tls.write_all(bytes).await;
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let closed = loop {
            match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
                Err(_) => break false,
                Ok(Ok(0)) => break true,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Ok(Err(e)) if out.is_empty() => return Err(err(e)),
                Ok(Err(_)) => break true,
            }
        };
        Ok(RawExchange { bytes: out, closed })
    }
}

/// Verifies the server chain for a fixed name, whatever SNI was sent.
#[derive(Debug)]
struct VerifyAs {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl rustls::client::danger::ServerCertVerifier for VerifyAs {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// One keep-alive connection (HTTP/1.1 or HTTP/2, as the client's ALPN says)
/// carrying many requests and reading whole responses. HTTP/2 connections can
/// be shared ([`KeepAlive::stream`]) to run requests concurrently.
pub struct KeepAlive {
    sender: KeepAliveSender,
    alpn: Alpn,
}

enum KeepAliveSender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Client {
    /// Opens one connection for many requests.
    pub async fn keep_alive(&self) -> Result<KeepAlive, ClientError> {
        let io = TokioIo::new(self.connect().await?);
        let sender = match self.alpn {
            Alpn::Http1 => {
                let (sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(err)?;
                tokio::spawn(conn);
                KeepAliveSender::H1(sender)
            }
            Alpn::Http2 => {
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(err)?;
                tokio::spawn(conn);
                KeepAliveSender::H2(sender)
            }
        };
        Ok(KeepAlive {
            sender,
            alpn: self.alpn,
        })
    }
}

impl KeepAlive {
    /// Another handle on the same HTTP/2 connection (`None` for HTTP/1.1).
    pub fn stream(&self) -> Option<KeepAlive> {
        match &self.sender {
            KeepAliveSender::H2(s) => Some(KeepAlive {
                sender: KeepAliveSender::H2(s.clone()),
                alpn: self.alpn,
            }),
            KeepAliveSender::H1(_) => None,
        }
    }

    /// GET `path` on `host` over this connection; reads the whole response.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<Response, ClientError> {
        let req = match self.alpn {
            Alpn::Http1 => Request::get(path).header(http::header::HOST, host),
            Alpn::Http2 => Request::get(format!("https://{host}{path}")),
        }
        .body(Full::new(Bytes::new()))
        .map_err(err)?;
        let resp = match &mut self.sender {
            KeepAliveSender::H1(s) => {
                s.ready().await.map_err(err)?;
                s.send_request(req).await.map_err(err)?
            }
            KeepAliveSender::H2(s) => {
                s.ready().await.map_err(err)?;
                s.send_request(req).await.map_err(err)?
            }
        };
        Response::read(resp, None, None).await
    }
}
