//! Webhooks end to end: a real broker (`TestBroker`) delivers to a real HTTP receiver
//! (`support/receiver.rs`) on loopback. Signatures (ours and the Standard Webhooks reference
//! verifier), the body, retries (5xx, 429 + Retry-After, timeouts), the dead-letter queue and
//! replay, rate limiting and ordering, event and room filters, the SSRF guard on the API,
//! endpoint CRUD, auto-disable, the test ping and graceful shutdown.
//!
//! Synchronisation: waits are on what the receiver records (they wake on each arrival).
//! Broker state is read through the API once a later delivery has arrived: deliveries to one
//! endpoint are strictly ordered with one in flight, so event N+1 reaching the receiver means
//! the outcome of event N is already committed. Only state with no such witness (auto-disable)
//! is polled, with a bound.

use crate::support::{self, receiver, reference};

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use receiver::{is_prefixed_hex32, poll_until, sample, unix_now, Api, Receiver, Recorded, Reply};
use reference::reference_verify;
use serde_json::{json, Value};
use support::{test_config, token, Client, TestBroker};
use switchboard::config::{Config, NamespaceConfig, WebhookEndpointConfig, WebhookMode};
use switchboard::webhooks::outbox::{DeliveryState, Outbox};
use switchboard::webhooks::signing::{VerifyError, WebhookSecret};

const KEY: &str = "webhook-test-api-key-0123456789";

/// Webhooks in development mode with 127.0.0.1 allowlisted, an in-memory outbox, fast
/// retries without jitter, presence on in `conversation:*` and `lobby:*`.
fn config() -> Config {
    let mut c = test_config();
    c.api.keys = vec![KEY.into()];
    c.api.requests_per_second = 0;
    for ns in ["conversation", "lobby"] {
        c.namespaces.insert(
            ns.into(),
            NamespaceConfig {
                presence: true,
                ..NamespaceConfig::default()
            },
        );
    }
    let w = &mut c.webhooks;
    w.mode = WebhookMode::Development;
    w.allow = vec!["127.0.0.1/32".parse().expect("a CIDR")];
    w.outbox_path = String::new();
    w.timeout = Duration::from_secs(5);
    w.backoff = vec![Duration::from_millis(50)];
    w.jitter = 0.0;
    w.rate_limit_per_s = 100;
    c
}

fn api_of(broker: &TestBroker) -> Api {
    Api::new(broker.http_url(""), KEY)
}

/// An endpoint registered through `POST /api/webhooks`.
struct Endpoint {
    id: String,
    secret: WebhookSecret,
}

async fn register(api: &Api, body: Value) -> Endpoint {
    let created = api.expect(201, "POST", "/api/webhooks", Some(body)).await;
    let id = created["id"].as_str().expect("an id").to_owned();
    let secret = WebhookSecret::parse(created["secret"].as_str().expect("a secret"))
        .expect("a whsec_ secret");
    Endpoint { id, secret }
}

async fn register_for(api: &Api, rx: &Receiver, events: &[&str]) -> Endpoint {
    register(api, json!({"url": rx.url("/hook"), "events": events})).await
}

/// `GET /api/webhooks/{id}/deliveries`, the delivery with id `delivery_id`.
async fn delivery(api: &Api, endpoint: &str, delivery_id: &str) -> Value {
    let list = api
        .expect(
            200,
            "GET",
            &format!("/api/webhooks/{endpoint}/deliveries?limit=100"),
            None,
        )
        .await;
    list["deliveries"]
        .as_array()
        .expect("a deliveries array")
        .iter()
        .find(|d| d["id"] == delivery_id)
        .cloned()
        .unwrap_or_else(|| panic!("delivery {delivery_id} not listed: {list}"))
}

fn attempt_statuses(delivery: &Value) -> Vec<Value> {
    delivery["attempt_log"]
        .as_array()
        .unwrap_or_else(|| panic!("no attempt_log: {delivery}"))
        .iter()
        .map(|a| a["status"].clone())
        .collect()
}

/// `data.seq` of a captured room.message.
fn seq_of(r: &Recorded) -> u64 {
    r.json()["data"]["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no data.seq in {}", r.summary()))
}

fn count_id(requests: &[Recorded], webhook_id: &str) -> usize {
    requests
        .iter()
        .filter(|r| r.webhook_id() == webhook_id)
        .count()
}

// ---- tests ----

#[actix_rt::test]
async fn deliveries_are_signed_and_verify_with_ours_and_the_reference_verifier() {
    let broker = TestBroker::start(config());
    let api = api_of(&broker);
    let rx = Receiver::start();
    let ep = register(
        &api,
        json!({"url": rx.url("/hooks/a?x=1"), "events": ["room.message"]}),
    )
    .await;

    let payload = json!({"text": "héllo ✓ \"quoted\" \\ slash", "n": 1});
    let published = api
        .publish("conversation:7", Some("m-1"), payload.clone())
        .await;
    let seq = published["seq"].as_u64().expect("a seq");
    let r = rx.wait_for(1).await.remove(0);
    let now = unix_now();

    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/hooks/a?x=1");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    assert_eq!(
        r.header("user-agent"),
        Some(format!("switchboard-webhooks/{}", env!("CARGO_PKG_VERSION")).as_str())
    );
    assert!(
        is_prefixed_hex32(r.webhook_id(), "msg_"),
        "{}",
        r.webhook_id()
    );
    let ts: u64 = r
        .header("webhook-timestamp")
        .expect("webhook-timestamp")
        .parse()
        .expect("integer seconds");
    assert!(ts.abs_diff(now) <= 5, "webhook-timestamp {ts}, now {now}");

    // Our verifier: Standard Webhooks signature and the body-HMAC header.
    assert_eq!(r.verify(&ep.secret), Ok(()));
    assert!(r
        .header("x-asap-signature")
        .is_some_and(|v| v.starts_with("sha256=")));
    let stranger = WebhookSecret::generate();
    assert_eq!(
        r.verify(&stranger),
        Err(VerifyError::NoMatchingSignature),
        "a different secret must not verify"
    );

    // The body: exactly {id, type, timestamp, data}.
    let body = r.json();
    let keys: BTreeSet<&str> = body
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(["id", "type", "timestamp", "data"]));
    assert!(
        is_prefixed_hex32(body["id"].as_str().unwrap_or(""), "evt_"),
        "{body}"
    );
    assert_eq!(body["type"], "room.message");
    let stamp = body["timestamp"].as_str().expect("a timestamp string");
    assert!(
        stamp.len() == 24 && stamp.ends_with('Z') && &stamp[19..20] == ".",
        "RFC 3339 UTC with milliseconds: {stamp}"
    );
    let at = humantime::parse_rfc3339(stamp).expect("RFC 3339");
    let age = SystemTime::now().duration_since(at).unwrap_or_default();
    assert!(
        age < Duration::from_secs(10),
        "timestamp {stamp} is {age:?} old"
    );
    assert_eq!(
        body["data"],
        json!({"room": "conversation:7", "seq": seq, "id": "m-1", "type": "room.message", "payload": payload}),
        "HTTP publishes carry no user"
    );

    // A client's publish carries its user.
    let mut alice = broker.client("alice", &["conversation:*"]).await;
    alice.join("conversation:7").await;
    alice
        .publish("conversation:7", "m-2", json!({"n": 2}))
        .await;
    // The ack comes once the outbox holds the event.
    let ack = alice.skip_until("ack").await;
    assert_eq!(ack["correlation_id"], "m-2", "{ack}");
    assert_eq!(ack["seq"], seq + 1, "{ack}");
    let r2 = rx.wait_for(2).await.remove(1);
    assert_eq!(r2.verify(&ep.secret), Ok(()));
    let body2 = r2.json();
    assert_eq!(body2["data"]["user"], "alice");
    assert_eq!(body2["data"]["seq"], seq + 1);
    assert_eq!(body2["data"]["id"], "m-2");
    assert_eq!(body2["data"]["payload"], json!({"n": 2}));
    assert_ne!(body2["id"], body["id"], "each event has its own id");
    assert_ne!(r2.webhook_id(), r.webhook_id());

    // The reference verifier accepts the very bytes and headers the receiver got...
    let Some(verdict) = reference_verify(&ep.secret, &r.headers, r.text()) else {
        return;
    };
    assert_eq!(verdict, Ok(()), "reference verifier on {}", r.summary());
    assert_eq!(
        reference_verify(&ep.secret, &r2.headers, r2.text()),
        Some(Ok(()))
    );
    // ...and refuses a tampered body, a foreign webhook-id and another secret.
    let tampered = r.text().replacen("\"m-1\"", "\"m-9\"", 1);
    assert_ne!(tampered, r.text());
    let err = reference_verify(&ep.secret, &r.headers, &tampered)
        .expect("verifier available")
        .expect_err("a tampered body must fail");
    assert!(err.contains("No matching signature"), "{err}");
    let mut other_id = r.headers.clone();
    for (k, v) in &mut other_id {
        if k == "webhook-id" {
            *v = r2.webhook_id().to_owned();
        }
    }
    assert!(reference_verify(&ep.secret, &other_id, r.text())
        .expect("verifier available")
        .is_err());
    assert!(reference_verify(&stranger, &r.headers, r.text())
        .expect("verifier available")
        .is_err());
}

