//! Which endpoints want which events: a snapshot every room can read without a lock.
//!
//! The `RetryQueue` owns the endpoints and republishes the snapshot whenever one changes;
//! rooms and the Registry only read it, so a publish that no endpoint wants costs one
//! atomic load and a few string compares, and never a message to the queue.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::event;
use crate::glob;

/// One endpoint's subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointFilter {
    /// The endpoint.
    pub endpoint_id: String,
    /// Event types it receives.
    pub events: Vec<String>,
    /// Room patterns ([`crate::glob`]) for room events.
    pub rooms: Vec<String>,
}

impl EndpointFilter {
    /// The filter of a stored endpoint.
    pub fn of(endpoint: &super::outbox::Endpoint) -> EndpointFilter {
        EndpointFilter {
            endpoint_id: endpoint.id.clone(),
            events: endpoint.events.clone(),
            rooms: endpoint.rooms.clone(),
        }
    }

    /// Whether this endpoint receives `event_type` raised in `room` (session events have
    /// no room and ignore the globs).
    pub fn matches(&self, event_type: &str, room: Option<&str>) -> bool {
        subscribed(&self.events, &self.rooms, event_type, room)
    }
}

/// Whether a subscription to `events` in `rooms` (globs) covers `event_type` in `room`.
pub fn subscribed(
    events: &[String],
    rooms: &[String],
    event_type: &str,
    room: Option<&str>,
) -> bool {
    if !events.iter().any(|e| e == event_type) {
        return false;
    }
    match room {
        Some(room) if event::is_room_event(event_type) => {
            rooms.iter().any(|pattern| glob::matches(pattern, room))
        }
        _ => true,
    }
}

/// The shared, swappable list of subscriptions.
#[derive(Clone, Default)]
pub struct Filters(Arc<ArcSwap<Vec<EndpointFilter>>>);

impl Filters {
    /// Whether any endpoint receives `event_type` in `room`.
    pub fn wants(&self, event_type: &str, room: Option<&str>) -> bool {
        self.0.load().iter().any(|f| f.matches(event_type, room))
    }

    /// Replaces the snapshot.
    pub fn publish(&self, filters: Vec<EndpointFilter>) {
        self.0.store(Arc::new(filters));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_type_then_room_for_room_events_only() {
        let f = EndpointFilter {
            endpoint_id: "e".into(),
            events: vec!["presence.join".into(), "session.connected".into()],
            rooms: vec!["conversation:*".into()],
        };
        assert!(f.matches("presence.join", Some("conversation:9")));
        assert!(!f.matches("presence.join", Some("lobby")));
        assert!(!f.matches("presence.leave", Some("conversation:9")));
        assert!(f.matches("session.connected", None));
        let filters = Filters::default();
        assert!(!filters.wants("presence.join", Some("conversation:9")));
        filters.publish(vec![f]);
        assert!(filters.wants("presence.join", Some("conversation:9")));
    }
}
