//! The Redis engine: three broker processes over one `redis-server` of the test's own act
//! as one broker. Skipped (with a message) without `redis-server`, unless
//! `SWITCHBOARD_REQUIRE_REDIS=1`.

use crate::support::{self, cluster, proxy, receiver};

use std::collections::BTreeMap;

use cluster::Cluster;
use proxy::{stream_through_cuts, Proxy};
use receiver::Receiver;
use serde_json::{json, Value};
use support::{connect_client, next_message, Client};

/// Reads room messages of `room` until `count` arrived (skipping anything else); their
/// payloads' `n` in arrival order, with their seqs.
async fn read_messages(client: &mut Client, room: &str, count: usize) -> Vec<(u64, Value)> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        let msg = client.recv().await;
        if msg["type"] == "room.message" && msg["room"] == room {
            got.push((
                msg["seq"].as_u64().expect("seq"),
                msg["payload"]["n"].clone(),
            ));
        }
    }
    got
}

/// A client on each node (`{prefix}{i}`), each a member of `room`.
async fn one_per_node(cluster: &Cluster, prefix: &str, room: &str) -> Vec<Client> {
    let mut clients = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let (mut client, _) = node.client(&format!("{prefix}{i}")).await;
        client.join(room).await;
        clients.push(client);
    }
    clients
}

#[actix_rt::test]
async fn a_message_published_on_one_node_reaches_every_node_once_in_order() {
    let Some(cluster) = Cluster::start(3, "").await else {
        return;
    };
    let mut subscribers = one_per_node(&cluster, "sub", "chat:one").await;
    // The publisher is the project's client: its acks and its own messages (which come
    // through Redis too, before or after each ack) arrive apart.
    let publisher = connect_client(&cluster.nodes[0].ws_url(), "pub", &["*"]).await;
    let mut own = publisher
        .subscribe("chat:one")
        .expect("the publisher joins");
    // Over WebSocket on node A: acknowledged with the seq Redis allocated.
    for n in 0..5 {
        let ack = publisher
            .publish_with_id("chat:one", &format!("ws-{n}"), json!({ "n": n }))
            .await
            .expect("an ack");
        assert_eq!((ack.seq, ack.duplicate), (n + 1, false));
    }
    // Over HTTP on node A.
    for n in 5..10 {
        let (status, body) = cluster.nodes[0]
            .api(
                "POST",
                "/api/rooms/chat:one/publish",
                Some(json!({ "payload": { "n": n }, "id": format!("http-{n}") })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["seq"], n + 1);
    }
    let expected: Vec<(u64, Value)> = (0..10).map(|n| (n + 1, json!(n))).collect();
    for (i, client) in subscribers.iter_mut().enumerate() {
        assert_eq!(
            read_messages(client, "chat:one", 10).await,
            expected,
            "subscriber on node {i}"
        );
    }
    // The publisher got its own messages like everyone else, none twice.
    for (seq, n) in &expected {
        let message = next_message(&mut own).await;
        assert_eq!((message.seq, &message.payload["n"]), (*seq, n));
    }
    assert_eq!(publisher.stats().duplicates_dropped, 0);
    // History answers the same from every node.
    for node in &cluster.nodes {
        let (status, body) = node
            .api("GET", "/api/rooms/chat:one/history?since=7", None)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["seq"], 10);
        assert_eq!(body["recovered"], true);
        let seqs: Vec<u64> = body["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(seqs, [8, 9, 10]);
    }
}

#[actix_rt::test]
async fn concurrent_publishes_through_three_nodes_get_one_order_without_gaps() {
    let Some(cluster) = Cluster::start(3, "").await else {
        return;
    };
    let mut subscribers = one_per_node(&cluster, "sub", "race").await;
    // 1,000 messages: each node's publisher sends its share without waiting for acks.
    let mut publishers = one_per_node(&cluster, "pub", "race").await;
    let sends = publishers
        .iter_mut()
        .enumerate()
        .map(|(i, client)| async move {
            for k in 0..334 {
                let n = i * 334 + k;
                if n >= 1000 {
                    break;
                }
                client
                    .publish("race", &format!("m{n}"), json!({ "n": n }))
                    .await;
            }
        });
    futures_util::future::join_all(sends).await;
    let mut orders = Vec::new();
    for client in subscribers.iter_mut() {
        let got = read_messages(client, "race", 1000).await;
        let seqs: Vec<u64> = got.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=1000).collect::<Vec<u64>>(), "seqs without gaps");
        orders.push(got);
    }
    assert_eq!(orders[0], orders[1], "nodes A and B saw one order");
    assert_eq!(orders[0], orders[2], "nodes A and C saw one order");
    let distinct: BTreeMap<String, ()> =
        orders[0].iter().map(|(_, n)| (n.to_string(), ())).collect();
    assert_eq!(distinct.len(), 1000, "every message once");
    // Each publisher's messages kept the order it sent them in.
    for publisher in 0..3u64 {
        let sent: Vec<u64> = orders[0]
            .iter()
            .filter_map(|(_, n)| n.as_u64())
            .filter(|n| n / 334 == publisher)
            .collect();
        assert!(
            sent.windows(2).all(|w| w[0] < w[1]),
            "publisher {publisher} reordered: {sent:?}"
        );
    }
}