#[actix_rt::test]
async fn a_500_then_200_is_delivered_on_the_first_retry() {
    let broker = TestBroker::start(config());
    let api = api_of(&broker);
    let rx = Receiver::start();
    rx.push([Reply::status(500)]);
    let ep = register_for(&api, &rx, &["room.message"]).await;

    api.publish("conversation:1", None, json!({"n": 1})).await;
    // Queued behind the first: its arrival means the first one's outcome is committed.
    api.publish("conversation:1", None, json!({"n": 2})).await;
    let reqs = rx.wait_for(3).await;

    let first = reqs[0].webhook_id().to_owned();
    assert_eq!(
        reqs[1].webhook_id(),
        first,
        "the retry keeps its webhook-id"
    );
    assert_eq!(reqs[0].body, reqs[1].body, "a retry sends the same bytes");
    assert_eq!(reqs[1].verify(&ep.secret), Ok(()));
    assert_eq!((reqs[0].status, reqs[1].status), (500, 200));
    assert_ne!(reqs[2].webhook_id(), first);
    assert_eq!((seq_of(&reqs[1]), seq_of(&reqs[2])), (1, 2));

    let d = delivery(&api, &ep.id, &first).await;
    assert_eq!(d["state"], "delivered", "{d}");
    assert_eq!(d["attempts"], 2, "{d}");
    assert_eq!(d["event_type"], "room.message");
    assert_eq!(d["last_status"], 200);
    assert!(d["delivered_at"].is_number(), "{d}");
    assert_eq!(attempt_statuses(&d), vec![json!(500), json!(200)], "{d}");
    let attempts: Vec<&Value> = d["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["attempt"])
        .collect();
    assert_eq!(attempts, [&json!(1), &json!(2)]);

    assert_eq!(count_id(&rx.requests(), &first), 2, "exactly two requests");
    assert_eq!(rx.count(), 3);

    // The first two outcomes are recorded (the third attempt waited for them); the third
    // may or may not be yet.
    let text = api.metrics().await;
    let series = |name: &str| format!("{name}{{endpoint=\"{}\"}}", ep.id);
    let value = |name: &str| sample(&text, &series(name)).unwrap_or(-1.0);
    assert_eq!(value("switchboard_webhook_failed_total"), 1.0, "{text}");
    assert!(value("switchboard_webhook_attempts_total") >= 2.0, "{text}");
    assert!(
        value("switchboard_webhook_succeeded_total") >= 1.0,
        "{text}"
    );
    assert!(
        value("switchboard_webhook_latency_seconds_count") >= 2.0,
        "{text}"
    );
    assert!(
        sample(&text, "switchboard_webhook_queue_depth").is_some(),
        "{text}"
    );
}

#[actix_rt::test]
async fn a_400_is_dead_lettered_without_a_retry() {
    let broker = TestBroker::start(config());
    let api = api_of(&broker);
    let rx = Receiver::start();
    rx.push([Reply::status(400).body("{\"error\":\"unknown customer\"}")]);
    let ep = register_for(&api, &rx, &["room.message"]).await;

    api.publish("conversation:1", None, json!({"n": 1})).await;
    api.publish("conversation:1", None, json!({"n": 2})).await;
    let reqs = rx.wait_for(2).await;
    let dead = reqs[0].webhook_id().to_owned();
    assert_eq!(reqs[0].status, 400);
    assert_ne!(
        reqs[1].webhook_id(),
        dead,
        "the second event came next, not a retry:\n{}",
        receiver::summarize(&reqs)
    );
    assert_eq!(seq_of(&reqs[1]), 2);

    let dlq = api.expect(200, "GET", "/api/webhooks/dlq", None).await;
    let entries = dlq["deliveries"].as_array().expect("a deliveries array");
    let entry = entries
        .iter()
        .find(|d| d["id"] == dead.as_str())
        .unwrap_or_else(|| panic!("{dead} not in the DLQ: {dlq}"));
    assert_eq!(entry["endpoint_id"], ep.id.as_str());
    assert_eq!(entry["state"], "failed");
    assert_eq!(entry["attempts"], 1);
    assert_eq!(entry["last_status"], 400);
    assert_eq!(entry["event_type"], "room.message");
    assert!(
        !entries.iter().any(|d| d["id"] == reqs[1].webhook_id()),
        "{dlq}"
    );
    let d = delivery(&api, &ep.id, &dead).await;
    assert_eq!(attempt_statuses(&d), vec![json!(400)]);
    // The receiver's answer is kept, to show why.
    assert_eq!(
        d["last_error"], "HTTP 400: not retried; response: {\"error\":\"unknown customer\"}",
        "{d}"
    );

    let all = rx.requests();
    assert_eq!(count_id(&all, &dead), 1, "no retry after a 400");
    assert_eq!(all.len(), 2, "{}", receiver::summarize(&all));
}

#[actix_rt::test]
async fn a_redirect_is_not_followed_and_is_dead_lettered() {
    let broker = TestBroker::start(config());
    let api = api_of(&broker);
    let rx = Receiver::start();
    // Redirect to another path on the same (allowlisted) receiver: following it would show
    // up as a request to /elsewhere.
    rx.push([Reply::status(307).header("Location", &rx.url("/elsewhere"))]);
    let ep = register_for(&api, &rx, &["room.message"]).await;

    api.publish("conversation:1", None, json!({"n": 1})).await;
    api.publish("conversation:1", None, json!({"n": 2})).await;
    let reqs = rx.wait_for(2).await;
    assert_eq!(reqs[0].status, 307);
    assert_eq!(seq_of(&reqs[1]), 2, "{}", receiver::summarize(&reqs));
    assert!(
        reqs.iter().all(|r| r.path == "/hook"),
        "{}",
        receiver::summarize(&reqs)
    );
    let d = delivery(&api, &ep.id, reqs[0].webhook_id()).await;
    assert_eq!(d["state"], "failed");
    assert_eq!(attempt_statuses(&d), vec![json!(307)]);
    assert!(
        d["last_error"].as_str().unwrap_or("").contains("redirect"),
        "{d}"
    );
}

#[actix_rt::test]
async fn retry_after_on_a_429_is_honoured() {
    let broker = TestBroker::start(config());
    let api = api_of(&broker);
    let rx = Receiver::start();
    rx.push([Reply::status(429).header("Retry-After", "2")]);
    let _ep = register_for(&api, &rx, &["room.message"]).await;

    api.publish("conversation:1", None, json!({"n": 1})).await;
    let reqs = rx.wait_for_within(2, Duration::from_secs(10)).await;
    assert_eq!(reqs[0].webhook_id(), reqs[1].webhook_id());
    assert_eq!((reqs[0].status, reqs[1].status), (429, 200));
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_secs(2),
        "retried after {gap:?}, before Retry-After: 2 (backoff is 50 ms)"
    );
    assert!(gap < Duration::from_secs(4), "retried only after {gap:?}");
}

