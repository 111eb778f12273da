//! `GET /metrics`: Prometheus text with the counters the broker's activity implies.

use crate::support;

use serde_json::json;
use support::{test_config, Client, TestBroker};

async fn scrape(broker: &TestBroker) -> String {
    let mut resp = awc::Client::new()
        .get(broker.http_url("/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    String::from_utf8(resp.body().await.expect("body").to_vec()).expect("utf-8")
}

/// The value of the sample whose name-and-labels part is exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.parse().ok())
}

#[actix_rt::test]
async fn metrics_reflect_connections_traffic_and_failures() {
    let mut config = test_config();
    config.limits.messages_per_second = 1;
    config.limits.burst = 4;
    let broker = TestBroker::start(config);

    let mut rejected = Client::connect(&broker.ws_url(None)).await;
    rejected.expect_close().await;

    let mut a = broker.client("a", &["r"]).await;
    let mut b = broker.client("b", &["r"]).await;
    a.join("r").await;
    b.join("r").await;
    a.publish("r", "m1", json!(1)).await;
    a.skip_until("ack").await;
    b.recv_type("room.message").await;
    // a has used 2 of its burst of 4: the 3rd and 4th pass, the 5th is rate limited.
    for _ in 0..3 {
        a.send_json(json!({"type": "system.ping"})).await;
    }
    a.skip_until("system.error").await;

    let text = scrape(&broker).await;
    assert_eq!(
        sample(&text, "switchboard_connections"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"switchboard_sessions{state="open"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"switchboard_auth_failures_total{reason="missing"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"switchboard_messages_in_total{type="room.publish"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"switchboard_messages_in_total{type="room.join"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"switchboard_messages_published_total{type="room.message"}"#
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, "switchboard_deliveries_total"), Some(2.0));
    assert_eq!(
        sample(&text, r#"switchboard_rate_limited_total{scope="session"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "switchboard_slow_consumer_closes_total"),
        Some(0.0)
    );
    // Rooms: r, broadcast, user:a, user:b.
    assert_eq!(sample(&text, "switchboard_rooms"), Some(4.0));

    // The first scrape itself was counted by route and status.
    let text = scrape(&broker).await;
    assert!(
        sample(
            &text,
            r#"switchboard_http_requests_total{route="/metrics",status="200"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
}
