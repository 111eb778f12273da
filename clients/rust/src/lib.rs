//! The official Rust client of the switchboard broker (wire protocol v1, the broker's
//! `docs/PROTOCOL.md`).
//!
//! - [`Client::connect`] opens a WebSocket (`tokio-tungstenite`, any tokio runtime) with a
//!   static token or an async refresh callback ([`Token`]) and a connect timeout.
//! - [`Client::subscribe`] joins a room and returns a [`Subscription`], a
//!   [`Stream`](futures_util::Stream) of [`SubscriptionEvent`]s: every [`Message`] once and
//!   in seq order, across reconnects; lost messages are reported as a [`Gap`], never hidden.
//! - [`Client::publish`] sends a message with a client message id and returns the broker's
//!   [`Ack`] (its seq). A publish whose ack was lost to a dropped connection is resent with
//!   the same id after the reconnect, and the broker delivers it once.
//! - [`Client::request`] calls an application handler and waits for the reply correlated by
//!   id; [`Client::call`] and [`Client::notify`] do the same in JSON-RPC 2.0 mode.
//! - [`Client::pushes`] streams what handlers send on their own (a task assigned to a
//!   worker, a handler's later messages).
//! - Rooms of a presence namespace also yield [`PresenceEvent`]s: the member list on every
//!   (re)join, then users joining and leaving.
//! - Reconnects use exponential backoff with jitter ([`Backoff`]), then
//!   `system.connection.resume` with the old connection id and each room's last seq. Close
//!   code 1012 (broker restart) reconnects at once; 4000 (authentication failed) and 1008
//!   (disconnected through the HTTP API) end the client ([`Options::permanent_close_codes`]);
//!   after 4009 (slow reader) and 4029 (too many sessions) the backoff keeps growing
//!   across the reconnections, so a client the broker keeps shedding does not loop.
//! - [`Client::state_changes`] streams the [`State`]: connecting, connected, reconnecting,
//!   closed with the close code and reason. Server `system.ping`s are answered.
//! - [`HttpClient`] is the broker's HTTP API on an `http(s)://` URL with an API key or an
//!   admin token: publish (with a message id, so its retries are delivered once), history,
//!   presence, user send, broadcast; the API's errors come back as [`Error::Http`].
//! - [`Pool`] keeps connections to many brokers for request/response traffic: up to
//!   [`PoolOptions::size`] WebSocket clients per `ws(s)://` URL, opened as needed and closed
//!   when idle, and one [`HttpClient`] per `http(s)://` URL.
//! - [`AsapClient`] is the ASAP mode: an agent sending [`AsapEnvelope`]s to switchboard's
//!   ASAP routes or any ASAP server, over one WebSocket (`ws(s)://…/asap/ws`, many calls in
//!   flight, acks and forwarded requests as [`AsapEvent`]s) or `POST` (`http(s)://…/asap`).
//!
//! ```no_run
//! use std::time::Duration;
//! use futures_util::StreamExt;
//! use switchboard_client::{Client, Options, SubscriptionEvent};
//!
//! # async fn run() -> Result<(), switchboard_client::Error> {
//! let client = Client::connect("ws://127.0.0.1:8000/ws", Options::with_token("eyJ…")).await?;
//! let mut room = client.subscribe("conversation:42")?;
//! let ack = client.publish("conversation:42", serde_json::json!({"text": "hi"})).await?;
//! println!("published as seq {}", ack.seq);
//! while let Some(event) = room.next().await {
//!     match event {
//!         SubscriptionEvent::Message(m) => println!("{} #{}: {}", m.room, m.seq, m.payload),
//!         SubscriptionEvent::Gap(gap) => eprintln!("lost messages after seq {}", gap.since_seq),
//!         SubscriptionEvent::Refused(err) => return Err(err),
//!         other => println!("{other:?}"), // presence, in presence namespaces
//!     }
//! }
//! let reply = client
//!     .request("task.request", serde_json::json!({"doc": 42}), Duration::from_secs(5))
//!     .await?;
//! println!("{}: {:?}", reply.msg_type, reply.payload);
//! client.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! Delivery: the broker numbers each room's messages 1, 2, 3, …; the client remembers the
//! last seq it delivered per room, drops anything at or below it (replays that overlap
//! live traffic), and on reconnect asks for everything after it. When the broker's history
//! no longer holds the whole gap (`recovered: false`), or the room restarted its numbering
//! (a broker restart on the memory engine), the subscription yields a [`Gap`] and goes on.
//!
//! Not in this version: TLS settings beyond the `rustls` feature's defaults (webpki roots).

#![warn(missing_docs)]

mod asap;
mod client;
mod driver;
mod error;
mod frame;
mod http;
mod options;
mod pool;
mod rooms;
mod state;
mod subscription;

pub use asap::{
    AsapClient, AsapEnvelope, AsapEvent, AsapEvents, AsapOptions, IncomingRequest,
    ASAP_PROTOCOL_VERSION,
};
pub use client::Client;
pub use error::{Error, Result};
pub use frame::{Ack, Envelope, Gap, Member, Message, PresenceEvent};
pub use http::{History, HttpClient, HttpOptions};
pub use options::{Backoff, Options, Token};
pub use pool::{Pool, PoolOptions};
pub use state::{State, StateStream, Stats};
pub use subscription::{Pushes, Subscription, SubscriptionEvent};
