//! Requests to application handlers (native and JSON-RPC), notifications, presence.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use support::{options, test_config, token, TestBroker, ECHO, WAIT};
use switchboard::config::NamespaceConfig;
use switchboard_client::{Client, Error, PresenceEvent, Subscription, SubscriptionEvent};

const TIMEOUT: Duration = Duration::from_secs(5);

/// These tests replay nothing across long outages: rooms and resume state may expire soon,
/// which lets the final wait for an idle broker end quickly.
fn quick_config() -> switchboard::config::Config {
    let mut config = test_config();
    config.history.ttl = Duration::from_secs(1);
    config.resume.ttl = Duration::from_secs(1);
    config
}

async fn next_event(stream: &mut Subscription) -> SubscriptionEvent {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("event in time")
        .expect("subscription open")
}

async fn next_presence(stream: &mut Subscription) -> PresenceEvent {
    match next_event(stream).await {
        SubscriptionEvent::Presence(event) => event,
        other => panic!("expected a presence event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_and_json_rpc_requests_correlate_concurrently() {
    let broker = TestBroker::start(quick_config());
    let client = Client::connect(&broker.ws_url(), options(token("dora", &["room:*"])))
        .await
        .expect("connects");

    // 100 requests in flight at once, half native and half JSON-RPC: each answer goes to
    // its own caller.
    let native = (0..50).map(|n| {
        let client = client.clone();
        async move {
            let reply = client
                .request(ECHO, json!({ "n": n }), TIMEOUT)
                .await
                .expect("native reply");
            assert_eq!(reply.msg_type, "echo.response");
            let payload = reply.payload.expect("payload");
            assert_eq!(payload["echo"]["n"], n);
            assert_eq!(payload["user"], "dora");
        }
    });
    let rpc = (0..50).map(|n| {
        let client = client.clone();
        async move {
            let result = client
                .call(ECHO, json!({ "n": n }), TIMEOUT)
                .await
                .expect("JSON-RPC result");
            assert_eq!(result["echo"]["n"], n);
        }
    });
    tokio::join!(
        futures_util::future::join_all(native),
        futures_util::future::join_all(rpc)
    );

    // Errors: the handler's refusal and an unknown method, as JSON-RPC error objects with
    // the broker's code name in data.code.
    let err = client
        .call(ECHO, json!({"fail": true}), TIMEOUT)
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, Error::Rpc { code: -32602, data: Some(d), .. } if d["code"] == "bad_request"),
        "{err:?}"
    );
    let err = client
        .call("nope.method", json!(null), TIMEOUT)
        .await
        .expect_err("unknown");
    assert!(
        matches!(&err, Error::Rpc { code: -32601, data: Some(d), .. } if d["code"] == "unknown_type"),
        "{err:?}"
    );

    // A broker method in JSON-RPC mode: the join's result, and the room's messages as
    // native pushes to a subscription (which joined the same room).
    let mut room = client.subscribe("room:rpc").expect("subscribe");
    let joined = client
        .call("room.join", json!({"room": "room:rpc"}), TIMEOUT)
        .await
        .expect("join result");
    assert_eq!(joined["room"], "room:rpc");
    let published = client
        .call(
            "room.publish",
            json!({"room": "room:rpc", "id": "rpc-1", "payload": {"via": "rpc"}}),
            TIMEOUT,
        )
        .await
        .expect("publish result");
    assert_eq!(published["id"], "rpc-1");
    match next_event(&mut room).await {
        SubscriptionEvent::Message(m) => {
            assert_eq!(m.id, "rpc-1");
            assert_eq!(m.seq, published["seq"].as_u64().expect("seq"));
        }
        other => panic!("expected the message, got {other:?}"),
    }

    // A notification gets no answer; a request after it still correlates (the socket
    // stayed healthy), and the notification's publish was delivered.
    client
        .notify(
            "room.publish",
            json!({"room": "room:rpc", "payload": {"via": "notify"}}),
        )
        .expect("notify");
    match next_event(&mut room).await {
        SubscriptionEvent::Message(m) => assert_eq!(m.payload["via"], "notify"),
        other => panic!("expected the notified publish, got {other:?}"),
    }
    let pong = client
        .call("system.ping", json!({}), TIMEOUT)
        .await
        .expect("ping result");
    assert_eq!(pong, json!({}));

    drop(room);
    client.close().await;
    broker.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_made_offline_is_sent_on_the_next_connection() {
    let broker = TestBroker::start(quick_config());
    let addr = broker.addr;
    let client = Client::connect(&broker.ws_url(), options(token("erin", &["room:*"])))
        .await
        .expect("connects");
    let mut states = client.state_changes();
    broker.shutdown().await;
    support::wait_state(&mut states, |s| !s.is_connected()).await;

    // Made while no broker runs: queued, then answered once the broker is back.
    let native = client.request(ECHO, json!({"offline": 1}), WAIT);
    let rpc = client.call(ECHO, json!({"offline": 2}), WAIT);
    let broker = TestBroker::start_on(addr, quick_config());
    let (native, rpc) = tokio::join!(native, rpc);
    let native = native.expect("native").payload.expect("payload");
    assert_eq!(native["echo"]["offline"], 1);
    assert_eq!(rpc.expect("rpc")["echo"]["offline"], 2);
    client.close().await;
    broker.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_members_then_joins_and_leaves() {
    let mut config = quick_config();
    config.namespaces.insert(
        "team".into(),
        NamespaceConfig {
            presence: true,
            ..NamespaceConfig::default()
        },
    );
    let broker = TestBroker::start(config);
    let alice = Client::connect(
        &broker.ws_url(),
        options(token("alice", &["team:*", "room:*"])),
    )
    .await
    .expect("alice connects");
    let mut room = alice.subscribe("team:1").expect("subscribe");
    match next_presence(&mut room).await {
        PresenceEvent::Members(members) => {
            assert_eq!(members.len(), 1);
            assert_eq!(members[0].user, "alice");
            assert_eq!(members[0].connections, 1);
        }
        other => panic!("expected the member list, got {other:?}"),
    }

    let bob = Client::connect(&broker.ws_url(), options(token("bob", &["team:*"])))
        .await
        .expect("bob connects");
    let mut bobs = bob.subscribe("team:1").expect("bob subscribes");
    assert_eq!(
        next_presence(&mut room).await,
        PresenceEvent::Joined("bob".into())
    );
    match next_presence(&mut bobs).await {
        PresenceEvent::Members(members) => {
            let users: BTreeSet<_> = members.iter().map(|m| m.user.as_str()).collect();
            assert_eq!(users, BTreeSet::from(["alice", "bob"]));
        }
        other => panic!("expected the member list, got {other:?}"),
    }
    bob.close().await;
    assert_eq!(
        next_presence(&mut room).await,
        PresenceEvent::Left("bob".into())
    );

    // Rooms without presence send no presence events: the first event is the message.
    let mut plain = alice.subscribe("room:plain").expect("subscribe");
    alice.publish("room:plain", json!(1)).await.expect("ack");
    assert!(matches!(
        next_event(&mut plain).await,
        SubscriptionEvent::Message(m) if m.seq == 1
    ));
    drop((room, plain));
    alice.close().await;
    broker.wait_idle().await;
}
