//! WebSocket (HTTP/1.1 Upgrade) through the gateway over mTLS to an echo
//! upstream: many messages both ways, a socket living past the idle timeout,
//! a drain, an oversized frame, and Upgrades the route does not allow.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use isthmus_tests::client::plain_get;
use isthmus_tests::manifests::{exported_service, mapping, service, slice};
use isthmus_tests::{eventually, Harness};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const HOST: &str = "echo.test.svc.cluster.local:8080";

/// The upstream's frame and message limit: bigger ones are closed with 1009.
const UPSTREAM_MAX: usize = 64 * 1024;

/// A WebSocket echo server; messages over [`UPSTREAM_MAX`] get a 1009 close.
async fn echo_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut config = WebSocketConfig::default();
                config.max_frame_size = Some(UPSTREAM_MAX);
                config.max_message_size = Some(UPSTREAM_MAX);
                let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(s, Some(config)).await
                else {
                    return;
                };
                while let Some(msg) = ws.next().await {
                    match msg {
                        Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                            if ws.send(m).await.is_err() {
                                return;
                            }
                        }
                        Ok(Message::Close(_)) => return,
                        Ok(_) => {}
                        Err(WsError::Capacity(_)) => {
                            let _ = ws
                                .close(Some(CloseFrame {
                                    code: CloseCode::Size,
                                    reason: "too big".into(),
                                }))
                                .await;
                            // Read until the client answers the close.
                            while let Some(Ok(_)) = ws.next().await {}
                            return;
                        }
                        Err(_) => return,
                    }
                }
            });
        }
    });
    (addr, task)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn connect(h: &Harness, host: &str) -> Result<Ws, WsError> {
    let tls = h.client("peer-west").open().await.expect("TLS handshake");
    let (ws, resp) = tokio_tungstenite::client_async(format!("wss://{host}/ws"), tls).await?;
    assert_eq!(resp.status(), 101);
    Ok(ws)
}

async fn gateway(
    adjust: impl FnOnce(&mut isthmus::config::Config),
) -> (Harness, tokio::task::JoinHandle<()>) {
    let (addr, task) = echo_upstream().await;
    let h = Harness::start_with(
        &[
            ("echo.yaml", exported_service("test", "echo", 8080, addr)),
            (
                "plain.yaml",
                format!(
                    "{}---\n{}",
                    service("test", "plain", false, 8080),
                    slice("test", "plain-1", "plain", addr, true)
                ),
            ),
            (
                "m.yaml",
                format!(
                    "{}---\n{}",
                    mapping(
                        "test",
                        "ws",
                        "  hostname: ws.example\n  prefix: /\n  rewrite: \"\"\n  service: plain:8080\n  allow_upgrade: [websocket]\n",
                    ),
                    mapping(
                        "test",
                        "nows",
                        "  hostname: nows.example\n  prefix: /\n  rewrite: \"\"\n  service: plain:8080\n",
                    )
                ),
            ),
        ],
        adjust,
    )
    .await;
    (h, task)
}

#[tokio::test]
async fn a_thousand_messages_each_way() {
    let (h, _up) = gateway(|_| {}).await;
    for host in [HOST, "ws.example"] {
        let ws = connect(&h, host).await.expect("upgrade");
        let (mut tx, mut rx) = ws.split();
        let writer = tokio::spawn(async move {
            for i in 0..1000u32 {
                let m = if i % 2 == 0 {
                    Message::text(format!("message {i}"))
                } else {
                    Message::binary(i.to_be_bytes().to_vec())
                };
                tx.send(m).await.expect("send");
            }
            tx
        });
        for i in 0..1000u32 {
            let m = rx.next().await.expect("open").expect("message");
            if i % 2 == 0 {
                assert_eq!(m, Message::text(format!("message {i}")), "{host}");
            } else {
                assert_eq!(m, Message::binary(i.to_be_bytes().to_vec()), "{host}");
            }
        }
        let mut tx = writer.await.expect("writer");
        tx.send(Message::Close(None)).await.expect("close");
    }
}

