//! Wire types of protocol v1 (`docs/PROTOCOL.md`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One protocol-v1 frame (the envelope of `docs/PROTOCOL.md` §2), as the broker sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Envelope {
    /// The message type (`room.message`, `task.response`, …).
    #[serde(rename = "type")]
    pub msg_type: String,
    /// The frame's id (the message id on room messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The `id` of the request this frame answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The room, on room traffic and replies to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// The message's seq (room messages), the room's latest seq (`room.joined`), or the
    /// seq assigned (`ack`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The payload (`None` when the frame had none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// RFC 3339 time the broker stamped on the frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

impl Envelope {
    /// A string field of the payload.
    pub(crate) fn payload_str(&self, key: &str) -> Option<&str> {
        self.payload.as_ref()?.get(key)?.as_str()
    }

    /// A room message: has a room and a seq, answers no request, and is not a reply type.
    pub(crate) fn is_room_message(&self) -> bool {
        self.room.is_some()
            && self.seq.is_some()
            && self.correlation_id.is_none()
            && !matches!(self.msg_type.as_str(), "ack" | "room.joined" | "room.left")
    }
}

/// A message delivered on a [`Subscription`](crate::Subscription): each seq once, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The room.
    pub room: String,
    /// The message's seq in its room (1, 2, 3, … without gaps, unless a [`Gap`] says so).
    pub seq: u64,
    /// The message id (the publisher's client id, or a UUID the broker assigned).
    pub id: String,
    /// `room.message`, or the custom type of a message published through the HTTP API.
    pub msg_type: String,
    /// The payload (`Value::Null` when there was none).
    pub payload: Value,
    /// RFC 3339 time of publication.
    pub timestamp: Option<String>,
}

/// The broker's acknowledgement of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The message id (the client id the publish carried).
    pub id: String,
    /// The room.
    pub room: String,
    /// The seq the message got (for a duplicate: the seq of the original).
    pub seq: u64,
    /// True when the broker had already seen this id (a retry): not delivered again.
    pub duplicate: bool,
}

/// Messages of a room were lost to this client; reported on the room's subscription,
/// between the messages before and after the gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The room.
    pub room: String,
    /// The last seq this client had when it rejoined.
    pub since_seq: u64,
    /// The room's latest seq at the rejoin.
    pub seq: u64,
    /// True when the room restarted its numbering (a broker restart on the memory engine, or
    /// the room expired): the client then replays the new room from its start, so messages
    /// with seqs at or below `since_seq` follow. False: part of the gap after `since_seq`
    /// had already left the broker's history.
    pub reset: bool,
}

/// One user in a room's presence list (`docs/PROTOCOL.md` §4.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The user (`anonymous:<connection_id>` for an anonymous session).
    pub user: String,
    /// How many of the user's connections are in the room.
    pub connections: u32,
    /// RFC 3339 time the user's first connection joined.
    #[serde(default)]
    pub joined_at: Option<String>,
}

/// Who is in a room, on a [`Subscription`](crate::Subscription) of a room whose namespace
/// has presence on (`[namespaces.<ns>] presence = true`); nothing is sent otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    /// Everyone in the room, this client's user included, sorted by user: sent on every
    /// join and rejoin, so it replaces what earlier events built up (joins and leaves
    /// while the client was offline are not replayed).
    Members(Vec<Member>),
    /// A user's first connection joined the room.
    Joined(String),
    /// A user's last connection left the room.
    Left(String),
}
