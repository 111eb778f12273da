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
//!   id.
//! - Reconnects use exponential backoff with jitter ([`Backoff`]), then
//!   `system.connection.resume` with the old connection id and each room's last seq. Close
//!   code 1012 (broker restart) reconnects at once; 4000 (authentication failed) and 1008
//!   (disconnected through the HTTP API) end the client ([`Options::permanent_close_codes`]).
//! - [`Client::state_changes`] streams the [`State`]: connecting, connected, reconnecting,
//!   closed with the close code and reason. Server `system.ping`s are answered.
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
//! Not in this version: one shared connection pool per host, the JSON-RPC mode, the ASAP
//! mode, and TLS settings beyond the `rustls` feature's defaults (webpki roots).

#![warn(missing_docs)]

mod client;
mod driver;
mod error;
mod frame;
mod options;
mod rooms;
mod state;
mod subscription;

pub use client::Client;
pub use error::{Error, Result};
pub use frame::{Ack, Envelope, Gap, Message};
pub use options::{Backoff, Options, Token};
pub use state::{State, StateStream, Stats};
pub use subscription::{Subscription, SubscriptionEvent};
