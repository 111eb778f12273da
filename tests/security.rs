//! Regression tests for what an adversarial run found (docs/SECURITY.md): each test attacks
//! the broker the way the finding describes, mostly on raw sockets where the bytes on the
//! wire matter, and fails on a broker without the fix.

use crate::support::{self, process, raw};

use awc::ws::Frame;
use process::{free_port, BrokerProcess};
use raw::RawWs;
use serde_json::{json, Value};
use support::{test_config, token, Client, TestBroker, SECRET};
use switchboard::protocol::close;

/// 1 GiB: far more than any limit, and than the test could ever send.
const GIB: u64 = 1 << 30;

fn ws_path(sub: &str, rooms: &[&str]) -> String {
    format!("/ws?token={}", token(sub, rooms))
}

/// Opens an authenticated raw socket and reads `system.connection.established`.
fn raw_client(broker: &TestBroker, sub: &str, rooms: &[&str]) -> RawWs {
    let (mut ws, head) = RawWs::connect(broker.addr, &ws_path(sub, rooms), &[]);
    assert_eq!(raw::status_of(&head), 101, "{head}");
    assert_eq!(ws.read_json()["type"], "system.connection.established");
    ws
}

// ---- 1. an oversized frame is refused at its header ----

#[test]
fn an_oversized_frame_is_refused_at_its_header_before_any_payload() {
    let broker = TestBroker::start(test_config());
    for declared in [GIB, (1 << 63) - 1] {
        let mut ws = raw_client(&broker, "a", &[]);
        // A good message and, in the same write, a header declaring far too much.
        let ping = br#"{"type":"system.ping","id":"before-it"}"#;
        let mut bytes = RawWs::header(true, 1, ping.len() as u64);
        bytes.extend_from_slice(ping);
        bytes.extend(RawWs::header(true, 2, declared));
        assert!(ws.send_raw(&bytes));
        let pong = ws.read_json();
        assert_eq!(pong["correlation_id"], "before-it", "{pong}");
        // Not one byte of the payload was sent: the close must come from the header alone.
        let (code, reason) = ws.expect_close();
        assert_eq!(
            code,
            Some(close::MESSAGE_TOO_BIG),
            "declared {declared}: {reason}"
        );
    }
}

#[test]
fn a_fragmented_message_is_refused_when_its_running_total_passes_the_limit() {
    let mut config = test_config();
    config.limits.max_frame_bytes = 64 * 1024;
    let broker = TestBroker::start(config);
    let mut ws = raw_client(&broker, "a", &[]);
    // 40 KiB first fragment, then a continuation declaring 40 KiB more: 80 KiB > 64 KiB.
    assert!(ws.send_frame(false, 1, &vec![b' '; 40 * 1024]));
    assert!(ws.send_raw(&RawWs::header(true, 0, 40 * 1024)));
    let (code, _) = ws.expect_close();
    assert_eq!(code, Some(close::MESSAGE_TOO_BIG));
}

#[test]
fn the_echo_route_refuses_an_oversized_header_too() {
    let mut config = test_config();
    config.conformance.echo_path = "/echo".into();
    config.conformance.echo_max_message_bytes = 64 * 1024;
    let broker = TestBroker::start(config);
    let (mut ws, head) = RawWs::connect(broker.addr, "/echo", &[]);
    assert_eq!(raw::status_of(&head), 101, "{head}");
    assert!(ws.send_text("hello"));
    assert_eq!(ws.read_text(), "hello");
    assert!(ws.send_raw(&RawWs::header(true, 1, GIB)));
    assert_eq!(ws.expect_close().0, Some(close::MESSAGE_TOO_BIG));
}

