//! The ASAP wire, spoken by hand: `/asap/ws` frames and `POST /asap` bodies against a real
//! broker. What the real Python client sees is in `tests/asap_python.rs`; these tests pin
//! what it cannot show (exact frames and their order, error codes, limits, timeouts, who
//! may answer a forwarded request).

use crate::support;

use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::{json, Value};
use support::{test_config, token, Client, TestBroker};
use switchboard::asap::Skill;
use switchboard::{Config, HandlerError, HandlerRequest, Origin, Reply};

const BROKER: &str = "urn:asap:agent:switchboard";

/// A skill that pushes `updates` later messages, then answers with where the request came
/// from.
struct Counter;

impl Actor for Counter {
    type Context = Context<Self>;
}

impl Handler<HandlerRequest> for Counter {
    type Result = Result<Reply, HandlerError>;

    fn handle(&mut self, req: HandlerRequest, _: &mut Self::Context) -> Self::Result {
        let updates = req.payload["input"]["updates"].as_u64().unwrap_or(0);
        let mut pushed = 0;
        if let Some(push) = &req.push {
            for i in 0..updates {
                let update = json!({"task_id": "t", "update_type": "progress", "status": "working",
                    "progress": {"percent": i}});
                pushed += u64::from(push.push(Reply::new("task.update", update)));
            }
        }
        let sender = req.envelope.as_ref().map(|e| e.sender.clone());
        Ok(Reply::new(
            "task.response",
            json!({"task_id": "t", "status": "completed",
                "result": {"origin": format!("{:?}", req.origin), "pushed": pushed, "sender": sender}}),
        ))
    }
}

/// A v1-only handler.
struct V1Only;

impl Actor for V1Only {
    type Context = Context<Self>;
}

impl Handler<HandlerRequest> for V1Only {
    type Result = Result<Reply, HandlerError>;

    fn handle(&mut self, req: HandlerRequest, _: &mut Self::Context) -> Self::Result {
        assert_eq!(req.origin, Origin::Socket, "only v1 requests reach it");
        Ok(Reply::new("task.response", json!({"v1": true})))
    }
}

fn anonymous_config() -> Config {
    let mut config = test_config();
    config.auth.anonymous = true;
    config.router.allow_anonymous = true;
    config
}

fn broker_with(config: Config) -> TestBroker {
    TestBroker::start_with(config, |broker| async move {
        broker
            .register_skill(
                Skill::new("count", "pushes, then answers"),
                Counter.start().recipient(),
            )
            .await
            .unwrap();
        broker
            .register_handler("task.request", V1Only.start().recipient())
            .await
            .unwrap();
    })
}

fn envelope(sender: &str, recipient: &str, payload_type: &str, payload: Value) -> Value {
    json!({
        "id": format!("env-{}", uuid()),
        "asap_version": "0.1",
        "timestamp": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "sender": sender,
        "recipient": recipient,
        "payload_type": payload_type,
        "payload": payload,
    })
}

/// An envelope as the broker writes it back: every protocol field, absent ones as their
/// defaults.
fn written(envelope: &Value) -> Value {
    let mut full = json!({"correlation_id": null, "trace_id": null, "requires_ack": false,
        "extensions": null});
    for (key, value) in envelope.as_object().unwrap() {
        full[key] = value.clone();
    }
    full
}

fn task(skill: &str, input: Value) -> Value {
    envelope(
        "urn:asap:agent:tester",
        BROKER,
        "task.request",
        json!({"conversation_id": "c", "skill_id": skill, "input": input}),
    )
}

fn uuid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn send(id: Value, envelope: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": "asap.send", "params": {"envelope": envelope}, "id": id})
}

async fn agent(broker: &TestBroker) -> Client {
    Client::connect(&format!("ws://{}/asap/ws", broker.addr)).await
}

