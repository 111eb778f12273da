//! Room-bound endpoints (`[[endpoints]]`): the agent-host and SOVD profiles exactly as
//! `config.example.toml` writes them, over real WebSockets, fed through the HTTP API (the
//! Redis bridge's own tests are in tests/bridge.rs).

use crate::support;

use std::time::Duration;

use actix_web::{App, HttpServer};
use awc::ws::Frame;
use serde_json::{json, Value};
use support::{example_profile, test_config, token, Client, TestBroker};
use switchboard::config::Config;
use switchboard::endpoint::{EndpointConfig, Framing, Reject};
use switchboard::Broker;

const KEY: &str = "endpoint-test-api-key-0123456789";

fn with_profile(name: &str) -> Config {
    let profile = example_profile(name);
    let mut config = test_config();
    config.api.keys = vec![KEY.into()];
    config.endpoints = profile.endpoints;
    // The SOVD profile's bridge is tested against a Redis of the test's own (bridge.rs).
    config.bridge.redis.clear();
    config
}

/// `POST /api/rooms/{room}/publish` with `body` sent byte for byte; the answer's seq.
async fn publish_raw(broker: &TestBroker, room: &str, body: &str) -> u64 {
    let mut resp = awc::Client::new()
        .post(broker.http_url(&format!("/api/rooms/{room}/publish")))
        .insert_header(("Authorization", format!("Bearer {KEY}")))
        .insert_header(("Content-Type", "application/json"))
        .send_body(body.to_owned())
        .await
        .expect("publish");
    let answer: Value = resp.json().await.expect("JSON answer");
    assert_eq!(resp.status(), 200, "{answer}");
    answer["seq"].as_u64().expect("seq")
}

async fn publish(broker: &TestBroker, room: &str, payload: Value) -> u64 {
    publish_raw(broker, room, &json!({ "payload": payload }).to_string()).await
}

fn agent_url(broker: &TestBroker, query: &str) -> String {
    format!("ws://{}/ws?{query}", broker.addr)
}

