//! The embedding API: the broker mounted in a host actix-web app next to its own routes,
//! with an extra protocol-v1 endpoint and the host's handler actor.

use crate::delivery::{publish_n, replay_frames};
use crate::support;

use std::net::TcpListener;

use actix::prelude::*;
use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::json;
use support::Client;
use switchboard::{Broker, HandlerError, HandlerRequest, Reply};

struct Echo;

impl Actor for Echo {
    type Context = Context<Self>;
}

impl Handler<HandlerRequest> for Echo {
    type Result = Result<Reply, HandlerError>;

    fn handle(&mut self, req: HandlerRequest, _: &mut Self::Context) -> Self::Result {
        Ok(Reply::new("task.response", json!({"echo": req.payload})))
    }
}

#[actix_rt::test]
async fn host_app_routes_and_the_mounted_broker_share_one_server() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let mut config = support::test_config();
            config.auth.anonymous = true;
            config.router.allow_anonymous = true;
            let broker = Broker::start(config).unwrap();
            broker
                .register_handler("task.request", Echo.start().recipient())
                .await
                .unwrap();
            let (mounted, agents) = (broker.configure(), broker.websocket_route("/agents/ws"));
            let server = HttpServer::new(move || {
                App::new()
                    .route(
                        "/hello",
                        web::get().to(|| async { HttpResponse::Ok().body("host") }),
                    )
                    .configure(mounted.clone())
                    .configure(agents.clone())
            })
            .workers(1)
            .disable_signals()
            .listen(listener)
            .unwrap()
            .run();
            let _ = ready_tx.send(server.handle());
            let _ = server.await;
        });
    });
    let handle = ready_rx.recv_timeout(support::WAIT).unwrap();

    let mut resp = awc::Client::new()
        .get(format!("http://{addr}/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.body().await.unwrap(), "host");

    for path in ["/ws", "/agents/ws"] {
        let mut c = Client::connect(&format!("ws://{addr}{path}")).await;
        c.recv_type("system.connection.established").await;
        c.send_json(json!({"type": "task.request", "id": "t1", "payload": {"k": path}}))
            .await;
        let reply = c.recv_type("task.response").await;
        assert_eq!(reply["correlation_id"], "t1");
        assert_eq!(reply["payload"]["echo"]["k"], path);
    }

    // Under the host's own server the socket stays with actix-ws, and batched frames are
    // joined there too.
    let url = |sub: &str| format!("ws://{addr}/ws?token={}", support::token(sub, &["r"]));
    let mut publisher = Client::connect(&url("pub")).await;
    publisher.recv_type("system.connection.established").await;
    publisher.join("r").await;
    publish_n(&mut publisher, "r", "m", 100).await;
    let (messages, frames) =
        replay_frames(&url("batch"), Some("switchboard.v1.batch"), "r", 100).await;
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    assert!(
        frames < 100,
        "100 replayed messages came in {frames} frames: none joined"
    );
    handle.stop(false).await;
}

/// Rust code that embeds the broker publishes and reads rooms without HTTP, over an engine
/// it chose.
#[actix_rt::test]
async fn an_embedder_publishes_and_reads_rooms_without_http() {
    let (broker_tx, broker_rx) = std::sync::mpsc::channel();
    let broker = support::TestBroker::start_with(support::test_config(), move |broker| {
        let _ = broker_tx.send(broker);
        async {}
    });
    let embedded = broker_rx.recv_timeout(support::WAIT).unwrap();
    let mut member = broker.client("alice", &["orders:*"]).await;
    member.join("orders:7").await;

    // The broker runs in its own actix system: its calls are made there.
    let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
    let caller = embedded.clone();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let message = switchboard::ServerMessage {
                msg_type: Some("order.shipped".into()),
                payload: serde_json::value::RawValue::from_string(r#"{"n":1}"#.into()).unwrap(),
                id: Some("ship-7".into()),
            };
            let first = caller.publish("orders:7", "my-app", message.clone()).await;
            let again = caller.publish("orders:7", "my-app", message).await;
            let bad = caller
                .publish(
                    "no spaces",
                    "my-app",
                    switchboard::ServerMessage {
                        msg_type: None,
                        payload: serde_json::value::RawValue::from_string("1".into()).unwrap(),
                        id: None,
                    },
                )
                .await;
            let history = caller.history("orders:7", 0, 10).await;
            let rooms = caller.rooms().await;
            let _ = answer_tx.send((first, again, bad, history, rooms));
        });
    });
    let (first, again, bad, history, rooms) = answer_rx.await.unwrap();
    let first = first.expect("published");
    assert_eq!((first.seq, first.duplicate), (1, false));
    assert!(
        again.expect("answered").duplicate,
        "the same id is a repeat"
    );
    assert_eq!(
        bad.expect_err("an invalid room").code,
        switchboard::protocol::ErrorCode::BadRequest
    );
    assert_eq!(history.expect("history").messages.len(), 1);
    assert!(rooms
        .expect("rooms")
        .iter()
        .any(|r| r.room == "orders:7" && r.members == 1));
    let got = member.recv_type("order.shipped").await;
    assert_eq!(
        (got["seq"].as_u64(), got["payload"]["n"].as_u64()),
        (Some(1), Some(1))
    );
}