async fn post(broker: &TestBroker, body: Value) -> Value {
    let mut response = awc::Client::new()
        .post(broker.http_url("/asap"))
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[actix_rt::test]
async fn a_skill_pushes_later_messages_then_answers_and_knows_its_endpoint() {
    let broker = broker_with(anonymous_config());
    let mut ws = agent(&broker).await;
    let mut request = task("count", json!({"updates": 3}));
    request["requires_ack"] = json!(true);
    ws.send_json(send(json!(1), request.clone())).await;
    let ack = ws.recv().await;
    assert_eq!(ack["method"], "asap.ack", "the ack comes first: {ack}");
    assert!(ack.get("id").is_none());
    assert_eq!(
        ack["params"]["envelope"]["payload"]["original_envelope_id"],
        request["id"]
    );
    assert_eq!(ack["params"]["envelope"]["payload"]["status"], "received");
    for percent in 0..3 {
        let push = ws.recv().await;
        assert!(push["id"].as_str().unwrap().starts_with("push-"), "{push}");
        let update = &push["result"]["envelope"];
        assert_eq!(update["payload_type"], "task.update");
        assert_eq!(update["payload"]["progress"]["percent"], percent);
        assert_eq!(update["correlation_id"], request["id"]);
    }
    let answer = ws.recv().await;
    assert_eq!(answer["id"], 1);
    let envelope = &answer["result"]["envelope"];
    assert_eq!(envelope["correlation_id"], request["id"]);
    assert_eq!(envelope["sender"], BROKER);
    assert_eq!(envelope["recipient"], "urn:asap:agent:tester");
    assert_eq!(envelope["payload"]["result"]["origin"], "AsapSocket");
    assert_eq!(envelope["payload"]["result"]["pushed"], 3);
    assert_eq!(
        envelope["payload"]["result"]["sender"],
        "urn:asap:agent:tester"
    );
    let fields: Vec<&String> = envelope.as_object().unwrap().keys().collect();
    assert_eq!(
        fields.len(),
        11,
        "exactly the protocol's fields: {fields:?}"
    );

    let over_http = post(
        &broker,
        send(json!("h"), task("count", json!({"updates": 3}))),
    )
    .await;
    let result = &over_http["result"]["envelope"]["payload"]["result"];
    assert_eq!(result["origin"], "AsapHttp");
    assert_eq!(result["pushed"], 0, "HTTP callers take the answer only");
}

#[actix_rt::test]
async fn handlers_serve_only_the_endpoints_they_were_registered_for() {
    let broker = broker_with(anonymous_config());
    // `task.request` has a v1 handler, but no ASAP skill `nope` and no ASAP handler.
    let answer = post(&broker, send(json!(1), task("nope", json!({})))).await;
    assert_eq!(answer["error"]["code"], -32012, "{answer}");
    assert_eq!(
        answer["error"]["data"]["asap_taxonomy_code"],
        "asap:transport/handler_not_found"
    );
    let mut v1 = Client::connect(&broker.ws_url(None)).await;
    v1.recv_type("system.connection.established").await;
    v1.send_json(json!({"type": "task.request", "id": "t1", "payload": {}}))
        .await;
    assert_eq!(v1.recv_type("task.response").await["payload"]["v1"], true);
    v1.send_json(json!({"type": "skill:count", "id": "t2", "payload": {}}))
        .await;
    let refused = v1.recv_type("system.error").await;
    assert_eq!(refused["payload"]["code"], "unknown_type", "{refused}");
}

#[actix_rt::test]
async fn a_forwarded_request_gets_the_agents_reply_and_only_that_agent_may_answer() {
    let broker = broker_with(anonymous_config());
    let mut b = agent(&broker).await;
    b.send_json(json!({"jsonrpc": "2.0", "method": "asap.register",
        "params": {"agents": ["urn:asap:agent:b"]}, "id": "reg"}))
        .await;
    assert_eq!(
        b.recv().await["result"]["registered"],
        json!(["urn:asap:agent:b"])
    );
    let mut other = agent(&broker).await;
    other
        .send_json(json!({"jsonrpc": "2.0", "method": "asap.register",
            "params": {"agents": ["urn:asap:agent:b"]}, "id": "steal"}))
        .await;
    let refused = other.recv().await;
    assert_eq!(
        refused["error"]["code"], -32034,
        "a served URN is not taken over: {refused}"
    );

    let mut a = agent(&broker).await;
    let request = envelope(
        "urn:asap:agent:a",
        "urn:asap:agent:b",
        "com.example.ask",
        json!({"q": 1}),
    );
    a.send_json(send(json!("a1"), request.clone())).await;
    let forwarded = b.recv().await;
    assert!(forwarded["id"].as_str().unwrap().starts_with("push-"));
    assert_eq!(
        forwarded["result"]["envelope"],
        written(&request),
        "forwarded unchanged"
    );
    let mut reply = envelope(
        "urn:asap:agent:b",
        "urn:asap:agent:a",
        "com.example.answer",
        json!({"a": 2}),
    );
    reply["correlation_id"] = request["id"].clone();
    // Another connection cannot answer for B: its "reply" reaches A as a message of its own
    // (a push), not as the answer to A's request.
    let mut forged = reply.clone();
    forged["id"] = json!("forged");
    other.send_json(send(json!("x"), forged.clone())).await;
    let delivered = other.recv().await;
    assert_eq!(
        delivered["result"]["envelope"]["payload_type"],
        "MessageAck"
    );
    let push = a.recv().await;
    assert!(push["id"].as_str().unwrap().starts_with("push-"), "{push}");
    assert_eq!(push["result"]["envelope"]["id"], "forged");
    b.send_json(send(json!("b1"), reply.clone())).await;
    let receipt = b.recv().await;
    assert_eq!(receipt["id"], "b1");
    assert_eq!(receipt["result"]["envelope"]["payload_type"], "MessageAck");
    assert_eq!(receipt["result"]["envelope"]["correlation_id"], reply["id"]);
    let answer = a.recv().await;
    assert_eq!(answer["id"], "a1");
    assert_eq!(
        answer["result"]["envelope"],
        written(&reply),
        "B's reply, unchanged"
    );
}

#[actix_rt::test]
async fn a_silent_agent_times_out_and_a_departed_one_fails_at_once() {
    let mut config = anonymous_config();
    config.asap.route_timeout = Duration::from_millis(500);
    let broker = broker_with(config);
    let mut b = agent(&broker).await;
    // Sending once makes the connection the route to its sender.
    b.send_json(send(
        json!(0),
        task("count", json!({})).tap_sender("urn:asap:agent:b"),
    ))
    .await;
    b.recv().await;
    let ask = || {
        envelope(
            "urn:asap:agent:a",
            "urn:asap:agent:b",
            "com.example.ask",
            json!({}),
        )
    };
    let started = Instant::now();
    let late = post(&broker, send(json!(1), ask())).await;
    assert_eq!(late["error"]["code"], -32033, "{late}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    b.recv().await; // the forwarded request B never answered

    let mut a = agent(&broker).await;
    a.send_json(send(json!(2), ask())).await;
    b.recv().await;
    b.close().await;
    let gone = a.recv().await;
    assert_eq!(gone["error"]["code"], -32032, "{gone}");
    let offline = post(&broker, send(json!(3), ask())).await;
    assert_eq!(offline["error"]["code"], -32032, "{offline}");
    assert_eq!(
        offline["error"]["data"]["details"]["recipient"],
        "urn:asap:agent:b"
    );
}

trait TapSender {
    fn tap_sender(self, sender: &str) -> Value;
}

impl TapSender for Value {
    fn tap_sender(mut self, sender: &str) -> Value {
        self["sender"] = json!(sender);
        self
    }
}

#[actix_rt::test]
async fn stale_timestamps_reused_nonces_and_bad_frames_get_their_codes_and_the_socket_stays() {
    let broker = broker_with(anonymous_config());
    let mut ws = agent(&broker).await;
    let mut stale = task("count", json!({}));
    stale["timestamp"] = json!("2020-01-01T00:00:00Z");
    ws.send_json(send(json!(1), stale)).await;
    let answer = ws.recv().await;
    assert_eq!(answer["error"]["code"], -32002, "{answer}");
    assert_eq!(answer["error"]["data"]["recoverable"], true);
    let mut first = task("count", json!({}));
    first["extensions"] = json!({"nonce": format!("n-{}", uuid())});
    let mut again = task("count", json!({}));
    again["extensions"] = first["extensions"].clone();
    ws.send_json(send(json!(2), first)).await;
    assert!(ws.recv().await.get("result").is_some());
    let replay = post(&broker, send(json!(3), again)).await;
    assert_eq!(replay["error"]["code"], -32003, "{replay}");
    for (frame, code) in [
        ("nope", -32700),
        ("[1]", -32600),
        (
            r#"{"jsonrpc":"2.0","method":"asap.fly","params":{},"id":4}"#,
            -32601,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":{}},"id":5}"#,
            -32602,
        ),
    ] {
        ws.send_text(frame).await;
        let answer = ws.recv().await;
        assert_eq!(answer["error"]["code"], code, "{frame}: {answer}");
        assert!(answer["error"]["data"]["asap_taxonomy_code"].is_string());
    }
    ws.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(ws.recv().await, json!({"type": "pong"}));
    ws.send_json(send(json!(6), task("count", json!({})))).await;
    assert_eq!(ws.recv().await["id"], 6, "still answering");
}

#[actix_rt::test]
async fn the_broker_pings_agents_with_application_frames() {
    let mut config = anonymous_config();
    config.heartbeat.interval = Duration::from_millis(100);
    let broker = broker_with(config);
    let mut ws = agent(&broker).await;
    assert_eq!(ws.recv().await, json!({"type": "ping"}));
    ws.send_text(r#"{"type":"pong"}"#).await;
    assert_eq!(ws.recv().await, json!({"type": "ping"}));
}

#[actix_rt::test]
async fn tokens_are_checked_when_anonymous_access_is_off() {
    let broker = broker_with(test_config());
    let body = send(json!(1), task("count", json!({})));
    let response = awc::Client::new()
        .post(broker.http_url("/asap"))
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers().get("www-authenticate").unwrap(),
        "Bearer"
    );
    let mut response = awc::Client::new()
        .post(broker.http_url("/asap"))
        .bearer_auth(token("agent-1", &[]))
        .send_json(&body)
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer["result"]["envelope"]["payload"]["result"]["origin"],
        "AsapHttp"
    );
    let refused =
        Client::try_connect(awc::Client::new().ws(format!("ws://{}/asap/ws", broker.addr))).await;
    if let Ok(mut ws) = refused {
        assert!(ws.expect_close().await.code.is_some_and(|c| c >= 4000));
    }
    let mut ws = Client::try_connect(
        awc::Client::new()
            .ws(format!("ws://{}/asap/ws", broker.addr))
            .bearer_auth(token("agent-1", &[])),
    )
    .await
    .unwrap();
    ws.send_json(body).await;
    assert_eq!(ws.recv().await["id"], 1);
}

#[actix_rt::test]
async fn batches_limits_and_encodings() {
    let mut config = anonymous_config();
    config.asap.max_batch = 3;
    config.asap.max_request_bytes = 4096;
    let broker = broker_with(config);
    let batch = json!([
        send(json!(1), task("count", json!({}))),
        {"jsonrpc": "2.0", "method": "asap.send", "params": {"envelope": task("count", json!({}))}},
        send(json!(3), json!({"sender": "x"})),
    ]);
    let answers = post(&broker, batch).await;
    let answers = answers.as_array().expect("an array");
    assert_eq!(
        answers.len(),
        2,
        "a notification has no answer: {answers:?}"
    );
    assert_eq!(answers[0]["id"], 1);
    assert!(answers[0].get("result").is_some());
    assert_eq!(answers[1]["id"], 3);
    assert_eq!(answers[1]["error"]["code"], -32602);
    let too_many = post(&broker, json!([1, 2, 3, 4])).await;
    assert_eq!(too_many["error"]["code"], -32600);
    assert_eq!(post(&broker, json!([])).await["error"]["code"], -32600);

    let response = awc::Client::new()
        .post(broker.http_url("/asap"))
        .insert_header(("origin", "http://evil.example"))
        .insert_header(("content-type", "text/plain"))
        .send_body(send(json!(1), task("count", json!({}))).to_string())
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        403,
        "a foreign page cannot make the broker act"
    );

    let big = send(json!(1), task("count", json!({"pad": "x".repeat(5000)})));
    let response = awc::Client::new()
        .post(broker.http_url("/asap"))
        .send_json(&big)
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let response = awc::Client::new()
        .post(broker.http_url("/asap"))
        .insert_header(("content-encoding", "compress"))
        .send_body("x")
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let mut response = awc::Client::new()
        .post(broker.http_url("/asap"))
        .insert_header(("asap-version", "1.0, 2.1"))
        .send_json(&send(json!(1), task("count", json!({}))))
        .await
        .unwrap();
    assert_eq!(response.headers().get("asap-version").unwrap(), "2.1");
    assert!(response
        .json::<Value>()
        .await
        .unwrap()
        .get("result")
        .is_some());
}

