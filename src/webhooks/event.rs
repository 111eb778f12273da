//! Webhook events: the types an endpoint can subscribe to and the JSON body each becomes.
//!
//! The body is `{"id", "type", "timestamp", "data"}` (the Standard Webhooks payload shape).
//! It is rendered once, when the event is raised, and stored in the outbox as the exact bytes
//! every attempt sends, so a signature always covers what was accepted.

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;

use super::WebhookError;

/// A message was published in a room.
pub const ROOM_MESSAGE: &str = "room.message";
/// A WebSocket session connected.
pub const SESSION_CONNECTED: &str = "session.connected";
/// A WebSocket session went away.
pub const SESSION_DISCONNECTED: &str = "session.disconnected";
/// A user's first connection joined a room with presence on.
pub const PRESENCE_JOIN: &str = "presence.join";
/// A user's last connection left a room with presence on.
pub const PRESENCE_LEAVE: &str = "presence.leave";
/// Sent by `POST /api/webhooks/{id}/test`, whatever the endpoint subscribed to.
pub const PING: &str = "webhook.ping";

/// The event types an endpoint may subscribe to.
pub const SUBSCRIBABLE: [&str; 5] = [
    ROOM_MESSAGE,
    SESSION_CONNECTED,
    SESSION_DISCONNECTED,
    PRESENCE_JOIN,
    PRESENCE_LEAVE,
];

/// Whether events of this type concern a room (and so are filtered by `rooms` globs).
pub fn is_room_event(event_type: &str) -> bool {
    matches!(event_type, ROOM_MESSAGE | PRESENCE_JOIN | PRESENCE_LEAVE)
}

/// Checks an endpoint's `events`: at least one, each known.
pub fn validate_event_types(events: &[String]) -> Result<(), WebhookError> {
    if events.is_empty() {
        return Err(WebhookError::Invalid(format!(
            "events must name at least one of {SUBSCRIBABLE:?}"
        )));
    }
    for event in events {
        if !SUBSCRIBABLE.contains(&event.as_str()) {
            return Err(WebhookError::Invalid(format!(
                "unknown event type `{event}` (known: {SUBSCRIBABLE:?})"
            )));
        }
    }
    Ok(())
}

/// One event, rendered. Its id (`evt_…`, the same for every endpoint that receives it) is
/// in the body.
#[derive(Debug, Clone)]
pub struct WebhookEvent {
    /// One of [`SUBSCRIBABLE`] or [`PING`].
    pub event_type: &'static str,
    /// The room, for room events.
    pub room: Option<Arc<str>>,
    /// The JSON body sent to receivers.
    pub body: String,
}

#[derive(Serialize)]
struct Body<'a, D: Serialize> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    timestamp: &'a str,
    data: D,
}

#[derive(Serialize)]
struct RoomMessageData<'a> {
    room: &'a str,
    seq: u64,
    id: &'a str,
    #[serde(rename = "type")]
    msg_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
}

impl WebhookEvent {
    fn render(event_type: &'static str, room: Option<Arc<str>>, data: impl Serialize) -> Self {
        let id = format!("evt_{}", uuid::Uuid::new_v4().simple());
        let timestamp = crate::protocol::frame::now_rfc3339();
        let body = serde_json::to_string(&Body {
            id: &id,
            event_type,
            timestamp: &timestamp,
            data,
        })
        .expect("event bodies are plain JSON");
        WebhookEvent {
            event_type,
            room,
            body,
        }
    }

    /// `room.message`: a message with `seq` and message `id` was published in `room`;
    /// `user` is the publishing member (absent for the HTTP API).
    pub fn room_message(
        room: &Arc<str>,
        seq: u64,
        id: &str,
        msg_type: &str,
        payload: Option<&RawValue>,
        user: Option<&str>,
    ) -> Self {
        let data = RoomMessageData {
            room,
            seq,
            id,
            msg_type,
            payload,
            user,
        };
        Self::render(ROOM_MESSAGE, Some(room.clone()), data)
    }

    /// `presence.join` or `presence.leave` of `user` in `room`.
    pub fn presence(event_type: &'static str, room: &Arc<str>, user: &str) -> Self {
        let data = serde_json::json!({ "room": &**room, "user": user });
        Self::render(event_type, Some(room.clone()), data)
    }

    /// `session.connected` or `session.disconnected`.
    pub fn session(event_type: &'static str, connection_id: &str, user: &str) -> Self {
        let data = serde_json::json!({ "connection_id": connection_id, "user": user });
        Self::render(event_type, None, data)
    }

    /// `webhook.ping` for one endpoint.
    pub fn ping(endpoint_id: &str) -> Self {
        Self::render(
            PING,
            None,
            serde_json::json!({ "endpoint_id": endpoint_id }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_message_body_has_the_four_keys_and_verbatim_payload() {
        let room: Arc<str> = Arc::from("conversation:1");
        let payload = RawValue::from_string(r#"{"text":"hi","n":[1,2]}"#.into()).unwrap();
        let event = WebhookEvent::room_message(&room, 7, "m1", ROOM_MESSAGE, Some(&payload), None);
        let v: serde_json::Value = serde_json::from_str(&event.body).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
        // `evt_…`: the same for every endpoint that receives this event.
        assert!(v["id"].as_str().unwrap().starts_with("evt_"));
        assert_eq!(v["type"], "room.message");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(v["data"]["seq"], 7);
        assert_eq!(v["data"]["payload"]["n"][1], 2);
        assert!(v["data"].get("user").is_none());
        assert!(event.body.contains(r#"{"text":"hi","n":[1,2]}"#));
    }

    #[test]
    fn event_types_are_checked() {
        assert!(validate_event_types(&["room.message".into()]).is_ok());
        assert!(validate_event_types(&[]).is_err());
        assert!(validate_event_types(&["webhook.ping".into()]).is_err());
        assert!(validate_event_types(&["Room.Message".into()]).is_err());
    }
}
