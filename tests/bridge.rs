//! `[[bridge.redis]]` against a `redis-server` of the test's own: the SOVD profile of
//! `config.example.toml` fed by `PUBLISH response:<id>`, the way back out, a Redis restart,
//! and two brokers over the Redis engine carrying each message in once.

use crate::support;

use std::net::SocketAddr;

use redis::AsyncCommands;
use serde_json::{json, Value};
use support::redis::RedisServer;
use support::{
    example_profile, metric_value, metrics_text, test_config, token, wait_metric, Client,
    TestBroker,
};
use switchboard::config::{Config, EngineKind, NonJson, RedisBridgeConfig};

/// The SOVD profile as config.example.toml writes it, its bridge on `redis`.
fn sovd(redis: &RedisServer) -> Config {
    let profile = example_profile("SOVD diagnostics");
    let mut config = test_config();
    config.endpoints = profile.endpoints;
    config.bridge = profile.bridge;
    config.bridge.redis[0].url = redis.url();
    config
}

async fn connection(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test's redis-server")
}

/// PUBLISHes `bytes` on `channel`; the number of Redis subscribers that got it.
async fn publish(conn: &mut redis::aio::MultiplexedConnection, channel: &str, bytes: &[u8]) -> i64 {
    conn.publish(channel, bytes).await.expect("PUBLISH")
}

/// Waits until the bridge `name` of the broker at `addr` is subscribed.
async fn bridge_active(addr: SocketAddr, name: &str) {
    let series = format!("switchboard_bridge_active{{bridge=\"{name}\"}}");
    wait_metric(addr, &series, |v| v == 1.0).await;
}

fn responses_url(broker: &TestBroker, command: &str) -> String {
    format!(
        "ws://{}/ws/responses/{command}?token={}",
        broker.addr,
        token("operator", &[])
    )
}

