//! Memory per connection: opens N mTLS connections to a system under test,
//! sends ONE keep-alive HTTP/1.1 request on each (so the proxy has allocated
//! its per-connection state: TLS session, HTTP/1 buffers, the request's
//! context), reads the response, then holds every connection idle until
//! stdin closes. Prints `ready N` (connections that got a 200) on stdout once
//! all are open; the harness reads the system's RSS then.
//!
//! The server certificate is verified against the CA as `localhost` (a SAN
//! of the dev gateway certificate).
//!
//! Usage: `idle-conns ADDR HOST CERT KEY CA N [CONCURRENCY] [REQUESTS]`
//! (`REQUESTS` 0: handshake only, no request; default 1.)

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

type BoxError = Box<dyn Error + Send + Sync>;

fn pem_certs(path: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, BoxError> {
    let pem = std::fs::read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(format!("no certificate in {path}").into());
    }
    Ok(certs)
}

fn connector(cert: &str, key: &str, ca: &str) -> Result<TlsConnector, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(ca)? {
        roots.add(c)?;
    }
    let key_pem = std::fs::read(key)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())?
        .ok_or_else(|| format!("no private key in {key}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(pem_certs(cert)?, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every connection does a full handshake, as the load scenarios do.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Connects, sends one request (unless `request` is false), reads its
/// response (status line, headers and a `Content-Length` body) and returns
/// the still-open connection.
async fn open(
    addr: SocketAddr,
    host: &str,
    tls: &TlsConnector,
    request: bool,
) -> Result<TlsStream<TcpStream>, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut s = tls.connect(ServerName::try_from("localhost")?, tcp).await?;
    if !request {
        return Ok(s);
    }
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    s.flush().await?;
    let mut reader = tokio::io::BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    if !line.starts_with("HTTP/1.1 200") {
        return Err(format!("unexpected status line {line:?}").into());
    }
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Err("connection closed in the headers".into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse()?;
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await?;
    if !reader.buffer().is_empty() {
        return Err("bytes after the response".into());
    }
    Ok(reader.into_inner())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, host, cert, key, ca, n, rest @ ..] = args.as_slice() else {
        return Err("usage: idle-conns ADDR HOST CERT KEY CA N [CONCURRENCY] [REQUESTS]".into());
    };
    let addr: SocketAddr = addr.parse()?;
    let n: usize = n.parse()?;
    let concurrency: usize = rest.first().map_or(Ok(32), |c| c.parse())?;
    let request = rest.get(1).map_or(Ok(1), |r| r.parse::<u32>())? > 0;
    let tls = connector(cert, key, ca)?;
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (tls, host, gate) = (tls.clone(), host.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            open(addr, &host, &tls, request).await
        }));
    }
    let mut held = Vec::with_capacity(n);
    let mut failed = 0usize;
    let mut first_error = None;
    for t in tasks {
        match t.await? {
            Ok(s) => held.push(s),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("idle-conns: {failed} connections failed; first: {e}");
    }
    println!("ready {}", held.len());
    // Hold the connections until the harness closes stdin.
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while stdin.read(&mut sink).await? > 0 {}
    drop(held);
    Ok(())
}
