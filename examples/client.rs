//! The Rust client (`switchboard-client`, in `clients/rust`): subscribe, publish, request,
//! and carry on across a broker restart.
//!
//! ```text
//! cargo run --example client
//! ```
//!
//! The example needs nothing else running: it starts a broker in this process (the
//! embedding API, with one application handler, `quote.request`), then restarts that broker
//! halfway, the way a deploy would (graceful shutdown, close code 1012, a new broker on the
//! same port). The client reconnects at once, resumes its room, and reports the messages
//! the restart lost (the memory engine keeps nothing) as a gap instead of hiding it.

use std::net::TcpListener;
use std::time::Duration;

use actix::prelude::*;
use futures_util::StreamExt;
use serde_json::json;
use switchboard::config::Config;
use switchboard::{Broker, HandlerError, HandlerRequest, Reply};
use switchboard_client::{Client, Options, State, Subscription, SubscriptionEvent};
use tokio::sync::oneshot;

const SECRET: &str = "example-secret-0123456789abcdef01";

/// The application handler: answers `quote.request` with a price.
struct Quotes;

impl Actor for Quotes {
    type Context = Context<Self>;
}

impl Handler<HandlerRequest> for Quotes {
    type Result = Result<Reply, HandlerError>;

    fn handle(&mut self, req: HandlerRequest, _: &mut Self::Context) -> Self::Result {
        let symbol = req.payload["symbol"].as_str().unwrap_or("?").to_owned();
        let price = 100.0 + symbol.len() as f64 * 1.25;
        Ok(Reply::new(
            "quote.response",
            json!({"symbol": symbol, "price": price}),
        ))
    }
}

/// A broker running in this actix system.
struct RunningBroker {
    stop: oneshot::Sender<()>,
    stopped: oneshot::Receiver<()>,
}

impl RunningBroker {
    /// Graceful shutdown (sessions are closed with 1012); returns once the port is free.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.stopped.await;
    }
}

/// Starts a broker on `listener` in this actix system.
async fn start_broker(listener: TcpListener) -> RunningBroker {
    let mut config = Config::default();
    config.server.workers = 1;
    config.auth.hs256_secret = SECRET.into();
    config.webhooks.outbox_path = String::new();
    config.tasks.sqlite_path = String::new();
    let broker = Broker::start(config).expect("a valid config");
    broker
        .register_handler("quote.request", Quotes.start().recipient())
        .await
        .expect("register the handler");
    let (stop, stop_rx) = oneshot::channel::<()>();
    let (stopped_tx, stopped) = oneshot::channel::<()>();
    actix_rt::spawn(async move {
        let report = switchboard::server::serve(broker, listener, async {
            let _ = stop_rx.await;
        })
        .await;
        if let Ok(report) = report {
            println!(
                "broker: stopped ({} sessions told to reconnect)",
                report.sessions
            );
        }
        let _ = stopped_tx.send(());
    });
    RunningBroker { stop, stopped }
}

async fn next(room: &mut Subscription) -> SubscriptionEvent {
    tokio::time::timeout(Duration::from_secs(10), room.next())
        .await
        .expect("an event within 10 s")
        .expect("the subscription is open")
}

#[actix_rt::main]
async fn main() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("the address");
    let broker = start_broker(listener).await;
    let url = format!("ws://{addr}/ws");
    println!("broker: listening on {url}");

    // A token for user "ada", allowed into the `prices:*` rooms. A real service gets its
    // token from its identity provider, or passes a refresh callback (`Token::refresh`).
    let token = switchboard::auth::mint_hs256(
        SECRET,
        "ada",
        vec!["prices:*".into()],
        None,
        Duration::from_secs(3600),
    )
    .expect("sign a token");
    let client = Client::connect(&url, Options::with_token(token))
        .await
        .expect("connect");
    println!(
        "client: connected as {}",
        client.connection_id().unwrap_or_default()
    );
    let mut states = client.state_changes();
    tokio::spawn(async move {
        while let Some(state) = states.next().await {
            match state {
                State::Reconnecting {
                    attempt,
                    delay,
                    code,
                    ..
                } => {
                    println!("client: reconnecting (attempt {attempt}, in {delay:?}, close code {code:?})")
                }
                State::Connected { connection_id } => {
                    println!("client: connected as {connection_id}")
                }
                other => println!("client: {other:?}"),
            }
        }
    });

    // Subscribe, publish (acknowledged with the message's seq), read it back.
    let mut room = client.subscribe("prices:eur").expect("subscribe");
    for n in 1..=3 {
        let ack = client
            .publish("prices:eur", json!({"tick": n}))
            .await
            .expect("publish");
        println!("publish: tick {n} is seq {}", ack.seq);
    }
    for _ in 0..3 {
        if let SubscriptionEvent::Message(m) = next(&mut room).await {
            println!("room {}: seq {} {}", m.room, m.seq, m.payload);
        }
    }

    // A request to the application handler, correlated by id, with a timeout.
    let reply = client
        .request(
            "quote.request",
            json!({"symbol": "EURUSD"}),
            Duration::from_secs(5),
        )
        .await
        .expect("request");
    println!(
        "request: {} {}",
        reply.msg_type,
        reply.payload.unwrap_or_default()
    );

    // Restart the broker. The client reconnects at once (1012) and resumes the room.
    println!("broker: restarting");
    broker.stop().await;
    let broker = start_broker(TcpListener::bind(addr).expect("bind the same port again")).await;
    for n in 4..=5 {
        // Made while the client may still be reconnecting: sent (once) when it is back.
        let ack = client
            .publish("prices:eur", json!({"tick": n}))
            .await
            .expect("publish after the restart");
        println!("publish: tick {n} is seq {} in the restarted room", ack.seq);
    }
    let mut seen = 0;
    while seen < 2 {
        match next(&mut room).await {
            SubscriptionEvent::Message(m) => {
                println!("room {}: seq {} {}", m.room, m.seq, m.payload);
                seen += 1;
            }
            SubscriptionEvent::Gap(gap) => println!(
                "room {}: gap after seq {} (the room {}), reported rather than hidden",
                gap.room,
                gap.since_seq,
                if gap.reset {
                    "restarted its numbering"
                } else {
                    "lost history"
                }
            ),
            other => println!("room: {other:?}"),
        }
    }
    let reply = client
        .call(
            "quote.request",
            json!({"symbol": "GBPUSD"}),
            Duration::from_secs(5),
        )
        .await
        .expect("JSON-RPC call");
    println!("call (JSON-RPC): {reply}");
    let stats = client.stats();
    println!(
        "client: {} reconnect(s), {} duplicate(s) dropped, {} publish(es) resent",
        stats.reconnects, stats.duplicates_dropped, stats.publishes_resent
    );
    drop(room);
    client.close().await;
    broker.stop().await;
}
