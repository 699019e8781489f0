//! The probe port (`listen.probe`): only `/ready` and `/live`, whatever the
//! Host, plaintext or TLS on the same port (client certificate optional,
//! verified when presented), 503 while draining, and robust to garbage.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use isthmus::tls::dev::LeafSpec;
use isthmus_tests::{client::plain_get, eventually, replace_file, Alpn, Client, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The Host Linkerd's prober sends.
const PROBE_HOST: &str = "probe-east:4191";

/// Plain HTTP/1.1 GET on a new connection with the given Host: (status, body),
/// or why it failed.
async fn plain(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Writes `bytes` on a new plain connection and reads until the server closes
/// it (`Some(everything it sent)`) or 10 s pass (`None`).
async fn raw_until_closed(addr: SocketAddr, bytes: &[u8]) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    // The server may close before reading everything; what it does then counts.
    let _ = tcp.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn status_line(raw: &str) -> &str {
    raw.lines().next().unwrap_or("")
}

/// A TLS client for the probe port: trusts the dev CA, presents `cert` if given.
fn tls_client(h: &Harness, cert: Option<&str>, alpn: Alpn) -> Client {
    Client::new(h.gateway.probe_addr, &h.certs(), cert, alpn)
}

#[tokio::test]
async fn plaintext_ready_and_live_whatever_the_host() {
    let h = Harness::start(&[]).await;
    let probe = h.gateway.probe_addr;
    assert_ne!(probe, h.gateway.admin_addr);
    assert_ne!(probe.port(), 0, "port 0 resolves to the bound port");

    assert_eq!(
        plain(probe, PROBE_HOST, "/ready").await,
        Ok((200, "ready\n".into()))
    );
    assert_eq!(
        plain(probe, PROBE_HOST, "/live").await,
        Ok((200, "live\n".into()))
    );
    for host in [
        "localhost",
        "10.0.0.1:4191",
        "probe-west",
        "no such host..",
        "",
    ] {
        assert_eq!(
            plain(probe, host, "/ready").await.map(|r| r.0),
            Ok(200),
            "Host {host:?}"
        );
    }
    // No Host at all (HTTP/1.1 and 1.0), HEAD, an absolute-form target.
    for (req, want) in [
        ("GET /ready HTTP/1.1\r\nConnection: close\r\n\r\n", "HTTP/1.1 200"),
        ("GET /ready HTTP/1.0\r\n\r\n", "HTTP/1.0 200"),
        (
            "HEAD /ready HTTP/1.1\r\nHost: probe-east:4191\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 200",
        ),
        (
            "GET http://probe-east:4191/live HTTP/1.1\r\nHost: probe-east:4191\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 200",
        ),
    ] {
        let got = raw_until_closed(probe, req.as_bytes())
            .await
            .unwrap_or_else(|| panic!("{req:?}: connection not closed after the answer"));
        assert!(status_line(&got).starts_with(want), "{req:?} → {got:?}");
    }
}

#[tokio::test]
async fn admin_paths_and_everything_else_are_404_on_the_probe_port() {
    let h = Harness::start(&[]).await;
    let probe = h.gateway.probe_addr;
    for path in ["/metrics", "/routes", "/", "/ready/", "/readyz", "/live/x"] {
        assert_eq!(
            plain(probe, PROBE_HOST, path).await.map(|r| r.0),
            Ok(404),
            "{path}"
        );
    }
    let got = raw_until_closed(
        probe,
        b"POST /ready HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("closed after the answer");
    assert!(status_line(&got).starts_with("HTTP/1.1 404"), "{got:?}");
    // The admin port still has them.
    assert_eq!(plain_get(h.gateway.admin_addr, "/metrics").await.0, 200);
    assert_eq!(plain_get(h.gateway.admin_addr, "/routes").await.0, 200);
}

#[tokio::test]
async fn tls_without_a_client_certificate() {
    let h = Harness::start(&[]).await;
    for alpn in [Alpn::Http1, Alpn::Http2] {
        let c = tls_client(&h, None, alpn);
        let resp = c.get(PROBE_HOST, "/ready").await.expect("TLS probe");
        assert_eq!(
            (resp.status, resp.body.as_str()),
            (200, "ready\n"),
            "{alpn:?}"
        );
        assert_eq!(c.status(PROBE_HOST, "/metrics").await, 404, "{alpn:?}");
        // The gateway's own serving certificate.
        assert!(resp.server_cert.is_some());
    }
}

#[tokio::test]
async fn tls_with_a_client_certificate_is_verified() {
    let h = Harness::start(&[]).await;
    for peer in ["peer-west", "peer-dns"] {
        let resp = tls_client(&h, Some(peer), Alpn::Http1)
            .get(PROBE_HOST, "/ready")
            .await
            .unwrap_or_else(|e| panic!("{peer}: {e}"));
        assert_eq!(resp.status, 200, "{peer}");
    }
    // A presented certificate must chain to the trust anchors.
    for peer in ["peer-untrusted", "peer-expired"] {
        let got = tls_client(&h, Some(peer), Alpn::Http1)
            .get(PROBE_HOST, "/ready")
            .await;
        assert!(got.is_err(), "{peer} accepted: {got:?}");
    }
    // The refusals did not disturb the port.
    assert_eq!(
        plain(h.gateway.probe_addr, PROBE_HOST, "/ready")
            .await
            .map(|r| r.0),
        Ok(200)
    );
}

#[tokio::test]
async fn ready_answers_503_while_draining() {
    let (h, _up) = Harness::podinfo().await;
    let probe = h.gateway.probe_addr;
    let tls = tls_client(&h, None, Alpn::Http1);
    assert_eq!(tls.status(PROBE_HOST, "/ready").await, 200);
    // A request in flight keeps the drain (and the probe port) going.
    let slow = tokio::spawn({
        let c = h.client("peer-west");
        async move {
            c.get("podinfo.test.svc.cluster.local:9898", "/delay/2")
                .await
        }
    });
    eventually("request in flight", || async {
        h.metric("isthmus_requests_in_flight").await == 1.0
    })
    .await;
    let drain = tokio::spawn(h.shutdown(Duration::from_secs(20)));
    eventually("the probe port answers 503 while draining", || async {
        matches!(plain(probe, PROBE_HOST, "/ready").await, Ok((503, _)))
    })
    .await;
    let resp = tls.get(PROBE_HOST, "/ready").await.expect("TLS probe");
    assert_eq!(resp.status, 503, "over TLS too");
    assert_eq!(
        plain(probe, PROBE_HOST, "/live").await.map(|r| r.0),
        Ok(200),
        "still live while draining"
    );
    let finished = slow.await.expect("task").expect("in-flight request");
    assert_eq!(finished.status, 200);
    assert_eq!(drain.await.expect("drain task"), 0);
}

#[tokio::test]
async fn garbage_closes_the_connection_and_the_port_keeps_serving() {
    let h = Harness::start(&[]).await;
    let probe = h.gateway.probe_addr;
    let garbage: [&[u8]; 5] = [
        b"\x00\x01\x02\x03garbage\r\n\r\n",
        b"\xff\xfe\xfd\r\n\r\n",
        // Looks like a TLS handshake record, is not one.
        b"\x16\x03\x01\x00\x05hello",
        b"\x16\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        b"GET /ready HTTP/9.9\r\n\r\n",
    ];
    for bytes in garbage {
        let got = raw_until_closed(probe, bytes).await;
        assert!(got.is_some(), "{bytes:?}: connection left open");
    }
    // An h2 preface without a valid follow-up.
    let got = raw_until_closed(
        probe,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x09garbage",
    )
    .await;
    assert!(got.is_some(), "h2 garbage: connection left open");

    assert_eq!(
        plain(probe, PROBE_HOST, "/ready").await.map(|r| r.0),
        Ok(200)
    );
    let c = tls_client(&h, None, Alpn::Http1);
    assert_eq!(c.status(PROBE_HOST, "/ready").await, 200);
    assert_eq!(plain_get(h.gateway.admin_addr, "/ready").await.0, 200);
}

#[tokio::test]
async fn connections_beyond_the_probe_cap_are_closed_at_accept() {
    let h = Harness::start_with(&[], |cfg| cfg.limits.probe_max_connections = 1).await;
    let probe = h.gateway.probe_addr;
    let tcp = TcpStream::connect(probe).await.expect("connect");
    let (mut held, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let get = || {
        Request::get("/ready")
            .header(http::header::HOST, PROBE_HOST)
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let resp = held.send_request(get()).await.expect("first probe");
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.expect("body");

    let over = raw_until_closed(
        probe,
        b"GET /ready HTTP/1.1\r\nHost: probe-east:4191\r\n\r\n",
    )
    .await
    .expect("the connection over the cap is closed");
    assert_eq!(over, "", "no answer over the cap");
    held.ready().await.expect("held connection still open");
    let resp = held.send_request(get()).await.expect("held probe");
    assert_eq!(resp.status(), 200, "the held connection still answers");
}

#[tokio::test]
async fn tls_follows_certificate_rotation() {
    let h = Harness::start_with(&[], |cfg| cfg.tls.reload_interval_ms = 20).await;
    let c = tls_client(&h, None, Alpn::Http1);
    let before = c.get(PROBE_HOST, "/ready").await.expect("TLS probe");
    let rotated = h.ca().issue(&LeafSpec::gateway()).expect("issue");
    assert_ne!(before.server_cert.as_deref(), Some(rotated.der()));
    replace_file(&h.certs().join("gateway.key"), &rotated.key_pem());
    replace_file(&h.certs().join("gateway.crt"), &rotated.cert_pem());
    eventually("the probe port presents the new certificate", || async {
        c.get(PROBE_HOST, "/ready")
            .await
            .is_ok_and(|r| r.status == 200 && r.server_cert.as_deref() == Some(rotated.der()))
    })
    .await;
}
