//! `room.leave`.

use super::Session;
use crate::actors::room::Leave;
use crate::protocol::frame::Inbound;
use crate::protocol::ErrorCode;

impl Session {
    pub(super) fn leave(&mut self, inbound: Inbound) {
        let room = match self.room_name(&inbound) {
            Ok(room) => room,
            Err(msg) => return self.send_error(&inbound.reply_to, ErrorCode::BadRequest, &msg),
        };
        match self.rooms.remove(&room) {
            Some(addr) => {
                log::debug!("conn={} left {room}", self.id);
                addr.do_send(Leave {
                    connection_id: self.id.clone(),
                    reply_to: Some(inbound.reply_to),
                });
            }
            None => self.send_error(
                &inbound.reply_to,
                ErrorCode::NotFound,
                &format!("not a member of room `{room}`"),
            ),
        }
    }
}
