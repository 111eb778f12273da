//! Heartbeats, stale-session cleanup and graceful shutdown, with short test intervals.

use crate::support;

use std::time::Duration;

use serde_json::json;
use support::{test_config, TestBroker};
use switchboard::protocol::close;

fn fast_heartbeat() -> switchboard::Config {
    let mut config = test_config();
    config.heartbeat.interval = Duration::from_millis(100);
    config.heartbeat.timeout = Duration::from_millis(350);
    config
}

#[actix_rt::test]
async fn the_broker_pings_and_a_client_that_answers_stays_connected() {
    let broker = TestBroker::start(fast_heartbeat());
    let mut c = broker.client("a", &["r"]).await;
    // Answer five pings: that spans well over the 350 ms timeout.
    for _ in 0..5 {
        let ping = c.recv().await;
        assert_eq!(ping["type"], "system.ping");
        c.send_json(json!({"type": "system.pong"})).await;
    }
    c.join("r").await;
}

#[actix_rt::test]
async fn a_silent_client_is_closed_with_4010() {
    let broker = TestBroker::start(fast_heartbeat());
    let mut c = broker.client("a", &[]).await;
    let closed = c.expect_close().await;
    assert_eq!(closed.code, Some(close::HEARTBEAT_TIMEOUT));
    assert_eq!(closed.reason, "heartbeat timeout");
}

#[actix_rt::test]
async fn graceful_shutdown_sends_close_notice_and_1012_to_every_client() {
    let broker = TestBroker::start(test_config());
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = broker.client(&format!("u{i}"), &["r"]).await;
        c.join("r").await;
        clients.push(c);
    }
    let shutdown = actix_rt::spawn(broker.shutdown());
    for c in &mut clients {
        let notice = c.recv_type("system.connection.close").await;
        assert_eq!(notice["payload"]["reason"], "server_shutdown");
        let closed = c.expect_close().await;
        assert_eq!(closed.code, Some(close::SERVICE_RESTART));
    }
    let report = shutdown.await.expect("shutdown task");
    assert_eq!(report.sessions, 5);
    assert!(report.drained, "every session closed before the deadline");
}

#[actix_rt::test]
async fn shutdown_does_not_wait_past_its_deadline_for_unresponsive_clients() {
    let mut config = test_config();
    config.server.shutdown_timeout = Duration::from_millis(300);
    let broker = TestBroker::start(config);
    // This client never reads, so it never answers the close handshake.
    let _silent = broker.client("mute", &[]).await;
    let started = std::time::Instant::now();
    let report = broker.shutdown().await;
    assert_eq!(report.sessions, 1);
    // 300 ms for sessions, then at most 1 s for actix-web's own stop.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

/// A room nobody is in retires `history_ttl` after its *last* message: a later publish moves
/// the deadline (one timer re-armed, not one timer per publish).
#[actix_rt::test]
async fn an_empty_room_retires_history_ttl_after_its_last_message() {
    const KEY: &str = "lifecycle-test-api-key-0123";
    let ttl = Duration::from_millis(400);
    let mut config = test_config();
    config.api.keys = vec![KEY.into()];
    config.api.requests_per_second = 0;
    config.namespaces.insert(
        "brief".into(),
        switchboard::config::NamespaceConfig {
            history_ttl: Some(ttl),
            ..Default::default()
        },
    );
    let broker = TestBroker::start(config);
    let http = awc::Client::default();
    let publish = || async {
        let resp = http
            .post(broker.http_url("/api/rooms/brief:1/publish"))
            .bearer_auth(KEY)
            .send_json(&json!({"payload": {}}))
            .await
            .expect("publish");
        assert_eq!(resp.status(), 200);
    };
    let listed = || async {
        let mut resp = http
            .get(broker.http_url("/api/rooms"))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("list rooms");
        let body: serde_json::Value = resp.json().await.expect("JSON");
        body["rooms"]
            .as_array()
            .is_some_and(|rooms| rooms.iter().any(|r| r["room"] == "brief:1"))
    };
    publish().await;
    // Not synchronisation: the second publish must come well after the first.
    actix_rt::time::sleep(ttl * 5 / 8).await;
    publish().await;
    let last = std::time::Instant::now();
    assert!(listed().await, "the room is up after its last publish");
    let deadline = last + Duration::from_secs(10);
    while listed().await {
        assert!(
            std::time::Instant::now() < deadline,
            "the empty room never retired"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let retired_after = last.elapsed();
    assert!(
        retired_after >= ttl,
        "retired {retired_after:?} after the last message, before history_ttl {ttl:?}"
    );
}
