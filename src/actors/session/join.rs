//! `room.join`: permission and limit checks, then the Registry finds or starts the room,
//! which answers `room.joined` and replays what the client missed.

use actix::prelude::*;
use serde::Deserialize;

use super::{parse_payload, truncate, Session};
use crate::actors::registry::{JoinError, JoinRoom};
use crate::actors::room::{Join, JoinFrom, JoinOutcome, Room};
use crate::endpoint::Framing;
use crate::protocol::frame::{self, Inbound, ReplyTo};
use crate::protocol::{close, types, ErrorCode};

impl Session {
    pub(super) fn join(&mut self, inbound: Inbound, ctx: &mut Context<Self>) {
        let room = match self.room_name(&inbound) {
            Ok(room) => room,
            Err(msg) => return self.send_error(&inbound.reply_to, ErrorCode::BadRequest, &msg),
        };
        #[derive(Deserialize)]
        struct JoinPayload {
            since_seq: Option<u64>,
        }
        let since_seq = match inbound.payload.as_deref().map(parse_payload::<JoinPayload>) {
            None => None,
            Some(Ok(p)) => p.since_seq,
            Some(Err(msg)) => {
                let msg = format!("invalid room.join payload: {msg}");
                return self.send_error(&inbound.reply_to, ErrorCode::BadRequest, &msg);
            }
        };
        if let Err((code, msg)) = self.check_join(&room, 0) {
            return self.send_error(&inbound.reply_to, code, &msg);
        }
        let reply_to = inbound.reply_to.clone();
        let from = since_seq.map_or(JoinFrom::Now, JoinFrom::After);
        let joining = self.join_room(room.clone(), Some(inbound.reply_to), from);
        joining
            .into_actor(self)
            .map(move |result, act, _| match result {
                Ok((addr, outcome)) => {
                    log::debug!(
                        "conn={} joined {room} at seq {} (recovered: {})",
                        act.id,
                        outcome.seq,
                        outcome.recovered
                    );
                    act.rooms.insert(room, addr);
                }
                Err(e) => {
                    log::warn!("conn={} join {room}: {e}", act.id);
                    act.send_error(&reply_to, e.code(), &e.to_string());
                }
            })
            // Hold further frames until the room is known, so a publish or leave sent right
            // after the join finds it.
            .wait(ctx);
    }

    /// Whether this session may join `room`, counting `also_joining` rooms not yet joined.
    pub(super) fn check_join(
        &self,
        room: &str,
        also_joining: usize,
    ) -> Result<(), (ErrorCode, String)> {
        if !frame::valid_room_name(room) {
            return Err((
                ErrorCode::BadRequest,
                format!("invalid room name `{}`", truncate(room, 64)),
            ));
        }
        let config = &self.state.config;
        let allowed = if self.is_automatic(room) {
            !self.identity.anonymous || config.room_policy(room).anonymous
        } else {
            self.binding.endpoint.allows_join(
                &self.identity,
                room,
                config,
                &self.state.tasks.owners,
            )
        };
        if !allowed {
            return Err((
                ErrorCode::Forbidden,
                format!("not allowed to join `{room}`"),
            ));
        }
        let max = self.state.config.limits.max_rooms_per_session;
        if !self.rooms.contains_key(room) && self.counted_rooms() + also_joining >= max {
            return Err((
                ErrorCode::BadRequest,
                format!("room limit reached: a session may be in {max} rooms"),
            ));
        }
        Ok(())
    }

    /// Rooms joined, the automatic ones (broadcast, personal) not counted.
    pub(super) fn counted_rooms(&self) -> usize {
        self.rooms.keys().filter(|r| !self.is_automatic(r)).count()
    }

    /// Whether `room` is one the session joins by itself (broadcast, personal).
    pub(super) fn is_automatic(&self, room: &str) -> bool {
        room == types::BROADCAST_ROOM || self.identity.personal_room().as_deref() == Some(room)
    }

    /// Asks the Registry to join `room`, replaying what `from` says; resolves with the
    /// room's address and outcome.
    pub(super) fn join_room(
        &self,
        room: String,
        reply_to: Option<ReplyTo>,
        from: JoinFrom,
    ) -> impl std::future::Future<Output = Result<(Addr<Room>, JoinOutcome), JoinError>> + 'static
    {
        let join = Join {
            connection_id: self.id.clone(),
            user: self.identity.user.clone(),
            out: self.out.clone(),
            reply_to,
            from,
            framing: self.framing(),
        };
        let sent = self.state.registry.send(JoinRoom { room, join });
        async move { sent.await? }
    }
}

impl Session {
    /// Joins the room the endpoint bound this connection to, if any.
    pub(super) fn join_bound_room(&mut self, ctx: &mut Context<Self>) {
        if let Some(room) = self.binding.room.clone() {
            self.join_endpoint_room(room, true, ctx);
        }
    }

    /// Joins `room` as the endpoint says (v1: `room.joined`; both framings: the endpoint's
    /// replay). A failure is reported to the client; when `essential` (the connection's own
    /// room, without which it has nothing to do) the connection is closed too — 1013 when
    /// the engine is unreachable, so the client retries, else 1008.
    pub(super) fn join_endpoint_room(
        &mut self,
        room: String,
        essential: bool,
        ctx: &mut Context<Self>,
    ) {
        if let Err((code, message)) = self.check_join(&room, 0) {
            return self.endpoint_join_failed(&room, code, &message, essential, ctx);
        }
        // v1 gets room.joined; a raw client's subscribe is confirmed by the room, ahead of
        // the replay; the raw client's own room needs no confirmation.
        let reply_to = match self.framing() {
            Framing::V1 => Some(ReplyTo::Native {
                correlation_id: None,
            }),
            Framing::Raw if essential => None,
            Framing::Raw => Some(ReplyTo::Raw),
            Framing::Asap => None,
        };
        let from = JoinFrom::Latest(self.binding.endpoint.config.replay);
        self.join_room(room.clone(), reply_to, from)
            .into_actor(self)
            .map(move |result, act, ctx| match result {
                Ok((addr, outcome)) => {
                    log::debug!("conn={} joined {room} at seq {}", act.id, outcome.seq);
                    act.rooms.insert(room, addr);
                }
                Err(e) => act.endpoint_join_failed(&room, e.code(), &e.to_string(), essential, ctx),
            })
            .wait(ctx);
    }

    fn endpoint_join_failed(
        &mut self,
        room: &str,
        code: ErrorCode,
        message: &str,
        essential: bool,
        ctx: &mut Context<Self>,
    ) {
        log::warn!("conn={} could not join {room}: {message}", self.id);
        let reply_to = self.default_reply();
        self.send_error(
            &reply_to,
            code,
            &format!("could not join `{room}`: {message}"),
        );
        if essential {
            let close_code = match code {
                ErrorCode::Unavailable => close::TRY_AGAIN_LATER,
                ErrorCode::Internal | ErrorCode::Timeout => close::INTERNAL,
                _ => close::POLICY,
            };
            self.close(
                ctx,
                close_code,
                &format!("could not join {room}: {message}"),
            );
        }
    }
}
