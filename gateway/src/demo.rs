//! A small podinfo-like demo upstream for the embedded default and the tests:
//! `GET /` answers JSON naming the upstream, `/delay/<seconds>` answers late,
//! `/status/<code>` answers that status, `/headers` echoes request headers.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

/// Serves the demo upstream on `listener` forever, answering as `name`.
pub async fn serve(listener: TcpListener, name: String) {
    let name: std::sync::Arc<str> = name.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(name.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(
    name: std::sync::Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let mut status = StatusCode::OK;
    if let Some(secs) = path.strip_prefix("/delay/") {
        let secs: f64 = secs.parse().unwrap_or(0.0);
        tokio::time::sleep(Duration::from_secs_f64(secs.clamp(0.0, 60.0))).await;
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
    }
    // Repeated headers are joined with "," (as one field, RFC 9110 §5.3).
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .keys()
        .map(|k| {
            let joined: Vec<String> = req
                .headers()
                .get_all(k)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            (k.to_string(), json!(joined.join(",")))
        })
        .collect();
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let query = req.uri().query().map(str::to_string);
    let body_len = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let body = json!({
        "upstream": &*name,
        "message": format!("greetings from {name}"),
        "method": method,
        "version": version,
        "path": path,
        "query": query,
        "request_body_bytes": body_len,
        "headers": headers,
    });
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