/// Resumes on `client` (a fresh connection) the connection `previous`, listing `rooms` with
/// their last seqs; the room messages that arrive until `system.connection.resumed`, and
/// that frame.
async fn resume(
    client: &mut Client,
    previous: &str,
    rooms: Value,
    room: &str,
) -> (Vec<(u64, Value)>, Value) {
    client
        .send_json(json!({
            "type": "system.connection.resume",
            "payload": { "connection_id": previous, "rooms": rooms },
        }))
        .await;
    let mut replayed = Vec::new();
    loop {
        let msg = client.recv().await;
        match msg["type"].as_str() {
            Some("system.connection.resumed") => return (replayed, msg),
            Some("room.message") if msg["room"] == room => replayed.push((
                msg["seq"].as_u64().expect("seq"),
                msg["payload"]["n"].clone(),
            )),
            _ => {}
        }
    }
}

/// The subscriber (the project's client, through a proxy that sends each connection to the
/// next node in turn) is cut 20 times while 2,000 messages are published on node A. Each
/// time it is kept out until more are published, then resumes on another node than the one
/// it was cut from, which must replay them from Redis: every message arrives once, in order,
/// and no resume reported a gap or replayed a message twice.
#[actix_rt::test]
async fn a_subscriber_cut_twenty_times_resumes_on_any_node_and_misses_nothing() {
    // History long enough for any gap a cut can open.
    let Some(cluster) = Cluster::start(3, "[history]\nsize = 5000\n").await else {
        return;
    };
    const TOTAL: u64 = 2000;
    const CUTS: u64 = 20;
    let nodes: Vec<_> = cluster.nodes.iter().map(|n| n.addr()).collect();
    // Connection k to node (k + 1) % 3: B first, then C, A, B, …
    let proxy = Proxy::start(move |k| nodes[(k + 1) % 3]);
    let subscriber = connect_client(&proxy.ws_url(), "sub", &["*"]).await;
    let mut stream = subscriber.subscribe_from("stream", 0).expect("subscribe");
    let publisher = connect_client(&cluster.nodes[0].ws_url(), "pub", &["*"]).await;
    let _membership = publisher.subscribe("stream").expect("the publisher joins");
    stream_through_cuts(
        &proxy,
        &publisher,
        "stream",
        &subscriber,
        &mut stream,
        TOTAL,
        CUTS,
    )
    .await;
    assert_eq!(
        proxy.forwarded(),
        CUTS as usize + 1,
        "each resume on the next node"
    );
}