#[actix_rt::test]
async fn a_hanging_receiver_times_out_and_the_retry_succeeds() {
    let mut config = config();
    config.webhooks.timeout = Duration::from_millis(500);
    let broker = TestBroker::start(config);
    let api = api_of(&broker);
    let rx = Receiver::start();
    rx.push([Reply::hang()]);
    let ep = register_for(&api, &rx, &["room.message"]).await;

    api.publish("conversation:1", None, json!({"n": 1})).await;
    api.publish("conversation:1", None, json!({"n": 2})).await;
    let reqs = rx.wait_for(3).await;
    let first = reqs[0].webhook_id().to_owned();
    assert_eq!(reqs[1].webhook_id(), first);
    assert!(reqs[0].answered_at.is_none(), "the first attempt hung");
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(500),
        "retried after {gap:?}, before the 500 ms timeout"
    );
    assert_eq!(seq_of(&reqs[2]), 2);

    let d = delivery(&api, &ep.id, &first).await;
    assert_eq!(d["state"], "delivered", "{d}");
    assert_eq!(d["attempts"], 2);
    assert_eq!(attempt_statuses(&d), vec![Value::Null, json!(200)], "{d}");
    let error = d["attempt_log"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        error.contains("timeout") || error.contains("timed out"),
        "the first attempt's error should mention the timeout: {d}"
    );
    assert_eq!(rx.count(), 3);
}

#[actix_rt::test]
async fn six_failures_dead_letter_and_a_replay_delivers() {
    let mut config = config();
    config.webhooks.max_retries = 5;
    config.webhooks.backoff = vec![Duration::from_millis(20)];
    let broker = TestBroker::start(config);
    let api = api_of(&broker);
    let rx = Receiver::start_with(Reply::status(500));
    let ep = register_for(&api, &rx, &["room.message"]).await;

    api.publish("conversation:1", None, json!({"n": 1})).await;
    let reqs = rx.wait_for(6).await;
    let dead = reqs[0].webhook_id().to_owned();
    assert!(reqs
        .iter()
        .all(|r| r.webhook_id() == dead && r.status == 500));

    // From now on the receiver is healthy; the next event is the witness that the first one
    // was dead-lettered after exactly 6 attempts (a 7th would come before it).
    rx.set_default(Reply::ok());
    api.publish("conversation:1", None, json!({"n": 2})).await;
    let reqs = rx.wait_for(7).await;
    assert_ne!(
        reqs[6].webhook_id(),
        dead,
        "a 7th attempt:\n{}",
        receiver::summarize(&reqs)
    );
    assert_eq!(seq_of(&reqs[6]), 2);
    assert_eq!(count_id(&reqs, &dead), 6);

    let dlq = api.expect(200, "GET", "/api/webhooks/dlq", None).await;
    let entry = dlq["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .find(|d| d["id"] == dead.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{dead} not in the DLQ: {dlq}"));
    assert_eq!(entry["state"], "failed");
    assert_eq!(entry["attempts"], 6);
    assert_eq!(entry["last_status"], 500);
    assert_eq!(entry["endpoint_id"], ep.id.as_str());

    let metrics = api.metrics().await;
    assert_eq!(
        sample(&metrics, "switchboard_webhook_dead_lettered_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "switchboard_webhook_dlq_size"),
        Some(1.0),
        "{metrics}"
    );

    let replayed = api
        .expect(
            202,
            "POST",
            &format!("/api/webhooks/dlq/{dead}/replay"),
            None,
        )
        .await;
    assert_eq!(
        (&replayed["id"], &replayed["state"]),
        (&json!(dead), &json!("pending")),
        "{replayed}"
    );
    let reqs = rx.wait_for(8).await;
    assert_eq!(
        reqs[7].webhook_id(),
        dead,
        "the replay keeps the webhook-id"
    );
    assert_eq!(reqs[7].body, reqs[0].body, "and the bytes");
    assert_eq!(reqs[7].status, 200);
    assert_eq!(reqs[7].verify(&ep.secret), Ok(()));

    // Witness for the replay's outcome.
    api.publish("conversation:1", None, json!({"n": 3})).await;
    let reqs = rx.wait_for(9).await;
    assert_eq!(seq_of(&reqs[8]), 3);
    let d = delivery(&api, &ep.id, &dead).await;
    assert_eq!(d["state"], "delivered", "{d}");
    let mut expected = vec![json!(500); 6];
    expected.push(json!(200));
    assert_eq!(attempt_statuses(&d), expected, "{d}");

    // Replaying what is not in the DLQ: 409; an unknown delivery: 404.
    let (status, body) = api
        .call("POST", &format!("/api/webhooks/dlq/{dead}/replay"), None)
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = api
        .call(
            "POST",
            "/api/webhooks/dlq/msg_00000000000000000000000000000000/replay",
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");

    let dlq = api.expect(200, "GET", "/api/webhooks/dlq", None).await;
    assert_eq!(dlq["deliveries"], json!([]), "{dlq}");
    let metrics = api.metrics().await;
    assert_eq!(
        sample(&metrics, "switchboard_webhook_dead_lettered_total"),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "switchboard_webhook_dlq_size"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(rx.count(), 9);
}

#[actix_rt::test]
async fn a_rate_limit_of_10_per_s_spaces_100_events_in_order() {
    let broker = TestBroker::start(config());
    let api = api_of(&broker);
    let rx = Receiver::start();
    let ep = register(
        &api,
        json!({"url": rx.url("/hook"), "events": ["room.message"], "rate_limit_per_s": 10}),
    )
    .await;

    for n in 1..=100u64 {
        let published = api
            .publish("conversation:rate", None, json!({"n": n}))
            .await;
        assert_eq!(published["seq"], n);
    }
    let reqs = rx.wait_for_within(100, Duration::from_secs(30)).await;
    let seqs: Vec<u64> = reqs.iter().map(seq_of).collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>(), "in order, each once");
    for r in &reqs {
        assert_eq!(r.json()["data"]["payload"]["n"], seq_of(r));
    }
    let ids: BTreeSet<&str> = reqs.iter().map(Recorded::webhook_id).collect();
    assert_eq!(ids.len(), 100);
    assert_eq!(reqs[99].verify(&ep.secret), Ok(()));
    // At 10/s with no burst (one attempt per 100 ms), the 100th attempt starts 9.9 s after
    // the first; 100 events at 10/s must take at least 9 s from the first attempt to the last.
    let span = reqs[99].at - reqs[0].at;
    assert!(
        span >= Duration::from_secs(9),
        "100 deliveries at 10/s took only {span:?}"
    );
    assert!(span < Duration::from_secs(20), "took {span:?}");
}

fn find<'a>(reqs: &'a [Recorded], event_type: &str, data: &Value) -> Option<&'a Recorded> {
    reqs.iter()
        .find(|r| r.event_type() == event_type && &r.json()["data"] == data)
}

