//! The load harness's upstream: a fixed-body HTTP/1.1 keep-alive server that is
//! not the bottleneck. `/` answers 13 bytes, `/10k` 10 KiB, `/1m` 1 MiB;
//! `/stats` answers `{"accepts":N,"requests":M}` (connections accepted and
//! requests served so far, `/stats` itself not counted), which the harness's
//! `--counts` mode reads directly to count upstream connections per request.
//!
//! Usage: `bench-upstream 127.0.0.1:18080 [threads]`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 18080)));
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let small = Bytes::from_static(b"hello, world\n");
        let ten_k = Bytes::from(vec![b'x'; 10 * 1024]);
        let one_m = Bytes::from(vec![b'x'; 1024 * 1024]);
        let accepts = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        eprintln!("bench-upstream listening on {addr}");
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            accepts.fetch_add(1, Ordering::Relaxed);
            let (small, ten_k, one_m) = (small.clone(), ten_k.clone(), one_m.clone());
            let (accepts, requests) = (accepts.clone(), requests.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let body = match req.uri().path() {
                        "/10k" => ten_k.clone(),
                        "/1m" => one_m.clone(),
                        "/stats" => Bytes::from(format!(
                            "{{\"accepts\":{},\"requests\":{}}}",
                            accepts.load(Ordering::Relaxed),
                            requests.load(Ordering::Relaxed)
                        )),
                        _ => small.clone(),
                    };
                    if req.uri().path() != "/stats" {
                        requests.fetch_add(1, Ordering::Relaxed);
                    }
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