#[actix_rt::test]
async fn a_dropped_connections_rooms_are_found_by_a_resume_on_another_node() {
    let Some(cluster) = Cluster::start(2, "").await else {
        return;
    };
    let (mut first, established) = cluster.nodes[0].client("carol").await;
    first.join("side").await;
    let previous = established["payload"]["connection_id"]
        .as_str()
        .expect("connection id")
        .to_owned();
    first.close().await;
    // Node A has let the session go (and stored what it left) once it counts no session.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, health) = cluster.nodes[0].api("GET", "/healthz", None).await;
        if health["sessions"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "session not released");
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Another user cannot take it; its owner can, once, on node B.
    let (mut mallory, _) = cluster.nodes[1].client("mallory").await;
    let (_, resumed) = resume(&mut mallory, &previous, json!({}), "side").await;
    assert_eq!(resumed["payload"]["session_found"], false, "{resumed}");
    let (mut second, _) = cluster.nodes[1].client("carol").await;
    let (_, resumed) = resume(&mut second, &previous, json!({}), "side").await;
    assert_eq!(resumed["payload"]["session_found"], true, "{resumed}");
    assert_eq!(resumed["payload"]["rooms"]["side"]["recovered"], false);
    let (mut third, _) = cluster.nodes[0].client("carol").await;
    let (_, resumed) = resume(&mut third, &previous, json!({}), "side").await;
    assert_eq!(resumed["payload"]["session_found"], false, "taken once");
}

