//! Broker restarts (1012), permanent close codes (4000, 1008), requests.

use crate::support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use support::{http, options, test_config, token, wait_state, TestBroker, WAIT};
use switchboard_client::{Client, Error, Options, State, SubscriptionEvent, Token};

async fn next_event(stream: &mut switchboard_client::Subscription) -> SubscriptionEvent {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("event in time")
        .expect("subscription open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_reconnects_at_once_and_reports_the_gap() {
    let broker = TestBroker::start(test_config());
    let addr = broker.addr;
    let subscriber = Client::connect(&broker.ws_url(), options(token("reader", &["news:*"])))
        .await
        .expect("subscriber connects");
    let mut states = subscriber.state_changes();
    let mut stream = subscriber.subscribe_from("news:1", 0).expect("subscribe");
    let publisher = Client::connect(&broker.ws_url(), options(token("writer", &["news:*"])))
        .await
        .expect("publisher connects");
    let _own = publisher.subscribe("news:1").expect("publisher joins");
    for n in 0..5 {
        let ack = publisher
            .publish("news:1", json!({ "n": n }))
            .await
            .expect("ack");
        assert_eq!(ack.seq, n + 1);
    }
    for seq in 1..=5 {
        match next_event(&mut stream).await {
            SubscriptionEvent::Message(m) => assert_eq!(m.seq, seq),
            other => panic!("expected message {seq}, got {other:?}"),
        }
    }

    // Graceful shutdown: 1012, and the client comes back without a backoff delay.
    broker.shutdown().await;
    let state = wait_state(&mut states, |s| matches!(s, State::Reconnecting { .. })).await;
    assert!(
        matches!(&state, State::Reconnecting { code: Some(1012), delay, .. } if delay.is_zero()),
        "{state:?}"
    );
    let broker = TestBroker::start_on(addr, test_config());
    wait_state(&mut states, State::is_connected).await;

    // The memory engine kept nothing: the room restarted, which is reported, not hidden.
    match next_event(&mut stream).await {
        SubscriptionEvent::Gap(gap) => {
            assert!(gap.reset, "{gap:?}");
            assert_eq!(gap.since_seq, 5);
        }
        other => panic!("expected a gap, got {other:?}"),
    }
    for n in 5..8 {
        publisher
            .publish("news:1", json!({ "n": n }))
            .await
            .expect("ack after restart");
    }
    for seq in 1..=3 {
        match next_event(&mut stream).await {
            SubscriptionEvent::Message(m) => {
                assert_eq!(m.seq, seq);
                assert_eq!(m.payload["n"], seq + 4);
            }
            other => panic!("expected message {seq} of the new room, got {other:?}"),
        }
    }
    subscriber.close().await;
    publisher.close().await;
    broker.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_token_closes_without_retrying() {
    let broker = TestBroker::start(test_config());
    let err = Client::connect(&broker.ws_url(), options("not-a-jwt".into()))
        .await
        .expect_err("4000");
    assert!(
        matches!(
            &err,
            Error::Closed {
                code: Some(4000),
                ..
            }
        ),
        "{err}"
    );

    // A refresh callback gets one immediate retry with a fresh token, then stops.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = calls.clone();
    let opts = Options {
        token: Token::refresh(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok("still-not-a-jwt".to_string()) }
        }),
        ..options(String::new())
    };
    let err = Client::connect(&broker.ws_url(), opts)
        .await
        .expect_err("4000");
    assert!(
        matches!(
            &err,
            Error::Closed {
                code: Some(4000),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    broker.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_through_the_api_is_permanent_and_requests_correlate() {
    let broker = TestBroker::start(test_config());
    let client = Client::connect(&broker.ws_url(), options(token("carol", &["room:*"])))
        .await
        .expect("connects");
    let mut states = client.state_changes();

    // No handler for the type: the broker's error comes back on this request.
    let err = client
        .request("nope.request", json!({"x": 1}), Duration::from_secs(5))
        .await
        .expect_err("unknown type");
    assert!(
        matches!(&err, Error::Server { code, .. } if code == "unknown_type"),
        "{err}"
    );

    let id = client.connection_id().expect("connected");
    let (status, _) = http(
        broker.addr,
        "DELETE",
        &format!("/api/sessions/{id}?reason=bye"),
    )
    .await;
    assert_eq!(status, 204);
    let state = wait_state(&mut states, State::is_closed).await;
    assert_eq!(
        state,
        State::Closed {
            code: Some(1008),
            reason: "bye".into()
        }
    );
    let err = client
        .publish("room:1", json!(1))
        .await
        .expect_err("closed");
    assert!(
        matches!(
            err,
            Error::Closed {
                code: Some(1008),
                ..
            }
        ),
        "{err}"
    );
    broker.wait_idle().await;
}