/// The broker's own process, measured from outside: three sockets each declare a 1 GiB frame
/// and stream 32 MiB of it. Before the fix the broker buffered all of it (+96 MiB RSS).
#[cfg(target_os = "linux")]
#[actix_rt::test]
async fn streaming_an_oversized_frame_does_not_grow_the_broker() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = free_port();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\nworkers = 1\n[auth]\nanonymous = true\n\
             [webhooks]\noutbox_path = \"\"\n"
        ),
    )
    .expect("write the config");
    let mut broker = BrokerProcess::spawn(&config, dir.path().join("broker.log"));
    let base = format!("http://127.0.0.1:{port}");
    broker.wait_ready(&base).await;
    let addr = format!("127.0.0.1:{port}").parse().expect("address");
    let before = broker.rss_kib();
    let streamed = actix_rt::task::spawn_blocking(move || {
        let chunk = vec![b'x'; 64 * 1024];
        let mut streamed = 0u64;
        for _ in 0..3 {
            let (mut ws, head) = RawWs::connect(addr, "/ws", &[]);
            assert_eq!(raw::status_of(&head), 101, "{head}");
            ws.read_json();
            assert!(ws.send_raw(&RawWs::header(true, 2, GIB)));
            for _ in 0..512 {
                if !ws.send_raw(&chunk) {
                    break; // the broker hung up: nothing more is accepted
                }
                streamed += chunk.len() as u64;
            }
            assert_eq!(ws.expect_close().0, Some(close::MESSAGE_TOO_BIG));
        }
        streamed
    })
    .await
    .expect("the attack ran");
    let after = broker.rss_kib();
    eprintln!(
        "oversized frames: streamed {} MiB, broker RSS {before} KiB -> {after} KiB",
        streamed >> 20
    );
    assert!(
        after < before + 8 * 1024,
        "the broker grew from {before} KiB to {after} KiB"
    );
}

// ---- HTTP helpers ----

const KEY: &str = "security-test-api-key-0123456789";

/// `method path` with `Authorization: Bearer <bearer>`; the status and the JSON body.
async fn call(
    broker: &TestBroker,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = awc::Client::new();
    let url = broker.http_url(path);
    let req = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        other => panic!("{other}"),
    }
    .bearer_auth(bearer);
    let mut resp = match body {
        Some(b) => req.send_json(&b).await,
        None => req.send().await,
    }
    .expect("request");
    let bytes = resp.body().limit(1 << 22).await.expect("body");
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (resp.status().as_u16(), value)
}