/// The next `presence.join` / `presence.leave` of `room`, skipping anything else.
async fn next_presence(client: &mut Client, room: &str) -> (String, String) {
    loop {
        let msg = client.recv().await;
        let kind = msg["type"].as_str().unwrap_or_default();
        if kind.starts_with("presence.") && msg["room"] == room {
            return (
                kind.to_owned(),
                msg["payload"]["user"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
}

fn present(list: &Value) -> Vec<(String, u64)> {
    list.as_array()
        .expect("presence list")
        .iter()
        .map(|p| {
            (
                p["user"].as_str().expect("user").to_owned(),
                p["connections"].as_u64().expect("connections"),
            )
        })
        .collect()
}

#[actix_rt::test]
async fn presence_is_cluster_wide_and_a_killed_nodes_users_leave() {
    let Some(mut cluster) = Cluster::start(3, "").await else {
        return;
    };
    let room = "chat:p";
    let (mut alice, _) = cluster.nodes[0].client("alice").await;
    let joined = alice.join(room).await;
    assert_eq!(
        present(&joined["payload"]["presence"]),
        [("alice".into(), 1)]
    );

    // Bob arrives on node B: Alice, on node A, hears of it; Bob sees both.
    let (mut bob, bob_established) = cluster.nodes[1].client("bob").await;
    let joined = bob.join(room).await;
    assert_eq!(
        present(&joined["payload"]["presence"]),
        [("alice".into(), 1), ("bob".into(), 1)]
    );
    assert_eq!(
        next_presence(&mut alice, room).await,
        ("presence.join".into(), "bob".into())
    );

    // A second connection of Alice, on node C, is not news; node C's API counts both.
    let (mut alice2, _) = cluster.nodes[2].client("alice").await;
    alice2.join(room).await;
    let (status, body) = cluster.nodes[2]
        .api("GET", &format!("/api/rooms/{room}/presence"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        present(&body["presence"]),
        [("alice".into(), 2), ("bob".into(), 1)]
    );
    alice2.close().await;

    // Node B dies. Its users leave presence once their entries expire, announced by a node
    // that is still up; Bob's departure is the next presence event Alice sees (her second
    // connection's departure was not news).
    bob.publish(room, "before-kill", json!({ "n": 0 })).await;
    let seq_seen = read_messages(&mut bob, room, 1).await[0].0;
    cluster.nodes[1].process.kill();
    drop(bob);
    assert_eq!(
        next_presence(&mut alice, room).await,
        ("presence.leave".into(), "bob".into())
    );
    let (_, body) = cluster.nodes[0]
        .api("GET", &format!("/api/rooms/{room}/presence"), None)
        .await;
    assert_eq!(present(&body["presence"]), [("alice".into(), 1)]);

    // The other nodes keep serving; Bob reconnects to node C and resumes without a gap.
    let (status, body) = cluster.nodes[2]
        .api(
            "POST",
            &format!("/api/rooms/{room}/publish"),
            Some(json!({ "payload": { "n": 1 } })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (mut bob, _) = cluster.nodes[2].client("bob").await;
    let previous = bob_established["payload"]["connection_id"]
        .as_str()
        .expect("connection id");
    let (replayed, resumed) = resume(&mut bob, previous, json!({ room: seq_seen }), room).await;
    assert_eq!(
        resumed["payload"]["rooms"][room]["recovered"], true,
        "{resumed}"
    );
    assert_eq!(replayed, [(seq_seen + 1, json!(1))]);
    assert_eq!(
        next_presence(&mut alice, room).await,
        ("presence.join".into(), "bob".into())
    );
}

#[actix_rt::test]
async fn the_same_message_id_through_two_nodes_is_delivered_once() {
    let Some(cluster) = Cluster::start(2, "").await else {
        return;
    };
    let (mut subscriber, _) = cluster.nodes[1].client("sub").await;
    subscriber.join("once").await;
    let publish = json!({ "payload": { "n": 1 }, "id": "order-17" });
    let (_, first) = cluster.nodes[0]
        .api("POST", "/api/rooms/once/publish", Some(publish.clone()))
        .await;
    let (_, again) = cluster.nodes[1]
        .api("POST", "/api/rooms/once/publish", Some(publish))
        .await;
    assert_eq!(first["duplicate"], false, "{first}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["seq"], first["seq"]);
    // A user's retry through another node is a duplicate too.
    let (mut user_a, _) = cluster.nodes[0].client("dana").await;
    user_a.join("once").await;
    let (mut user_b, _) = cluster.nodes[1].client("dana").await;
    user_b.join("once").await;
    user_a.publish("once", "dana-1", json!({ "n": 2 })).await;
    assert_eq!(
        user_a.skip_until("ack").await["payload"]["duplicate"],
        Value::Null
    );
    user_b.publish("once", "dana-1", json!({ "n": 2 })).await;
    assert_eq!(user_b.skip_until("ack").await["payload"]["duplicate"], true);
    // A marker after both: the subscriber got each message once before it.
    let (_, marker) = cluster.nodes[0]
        .api(
            "POST",
            "/api/rooms/once/publish",
            Some(json!({ "payload": { "n": 3 } })),
        )
        .await;
    assert_eq!(marker["seq"], 3, "{marker}");
    assert_eq!(
        read_messages(&mut subscriber, "once", 3).await,
        [(1, json!(1)), (2, json!(2)), (3, json!(3))]
    );
}

#[actix_rt::test]
async fn a_redis_restart_mid_stream_gives_clear_errors_and_loses_nothing_acknowledged() {
    let Some(mut cluster) = Cluster::start_persistent(3, "").await else {
        return;
    };
    let room = "restart";
    let (mut subscriber, _) = cluster.nodes[2].client("sub").await;
    subscriber.join(room).await;
    let (mut member, _) = cluster.nodes[0].client("member").await;
    member.join(room).await;
    let path = format!("/api/rooms/{room}/publish");
    let publish = |n: u64| json!({ "payload": { "n": n }, "id": format!("m{n}") });
    for n in 0..10 {
        let (status, body) = cluster.nodes[0].api("POST", &path, Some(publish(n))).await;
        assert_eq!(status, 200, "{body}");
    }

    cluster.redis.stop();
    // While Redis is down: HTTP 503 `unavailable`, a WebSocket publish gets system.error
    // `unavailable` and the session stays, /readyz says why.
    let (status, body) = cluster.nodes[0].api("POST", &path, Some(publish(10))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    member
        .publish(room, "ws-during-outage", json!({ "n": -1 }))
        .await;
    let error = member.skip_until("system.error").await;
    assert_eq!(error["payload"]["code"], "unavailable", "{error}");
    cluster.nodes[0].wait_readyz(503).await;
    let metrics = cluster.nodes[0].text("/metrics").await;
    assert!(metrics.contains("switchboard_engine_up 0"), "{metrics}");
    let log = cluster.nodes[0].process.log();
    assert!(log.contains("Redis connection lost"), "{log}");

    cluster.redis.restart();
    for node in &cluster.nodes {
        node.wait_readyz(200).await;
    }
    // Message 10 again (its id makes a retry safe), then the rest.
    for n in 10..20 {
        let (status, body) = cluster.nodes[0].api("POST", &path, Some(publish(n))).await;
        assert_eq!(status, 200, "{body}");
    }
    let expected: Vec<(u64, Value)> = (0..20).map(|n| (n + 1, json!(n))).collect();
    assert_eq!(read_messages(&mut subscriber, room, 20).await, expected);
    let (status, body) = cluster.nodes[1]
        .api("GET", &format!("/api/rooms/{room}/history"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["seq"], 20, "the seq survived the restart");
    let metrics = cluster.nodes[0].text("/metrics").await;
    assert!(metrics.contains("switchboard_engine_up 1"), "{metrics}");
    assert!(
        !metrics.contains("switchboard_engine_reconnects_total 0"),
        "{metrics}"
    );
}

#[actix_rt::test]
async fn every_api_route_answers_the_same_from_any_node() {
    let Some(cluster) = Cluster::start(3, "").await else {
        return;
    };
    let (mut alice, established) = cluster.nodes[0].client("alice").await;
    alice.join("chat:x").await;
    let alice_id = established["payload"]["connection_id"]
        .as_str()
        .expect("connection id")
        .to_owned();
    let (mut bob, _) = cluster.nodes[1].client("bob").await;
    bob.join("chat:x").await;

    // Node C lists the rooms of A and B (each node reports its rooms every second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let rooms = loop {
        let (status, body) = cluster.nodes[2].api("GET", "/api/rooms", None).await;
        assert_eq!(status, 200, "{body}");
        let rooms: BTreeMap<String, u64> = body["rooms"]
            .as_array()
            .expect("rooms")
            .iter()
            .map(|r| {
                (
                    r["room"].as_str().expect("room").to_owned(),
                    r["members"].as_u64().expect("members"),
                )
            })
            .collect();
        if rooms.get("chat:x") == Some(&2) && rooms.get("broadcast") == Some(&2) {
            break rooms;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rooms seen from node C: {rooms:?}"
        );
        // Polling another process's periodic report; there is no event to wait on.
        actix_rt::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(rooms.get("user:alice"), Some(&1), "{rooms:?}");

    // A user's personal room and the broadcast room, from nodes the users are not on.
    let (status, body) = cluster.nodes[2]
        .api(
            "POST",
            "/api/users/alice/send",
            Some(json!({ "payload": { "n": 1 } })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        read_messages(&mut alice, "user:alice", 1).await,
        [(1, json!(1))]
    );
    let (status, body) = cluster.nodes[1]
        .api(
            "POST",
            "/api/broadcast",
            Some(json!({ "payload": { "n": 2 } })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        read_messages(&mut alice, "broadcast", 1).await,
        [(1, json!(2))]
    );
    assert_eq!(
        read_messages(&mut bob, "broadcast", 1).await,
        [(1, json!(2))]
    );

    // Disconnect Alice (on node A) through node C; an unknown session is 404 everywhere.
    let (status, body) = cluster.nodes[2]
        .api(
            "DELETE",
            &format!("/api/sessions/{alice_id}?reason=bye"),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let closed = alice.expect_close().await;
    assert_eq!((closed.code, closed.reason.as_str()), (Some(1008), "bye"));
    let (status, _) = cluster.nodes[1]
        .api("DELETE", "/api/sessions/no-such-session", None)
        .await;
    assert_eq!(status, 404);
}

fn lists_endpoint(body: &Value, id: &str) -> bool {
    body["endpoints"]
        .as_array()
        .is_some_and(|all| all.iter().any(|e| e["id"] == id))
}

#[actix_rt::test]
async fn webhook_endpoints_are_shared_and_each_event_is_sent_once() {
    let Some(cluster) = Cluster::start(2, "").await else {
        return;
    };
    let receiver = Receiver::start();
    // Registered on node A; node B gets it through the shared store.
    let (status, created) = cluster.nodes[0]
        .api(
            "POST",
            "/api/webhooks",
            Some(json!({
                "url": receiver.url("/hook"),
                "events": ["room.message", "presence.join"],
                "rooms": ["chat:hook*"],
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    cluster.nodes[1]
        .api_until("/api/webhooks", |b| lists_endpoint(b, &id))
        .await;

    // A message published on node B and a presence arrival on node A: each sent once, by
    // the node that raised it.
    let (status, body) = cluster.nodes[1]
        .api(
            "POST",
            "/api/rooms/chat:hook1/publish",
            Some(json!({ "payload": { "n": 1 } })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (mut alice, _) = cluster.nodes[0].client("alice").await;
    alice.join("chat:hook1").await;
    let (status, body) = cluster.nodes[0]
        .api(
            "POST",
            "/api/rooms/chat:hook1/publish",
            Some(json!({ "payload": { "n": 2 } })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got = receiver.wait_for(3).await;
    let mut kinds: Vec<String> = got.iter().map(|r| r.event_type()).collect();
    kinds.sort();
    assert_eq!(kinds, ["presence.join", "room.message", "room.message"]);
    let mut ids: Vec<&str> = got.iter().map(|r| r.webhook_id()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three distinct events");

    // Changed on node B, deleted on node A: both nodes agree.
    let (status, body) = cluster.nodes[1]
        .api(
            "PATCH",
            &format!("/api/webhooks/{id}"),
            Some(json!({ "enabled": false })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    cluster.nodes[0]
        .api_until(&format!("/api/webhooks/{id}"), |b| b["enabled"] == false)
        .await;
    let (status, _) = cluster.nodes[0]
        .api("DELETE", &format!("/api/webhooks/{id}"), None)
        .await;
    assert_eq!(status, 204);
    cluster.nodes[1]
        .api_until("/api/webhooks", |b| b["endpoints"] == json!([]))
        .await;
    assert_eq!(receiver.count(), 3, "nothing sent twice");
}

#[actix_rt::test]
async fn a_redis_that_lost_its_data_starts_rooms_over_and_says_so() {
    let Some(mut cluster) = Cluster::start(2, "").await else {
        return;
    };
    let room = "amnesia";
    let (mut subscriber, _) = cluster.nodes[1].client("sub").await;
    subscriber.join(room).await;
    let path = format!("/api/rooms/{room}/publish");
    for n in 0..5 {
        let (status, body) = cluster.nodes[0]
            .api("POST", &path, Some(json!({ "payload": { "n": n } })))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(read_messages(&mut subscriber, room, 5).await.len(), 5);
    // Restarted empty (no persistence): the room's seq starts over, and the subscriber,
    // which had seq 5, still gets the new messages.
    cluster.redis.restart();
    for node in &cluster.nodes {
        node.wait_readyz(200).await;
    }
    let (status, body) = cluster.nodes[0]
        .api("POST", &path, Some(json!({ "payload": { "n": 100 } })))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["seq"], 1, "{body}");
    assert_eq!(
        read_messages(&mut subscriber, room, 1).await,
        [(1, json!(100))]
    );
    let metrics = cluster.nodes[1].text("/metrics").await;
    assert!(
        !metrics.contains("switchboard_feed_gaps_lost_total 0"),
        "the loss is counted: {metrics}"
    );
}

#[actix_rt::test]
async fn a_redis_that_hangs_is_noticed_and_left_until_it_answers_again() {
    let Some(cluster) = Cluster::start(1, "").await else {
        return;
    };
    let node = &cluster.nodes[0];
    let (mut subscriber, _) = node.client("sub").await;
    subscriber.join("hang").await;
    let path = "/api/rooms/hang/publish";
    // Frozen: connections stay open, nothing answers. Each publish fails after
    // redis.command_timeout; a few in a row make the node drop its connections and say it
    // is not ready.
    cluster.redis.freeze();
    for n in 0..3 {
        let (status, body) = node
            .api("POST", path, Some(json!({ "payload": { "n": n } })))
            .await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
    }
    node.wait_readyz(503).await;
    cluster.redis.thaw();
    node.wait_readyz(200).await;
    let (status, body) = node
        .api(
            "POST",
            path,
            Some(json!({ "payload": { "n": 9 }, "id": "after" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Whatever the frozen server took before freezing shows up too; the new message last.
    let got = loop {
        let msg = subscriber.recv().await;
        if msg["type"] == "room.message" && msg["payload"]["n"] == 9 {
            break msg;
        }
    };
    assert_eq!(got["room"], "hang");
}
