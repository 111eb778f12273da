//! Connect, join, publish, ack, leave: the protocol's happy paths against a real broker.

use crate::support;

use serde_json::json;
use support::{test_config, TestBroker};

#[actix_rt::test]
async fn connect_receives_connection_established() {
    let broker = TestBroker::start(test_config());
    let mut c = support::Client::connect(&broker.ws_url(Some(&support::token("alice", &[])))).await;
    let established = c.recv().await;
    assert_eq!(established["type"], "system.connection.established");
    let payload = &established["payload"];
    assert!(payload["connection_id"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(payload["user"], "alice");
    assert_eq!(payload["heartbeat_interval_ms"], 30_000);
    assert_eq!(payload["resume_ttl_ms"], 120_000);
    assert!(established["id"].is_string());
    assert!(established["timestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
}

#[actix_rt::test]
async fn two_clients_exchange_messages_with_gapless_seq() {
    let broker = TestBroker::start(test_config());
    let mut alice = broker.client("alice", &["conversation:*"]).await;
    let mut bob = broker.client("bob", &["conversation:*"]).await;
    let joined = alice.join("conversation:42").await;
    assert_eq!(joined["seq"], 0);
    assert_eq!(joined["correlation_id"], "join-conversation:42");
    assert_eq!(joined["payload"]["recovered"], true);
    bob.join("conversation:42").await;

    for i in 1..=3u64 {
        let (sender, name) = if i % 2 == 1 {
            (&mut alice, "alice")
        } else {
            (&mut bob, "bob")
        };
        sender
            .publish(
                "conversation:42",
                &format!("m{i}"),
                json!({"from": name, "n": i}),
            )
            .await;
        for receiver in [&mut alice, &mut bob] {
            let msg = receiver.recv_type("room.message").await;
            assert_eq!(msg["room"], "conversation:42");
            assert_eq!(msg["seq"], i);
            assert_eq!(msg["id"], format!("m{i}"));
            assert_eq!(msg["payload"], json!({"from": name, "n": i}));
        }
        let sender = if i % 2 == 1 { &mut alice } else { &mut bob };
        let ack = sender.recv_type("ack").await;
        assert_eq!(ack["correlation_id"], format!("m{i}"));
        assert_eq!(ack["room"], "conversation:42");
        assert_eq!(ack["seq"], i);
    }
}

#[actix_rt::test]
async fn publish_without_id_gets_a_server_id_and_an_ack() {
    let broker = TestBroker::start(test_config());
    let mut c = broker.client("alice", &["r"]).await;
    c.join("r").await;
    c.send_json(json!({"type": "room.publish", "room": "r", "payload": "hello"}))
        .await;
    let msg = c.recv_type("room.message").await;
    assert!(msg["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(msg["payload"], "hello");
    let ack = c.recv_type("ack").await;
    assert_eq!(ack["seq"], 1);
    assert!(ack.get("correlation_id").is_none());
}

#[actix_rt::test]
async fn leave_stops_delivery_and_publishing_needs_membership() {
    let broker = TestBroker::start(test_config());
    let mut a = broker.client("a", &["r"]).await;
    let mut b = broker.client("b", &["r"]).await;
    a.join("r").await;
    b.join("r").await;
    b.send_json(json!({"type": "room.leave", "room": "r", "id": "l1"}))
        .await;
    let left = b.recv_type("room.left").await;
    assert_eq!(left["correlation_id"], "l1");
    assert_eq!(left["room"], "r");

    b.publish("r", "nope", json!(1)).await;
    let err = b.recv_type("system.error").await;
    assert_eq!(err["payload"]["code"], "bad_request");
    assert_eq!(err["correlation_id"], "nope");

    a.publish("r", "m1", json!(1)).await;
    assert_eq!(a.recv_type("room.message").await["seq"], 1);
    // b left: the next thing b sees is the answer to its own ping, not room traffic.
    b.send_json(json!({"type": "system.ping", "id": "p"})).await;
    let pong = b.recv_type("system.pong").await;
    assert_eq!(pong["correlation_id"], "p");

    b.send_json(json!({"type": "room.leave", "room": "r", "id": "l2"}))
        .await;
    assert_eq!(
        b.recv_type("system.error").await["payload"]["code"],
        "not_found"
    );
}

#[actix_rt::test]
async fn rejoin_replays_history_after_since_seq() {
    let broker = TestBroker::start(test_config());
    let mut a = broker.client("a", &["r"]).await;
    a.join("r").await;
    for i in 1..=5 {
        a.publish("r", &format!("m{i}"), json!(i)).await;
        a.recv_type("room.message").await;
        a.recv_type("ack").await;
    }
    let mut b = broker.client("b", &["r"]).await;
    b.send_json(json!({"type": "room.join", "room": "r", "payload": {"since_seq": 2}}))
        .await;
    let joined = b.recv_type("room.joined").await;
    assert_eq!(joined["seq"], 5);
    assert_eq!(joined["payload"]["recovered"], true);
    for seq in 3..=5 {
        assert_eq!(b.recv_type("room.message").await["seq"], seq);
    }
}

#[actix_rt::test]
async fn personal_room_reaches_every_session_of_a_user() {
    let broker = TestBroker::start(test_config());
    // Joining one's personal room needs no pattern; publishing to it does.
    let mut tab1 = broker.client("carol", &["user:carol"]).await;
    let mut tab2 = broker.client("carol", &[]).await;
    // The personal room is joined silently; joining it explicitly is allowed and answered.
    tab1.join("user:carol").await;
    tab1.publish("user:carol", "n1", json!({"note": 1})).await;
    assert_eq!(tab1.recv_type("room.message").await["id"], "n1");
    let msg = tab2.recv_type("room.message").await;
    assert_eq!(msg["room"], "user:carol");
    assert_eq!(msg["payload"]["note"], 1);
}

#[actix_rt::test]
async fn healthz_answers() {
    let broker = TestBroker::start(test_config());
    let mut resp = awc::Client::new()
        .get(broker.http_url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["status"], "ok");
}

#[actix_rt::test]
async fn join_publish_leave_sent_back_to_back_are_handled_in_order() {
    let broker = TestBroker::start(test_config());
    let mut c = broker.client("a", &["r"]).await;
    c.send_json(json!({"type": "room.join", "room": "r", "id": "j"}))
        .await;
    c.publish("r", "p", json!(1)).await;
    c.send_json(json!({"type": "room.leave", "room": "r", "id": "l"}))
        .await;
    assert_eq!(c.recv().await["type"], "room.joined");
    assert_eq!(c.recv().await["type"], "room.message");
    let ack = c.recv().await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["payload"]["id"], "p");
    assert_eq!(c.recv().await["type"], "room.left");
}