/// A token with exactly these claims besides `sub` and a future `exp`.
fn token_with(sub: &str, extra: Value) -> String {
    let mut claims = json!({"sub": sub, "exp": u64::MAX / 2, "rooms": ["*"]});
    for (k, v) in extra.as_object().expect("an object") {
        claims[k] = v.clone();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// Connects with `token`; `Ok` once established, `Err(close reason)` when refused.
async fn connect_with(broker: &TestBroker, token: &str) -> Result<Client, (Option<u16>, String)> {
    let mut c = Client::connect(&broker.ws_url(Some(token))).await;
    match c.next_frame().await {
        Some(Frame::Text(bytes)) => {
            let msg: Value = serde_json::from_slice(&bytes).expect("JSON");
            assert_eq!(msg["type"], "system.connection.established", "{msg}");
            Ok(c)
        }
        Some(Frame::Close(reason)) => Err((
            reason.as_ref().map(|r| u16::from(r.code)),
            reason.and_then(|r| r.description).unwrap_or_default(),
        )),
        other => panic!("unexpected first frame {other:?}"),
    }
}

// ---- 2. a configured issuer and audience are required ----

#[actix_rt::test]
async fn a_configured_issuer_and_audience_are_required_on_websocket_and_http() {
    let mut config = test_config();
    config.auth.issuer = "https://idp.example".into();
    config.auth.audience = "switchboard".into();
    let broker = TestBroker::start(config);
    let iss = "https://idp.example";
    let cases = [
        (json!({}), Some("token")),
        (
            json!({"aud": "switchboard"}),
            Some("token issuer not accepted"),
        ),
        (json!({"iss": iss}), Some("token audience not accepted")),
        (
            json!({"iss": "https://evil.example", "aud": "switchboard"}),
            Some("token issuer not accepted"),
        ),
        (
            json!({"iss": iss, "aud": "other"}),
            Some("token audience not accepted"),
        ),
        (json!({"iss": iss, "aud": "switchboard"}), None),
        (json!({"iss": iss, "aud": ["other", "switchboard"]}), None),
    ];
    for (claims, refusal) in cases {
        let mut admin_claims = claims.clone();
        admin_claims["admin"] = json!(true);
        let token = token_with("alice", admin_claims);
        let ws = connect_with(&broker, &token).await;
        let (status, body) = call(&broker, "GET", "/api/rooms", &token, None).await;
        match refusal {
            Some(reason) => {
                let (code, got) = ws.err().expect("refused");
                assert_eq!(code, Some(close::AUTH_FAILED), "{claims}");
                assert!(got.starts_with(reason), "{claims}: {got}");
                assert_eq!(status, 401, "{claims}: {body}");
            }
            None => {
                assert!(ws.is_ok(), "{claims}: {:?}", ws.err());
                assert_eq!(status, 200, "{claims}: {body}");
            }
        }
    }
}

// ---- 3. memory amplification: id length, sessions per user, rooms, bytes ----

#[actix_rt::test]
async fn a_long_message_id_is_refused_on_websocket_and_http() {
    let mut config = test_config();
    config.api.keys = vec![KEY.into()];
    let broker = TestBroker::start(config);
    let mut c = broker.client("a", &["r"]).await;
    c.join("r").await;
    let long = "i".repeat(129);
    c.publish("r", &long, json!(1)).await;
    let err = c.recv_type("system.error").await;
    assert_eq!(err["payload"]["code"], "bad_request");
    assert!(
        err["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 128"),
        "{err}"
    );
    let (status, body) = call(
        &broker,
        "POST",
        "/api/rooms/r/publish",
        KEY,
        Some(json!({"id": long, "payload": 1})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // 128 bytes is fine, and nothing of the refused ones was stored.
    c.publish("r", &"i".repeat(128), json!(2)).await;
    assert_eq!(c.recv_type("room.message").await["seq"], 1);
}

#[actix_rt::test]
async fn sessions_per_user_and_rooms_overall_are_capped() {
    let mut config = test_config();
    config.api.keys = vec![KEY.into()];
    config.limits.max_sessions_per_user = 2;
    config.limits.max_rooms = 2;
    let broker = TestBroker::start(config);
    let t = token("a", &["*"]);
    let mut first = connect_with(&broker, &t).await.expect("first session");
    let _second = connect_with(&broker, &t).await.expect("second session");
    let (code, reason) = connect_with(&broker, &t)
        .await
        .err()
        .expect("third refused");
    assert_eq!(code, Some(close::TOO_MANY_SESSIONS));
    assert!(reason.contains("max_sessions_per_user"), "{reason}");
    // Another user is not affected; the refused session left no trace.
    connect_with(&broker, &token("b", &[]))
        .await
        .expect("another user");

    first.join("r1").await;
    first.join("r2").await;
    first
        .send_json(json!({"type": "room.join", "room": "r3", "id": "j3"}))
        .await;
    let err = first.recv_type("system.error").await;
    assert_eq!(err["payload"]["code"], "limit_exceeded", "{err}");
    assert_eq!(err["correlation_id"], "j3");
    let (status, body) = call(
        &broker,
        "POST",
        "/api/rooms/r4/publish",
        KEY,
        Some(json!({"payload": 1})),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "limit_exceeded");
    // Personal rooms and broadcast are not counted: a user send still works.
    let (status, body) = call(
        &broker,
        "POST",
        "/api/users/a/send",
        KEY,
        Some(json!({"payload": 1})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let metrics = awc::Client::new()
        .get(broker.http_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .body()
        .await
        .expect("body");
    let metrics = String::from_utf8_lossy(&metrics);
    for limit in ["sessions_per_user", "rooms"] {
        assert!(
            metrics.contains(&format!(
                "switchboard_limit_refusals_total{{limit=\"{limit}\"}}"
            )),
            "{metrics}"
        );
    }
}

#[actix_rt::test]
async fn a_room_keeps_at_most_its_byte_budget_of_history() {
    let mut config = test_config();
    config.api.keys = vec![KEY.into()];
    config.history.max_bytes = 64 * 1024;
    let broker = TestBroker::start(config);
    let big = "x".repeat(16 * 1024);
    for i in 0..20 {
        let (status, body) = call(
            &broker,
            "POST",
            "/api/rooms/big/publish",
            KEY,
            Some(json!({"id": format!("m{i}"), "payload": big})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, history) = call(&broker, "GET", "/api/rooms/big/history", KEY, None).await;
    let kept = history["messages"].as_array().expect("messages");
    // 16 KiB payloads plus their envelopes: three fit in 64 KiB.
    assert_eq!(kept.len(), 3, "{}", kept.len());
    assert_eq!(kept.last().expect("newest")["seq"], 20);
    assert_eq!(history["recovered"], false);
}

// ---- 6. payload nesting depth ----

#[actix_rt::test]
async fn deeply_nested_payloads_are_refused_on_websocket_and_http() {
    let mut config = test_config();
    config.api.keys = vec![KEY.into()];
    let broker = TestBroker::start(config);
    let mut c = broker.client("a", &["r"]).await;
    c.join("r").await;
    let deep = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
    for (levels, framing) in [(65, "native"), (32_000, "native"), (65, "jsonrpc")] {
        let frame = match framing {
            "native" => format!(
                r#"{{"type":"room.publish","room":"r","id":"d{levels}","payload":{}}}"#,
                deep(levels)
            ),
            _ => format!(
                r#"{{"jsonrpc":"2.0","method":"room.publish","params":{{"room":"r","payload":{}}},"id":1}}"#,
                deep(levels)
            ),
        };
        c.send_text(&frame).await;
        let err = c.recv().await;
        let message = err["payload"]["message"]
            .as_str()
            .or(err["error"]["message"].as_str())
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains("nests deeper than 64"), "{levels}: {err}");
    }
    c.publish("r", "ok", serde_json::from_str(&deep(63)).unwrap())
        .await;
    assert_eq!(c.recv_type("room.message").await["seq"], 1);
    let body = format!(r#"{{"payload":{}}}"#, deep(20_000));
    let resp = awc::Client::new()
        .post(broker.http_url("/api/rooms/r/publish"))
        .bearer_auth(KEY)
        .content_type("application/json")
        .send_body(body)
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400);
    let (_, history) = call(&broker, "GET", "/api/rooms/r/history", KEY, None).await;
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(1));
}

// ---- 7. aud as an array ----

#[actix_rt::test]
async fn an_audience_array_is_accepted_without_an_audience_configured() {
    let broker = TestBroker::start(test_config());
    let t = token_with("a", json!({"aud": ["x", "y"]}));
    connect_with(&broker, &t).await.expect("accepted");
}

// ---- 8. a repeated token parameter ----

#[actix_rt::test]
async fn a_repeated_token_parameter_is_refused_with_a_reason() {
    let broker = TestBroker::start(test_config());
    let good = token("a", &[]);
    let url = format!("ws://{}/ws?token={good}&token={good}", broker.addr);
    let mut c = Client::connect(&url).await;
    let closed = c.expect_close().await;
    assert_eq!(closed.code, Some(close::AUTH_FAILED));
    assert_eq!(
        closed.reason,
        "token given more than once in the query string"
    );
}

// ---- 14. id squatting and personal rooms ----

/// The API publishes id `x` to room `r`: the seq and the `duplicate` flag it got.
async fn api_publish_x(broker: &TestBroker) -> (Option<u64>, Value) {
    let body = json!({"id": "x", "payload": "api"});
    let (_, api) = call(broker, "POST", "/api/rooms/r/publish", KEY, Some(body)).await;
    (api["seq"].as_u64(), api["duplicate"].clone())
}

#[actix_rt::test]
async fn message_ids_are_deduplicated_per_publisher() {
    let mut config = test_config();
    config.api.keys = vec![KEY.into()];
    let broker = TestBroker::start(config);
    let mut mallory = broker.client("mallory", &["r"]).await;
    let mut alice = broker.client("alice", &["r"]).await;
    mallory.join("r").await;
    alice.join("r").await;
    // Mallory claims "x" first; Alice's "x" is still delivered, and so is the API's.
    mallory.publish("r", "x", json!("squat")).await;
    assert_eq!(mallory.skip_until("ack").await["seq"], 1);
    alice.recv_type("room.message").await;
    alice.publish("r", "x", json!("mine")).await;
    let delivered = alice.recv_type("room.message").await;
    assert_eq!(
        (delivered["seq"].as_u64(), &delivered["payload"]),
        (Some(2), &json!("mine"))
    );
    let ack = alice.recv_type("ack").await;
    assert_eq!(ack["seq"], 2);
    assert!(ack["payload"].get("duplicate").is_none(), "{ack}");
    assert_eq!(api_publish_x(&broker).await, (Some(3), json!(false)));
    // A retry by the same publisher is still a duplicate.
    alice.publish("r", "x", json!("mine")).await;
    let ack = alice.skip_until("ack").await;
    assert_eq!(
        (ack["seq"].as_u64(), &ack["payload"]["duplicate"]),
        (Some(2), &json!(true))
    );
    assert_eq!(api_publish_x(&broker).await, (Some(3), json!(true)));
}

#[actix_rt::test]
async fn a_wildcard_token_cannot_join_another_users_personal_room() {
    let broker = TestBroker::start(test_config());
    let mut mallory = broker.client("mallory", &["*"]).await;
    mallory
        .send_json(json!({"type": "room.join", "room": "user:alice", "id": "j"}))
        .await;
    let err = mallory.recv_type("system.error").await;
    assert_eq!(err["payload"]["code"], "forbidden", "{err}");
    // Its own personal room it is in already; an admin token may join another's.
    let admin = token_with("ops", json!({"rooms": ["user:*"], "admin": true}));
    let mut ops = connect_with(&broker, &admin).await.expect("admin connects");
    ops.join("user:alice").await;
}

// ---- 9. JSON-RPC ids echoed exactly; 10. broker params must be an object ----

/// The next text frame as sent (not parsed: parsing would round the numbers under test).
async fn next_text(c: &mut Client) -> String {
    loop {
        match c.next_frame().await {
            Some(Frame::Text(bytes)) => {
                let text = String::from_utf8(bytes.to_vec()).expect("UTF-8");
                if !text.contains("system.ping") {
                    return text;
                }
            }
            Some(Frame::Ping(_)) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

#[actix_rt::test]
async fn jsonrpc_ids_come_back_exactly_as_sent() {
    let broker = TestBroker::start(test_config());
    let mut c = broker.client("a", &["r"]).await;
    for id in [
        "123456789012345678901234567890",
        "-0",
        "1.50",
        "1e400",
        r#""\u00e9""#,
    ] {
        c.send_text(&format!(
            r#"{{"jsonrpc":"2.0","method":"system.ping","id":{id}}}"#
        ))
        .await;
        let answer = next_text(&mut c).await;
        assert!(
            answer.starts_with(&format!(r#"{{"id":{id},"#)),
            "{id}: {answer}"
        );
        // Errors too.
        c.send_text(&format!(
            r#"{{"jsonrpc":"2.0","method":"room.leave","params":{{"room":"nope"}},"id":{id}}}"#
        ))
        .await;
        let answer = next_text(&mut c).await;
        assert!(
            answer.starts_with(&format!(r#"{{"id":{id},"#)),
            "{id}: {answer}"
        );
    }
}

#[actix_rt::test]
async fn broker_methods_refuse_params_given_as_an_array() {
    let broker = TestBroker::start(test_config());
    let mut c = broker.client("a", &["r"]).await;
    c.join("r").await;
    c.send_text(r#"{"jsonrpc":"2.0","method":"room.publish","params":["r","m1",{"a":1}],"id":9}"#)
        .await;
    let answer = c.skip_until_result().await;
    assert_eq!(answer["id"], 9);
    assert_eq!(answer["error"]["code"], -32602, "{answer}");
    // Nothing was published.
    c.publish("r", "after", json!(1)).await;
    assert_eq!(c.recv_type("room.message").await["seq"], 1);
}

// ---- 11. the same-origin check does not trust Host ----

#[test]
fn origins_are_checked_against_public_urls_or_loopback_not_the_host_header() {
    let mut config = test_config();
    config.server.public_urls = vec!["https://chat.example.com".into()];
    let broker = TestBroker::start(config);
    let port = broker.addr.port();
    let path = ws_path("a", &[]);
    let rebinding = format!("attacker.example:{port}");
    let cases = [
        (format!("http://{rebinding}"), rebinding.clone(), 403),
        (
            format!("evil://127.0.0.1:{port}"),
            format!("127.0.0.1:{port}"),
            403,
        ),
        ("null".to_owned(), format!("127.0.0.1:{port}"), 403),
        (
            "https://chat.example.com".to_owned(),
            rebinding.clone(),
            101,
        ),
        (format!("http://127.0.0.1:{port}"), rebinding.clone(), 101),
        (
            format!("http://localhost:{port}"),
            format!("localhost:{port}"),
            101,
        ),
    ];
    for (origin, host, expected) in cases {
        let (_, head) = RawWs::connect(
            broker.addr,
            &path,
            &[("Origin", origin.as_str()), ("Host", host.as_str())],
        );
        assert_eq!(
            raw::status_of(&head),
            expected,
            "Origin {origin}, Host {host}: {head}"
        );
    }
}

// ---- 4. a damaged webhook outbox is not silently half read ----

/// A config for the real binary: loopback `port`, anonymous, the given outbox and extras.
fn binary_config(
    dir: &std::path::Path,
    port: u16,
    outbox: &std::path::Path,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!("switchboard-{port}.toml"));
    let outbox = toml::Value::String(outbox.to_string_lossy().into_owned());
    std::fs::write(
        &path,
        format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\nworkers = 1\n[auth]\nanonymous = true\n\
             [webhooks]\noutbox_path = {outbox}\n{extra}"
        ),
    )
    .expect("write the config");
    path
}

/// An outbox file with `n` pending deliveries whose page 5 is overwritten.
fn damaged_outbox(path: &std::path::Path, n: usize) {
    use switchboard::webhooks::outbox::{NewEndpoint, Outbox};
    {
        let mut outbox = Outbox::open(path).expect("create the outbox");
        let endpoint = outbox
            .insert_endpoint(
                NewEndpoint {
                    url: "https://receiver.example/hook".into(),
                    secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                    events: vec!["room.message".into()],
                    rooms: vec!["*".into()],
                    rate_limit_per_s: 10,
                },
                0,
            )
            .expect("an endpoint");
        for _ in 0..n {
            outbox
                .enqueue(&endpoint.id, "room.message", &"x".repeat(1000), 0)
                .expect("enqueue");
        }
    }
    let mut bytes = std::fs::read(path).expect("read the outbox");
    bytes[4 * 4096..5 * 4096].fill(0x55);
    std::fs::write(path, bytes).expect("damage the outbox");
}

#[cfg(unix)]
#[actix_rt::test]
async fn a_damaged_outbox_stops_the_start_or_is_moved_aside_by_option() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let outbox = dir.path().join("outbox.db");
    damaged_outbox(&outbox, 50);

    let port = free_port();
    let config = binary_config(dir.path(), port, &outbox, "");
    let mut refused = BrokerProcess::spawn(&config, dir.path().join("refused.log"));
    let status = refused.wait_exit();
    let log = refused.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&outbox.display().to_string()),
        "names the file: {log}"
    );
    assert!(
        log.contains("damaged") && log.contains(".recover"),
        "says how to recover: {log}"
    );
    assert!(log.contains("on_corrupt_outbox"), "names the option: {log}");
    let mut checked =
        BrokerProcess::spawn_args(&["check-config"], &config, dir.path().join("check.log"));
    assert!(
        !checked.wait_exit().success(),
        "check-config reports it too"
    );
    assert!(checked.log().contains("damaged"), "{}", checked.log());

    let config = binary_config(
        dir.path(),
        port,
        &outbox,
        "on_corrupt_outbox = \"move_aside\"\n",
    );
    let mut moved = BrokerProcess::spawn(&config, dir.path().join("moved.log"));
    moved.wait_ready(&format!("http://127.0.0.1:{port}")).await;
    let log = moved.log();
    assert!(
        log.contains("ERROR") && log.contains("EMPTY outbox"),
        "{log}"
    );
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list the dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("outbox.db.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept: {aside:?}");
    let ready = awc::Client::new()
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
}

// ---- 12. check-config catches what serve would trip on ----

#[cfg(unix)]
#[test]
fn check_config_reports_a_padded_api_key_and_an_unusable_outbox_path() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let check = |name: &str, outbox: &std::path::Path, extra: &str| {
        let config = binary_config(dir.path(), 1, outbox, extra);
        let mut p = BrokerProcess::spawn_args(
            &["check-config"],
            &config,
            dir.path().join(format!("{name}.log")),
        );
        let status = p.wait_exit();
        (status.success(), p.log())
    };
    let fine = dir.path().join("outbox.db");
    let (ok, log) = check("fine", &fine, "");
    assert!(ok, "{log}");
    assert!(!fine.exists(), "check-config creates nothing");
    let (ok, log) = check(
        "padded",
        &fine,
        "[api]\nkeys = [\" padded-key-0123456789 \"]\n",
    );
    assert!(
        !ok && log.contains("api.keys") && log.contains("whitespace"),
        "{log}"
    );
    let (ok, log) = check("no-dir", &dir.path().join("missing/outbox.db"), "");
    assert!(!ok && log.contains("does not exist"), "{log}");
    let (ok, log) = check("a-dir", dir.path(), "");
    assert!(!ok && log.contains("is a directory"), "{log}");
}

// ---- 5. a trickled request body is cut off ----

#[test]
fn a_trickled_request_body_gets_408_and_the_connection_is_closed() {
    let mut config = test_config();
    config.api.keys = vec![KEY.into()];
    config.api.body_timeout = std::time::Duration::from_secs(1);
    let broker = TestBroker::start(config);
    let mut http = raw::RawHttp::connect(broker.addr);
    let head = format!(
        "POST /api/rooms/r/publish HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"payload\":"
    );
    assert!(http.send(head.as_bytes()));
    // One byte every 200 ms, never reaching the declared 100 (the loop ends by itself).
    let mut trickle = http.try_clone();
    let trickler = std::thread::spawn(move || {
        for _ in 0..50 {
            if !trickle.send(b" ") {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    });
    let started = std::time::Instant::now();
    let response = http.read_response().expect("a response before the close");
    assert_eq!(response.status, 408, "{response:?}");
    assert!(response.body.contains("request_timeout"), "{response:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(http.read_response().is_none(), "the connection is closed");
    trickler.join().expect("the trickle thread");
}

// ---- 13. after SIGTERM, an open keep-alive connection gets the documented 503 ----

#[cfg(unix)]
#[actix_rt::test]
async fn after_sigterm_readyz_answers_503_on_an_open_keep_alive_connection() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = free_port();
    // The default server.drain_delay: nothing about shutdown is configured.
    let config = binary_config(dir.path(), port, std::path::Path::new(""), "");
    let mut broker = BrokerProcess::spawn(&config, dir.path().join("broker.log"));
    broker.wait_ready(&format!("http://127.0.0.1:{port}")).await;
    let addr = format!("127.0.0.1:{port}").parse().expect("address");
    let mut http = raw::RawHttp::connect(addr);
    assert_eq!(http.get("/readyz").expect("an answer").status, 200);
    broker.terminate();
    // Like a load balancer's health check on its kept-alive connection, every 50 ms: it
    // must hear 503 (not a reset) for the drain delay (1 s) before the broker goes.
    let signalled = std::time::Instant::now();
    let mut first_503 = None;
    let mut last_503 = None;
    for _ in 0..200 {
        let Some(response) = http.get("/readyz") else {
            break; // the broker has stopped
        };
        if response.status == 503 {
            assert!(response.body.contains("shutting_down"), "{response:?}");
            first_503.get_or_insert_with(std::time::Instant::now);
            last_503 = Some(std::time::Instant::now());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (first, last) = (first_503.expect("a 503"), last_503.expect("a 503"));
    assert!(first - signalled < std::time::Duration::from_millis(500));
    assert!(
        last - first >= std::time::Duration::from_millis(800),
        "503 was answered for only {:?}",
        last - first
    );
    assert!(broker.wait_exit().success(), "{}", broker.log());
}
