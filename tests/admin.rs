//! The admin port's bounds: a connection cap enforced at accept, the header
//! read timeout (also for a silent connection), and the idle timeout; the
//! probe port shares them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus_tests::{eventually, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 keep-alive connection to a plain port.
struct KeepAlive(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl KeepAlive {
    async fn open(addr: SocketAddr) -> KeepAlive {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        KeepAlive(sender)
    }

    async fn status(&mut self, path: &str) -> Result<u16, hyper::Error> {
        self.0.ready().await?;
        let req = Request::get(path)
            .header(http::header::HOST, "admin")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = self.0.send_request(req).await?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await?;
        Ok(status)
    }
}

/// Writes `bytes` on a new connection, then reads until the server closes it:
/// what it sent and how long the close took; `None` if still open after 10 s.
async fn closed_after(addr: SocketAddr, bytes: &[u8]) -> Option<(String, Duration)> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let _ = tcp.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some((
                    String::from_utf8_lossy(&out).into_owned(),
                    started.elapsed(),
                ))
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_accept() {
    let h = Harness::start_with(&[], |cfg| cfg.limits.admin_max_connections = 2).await;
    let admin = h.gateway.admin_addr;
    let mut first = KeepAlive::open(admin).await;
    let mut second = KeepAlive::open(admin).await;
    assert_eq!(first.status("/ready").await.expect("first"), 200);
    assert_eq!(second.status("/ready").await.expect("second"), 200);

    // The third is closed without an answer, even though it sends a request.
    let (answer, _) = closed_after(admin, b"GET /ready HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await
        .expect("the connection over the cap is closed");
    assert_eq!(answer, "", "no answer over the cap");
    let refused = isthmus_tests::sample_value(
        &h.gateway.metrics.render(),
        r#"isthmus_limits_exceeded_total{limit="admin_max_connections"}"#,
    );
    assert_eq!(refused, 1.0);

    // The existing connections still get answers.
    assert_eq!(first.status("/ready").await.expect("first again"), 200);
    assert_eq!(second.status("/metrics").await.expect("second again"), 200);

    // Once one closes, a new connection is served again.
    drop(second);
    eventually("a new admin connection is served", || async {
        let Ok(tcp) = TcpStream::connect(admin).await else {
            return false;
        };
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp)).await
        else {
            return false;
        };
        tokio::spawn(conn);
        let req = Request::get("/live")
            .header(http::header::HOST, "admin")
            .body(Full::new(Bytes::new()))
            .expect("request");
        matches!(sender.send_request(req).await, Ok(r) if r.status() == 200)
    })
    .await;
    assert_eq!(first.status("/ready").await.expect("first at the end"), 200);
}

#[tokio::test]
async fn half_a_header_is_closed_after_the_header_timeout() {
    let h = Harness::start_with(&[], |cfg| {
        cfg.limits.admin_header_timeout_ms = 300;
    })
    .await;
    for addr in [h.gateway.admin_addr, h.gateway.probe_addr] {
        let (answer, took) = closed_after(addr, b"GET /ready HTTP/1.1\r\nHost: admin\r\nX-Slow: ")
            .await
            .expect("a half header is closed, not kept open");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer:?}"
        );
        assert!(took >= Duration::from_millis(250), "closed after {took:?}");
        // A connection that never sends a byte is closed too.
        let (answer, took) = closed_after(addr, b"")
            .await
            .expect("a silent connection is closed");
        assert_eq!(answer, "");
        assert!(took >= Duration::from_millis(250), "closed after {took:?}");
    }
    // A complete request on time is still answered.
    assert_eq!(
        isthmus_tests::client::plain_get(h.gateway.admin_addr, "/ready")
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let h = Harness::start_with(&[], |cfg| {
        cfg.limits.admin_idle_timeout_ms = 300;
    })
    .await;
    let tcp = TcpStream::connect(h.gateway.admin_addr)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    let conn = tokio::spawn(conn);
    let req = Request::get("http://admin/ready")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = sender.send_request(req).await.expect("h2c request");
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.expect("body");
    let idle_since = Instant::now();
    // Closed by the server: the connection task ends (how, does not matter).
    let _ = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the idle connection is closed");
    assert!(
        idle_since.elapsed() >= Duration::from_millis(250),
        "closed after {:?}",
        idle_since.elapsed()
    );
}

/// A blocking HTTP/1.1 GET with std sockets: the status, or `None` after 10 s.
fn blocking_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).ok()?;
    out.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test]
async fn admin_and_probe_answer_while_the_control_thread_is_blocked() {
    let h = Harness::start(&[]).await;
    let (admin, probe) = (h.gateway.admin_addr, h.gateway.probe_addr);
    // This test's runtime is the gateway's control runtime (the gateway accept
    // loop runs on it). Block its only thread while another thread asks the
    // admin and probe ports: they answer only if they run elsewhere.
    let answers = std::thread::spawn(move || {
        [
            blocking_status(admin, "/ready"),
            blocking_status(admin, "/metrics"),
            blocking_status(probe, "/ready"),
        ]
    })
    .join()
    .expect("probing thread");
    assert_eq!(answers, [Some(200), Some(200), Some(200)]);
}
