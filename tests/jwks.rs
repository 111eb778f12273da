//! Keys from a JSON Web Key Set (`auth.jwks_url`): tokens signed with a key of the set are
//! accepted; the set is fetched again on an unknown `kid` (rotation), never more often than
//! `auth.jwks_min_refresh_interval`; a key server that is down or answers garbage leaves the
//! cached keys working; a broker whose first fetch fails still starts.
//!
//! The key server is the scriptable [`Receiver`], which counts the fetches. Where a test has
//! to let a rate-limit window pass there is no event to wait on, so it polls, bounded by
//! [`WAIT`].

use crate::support::{self, jwks, receiver};

use std::time::{Duration, Instant};

use awc::ws::Frame;
use jwks::{key_set, SigningKey};
use receiver::{Receiver, Reply};
use serde_json::json;
use support::{test_config, token, Client, TestBroker, WAIT};
use switchboard::config::Config;
use switchboard::protocol::close;

/// The close reason of a token whose `kid` the set lacks.
const UNKNOWN_KEY: &str = "no key for the token's kid";

/// Pause between two attempts of a bounded poll.
const POLL: Duration = Duration::from_millis(50);

/// A test config that also takes RS256/ES256 tokens from `server`'s key set, fetched again
/// at most every `min_interval` (and on schedule only hourly, so fetches can be counted).
fn jwks_config(server: &Receiver, min_interval: Duration) -> Config {
    let mut config = test_config();
    config.auth.algorithms = vec!["HS256".into(), "RS256".into(), "ES256".into()];
    config.auth.jwks_url = server.url("/jwks");
    config.auth.jwks_refresh = Duration::from_secs(3600);
    config.auth.jwks_min_refresh_interval = min_interval;
    config
}

/// Connects with `token`: `Ok` when the session starts, else the close reason (code 4000).
async fn session(broker: &TestBroker, token: &str) -> Result<(), String> {
    let mut client = Client::connect(&broker.ws_url(Some(token))).await;
    match client.next_frame().await {
        Some(Frame::Text(text)) => {
            let msg: serde_json::Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(msg["type"], "system.connection.established");
            client.close().await;
            Ok(())
        }
        Some(Frame::Close(Some(reason))) => {
            assert_eq!(u16::from(reason.code), close::AUTH_FAILED, "{reason:?}");
            Err(reason.description.unwrap_or_default())
        }
        other => panic!("expected a session or close 4000, got {other:?}"),
    }
}

async fn accepted(broker: &TestBroker, token: &str) {
    if let Err(reason) = session(broker, token).await {
        panic!("token refused: {reason}");
    }
}

async fn refused(broker: &TestBroker, token: &str) -> String {
    session(broker, token)
        .await
        .expect_err("token should be refused")
}

/// Retries `token` until the session starts (a fetch the rate limit allows has to happen
/// first); panics after [`WAIT`].
async fn eventually_accepted(broker: &TestBroker, token: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        match session(broker, token).await {
            Ok(()) => return,
            Err(reason) if Instant::now() < deadline => {
                assert_eq!(reason, UNKNOWN_KEY);
                tokio::time::sleep(POLL).await;
            }
            Err(reason) => panic!("still refused after {WAIT:?}: {reason}"),
        }
    }
}

/// Sends tokens naming an unknown `kid` until the key server has seen more than `seen`
/// fetches, i.e. until the rate limit let an unknown-kid fetch through.
async fn provoke_fetch(broker: &TestBroker, server: &Receiver, key: &SigningKey, seen: usize) {
    let deadline = Instant::now() + WAIT;
    let mut i = 0;
    while server.count() <= seen {
        assert!(Instant::now() < deadline, "no fetch within {WAIT:?}");
        i += 1;
        let stranger = key.token_with_kid(&format!("unknown-{i}"), "eve", &["r"]);
        assert_eq!(refused(broker, &stranger).await, UNKNOWN_KEY);
        tokio::time::sleep(POLL).await;
    }
    server.wait_answered(seen, WAIT).await;
}

