//! Graceful shutdown (SIGTERM): `/ready` turns 503 at once, the port stops
//! accepting, in-flight requests and idle keep-alive connections finish within
//! the grace period, then the gateway stops.

use std::time::{Duration, Instant};

use isthmus_tests::client::plain_get;
use isthmus_tests::{eventually, Harness};

const HOST: &str = "podinfo.test.svc.cluster.local:9898";

#[tokio::test]
async fn drain_finishes_in_flight_requests_and_closes_idle_connections() {
    let (h, _up) = Harness::podinfo().await;
    let (gateway, admin) = (h.gateway.gateway_addr, h.gateway.admin_addr);
    let c = h.client("peer-west");
    // An idle HTTP/2 keep-alive connection and an HTTP/1.1 request in flight.
    let mut idle = c.h2_session().await.expect("h2 connection");
    assert_eq!(idle.status(HOST, "/").await.expect("h2 request"), 200);
    let slow = tokio::spawn({
        let c = c.clone();
        async move { c.get(HOST, "/delay/1").await }
    });
    eventually("both connections open, the request in flight", || async {
        h.metric("isthmus_open_connections").await == 2.0
            && h.metric("isthmus_requests_in_flight").await == 1.0
    })
    .await;

    let started = Instant::now();
    let drain = tokio::spawn(h.shutdown(Duration::from_secs(20)));
    eventually("/ready answers 503 while draining", || async {
        plain_get(admin, "/ready").await.0 == 503
    })
    .await;
    eventually("the gateway port refuses new connections", || async {
        tokio::net::TcpStream::connect(gateway).await.is_err()
    })
    .await;

    let resp = slow
        .await
        .expect("task")
        .expect("in-flight request completes");
    assert_eq!(resp.status, 200, "{}", resp.body);
    let left = drain.await.expect("drain task");
    assert_eq!(left, 0, "every connection finished, the idle one included");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drain ended when connections closed, not at the 20 s grace: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn drain_gives_up_after_the_grace_period() {
    let (h, _up) = Harness::podinfo().await;
    let c = h.client("peer-west");
    let stuck = tokio::spawn({
        let c = c.clone();
        async move { c.get(HOST, "/delay/30").await }
    });
    eventually("request in flight", || async {
        h.metric("isthmus_requests_in_flight").await == 1.0
    })
    .await;
    let started = Instant::now();
    let left = h.shutdown(Duration::from_millis(300)).await;
    assert_eq!(left, 1, "the 30 s request outlived the grace period");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    stuck.abort();
}
