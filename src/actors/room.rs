//! Room actor: one per room. Owns the member list, the room's [`RoomLog`] (seq and history)
//! and, later, presence.
//!
//! Each published message is encoded once and the same bytes are queued to every member
//! with a non-blocking try: the Room never awaits a member's socket, and a member whose
//! queue is full is closed (4009) by its own queue while the others keep receiving.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use serde_json::json;
use serde_json::value::RawValue;

use super::registry::{Registry, RoomIdle};
use super::ConnectionId;
use crate::engine::{Engine, RoomLog};
use crate::protocol::frame::{self, ReplyTo};
use crate::protocol::types;
use crate::transport::{Outbound, SendError};

/// A room's actor.
pub struct Room {
    name: Arc<str>,
    members: HashMap<ConnectionId, Member>,
    log: Option<Box<dyn RoomLog>>,
    engine: Arc<dyn Engine>,
    registry: Addr<Registry>,
    joins_seen: u64,
}

struct Member {
    out: Outbound,
}

impl Room {
    /// A room whose log comes from `engine`; it reports idleness to `registry`.
    pub fn new(name: Arc<str>, engine: Arc<dyn Engine>, registry: Addr<Registry>) -> Room {
        let log = engine.open(&name);
        Room {
            name,
            members: HashMap::new(),
            log: Some(log),
            engine,
            registry,
            joins_seen: 0,
        }
    }

    fn log(&mut self) -> &mut dyn RoomLog {
        self.log
            .as_deref_mut()
            .expect("the log is only taken when the room stops")
    }

    fn report_if_idle(&self, ctx: &mut Context<Self>) {
        if self.members.is_empty() {
            self.registry.do_send(RoomIdle {
                room: self.name.clone(),
                addr: ctx.address(),
                joins_seen: self.joins_seen,
            });
        }
    }
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Members' publishes arrive with do_send; the per-session rate limit bounds them.
        ctx.set_mailbox_capacity(4096);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(log) = self.log.take() {
            self.engine.park(&self.name, log);
        }
    }
}

/// Adds a member; answers with `room.joined`, then replays history after `since_seq`.
///
/// Sent by the Registry, which counts joins so that it never retires a room a join is
/// still travelling to.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Join {
    /// The joining connection.
    pub connection_id: ConnectionId,
    /// Its outbound queue.
    pub out: Outbound,
    /// How to answer; `None` joins silently (the personal room).
    pub reply_to: Option<ReplyTo>,
    /// Replay messages after this seq.
    pub since_seq: Option<u64>,
}

impl Handler<Join> for Room {
    type Result = ();

    fn handle(&mut self, msg: Join, _: &mut Self::Context) {
        self.joins_seen += 1;
        let replay = msg.since_seq.map(|since| self.log().since(since));
        let seq = self.log().last_seq();
        if let Some(reply_to) = &msg.reply_to {
            let recovered = replay.as_ref().is_none_or(|r| r.recovered);
            let joined = frame::reply(
                reply_to,
                types::ROOM_JOINED,
                Some(&self.name),
                Some(seq),
                Some(json!({ "recovered": recovered })),
                |_| json!({ "room": &*self.name, "seq": seq, "recovered": recovered }),
            );
            if let Some(joined) = joined {
                let _ = msg.out.send(joined);
            }
        }
        if let Some(replay) = replay {
            for frame in replay.frames {
                if msg.out.send(frame).is_err() {
                    return;
                }
            }
        }
        self.members
            .insert(msg.connection_id, Member { out: msg.out });
    }
}

/// Removes a member; answers with `room.left` when `reply_to` is set.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    /// The leaving connection.
    pub connection_id: ConnectionId,
    /// How to answer; `None` when the session is going away.
    pub reply_to: Option<ReplyTo>,
}

impl Handler<Leave> for Room {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Self::Context) {
        let Some(member) = self.members.remove(&msg.connection_id) else {
            return;
        };
        if let Some(reply_to) = &msg.reply_to {
            let left = frame::reply(
                reply_to,
                types::ROOM_LEFT,
                Some(&self.name),
                None,
                None::<()>,
                |_| json!({ "room": &*self.name }),
            );
            if let Some(left) = left {
                let _ = member.out.send(left);
            }
        }
        self.report_if_idle(ctx);
    }
}

/// A member publishes: the room sequences, encodes once, fans out, and acks the publisher.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    /// The publishing connection (must be a member).
    pub connection_id: ConnectionId,
    /// Client message id; a fresh one is assigned when absent.
    pub id: Option<String>,
    /// The payload, forwarded verbatim.
    pub payload: Option<Box<RawValue>>,
    /// How to acknowledge.
    pub reply_to: ReplyTo,
}

impl Handler<Publish> for Room {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) {
        let Some(publisher) = self.members.get(&msg.connection_id).map(|m| m.out.clone()) else {
            // The session only publishes to rooms it joined and waits for its joins, so
            // this is a publish that raced its own leave: nothing to deliver or ack.
            log::debug!(
                "room {}: publish from non-member {}",
                self.name,
                msg.connection_id
            );
            return;
        };
        let id = msg.id.unwrap_or_else(frame::new_id);
        let name = self.name.clone();
        let payload = msg.payload;
        let (seq, encoded) = self
            .log()
            .append(&mut |seq| frame::room_message(&name, seq, &id, payload.as_deref()));
        let mut overflowed = Vec::new();
        for (conn, member) in &self.members {
            if let Err(SendError::Overflow) = member.out.send(encoded.clone()) {
                overflowed.push(conn.clone());
            }
        }
        for conn in overflowed {
            // The queue already aborted that socket with 4009; stop feeding it.
            self.members.remove(&conn);
        }
        let ack = frame::reply(
            &msg.reply_to,
            types::ACK,
            Some(&self.name),
            Some(seq),
            Some(json!({ "id": &id })),
            |_| json!({ "room": &*self.name, "seq": seq, "id": &id }),
        );
        if let Some(ack) = ack {
            let _ = publisher.send(ack);
        }
        if self.members.is_empty() {
            self.report_if_idle(ctx);
        }
    }
}

/// Stops the room; sent by the Registry once it has forgotten it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

impl Handler<Retire> for Room {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
