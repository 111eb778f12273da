//! Webhook endpoints shared through Redis: the hash `P:webhooks` (id → JSON definition),
//! the set `P:webhooks:deleted` (ids deleted, so a node that was away does not bring one
//! back) and the channel `P:webhooks`, which announces each change as JSON.

use std::sync::Arc;

use actix::Recipient;
use futures_util::future::LocalBoxFuture;

use super::Shared;
use crate::engine::EngineError;
use crate::webhooks::shared::{EndpointStore, EndpointsChanged, SharedEndpoint, SharedEndpoints};

/// The Redis engine's [`EndpointStore`].
pub(super) struct RedisEndpoints {
    pub shared: Arc<Shared>,
}

impl RedisEndpoints {
    fn keys(&self) -> (String, String) {
        let p = &self.shared.prefix;
        (format!("{p}:webhooks"), format!("{p}:webhooks:deleted"))
    }

    /// Applies `change` and announces it, atomically.
    fn write(&self, change: EndpointsChanged) -> LocalBoxFuture<'static, Result<(), EngineError>> {
        let (hash, deleted) = self.keys();
        let shared = self.shared.clone();
        Box::pin(async move {
            let announcement = serde_json::to_string(&change)
                .map_err(|e| EngineError::Store(format!("endpoint not encoded: {e}")))?;
            let mut pipe = redis::pipe();
            pipe.atomic();
            match &change {
                EndpointsChanged::Saved(endpoint) => {
                    let json = serde_json::to_string(endpoint)
                        .map_err(|e| EngineError::Store(format!("endpoint not encoded: {e}")))?;
                    pipe.hset(&hash, &endpoint.id, json).ignore();
                    pipe.srem(&deleted, &endpoint.id).ignore();
                }
                EndpointsChanged::Removed(id) => {
                    pipe.hdel(&hash, id).ignore();
                    pipe.sadd(&deleted, id).ignore();
                }
                EndpointsChanged::Resync => return Ok(()),
            }
            pipe.publish(&hash, announcement).ignore();
            shared
                .run(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
                .await
        })
    }
}

impl EndpointStore for RedisEndpoints {
    fn save(&self, endpoint: SharedEndpoint) -> LocalBoxFuture<'static, Result<(), EngineError>> {
        self.write(EndpointsChanged::Saved(endpoint))
    }

    fn remove(&self, id: String) -> LocalBoxFuture<'static, Result<(), EngineError>> {
        self.write(EndpointsChanged::Removed(id))
    }

    fn snapshot(&self) -> LocalBoxFuture<'static, Result<SharedEndpoints, EngineError>> {
        let (hash, deleted) = self.keys();
        let shared = self.shared.clone();
        Box::pin(async move {
            let (stored, deleted): (Vec<String>, Vec<String>) = shared
                .run(|mut conn| async move {
                    redis::pipe()
                        .hvals(&hash)
                        .smembers(&deleted)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            let mut endpoints = Vec::with_capacity(stored.len());
            for json in stored {
                match serde_json::from_str(&json) {
                    Ok(endpoint) => endpoints.push(endpoint),
                    Err(err) => {
                        log::warn!("a shared webhook endpoint is unreadable ({err}); skipped")
                    }
                }
            }
            Ok(SharedEndpoints { endpoints, deleted })
        })
    }

    fn watch(&self, to: Recipient<EndpointsChanged>) {
        if let Ok(mut watcher) = self.shared.endpoint_watcher.lock() {
            *watcher = Some(to);
        }
    }
}
