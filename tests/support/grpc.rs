//! A tiny gRPC server (h2c only) and client (HTTP/2 over the test mTLS
//! client) with hand-written framing: each message is a 5-byte prefix
//! (compressed flag, big-endian length) and its bytes; statuses travel in
//! real HTTP/2 trailers. No protobuf: the messages are raw bytes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::client::{Client, ClientError};

/// Frames messages the gRPC way.
pub fn encode(messages: &[&[u8]]) -> Bytes {
    let mut out = BytesMut::new();
    for m in messages {
        out.put_u8(0);
        out.put_u32(u32::try_from(m.len()).expect("message size"));
        out.put_slice(m);
    }
    out.freeze()
}

/// Splits a gRPC body into its messages; `None` when the framing is broken.
pub fn decode(mut body: Bytes) -> Option<Vec<Bytes>> {
    let mut out = Vec::new();
    while body.has_remaining() {
        if body.len() < 5 {
            return None;
        }
        let _compressed = body.get_u8();
        let len = body.get_u32() as usize;
        if body.len() < len {
            return None;
        }
        out.push(body.split_to(len));
    }
    Some(out)
}

type Frames =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn grpc_response(messages: Vec<Bytes>, status: u8, message: &str) -> Response<Frames> {
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = messages
        .iter()
        .map(|m| Ok(Frame::data(encode(&[m]))))
        .collect();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", status.to_string().parse().expect("value"));
    trailers.insert("grpc-message", message.parse().expect("value"));
    frames.push(Ok(Frame::trailers(trailers)));
    let mut resp = Response::new(StreamBody::new(futures::stream::iter(frames)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// What the server saw of one call.
#[derive(Clone, Debug)]
pub struct SeenCall {
    /// `:path`.
    pub path: String,
    /// The HTTP version it arrived in.
    pub version: http::Version,
    /// Its request headers.
    pub headers: HeaderMap,
}

/// An h2c-only gRPC server on loopback with the methods of `test.Echo`:
/// - `Unary`: answers `echo:` + the request message;
/// - `Stream`: the request message is a count n; answers n messages `0`..`n-1`;
/// - `Fail`: answers status 5 (`NOT_FOUND`) with message `no such thing`;
/// - `Hang`: never answers (for deadlines).
pub struct GrpcServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Calls seen, in order.
    pub seen: Arc<Mutex<Vec<SeenCall>>>,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcServer {
    /// Starts on `127.0.0.1:0`.
    pub async fn start() -> GrpcServer {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind grpc server");
        let addr = l.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<SeenCall>>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let record = record.clone();
                        async move { Ok::<_, Infallible>(answer(req, &record).await) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        GrpcServer { addr, seen, task }
    }

    /// The calls seen so far.
    pub fn calls(&self) -> Vec<SeenCall> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(req: Request<Incoming>, seen: &Mutex<Vec<SeenCall>>) -> Response<Frames> {
    let path = req.uri().path().to_string();
    seen.lock().expect("lock").push(SeenCall {
        path: path.clone(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return grpc_response(Vec::new(), 13, "request body broke"),
    };
    let Some(messages) = decode(body) else {
        return grpc_response(Vec::new(), 13, "bad framing");
    };
    let first = messages.first().cloned().unwrap_or_default();
    match path.as_str() {
        "/test.Echo/Unary" => {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&first);
            grpc_response(vec![Bytes::from(reply)], 0, "")
        }
        "/test.Echo/Stream" => {
            let n: usize = std::str::from_utf8(&first)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let out = (0..n).map(|i| Bytes::from(i.to_string())).collect();
            grpc_response(out, 0, "stream done")
        }
        "/test.Echo/Fail" => grpc_response(Vec::new(), 5, "no such thing"),
        "/test.Echo/Hang" => std::future::pending().await,
        _ => grpc_response(Vec::new(), 12, "unknown method"),
    }
}

/// The outcome of one call as the client saw it.
#[derive(Debug)]
pub struct GrpcReply {
    /// HTTP status (200 for every gRPC answer).
    pub http_status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Decoded response messages.
    pub messages: Vec<Bytes>,
    /// The trailers, when the response had a body part and trailers.
    pub trailers: Option<HeaderMap>,
}

impl GrpcReply {
    /// `grpc-status` from the trailers, else (trailers-only) from the headers.
    pub fn status(&self) -> Option<u8> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok()?.parse().ok())
    }

    /// `grpc-message`, wherever it came.
    pub fn message(&self) -> String {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-message"))
            .or_else(|| self.headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    /// The answer was trailers-only (status in the one header block, no body, no trailers).
    pub fn trailers_only(&self) -> bool {
        self.headers.contains_key("grpc-status")
            && self.messages.is_empty()
            && self.trailers.is_none()
    }
}

/// An HTTP/2 connection to the gateway used for gRPC calls.
pub struct GrpcClient {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl GrpcClient {
    /// Connects with `client` (ALPN h2).
    pub async fn connect(client: &Client) -> Result<GrpcClient, ClientError> {
        let tls = client.http2().open().await?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| ClientError(e.into()))?;
        tokio::spawn(conn);
        Ok(GrpcClient { sender })
    }

    /// Connects in plaintext with HTTP/2 prior knowledge (h2c), as an
    /// in-cluster caller does to the egress.
    pub async fn h2c(addr: SocketAddr) -> Result<GrpcClient, ClientError> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| ClientError(e.into()))?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| ClientError(e.into()))?;
        tokio::spawn(conn);
        Ok(GrpcClient { sender })
    }

    /// Calls `path` on `host` with one request message and extra headers.
    pub async fn call(
        &mut self,
        host: &str,
        path: &str,
        message: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<GrpcReply, ClientError> {
        let mut req = Request::post(format!("https://{host}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(encode(&[message])))
            .map_err(|e| ClientError(e.into()))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| ClientError(e.into()))?;
        let http_status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let collected = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError(e.into()))?;
        let trailers = collected.trailers().cloned();
        let messages = decode(collected.to_bytes())
            .ok_or_else(|| ClientError("broken gRPC framing in the response".into()))?;
        Ok(GrpcReply {
            http_status,
            headers,
            messages,
            trailers,
        })
    }
}
