//! Durability of accepted webhook events across `kill -9`, with the real binary.
//!
//! The broker (`switchboard serve --config F`, a file outbox) accepts 50 events for an endpoint
//! whose receiver answers 500, so the first one is being retried. The process is killed with
//! SIGKILL mid-retry, the receiver turns healthy, and a second process on the same config and
//! outbox must deliver all 50: each one at least once, first deliveries in order, duplicates
//! only as repeats of the same `webhook-id` with the same bytes.

use crate::support::{process, receiver};

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use process::{free_port, BrokerProcess};
use receiver::{Api, Receiver, Recorded, Reply};
use serde_json::json;
use switchboard::webhooks::signing::WebhookSecret;

const KEY: &str = "durability-test-api-key-0123456789";
const HS256_SECRET: &str = "durability-test-secret-0123456789";
/// Events published before the kill.
const N: u64 = 50;

fn seq_of(r: &Recorded) -> u64 {
    r.json()["data"]["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no data.seq in {}", r.summary()))
}

#[cfg(unix)]
#[actix_rt::test]
async fn accepted_events_survive_kill_9_and_are_delivered_after_restart() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let rx = Receiver::start_with(Reply::status(500));
    let secret = WebhookSecret::generate();
    let port = free_port();
    let outbox = dir.path().join("outbox.db");
    let config_path = dir.path().join("switchboard.toml");
    let toml = format!(
        r#"[server]
bind = "127.0.0.1:{port}"
workers = 1
shutdown_timeout = "2s"

[auth]
hs256_secret = "{HS256_SECRET}"

[api]
keys = ["{KEY}"]
requests_per_second = 0

[webhooks]
mode = "development"
allow = ["127.0.0.1/32"]
outbox_path = {outbox}
backoff = ["200ms"]
max_retries = 50
jitter = 0.0
rate_limit_per_s = 50

[webhooks.endpoints.durable]
url = "{url}"
secret = "{secret}"
events = ["room.message"]
"#,
        outbox = toml::Value::String(outbox.to_string_lossy().into_owned()),
        url = rx.url("/durable"),
        secret = secret.expose_secret(),
    );
    std::fs::write(&config_path, toml).expect("write the config");
    let base = format!("http://127.0.0.1:{port}");
    let api = Api::new(base.clone(), KEY);

    let mut first = BrokerProcess::spawn(&config_path, dir.path().join("first.log"));
    first.wait_ready(&base).await;
    for n in 1..=N {
        // 200 = committed to the outbox for every matching endpoint.
        let published = api
            .publish("orders:1", Some(&format!("m{n}")), json!({"n": n}))
            .await;
        assert_eq!(published["seq"], n, "{published}");
    }
    // Retries in progress: the head event has failed a few times.
    rx.wait_until("3 failed attempts", Duration::from_secs(10), |r| {
        (r.len() >= 3).then_some(())
    })
    .await;
    first.kill();
    let before_kill = rx.requests();
    assert!(
        before_kill
            .iter()
            .all(|r| r.status == 500 && seq_of(r) == 1),
        "only the head event is attempted while it fails:\n{}",
        receiver::summarize(&before_kill)
    );

    rx.set_default(Reply::ok());
    let restarted_at = Instant::now();
    let mut second = BrokerProcess::spawn(&config_path, dir.path().join("second.log"));
    second.wait_ready(&base).await;
    let all = rx
        .wait_until(
            &format!("all {N} events answered 200"),
            Duration::from_secs(60),
            |reqs| {
                let done: BTreeSet<u64> = reqs
                    .iter()
                    .filter(|r| r.status == 200 && r.answered_at.is_some())
                    .map(seq_of)
                    .collect();
                (done == (1..=N).collect()).then(|| reqs.to_vec())
            },
        )
        .await;
    let drain = restarted_at.elapsed();
    drop(second);

    // Every request is signed with the configured secret, and each webhook-id always carries
    // the same bytes, which belong to exactly one event.
    let mut bodies: BTreeMap<&str, &[u8]> = BTreeMap::new();
    let mut ids_by_seq: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    for r in &all {
        assert_eq!(r.verify(&secret), Ok(()), "{}", r.summary());
        assert_eq!(r.path, "/durable");
        let body = bodies.entry(r.webhook_id()).or_insert(&r.body);
        assert_eq!(*body, &r.body[..], "{} changed its body", r.webhook_id());
        let event = r.json();
        let seq = seq_of(r);
        assert_eq!(event["data"]["id"], format!("m{seq}"));
        assert_eq!(event["data"]["payload"], json!({"n": seq}));
        ids_by_seq.entry(seq).or_default().insert(r.webhook_id());
    }
    for (seq, ids) in &ids_by_seq {
        assert_eq!(
            ids.len(),
            1,
            "event {seq} was sent under several webhook-ids: {ids:?}"
        );
    }

    // First 200s in arrival order: every event once, in order.
    let mut seen = BTreeSet::new();
    let first_deliveries: Vec<u64> = all
        .iter()
        .filter(|r| r.status == 200 && seen.insert(r.webhook_id()))
        .map(seq_of)
        .collect();
    assert_eq!(first_deliveries, (1..=N).collect::<Vec<_>>());

    let answered_200 = all.iter().filter(|r| r.status == 200).count();
    let duplicates = answered_200 - N as usize;
    eprintln!(
        "kill -9 durability: {} attempts before the kill (all 500, event 1), {} requests \
         after the restart ({answered_200} answered 200), {duplicates} duplicate deliveries, \
         all {N} delivered {drain:?} after the restart began",
        before_kill.len(),
        all.len() - before_kill.len(),
    );
}
