//! The server HTTP API against a real broker: auth, publish, history, presence, rooms, user
//! send, broadcast, disconnect, errors, readiness and the OpenAPI document.

use crate::support;

use std::collections::BTreeSet;

use awc::http::StatusCode;
use serde_json::{json, Value};
use support::{test_config, Client, TestBroker, SECRET};
use switchboard::config::NamespaceConfig;
use switchboard::protocol::close;

const KEY: &str = "test-api-key-0123456789";

fn api_config() -> switchboard::Config {
    let mut config = test_config();
    config.api.keys = vec![KEY.into()];
    config.namespaces.insert(
        "conversation".into(),
        NamespaceConfig {
            presence: true,
            ..NamespaceConfig::default()
        },
    );
    config
}

struct Api {
    base: String,
    auth: Option<String>,
}

impl Api {
    fn new(broker: &TestBroker) -> Api {
        Api {
            base: broker.http_url(""),
            auth: Some(KEY.into()),
        }
    }

    fn with_auth(broker: &TestBroker, auth: Option<&str>) -> Api {
        Api {
            base: broker.http_url(""),
            auth: auth.map(str::to_owned),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.send(method, path, body, None).await
    }

    async fn call_with_header(
        &self,
        method: &str,
        path: &str,
        header: (&str, &str),
    ) -> (StatusCode, Value) {
        self.send(method, path, None, Some(header)).await
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        header: Option<(&str, &str)>,
    ) -> (StatusCode, Value) {
        let client = awc::Client::new();
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "GET" => client.get(url),
            "POST" => client.post(url),
            "DELETE" => client.delete(url),
            other => panic!("{other}"),
        };
        if let Some(auth) = &self.auth {
            req = req.bearer_auth(auth);
        }
        if let Some(h) = header {
            req = req.insert_header(h);
        }
        let mut resp = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        }
        .expect("request");
        let bytes = resp.body().limit(1 << 22).await.expect("body");
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("JSON body: {bytes:?}"))
        };
        (resp.status(), value)
    }
}

#[actix_rt::test]
async fn publish_reaches_members_and_retries_are_idempotent() {
    let broker = TestBroker::start(api_config());
    let mut member = broker.client("m", &["job:*"]).await;
    member.join("job:1").await;
    let api = Api::new(&broker);

    let (status, body) = api
        .call(
            "POST",
            "/api/rooms/job:1/publish",
            Some(json!({"payload": {"state": "running"}, "id": "u1"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"room": "job:1", "seq": 1, "id": "u1", "duplicate": false})
    );
    let msg = member.recv_type("room.message").await;
    assert_eq!(msg["payload"]["state"], "running");

    let (_, body) = api
        .call(
            "POST",
            "/api/rooms/job:1/publish",
            Some(json!({"payload": {"state": "running"}, "id": "u1"})),
        )
        .await;
    assert_eq!(body["seq"], 1);
    assert_eq!(body["duplicate"], true);

    let (_, body) = api
        .call(
            "POST",
            "/api/rooms/job:1/publish",
            Some(json!({"type": "task.update", "payload": 2})),
        )
        .await;
    assert_eq!(body["seq"], 2);
    let msg = member.recv().await;
    assert_eq!(
        msg["type"], "task.update",
        "the retry was not delivered; the next one was"
    );
    assert_eq!(msg["seq"], 2);
}

#[actix_rt::test]
async fn history_pages_after_since_with_a_limit() {
    let broker = TestBroker::start(api_config());
    let api = Api::new(&broker);
    for i in 1..=5 {
        let (status, _) = api
            .call(
                "POST",
                "/api/rooms/log:1/publish",
                Some(json!({"payload": i})),
            )
            .await;
        assert_eq!(status, 200);
    }
    let (status, body) = api
        .call("GET", "/api/rooms/log:1/history?since=1&limit=3", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["seq"], 5);
    assert_eq!(body["recovered"], true);
    let seqs: Vec<u64> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 3, 4]);
    assert_eq!(body["messages"][0]["type"], "room.message");
    assert_eq!(body["messages"][0]["payload"], 2);

    let (status, body) = api
        .call("GET", "/api/rooms/log:1/history?since=x", None)
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_request");
}

