//! switchboard: a real-time message broker on actix.
//!
//! Browsers, agents and services connect over WebSocket (`/ws`), join rooms and exchange
//! JSON messages (protocol v1, or JSON-RPC 2.0 on the same socket).
//!
//! What an embedding application uses:
//! - [`Broker`]: start the actors, mount the routes (`Broker::configure`), register
//!   handlers for your own message types ([`HandlerRequest`], [`Reply`], [`HandlerError`])
//!   and middleware ([`middleware::Middleware`]), health and graceful shutdown.
//! - [`Config`] and [`config`]: settings, the same as the binary's config file.
//! - [`endpoint`]: WebSocket endpoints bound to a room, raw or protocol v1 framing
//!   (`Broker::endpoint`).
//! - [`asap`]: the ASAP agent protocol (`/asap/ws`, `POST /asap`): envelopes, errors, and
//!   skills as handler actors (`Broker::register_skill`).
//! - [`tasks`]: agent tasks (`/api/agent`): the state machine and the store contract.
//! - [`server`]: run a broker as its own server on a listener (what the binary does).
//! - [`tls`]: the listener's TLS certificate (`[server] tls_cert`, `tls_key`), reloadable
//!   while the broker runs.
//! - [`auth`]: token claims and `mint_hs256` for tokens of your own.
//! - [`protocol`]: the wire format's names: message types, error and close codes, frames.
//! - [`engine`]: where room sequences and history live (the memory engine now).
//! - [`metrics`]: the Prometheus registry and the HTTP middleware that counts requests.
//! - [`webhooks::signing`]: verify a webhook delivery in a receiver written in Rust.
//!
//! Inside (not public): the actors (Session, Registry, Room, Router, Supervisor,
//! RetryQueue, WebhookTarget: `src/actors/`), the HTTP routes (`src/http/`) and the
//! WebSocket transport (`src/transport/`); docs/ARCHITECTURE.md describes them.
//!
//! Embedding: inside an actix system, `Broker::start(config)`, then
//! `App::new().configure(broker.configure())`, and `broker.register_handler("task.request",
//! addr.recipient())` for your own message types. See `examples/embed.rs`.

#![warn(missing_docs)]

pub(crate) mod actors;
pub mod asap;
pub mod auth;
pub(crate) mod bridge;
pub mod broker;
pub mod config;
pub mod endpoint;
pub mod engine;
mod glob;
pub(crate) mod http;
pub mod metrics;
pub mod middleware;
pub mod protocol;
pub mod server;
pub mod tasks;
pub mod tls;
pub(crate) mod transport;
pub mod webhooks;

pub use actors::registry::Counts;
pub use actors::room::{History, PresenceInfo};
pub use actors::router::{HandlerError, HandlerRequest, Origin, Origins, Pusher, Reply};
pub use actors::supervisor::ShutdownReport;
pub use broker::rooms::{Receipt, RoomError, ServerMessage};
pub use broker::{Broker, BrokerBuilder};
pub use config::Config;

/// Mounts the web console (`/console/`) on an application that embeds the broker:
/// `App::new().configure(broker.configure()).configure(switchboard::console)`.
/// `switchboard serve` mounts it when `[console] enabled`; it reads everything it shows
/// through the HTTP API that [`Broker::configure`] mounts.
pub fn console(cfg: &mut actix_web::web::ServiceConfig) {
    http::console::configure(cfg);
}
