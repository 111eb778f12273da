//! Delivery guarantees: replay at the join seam, recovered flags, resume after a dropped
//! connection, idempotent publish, presence, namespace options.

use crate::support::{self, proxy};

use std::collections::BTreeMap;
use std::time::Duration;

use proxy::{stream_through_cuts, Proxy};
use serde_json::{json, Value};
use support::{connect_client, test_config, token};
use support::{Client, TestBroker};
use switchboard::config::NamespaceConfig;

fn with_namespace(name: &str, ns: NamespaceConfig) -> switchboard::Config {
    let mut config = test_config();
    config.namespaces.insert(name.into(), ns);
    config
}

/// Publishes `n` messages to `room` from `c` and waits for each ack; returns the last seq.
pub(crate) async fn publish_n(c: &mut Client, room: &str, prefix: &str, n: u64) -> u64 {
    let mut last = 0;
    for i in 0..n {
        c.publish(room, &format!("{prefix}{i}"), json!(i)).await;
        last = c.skip_until("ack").await["seq"].as_u64().unwrap();
    }
    last
}

#[actix_rt::test]
async fn replay_and_live_traffic_meet_without_gap_or_duplicate() {
    let broker = TestBroker::start(test_config());
    let mut publisher = broker.client("pub", &["r"]).await;
    publisher.join("r").await;
    publish_n(&mut publisher, "r", "a", 20).await;

    // A late joiner asks for everything after 5 while the publisher keeps going.
    let mut late = broker.client("late", &["r"]).await;
    let publishing = async {
        for i in 0..40 {
            publisher.publish("r", &format!("b{i}"), json!(i)).await;
        }
        for _ in 0..40 {
            publisher.skip_until("ack").await;
        }
    };
    let reading = async {
        late.send_json(json!({"type": "room.join", "room": "r", "payload": {"since_seq": 5}}))
            .await;
        let joined = late.recv_type("room.joined").await;
        assert_eq!(joined["payload"]["recovered"], true);
        let mut expected = 6;
        while expected <= 60 {
            let msg = late.recv_type("room.message").await;
            assert_eq!(
                msg["seq"], expected,
                "replay then live, in order, exactly once"
            );
            expected += 1;
        }
    };
    futures_util::join!(publishing, reading);
}

#[actix_rt::test]
async fn recovered_is_false_when_the_gap_left_history() {
    let broker = TestBroker::start(with_namespace(
        "small",
        NamespaceConfig {
            history_size: Some(5),
            ..NamespaceConfig::default()
        },
    ));
    let mut c = broker.client("a", &["small:*"]).await;
    c.join("small:1").await;
    publish_n(&mut c, "small:1", "m", 10).await;
    let mut late = broker.client("b", &["small:*"]).await;
    late.send_json(json!({"type": "room.join", "room": "small:1", "payload": {"since_seq": 2}}))
        .await;
    let joined = late.recv_type("room.joined").await;
    assert_eq!(joined["payload"]["recovered"], false);
    assert_eq!(joined["seq"], 10);
    for seq in 6..=10 {
        assert_eq!(late.recv_type("room.message").await["seq"], seq);
    }
}

#[actix_rt::test]
async fn a_retried_publish_is_acked_with_the_original_seq_and_not_delivered_again() {
    let broker = TestBroker::start(test_config());
    let mut a = broker.client("a", &["r"]).await;
    let mut b = broker.client("b", &["r"]).await;
    a.join("r").await;
    b.join("r").await;
    a.publish("r", "once", json!("first")).await;
    let ack = a.skip_until("ack").await;
    assert_eq!(ack["seq"], 1);
    a.publish("r", "once", json!("retry")).await;
    let ack = a.skip_until("ack").await;
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["payload"]["duplicate"], true);
    a.publish("r", "twice", json!("next")).await;
    assert_eq!(a.skip_until("ack").await["seq"], 2);

    let first = b.recv_type("room.message").await;
    assert_eq!(
        (first["seq"].as_u64(), first["payload"].as_str()),
        (Some(1), Some("first"))
    );
    let next = b.recv_type("room.message").await;
    assert_eq!(next["seq"], 2, "the retry was not delivered");
}

