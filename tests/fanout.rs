//! Fan-out at scale: 1,000 concurrent clients in one room each receive every one of 100
//! messages, in order.

use crate::support;

use std::time::Instant;

use futures_util::future::join_all;
use serde_json::json;
use support::{test_config, Client, TestBroker};

const CLIENTS: usize = 1_000;
const MESSAGES: u64 = 100;
const BATCH: usize = 100;

#[actix_rt::test]
async fn a_thousand_clients_each_receive_every_message_in_order() {
    let broker = TestBroker::start(test_config());
    // One user per client: a user may only have limits.max_sessions_per_user sessions.
    let urls: Vec<String> = (0..CLIENTS)
        .map(|i| broker.ws_url(Some(&support::token(&format!("fan{i}"), &["fanout"]))))
        .collect();

    let started = Instant::now();
    let mut clients: Vec<Client> = Vec::with_capacity(CLIENTS);
    for batch in urls.chunks(BATCH) {
        let batch = join_all(batch.iter().map(|url| async move {
            let mut c = Client::connect(url).await;
            c.recv_type("system.connection.established").await;
            c.join("fanout").await;
            c
        }))
        .await;
        clients.extend(batch);
    }
    let connected = started.elapsed();

    let mut publisher = broker.client("publisher", &["fanout"]).await;
    publisher.join("fanout").await;
    let publish_started = Instant::now();
    for i in 1..=MESSAGES {
        publisher
            .publish("fanout", &format!("m{i}"), json!({"n": i}))
            .await;
    }
    let received = join_all(clients.iter_mut().map(|c| async move {
        for seq in 1..=MESSAGES {
            let msg = c.recv_type("room.message").await;
            assert_eq!(msg["seq"], seq);
            assert_eq!(msg["payload"]["n"], seq);
        }
        MESSAGES
    }))
    .await;
    let delivered: u64 = received.iter().sum();
    assert_eq!(delivered, CLIENTS as u64 * MESSAGES);
    eprintln!(
        "fanout: {CLIENTS} clients connected+joined in {connected:?}; {delivered} deliveries in {:?}",
        publish_started.elapsed()
    );
}
