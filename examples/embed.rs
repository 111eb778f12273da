//! Embedding switchboard in your own actix-web application.
//!
//! The app keeps its own routes (`GET /hello`), mounts the broker's (`/ws`, `/healthz`, the
//! ASAP routes `/asap/ws` and `POST /asap`) plus an extra protocol-v1 endpoint at
//! `/agents/ws`, and plugs in one handler actor that answers `task.request` from v1 clients
//! and serves the ASAP skill `summarise` to agents, telling them apart by
//! [`HandlerRequest::origin`].
//!
//! ```text
//! cargo run --example embed            # listens on 127.0.0.1:8080
//! # then, with any WebSocket client, on ws://127.0.0.1:8080/agents/ws send:
//! {"type":"task.request","id":"t1","payload":{"task":"summarise"}}
//! # and receive:
//! {"type":"task.response","correlation_id":"t1","payload":{"accepted":true,...},...}
//! # or, as an ASAP agent (docs/ASAP.md), POST /asap a task.request with skill_id "summarise".
//! ```

use actix::prelude::*;
use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::json;
use switchboard::asap::Skill;
use switchboard::{Broker, Config, HandlerError, HandlerRequest, Origin, Reply};

/// The application's own handler actor: accepts tasks and says who asked.
struct TaskDesk {
    accepted: u64,
}

impl Actor for TaskDesk {
    type Context = Context<Self>;
}

impl Handler<HandlerRequest> for TaskDesk {
    type Result = Result<Reply, HandlerError>;

    fn handle(&mut self, req: HandlerRequest, _: &mut Self::Context) -> Self::Result {
        self.accepted += 1;
        let receipt = json!({
            "accepted": true,
            "task": req.payload,
            "requested_by": &*req.user,
            "number": self.accepted,
        });
        match req.origin {
            // v1 clients get the receipt as the payload.
            Origin::Socket => Ok(Reply::new("task.response", receipt)),
            // ASAP agents get a TaskResponse, which their client validates strictly.
            _ => Ok(Reply::new(
                "task.response",
                json!({
                    "task_id": format!("task-{}", self.accepted),
                    "status": "completed",
                    "result": receipt,
                }),
            )),
        }
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    // Dev defaults: loopback, anonymous sessions allowed. Load a file with Config::load in
    // a real application.
    let mut config = Config::dev();
    config.server.bind = "127.0.0.1:8080".into();
    let broker = Broker::start(config).map_err(std::io::Error::other)?;
    let desk = TaskDesk { accepted: 0 }.start();
    broker
        .register_handler("task.request", desk.clone().recipient())
        .await
        .map_err(std::io::Error::other)?;
    let summarise = Skill::new("summarise", "Accepts a text to summarise");
    broker
        .register_skill(summarise, desk.recipient())
        .await
        .map_err(std::io::Error::other)?;

    let mounted = broker.configure();
    let agents = broker.websocket_route("/agents/ws");
    let server = HttpServer::new(move || {
        App::new()
            .route(
                "/hello",
                web::get().to(|| async { HttpResponse::Ok().body("hello from the host app") }),
            )
            .configure(mounted.clone())
            .configure(agents.clone())
    })
    // Sessions are closed by the broker on shutdown; drop TCP right after a close handshake.
    .client_disconnect_timeout(std::time::Duration::ZERO)
    // Small frames go out at once (no Nagle delay behind delayed ACKs).
    .tcp_nodelay(true)
    // Lets the broker reset the connection of a peer that stops reading (write deadline).
    .on_connect(switchboard::server::on_connect)
    .disable_signals()
    .bind(("127.0.0.1", 8080))?
    .run();
    let handle = server.handle();
    let running = actix_web::rt::spawn(server);
    log::info!("embedded broker on ws://127.0.0.1:8080/agents/ws and /asap/ws (Ctrl-C to stop)");
    switchboard::server::termination_signal().await;
    // Close every session with 1012 first, then stop the HTTP server.
    broker.shutdown(Some(handle)).await;
    let _ = running.await;
    Ok(())
}