#[actix_rt::test]
async fn published_events_reach_every_client_of_their_command_byte_for_byte() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let broker = TestBroker::start(sovd(&redis));
    bridge_active(broker.addr, "responses").await;
    let mut conn = connection(&redis).await;

    // Published before anyone is connected: kept for late joiners.
    let queued = br#"{"event":"status","status":"queued","command_id":"abc"}"#;
    assert_eq!(publish(&mut conn, "response:abc", queued).await, 1);
    let mut first = Client::connect(&responses_url(&broker, "abc")).await;
    let mut second = Client::connect(&responses_url(&broker, "abc")).await;
    let mut other = Client::connect(&responses_url(&broker, "xyz")).await;
    assert_eq!(first.recv_text().await.as_bytes(), queued);
    assert_eq!(second.recv_text().await.as_bytes(), queued);

    let events = [
        r#"{"event":"response","data":{"dtc":["P0420"],"voltage":12.60}, "note":"ü"}"#,
        r#"{"event":"status","status":"done"}"#,
        r#"{ "event" : "error", "error" : {"code": 504, "message": "ECU timeout"} }"#,
    ];
    for event in events {
        publish(&mut conn, "response:abc", event.as_bytes()).await;
    }
    publish(
        &mut conn,
        "response:xyz",
        br#"{"event":"status","status":"xyz"}"#,
    )
    .await;
    for event in events {
        assert_eq!(first.recv_text().await, event);
        assert_eq!(second.recv_text().await, event);
    }
    // Command xyz's client got its own event and nothing of abc's.
    assert_eq!(
        other.recv_text().await,
        r#"{"event":"status","status":"xyz"}"#
    );

    // A message of 1 MiB, and one that is not JSON (wrapped as a JSON string by default).
    let big = format!(r#"{{"event":"response","blob":"{}"}}"#, "x".repeat(1 << 20));
    publish(&mut conn, "response:abc", big.as_bytes()).await;
    assert_eq!(first.recv_text().await, big);
    assert_eq!(second.recv_text().await, big);
    publish(&mut conn, "response:abc", b"plain text, not JSON").await;
    assert_eq!(first.recv_text().await, r#""plain text, not JSON""#);

    // Missing or invalid token: 1008 with a reason.
    for url in [
        format!("ws://{}/ws/responses/abc", broker.addr),
        format!("ws://{}/ws/responses/abc?token=forged", broker.addr),
    ] {
        let mut refused = Client::connect(&url).await;
        let closed = refused.expect_close().await;
        assert_eq!(closed.code, Some(1008), "{url}");
        assert!(!closed.reason.is_empty());
    }

    let metrics = metrics_text(broker.addr).await;
    let series = |s: &str| metric_value(&metrics, s);
    assert_eq!(
        series("switchboard_bridge_messages_total{bridge=\"responses\",direction=\"in\"}"),
        7.0
    );
    assert_eq!(
        series(
            "switchboard_bridge_dropped_total{bridge=\"responses\",reason=\"not_json_wrapped\"}"
        ),
        1.0
    );
}

#[actix_rt::test]
async fn the_bridge_reconnects_after_a_redis_restart_and_later_events_arrive() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let broker = TestBroker::start(sovd(&redis));
    bridge_active(broker.addr, "responses").await;
    let mut client = Client::connect(&responses_url(&broker, "r1")).await;
    let mut conn = connection(&redis).await;
    publish(&mut conn, "response:r1", br#"{"n":1}"#).await;
    assert_eq!(client.recv_text().await, r#"{"n":1}"#);

    redis.restart();
    let reconnects = "switchboard_bridge_reconnects_total{bridge=\"responses\"}";
    wait_metric(broker.addr, reconnects, |v| v >= 1.0).await;
    bridge_active(broker.addr, "responses").await;
    let mut conn = connection(&redis).await;
    assert_eq!(publish(&mut conn, "response:r1", br#"{"n":2}"#).await, 1);
    assert_eq!(client.recv_text().await, r#"{"n":2}"#);
}

#[actix_rt::test]
async fn non_json_can_be_dropped_and_rooms_go_out_to_redis_but_never_back() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut config = test_config();
    config.bridge.redis = vec![RedisBridgeConfig {
        name: "chat".into(),
        url: redis.url(),
        channels: vec!["in:*".into()],
        room: "chat:{channel}".into(),
        non_json: NonJson::Drop,
        publish_rooms: vec!["chat:*".into()],
        publish_channel: "out:{room}".into(),
        publish_format: switchboard::config::PublishFormat::Envelope,
        ..RedisBridgeConfig::default()
    }];
    let broker = TestBroker::start(config);
    bridge_active(broker.addr, "chat").await;
    // A backend listening on Redis.
    let mut listener = redis::Client::open(redis.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    listener.psubscribe("out:*").await.unwrap();
    let mut heard = listener.into_on_message();

    let mut alice = broker.client("alice", &["chat:*"]).await;
    alice.join("chat:in:1").await;
    let mut conn = connection(&redis).await;
    publish(&mut conn, "in:1", b"not json").await;
    publish(&mut conn, "in:1", br#"{"from":"backend"}"#).await;
    // The non-JSON message was dropped; the JSON one arrived and did not go back out.
    let message = alice.recv_type("room.message").await;
    assert_eq!(message["payload"], json!({"from": "backend"}));
    assert_eq!(message["seq"], 1);
    // Alice's own message goes out, once, as an envelope.
    alice
        .publish("chat:in:1", "a-1", json!({"text": "hi"}))
        .await;
    alice.skip_until("ack").await;
    let out = tokio::time::timeout(support::WAIT, futures_util::StreamExt::next(&mut heard))
        .await
        .expect("a message on out:*")
        .expect("the subscription is open");
    assert_eq!(out.get_channel_name(), "out:chat:in:1");
    let envelope: Value = serde_json::from_slice(out.get_payload_bytes()).unwrap();
    assert_eq!(
        envelope,
        json!({"room": "chat:in:1", "seq": 2, "id": "a-1", "user": "alice", "payload": {"text": "hi"}})
    );
    let metrics = metrics_text(broker.addr).await;
    let series = |s: &str| metric_value(&metrics, s);
    assert_eq!(
        series("switchboard_bridge_dropped_total{bridge=\"chat\",reason=\"not_json\"}"),
        1.0
    );
    assert_eq!(
        series("switchboard_bridge_messages_total{bridge=\"chat\",direction=\"in\"}"),
        1.0
    );
    // Counted once Redis answered the PUBLISH, which may be after the listener heard it.
    let out = "switchboard_bridge_messages_total{bridge=\"chat\",direction=\"out\"}";
    assert_eq!(wait_metric(broker.addr, out, |v| v >= 1.0).await, 1.0);
}

#[actix_rt::test]
async fn two_brokers_over_the_redis_engine_carry_each_message_in_once_and_fail_over() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let node = || {
        let mut config = sovd(&redis);
        config.engine.kind = EngineKind::Redis;
        config.redis.url = redis.url();
        config.bridge.redis[0].leader_lease = std::time::Duration::from_millis(900);
        TestBroker::start(config)
    };
    let (a, b) = (node(), node());
    // One of them leads.
    let leader_of = |metrics: &str| {
        metric_value(metrics, "switchboard_bridge_active{bridge=\"responses\"}") == 1.0
    };
    let deadline = std::time::Instant::now() + support::WAIT;
    let a_leads = loop {
        let (ma, mb) = (metrics_text(a.addr).await, metrics_text(b.addr).await);
        match (leader_of(&ma), leader_of(&mb)) {
            (true, false) => break true,
            (false, true) => break false,
            (true, true) => panic!("two leaders"),
            (false, false) => {
                assert!(std::time::Instant::now() < deadline, "no leader");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    let mut on_a = Client::connect(&responses_url(&a, "c")).await;
    let mut on_b = Client::connect(&responses_url(&b, "c")).await;
    let mut conn = connection(&redis).await;
    for n in 1..=20 {
        publish(
            &mut conn,
            "response:c",
            json!({ "n": n }).to_string().as_bytes(),
        )
        .await;
    }
    for n in 1..=20 {
        let expected = json!({ "n": n }).to_string();
        assert_eq!(on_a.recv_text().await, expected);
        assert_eq!(on_b.recv_text().await, expected);
    }
    // Exactly once: the room has 20 messages, not 40.
    let history = switchboard_history(a.addr).await;
    assert_eq!(history, 20);

    // The leader shuts down; the other takes over and carries what comes next.
    let (leader, mut survivor_client, survivor) = if a_leads { (a, on_b, b) } else { (b, on_a, a) };
    leader.shutdown().await;
    bridge_active(survivor.addr, "responses").await;
    publish(&mut conn, "response:c", br#"{"n":21}"#).await;
    assert_eq!(survivor_client.recv_text().await, r#"{"n":21}"#);
}

/// How many messages room `response:c` holds: a fresh client's replay, counted up to the
/// confirmation of a subscribe it sends after connecting.
async fn switchboard_history(addr: SocketAddr) -> usize {
    let url = format!("ws://{addr}/ws/responses/c?token={}", token("counter", &[]));
    let mut client = Client::connect(&url).await;
    // replay = 100: everything the room holds, then a marker of our own.
    client
        .send_text(r#"{"action":"subscribe","command_id":"marker"}"#)
        .await;
    let mut count = 0;
    loop {
        let text = client.recv_text().await;
        if text.contains("\"subscribed\"") {
            return count;
        }
        count += 1;
    }
}
