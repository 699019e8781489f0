//! Connection limits: each is tripped through real mTLS sockets, answered as
//! documented, counted in `isthmus_limits_exceeded_total`, and leaves every
//! other client served.

use std::time::{Duration, Instant};

use isthmus::config::Config;
use isthmus_tests::raw_upstream::{read_request, RawUpstream};
use isthmus_tests::{eventually, manifests, Harness, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "podinfo.test.svc.cluster.local:9898";

async fn gateway(adjust: impl FnOnce(&mut Config)) -> (Harness, Upstream) {
    let up = Upstream::start("podinfo").await;
    let h = Harness::start_with(
        &[(
            "podinfo.yaml",
            manifests::exported_service("test", "podinfo", 9898, up.addr),
        )],
        |cfg| {
            cfg.allowed_identities = vec!["*".into()];
            adjust(cfg)
        },
    )
    .await;
    (h, up)
}

/// A gateway whose one exported Service is a [`RawUpstream`] the test answers by hand.
async fn gateway_raw(adjust: impl FnOnce(&mut Config)) -> (Harness, RawUpstream) {
    let up = RawUpstream::start().await;
    let h = Harness::start_with(
        &[(
            "podinfo.yaml",
            manifests::exported_service("test", "podinfo", 9898, up.addr),
        )],
        |cfg| {
            cfg.allowed_identities = vec!["*".into()];
            adjust(cfg)
        },
    )
    .await;
    (h, up)
}

/// Reads until `needle` has arrived; fails after 5 s or at end of stream.
async fn read_until<S: AsyncReadExt + Unpin>(stream: &mut S, out: &mut Vec<u8>, needle: &[u8]) {
    let read = async {
        while !out.windows(needle.len()).any(|w| w == needle) {
            match stream.read_buf(out).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
        true
    };
    let found = tokio::time::timeout(Duration::from_secs(5), read).await;
    assert!(
        found == Ok(true),
        "{:?} never arrived; got {:?}",
        String::from_utf8_lossy(needle),
        String::from_utf8_lossy(out)
    );
}

fn limit(name: &str) -> String {
    format!("isthmus_limits_exceeded_total{{limit=\"{name}\"}}")
}

/// Reads until the gateway closes the connection; fails after `bound`.
async fn read_to_close<S: AsyncReadExt + Unpin>(stream: &mut S, bound: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        loop {
            match stream.read_buf(&mut out).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(bound, read)
        .await
        .unwrap_or_else(|_| panic!("connection still open after {bound:?}"));
    out
}

#[tokio::test]
async fn slow_request_header_gets_408_and_others_are_served() {
    let (h, _up) = gateway(|cfg| cfg.limits.request_header_timeout_ms = 500).await;
    let client = h.client("peer-west");
    let mut tls = client.open().await.expect("handshake");
    let started = Instant::now();
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n").as_bytes())
        .await
        .expect("write");
    // Slowloris: one more header line every 100 ms, never the empty line.
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            read = tls.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if tls.write_all(b"x-slow: 1\r\n").await.is_err() {
                    break;
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "slow header still being read after 5 s (limit 500 ms)"
        );
    }
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 408 "), "got {answer:?}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    h.wait_metric(&limit("request_header_timeout"), 1.0).await;

    // A slow body is not a slow header: the clock stops at the empty line.
    let mut slow_body = client.open().await.expect("handshake");
    let started = Instant::now();
    slow_body
        .write_all(
            format!(
                "POST / HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: 8\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        slow_body.write_all(b"x").await.expect("body byte");
    }
    assert!(started.elapsed() > Duration::from_millis(500));
    let out = read_to_close(&mut slow_body, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 200 "), "got {answer:?}");

    // A client that sends its header at once is unaffected, also on a
    // keep-alive connection whose second request comes later than the limit
    // would allow for one header (the clock starts at a request's first byte).
    let mut ka = client.keep_alive().await.expect("connect");
    assert_eq!(ka.get(HOST, "/").await.expect("first").status, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(ka.get(HOST, "/").await.expect("second").status, 200);
    assert_eq!(h.metric(&limit("request_header_timeout")).await, 1.0);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let (h, _up) = gateway(|cfg| cfg.limits.idle_timeout_ms = 300).await;
    let client = h.client("peer-west");

    // Silent from the start. The clock starts before the handshake: the
    // gateway arms its timer when its side of the handshake is done, which
    // can be a little before the client's.
    let started = Instant::now();
    let mut silent = client.open().await.expect("handshake");
    assert!(read_to_close(&mut silent, Duration::from_secs(5))
        .await
        .is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300));

    // Idle after a request.
    let mut tls = client.open().await.expect("handshake");
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let out = read_to_close(&mut tls, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 200 "), "got {answer:?}");
    h.wait_metric(&limit("idle_timeout"), 2.0).await;

    // HTTP/2: pingora's h2 idle timeout, set from the same key.
    let mut h2 = client.http2().open().await.expect("handshake");
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    let started = Instant::now();
    let frames = read_to_close(&mut h2, Duration::from_secs(5)).await;
    assert!(!frames.is_empty(), "the server's SETTINGS came first");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // Active clients are unaffected.
    assert_eq!(client.status(HOST, "/").await, 200);
}

#[tokio::test]
async fn max_connections_closes_new_connections_until_one_ends() {
    let (h, _up) = gateway(|cfg| cfg.limits.max_connections = 2).await;
    let client = h.client("peer-west");
    let mut first = client.keep_alive().await.expect("first");
    let mut second = client.keep_alive().await.expect("second");
    // Both served, so both are counted.
    assert_eq!(first.get(HOST, "/").await.expect("first").status, 200);
    assert_eq!(second.get(HOST, "/").await.expect("second").status, 200);

    assert!(
        client.get(HOST, "/").await.is_err(),
        "a third connection must be closed"
    );
    h.wait_metric(&limit("max_connections"), 1.0).await;
    assert_eq!(first.get(HOST, "/").await.expect("still open").status, 200);

    drop(second);
    eventually("a closed connection frees its slot", || async {
        client.get(HOST, "/").await.is_ok_and(|r| r.status == 200)
    })
    .await;
}

#[tokio::test]
async fn max_connections_per_identity_leaves_other_peers_alone() {
    let (h, _up) = gateway(|cfg| cfg.limits.max_connections_per_identity = 1).await;
    let west = h.client("peer-west");
    let mut held = west.keep_alive().await.expect("first");
    assert_eq!(held.get(HOST, "/").await.expect("first").status, 200);

    let refused = west.get(HOST, "/").await;
    assert!(
        refused.is_err(),
        "second connection of one identity: {refused:?}"
    );
    h.wait_metric(&limit("max_connections_per_identity"), 1.0)
        .await;

    // Another identity (DNS SAN) is counted separately.
    assert_eq!(h.client("peer-dns").status(HOST, "/").await, 200);
    assert_eq!(held.get(HOST, "/").await.expect("held").status, 200);

    drop(held);
    eventually("the identity's slot frees up", || async {
        west.get(HOST, "/").await.is_ok_and(|r| r.status == 200)
    })
    .await;
}

#[tokio::test]
async fn upstream_connect_timeout_answers_504_in_time() {
    // An upstream whose accept queue is full: the kernel drops further SYNs,
    // so a connection attempt neither succeeds nor is refused.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(1).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut queued = Vec::new();
    for _ in 0..4 {
        let connect = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
            queued.push(s);
        }
    }
    let h = Harness::start_with(
        &[(
            "stuck.yaml",
            manifests::exported_service("test", "podinfo", 9898, addr),
        )],
        |cfg| cfg.upstream.connect_timeout_ms = 300,
    )
    .await;
    let started = Instant::now();
    let r = h
        .client("peer-west")
        .get(HOST, "/")
        .await
        .expect("an answer");
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "connect timeout of 300 ms took {:?}",
        started.elapsed()
    );
    h.wait_metric(
        "isthmus_request_errors_total{reason=\"upstream_timeout\"}",
        1.0,
    )
    .await;
    assert!(h.metric("isthmus_upstream_connect_errors_total").await >= 1.0);
    drop((listener, queued));
}

/// The process's resident set (the gateway runs in this process), in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test]
async fn slow_oversized_header_gets_431_at_the_limit() {
    // The header deadline is far away: only the size limit can answer in time.
    let (h, _up) = gateway(|cfg| cfg.limits.request_header_timeout_ms = 60_000).await;
    let client = h.client("peer-west");
    let mut tls = client.open().await.expect("handshake");
    let started = Instant::now();
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n").as_bytes())
        .await
        .expect("write");
    // 40 KiB of header lines (limit 32 KiB), one 1 KiB line every 10 ms, no empty line.
    let line = format!("x-pad: {}\r\n", "a".repeat(1024 - 9));
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let mut sent = 0;
    let mut open = true;
    while open && sent < 40 {
        tokio::select! {
            read = tls.read(&mut buf) => match read {
                Ok(0) | Err(_) => open = false,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            },
            _ = tokio::time::sleep(Duration::from_millis(10)) => {
                open = tls.write_all(line.as_bytes()).await.is_ok();
                sent += 1;
            }
        }
    }
    if open {
        out.extend(read_to_close(&mut tls, Duration::from_secs(5)).await);
    }
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 431 "), "got {answer:?}");
    assert!(
        answer.contains("x-isthmus-error: headers_too_large"),
        "{answer}"
    );
    assert!(sent < 40, "answered only after all 40 KiB were sent");
    assert!(started.elapsed() < Duration::from_secs(5));
    h.wait_metric(
        "isthmus_request_errors_total{reason=\"headers_too_large\"}",
        1.0,
    )
    .await;
    assert_eq!(client.status(HOST, "/").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_on_many_connections_keep_memory_bounded() {
    const CONNECTIONS: usize = 200;
    const PER_CONNECTION: usize = 512 * 1024;
    let (h, _up) = gateway(|cfg| cfg.limits.request_header_timeout_ms = 60_000).await;
    let client = h.client("peer-west");
    assert_eq!(client.status(HOST, "/").await, 200);
    let before = rss_bytes();
    let line = format!("x-pad: {}\r\n", "a".repeat(16 * 1024 - 9));
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let client = client.clone();
            let line = line.clone();
            tokio::spawn(async move {
                let mut tls = client.open().await.expect("handshake");
                let mut sent = 0;
                let mut open = tls
                    .write_all(format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n").as_bytes())
                    .await
                    .is_ok();
                while open && sent < PER_CONNECTION {
                    open = tls.write_all(line.as_bytes()).await.is_ok();
                    sent += line.len();
                }
                // The gateway must close it (its 431 may be lost to the reset
                // that closing with unread bytes causes); kept until measured.
                let mut out = Vec::new();
                let read = tls.read_to_end(&mut out);
                let closed = tokio::time::timeout(Duration::from_secs(3), read)
                    .await
                    .is_ok();
                (tls, closed)
            })
        })
        .collect();
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.expect("client task"));
    }
    let grown = rss_bytes().saturating_sub(before);
    let closed = held.iter().filter(|(_, closed)| *closed).count();
    assert!(
        grown < 40 * 1024 * 1024,
        "RSS grew by {} MiB for {CONNECTIONS} oversized headers",
        grown / (1024 * 1024)
    );
    assert_eq!(
        closed, CONNECTIONS,
        "every oversized header ends its connection"
    );
    drop(held);
    assert_eq!(client.status(HOST, "/").await, 200);
}

#[tokio::test]
async fn streaming_response_outlasts_the_idle_timeout() {
    let (h, mut up) = gateway_raw(|cfg| cfg.limits.idle_timeout_ms = 300).await;
    let mut tls = h.client("peer-west").open().await.expect("handshake");
    tls.write_all(format!("GET /events HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut conn = up.accept().await;
    read_request(&mut conn).await.expect("request upstream");
    conn.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        .await
        .expect("upstream head");
    let mut out = Vec::new();
    read_until(&mut tls, &mut out, b"first").await;
    // The response is on its way, the client sends nothing: not idle. The
    // gap is the scenario (three idle timeouts), not a synchronisation.
    tokio::time::sleep(Duration::from_millis(900)).await;
    conn.write_all(b"4\r\nlast\r\n0\r\n\r\n")
        .await
        .expect("upstream end");
    read_until(&mut tls, &mut out, b"last\r\n0\r\n\r\n").await;
    // Between requests the idle timeout applies again.
    let started = Instant::now();
    assert!(read_to_close(&mut tls, Duration::from_secs(5))
        .await
        .is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));
    h.wait_metric(&limit("idle_timeout"), 1.0).await;
}

#[tokio::test]
async fn a_body_that_looks_like_101_does_not_end_the_deadlines() {
    let (h, mut up) = gateway_raw(|cfg| cfg.limits.idle_timeout_ms = 300).await;
    let mut tls = h.client("peer-west").open().await.expect("handshake");
    let fake = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n";
    tls.write_all(
        format!(
            "POST /echo HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: {}\r\n\r\n{fake}",
            fake.len()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut conn = up.accept().await;
    let req = read_request(&mut conn).await.expect("request upstream");
    conn.write_all(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            req.body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("upstream head");
    conn.write_all(&req.body).await.expect("upstream body");
    let mut out = Vec::new();
    read_until(&mut tls, &mut out, b"upgrade: websocket\r\n\r\n").await;
    assert!(
        out.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // Still an HTTP connection with deadlines: idle, it is closed.
    read_to_close(&mut tls, Duration::from_secs(5)).await;
    h.wait_metric(&limit("idle_timeout"), 1.0).await;
}

#[tokio::test]
async fn a_real_101_upgrade_carries_no_deadlines() {
    let (h, mut up) = gateway_raw(|cfg| cfg.limits.idle_timeout_ms = 300).await;
    let mut tls = h.client("peer-west").open().await.expect("handshake");
    tls.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nhost: {HOST}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut conn = up.accept().await;
    read_request(&mut conn).await.expect("request upstream");
    conn.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await
    .expect("upstream head");
    let mut out = Vec::new();
    read_until(&mut tls, &mut out, b"\r\n\r\n").await;
    assert!(
        out.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // A quiet tunnel (three idle timeouts: the scenario, not a synchronisation) stays open.
    tokio::time::sleep(Duration::from_millis(900)).await;
    tls.write_all(b"ping").await.expect("tunnel write");
    let mut got = [0u8; 4];
    conn.read_exact(&mut got).await.expect("tunnel read");
    assert_eq!(&got, b"ping");
    conn.write_all(b"pong").await.expect("tunnel answer");
    read_until(&mut tls, &mut out, b"pong").await;
    assert_eq!(h.metric_or_absent(&limit("idle_timeout")).await, 0.0);
}

/// A TCP connection to the gateway from `source` that never starts its TLS handshake.
async fn stalled_from(source: &str, gateway: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("addr"))
        .expect("bind a loopback source address");
    socket.connect(gateway).await.expect("connect")
}

#[tokio::test]
async fn verified_peers_are_served_during_a_flood_of_stalled_handshakes() {
    const FLOOD: usize = 120;
    let (h, _up) = gateway(|cfg| {
        cfg.limits.max_connections = 100;
        // Handshakes get half of it (the oldest gives way beyond), at most
        // 10 from one source address.
        cfg.limits.max_handshakes = 50;
        cfg.limits.max_handshakes_per_source = 10;
        cfg.limits.handshake_timeout_ms = 30_000;
    })
    .await;
    let client = h.client("peer-west");
    let mut held = client.keep_alive().await.expect("connect");
    assert_eq!(held.get(HOST, "/").await.expect("before").status, 200);
    let addr = h.gateway.gateway_addr;
    // From 12 source addresses, 10 each, none of which ever says a word.
    let mut flood = Vec::new();
    for i in 0..FLOOD {
        flood.push(stalled_from(&format!("127.0.0.{}", 2 + i / 10), addr).await);
    }
    // 120 stalled handshakes, a budget of 50: the oldest gave way each time
    // (or, while the abandoned ones were still closing, max_connections
    // closed the newest).
    eventually(
        "every flood connection beyond the budget was closed",
        || async {
            h.metric_or_absent(&limit("max_handshakes")).await
                + h.metric_or_absent(&limit("max_connections")).await
                == (FLOOD - 50) as f64
        },
    )
    .await;
    assert!(h.metric(&limit("max_handshakes")).await >= 1.0);
    // 50 stalled handshakes and the held peer stay open, well under max_connections.
    eventually("abandoned handshakes are closed", || async {
        h.metric("isthmus_open_connections").await <= 51.0
    })
    .await;
    // A new verified connection still gets in, and the old one still works.
    assert_eq!(client.status(HOST, "/").await, 200);
    assert_eq!(held.get(HOST, "/").await.expect("during").status, 200);
    drop(flood);
}

#[tokio::test]
async fn one_source_address_gets_a_small_share_of_the_handshake_budget() {
    let (h, _up) = gateway(|cfg| cfg.limits.max_handshakes_per_source = 5).await;
    let addr = h.gateway.gateway_addr;
    let mut flood = Vec::new();
    for _ in 0..12 {
        flood.push(stalled_from("127.0.0.2", addr).await);
    }
    h.wait_metric(&limit("max_handshakes_per_source"), 7.0)
        .await;
    // Other sources (the peer is on 127.0.0.1) are not affected.
    assert_eq!(h.client("peer-west").status(HOST, "/").await, 200);
    drop(flood);
    // Once the stalled ones are gone, that source can connect again.
    eventually("the source's slots free up", || async {
        let mut s = stalled_from("127.0.0.2", addr).await;
        let mut b = [0u8; 1];
        // Closed at once when over the cap; kept (read times out) when admitted.
        tokio::time::timeout(Duration::from_millis(200), s.read(&mut b))
            .await
            .is_err()
    })
    .await;
}
