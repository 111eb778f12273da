//! Publishing and reading rooms from Rust, without HTTP: what the HTTP API's room routes
//! call, and what an application embedding the broker calls directly.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::Broker;
use crate::actors::registry::{DisconnectSession, JoinError, ListRooms, RoomFor};
use crate::actors::room::{
    GetHistory, GetPresence, History, PresenceInfo, Publish, Publisher, Room, RoomInfo,
};
use crate::protocol::{frame, types, ErrorCode};

/// Why a call on the broker's rooms failed: a protocol error code (which the HTTP API turns
/// into its status) and a message naming the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RoomError {
    /// What kind of failure (decides the HTTP status and the JSON-RPC code).
    pub code: ErrorCode,
    /// What was wrong.
    pub message: String,
}

impl RoomError {
    fn new(code: ErrorCode, message: impl Into<String>) -> RoomError {
        RoomError {
            code,
            message: message.into(),
        }
    }
}

impl From<JoinError> for RoomError {
    fn from(err: JoinError) -> Self {
        RoomError::new(err.code(), err.to_string())
    }
}

impl From<crate::engine::EngineError> for RoomError {
    fn from(err: crate::engine::EngineError) -> Self {
        RoomError::new(err.code(), err.to_string())
    }
}

fn mailbox(err: actix::MailboxError) -> RoomError {
    RoomError::new(
        ErrorCode::Internal,
        format!("broker actor unavailable: {err}"),
    )
}

/// A message the server publishes into a room.
#[derive(Debug, Clone)]
pub struct ServerMessage {
    /// Message type members receive (`room.message` when `None`); not a broker type.
    pub msg_type: Option<String>,
    /// Any JSON, forwarded verbatim.
    pub payload: Box<RawValue>,
    /// Message id: a retry with the same id in the same room, by the same publisher, is not
    /// delivered twice. A fresh id is assigned when `None`.
    pub id: Option<String>,
}

/// Where a published message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Its seq in the room.
    pub seq: u64,
    /// Its message id.
    pub id: String,
    /// True when the id had been published before (nothing was delivered this time).
    pub duplicate: bool,
}

impl Broker {
    /// Publishes `message` into `room` on behalf of `publisher` (a name for logs and for
    /// scoping message ids, e.g. `key#0` or `my-app`). Answers once the message is
    /// sequenced — with the Redis engine, once Redis has stored it — and, when a webhook
    /// endpoint wants it, once the webhook outbox has committed it.
    ///
    /// Refused with `bad_request` for an invalid room name, a broker message type, an id
    /// over 128 bytes or a payload nested deeper than `limits.max_json_depth`;
    /// `unavailable` when the engine cannot reach Redis (retry with the same id).
    pub async fn publish(
        &self,
        room: &str,
        publisher: &str,
        message: ServerMessage,
    ) -> Result<Receipt, RoomError> {
        let caller: Arc<str> = publisher.into();
        self.publish_from(room, Publisher::Server { caller }, message)
            .await
    }

    /// [`Broker::publish`] for a bridge carrying a message in: such a message never goes
    /// out through a bridge again.
    pub(crate) async fn publish_bridged(
        &self,
        room: &str,
        bridge: &str,
        message: ServerMessage,
    ) -> Result<Receipt, RoomError> {
        let caller: Arc<str> = format!("bridge:{bridge}").into();
        self.publish_from(room, Publisher::Bridge { caller }, message)
            .await
    }

