//! Endpoints shared between broker nodes. With a shared engine (Redis), an endpoint created,
//! changed or deleted through the API on one node is stored in the engine's store and
//! announced, and every node's RetryQueue mirrors it into its own outbox. Deliveries stay
//! per node: each node delivers the events it raised, from its own outbox, so they survive
//! that node's `kill -9` and are never sent twice.

use actix::prelude::*;
use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};

use super::outbox::{Endpoint, NewEndpoint};
use crate::engine::EngineError;

/// An endpoint as the nodes share it: its definition and the enabled state the API set.
/// Failure streaks and automatic disabling stay per node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedEndpoint {
    /// `ep_…`, the same on every node.
    pub id: String,
    /// URL, secret, events, rooms, rate limit.
    #[serde(flatten)]
    pub definition: NewEndpoint,
    /// Whether the API left it enabled.
    pub enabled: bool,
    /// Unix ms of registration.
    pub created_at: i64,
}

impl From<&Endpoint> for SharedEndpoint {
    fn from(e: &Endpoint) -> Self {
        SharedEndpoint {
            id: e.id.clone(),
            definition: e.definition(),
            enabled: e.enabled,
            created_at: e.created_at,
        }
    }
}

/// Every shared endpoint, and the ids deleted (so a node that was away does not bring a
/// deleted endpoint back).
#[derive(Debug, Clone, Default)]
pub struct SharedEndpoints {
    /// The endpoints.
    pub endpoints: Vec<SharedEndpoint>,
    /// Deleted ids.
    pub deleted: Vec<String>,
}

/// A change another node (or this one) made.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "()")]
#[serde(rename_all = "snake_case")]
pub enum EndpointsChanged {
    /// Created or changed.
    Saved(SharedEndpoint),
    /// Deleted.
    Removed(String),
    /// Changes may have been missed (the store was unreachable): read them all again.
    Resync,
}

/// Where nodes share the endpoints created through the API.
///
/// Writes are announced to every watcher ([`EndpointStore::watch`]) after they are stored;
/// a watcher that may have missed announcements gets [`EndpointsChanged::Resync`]. A write
/// that fails with [`EngineError::Unavailable`] was not shared; the API reports it and the
/// caller retries.
pub trait EndpointStore: Send + Sync {
    /// Stores `endpoint` (created or changed) and announces it.
    fn save(&self, endpoint: SharedEndpoint) -> LocalBoxFuture<'static, Result<(), EngineError>>;

    /// Deletes endpoint `id`, remembers the deletion and announces it.
    fn remove(&self, id: String) -> LocalBoxFuture<'static, Result<(), EngineError>>;

    /// Everything stored.
    fn snapshot(&self) -> LocalBoxFuture<'static, Result<SharedEndpoints, EngineError>>;

    /// Sends every announced change to `to`.
    fn watch(&self, to: Recipient<EndpointsChanged>);
}
