//! Frames from a raw-framing client ([`Framing::Raw`]): `{"action":"subscribe", …}` and
//! `{"action":"unsubscribe", …}` name a room of the endpoint's template by its parameters;
//! any other JSON is published into the endpoint's room when the endpoint allows it. Every
//! refusal is an error frame; the connection stays open.
//!
//! [`Framing::Raw`]: crate::endpoint::Framing::Raw

use actix::prelude::*;
use bytestring::ByteString;
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
        let fields = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(fields)) => Some(fields),
            Ok(_) => None,
            Err(err) => {
                return self.send_error(
                    &ReplyTo::Raw,
                    ErrorCode::BadRequest,
                    &format!("not JSON: {err}"),
                )
            }
        };
        let action = fields
            .as_ref()
            .and_then(|f| f.get("action"))
            .map(|a| a.as_str().unwrap_or_default().to_owned());
        let count = |act: &Self, label: &str| {
            act.state
                .metrics
                .messages_in
                .with_label_values(&[label])
                .inc();
        };
        match (action.as_deref(), fields) {
            (Some("subscribe"), Some(fields)) => {
                count(self, types::ROOM_JOIN);
                if !self.binding.endpoint.config.subscribe {
                    let msg = "this endpoint does not take subscribe actions";
                    return self.send_error(&ReplyTo::Raw, ErrorCode::Forbidden, msg);
                }
                match self.binding.endpoint.room_from_fields(&fields) {
                    Ok(room) if self.rooms.contains_key(&room) => {
                        self.send(frame::raw_event("subscribed", &room))
                    }
                    Ok(room) => self.join_endpoint_room(room, false, ctx),
                    Err(err) => self.send_error(&ReplyTo::Raw, ErrorCode::BadRequest, &err.0),
                }
            }
            (Some("unsubscribe"), Some(fields)) => {
                count(self, types::ROOM_LEAVE);
                let room = match self.binding.endpoint.room_from_fields(&fields) {
                    Ok(room) => room,
                    Err(err) => {
                        return self.send_error(&ReplyTo::Raw, ErrorCode::BadRequest, &err.0)
                    }
                };
                match self.rooms.remove(&room) {
                    Some(addr) => {
                        addr.do_send(Leave {
                            connection_id: self.id.clone(),
                            reply_to: None,
                        });
                        self.send(frame::raw_event("unsubscribed", &room));
                    }
                    None => self.send_error(
                        &ReplyTo::Raw,
                        ErrorCode::NotFound,
                        &format!("not subscribed to `{room}`"),
                    ),
                }
            }
            (Some(other), _) => {
                count(self, "unknown");
                self.send_error(
                    &ReplyTo::Raw,
                    ErrorCode::BadRequest,
                    &format!("unknown action `{other}`: use subscribe or unsubscribe"),
                )
            }
            (None, _) => {
                count(self, types::ROOM_PUBLISH);
                self.publish_raw(text)
            }
        }
    }

    /// Publishes a raw client's frame, byte for byte, into the endpoint's room.
    fn publish_raw(&mut self, text: ByteString) {
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
        if frame::nests_deeper_than(&text, max_depth) {
            self.state.metrics.limit_refused("json_depth");
            let msg = format!("the message nests deeper than {max_depth} levels");
            return self.send_error(&ReplyTo::Raw, ErrorCode::BadRequest, &msg);
        }
        let Some(addr) = self.rooms.get(&room) else {
            let msg = format!("not in `{room}` (its join failed)");
            return self.send_error(&ReplyTo::Raw, ErrorCode::BadRequest, &msg);
        };
        // Parsed as JSON just before, so this cannot fail; an error is answered anyway.
        let payload = match RawValue::from_string(text.to_string()) {
            Ok(payload) => payload,
            Err(err) => {
                return self.send_error(&ReplyTo::Raw, ErrorCode::BadRequest, &err.to_string())
            }
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