    async fn publish_from(
        &self,
        room: &str,
        from: Publisher,
        message: ServerMessage,
    ) -> Result<Receipt, RoomError> {
        check_room(room)?;
        if let Some(t) = &message.msg_type {
            if t.is_empty() || (types::is_reserved(t) && t != types::ROOM_MESSAGE) {
                return Err(RoomError::new(
                    ErrorCode::BadRequest,
                    "`type` must be non-empty and not a broker type (room.*, system.*, presence.*, ack) other than room.message",
                ));
            }
        }
        let metrics = self.metrics();
        if let Some(Err(msg)) = message.id.as_deref().map(frame::check_message_id) {
            metrics.limit_refused("message_id");
            return Err(RoomError::new(ErrorCode::BadRequest, msg));
        }
        let max_depth = self.config().limits.max_json_depth;
        if frame::nests_deeper_than(message.payload.get(), max_depth) {
            metrics.limit_refused("json_depth");
            return Err(RoomError::new(
                ErrorCode::BadRequest,
                format!("`payload` nests deeper than {max_depth} levels (limits.max_json_depth)"),
            ));
        }
        let publish = || Publish {
            from: from.clone(),
            id: message.id.clone(),
            msg_type: message.msg_type.clone(),
            payload: Some(message.payload.clone()),
        };
        // A room retiring at this instant refuses the message; the second address is a fresh
        // room actor.
        for _ in 0..2 {
            let addr = self.room_actor(room).await?;
            if let Ok(answer) = addr.send(publish()).await {
                let Some(published) = answer? else { continue };
                if let Some(err) = published.webhook_error {
                    return Err(RoomError::new(
                        ErrorCode::Internal,
                        format!(
                            "message {} got seq {} and reached the room's members, but the webhook outbox failed: {err}",
                            published.id, published.seq
                        ),
                    ));
                }
                return Ok(Receipt {
                    seq: published.seq,
                    id: published.id,
                    duplicate: published.duplicate,
                });
            }
        }
        Err(RoomError::new(
            ErrorCode::Internal,
            "room unavailable; retry",
        ))
    }

    /// The room's stored messages after seq `since`, at most `limit`, oldest first (the
    /// bytes members received), with the room's newest seq.
    pub async fn history(
        &self,
        room: &str,
        since: u64,
        limit: usize,
    ) -> Result<History, RoomError> {
        check_room(room)?;
        let addr = self.room_actor(room).await?;
        Ok(addr
            .send(GetHistory { since, limit })
            .await
            .map_err(mailbox)??)
    }

    /// Who is in the room (one entry per user); `conflict` when presence is off for its
    /// namespace.
    pub async fn presence(&self, room: &str) -> Result<Vec<PresenceInfo>, RoomError> {
        check_room(room)?;
        if !self.config().room_policy(room).presence {
            return Err(RoomError::new(
                ErrorCode::Conflict,
                "presence is off for this room's namespace ([namespaces.<ns>] presence = true)",
            ));
        }
        let addr = self.room_actor(room).await?;
        Ok(addr.send(GetPresence).await.map_err(mailbox)??)
    }

    /// Every room with members (on any node, with the Redis engine), by name.
    pub async fn rooms(&self) -> Result<Vec<RoomInfo>, RoomError> {
        Ok(self
            .state
            .registry
            .send(ListRooms)
            .await
            .map_err(mailbox)??)
    }

    /// Disconnects a session wherever it is connected (`system.connection.close` with
    /// `reason`, then close 1008); false when no such session is connected.
    pub async fn disconnect(&self, connection_id: &str, reason: &str) -> Result<bool, RoomError> {
        Ok(self
            .state
            .registry
            .send(DisconnectSession {
                connection_id: connection_id.to_owned(),
                reason: reason.to_owned(),
            })
            .await
            .map_err(mailbox)??)
    }

    /// The Room actor for `room` on this node, started if needed.
    async fn room_actor(&self, room: &str) -> Result<actix::Addr<Room>, RoomError> {
        Ok(self
            .state
            .registry
            .send(RoomFor {
                room: room.to_owned(),
            })
            .await
            .map_err(mailbox)??)
    }
}

fn check_room(room: &str) -> Result<(), RoomError> {
    if frame::valid_room_name(room) {
        Ok(())
    } else {
        Err(RoomError::new(
            ErrorCode::BadRequest,
            "invalid room name: use 1-128 of A-Z a-z 0-9 _ . : @ -",
        ))
    }
}
