//! What the actors' unit tests share: the broker's actors without a socket or a listener.
//! A member is an `Outbound` queue whose frames the test reads back with `drain`.

use std::sync::Arc;

use actix::prelude::*;

use super::registry::Registry;
use super::retry_queue::RetryQueue;
use super::ConnectionId;
use crate::config::Config;
use crate::engine::MemoryEngine;
use crate::metrics::Metrics;
use crate::transport::outbound::OutboundReceiver;
use crate::transport::Outbound;
use crate::webhooks::filter::Filters;
use crate::webhooks::outbox::Outbox;
use crate::webhooks::{OutboxHealth, Webhooks};

/// A Registry (rooms on the current arbiter) with its webhook queue (in-memory outbox),
/// metrics and webhooks handle. Call inside an actix system.
pub(crate) fn registry(config: Config) -> (Addr<Registry>, Webhooks, Arc<Metrics>) {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let filters = Filters::default();
    let health = OutboxHealth::default();
    let queue = RetryQueue::new(
        Outbox::in_memory().expect("an in-memory outbox"),
        &config,
        filters.clone(),
        metrics.clone(),
        Arbiter::current(),
        health.clone(),
        crate::webhooks::tls::client_config(&config.webhooks).expect("the default TLS client"),
    )
    .start();
    let webhooks = Webhooks::new(filters, queue, health);
    let registry = Registry::new(
        Vec::new(),
        Arc::new(MemoryEngine::default()),
        config,
        metrics.clone(),
        webhooks.clone(),
    )
    .start();
    (registry, webhooks, metrics)
}

/// A member's queue, large enough for any test, and its receiving end.
pub(crate) fn member(id: &str) -> (ConnectionId, Outbound, OutboundReceiver) {
    let (out, rx) = Outbound::bounded(id.into(), 1024, 1 << 20, (1024, 1 << 20), None);
    (id.into(), out, rx)
}

/// The message types of a list of frames.
pub(crate) fn types(frames: &[serde_json::Value]) -> Vec<&str> {
    frames
        .iter()
        .map(|f| f["type"].as_str().unwrap_or("?"))
        .collect()
}
