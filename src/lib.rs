//! switchboard: a real-time message broker on actix.
//!
//! Browsers, agents and services connect over WebSocket (`/ws`), join rooms and exchange
//! JSON messages (protocol v1, or JSON-RPC 2.0 on the same socket).
//!
//! Where things live:
//! - [`protocol`]: the wire format: envelopes, message types, error and close codes.
//! - [`actors`]: Session, Registry, Room, Router, Supervisor: one file each.
//! - [`transport`]: inbound frame checks and the bounded outbound queue per socket.
//! - [`engine`]: room sequence numbers and history (memory now, Redis later).
//! - [`auth`], [`middleware`], [`config`]: who may do what, handler middleware, settings.
//! - [`metrics`]: Prometheus metrics (`GET /metrics`).
//! - [`http`]: thin routes; [`broker`]: the embedding API; [`server`]: the runnable server.
//!
//! Embedding: inside an actix system, `Broker::start(config)`, then
//! `App::new().configure(broker.configure())`, and `broker.register_handler("task.request",
//! addr.recipient())` for your own message types. See `examples/embed.rs`.

#![warn(missing_docs)]

pub mod actors;
pub mod auth;
pub mod broker;
pub mod config;
pub mod engine;
mod glob;
pub mod http;
pub mod metrics;
pub mod middleware;
pub mod protocol;
pub mod server;
pub mod transport;
pub mod webhooks;

pub use actors::router::{HandlerError, HandlerRequest, Reply};
pub use broker::Broker;
pub use config::Config;
