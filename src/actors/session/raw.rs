//! Frames from a raw-framing client ([`Framing::Raw`]): `{"action":"subscribe", …}` and
//! `{"action":"unsubscribe", …}` name a room of the endpoint's template by its parameters;
//! any other JSON is published into the endpoint's room when the endpoint allows it. Every
//! refusal is an error frame; the connection stays open.
//!
//! [`Framing::Raw`]: crate::endpoint::Framing::Raw

use actix::prelude::*;
use bytestring::ByteString;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::Session;
use crate::actors::room::{Leave, Publish, Publisher};
use crate::protocol::frame::{self, ReplyTo};
use crate::protocol::{types, ErrorCode};

impl Session {
    pub(super) fn on_raw_text(&mut self, text: ByteString, ctx: &mut Context<Self>) {
        if !self.allow_frame(&ReplyTo::Raw, ctx) {
            return;
        }
        // Checked once; a message to publish is forwarded as these very bytes.
        let frame = match RawValue::from_string(text.to_string()) {
            Ok(frame) => frame,
            Err(err) => {
                let msg = format!("not JSON: {err}");
                return self.send_error(&ReplyTo::Raw, ErrorCode::BadRequest, &msg);
            }
        };
        /// Only the `action` member is read (a non-object has none).
        #[derive(Deserialize)]
        struct Probe {
            action: Option<serde_json::Value>,
        }
        let action = serde_json::from_str::<Probe>(frame.get())
            .ok()
            .and_then(|p| p.action);
        let Some(action) = action else {
            self.count_in(types::ROOM_PUBLISH);
            return self.publish_raw(frame);
        };
        let (subscribe, label) = match action.as_str() {
            Some("subscribe") => (true, types::ROOM_JOIN),
            Some("unsubscribe") => (false, types::ROOM_LEAVE),
            _ => {
                self.count_in("unknown");
                let name = action
                    .as_str()
                    .map_or_else(|| action.to_string(), str::to_owned);
                let msg = format!("unknown action `{name}`: use subscribe or unsubscribe");
                return self.send_error(&ReplyTo::Raw, ErrorCode::BadRequest, &msg);
            }
        };
        self.count_in(label);
        if subscribe && !self.binding.endpoint.config.subscribe {
            let msg = "this endpoint does not take subscribe actions";
            return self.send_error(&ReplyTo::Raw, ErrorCode::Forbidden, msg);
        }
        // An action frame is an object: it has an `action` member.
        let fields: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(frame.get()).unwrap_or_default();
        let room = match self.binding.endpoint.room_from_fields(&fields) {
            Ok(room) => room,
            Err(err) => return self.send_error(&ReplyTo::Raw, ErrorCode::BadRequest, &err.0),
        };
        match (subscribe, self.rooms.remove(&room)) {
            (true, Some(addr)) => {
                self.rooms.insert(room.clone(), addr);
                self.send(frame::raw_event("subscribed", &room));
            }
            (true, None) => self.join_endpoint_room(room, false, ctx),
            (false, Some(addr)) => {
                addr.do_send(Leave {
                    connection_id: self.id.clone(),
                    reply_to: None,
                });
                self.send(frame::raw_event("unsubscribed", &room));
            }
            (false, None) => self.send_error(
                &ReplyTo::Raw,
                ErrorCode::NotFound,
                &format!("not subscribed to `{room}`"),
            ),
        }
    }

    fn count_in(&self, label: &str) {
        self.state
            .metrics
            .messages_in
            .with_label_values(&[label])
            .inc();
    }

    /// Publishes a raw client's frame, byte for byte, into the endpoint's room.
    fn publish_raw(&mut self, payload: Box<RawValue>) {
        let room = match &self.binding.room {
            Some(room) if self.binding.endpoint.config.publish => room.clone(),
            _ => {
                let msg = "this endpoint does not accept messages from clients (endpoint `publish = false`)";
                return self.send_error(&ReplyTo::Raw, ErrorCode::Forbidden, msg);
            }
        };
        if !self.may_publish(&room) || !self.state.config.room_policy(&room).client_publish {
            let msg = format!("not allowed to publish to `{room}`");
            return self.send_error(&ReplyTo::Raw, ErrorCode::Forbidden, &msg);
        }
        let max_depth = self.state.config.limits.max_json_depth;
        if frame::nests_deeper_than(payload.get(), max_depth) {
            self.state.metrics.limit_refused("json_depth");
            let msg = format!("the message nests deeper than {max_depth} levels");
            return self.send_error(&ReplyTo::Raw, ErrorCode::BadRequest, &msg);
        }
        let Some(addr) = self.rooms.get(&room) else {
            let msg = format!("not in `{room}` (its join failed)");
            return self.send_error(&ReplyTo::Raw, ErrorCode::BadRequest, &msg);
        };
        addr.do_send(Publish {
            from: Publisher::Member {
                connection_id: self.id.clone(),
                reply_to: ReplyTo::Raw,
            },
            id: None,
            msg_type: None,
            payload: Some(payload),
        });
    }
}
