//! The Redis engine: three broker processes over one `redis-server` of the test's own act
//! as one broker. Skipped (with a message) without `redis-server`, unless
//! `SWITCHBOARD_REQUIRE_REDIS=1`.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/process.rs"]
mod process;
#[path = "support/redis.rs"]
mod redis_server;
mod support;

use std::collections::BTreeMap;

use cluster::Cluster;
use serde_json::{json, Value};
use support::Client;

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
    let (mut publisher, _) = cluster.nodes[0].client("pub").await;
    publisher.join("chat:one").await;
    // Over WebSocket on node A: acknowledged with the seq Redis allocated. The publisher
    // gets its own messages through Redis too, before or after each ack.
    let mut own = Vec::new();
    for n in 0..5 {
        publisher
            .publish("chat:one", &format!("ws-{n}"), json!({ "n": n }))
            .await;
        loop {
            let msg = publisher.recv().await;
            if msg["type"] == "ack" {
                assert_eq!(msg["seq"], n + 1, "{msg}");
                break;
            }
            if msg["type"] == "room.message" {
                own.push((
                    msg["seq"].as_u64().expect("seq"),
                    msg["payload"]["n"].clone(),
                ));
            }
        }
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
    // The publisher got its own messages like everyone else.
    let rest = 10 - own.len();
    own.extend(read_messages(&mut publisher, "chat:one", rest).await);
    assert_eq!(own, expected);
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
}