#[actix_rt::test]
async fn jsonrpc_request_ids_are_not_message_ids() {
    let broker = TestBroker::start(test_config());
    let mut a = broker.client("a", &["r"]).await;
    let mut b = broker.client("b", &["r"]).await;
    a.join("r").await;
    b.join("r").await;
    // Both number their requests from 1: two different messages, not a duplicate.
    for c in [&mut a, &mut b] {
        c.send_json(json!({"jsonrpc": "2.0", "method": "room.publish",
            "params": {"room": "r", "payload": "x"}, "id": 1}))
            .await;
    }
    let mut seqs = Vec::new();
    for c in [&mut a, &mut b] {
        let ack = c.skip_until_result().await;
        assert_eq!(ack["result"]["duplicate"], Value::Null);
        seqs.push(ack["result"]["seq"].as_u64().unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, vec![1, 2]);
}

#[actix_rt::test]
async fn resume_rejoins_every_room_and_replays_the_gap() {
    let broker = TestBroker::start(test_config());
    let t = token("sub", &["r1", "r2", "r3"]);
    let mut sub = Client::connect(&broker.ws_url(Some(&t))).await;
    let old_id = sub.recv_type("system.connection.established").await["payload"]["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    sub.join("r1").await;
    sub.join("r2").await;
    sub.join("r3").await;
    let mut publisher = broker.client("pub", &["r1", "r2"]).await;
    publisher.join("r1").await;
    publisher.join("r2").await;
    publish_n(&mut publisher, "r1", "x", 3).await;
    for seq in 1..=3 {
        assert_eq!(sub.recv_type("room.message").await["seq"], seq);
    }
    drop(sub); // the connection drops without a close handshake

    publish_n(&mut publisher, "r1", "y", 4).await; // r1 seq 4..7
    publish_n(&mut publisher, "r2", "z", 2).await; // r2 seq 1..2

    let mut sub = Client::connect(&broker.ws_url(Some(&t))).await;
    sub.recv_type("system.connection.established").await;
    sub.send_json(json!({
        "type": "system.connection.resume",
        "id": "res",
        "payload": {"connection_id": old_id, "rooms": {"r1": 3, "r2": 0}}
    }))
    .await;
    let mut replayed: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let resumed = loop {
        let msg = sub.recv().await;
        match msg["type"].as_str().unwrap() {
            "room.joined" if msg["room"] == "r3" => {
                assert_eq!(
                    msg["payload"]["recovered"], false,
                    "r3 was not listed: gap unknown"
                )
            }
            "room.joined" => assert_eq!(msg["payload"]["recovered"], true),
            "room.message" => replayed
                .entry(msg["room"].as_str().unwrap().to_owned())
                .or_default()
                .push(msg["seq"].as_u64().unwrap()),
            "system.connection.resumed" => break msg,
            other => panic!("unexpected {other}: {msg}"),
        }
    };
    assert_eq!(resumed["correlation_id"], "res");
    assert_eq!(resumed["payload"]["session_found"], true);
    assert_eq!(
        resumed["payload"]["rooms"]["r1"],
        json!({"seq": 7, "recovered": true})
    );
    assert_eq!(
        resumed["payload"]["rooms"]["r2"],
        json!({"seq": 2, "recovered": true})
    );
    assert_eq!(
        resumed["payload"]["rooms"]["r3"],
        json!({"seq": 0, "recovered": false})
    );
    assert_eq!(replayed["r1"], vec![4, 5, 6, 7]);
    assert_eq!(replayed["r2"], vec![1, 2]);

    // Live traffic continues after the replay.
    publish_n(&mut publisher, "r1", "w", 1).await;
    assert_eq!(sub.recv_type("room.message").await["seq"], 8);
}

#[actix_rt::test]
async fn resume_state_is_per_user_and_expires_but_listed_rooms_still_recover() {
    let mut config = test_config();
    config.resume.ttl = Duration::from_millis(300);
    let broker = TestBroker::start(config);
    let t = token("sub", &["r"]);
    let mut sub = Client::connect(&broker.ws_url(Some(&t))).await;
    let old_id = sub.recv_type("system.connection.established").await["payload"]["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    sub.join("r").await;
    drop(sub);

    // Another user cannot take over alice's… sub's state.
    let mut thief = broker.client("thief", &["*"]).await;
    thief
        .send_json(
            json!({"type": "system.connection.resume", "payload": {"connection_id": old_id}}),
        )
        .await;
    let resumed = thief.recv_type("system.connection.resumed").await;
    assert_eq!(resumed["payload"]["session_found"], false);
    assert_eq!(resumed["payload"]["rooms"], json!({}));

    let mut publisher = broker.client("pub", &["r"]).await;
    publisher.join("r").await;
    publish_n(&mut publisher, "r", "m", 2).await;
    // Past the resume window (the scenario needs time to pass; nothing is awaited on it).
    actix_rt::time::sleep(Duration::from_millis(700)).await;

    let mut sub = Client::connect(&broker.ws_url(Some(&t))).await;
    sub.recv_type("system.connection.established").await;
    sub.send_json(json!({"type": "system.connection.resume",
        "payload": {"connection_id": old_id, "rooms": {"r": 0, "forbidden:1": 0}}}))
        .await;
    sub.recv_type("room.joined").await;
    assert_eq!(sub.recv_type("room.message").await["seq"], 1);
    assert_eq!(sub.recv_type("room.message").await["seq"], 2);
    let resumed = sub.recv_type("system.connection.resumed").await;
    assert_eq!(resumed["payload"]["session_found"], false);
    assert_eq!(resumed["payload"]["rooms"]["r"]["recovered"], true);
    assert_eq!(
        resumed["payload"]["rooms"]["forbidden:1"]["error"]["code"],
        "forbidden"
    );
}

/// The subscriber (the project's client, through a proxy) is cut 100 times while 10,000
/// messages are published; each time it is kept out until more are published, which only
/// its resume can bring back. Every message arrives once, in order, and no resume reported a
/// gap (`recovered: false`) or replayed a message twice.
#[actix_rt::test]
async fn a_subscriber_cut_a_hundred_times_still_gets_every_message_once_in_order() {
    const TOTAL: u64 = 10_000;
    const CUTS: u64 = 100;
    let mut config = with_namespace(
        "stream",
        NamespaceConfig {
            history_size: Some(TOTAL as usize),
            ..NamespaceConfig::default()
        },
    );
    config.limits.messages_per_second = 100_000;
    config.limits.burst = 100_000;
    let broker = TestBroker::start(config);
    let room = "stream:1";
    let upstream = broker.addr;
    let proxy = Proxy::start(move |_| upstream);
    let subscriber = connect_client(&proxy.ws_url(), "sub", &["stream:*"]).await;
    let mut stream = subscriber.subscribe_from(room, 0).expect("subscribe");
    let publisher = connect_client(&broker.ws_url(None), "pub", &["stream:*"]).await;
    let _membership = publisher.subscribe(room).expect("the publisher joins");
    stream_through_cuts(
        &proxy,
        &publisher,
        room,
        &subscriber,
        &mut stream,
        TOTAL,
        CUTS,
    )
    .await;
    assert_eq!(proxy.forwarded(), CUTS as usize + 1);
}

#[actix_rt::test]
async fn presence_counts_users_not_tabs() {
    let broker = TestBroker::start(with_namespace(
        "conversation",
        NamespaceConfig {
            presence: true,
            ..NamespaceConfig::default()
        },
    ));
    let room = "conversation:1";
    let mut bob = broker.client("bob", &["conversation:*"]).await;
    bob.join(room).await;
    let mut tabs = Vec::new();
    for _ in 0..3 {
        let mut tab = broker.client("alice", &["conversation:*"]).await;
        let joined = tab.join(room).await;
        assert!(joined["payload"]["presence"].is_array());
        tabs.push(tab);
    }
    // Bob hears alice arrive once, not three times.
    let event = bob.recv_type("presence.join").await;
    assert_eq!(event["room"], room);
    assert_eq!(event["payload"]["user"], "alice");

    let mut carol = broker.client("carol", &["conversation:*"]).await;
    let joined = carol.join(room).await;
    let presence = joined["payload"]["presence"].as_array().unwrap().clone();
    let users: Vec<(&str, u64)> = presence
        .iter()
        .map(|p| {
            (
                p["user"].as_str().unwrap(),
                p["connections"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(users, vec![("alice", 3), ("bob", 1), ("carol", 1)]);
    assert_eq!(
        bob.recv_type("presence.join").await["payload"]["user"],
        "carol"
    );

    // Two of alice's tabs leave: still present. The third goes: presence.leave.
    for tab in tabs.iter_mut().take(2) {
        tab.send_json(json!({"type": "room.leave", "room": room}))
            .await;
        tab.skip_until("room.left").await;
    }
    let last = tabs.pop().unwrap();
    drop(last);
    let event = bob.recv_type("presence.leave").await;
    assert_eq!(event["payload"]["user"], "alice");
}

#[actix_rt::test]
async fn namespace_options_restrict_publishing_and_anonymous_joins() {
    let mut config = with_namespace(
        "feed",
        NamespaceConfig {
            client_publish: false,
            anonymous: false,
            ..NamespaceConfig::default()
        },
    );
    config.auth.anonymous = true;
    let broker = TestBroker::start(config);
    let mut user = broker.client("u", &["feed:*"]).await;
    user.join("feed:news").await;
    user.publish("feed:news", "p", json!(1)).await;
    assert_eq!(
        user.recv_type("system.error").await["payload"]["code"],
        "forbidden"
    );

    let mut anon = Client::connect(&broker.ws_url(None)).await;
    anon.recv_type("system.connection.established").await;
    anon.send_json(json!({"type": "room.join", "room": "feed:news"}))
        .await;
    assert_eq!(
        anon.recv_type("system.error").await["payload"]["code"],
        "forbidden"
    );
    anon.join("lobby").await;
}

/// The room messages a client reads after joining `room` from seq 0, one envelope per
/// newline-separated line, and how many frames carried them.
pub(crate) async fn replay_frames(
    url: &str,
    protocol: Option<&str>,
    room: &str,
    messages: usize,
) -> (Vec<Value>, usize) {
    use actix_http::ws::{Frame, Message};
    use futures_util::{SinkExt, StreamExt};

    let mut req = awc::Client::new().ws(url).max_frame_size(1 << 24);
    if let Some(protocol) = protocol {
        req = req.protocols([protocol]);
    }
    let (resp, mut framed) = req.connect().await.expect("connect");
    let answered = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(
        answered.as_deref(),
        protocol,
        "the subprotocol the broker answers with"
    );
    let join = json!({"type": "room.join", "room": room, "payload": {"since_seq": 0}});
    framed
        .send(Message::Text(join.to_string().into()))
        .await
        .expect("send join");
    let (mut envelopes, mut frames) = (Vec::new(), 0);
    while envelopes.len() < messages {
        let frame = tokio::time::timeout(Duration::from_secs(10), framed.next())
            .await
            .expect("a frame within 10 s")
            .expect("the connection is open")
            .expect("a valid frame");
        let Frame::Text(text) = frame else { continue };
        let before = envelopes.len();
        for line in std::str::from_utf8(&text).expect("UTF-8").split('\n') {
            let envelope: Value = serde_json::from_str(line).expect("each line is one envelope");
            if envelope["type"] == "room.message" {
                envelopes.push(envelope);
            }
        }
        if envelopes.len() > before {
            frames += 1;
        }
    }
    (envelopes, frames)
}

#[actix_rt::test]
async fn the_batch_subprotocol_joins_queued_messages_and_v1_keeps_one_per_frame() {
    const N: usize = 100;
    let broker = TestBroker::start(test_config());
    let mut publisher = broker.client("pub", &["r"]).await;
    publisher.join("r").await;
    publish_n(&mut publisher, "r", "m", N as u64).await;

    // A replay queues the room's whole history at once: with batched frames it arrives in
    // fewer frames than messages, in order, each line one envelope.
    let url = broker.ws_url(Some(&token("batch", &["r"])));
    let (messages, frames) = replay_frames(&url, Some("switchboard.v1.batch"), "r", N).await;
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>());
    assert!(
        frames < N,
        "{N} replayed messages came in {frames} frames: none joined"
    );

    // Without the subprotocol (or with plain v1), one message per frame, as before.
    for protocol in [None, Some("switchboard.v1")] {
        let url = broker.ws_url(Some(&token("v1", &["r"])));
        let (messages, frames) = replay_frames(&url, protocol, "r", N).await;
        assert_eq!(messages.len(), N);
        assert_eq!(frames, N, "{protocol:?}: one frame per message");
    }
}