#[actix_rt::test]
async fn presence_rooms_user_send_and_broadcast() {
    let broker = TestBroker::start(api_config());
    let api = Api::new(&broker);
    let mut alice1 = broker.client("alice", &["conversation:*"]).await;
    let mut alice2 = broker.client("alice", &["conversation:*"]).await;
    let mut bob = broker.client("bob", &["conversation:*"]).await;
    alice1.join("conversation:9").await;
    bob.join("conversation:9").await;

    let (status, body) = api
        .call("GET", "/api/rooms/conversation:9/presence", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let users: Vec<&str> = body["presence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, vec!["alice", "bob"]);
    let (status, body) = api.call("GET", "/api/rooms/lobby/presence", None).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "conflict");

    let (status, body) = api.call("GET", "/api/rooms", None).await;
    assert_eq!(status, 200);
    let conv = body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room"] == "conversation:9")
        .unwrap();
    assert_eq!(conv["members"], 2);

    let (status, body) = api
        .call(
            "POST",
            "/api/users/alice/send",
            Some(json!({"type": "notice", "payload": "hi alice"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room"], "user:alice");
    for c in [&mut alice1, &mut alice2] {
        let msg = c.skip_until("notice").await;
        assert_eq!(msg["payload"], "hi alice");
    }

    let (status, _) = api
        .call("POST", "/api/broadcast", Some(json!({"payload": "to all"})))
        .await;
    assert_eq!(status, 200);
    for c in [&mut alice1, &mut alice2, &mut bob] {
        let msg = c.skip_until("room.message").await;
        assert_eq!(
            (msg["room"].as_str(), msg["payload"].as_str()),
            (Some("broadcast"), Some("to all"))
        );
    }
}

#[actix_rt::test]
async fn disconnect_closes_a_session_with_its_reason() {
    let broker = TestBroker::start(api_config());
    let api = Api::new(&broker);
    let mut c = Client::connect(&broker.ws_url(Some(&support::token("v", &[])))).await;
    let id = c.recv_type("system.connection.established").await["payload"]["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = api
        .call(
            "DELETE",
            &format!("/api/sessions/{id}?reason=maintenance"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let notice = c.recv_type("system.connection.close").await;
    assert_eq!(notice["payload"]["reason"], "maintenance");
    let closed = c.expect_close().await;
    assert_eq!(closed.code, Some(close::POLICY));
    assert_eq!(closed.reason, "maintenance");

    let (status, body) = api.call("DELETE", "/api/sessions/nope", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}

#[actix_rt::test]
async fn api_auth_keys_admin_tokens_and_errors() {
    let mut config = api_config();
    config.api.requests_per_second = 5;
    config.api.max_body_bytes = 1024;
    let broker = TestBroker::start(config);

    let (status, body) = Api::with_auth(&broker, None)
        .call("GET", "/api/rooms", None)
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = Api::with_auth(&broker, Some("wrong-key-0123456789"))
        .call("GET", "/api/rooms", None)
        .await;
    assert_eq!(status, 401);
    let user_token = support::token("plain", &["*"]);
    let (status, body) = Api::with_auth(&broker, Some(&user_token))
        .call("GET", "/api/rooms", None)
        .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "forbidden");

    let admin = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "ops", "exp": 4_000_000_000u64, "admin": true}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (status, _) = Api::with_auth(&broker, Some(&admin))
        .call("GET", "/api/rooms", None)
        .await;
    assert_eq!(status, 200);
    // The scheme is case-insensitive (RFC 7235).
    let (status, _) = Api::with_auth(&broker, None)
        .call_with_header(
            "GET",
            "/api/rooms",
            ("authorization", &format!("bearer {admin}")),
        )
        .await;
    assert_eq!(status, 200);

    let api = Api::new(&broker);
    let (status, body) = api
        .call("POST", "/api/rooms/r/publish", Some(json!({"nope": 1})))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("nope"),
        "{body}"
    );
    let (status, body) = api
        .call(
            "POST",
            "/api/rooms/r/publish",
            Some(json!({"payload": "x".repeat(2000)})),
        )
        .await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "too_large");
    let (status, _) = api
        .call(
            "POST",
            "/api/rooms/bad%20room/publish",
            Some(json!({"payload": 1})),
        )
        .await;
    assert_eq!(status, 400);
    // The API cannot forge broker events.
    let (status, body) = api
        .call(
            "POST",
            "/api/rooms/r/publish",
            Some(json!({"type": "presence.leave", "payload": {}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = api.call("GET", "/api/nothing-here", None).await;
    assert_eq!(status, 404);

    // The key has used all 5 requests of its 5/s budget by now.
    let mut limited = false;
    for _ in 0..5 {
        let (status, body) = api.call("GET", "/api/rooms", None).await;
        if status == 429 {
            assert_eq!(body["error"]["code"], "rate_limited");
            limited = true;
            break;
        }
    }
    assert!(limited, "the per-caller limit answered 429");
}

#[actix_rt::test]
async fn readiness_and_the_openapi_document() {
    let broker = TestBroker::start(api_config());
    let api = Api::with_auth(&broker, None);
    let (status, body) = api.call("GET", "/readyz", None).await;
    assert_eq!(
        (status.as_u16(), body["status"].as_str()),
        (200, Some("ready"))
    );
    let (status, doc) = api.call("GET", "/api/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/rooms/{room}/publish",
        "/api/rooms/{room}/history",
        "/api/rooms/{room}/presence",
        "/api/rooms",
        "/api/users/{user}/send",
        "/api/broadcast",
        "/api/sessions/{id}",
        "/readyz",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
}

/// Every path the OpenAPI document lists answers a method it does not serve with 405, an
/// `Allow` header naming exactly the documented methods, and the JSON error body; and every
/// `/api` operation documents the errors it can get.
#[actix_rt::test]
async fn wrong_methods_get_405_with_allow_and_the_document_lists_every_answer() {
    let broker = TestBroker::start(api_config());
    let api = Api::new(&broker);
    let (_, doc) = api.call("GET", "/api/openapi.json", None).await;
    let paths = doc["paths"].as_object().expect("paths");
    for path in ["/healthz", "/readyz", "/metrics", "/api/webhooks/{id}"] {
        assert!(paths.contains_key(path), "{path} missing from the document");
    }
    let client = awc::Client::new();
    for (path, item) in paths {
        let item = item.as_object().expect("a path item");
        let documented: BTreeSet<String> = item.keys().map(|m| m.to_uppercase()).collect();
        let concrete = path
            .replace("{room}", "r1")
            .replace("{user}", "u1")
            .replace("{delivery_id}", "msg_x")
            .replace("{id}", "x");
        let method = ["PUT", "PATCH", "DELETE", "POST", "GET"]
            .into_iter()
            .find(|m| !documented.contains(*m))
            .expect("a method the path does not serve");
        let mut resp = client
            .request(method.parse().unwrap(), broker.http_url(&concrete))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 405, "{method} {concrete}");
        let allow: BTreeSet<String> = resp
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(',')
            .map(|m| m.trim().to_owned())
            .collect();
        assert_eq!(allow, documented, "Allow of {path}");
        let body: Value = resp.json().await.expect("a JSON body");
        assert_eq!(body["error"]["code"], "method_not_allowed", "{path}");

        if path.starts_with("/api/") && path != "/api/openapi.json" {
            for (m, op) in item {
                let responses = op["responses"].as_object().expect("responses");
                for status in ["401", "403", "429", "500"] {
                    assert!(responses.contains_key(status), "{m} {path} lacks {status}");
                }
                if op.get("requestBody").is_some() {
                    for status in ["400", "408", "413"] {
                        assert!(responses.contains_key(status), "{m} {path} lacks {status}");
                    }
                }
            }
        }
    }
}

#[actix_rt::test]
async fn a_refused_cors_preflight_gets_the_json_error_body() {
    let mut config = api_config();
    config.api.cors_origins = vec!["https://app.example".into()];
    let broker = TestBroker::start(config);
    let client = awc::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(
                awc::http::Method::OPTIONS,
                broker.http_url("/api/rooms/r/publish"),
            )
            .insert_header(("Origin", origin))
            .insert_header(("Access-Control-Request-Method", "POST"))
            .send()
    };
    let mut refused = preflight("https://evil.example").await.expect("request");
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.expect("a JSON body");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let allowed = preflight("https://app.example").await.expect("request");
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example")
    );
}

#[actix_rt::test]
async fn the_api_docs_page_and_the_landing_page_are_served() {
    let broker = TestBroker::start(api_config());
    let client = awc::Client::new();
    let mut page = client
        .get(broker.http_url("/api/docs/"))
        .send()
        .await
        .expect("docs page");
    assert_eq!(page.status(), 200);
    let html = page.body().await.expect("body");
    assert!(String::from_utf8_lossy(&html).contains("swagger-ui"));
    let mut init = client
        .get(broker.http_url("/api/docs/swagger-initializer.js"))
        .send()
        .await
        .expect("initializer");
    let init = init.body().await.expect("body");
    assert!(
        String::from_utf8_lossy(&init).contains("/api/openapi.json"),
        "the page loads this broker's document"
    );
    let redirect = awc::Client::builder()
        .disable_redirects()
        .finish()
        .get(broker.http_url("/api/docs"))
        .send()
        .await
        .expect("redirect");
    assert_eq!(redirect.status(), 308);
    assert_eq!(
        redirect
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok()),
        Some("/api/docs/")
    );
    for index in ["/api", "/api/"] {
        let mut resp = client
            .get(broker.http_url(index))
            .send()
            .await
            .expect("index");
        assert_eq!(resp.status(), 200, "{index}");
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(body["docs"], "/api/docs/", "{body}");
    }
    let mut landing = client
        .get(broker.http_url("/"))
        .send()
        .await
        .expect("landing page");
    assert_eq!(landing.status(), 200);
    let html = landing.body().await.expect("body");
    let html = String::from_utf8_lossy(&html);
    for link in ["/api/docs/", "/api/openapi.json", "/metrics", "/healthz"] {
        assert!(html.contains(&format!("href=\"{link}\"")), "{link}: {html}");
    }
}

/// A Registry that cannot answer makes /healthz 503 instead of a 200 with zero counts. A
/// handler registered on the Registry's thread blocks that thread for 3 s (what a stuck
/// actor would do); a health check meanwhile gets 503 within its 2 s deadline, and 200
/// once the thread is free again.
#[actix_rt::test]
async fn healthz_is_503_while_the_registry_cannot_answer() {
    use actix::prelude::*;
    use switchboard::{HandlerError, HandlerRequest, Reply};

    struct Blocker;
    impl Actor for Blocker {
        type Context = Context<Self>;
    }
    impl Handler<HandlerRequest> for Blocker {
        type Result = Result<Reply, HandlerError>;
        fn handle(&mut self, _: HandlerRequest, _: &mut Context<Self>) -> Self::Result {
            // Blocking on purpose: this is the stuck actor under test.
            std::thread::sleep(std::time::Duration::from_secs(3));
            Ok(Reply::new("test.blocked", serde_json::json!({})))
        }
    }
    let mut config = api_config();
    config.router.handler_timeout = std::time::Duration::from_secs(10);
    let broker = TestBroker::start_with(config, |b| async move {
        let blocker = Blocker.start(); // the same arbiter as the Registry
        b.register_handler("test.block", blocker.recipient())
            .await
            .expect("register");
    });
    let api = Api::with_auth(&broker, None);
    let (status, body) = api.call("GET", "/healthz", None).await;
    assert_eq!((status.as_u16(), &body["status"]), (200, &json!("ok")));
    let mut c = broker.client("a", &[]).await;
    c.send_json(json!({"type": "test.block", "id": "b1"})).await;
    // The request reaches the handler within milliseconds; give it that, then ask.
    let started = std::time::Instant::now();
    let (status, body) = loop {
        let (status, body) = api.call("GET", "/healthz", None).await;
        if status == 503 || started.elapsed() > std::time::Duration::from_secs(3) {
            break (status, body);
        }
    };
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("did not answer"),
        "{body}"
    );
    c.recv_type("test.blocked").await;
    let (status, _) = api.call("GET", "/healthz", None).await;
    assert_eq!(status, 200);
}
