//! The load harness's engine baseline: pingora's own minimal `ProxyHttp` proxy
//! (its examples' shape: `Server` + `http_proxy_service` + a rustls listener),
//! with nothing of Isthmus. mTLS like the gateway (client certificate required
//! and verified against the CA, TLS 1.2/1.3, ALPN h2 + http/1.1), the given
//! Host names routed to one plaintext upstream through pingora's keep-alive
//! pool, `404` for any other Host. What a run measures above this is what
//! Isthmus adds to the engine.
//!
//! One difference from the gateway's TLS settings cannot be removed: pingora
//! 0.9 builds the listener's rustls `ServerConfig` itself (`TlsSettings::build`)
//! with rustls' default session cache and TLS 1.3 tickets, so this baseline
//! offers session resumption (the gateway in the harness does not). Only new
//! connections are affected.
//!
//! Usage: `pingora-baseline LISTEN UPSTREAM CERT KEY CA THREADS HOST...`

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};
use pingora_rustls::{RootCertStore, WebPkiClientVerifier};

/// mimalloc, as the gateway binary uses, so that the allocator is not part of
/// the difference.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Routes `hosts` to `upstream`; everything else is 404.
struct Baseline {
    hosts: Vec<String>,
    upstream: String,
}

/// The request's host without port: `:authority` (HTTP/2) or `Host` (HTTP/1).
fn host_of(req: &pingora_http::RequestHeader) -> Option<&str> {
    let host = req.uri.host().or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
    })?;
    Some(host.rsplit_once(':').map_or(host, |(h, _)| h))
}

#[async_trait]
impl ProxyHttp for Baseline {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora_core::Result<bool> {
        let known =
            host_of(session.req_header()).is_some_and(|h| self.hosts.iter().any(|k| k == h));
        if known {
            return Ok(false);
        }
        session.respond_error(404).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

/// The CA bundle at `path` as rustls roots.
fn roots(path: &str) -> Result<RootCertStore, Box<dyn std::error::Error>> {
    let mut store = RootCertStore::empty();
    let pem = std::fs::read(path)?;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        store.add(cert?)?;
    }
    if store.is_empty() {
        return Err(format!("no certificate in {path}").into());
    }
    Ok(store)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, cert, key, ca, threads, hosts @ ..] = args.as_slice() else {
        return Err("usage: pingora-baseline LISTEN UPSTREAM CERT KEY CA THREADS HOST...".into());
    };
    pingora_rustls::install_default_crypto_provider();
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots(ca)?)).build()?;

    let conf = ServerConf {
        threads: threads.parse()?,
        // SIGTERM ends the process at once: the harness stops systems between runs.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora_proxy::http_proxy_service(
        &server.configuration,
        Baseline {
            hosts: hosts.to_vec(),
            upstream: upstream.clone(),
        },
    );
    let mut tls = TlsSettings::intermediate(cert, key)?;
    tls.set_client_cert_verifier(verifier);
    tls.enable_h2();
    service.add_tls_with_settings(listen, None, tls);
    server.add_service(service);
    server.run_forever()
}