#[actix_rt::test]
async fn events_and_room_globs_filter_and_session_events_name_the_connection() {
    let broker = TestBroker::start(config());
    let api = api_of(&broker);
    let (conv_rx, lobby_rx) = (Receiver::start(), Receiver::start());
    // presence.join in conversation:* only.
    let conv = register(
        &api,
        json!({"url": conv_rx.url("/conv"), "events": ["presence.join"], "rooms": ["conversation:*"]}),
    )
    .await;
    // presence.join in lobby:* only, plus session events (which ignore `rooms`).
    let lobby = register(
        &api,
        json!({
            "url": lobby_rx.url("/lobby"),
            "events": ["presence.join", "session.connected", "session.disconnected"],
            "rooms": ["lobby:*"],
        }),
    )
    .await;

    let mut alice =
        Client::connect(&broker.ws_url(Some(&token("alice", &["conversation:*", "lobby:*"]))))
            .await;
    let established = alice.recv_type("system.connection.established").await;
    let alice_conn = established["payload"]["connection_id"]
        .as_str()
        .expect("a connection id")
        .to_owned();
    let connected = json!({"connection_id": alice_conn, "user": "alice"});
    lobby_rx
        .wait_until("session.connected of alice", receiver::RECEIVER_WAIT, |r| {
            find(r, "session.connected", &connected).cloned()
        })
        .await;

    alice.join("lobby:1").await;
    let lobby_join = json!({"room": "lobby:1", "user": "alice"});
    let r = lobby_rx
        .wait_until("presence.join in lobby:1", receiver::RECEIVER_WAIT, |r| {
            find(r, "presence.join", &lobby_join).cloned()
        })
        .await;
    assert_eq!(r.verify(&lobby.secret), Ok(()));

    // The lobby event exists (above) and was fanned out before this join: had it matched
    // the conversation endpoint, it would be that endpoint's first delivery.
    alice.join("conversation:1").await;
    let reqs = conv_rx.wait_for(1).await;
    assert_eq!(
        reqs[0].event_type(),
        "presence.join",
        "{}",
        reqs[0].summary()
    );
    assert_eq!(
        reqs[0].json()["data"],
        json!({"room": "conversation:1", "user": "alice"})
    );
    assert_eq!(reqs[0].verify(&conv.secret), Ok(()));

    // A room.message in conversation:1: not subscribed. Bob's join is the witness.
    api.publish("conversation:1", None, json!({"n": 1})).await;
    let mut bob = Client::connect(&broker.ws_url(Some(&token("bob", &["conversation:*"])))).await;
    let bob_conn = bob.recv_type("system.connection.established").await["payload"]["connection_id"]
        .as_str()
        .expect("a connection id")
        .to_owned();
    assert_ne!(bob_conn, alice_conn);
    bob.join("conversation:1").await;
    let reqs = conv_rx.wait_for(2).await;
    assert_eq!(
        reqs[1].json()["data"],
        json!({"room": "conversation:1", "user": "bob"}),
        "{}",
        receiver::summarize(&reqs)
    );

    alice.close().await;
    let disconnected = json!({"connection_id": alice_conn, "user": "alice"});
    lobby_rx
        .wait_until(
            "session.disconnected of alice",
            receiver::RECEIVER_WAIT,
            |r| find(r, "session.disconnected", &disconnected).cloned(),
        )
        .await;

    let lobby_seen: Vec<(String, Value)> = lobby_rx
        .requests()
        .iter()
        .map(|r| (r.event_type(), r.json()["data"].clone()))
        .collect();
    assert_eq!(
        lobby_seen,
        vec![
            ("session.connected".to_owned(), connected),
            ("presence.join".to_owned(), lobby_join),
            (
                "session.connected".to_owned(),
                json!({"connection_id": bob_conn, "user": "bob"})
            ),
            ("session.disconnected".to_owned(), disconnected),
        ],
        "the lobby endpoint: sessions of everyone, presence in lobby:* only"
    );
    assert_eq!(
        conv_rx.count(),
        2,
        "{}",
        receiver::summarize(&conv_rx.requests())
    );
}

