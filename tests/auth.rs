//! Authentication and authorisation: every failure closes with 4000 and says why; rooms the
//! token does not allow answer `forbidden`; foreign origins get 403 at the handshake.

use crate::support;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use support::{test_config, token, Client, TestBroker, SECRET};
use switchboard::auth::Claims;
use switchboard::protocol::close;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, exp: u64) -> Claims {
    Claims {
        sub: sub.into(),
        rooms: Some(vec!["r".into()]),
        publish: None,
        exp,
        nbf: None,
        iat: None,
        iss: None,
        aud: None,
        admin: false,
        agents: None,
    }
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Claims) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

const RSA_PRIVATE: &[u8] = include_bytes!("fixtures/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("fixtures/rsa_public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("fixtures/ec_private.pem");

async fn rejected_with(broker: &TestBroker, token: Option<&str>) -> String {
    let mut c = Client::connect(&broker.ws_url(token)).await;
    let closed = c.expect_close().await;
    assert_eq!(closed.code, Some(close::AUTH_FAILED), "{closed:?}");
    closed.reason
}

#[actix_rt::test]
async fn missing_expired_badly_signed_and_foreign_algorithm_tokens_close_with_4000() {
    let broker = TestBroker::start(test_config());
    assert_eq!(rejected_with(&broker, None).await, "token missing");

    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    let expired = sign(Algorithm::HS256, &hs, &claims("a", now() - 3600));
    assert_eq!(
        rejected_with(&broker, Some(&expired)).await,
        "token expired"
    );

    let other = EncodingKey::from_secret(b"some-other-secret-0123456789");
    let forged = sign(Algorithm::HS256, &other, &claims("a", now() + 600));
    assert_eq!(
        rejected_with(&broker, Some(&forged)).await,
        "invalid token signature"
    );

    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    let rs256 = sign(Algorithm::RS256, &rsa, &claims("a", now() + 600));
    assert_eq!(
        rejected_with(&broker, Some(&rs256)).await,
        "token algorithm not allowed"
    );
    let hs512 = sign(Algorithm::HS512, &hs, &claims("a", now() + 600));
    assert_eq!(
        rejected_with(&broker, Some(&hs512)).await,
        "token algorithm not allowed"
    );

    let mut nbf = claims("a", now() + 600);
    nbf.nbf = Some(now() + 3600);
    let early = sign(Algorithm::HS256, &hs, &nbf);
    assert_eq!(
        rejected_with(&broker, Some(&early)).await,
        "token not yet valid"
    );

    assert!(rejected_with(&broker, Some("garbage"))
        .await
        .starts_with("malformed token"));
}

#[actix_rt::test]
async fn leeway_accepts_a_token_that_just_expired() {
    let broker = TestBroker::start(test_config());
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    let just_expired = sign(Algorithm::HS256, &hs, &claims("a", now() - 5));
    let mut c = Client::connect(&broker.ws_url(Some(&just_expired))).await;
    c.recv_type("system.connection.established").await;
}

#[actix_rt::test]
async fn rs256_and_es256_verify_when_configured_and_hs_confusion_fails() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let mut config = test_config();
    config.auth.algorithms = vec!["RS256".into(), "ES256".into()];
    config.auth.hs256_secret = String::new();
    config.auth.rsa_public_key_file = format!("{dir}/tests/fixtures/rsa_public.pem");
    config.auth.ec_public_key_file = format!("{dir}/tests/fixtures/ec_public.pem");
    let broker = TestBroker::start(config);

    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    let rs256 = sign(Algorithm::RS256, &rsa, &claims("rsa-user", now() + 600));
    let mut c = Client::connect(&broker.ws_url(Some(&rs256))).await;
    assert_eq!(
        c.recv_type("system.connection.established").await["payload"]["user"],
        "rsa-user"
    );

    let ec = EncodingKey::from_ec_pem(EC_PRIVATE).unwrap();
    let es256 = sign(Algorithm::ES256, &ec, &claims("ec-user", now() + 600));
    let mut c = Client::connect(&broker.ws_url(Some(&es256))).await;
    assert_eq!(
        c.recv_type("system.connection.established").await["payload"]["user"],
        "ec-user"
    );

    // The classic confusion attack: HS256 "signed" with the RSA public key as the secret.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUBLIC),
        &claims("x", now() + 600),
    );
    assert_eq!(
        rejected_with(&broker, Some(&confused)).await,
        "token algorithm not allowed"
    );
}

