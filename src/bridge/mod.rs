//! Bridges between rooms and other messaging systems: `[[bridge.redis]]` carries messages
//! PUBLISHed on Redis channels into rooms, and messages published in rooms out to Redis
//! channels ([`redis`]).
//!
//! Inbound, a bridge is one more publisher: its messages are sequenced, stored for replay,
//! fanned out and sent to webhooks like any other, with the publisher `bridge:<name>`.
//! Outbound, a room offers each new message to the [`Outlets`] that want its room, without
//! waiting: an outlet whose queue is full drops the message and counts it, so Redis being
//! slow or down never holds a room up. A message that came in through a bridge never goes
//! out again, and the configuration refuses an outbound channel that an inbound pattern
//! would carry back.

pub(crate) mod redis;

use std::sync::Arc;

use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// A message leaving through a bridge.
#[derive(Debug)]
pub(crate) struct OutMessage {
    pub room: Arc<str>,
    pub seq: u64,
    pub id: String,
    pub user: Option<Arc<str>>,
    pub payload: Option<Box<RawValue>>,
}

/// One outbound bridge as rooms see it: which rooms it takes, and its queue.
struct Outlet {
    name: String,
    rooms: Vec<String>,
    queue: mpsc::Sender<OutMessage>,
}

/// Every outbound bridge; cheap to clone, empty when none is configured.
#[derive(Clone, Default)]
pub(crate) struct Outlets {
    outlets: Arc<[Outlet]>,
    metrics: Option<Arc<Metrics>>,
}

impl Outlets {
    /// Whether any bridge takes `room`'s messages.
    pub fn wants(&self, room: &str) -> bool {
        self.outlets
            .iter()
            .any(|o| o.rooms.iter().any(|p| crate::glob::matches(p, room)))
    }

    /// Queues a room's new message to each bridge that takes it; never waits.
    pub fn offer(&self, message: impl Fn() -> OutMessage, room: &str) {
        for outlet in self.outlets.iter() {
            if !outlet.rooms.iter().any(|p| crate::glob::matches(p, room)) {
                continue;
            }
            if outlet.queue.try_send(message()).is_err() {
                if let Some(metrics) = &self.metrics {
                    let dropped = metrics
                        .bridge_dropped
                        .with_label_values(&[outlet.name.as_str(), "queue_full"]);
                    dropped.inc();
                    if dropped.get().is_power_of_two() {
                        log::warn!(
                            "bridge {}: outbound queue full, {} message(s) dropped so far (Redis slow or down?)",
                            outlet.name,
                            dropped.get()
                        );
                    }
                }
            }
        }
    }
}

/// Starts nothing yet: the outlets rooms offer to, and the receiving ends the bridges'
/// tasks will drain ([`redis::start`]).
pub(crate) fn outlets(
    config: &crate::config::Config,
    metrics: &Arc<Metrics>,
) -> (Outlets, Vec<Option<mpsc::Receiver<OutMessage>>>) {
    let mut outlets = Vec::new();
    let mut receivers = Vec::new();
    for (i, bridge) in config.bridge.redis.iter().enumerate() {
        if bridge.publish_rooms.is_empty() {
            receivers.push(None);
            continue;
        }
        let (tx, rx) = mpsc::channel(bridge.publish_queue);
        outlets.push(Outlet {
            name: bridge.name_or(i),
            rooms: bridge.publish_rooms.clone(),
            queue: tx,
        });
        receivers.push(Some(rx));
    }
    (
        Outlets {
            outlets: outlets.into(),
            metrics: Some(metrics.clone()),
        },
        receivers,
    )
}