/// The broker starts a fetch at most once per `min_interval`. The key server sees the
/// fetches arrive with some jitter, most of all the first (the broker is still starting up),
/// which is left out; half the interval leaves room for a loaded machine, while a broker
/// without the limit would fetch for every token, milliseconds apart.
fn assert_fetches_apart(requests: &[receiver::Recorded], min_interval: Duration) {
    let least_gap = min_interval / 2;
    for pair in requests[1..].windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= least_gap,
            "fetches #{} and #{} {gap:?} apart",
            pair[0].index,
            pair[1].index
        );
    }
}

#[actix_rt::test]
async fn tokens_signed_with_keys_of_the_set_are_accepted_next_to_the_configured_secret() {
    let ec = SigningKey::ec("ec-1");
    let rsa = SigningKey::rsa("rsa-1");
    let server = Receiver::start_with(Reply::ok().body(&key_set(&[&ec, &rsa])));
    let broker = TestBroker::start(jwks_config(&server, Duration::from_secs(3600)));
    server.wait_answered(0, WAIT).await;

    accepted(&broker, &ec.token("alice", &["r"])).await;
    accepted(&broker, &rsa.token("bob", &["r"])).await;
    accepted(&broker, &token("carol", &["r"])).await;

    // The right kid, another key: the set's key of that kid decides.
    let impostor = SigningKey::ec("ec-1");
    assert_eq!(
        refused(&broker, &impostor.token("mallory", &["r"])).await,
        "invalid token signature"
    );
    // A key only verifies the algorithm it is for.
    let rsa_named_ec = rsa.token_with_kid("ec-1", "mallory", &["r"]);
    assert_eq!(
        refused(&broker, &rsa_named_ec).await,
        "token algorithm not allowed"
    );

    // The HTTP API takes admin tokens from the set too.
    let client = awc::Client::new();
    let admin = ec.sign("ec-1", json!({"sub": "ops", "rooms": ["*"], "admin": true}));
    let response = client
        .get(broker.http_url("/api/rooms"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client
        .get(broker.http_url("/api/rooms"))
        .bearer_auth(impostor.sign("ec-1", json!({"sub": "x", "admin": true})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    assert_eq!(
        server.count(),
        1,
        "every kid was known: no fetch but the first"
    );
    for request in server.requests() {
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("GET", "/jwks")
        );
    }
}

#[actix_rt::test]
async fn a_rotated_key_is_fetched_on_its_first_token_and_a_retired_one_lasts_until_a_refresh() {
    let a = SigningKey::ec("A");
    let b = SigningKey::ec("B");
    let server = Receiver::start_with(Reply::ok().body(&key_set(&[&a])));
    let broker = TestBroker::start(jwks_config(&server, Duration::from_millis(300)));
    server.wait_answered(0, WAIT).await;
    accepted(&broker, &a.token("alice", &["r"])).await;

    // The provider adds B: its first token fetches the set (once the rate limit allows).
    server.set_default(Reply::ok().body(&key_set(&[&a, &b])));
    eventually_accepted(&broker, &b.token("bob", &["r"])).await;
    accepted(&broker, &a.token("alice", &["r"])).await;

    // The provider retires A: A's tokens keep working from the cache, without fetches…
    server.set_default(Reply::ok().body(&key_set(&[&b])));
    let fetches = server.count();
    accepted(&broker, &a.token("alice", &["r"])).await;
    accepted(&broker, &b.token("bob", &["r"])).await;
    assert_eq!(server.count(), fetches, "known kids fetch nothing");

    // …until the set is fetched again.
    provoke_fetch(&broker, &server, &b, fetches).await;
    assert_eq!(
        refused(&broker, &a.token("alice", &["r"])).await,
        UNKNOWN_KEY
    );
    accepted(&broker, &b.token("bob", &["r"])).await;
}

#[actix_rt::test]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_min_interval() {
    let min_interval = Duration::from_millis(500);
    let a = SigningKey::ec("A");
    let server = Receiver::start_with(Reply::ok().body(&key_set(&[&a])));
    let broker = TestBroker::start(jwks_config(&server, min_interval));
    server.wait_answered(0, WAIT).await;

    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < min_interval * 3 + min_interval / 2 {
        let batch: Vec<String> = (0..20)
            .map(|i| a.token_with_kid(&format!("random-{sent}-{i}"), "eve", &["r"]))
            .collect();
        let reasons =
            futures_util::future::join_all(batch.iter().map(|t| refused(&broker, t))).await;
        assert!(reasons.iter().all(|r| r == UNKNOWN_KEY), "{reasons:?}");
        sent += batch.len();
    }
    // Every fetch the flood caused has been answered (none is left half done).
    let fetches = server.count();
    server.wait_answered(fetches - 1, WAIT).await;
    let requests = server.requests();
    assert!(
        requests.len() >= 2,
        "the flood did fetch again after the interval"
    );
    let window = requests[0].at.elapsed();
    // One at the start, one per interval since, and one for the jitter of the first.
    let most = 2 + (window.as_millis() / min_interval.as_millis()) as usize;
    assert!(
        requests.len() <= most,
        "{} fetches (at most {most}) for {sent} tokens in {window:?}",
        requests.len(),
    );
    assert_fetches_apart(&requests, min_interval);
    // The key of the set still works.
    accepted(&broker, &a.token("alice", &["r"])).await;
}

#[actix_rt::test]
async fn cached_keys_keep_working_while_the_key_server_fails_answers_garbage_or_is_down() {
    let a = SigningKey::ec("A");
    let server = Receiver::start_with(Reply::ok().body(&key_set(&[&a])));
    let broker = TestBroker::start(jwks_config(&server, Duration::from_millis(200)));
    server.wait_answered(0, WAIT).await;
    accepted(&broker, &a.token("alice", &["r"])).await;

    let failures = [
        Reply::status(503),
        Reply::ok().body("<html>maintenance</html>"),
        Reply::ok().body(r#"{"keys": [{"kty": "oct", "kid": "A", "k": "c2VjcmV0"}]}"#),
        Reply::ok().body(r#"{"keys": 42}"#),
    ];
    for failure in failures {
        server.set_default(failure.clone());
        let seen = server.count();
        provoke_fetch(&broker, &server, &a, seen).await;
        accepted(&broker, &a.token("alice", &["r"])).await;
    }

    // Down: nothing listens any more. Unknown kids go on asking (the broker's fetches fail);
    // there is no event to wait on, so the flood runs for a few intervals.
    drop(server);
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(700) {
        i += 1;
        let stranger = a.token_with_kid(&format!("unknown-{i}"), "eve", &["r"]);
        assert_eq!(refused(&broker, &stranger).await, UNKNOWN_KEY);
        tokio::time::sleep(POLL).await;
    }
    accepted(&broker, &a.token("alice", &["r"])).await;
}

#[actix_rt::test]
async fn a_broker_whose_first_fetch_fails_starts_and_takes_set_tokens_once_a_fetch_works() {
    let a = SigningKey::ec("A");
    let server = Receiver::start_with(Reply::status(503));
    let broker = TestBroker::start(jwks_config(&server, Duration::from_millis(200)));
    server.wait_answered(0, WAIT).await;

    // The configured secret works at once; keys of the set are not there yet.
    accepted(&broker, &token("carol", &["r"])).await;
    assert_eq!(
        refused(&broker, &a.token("alice", &["r"])).await,
        UNKNOWN_KEY
    );

    server.set_default(Reply::ok().body(&key_set(&[&a])));
    eventually_accepted(&broker, &a.token("alice", &["r"])).await;
    // The failed fetches were retried no more often than the interval allows.
    assert_fetches_apart(&server.requests(), Duration::from_millis(200));
}