#[actix_rt::test]
async fn token_from_bearer_header_or_cookie() {
    let broker = TestBroker::start(test_config());
    let t = token("hdr", &[]);
    let req = awc::Client::new().ws(broker.ws_url(None)).bearer_auth(&t);
    let mut c = Client::try_connect(req).await.unwrap();
    assert_eq!(
        c.recv_type("system.connection.established").await["payload"]["user"],
        "hdr"
    );

    let t = token("cookie", &[]);
    let req = awc::Client::new()
        .ws(broker.ws_url(None))
        .cookie(awc::cookie::Cookie::new("switchboard_token", t));
    let mut c = Client::try_connect(req).await.unwrap();
    assert_eq!(
        c.recv_type("system.connection.established").await["payload"]["user"],
        "cookie"
    );
}

#[actix_rt::test]
async fn joining_or_publishing_outside_the_token_is_forbidden() {
    let broker = TestBroker::start(test_config());
    let t = switchboard::auth::mint_hs256(
        SECRET,
        "reader",
        vec!["conversation:*".into()],
        Some(vec![]),
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let mut c = Client::connect(&broker.ws_url(Some(&t))).await;
    c.recv_type("system.connection.established").await;

    c.send_json(json!({"type": "room.join", "room": "job:1", "id": "j"}))
        .await;
    let err = c.recv_type("system.error").await;
    assert_eq!(err["payload"]["code"], "forbidden");
    assert_eq!(err["correlation_id"], "j");

    c.send_json(json!({"type": "room.join", "room": "user:someone-else", "id": "j2"}))
        .await;
    assert_eq!(
        c.recv_type("system.error").await["payload"]["code"],
        "forbidden"
    );

    c.join("conversation:7").await;
    c.publish("conversation:7", "p", json!("hi")).await;
    let err = c.recv_type("system.error").await;
    assert_eq!(err["payload"]["code"], "forbidden", "read-only token");

    // Only the server reaches every session: even a token for "*" cannot publish there.
    let mut all = Client::connect(&broker.ws_url(Some(&token("all", &["*"])))).await;
    all.recv_type("system.connection.established").await;
    all.publish("broadcast", "b", json!("to everyone")).await;
    assert_eq!(
        all.recv_type("system.error").await["payload"]["code"],
        "forbidden"
    );
}

#[actix_rt::test]
async fn foreign_origin_gets_403_at_the_handshake() {
    let mut config = test_config();
    config.server.allowed_origins = vec!["https://app.example".into()];
    let broker = TestBroker::start(config);
    let t = token("o", &[]);

    let err = awc::Client::new()
        .ws(broker.ws_url(Some(&t)))
        .origin("https://evil.example")
        .connect()
        .await
        .err()
        .expect("handshake refused");
    match err {
        awc::error::WsClientError::InvalidResponseStatus(status) => assert_eq!(status, 403),
        other => panic!("expected 403, got {other}"),
    }

    let req = awc::Client::new()
        .ws(broker.ws_url(Some(&t)))
        .origin("https://app.example");
    let mut c = Client::try_connect(req).await.expect("allowed origin");
    c.recv_type("system.connection.established").await;
}

#[actix_rt::test]
async fn anonymous_sessions_only_when_allowed() {
    let mut config = test_config();
    config.auth.anonymous = true;
    let broker = TestBroker::start(config);
    let mut c = Client::connect(&broker.ws_url(None)).await;
    let est = c.recv_type("system.connection.established").await;
    assert!(est["payload"]["user"]
        .as_str()
        .unwrap()
        .starts_with("anonymous:"));
    c.join("lobby").await;
    c.send_json(json!({"type": "room.join", "room": "user:alice", "id": "u"}))
        .await;
    assert_eq!(
        c.recv_type("system.error").await["payload"]["code"],
        "forbidden"
    );
}
