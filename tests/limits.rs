//! Bad input and limits: every malformed frame gets `system.error` and the session keeps
//! working; oversize frames close 1009, sustained rate abuse 4008, slow consumers 4009.

use crate::support;

use awc::ws::Message;
use bytes::Bytes;
use serde_json::json;
use support::{test_config, TestBroker};
use switchboard::protocol::close;

#[actix_rt::test]
async fn malformed_frames_get_errors_and_the_session_keeps_working() {
    let broker = TestBroker::start(test_config());
    let mut c = broker.client("a", &["*"]).await;
    c.join("r").await;

    let cases: &[(&str, &str, &str)] = &[
        ("{not json", "bad_request", "invalid JSON"),
        ("[1,2]", "bad_request", "JSON object"),
        (r#"{"payload":1}"#, "bad_request", "`type`"),
        (r#"{"type":5}"#, "bad_request", "`type`"),
        (r#"{"type":"room.join","room":7}"#, "bad_request", "`room`"),
        (
            r#"{"type":"room.join","room":"has space"}"#,
            "bad_request",
            "invalid room name",
        ),
        (
            r#"{"type":"room.join","room":""}"#,
            "bad_request",
            "invalid room name",
        ),
        (r#"{"type":"room.join"}"#, "bad_request", "needs a `room`"),
        (
            r#"{"type":"room.join","room":"r","payload":{"since_seq":"x"}}"#,
            "bad_request",
            "since_seq",
        ),
        (
            r#"{"type":"room.explode","room":"r"}"#,
            "unknown_type",
            "room.explode",
        ),
        (
            r#"{"type":"no.such.handler"}"#,
            "unknown_type",
            "no.such.handler",
        ),
    ];
    for (frame, code, needle) in cases {
        c.send_text(frame).await;
        let err = c.recv_type("system.error").await;
        assert_eq!(err["payload"]["code"], *code, "{frame} -> {err}");
        let message = err["payload"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{frame} -> {message}");
    }

    let long_room = "x".repeat(129);
    c.send_json(json!({"type": "room.join", "room": long_room}))
        .await;
    assert_eq!(
        c.recv_type("system.error").await["payload"]["code"],
        "bad_request"
    );

    c.send_message(Message::Binary(Bytes::from_static(b"\x00\x01")))
        .await;
    let err = c.recv_type("system.error").await;
    assert!(err["payload"]["message"]
        .as_str()
        .unwrap()
        .contains("binary"));

    // Still a working member of its room.
    c.publish("r", "after", json!("still here")).await;
    assert_eq!(c.recv_type("room.message").await["payload"], "still here");
    assert_eq!(c.recv_type("ack").await["seq"], 1);
}

#[actix_rt::test]
async fn an_oversize_frame_closes_with_1009() {
    let mut config = test_config();
    config.limits.max_frame_bytes = 1024;
    let broker = TestBroker::start(config);
    let mut c = broker.client("a", &["r"]).await;
    c.send_text(&format!(
        r#"{{"type":"system.ping","payload":"{}"}}"#,
        "x".repeat(900)
    ))
    .await;
    c.recv_type("system.pong").await;
    c.send_text(&format!(
        r#"{{"type":"system.ping","payload":"{}"}}"#,
        "x".repeat(2000)
    ))
    .await;
    assert_eq!(c.expect_close().await.code, Some(close::MESSAGE_TOO_BIG));
}

#[actix_rt::test]
async fn rate_limit_answers_rate_limited_then_closes_abusers_with_4008() {
    let mut config = test_config();
    config.limits.messages_per_second = 1;
    config.limits.burst = 3;
    config.limits.abuse_threshold = 5;
    let broker = TestBroker::start(config);
    let mut c = broker.client("a", &[]).await;
    for i in 0..3 {
        c.send_json(json!({"type": "system.ping", "id": format!("p{i}")}))
            .await;
        c.recv_type("system.pong").await;
    }
    c.send_json(json!({"type": "system.ping", "id": "over"}))
        .await;
    let err = c.recv_type("system.error").await;
    assert_eq!(err["payload"]["code"], "rate_limited");
    assert_eq!(err["correlation_id"], "over");
    // The fifth rate-limited frame within the abuse window closes the session.
    for _ in 0..4 {
        c.send_json(json!({"type": "system.ping"})).await;
    }
    assert_eq!(c.expect_close().await.code, Some(close::RATE_LIMIT_ABUSE));
}

#[actix_rt::test]
async fn room_count_is_limited_per_session() {
    let mut config = test_config();
    config.limits.max_rooms_per_session = 2;
    let broker = TestBroker::start(config);
    let mut c = broker.client("a", &["*"]).await;
    c.join("r1").await;
    c.join("r2").await;
    c.join("r2").await; // re-joining a room already joined is not a new room
    c.send_json(json!({"type": "room.join", "room": "r3", "id": "j3"}))
        .await;
    let err = c.recv_type("system.error").await;
    assert_eq!(err["payload"]["code"], "bad_request");
    assert!(err["payload"]["message"]
        .as_str()
        .unwrap()
        .contains("room limit"));
    c.send_json(json!({"type": "room.leave", "room": "r1"}))
        .await;
    c.recv_type("room.left").await;
    c.join("r3").await;
}

#[actix_rt::test]
async fn a_slow_consumer_is_closed_with_4009_and_never_delays_the_others() {
    let mut config = test_config();
    config.limits.messages_per_second = 100_000;
    config.limits.burst = 100_000;
    config.limits.outbound_queue_messages = 64;
    config.limits.outbound_queue_bytes = 8 << 20;
    let broker = TestBroker::start(config);
    let mut slow = broker.client("slow", &["r"]).await;
    let mut fast = broker.client("fast", &["r"]).await;
    let mut publisher = broker.client("pub", &["r"]).await;
    slow.join("r").await;
    fast.join("r").await;
    publisher.join("r").await;

    // 300 × 48 KiB ≈ 14 MiB: more than socket buffers plus the slow queue can hold.
    // The publisher and the fast member keep reading in step (the publisher is a member and
    // gets its own echoes); the slow member reads nothing until the end.
    const N: u64 = 300;
    const WINDOW: u64 = 20;
    let blob = "x".repeat(48 * 1024);
    for window in 0..N / WINDOW {
        for i in 0..WINDOW {
            let n = window * WINDOW + i;
            publisher.publish("r", &format!("m{n}"), json!(blob)).await;
        }
        for _ in 0..WINDOW {
            publisher.skip_until("ack").await;
        }
        for i in 1..=WINDOW {
            let msg = fast.recv_type("room.message").await;
            assert_eq!(
                msg["seq"],
                window * WINDOW + i,
                "the fast member gets every message in order"
            );
        }
    }

    // Now the slow member reads what reached it: a prefix of the stream, then 4009.
    let mut got = 0u64;
    let closed = loop {
        match slow.next_frame().await {
            Some(awc::ws::Frame::Text(bytes)) => {
                let msg: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                if msg["type"] == "room.message" {
                    got += 1;
                    assert_eq!(msg["seq"], got, "what arrives is in order, without gaps");
                }
            }
            Some(awc::ws::Frame::Close(reason)) => break reason.map(|r| u16::from(r.code)),
            Some(_) => {}
            None => break None,
        }
    };
    assert_eq!(closed, Some(close::SLOW_CONSUMER));
    assert!(got < N, "the slow consumer was cut off (got {got} of {N})");
}

/// A replay from history is not held to the outbound queue's limits: a client that rejoins
/// after a gap of many times the queue still gets all of it (it used to be closed with 4009
/// before reading anything, on every attempt, until the history expired). Live traffic
/// keeps its limit.
#[actix_rt::test]
async fn a_replay_longer_than_the_outbound_queue_is_delivered_whole() {
    let mut config = test_config();
    config.limits.messages_per_second = 100_000;
    config.limits.burst = 100_000;
    config.limits.outbound_queue_messages = 16;
    config.history.size = 1000;
    let broker = TestBroker::start(config);
    let mut publisher = broker.client("pub", &["r"]).await;
    publisher.join("r").await;
    const N: u64 = 500;
    for n in 1..=N {
        publisher.publish("r", &format!("m{n}"), json!(n)).await;
        publisher.skip_until("ack").await;
    }
    let mut late = broker.client("late", &["r"]).await;
    late.send_json(
        json!({"type": "room.join", "room": "r", "id": "j", "payload": {"since_seq": 0}}),
    )
    .await;
    let joined = late.recv_type("room.joined").await;
    assert_eq!(joined["payload"]["recovered"], true);
    for seq in 1..=N {
        let msg = late.recv_type("room.message").await;
        assert_eq!(msg["seq"], seq, "the whole replay, in order");
    }
    // Then live traffic as usual.
    publisher.publish("r", "live", json!("live")).await;
    let msg = late.recv_type("room.message").await;
    assert_eq!(msg["seq"], N + 1);
}
