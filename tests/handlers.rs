//! Application handlers through the Router: request/response with correlation ids, JSON-RPC
//! framing on the same socket, middleware, timeouts.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::json;
use support::{test_config, Client, TestBroker};
use switchboard::middleware::Middleware;
use switchboard::protocol::ErrorCode;
use switchboard::{Broker, HandlerError, HandlerRequest, Reply};

/// A handler actor for `task.*` requests.
struct Tasks;

impl Actor for Tasks {
    type Context = Context<Self>;
}

impl Handler<HandlerRequest> for Tasks {
    type Result = ResponseFuture<Result<Reply, HandlerError>>;

    fn handle(&mut self, req: HandlerRequest, _: &mut Self::Context) -> Self::Result {
        Box::pin(async move {
            match req.msg_type.as_str() {
                "task.request" => Ok(Reply::new(
                    "task.response",
                    json!({"task": req.payload, "user": &*req.user, "room": req.room}),
                )),
                "task.slow" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(Reply::new("task.response", json!("late")))
                }
                _ => Err(HandlerError::new(ErrorCode::NotFound, "no such task")),
            }
        })
    }
}

/// Refuses any request whose payload says `"deny": true`.
struct DenyFlag;

impl Middleware for DenyFlag {
    fn before(&self, req: &HandlerRequest) -> Result<(), HandlerError> {
        if req.payload["deny"] == true {
            return Err(HandlerError::new(ErrorCode::Forbidden, "denied by policy"));
        }
        Ok(())
    }
}

fn start(mut config: switchboard::Config) -> TestBroker {
    config.router.handler_timeout = Duration::from_millis(300);
    TestBroker::start_with(config, |broker: Broker| async move {
        let tasks = Tasks.start();
        for t in ["task.request", "task.slow", "task.fail"] {
            broker
                .register_handler(t, tasks.clone().recipient())
                .await
                .expect("register");
        }
        broker.add_middleware(Arc::new(DenyFlag)).await;
        let reserved = broker
            .register_handler("room.steal", tasks.recipient())
            .await;
        assert_eq!(reserved.unwrap_err().code, ErrorCode::BadRequest);
    })
}

#[actix_rt::test]
async fn a_registered_handler_answers_with_correlation_id() {
    let broker = start(test_config());
    let mut c = broker.client("alice", &[]).await;
    c.send_json(json!({"type": "task.request", "id": "r1", "room": "task:9", "payload": {"n": 1}}))
        .await;
    let reply = c.recv_type("task.response").await;
    assert_eq!(reply["correlation_id"], "r1");
    assert_eq!(reply["payload"]["task"], json!({"n": 1}));
    assert_eq!(reply["payload"]["user"], "alice");
    assert_eq!(reply["payload"]["room"], "task:9");

    c.send_json(json!({"type": "task.fail", "id": "r2"})).await;
    let err = c.recv_type("system.error").await;
    assert_eq!(err["correlation_id"], "r2");
    assert_eq!(err["payload"]["code"], "not_found");

    c.send_json(json!({"type": "task.request", "id": "r3", "payload": {"deny": true}}))
        .await;
    let err = c.recv_type("system.error").await;
    assert_eq!(err["payload"]["code"], "forbidden");
    assert_eq!(err["payload"]["message"], "denied by policy");

    // Every call, refused or not, lands in the handler latency histogram.
    let mut resp = awc::Client::new()
        .get(broker.http_url("/metrics"))
        .send()
        .await
        .unwrap();
    let text = String::from_utf8(resp.body().await.unwrap().to_vec()).unwrap();
    assert!(
        text.lines()
            .any(|l| l == r#"switchboard_handler_duration_seconds_count{type="task.request"} 2"#),
        "{text}"
    );
}

#[actix_rt::test]
async fn the_same_handler_answers_over_jsonrpc() {
    let broker = start(test_config());
    let mut c = broker.client("alice", &["r"]).await;
    c.send_json(json!({"jsonrpc": "2.0", "method": "task.request", "params": {"n": 2}, "id": 7}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply["jsonrpc"], "2.0");
    assert_eq!(reply["id"], 7);
    assert_eq!(reply["result"]["task"], json!({"n": 2}));

    c.send_json(json!({"jsonrpc": "2.0", "method": "task.fail", "id": "s"}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply["id"], "s");
    assert_eq!(reply["error"]["code"], ErrorCode::NotFound.jsonrpc_code());
    assert_eq!(reply["error"]["data"]["code"], "not_found");

    c.send_json(json!({"jsonrpc": "2.0", "method": "nope.nothing", "id": 8}))
        .await;
    assert_eq!(c.recv().await["error"]["code"], -32601);

    c.send_text(r#"{"jsonrpc":"2.0","method":"task.request","id":9"#)
        .await;
    assert_eq!(c.recv().await["error"]["code"], -32700);
    c.send_json(json!({"jsonrpc": "1.0", "method": "task.request", "id": 10}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply["error"]["code"], -32600);
    assert_eq!(reply["id"], 10);

    // A notification gets no reply: the next frame answers the request after it.
    c.send_json(json!({"jsonrpc": "2.0", "method": "task.request", "params": {}}))
        .await;
    c.send_json(json!({"jsonrpc": "2.0", "method": "system.ping", "id": 11}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply["id"], 11);
    assert_eq!(reply["result"], json!({}));

    // Broker methods over JSON-RPC.
    c.send_json(
        json!({"jsonrpc": "2.0", "method": "room.join", "params": {"room": "r"}, "id": 12}),
    )
    .await;
    let reply = c.recv().await;
    assert_eq!(
        reply["result"],
        json!({"room": "r", "seq": 0, "recovered": true})
    );
    c.send_json(json!({"jsonrpc": "2.0", "method": "room.publish", "params": {"room": "r", "payload": {"x": 1}}, "id": 13}))
        .await;
    let msg = c.recv().await;
    assert_eq!(msg["type"], "room.message", "pushes stay native envelopes");
    assert_eq!(msg["payload"], json!({"x": 1}));
    let ack = c.recv().await;
    assert_eq!(ack["id"], 13);
    assert_eq!(ack["result"]["seq"], 1);
    assert_eq!(ack["result"]["room"], "r");
}

#[actix_rt::test]
async fn a_slow_handler_times_out() {
    let broker = start(test_config());
    let mut c = broker.client("alice", &[]).await;
    c.send_json(json!({"type": "task.slow", "id": "slow"}))
        .await;
    let err = c.recv_type("system.error").await;
    assert_eq!(err["correlation_id"], "slow");
    assert_eq!(err["payload"]["code"], "timeout");
    // The session kept working while the handler ran.
    c.send_json(json!({"type": "system.ping", "id": "p"})).await;
    c.recv_type("system.pong").await;
}

#[actix_rt::test]
async fn anonymous_callers_are_refused_unless_allowed() {
    let mut config = test_config();
    config.auth.anonymous = true;
    let broker = start(config);
    let mut c = Client::connect(&broker.ws_url(None)).await;
    c.recv_type("system.connection.established").await;
    c.send_json(json!({"type": "task.request", "id": "a"}))
        .await;
    assert_eq!(
        c.recv_type("system.error").await["payload"]["code"],
        "unauthorized"
    );
}
