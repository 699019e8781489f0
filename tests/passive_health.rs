//! Upstream endpoint failure: a connect failure on an idempotent request is
//! retried on another endpoint, an endpoint failing to connect is ejected for
//! a while (passive health) and comes back when it works again.

use isthmus_tests::{eventually, manifests, Harness, Upstream};

const HOST: &str = "podinfo.test.svc.cluster.local:9898";

#[tokio::test]
async fn failing_endpoint_is_ejected_and_comes_back() {
    let live = Upstream::start("live").await;
    // The second endpoint: same port on another loopback address, nothing
    // listening there yet (connection refused).
    let dead = std::net::SocketAddr::new([127, 0, 0, 2].into(), live.port());
    let yaml = format!(
        "{}---\n{}",
        manifests::service("test", "podinfo", true, 9898),
        manifests::slice_many(
            "test",
            "podinfo-1",
            "podinfo",
            live.port(),
            &[("127.0.0.1", true), ("127.0.0.2", true)],
        )
    );
    // The ejection window runs on the passive-health clock, paused here: the
    // endpoint stays ejected until the test advances it, however slow the run.
    isthmus::routes::health_clock::pause();
    let h = Harness::start_with(&[("podinfo.yaml", yaml)], |cfg| {
        cfg.upstream.eject_after_failures = 2;
        cfg.upstream.ejection_ms = 3_000;
    })
    .await;
    let client = h.client("peer-west");

    // Round robin sends every other request to the dead endpoint; each of
    // those is retried on the live one, and after two failures it is ejected.
    for i in 0..10 {
        let r = client.get(HOST, "/").await.expect("exchange");
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(r.upstream().as_deref(), Some("live"));
    }
    h.wait_metric("isthmus_endpoint_ejections_total", 1.0).await;
    assert_eq!(
        h.metric("isthmus_upstream_connect_errors_total").await,
        2.0,
        "an ejected endpoint is not tried again while it is ejected"
    );

    // Now the endpoint starts working: once its ejection ends it is picked
    // again and serves, without new failures.
    let listener = tokio::net::TcpListener::bind(dead)
        .await
        .expect("bind the second endpoint");
    let revived = tokio::spawn(isthmus::demo::serve(listener, "revived".into()));
    // Still ejected (the clock has not moved): not tried, though it would work.
    for i in 0..10 {
        let r = client.get(HOST, "/").await.expect("exchange");
        assert_eq!(r.upstream().as_deref(), Some("live"), "request {i}");
    }
    isthmus::routes::health_clock::advance(std::time::Duration::from_millis(2_999));
    let r = client.get(HOST, "/").await.expect("exchange");
    assert_eq!(r.upstream().as_deref(), Some("live"), "1 ms before the end");
    let r = client.get(HOST, "/").await.expect("exchange");
    assert_eq!(r.upstream().as_deref(), Some("live"), "1 ms before the end");
    isthmus::routes::health_clock::advance(std::time::Duration::from_millis(1));
    eventually("the ejected endpoint serves again", || async {
        client
            .get(HOST, "/")
            .await
            .is_ok_and(|r| r.upstream().as_deref() == Some("revived"))
    })
    .await;
    assert_eq!(h.metric("isthmus_upstream_connect_errors_total").await, 2.0);
    assert_eq!(h.metric("isthmus_endpoint_ejections_total").await, 1.0);
    revived.abort();
}
