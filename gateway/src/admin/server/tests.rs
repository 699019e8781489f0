use std::time::Duration;

use super::{accept_backoff, until_idle, Activity};

#[test]
fn accept_backoff_doubles_from_5_ms_to_1_s() {
    let ms = |n| accept_backoff(n).as_millis();
    assert_eq!(ms(0), 0, "no delay before the first failure");
    assert_eq!(
        (1..=9).map(ms).collect::<Vec<_>>(),
        [5, 10, 20, 40, 80, 160, 320, 640, 1000]
    );
    assert_eq!(ms(10), 1000);
    assert_eq!(ms(u32::MAX), 1000, "no overflow after many failures");
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_ends_at_the_idle_timeout() {
    let activity = Activity::new();
    let started = tokio::time::Instant::now();
    let out = until_idle(
        std::future::pending::<()>(),
        &activity,
        Duration::from_secs(30),
    )
    .await;
    assert!(out.is_none(), "dropped as idle");
    assert_eq!(started.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn activity_moves_the_idle_deadline() {
    let activity = Activity::new();
    let started = tokio::time::Instant::now();
    let toucher = activity.clone();
    let busy = async move {
        // Bytes every 20 s for a minute, then silence.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            toucher.touch();
        }
        std::future::pending::<()>().await
    };
    let out = until_idle(busy, &activity, Duration::from_secs(30)).await;
    assert!(out.is_none());
    assert_eq!(started.elapsed(), Duration::from_secs(60 + 30));
}

#[tokio::test(start_paused = true)]
async fn a_finished_connection_returns_its_output() {
    let activity = Activity::new();
    let out = until_idle(async { 7 }, &activity, Duration::from_secs(30)).await;
    assert_eq!(out, Some(7));
}
