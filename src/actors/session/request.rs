//! Application types: through the route table's middleware to the handler actor, the reply
//! (or error) back on this socket.

use actix::prelude::*;
use serde_json::Value;

use super::Session;
use crate::actors::router::{HandlerRequest, Origin, Pusher};
use crate::protocol::frame::{self, Inbound, ReplyTo};
use crate::protocol::ErrorCode;

impl Session {
    /// Later messages from a handler: v1 push frames of the handler's type (no correlation:
    /// the reply already answered the request).
    fn v1_pusher(&self) -> Pusher {
        let out = self.out.clone();
        Pusher::new(move |message| {
            let frame = frame::push(&message.msg_type, None, Some(message.payload));
            out.send(frame).is_ok()
        })
    }

    pub(super) fn request(&mut self, inbound: Inbound, ctx: &mut Context<Self>) {
        let payload = inbound
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or(Value::Null);
        let req = HandlerRequest {
            connection_id: self.id.clone(),
            user: self.identity.user.clone(),
            anonymous: self.identity.anonymous,
            admin: self.identity.admin,
            msg_type: inbound.msg_type,
            id: inbound.id,
            room: inbound.room,
            payload,
            origin: Origin::Socket,
            envelope: None,
            push: Some(self.v1_pusher()),
        };
        let routes = self.state.routes.load_full();
        let timeout = self.state.config.router.handler_timeout;
        let reply_to = inbound.reply_to;
        let out = self.out.clone();
        let metrics = self.state.metrics.clone();
        ctx.spawn(
            async move {
                let room = req.room.clone();
                let result = routes.call(req, timeout).await;
                if matches!(&result, Err(e) if e.code == ErrorCode::RateLimited) {
                    metrics.rate_limited.with_label_values(&["router"]).inc();
                }
                let frame = match result {
                    Ok(reply) => frame::reply(
                        &reply_to,
                        &reply.msg_type,
                        room.as_deref(),
                        None,
                        Some(reply.payload),
                        |p| p.unwrap_or(Value::Null),
                    ),
                    Err(err) if reply_to != ReplyTo::JsonRpcNotification => {
                        Some(frame::error(&reply_to, err.code, &err.message))
                    }
                    Err(_) => None,
                };
                if let Some(frame) = frame {
                    let _ = out.send(frame);
                }
            }
            .into_actor(self),
        );
    }
}
