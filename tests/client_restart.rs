//! The Rust client (`switchboard-client`) across a `kill -9` of the real binary, mid-stream.
//!
//! A publisher publishes a numbered stream and a subscriber reads it while the broker process
//! is SIGKILLed and a new one is started on the same port. The memory engine loses the room,
//! so the subscriber must be told (a `Gap` with `reset`), never shown a duplicate or an
//! out-of-order seq, and must then read the new room from seq 1; the publisher's publish that
//! was in flight at the kill is resent after the reconnect and acknowledged once.

use crate::support::process;

use std::time::Duration;

use futures_util::StreamExt;
use process::{free_port, BrokerProcess};
use serde_json::json;
use switchboard_client::{Backoff, Client, Options, State, Subscription, SubscriptionEvent};

const SECRET: &str = "client-restart-secret-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(20);
/// Messages published before the kill, and after the restart.
const BEFORE: u64 = 200;
const AFTER: u64 = 50;

fn options(sub: &str) -> Options {
    let token = switchboard::auth::mint_hs256(
        SECRET,
        sub,
        vec!["stream:*".into()],
        None,
        Duration::from_secs(600),
    )
    .expect("sign a token");
    Options {
        connect_timeout: Duration::from_secs(2),
        reconnect: Some(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            max_attempts: Some(500),
            jitter: 0.5,
        }),
        ..Options::with_token(token)
    }
}

async fn next_event(stream: &mut Subscription) -> SubscriptionEvent {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an event in time")
        .expect("the subscription is open")
}

#[cfg(unix)]
#[actix_rt::test]
async fn a_kill_9_mid_stream_is_reported_as_a_gap_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = free_port();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
bind = "127.0.0.1:{port}"
workers = 1

[auth]
hs256_secret = "{SECRET}"

[webhooks]
outbox_path = ""

[tasks]
sqlite_path = ""

[limits]
messages_per_second = 100000
burst = 100000

# Long enough for the run, short enough that the rooms are gone within the final wait for
# an idle broker.
[history]
ttl = "5s"

[resume]
ttl = "5s"
"#
        ),
    )
    .expect("write the config");
    let base = format!("http://127.0.0.1:{port}");
    let url = format!("ws://127.0.0.1:{port}/ws");

    let mut first = BrokerProcess::spawn(&config, dir.path().join("first.log"));
    first.wait_ready(&base).await;
    let subscriber = Client::connect(&url, options("reader"))
        .await
        .expect("the subscriber connects");
    let mut stream = subscriber.subscribe_from("stream:1", 0).expect("subscribe");
    let publisher = Client::connect(&url, options("writer"))
        .await
        .expect("the publisher connects");
    let _membership = publisher
        .subscribe("stream:1")
        .expect("the publisher joins");

    for n in 1..=BEFORE {
        let ack = publisher
            .publish_with_id("stream:1", &format!("m{n}"), json!({ "n": n }))
            .await
            .expect("an ack");
        assert_eq!(ack.seq, n);
    }
    // Read half of the stream, then kill the broker while the rest is still being written
    // to the subscriber's socket (or sits in its buffers).
    for seq in 1..=BEFORE / 2 {
        match next_event(&mut stream).await {
            SubscriptionEvent::Message(m) => assert_eq!(m.seq, seq),
            other => panic!("expected message {seq}, got {other:?}"),
        }
    }
    let mut publisher_states = publisher.state_changes();
    // In flight at the kill: sent to a broker that dies, or queued while none runs.
    let in_flight = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            publisher
                .publish_with_id("stream:1", "in-flight", json!({ "n": "in-flight" }))
                .await
        })
    };
    first.kill();
    wait_for(&mut publisher_states, |s| {
        matches!(s, State::Reconnecting { .. })
    })
    .await;

    let mut second = BrokerProcess::spawn(&config, dir.path().join("second.log"));
    second.wait_ready(&base).await;
    let in_flight = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("the in-flight publish settles in time")
        .expect("the task runs")
        .expect("the in-flight publish is acknowledged after the restart");
    for n in 1..=AFTER {
        publisher
            .publish_with_id("stream:1", &format!("after-{n}"), json!({ "n": n }))
            .await
            .expect("an ack after the restart");
    }

    // Before the gap: the rest of the first room's stream, in order, possibly cut short by
    // the kill. Then exactly one gap saying the room restarted, then the new room in order.
    let mut expected = BEFORE / 2 + 1;
    let gap = loop {
        match next_event(&mut stream).await {
            SubscriptionEvent::Message(m) => {
                assert_eq!(m.seq, expected, "in order, no duplicate, before the kill");
                expected += 1;
            }
            SubscriptionEvent::Gap(gap) => break gap,
            other => panic!("expected a message or the gap, got {other:?}"),
        }
    };
    assert!(gap.reset, "the memory engine lost the room: {gap:?}");
    assert_eq!(gap.since_seq, expected - 1);
    let mut new_room = Vec::new();
    while new_room.len() < (AFTER + 1) as usize {
        match next_event(&mut stream).await {
            SubscriptionEvent::Message(m) => {
                assert_eq!(m.seq, new_room.len() as u64 + 1, "the new room, in order");
                new_room.push(m);
            }
            other => panic!("expected a message of the new room, got {other:?}"),
        }
    }
    let ids: Vec<&str> = new_room.iter().map(|m| m.id.as_str()).collect();
    let in_flight_pos = ids
        .iter()
        .position(|id| *id == "in-flight")
        .expect("the in-flight publish is delivered in the new room");
    assert_eq!(new_room[in_flight_pos].seq, in_flight.seq);
    let after: Vec<String> = (1..=AFTER).map(|n| format!("after-{n}")).collect();
    let rest: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| *id != "in-flight")
        .collect();
    assert_eq!(rest, after, "every later publish once, in order");
    assert!(subscriber.stats().reconnects >= 1);

    drop(stream);
    drop(_membership);
    subscriber.close().await;
    publisher.close().await;
    wait_idle(&base).await;
}

async fn wait_for(states: &mut switchboard_client::StateStream, done: impl Fn(&State) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let state = tokio::time::timeout_at(deadline, states.next())
            .await
            .expect("a state change in time")
            .expect("the state stream is open");
        if done(&state) {
            return;
        }
    }
}

/// Polls `/healthz` (bounded) until the broker has no session and no room left.
async fn wait_idle(base: &str) {
    let client = awc::Client::default();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut resp = client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("healthz");
        let health: serde_json::Value = resp.json().await.expect("a JSON body");
        if health["sessions"] == 0 && health["rooms"] == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the broker is not idle: {health}"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}