#[actix_rt::test]
async fn the_agent_host_flow_joins_the_conversation_from_the_url_and_resumes_after_a_drop() {
    let mut config = with_profile("agent host");
    config.heartbeat.interval = Duration::from_millis(300);
    config.heartbeat.timeout = Duration::from_secs(30);
    let broker = TestBroker::start(config);
    for n in 1..=3 {
        publish(&broker, "conversation:c-1", json!({ "n": n })).await;
    }
    // A Keycloak-style token: a user, no rooms claim.
    let alice = token("alice", &[]);

    let mut tab = Client::connect(&agent_url(
        &broker,
        &format!("token={alice}&conversation_id=c-1"),
    ))
    .await;
    let established = tab.recv_type("system.connection.established").await;
    let old_id = established["payload"]["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let joined = tab.recv_type("room.joined").await;
    assert_eq!(joined["room"], "conversation:c-1");
    assert_eq!(joined["seq"], 3);
    for n in 1..=3 {
        let m = tab.recv_type("room.message").await;
        assert_eq!(
            (m["seq"].as_u64(), &m["payload"]["n"]),
            (Some(n), &json!(n))
        );
    }
    // The user's own channel and broadcast come with it.
    publish(&broker, "user:alice", json!({ "to": "alice" })).await;
    assert_eq!(tab.recv_type("room.message").await["room"], "user:alice");
    publish(&broker, "broadcast", json!({ "to": "all" })).await;
    assert_eq!(tab.recv_type("room.message").await["room"], "broadcast");
    // The browser publishes into its conversation.
    tab.publish("conversation:c-1", "m-4", json!({ "text": "hello" }))
        .await;
    // Members, the publisher among them, get the message; then the publisher's ack.
    assert_eq!(tab.recv_type("room.message").await["id"], "m-4");
    let ack = tab.recv_type("ack").await;
    assert_eq!(ack["seq"], 4);
    // Heartbeat: the broker pings, the client answers.
    let ping = tab.skip_until("system.ping").await;
    tab.send_json(json!({ "type": "system.pong", "correlation_id": ping["id"] }))
        .await;

    // The tab's connection drops; two messages arrive meanwhile.
    drop(tab);
    publish(&broker, "conversation:c-1", json!({ "n": 5 })).await;
    publish(&broker, "conversation:c-1", json!({ "n": 6 })).await;
    // The alias spelling, the token as a cookie this time.
    let req = awc::Client::new()
        .ws(agent_url(&broker, "conversationId=c-1"))
        .cookie(awc::cookie::Cookie::new("switchboard_token", alice.clone()));
    let mut tab = Client::try_connect(req)
        .await
        .expect("connect with a cookie");
    tab.recv_type("system.connection.established").await;
    assert_eq!(
        tab.recv_type("room.joined").await["room"],
        "conversation:c-1"
    );
    tab.send_json(json!({
        "type": "system.connection.resume",
        "id": "r1",
        "payload": { "connection_id": old_id, "rooms": { "conversation:c-1": 4 } }
    }))
    .await;
    // The automatic join replays the latest messages; the resume replays what followed the
    // client's seq 4 before its report. Either way 5 and 6 arrive, each seq in order.
    let mut seqs = Vec::new();
    let resumed = loop {
        let msg = tab.recv().await;
        match msg["type"].as_str() {
            Some("system.connection.resumed") => break msg,
            Some("room.message") if msg["room"] == "conversation:c-1" => {
                seqs.push(msg["seq"].as_u64().unwrap())
            }
            _ => {}
        }
    };
    assert_eq!(resumed["payload"]["session_found"], true, "{resumed}");
    assert_eq!(
        resumed["payload"]["rooms"]["conversation:c-1"]["recovered"],
        true
    );
    assert!(seqs.ends_with(&[5, 6]), "{seqs:?}");
    let history = broker_history(&broker, "conversation:c-1").await;
    assert_eq!(history, [1, 2, 3, 4, 5, 6]);

    // Shutdown: system.connection.close, then 1012.
    let shutdown = broker.shutdown();
    let (report, close) = futures_util::join!(shutdown, async {
        let notice = tab.skip_until("system.connection.close").await;
        (notice, tab.expect_close().await)
    });
    assert!(report.drained);
    assert_eq!(close.0["payload"]["reason"], "server_shutdown");
    assert_eq!(close.1.code, Some(1012));
}

/// The seqs `GET /api/rooms/{room}/history` lists.
async fn broker_history(broker: &TestBroker, room: &str) -> Vec<u64> {
    let mut resp = awc::Client::new()
        .get(broker.http_url(&format!("/api/rooms/{room}/history")))
        .insert_header(("Authorization", format!("Bearer {KEY}")))
        .send()
        .await
        .expect("history");
    let body: Value = resp.json().limit(1 << 24).await.expect("JSON");
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[actix_rt::test]
async fn the_agent_host_refuses_a_bad_or_missing_token_with_4000_and_a_bad_id_with_1008() {
    let broker = TestBroker::start(with_profile("agent host"));
    for query in ["conversation_id=c-1", "conversation_id=c-1&token=not-a-jwt"] {
        let mut client = Client::connect(&agent_url(&broker, query)).await;
        let closed = client.expect_close().await;
        assert_eq!(closed.code, Some(4000), "{query}: {closed:?}");
    }
    // A token in a header is not one of this profile's sources.
    let req = awc::Client::new()
        .ws(agent_url(&broker, "conversation_id=c-1"))
        .bearer_auth(token("alice", &[]));
    let mut client = Client::try_connect(req).await.unwrap();
    assert_eq!(client.expect_close().await.code, Some(4000));
    let alice = token("alice", &[]);
    for (query, says) in [
        (
            format!("token={alice}"),
            "missing query parameter `conversation_id` or `conversationId`",
        ),
        (
            format!("token={alice}&conversation_id=a:b"),
            "may only hold",
        ),
        (
            format!("token={alice}&conversation_id=1&conversationId=2"),
            "more than once",
        ),
    ] {
        let mut client = Client::connect(&agent_url(&broker, &query)).await;
        let closed = client.expect_close().await;
        assert_eq!(closed.code, Some(1008), "{query}");
        assert!(closed.reason.contains(says), "{query}: {closed:?}");
    }
    let metrics = support::metrics_text(broker.addr).await;
    assert_eq!(
        support::metric_value(
            &metrics,
            "switchboard_endpoint_refusals_total{endpoint=\"/ws\",reason=\"param\"}"
        ),
        3.0
    );
}

#[actix_rt::test]
async fn raw_framing_sends_each_payload_byte_for_byte_to_the_clients_of_its_command_only() {
    let broker = TestBroker::start(with_profile("SOVD diagnostics"));
    let url = |command: &str, token: &str| {
        format!("ws://{}/ws/responses/{command}?token={token}", broker.addr)
    };
    let t = token("operator", &[]);
    // An event published before anyone connected.
    let early = r#"{"event":"status","status":"queued"}"#;
    publish_raw(
        &broker,
        "response:abc",
        &format!(r#"{{"payload":{early}}}"#),
    )
    .await;

    let mut first = Client::connect(&url("abc", &t)).await;
    let mut second = Client::connect(&url("abc", &t)).await;
    let mut other = Client::connect(&url("xyz", &t)).await;
    // Late joiners get what was published before them (replay = 100).
    assert_eq!(first.recv_text().await, early);
    assert_eq!(second.recv_text().await, early);
    let events = [
        r#"{"event":"response", "data" : {"dtc": [1, 2.50, "ü"]}}"#,
        r#"{"event":"status","status":"done"}"#,
        r#"{"event":"error","error":{"code":42,"message":"ECU timeout"}}"#,
    ];
    for event in events {
        publish_raw(
            &broker,
            "response:abc",
            &format!(r#"{{"payload":{event}}}"#),
        )
        .await;
    }
    publish_raw(
        &broker,
        "response:xyz",
        r#"{"payload":{"event":"status","status":"other"}}"#,
    )
    .await;
    for event in events {
        assert_eq!(first.recv_text().await, event);
        assert_eq!(second.recv_text().await, event);
    }
    assert_eq!(
        other.recv_text().await,
        r#"{"event":"status","status":"other"}"#
    );

    // Anything but an action gets an error frame, and the connection stays.
    for (frame, code) in [
        ("hello", "bad_request"),
        (r#"{"action":"dance"}"#, "bad_request"),
        (r#"{"event":"response"}"#, "forbidden"),
        (r#"{"action":"subscribe"}"#, "bad_request"),
        (
            r#"{"action":"subscribe","command_id":"a:b"}"#,
            "bad_request",
        ),
    ] {
        other.send_text(frame).await;
        let error: Value = serde_json::from_str(&other.recv_text().await).unwrap();
        assert_eq!(error["event"], "error", "{frame}");
        assert_eq!(error["source"], "switchboard");
        assert_eq!(error["code"], code, "{frame}: {error}");
    }
    // Following another command: its history, then its events.
    other
        .send_text(r#"{"action":"subscribe","command_id":"abc"}"#)
        .await;
    let subscribed: Value = serde_json::from_str(&other.recv_text().await).unwrap();
    assert_eq!(
        subscribed,
        json!({"event": "subscribed", "source": "switchboard", "room": "response:abc"})
    );
    assert_eq!(other.recv_text().await, early);
    for event in events {
        assert_eq!(other.recv_text().await, event);
    }
    other
        .send_text(r#"{"action":"unsubscribe","command_id":"abc"}"#)
        .await;
    let left: Value = serde_json::from_str(&other.recv_text().await).unwrap();
    assert_eq!(
        left,
        json!({"event": "unsubscribed", "source": "switchboard", "room": "response:abc"})
    );

    // Closing leaves no member behind.
    first.close().await;
    second.close().await;
    other.close().await;
    support::wait_metric(broker.addr, "switchboard_connections", |n| n == 0.0).await;
    let mut resp = awc::Client::new()
        .get(broker.http_url("/api/rooms"))
        .insert_header(("Authorization", format!("Bearer {KEY}")))
        .send()
        .await
        .expect("list rooms");
    let rooms: Value = resp.json().await.expect("JSON");
    let members: u64 = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["room"]
                .as_str()
                .is_some_and(|r| r.starts_with("response:"))
        })
        .map(|r| r["members"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(members, 0, "{rooms}");
}

#[actix_rt::test]
async fn raw_clients_are_pinged_and_closed_with_1008_on_a_missing_or_bad_token() {
    let mut config = with_profile("SOVD diagnostics");
    config.heartbeat.interval = Duration::from_millis(200);
    config.heartbeat.timeout = Duration::from_secs(5);
    let broker = TestBroker::start(config);
    let base = format!("ws://{}/ws/responses/abc", broker.addr);
    for url in [base.clone(), format!("{base}?token=garbage")] {
        let mut client = Client::connect(&url).await;
        let closed = client.expect_close().await;
        assert_eq!(closed.code, Some(1008), "{url}");
        assert!(!closed.reason.is_empty(), "{url}: a reason is given");
    }
    let mut client = Client::connect(&format!("{base}?token={}", token("op", &[]))).await;
    client.expect_ping().await;
    client.expect_ping().await;
}

#[actix_rt::test]
async fn reject_http_answers_before_the_upgrade_and_claims_access_checks_the_token_rooms() {
    let mut config = test_config();
    config.endpoints = vec![EndpointConfig::new("/feeds/{feed}")
        .room("feed:{feed}")
        .reject(Reject::Http)
        .replay(2)];
    let broker = TestBroker::start(config);
    let status = |query: String| {
        let url = format!("ws://{}/feeds/{query}", broker.addr);
        async move {
            match awc::Client::new().ws(url).connect().await {
                Err(awc::error::WsClientError::InvalidResponseStatus(status)) => status.as_u16(),
                Ok(_) => 101,
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(status("a".into()).await, 401);
    assert_eq!(status("a?token=x".into()).await, 401);
    assert_eq!(
        status(format!("a?token={}", token("u", &["feed:b"]))).await,
        403
    );
    assert_eq!(
        status(format!("a%3Ab?token={}", token("u", &["*"]))).await,
        400
    );
    let mut client = Client::connect(&format!(
        "ws://{}/feeds/a?token={}",
        broker.addr,
        token("u", &["feed:a"])
    ))
    .await;
    client.recv_type("system.connection.established").await;
    assert_eq!(client.recv_type("room.joined").await["room"], "feed:a");
    // publish = false: the endpoint's room is read-only for its clients.
    client.publish("feed:a", "m1", json!({})).await;
    let error = client.recv_type("system.error").await;
    assert_eq!(error["payload"]["code"], "forbidden");
}

#[actix_rt::test]
async fn an_embedder_mounts_an_endpoint_with_the_builder() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let mut config = test_config();
            config.api.keys = vec![KEY.into()];
            let broker = Broker::start(config).unwrap();
            assert!(broker
                .endpoint(EndpointConfig::new("/bad/{x}").room("fixed"))
                .is_err());
            let jobs = broker
                .endpoint(
                    EndpointConfig::new("/jobs/{job}")
                        .room("job:{job}")
                        .framing(Framing::Raw)
                        .replay(10),
                )
                .unwrap();
            let mounted = broker.configure();
            let server = HttpServer::new(move || {
                App::new()
                    .configure(mounted.clone())
                    .configure(jobs.clone())
            })
            .workers(1)
            .disable_signals()
            .listen(listener)
            .unwrap()
            .run();
            let _ = ready_tx.send(broker);
            let _ = server.await;
        });
    });
    let broker = ready_rx.recv_timeout(support::WAIT).unwrap();
    let mut client = Client::connect(&format!(
        "ws://{addr}/jobs/7?token={}",
        token("w", &["job:*"])
    ))
    .await;
    let receipt = broker
        .publish(
            "job:7",
            "host",
            switchboard::ServerMessage {
                msg_type: None,
                payload: serde_json::value::RawValue::from_string(r#"{"progress":50}"#.into())
                    .unwrap(),
                id: None,
            },
        )
        .await;
    // The broker's actors live in the server thread's system; calling from here is fine.
    assert!(receipt.is_ok(), "{receipt:?}");
    match client.next_frame().await {
        Some(Frame::Text(text)) => assert_eq!(&text[..], br#"{"progress":50}"#),
        other => panic!("{other:?}"),
    }
}

#[actix_rt::test]
async fn a_room_that_cannot_be_joined_is_reported_and_the_connection_closed() {
    let mut config = with_profile("agent host");
    config.limits.max_rooms = 1;
    let broker = TestBroker::start(config);
    let alice = token("alice", &[]);
    let mut first = Client::connect(&agent_url(
        &broker,
        &format!("token={alice}&conversation_id=c-1"),
    ))
    .await;
    first.recv_type("system.connection.established").await;
    assert_eq!(
        first.recv_type("room.joined").await["room"],
        "conversation:c-1"
    );
    // A second conversation would be a second room: refused, said, and closed.
    let mut second = Client::connect(&agent_url(
        &broker,
        &format!("token={alice}&conversation_id=c-2"),
    ))
    .await;
    second.recv_type("system.connection.established").await;
    let error = second.recv_type("system.error").await;
    assert_eq!(error["payload"]["code"], "limit_exceeded", "{error}");
    assert!(error["payload"]["message"]
        .as_str()
        .unwrap()
        .contains("could not join `conversation:c-2`"));
    let closed = second.expect_close().await;
    assert_eq!(closed.code, Some(1008));
    assert!(closed.reason.contains("conversation:c-2"), "{closed:?}");
}