#[tokio::test]
async fn a_busy_socket_outlives_the_idle_timeout() {
    let idle = Duration::from_millis(200);
    let (h, _up) = gateway(|cfg| {
        cfg.limits.idle_timeout_ms = 200;
        cfg.upstream.timeout_ms = 200;
    })
    .await;
    let mut ws = connect(&h, HOST).await.expect("upgrade");
    // Messages every 50 ms for 6 idle timeouts.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let until = tokio::time::Instant::now() + idle * 6;
    let mut n = 0;
    while tokio::time::Instant::now() < until {
        tick.tick().await;
        ws.send(Message::text(format!("{n}"))).await.expect("send");
        let m = ws.next().await.expect("open").expect("message");
        assert_eq!(m, Message::text(format!("{n}")));
        n += 1;
    }
    assert!(n >= 20);
    // The downstream idle deadline never fired on the tunnel.
    assert_eq!(
        h.metric_or_absent("isthmus_limits_exceeded_total{limit=\"idle_timeout\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_drain_keeps_sockets_until_the_grace_ends_then_closes_them() {
    let (h, _up) = gateway(|_| {}).await;
    let admin = h.gateway.admin_addr;
    let mut ws = connect(&h, HOST).await.expect("upgrade");
    ws.send(Message::text("before")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("open").expect("msg"),
        Message::text("before")
    );

    let shutdown = tokio::spawn(h.shutdown(Duration::from_secs(2)));
    eventually("the gateway is draining", || async {
        plain_get(admin, "/ready").await.0 != 200
    })
    .await;
    // During the grace period the tunnel still carries messages.
    ws.send(Message::text("during")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("open").expect("msg"),
        Message::text("during")
    );

    // At its end the connection is closed (no close frame: the gateway does
    // not parse WebSocket frames).
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        end.is_ok(),
        "the socket is closed at the end of the grace period"
    );
    assert_eq!(
        shutdown.await.expect("shutdown"),
        1,
        "one connection was still open"
    );
}

#[tokio::test]
async fn an_oversized_frame_gets_the_upstreams_1009() {
    let (h, _up) = gateway(|_| {}).await;
    let mut ws = connect(&h, HOST).await.expect("upgrade");
    ws.send(Message::binary(vec![7u8; UPSTREAM_MAX + 1]))
        .await
        .expect("send");
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Size),
        other => panic!("expected a 1009 close, got {other:?}"),
    }
}

#[tokio::test]
async fn upgrades_the_route_does_not_allow_are_refused() {
    let (h, _up) = gateway(|_| {}).await;
    let c = h.client("peer-west");
    let ask = |host: &str, upgrade: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    for (host, upgrade) in [
        (HOST, "h2c"),
        (HOST, "foo/1"),
        ("ws.example", "h2c"),
        ("nows.example", "websocket"),
    ] {
        let text = c.raw(ask(host, upgrade).as_bytes()).await.expect("raw");
        assert!(text.starts_with("HTTP/1.1 403"), "{host} {upgrade}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("x-isthmus-error: upgrade_refused"),
            "{text}"
        );
    }
    // CONNECT is no tunnel here.
    let text = c
        .raw(format!("CONNECT {HOST} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("raw");
    assert!(
        text.starts_with("HTTP/1.1 405") || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    h.wait_metric(
        "isthmus_request_errors_total{reason=\"upgrade_refused\"}",
        4.0,
    )
    .await;
    // The allowed one still works on the same Mapping-less host.
    assert!(connect(&h, HOST).await.is_ok());
}

#[tokio::test]
async fn extended_connect_over_http2_is_refused_by_the_h2_layer() {
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let (h, _up) = gateway(|_| {}).await;
    let tls = h.client("peer-west").http2().open().await.expect("TLS");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    // pingora 0.9 never advertises SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441)...
    let mut req = http::Request::connect(format!("https://{HOST}/ws"))
        .header("sec-websocket-version", "13")
        .body(Full::new(bytes::Bytes::new()))
        .expect("request");
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    // ...so a stream that sends `:protocol` anyway is reset (PROTOCOL_ERROR).
    let r = sender.send_request(req).await;
    assert!(r.is_err(), "{r:?}");
    // The connection itself stays usable (the echo upstream answers no plain GET: 502).
    let r = sender
        .send_request(
            http::Request::get(format!("https://{HOST}/"))
                .body(Full::new(bytes::Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("the connection still serves");
    assert_eq!(r.status(), 502);
}
