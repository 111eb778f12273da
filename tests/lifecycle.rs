//! Heartbeats, stale-session cleanup and graceful shutdown, with short test intervals.

mod support;

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
