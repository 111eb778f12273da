//! `room.publish`: permission, membership and id checks here; sequencing, fan-out and the
//! ack in the Room.

use super::Session;
use crate::actors::room::{Publish, Publisher};
use crate::protocol::frame::{self, Inbound};
use crate::protocol::{types, ErrorCode};

impl Session {
    /// Whether the token allows publishing to `room`, or the endpoint does: an endpoint
    /// with `publish = true` and `access = "authenticated"` lets its clients publish where
    /// it lets them join.
    pub(super) fn may_publish(&self, room: &str) -> bool {
        let endpoint = &self.binding.endpoint;
        self.identity.may_publish(room)
            || (endpoint.config.publish && endpoint.grants(&self.identity, room))
    }

    pub(super) fn publish(&mut self, inbound: Inbound) {
        let room = match self.room_name(&inbound) {
            Ok(room) => room,
            Err(msg) => return self.send_error(&inbound.reply_to, ErrorCode::BadRequest, &msg),
        };
        // Only the server reaches every session: clients never publish to `broadcast`; an
        // endpoint may keep its room read-only for the clients it binds there.
        let bound_read_only = self.binding.room.as_deref() == Some(room.as_str())
            && !self.binding.endpoint.config.publish;
        if room == types::BROADCAST_ROOM
            || bound_read_only
            || !self.may_publish(&room)
            || !self.state.config.room_policy(&room).client_publish
        {
            return self.send_error(
                &inbound.reply_to,
                ErrorCode::Forbidden,
                &format!("not allowed to publish to `{room}`"),
            );
        }
        let Some(addr) = self.rooms.get(&room) else {
            return self.send_error(
                &inbound.reply_to,
                ErrorCode::BadRequest,
                &format!("not a member of room `{room}`: join it before publishing"),
            );
        };
        if let Some(Err(msg)) = inbound.id.as_deref().map(frame::check_message_id) {
            self.state.metrics.limit_refused("message_id");
            return self.send_error(&inbound.reply_to, ErrorCode::BadRequest, &msg);
        }
        addr.do_send(Publish {
            from: Publisher::Member {
                connection_id: self.id.clone(),
                reply_to: inbound.reply_to,
            },
            id: inbound.id,
            msg_type: None,
            payload: inbound.payload,
        });
    }
}