#[actix_rt::test]
async fn the_manifest_lists_registered_skills_with_an_etag_and_health_reports_load() {
    let broker = broker_with(anonymous_config());
    let mut response = awc::Client::new()
        .get(broker.http_url("/.well-known/asap/manifest.json"))
        .send()
        .await
        .unwrap();
    let etag = response.headers().get("etag").unwrap().clone();
    assert_eq!(
        response.headers().get("cache-control").unwrap(),
        "public, max-age=300"
    );
    let manifest: Value = response.json().await.unwrap();
    assert_eq!(manifest["id"], BROKER);
    assert_eq!(manifest["capabilities"]["skills"][0]["id"], "count");
    assert_eq!(
        manifest["endpoints"]["events"],
        format!("ws://{}/asap/ws", broker.addr)
    );
    let response = awc::Client::new()
        .get(broker.http_url("/.well-known/asap/manifest.json"))
        .insert_header(("if-none-match", etag))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 304);
    let mut response = awc::Client::new()
        .get(broker.http_url("/.well-known/asap/health"))
        .send()
        .await
        .unwrap();
    let health: Value = response.json().await.unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["agent_id"], BROKER);
    assert!(health["load"]["active_tasks"].is_u64());
}

#[actix_rt::test]
async fn asap_can_be_switched_off() {
    let mut config = anonymous_config();
    config.asap.enabled = false;
    let broker = broker_with(config);
    let response = awc::Client::new()
        .post(broker.http_url("/asap"))
        .send_json(&json!({}))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[actix_rt::test]
async fn a_rate_limited_request_is_refused_under_its_own_id() {
    let mut config = anonymous_config();
    config.limits.messages_per_second = 1;
    config.limits.burst = 1;
    let broker = broker_with(config);
    let mut ws = agent(&broker).await;
    ws.send_json(send(json!(1), task("count", json!({})))).await;
    ws.send_json(send(json!(2), task("count", json!({})))).await;
    let mut answers = vec![ws.recv().await, ws.recv().await];
    answers.sort_by_key(|a| a["id"].as_i64());
    assert!(answers[0].get("result").is_some(), "{answers:?}");
    assert_eq!(
        answers[1]["id"], 2,
        "the client can match the refusal: {answers:?}"
    );
    assert_eq!(answers[1]["error"]["code"], -32001);
    assert_eq!(
        answers[1]["error"]["data"]["asap_taxonomy_code"],
        "asap:transport/rate_limited"
    );
}

#[actix_rt::test]
async fn a_tokens_agents_claim_bounds_the_senders_and_urns_it_may_use() {
    let broker = broker_with(test_config());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = switchboard::auth::Claims {
        sub: "billing".into(),
        rooms: None,
        publish: None,
        exp: now + 600,
        nbf: None,
        iat: None,
        iss: None,
        aud: None,
        admin: false,
        agents: Some(vec!["urn:asap:agent:billing-*".into()]),
    };
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(support::SECRET.as_bytes()),
    )
    .unwrap();
    let mut ws = Client::try_connect(
        awc::Client::new()
            .ws(format!("ws://{}/asap/ws", broker.addr))
            .bearer_auth(&token),
    )
    .await
    .unwrap();
    let as_other = task("count", json!({})).tap_sender("urn:asap:agent:payroll");
    ws.send_json(send(json!(1), as_other)).await;
    let refused = ws.recv().await;
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    let as_itself = task("count", json!({})).tap_sender("urn:asap:agent:billing-1");
    ws.send_json(send(json!(2), as_itself)).await;
    assert!(ws.recv().await.get("result").is_some());
    ws.send_json(json!({"jsonrpc": "2.0", "method": "asap.register",
        "params": {"agents": ["urn:asap:agent:payroll"]}, "id": 3}))
        .await;
    assert_eq!(ws.recv().await["error"]["code"], -32034);
    ws.send_json(json!({"jsonrpc": "2.0", "method": "asap.register",
        "params": {"agents": ["urn:asap:agent:billing-2"]}, "id": 4}))
        .await;
    assert_eq!(
        ws.recv().await["result"]["registered"],
        json!(["urn:asap:agent:billing-2"])
    );
}