#[actix_rt::test]
async fn the_api_refuses_ssrf_targets_and_plain_http_in_production() {
    let rx = Receiver::start();
    let loopback = rx.url("/hook");

    // Nothing allowlisted: loopback and every disguise of an internal address are refused.
    let mut strict = config();
    strict.webhooks.allow = Vec::new();
    let broker = TestBroker::start(strict);
    let api = api_of(&broker);
    for url in [
        loopback.as_str(),
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://metadata.google.internal/",
        "http://10.0.0.1/",
    ] {
        let (status, body) = api
            .call(
                "POST",
                "/api/webhooks",
                Some(json!({"url": url, "events": ["room.message"]})),
            )
            .await;
        assert_eq!(status, 400, "{url}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("blocked"),
            "{url}: the reason is named: {body}"
        );
    }
    let (status, body) = api
        .call(
            "POST",
            "/api/webhooks",
            Some(json!({"url": "ftp://127.0.0.1/", "events": ["room.message"]})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let listed = api.expect(200, "GET", "/api/webhooks", None).await;
    assert_eq!(listed["endpoints"], json!([]), "nothing was registered");
    drop(broker);

    // Allowlisted loopback is accepted; other bad input is still refused.
    let broker = TestBroker::start(config());
    let api = api_of(&broker);
    register(&api, json!({"url": loopback, "events": ["room.message"]})).await;
    for body in [
        json!({"url": "http://169.254.169.254/", "events": ["room.message"]}),
        json!({"url": "http://user:pw@127.0.0.1/", "events": ["room.message"]}),
        json!({"url": loopback, "events": ["room.mesage"]}),
        json!({"url": loopback, "events": []}),
        json!({"url": loopback, "events": ["room.message"], "secret": "not-a-secret"}),
        json!({"url": "not a url", "events": ["room.message"]}),
    ] {
        let (status, answer) = api.call("POST", "/api/webhooks", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }
    drop(broker);

    // Production mode: https only, even for an allowlisted address.
    let mut production = config();
    production.webhooks.mode = WebhookMode::Production;
    let broker = TestBroker::start(production);
    let api = api_of(&broker);
    let (status, body) = api
        .call(
            "POST",
            "/api/webhooks",
            Some(json!({"url": loopback, "events": ["room.message"]})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("https")),
        "{body}"
    );
    let https = loopback.replacen("http://", "https://", 1);
    let created = api
        .expect(
            201,
            "POST",
            "/api/webhooks",
            Some(json!({"url": https, "events": ["room.message"]})),
        )
        .await;
    assert_eq!(created["url"], https.as_str());
}

#[actix_rt::test]
async fn endpoints_can_be_listed_read_patched_disabled_and_deleted() {
    let broker = TestBroker::start(config());
    let api = api_of(&broker);
    let rx = Receiver::start();
    let control_rx = Receiver::start();
    let _control = register_for(&api, &control_rx, &["room.message"]).await;

    let secret = WebhookSecret::generate();
    let created = api
        .expect(
            201,
            "POST",
            "/api/webhooks",
            Some(json!({
                "url": rx.url("/crud"),
                "events": ["room.message"],
                "rooms": ["conversation:*"],
                "rate_limit_per_s": 50,
                "secret": secret.expose_secret(),
            })),
        )
        .await;
    let id = created["id"].as_str().expect("an id").to_owned();
    assert!(id.starts_with("ep_"), "{created}");
    assert_eq!(created["secret"], secret.expose_secret());
    assert_eq!(created["url"], rx.url("/crud").as_str());
    assert_eq!(created["events"], json!(["room.message"]));
    assert_eq!(created["rooms"], json!(["conversation:*"]));
    assert_eq!(created["rate_limit_per_s"], 50);
    assert_eq!(created["enabled"], true);
    assert_eq!(created["source"], "api");

    // A generated secret and the default rooms.
    let other = api
        .expect(
            201,
            "POST",
            "/api/webhooks",
            Some(json!({"url": rx.url("/other"), "events": ["presence.leave"]})),
        )
        .await;
    assert!(WebhookSecret::parse(other["secret"].as_str().unwrap_or("")).is_ok());
    assert_eq!(other["rooms"], json!(["*"]));
    assert_eq!(other["rate_limit_per_s"], 100, "webhooks.rate_limit_per_s");
    assert_ne!(other["id"], created["id"]);

    let listed = api.expect(200, "GET", "/api/webhooks", None).await;
    let endpoints = listed["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 3, "{listed}");
    for e in endpoints {
        assert!(e.get("secret").is_none(), "no secrets in the list: {e}");
    }
    let listed_one = endpoints
        .iter()
        .find(|e| e["id"] == id.as_str())
        .expect("listed");
    assert_eq!(listed_one["enabled"], true);
    assert_eq!(listed_one["pending"], 0);
    assert!(listed_one["disabled_reason"].is_null());
    assert!(listed_one["failing_since"].is_null());
    assert!(listed_one["created_at"].is_number());

    let got = api
        .expect(200, "GET", &format!("/api/webhooks/{id}"), None)
        .await;
    assert!(got.get("secret").is_none(), "{got}");
    assert_eq!(got["url"], rx.url("/crud").as_str());
    assert_eq!(got["rooms"], json!(["conversation:*"]));

    let patched = api
        .expect(
            200,
            "PATCH",
            &format!("/api/webhooks/{id}"),
            Some(json!({"rooms": ["*"], "rate_limit_per_s": 100, "url": rx.url("/patched")})),
        )
        .await;
    assert_eq!(patched["rooms"], json!(["*"]));
    assert_eq!(patched["rate_limit_per_s"], 100);
    assert_eq!(patched["url"], rx.url("/patched").as_str());
    assert!(patched.get("secret").is_none());
    let got = api
        .expect(200, "GET", &format!("/api/webhooks/{id}"), None)
        .await;
    assert_eq!(got["rooms"], json!(["*"]));

    // Disabled: events are accepted and wait.
    let disabled = api
        .expect(
            200,
            "PATCH",
            &format!("/api/webhooks/{id}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(disabled["enabled"], false);
    api.publish("lobby", None, json!({"n": 1})).await;
    api.publish("lobby", None, json!({"n": 2})).await;
    control_rx.wait_for(2).await;
    assert_eq!(rx.count(), 0, "{}", receiver::summarize(&rx.requests()));
    let listed = api.expect(200, "GET", "/api/webhooks", None).await;
    let entry = listed["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id.as_str())
        .cloned()
        .expect("listed");
    assert_eq!(entry["pending"], 2, "{entry}");
    assert_eq!(entry["enabled"], false);
    let deliveries = api
        .expect(200, "GET", &format!("/api/webhooks/{id}/deliveries"), None)
        .await;
    let states: Vec<&Value> = deliveries["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| &d["state"])
        .collect();
    assert_eq!(
        states,
        [&json!("pending"), &json!("pending")],
        "{deliveries}"
    );

    // Enabled again: both go out, in order, to the new URL.
    api.expect(
        200,
        "PATCH",
        &format!("/api/webhooks/{id}"),
        Some(json!({"enabled": true})),
    )
    .await;
    let reqs = rx.wait_for(2).await;
    assert_eq!(
        reqs.iter()
            .map(|r| r.json()["data"]["payload"]["n"].clone())
            .collect::<Vec<_>>(),
        [json!(1), json!(2)]
    );
    assert!(reqs.iter().all(|r| r.path == "/patched"));
    assert_eq!(reqs[0].verify(&secret), Ok(()));

    // Deleted: gone, and no more deliveries.
    let (status, body) = api
        .call("DELETE", &format!("/api/webhooks/{id}"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    for (method, body) in [
        ("GET", None),
        ("DELETE", None),
        ("PATCH", Some(json!({"enabled": true}))),
    ] {
        let (status, answer) = api.call(method, &format!("/api/webhooks/{id}"), body).await;
        assert_eq!(status, 404, "{method} after delete: {answer}");
    }
    let listed = api.expect(200, "GET", "/api/webhooks", None).await;
    assert!(
        !listed["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == id.as_str()),
        "{listed}"
    );
    api.publish("lobby", None, json!({"n": 3})).await;
    control_rx.wait_for(3).await;
    assert_eq!(rx.count(), 2, "{}", receiver::summarize(&rx.requests()));
}

#[actix_rt::test]
async fn an_endpoint_failing_for_disable_after_is_disabled_and_can_be_re_enabled() {
    let mut config = config();
    config.webhooks.disable_after = Duration::from_millis(300);
    config.webhooks.backoff = vec![Duration::from_millis(20)];
    config.webhooks.max_retries = 1000;
    let broker = TestBroker::start(config);
    let api = api_of(&broker);
    let rx = Receiver::start_with(Reply::status(500));
    let ep = register_for(&api, &rx, &["room.message"]).await;

    api.publish("conversation:1", None, json!({"n": 1})).await;
    let path = format!("/api/webhooks/{}", ep.id);
    let disabled = poll_until(
        "the endpoint to be disabled",
        Duration::from_secs(10),
        || {
            let (api, path) = (api.clone(), path.clone());
            async move {
                let got = api.expect(200, "GET", &path, None).await;
                if got["enabled"] == false {
                    Ok(got)
                } else {
                    Err(got.to_string())
                }
            }
        },
    )
    .await;
    assert!(
        disabled["disabled_reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{disabled}"
    );
    assert!(disabled["failing_since"].is_number(), "{disabled}");
    let reqs = rx.requests();
    assert!(reqs.len() >= 2, "{}", receiver::summarize(&reqs));
    let first = reqs[0].webhook_id().to_owned();
    assert!(reqs.iter().all(|r| r.webhook_id() == first));
    let failing_for = reqs.last().unwrap().at - reqs[0].at;
    assert!(
        failing_for >= Duration::from_millis(250),
        "disabled after failing for only {failing_for:?} (disable_after = 300ms)"
    );
    // Still pending, not dead-lettered.
    let d = delivery(&api, &ep.id, &first).await;
    assert_eq!(d["state"], "pending", "{d}");

    rx.set_default(Reply::ok());
    let enabled = api
        .expect(200, "PATCH", &path, Some(json!({"enabled": true})))
        .await;
    assert_eq!(enabled["enabled"], true);
    assert!(enabled["disabled_reason"].is_null(), "{enabled}");
    let delivered = rx
        .wait_until("a 200 after re-enabling", receiver::RECEIVER_WAIT, |r| {
            r.iter().find(|r| r.status == 200).cloned()
        })
        .await;
    assert_eq!(delivered.webhook_id(), first);
    // Witness: the next event arrives only after the first one's success is committed.
    api.publish("conversation:1", None, json!({"n": 2})).await;
    rx.wait_until("the second event", receiver::RECEIVER_WAIT, |r| {
        r.iter().find(|r| r.webhook_id() != first).cloned()
    })
    .await;
    let d = delivery(&api, &ep.id, &first).await;
    assert_eq!(d["state"], "delivered", "{d}");
    let got = api.expect(200, "GET", &path, None).await;
    assert_eq!(got["enabled"], true);
    assert!(
        got["failing_since"].is_null(),
        "a success ends the streak: {got}"
    );
}

#[actix_rt::test]
async fn the_test_route_sends_a_signed_ping() {
    let broker = TestBroker::start(config());
    let api = api_of(&broker);
    let rx = Receiver::start();
    // Subscribed to something else entirely: pings are always sent.
    let ep = register_for(&api, &rx, &["session.disconnected"]).await;

    let answer = api
        .expect(202, "POST", &format!("/api/webhooks/{}/test", ep.id), None)
        .await;
    let delivery_id = answer["delivery_id"].as_str().expect("a delivery id");
    assert!(is_prefixed_hex32(delivery_id, "msg_"), "{answer}");
    let r = rx.wait_for(1).await.remove(0);
    assert_eq!(r.webhook_id(), delivery_id);
    assert_eq!(r.verify(&ep.secret), Ok(()));
    let body = r.json();
    assert_eq!(body["type"], "webhook.ping");
    assert_eq!(body["data"], json!({"endpoint_id": ep.id}));
    assert!(is_prefixed_hex32(body["id"].as_str().unwrap_or(""), "evt_"));

    let (status, body) = api
        .call("POST", "/api/webhooks/ep_missing/test", None)
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(rx.count(), 1);
}

#[actix_rt::test]
async fn graceful_shutdown_lets_the_in_flight_attempt_finish() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let outbox = dir.path().join("outbox.db");
    let rx = Receiver::start_with(Reply::ok().delayed(Duration::from_millis(500)));
    let secret = WebhookSecret::generate();
    let mut config = config();
    config.server.shutdown_timeout = Duration::from_secs(5);
    config.webhooks.outbox_path = outbox.to_string_lossy().into_owned();
    config.webhooks.endpoints.insert(
        "graceful".into(),
        WebhookEndpointConfig {
            url: rx.url("/slow"),
            secret: Some(secret.expose_secret().to_owned()),
            events: vec!["room.message".into()],
            rooms: vec!["*".into()],
            rate_limit_per_s: None,
        },
    );
    let broker = TestBroker::start(config);
    let api = api_of(&broker);
    let listed = api.expect(200, "GET", "/api/webhooks/graceful", None).await;
    assert_eq!(listed["url"], rx.url("/slow").as_str());

    api.publish("conversation:1", None, json!({"n": 1})).await;
    let r = rx.wait_for(1).await.remove(0);
    assert_eq!(r.verify(&secret), Ok(()), "the configured secret signs");
    let shutdown_at = Instant::now();
    broker.shutdown().await;
    let answered = rx.wait_answered(0, Duration::from_secs(5)).await;
    assert!(
        answered.answered_at.expect("answered") > shutdown_at,
        "the attempt was still in flight when shutdown began"
    );

    let outbox = Outbox::open(&outbox).expect("reopen the outbox");
    let history = outbox.deliveries_for("graceful", 10).expect("deliveries");
    assert_eq!(history.len(), 1, "{history:?}");
    let d = &history[0].delivery;
    assert_eq!(d.id, r.webhook_id());
    assert_eq!(
        d.state,
        DeliveryState::Delivered,
        "the in-flight attempt finished and was recorded: {d:?}"
    );
    assert_eq!((d.attempts, d.last_status), (1, Some(200)));
    assert_eq!(rx.count(), 1);
}

#[actix_rt::test]
async fn a_rotation_signs_with_every_secret_and_the_secret_route_reads_them() {
    let broker = TestBroker::start(config());
    let api = api_of(&broker);
    let rx = Receiver::start();
    let ep = register_for(&api, &rx, &["room.message"]).await;
    let read = api
        .expect(200, "GET", &format!("/api/webhooks/{}/secret", ep.id), None)
        .await;
    assert_eq!(read["secret"], ep.secret.expose_secret());

    // Rotate: the new secret first, the old one kept while receivers switch over.
    let new = WebhookSecret::generate();
    let both = format!("{} {}", new.expose_secret(), ep.secret.expose_secret());
    api.expect(
        200,
        "PATCH",
        &format!("/api/webhooks/{}", ep.id),
        Some(json!({ "secret": format!("  {both} ") })),
    )
    .await;
    let read = api
        .expect(200, "GET", &format!("/api/webhooks/{}/secret", ep.id), None)
        .await;
    assert_eq!(read["secret"], both.as_str(), "normalised, current first");
    api.publish("lobby:rotate", None, json!({"n": 1})).await;
    let reqs = rx.wait_for(1).await;
    let (_, _, signature) = reqs[0].signature_headers();
    assert_eq!(signature.split(' ').count(), 2, "{signature}");
    // The old secret verifies the Standard Webhooks signature (the body HMAC header carries
    // only the current secret's, checked below).
    assert_eq!(
        switchboard::webhooks::signing::verify(
            &ep.secret,
            reqs[0].signature_headers(),
            reqs[0].text().as_bytes(),
            SystemTime::now()
        ),
        Ok(()),
        "old secret still verifies"
    );
    assert_eq!(reqs[0].verify(&new), Ok(()), "new secret verifies");
    let body_hmac = reqs[0]
        .header("x-asap-signature")
        .expect("body HMAC header");
    assert_eq!(
        switchboard::webhooks::signing::verify_body_hmac(
            &new,
            body_hmac,
            reqs[0].text().as_bytes()
        ),
        Ok(()),
        "the body HMAC uses the current (first) secret"
    );

    // A bad secret in a rotation is refused as a whole.
    let (status, body) = api
        .call(
            "PATCH",
            &format!("/api/webhooks/{}", ep.id),
            Some(json!({ "secret": format!("{} whsec_x", new.expose_secret()) })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    api.expect(404, "GET", "/api/webhooks/ep_nope/secret", None)
        .await;
}

/// A broker with a file outbox (in a temp dir, returned to keep it alive) and an endpoint
/// for `room.message` to a fresh receiver: what tests that tamper with the file start from.
async fn with_file_outbox() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    TestBroker,
    Api,
    Receiver,
    Endpoint,
) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("outbox.db");
    let mut config = config();
    config.webhooks.outbox_path = path.to_string_lossy().into_owned();
    let broker = TestBroker::start(config);
    let api = api_of(&broker);
    let rx = Receiver::start();
    let endpoint = register_for(&api, &rx, &["room.message"]).await;
    (dir, path, broker, api, rx, endpoint)
}

/// When the outbox cannot store an event, the publisher is told: members got the message,
/// webhook receivers will not. (The endpoint's row is deleted behind the broker's back, so
/// the commit fails the way a broken disk would make it fail.)
#[actix_rt::test]
async fn a_failed_outbox_commit_is_reported_to_the_publisher() {
    let (_dir, path, broker, api, rx, ep) = with_file_outbox().await;
    let mut bob = broker.client("bob", &["conversation:*"]).await;
    bob.join("conversation:9").await;

    Outbox::open(&path)
        .expect("open the broker's outbox")
        .delete_endpoint(&ep.id)
        .expect("delete the endpoint row");

    let (status, body) = api
        .call(
            "POST",
            "/api/rooms/conversation:9/publish",
            Some(json!({"payload": {"n": 1}})),
        )
        .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "internal", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("seq 1") && message.contains("outbox"),
        "{body}"
    );
    // The member got it all the same.
    let got = bob.skip_until("room.message").await;
    assert_eq!(got["seq"], 1, "{got}");

    // A WebSocket publisher gets an error instead of its ack.
    bob.publish("conversation:9", "m-2", json!({"n": 2})).await;
    let echoed = bob.skip_until("room.message").await;
    assert_eq!(echoed["seq"], 2, "{echoed}");
    let reply = bob.recv().await;
    assert_eq!(reply["type"], "system.error", "{reply}");
    assert_eq!(reply["correlation_id"], "m-2", "{reply}");
    assert_eq!(reply["payload"]["code"], "internal", "{reply}");
    assert_eq!(rx.count(), 0, "nothing was stored, so nothing was sent");
}

/// An outbox that cannot record attempt outcomes (here a trigger makes every update of a
/// delivery fail, as a full disk or damaged freelist would): the receiver's answer is not
/// sent again and again, /readyz and the metrics say the outbox is failing, and once it
/// works again the kept outcome is recorded and delivery goes on.
#[actix_rt::test]
async fn storage_errors_are_bounded_and_surfaced_not_retried_at_the_receiver() {
    let (_dir, path, _broker, api, rx, _) = with_file_outbox().await;
    let (status, ready) = api.call("GET", "/readyz", None).await;
    assert_eq!((status, &ready["status"]), (200, &json!("ready")));

    let sabotage = rusqlite::Connection::open(&path).expect("open the broker's outbox");
    sabotage
        .execute_batch(
            "CREATE TRIGGER fail_outcomes BEFORE UPDATE ON deliveries \
             BEGIN SELECT RAISE(ABORT, 'simulated I/O error'); END;",
        )
        .expect("install the trigger");
    api.publish("orders:1", Some("o1"), json!({"n": 1})).await;
    rx.wait_for(1).await;
    // Three recordings fail in a row (250 ms, then 500 ms apart) …
    poll_until(
        "3 failed outbox operations",
        Duration::from_secs(10),
        || async {
            let metrics = api.metrics().await;
            match sample(&metrics, "switchboard_webhook_outbox_errors_total") {
                Some(n) if n >= 3.0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // … and nothing went to the receiver again meanwhile.
    assert_eq!(rx.count(), 1, "{}", receiver::summarize(&rx.requests()));
    let (status, ready) = api.call("GET", "/readyz", None).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["status"], "webhook_outbox_failing", "{ready}");
    assert!(
        ready["error"]
            .as_str()
            .unwrap_or("")
            .contains("simulated I/O error"),
        "{ready}"
    );
    let metrics = api.metrics().await;
    assert_eq!(
        sample(&metrics, "switchboard_webhook_outbox_healthy"),
        Some(0.0)
    );

    sabotage
        .execute_batch("DROP TRIGGER fail_outcomes;")
        .expect("drop the trigger");
    api.publish("orders:1", Some("o2"), json!({"n": 2})).await;
    let got = rx.wait_for(2).await;
    assert_eq!(
        got.iter()
            .map(|r| r.json()["data"]["seq"].as_u64())
            .collect::<Vec<_>>(),
        vec![Some(1), Some(2)],
        "the kept outcome was recorded; event 1 was not sent twice"
    );
    let (status, ready) = api.call("GET", "/readyz", None).await;
    assert_eq!(
        (status, &ready["status"]),
        (200, &json!("ready")),
        "{ready}"
    );
}

/// Registering a URL twice (a setup script run twice, say) warns in the answer, or, with
/// `webhooks.duplicate_urls = "refuse"`, answers 409.
#[actix_rt::test]
async fn a_url_registered_twice_warns_or_is_refused_by_option() {
    let rx = Receiver::start();
    let body = json!({"url": rx.url("/hook"), "events": ["room.message"]});
    let broker = TestBroker::start(config());
    let api = api_of(&broker);
    let first = api
        .expect(201, "POST", "/api/webhooks", Some(body.clone()))
        .await;
    assert!(first.get("warnings").is_none(), "{first}");
    // Spelled differently, the same receiver is the same URL.
    let same =
        json!({"url": rx.url("/hook").replace("http://", "HTTP://"), "events": ["room.message"]});
    let second = api.expect(201, "POST", "/api/webhooks", Some(same)).await;
    let warning = second["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains(first["id"].as_str().unwrap()) && warning.contains("already delivers"),
        "{second}"
    );

    let mut strict = config();
    strict.webhooks.duplicate_urls = switchboard::config::DuplicateUrls::Refuse;
    let broker = TestBroker::start(strict);
    let api = api_of(&broker);
    api.expect(201, "POST", "/api/webhooks", Some(body.clone()))
        .await;
    let (status, refused) = api.call("POST", "/api/webhooks", Some(body)).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "conflict");
    let (_, list) = api.call("GET", "/api/webhooks", None).await;
    assert_eq!(list["endpoints"].as_array().map(Vec::len), Some(1));
}

/// The auto-disable streak is a run of failed attempts: one failure, a quiet period longer
/// than `disable_after`, and another failure do not disable the endpoint.
#[actix_rt::test]
async fn quiet_periods_between_failures_do_not_count_towards_disabling() {
    let mut config = config();
    config.webhooks.disable_after = Duration::from_millis(300);
    config.webhooks.max_retries = 0; // each failure dead-letters at once: then it is quiet
    config.webhooks.max_retry_after = Duration::from_millis(20);
    config.webhooks.timeout = Duration::from_millis(200);
    let broker = TestBroker::start(config);
    let api = api_of(&broker);
    let rx = Receiver::start_with(Reply::status(500));
    let ep = register_for(&api, &rx, &["room.message"]).await;
    let path = format!("/api/webhooks/{}", ep.id);

    api.publish("conversation:1", None, json!({"n": 1})).await;
    rx.wait_for(1).await;
    // The scenario itself: a quiet spell longer than disable_after (and than the longest
    // wait between two attempts of a failing endpoint, here 2 x (50 ms + 200 ms)).
    actix_rt::time::sleep(Duration::from_millis(700)).await;
    api.publish("conversation:1", None, json!({"n": 2})).await;
    rx.wait_for(2).await;
    let dlq = poll_until("both failures recorded", Duration::from_secs(10), || {
        let api = api.clone();
        async move {
            let (_, dlq) = api.call("GET", "/api/webhooks/dlq", None).await;
            match dlq["deliveries"].as_array().map(Vec::len) {
                Some(2) => Ok(dlq),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let got = api.expect(200, "GET", &path, None).await;
    assert_eq!(got["enabled"], true, "{got}\n{dlq}");
    // A streak runs, started again at the second failure.
    assert!(got["failing_since"].is_number(), "{got}");
    let requests = rx.requests();
    assert!(requests[1].at - requests[0].at >= Duration::from_millis(600));
}

/// A disabled endpoint's pending deliveries older than `disabled_backlog_ttl` are dropped
/// (here at start, as every hour), counted per endpoint; an enabled endpoint keeps all.
#[actix_rt::test]
async fn a_disabled_endpoints_old_backlog_expires_and_is_counted() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("outbox.db");
    let (paused, live) = {
        let mut outbox = Outbox::open(&path).expect("create the outbox");
        let new = |url: &str| switchboard::webhooks::outbox::NewEndpoint {
            url: url.into(),
            secret: WebhookSecret::generate().expose_secret().to_owned(),
            events: vec!["room.message".into()],
            rooms: vec!["*".into()],
            rate_limit_per_s: 10,
        };
        let paused = outbox
            .insert_endpoint(new("https://a.example/hook"), 0)
            .expect("a");
        let live = outbox
            .insert_endpoint(new("https://b.example/hook"), 0)
            .expect("b");
        let eight_days_ago = i64::try_from(unix_now() - 8 * 24 * 3600).unwrap() * 1000;
        for _ in 0..3 {
            for ep in [&paused, &live] {
                outbox
                    .enqueue(&ep.id, "room.message", "{}", eight_days_ago)
                    .expect("enqueue");
            }
        }
        outbox
            .disable_endpoint(&paused.id, "paused by hand")
            .expect("disable");
        (paused.id, live.id)
    };
    let mut config = config();
    config.webhooks.outbox_path = path.to_string_lossy().into_owned();
    let broker = TestBroker::start(config);
    let api = api_of(&broker);
    let got = api
        .expect(200, "GET", &format!("/api/webhooks/{paused}"), None)
        .await;
    assert_eq!(got["pending"], 0, "{got}");
    let got = api
        .expect(200, "GET", &format!("/api/webhooks/{live}"), None)
        .await;
    assert!(got["pending"].as_u64().unwrap_or(0) > 0, "{got}");
    let metrics = api.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            &format!("switchboard_webhook_expired_total{{endpoint=\"{paused}\"}}")
        ),
        Some(3.0),
        "{metrics}"
    );
}

/// A receiver behind a private CA that asks for a client certificate (mutual TLS): with
/// `webhooks.ca_file` and the client certificate configured the delivery arrives; without
/// the certificate the handshake is refused and the attempt says so.
#[actix_rt::test]
async fn a_private_ca_and_a_client_certificate_reach_a_mutual_tls_receiver() {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let dir = tempfile::tempdir().expect("a temp dir");
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "switchboard test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).expect("the CA");
    let server_key = KeyPair::generate().expect("a server key");
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("server params")
        .signed_by(&server_key, &ca, &ca_key)
        .expect("the server certificate");
    let client_key = KeyPair::generate().expect("a client key");
    let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("client params");
    client_params
        .distinguished_name
        .push(DnType::CommonName, "switchboard");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params
        .signed_by(&client_key, &ca, &ca_key)
        .expect("the client certificate");
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write a PEM file");
        path.to_string_lossy().into_owned()
    };
    let ca_file = write("ca.pem", ca.pem());
    let client_cert_file = write("client.pem", client_cert.pem());
    let client_key_file = write("client.key", client_key.serialize_pem());

    // The receiver: HTTPS on localhost, client certificates from the CA required.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("trust the CA");
    let verifier = rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(roots))
        .build()
        .expect("a client verifier");
    let server_config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(server_cert.der().to_vec())],
            PrivateKeyDer::try_from(server_key.serialize_der()).expect("a server key"),
        )
        .expect("a server config");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("address").port();
    let (tx, got) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let server = actix_web::HttpServer::new(move || {
                let tx = tx.clone();
                actix_web::App::new().route(
                    "/hook",
                    actix_web::web::post().to(move |body: actix_web::web::Bytes| {
                        let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
                        async { actix_web::HttpResponse::Ok().finish() }
                    }),
                )
            })
            .workers(1)
            // Its own signal handlers would take SIGINT/SIGTERM/SIGQUIT from every test of the
            // binary for good (tokio never uninstalls one): Ctrl-C or a CI timeout would stop
            // this receiver instead of the run.
            .disable_signals()
            .listen_rustls_0_23(listener, server_config)
            .expect("listen with TLS")
            .run();
            let _ = server.await;
        });
    });

    let broker_with = |client_cert: bool| {
        let mut config = config();
        config.webhooks.allow = vec!["localhost".parse().expect("a host rule")];
        config.webhooks.ca_file = ca_file.clone();
        if client_cert {
            config.webhooks.client_cert_file = client_cert_file.clone();
            config.webhooks.client_key_file = client_key_file.clone();
        }
        config.webhooks.backoff = vec![Duration::from_secs(60)];
        TestBroker::start(config)
    };
    let url = format!("https://localhost:{port}/hook");

    let broker = broker_with(true);
    let api = api_of(&broker);
    register(&api, json!({"url": url, "events": ["room.message"]})).await;
    api.publish("orders:1", Some("tls-1"), json!({"over": "mtls"}))
        .await;
    let body = got
        .recv_timeout(Duration::from_secs(10))
        .expect("a delivery over mutual TLS");
    assert!(body.contains("\"over\":\"mtls\""), "{body}");

    // Without the client certificate, the receiver refuses the handshake.
    let broker = broker_with(false);
    let api = api_of(&broker);
    let ep = register(&api, json!({"url": url, "events": ["room.message"]})).await;
    api.publish("orders:1", Some("tls-2"), json!({"over": "tls"}))
        .await;
    let path = format!("/api/webhooks/{}/deliveries", ep.id);
    let failed = poll_until("the failed attempt", Duration::from_secs(10), || {
        let (api, path) = (api.clone(), path.clone());
        async move {
            let (_, list) = api.call("GET", &path, None).await;
            let delivery = &list["deliveries"][0];
            match delivery["last_error"].as_str() {
                Some(error) => Ok(error.to_owned()),
                None => Err(list.to_string()),
            }
        }
    })
    .await;
    assert!(
        got.try_recv().is_err(),
        "nothing arrived without a certificate"
    );
    // The receiver's alert (CertificateRequired) or, when it lands after the client has
    // sent its request (TLS 1.3), the broken connection: a failed request either way.
    assert!(
        failed.starts_with("request to 127.0.0.1:") && failed.contains("failed"),
        "{failed}"
    );
}
