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

/// Outbound bridges: every configured one (the Registry's), or those that take one room's
/// messages (a Room's, chosen once by [`Outlets::for_room`], since a room's name never
/// changes). Cheap to clone; empty when none is configured.
#[derive(Clone, Default)]
pub(crate) struct Outlets {
    outlets: Arc<[Arc<Outlet>]>,
    metrics: Option<Arc<Metrics>>,
}

impl Outlets {
    /// The bridges that take `room`'s messages.
    pub fn for_room(&self, room: &str) -> Outlets {
        Outlets {
            outlets: self
                .outlets
                .iter()
                .filter(|o| o.rooms.iter().any(|p| crate::glob::matches(p, room)))
                .cloned()
                .collect(),
            metrics: self.metrics.clone(),
        }
    }

    /// Whether there is no bridge to offer messages to.
    pub fn is_empty(&self) -> bool {
        self.outlets.is_empty()
    }

    /// Queues a new message to each bridge; never waits.
    pub fn offer(&self, message: impl Fn() -> OutMessage) {
        for outlet in self.outlets.iter() {
            if outlet.queue.try_send(message()).is_err() {
                if let Some(metrics) = &self.metrics {
                    if let Some(n) = count_dropped(metrics, &outlet.name, "queue_full") {
                        log::warn!(
                            "bridge {}: outbound queue full, {n} message(s) dropped so far (Redis slow or down?)",
                            outlet.name
                        );
                    }
                }
            }
        }
    }
}

/// Counts a message bridge `bridge` did not carry as it came, by `reason`; the total so far
/// when this one is worth a log line: the first of its kind, then every power of two, so a
/// flood stays readable.
pub(crate) fn count_dropped(metrics: &Metrics, bridge: &str, reason: &str) -> Option<u64> {
    let counter = metrics.bridge_dropped.with_label_values(&[bridge, reason]);
    counter.inc();
    let total = counter.get();
    total.is_power_of_two().then_some(total)
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
        outlets.push(Arc::new(Outlet {
            name: bridge.name_or(i),
            rooms: bridge.publish_rooms.clone(),
            queue: tx,
        }));
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
