//! The actors of the broker, one per file, each with its messages beside it.
//!
//! - [`session::Session`]: one per WebSocket; parses frames, enforces limits, owns the
//!   bounded outbound queue.
//! - [`registry::Registry`]: finds or starts rooms, indexes live sessions.
//! - [`room::Room`]: one per room; members, seq, history; encodes each message once.
//! - [`router::Router`]: message type → handler `Recipient`, plus middleware.
//! - [`supervisor::Supervisor`]: heartbeats, stale-session cleanup, graceful shutdown.
//! - [`retry_queue::RetryQueue`]: owns the webhook outbox; schedules attempts and retries.
//! - [`webhook_target::WebhookTarget`]: one per webhook endpoint; makes the attempts.

pub mod registry;
pub mod retry_queue;
pub mod room;
pub mod router;
pub mod session;
pub mod supervisor;
#[cfg(test)]
mod testing;
pub mod webhook_target;

use std::sync::Arc;

/// A connection id: unique per WebSocket, sent to the client in
/// `system.connection.established`.
pub type ConnectionId = Arc<str>;
