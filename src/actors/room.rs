//! Room actor: one per room on each node where the room is in use. Owns this node's member
//! list, presence, and the room's [`RoomLog`] (seq, history, recently seen client ids).
//!
//! Each published message is encoded once and the same bytes are queued to every member
//! with a non-blocking try: the Room never awaits a member's socket, and a member whose
//! queue is full is closed (4009) by its own queue and dropped here while the others keep
//! receiving.
//!
//! With a shared engine (Redis) the Room does not fan out what it publishes: the engine
//! carries every message of the room, from any node, back to each node's Room as a
//! [`RoomFeed`], in seq order. The Room subscribes while it has members, tracks the last
//! seq it delivered, and fills any gap from history before delivering further.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;
use serde_json::json;
use serde_json::value::RawValue;

use super::registry::{Registry, RoomIdle};
use super::ConnectionId;
use crate::bridge::{OutMessage, Outlets};
use crate::config::RoomPolicy;
use crate::endpoint::Framing;
use crate::engine::{
    Answer, Appended, DedupKey, Engine, EngineError, PresenceJoin, Replay, RoomFeed, RoomLog,
};
use crate::metrics::Metrics;
use crate::protocol::frame::{self, ReplyTo};
use crate::protocol::{types, ErrorCode};
use crate::transport::{Outbound, SendError};
use crate::webhooks::event::{self as webhook_event, WebhookEvent};
use crate::webhooks::{WebhookError, Webhooks};
use futures_util::future::LocalBoxFuture;

/// A room's actor.
pub struct Room {
    name: Arc<str>,
    policy: RoomPolicy,
    members: HashMap<ConnectionId, Member>,
    log: Option<Box<dyn RoomLog>>,
    engine: Arc<dyn Engine>,
    registry: Addr<Registry>,
    metrics: Arc<Metrics>,
    webhooks: Webhooks,
    joins_seen: u64,
    /// When the room, empty, may retire (pushed back by each message while empty).
    idle_deadline: Instant,
    /// Whether the one idle timer is running.
    idle_timer: bool,
    /// Where this node's deliveries come from.
    feed: Feed,
    /// The bridges that send this room's messages out (`[[bridge.redis]] publish_rooms`).
    outlets: Outlets,
}

/// How the room's messages reach this node's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// The engine is local: the Room fans out what it appends.
    Local,
    /// A shared engine, not subscribed (no members here).
    Unfed,
    /// A shared engine delivers the room's messages; `delivered` is the newest seq handed
    /// to members (the next one expected is `delivered + 1`).
    Fed { delivered: u64 },
}

struct Member {
    out: Outbound,
    user: Arc<str>,
    /// How the member's client reads frames: a raw member gets message payloads only.
    framing: Framing,
    /// Messages up to this seq reached the member another way (its join's replay).
    after: u64,
}

pub use crate::engine::PresenceInfo;

impl Room {
    /// A room whose log comes from `engine`; it reports idleness to `registry`.
    pub fn new(
        name: Arc<str>,
        policy: RoomPolicy,
        engine: Arc<dyn Engine>,
        registry: Addr<Registry>,
        metrics: Arc<Metrics>,
        webhooks: Webhooks,
    ) -> Room {
        let log = engine.open(&name, &policy);
        let feed = if log.is_shared() {
            Feed::Unfed
        } else {
            Feed::Local
        };
        Room {
            name,
            policy,
            members: HashMap::new(),
            log: Some(log),
            engine,
            registry,
            metrics,
            webhooks,
            joins_seen: 0,
            idle_deadline: Instant::now(),
            idle_timer: false,
            feed,
            outlets: Outlets::default(),
        }
    }

    /// Offers the room's new messages to the bridges of `outlets` that send them out.
    pub fn sending_out(mut self, outlets: Outlets) -> Room {
        self.outlets = outlets.for_room(&self.name);
        self
    }

    fn log(&mut self) -> &mut dyn RoomLog {
        self.log
            .as_deref_mut()
            .expect("the log is only taken when the room stops")
    }

    /// When the room has no members: asks the Registry to retire it, at once if it holds
    /// no messages, else once `history_ttl` has passed since the last activity with nobody
    /// joining (so replay and the sequence survive short gaps).
    ///
    /// One timer at most: a member-less room that keeps getting messages (HTTP publishes,
    /// the webhook-only case) moves the deadline instead of piling up timers, which actix
    /// would poll on every wake-up.
    fn report_if_idle(&mut self, ctx: &mut Context<Self>) {
        if !self.members.is_empty() {
            return;
        }
        if let Feed::Fed { .. } = self.feed {
            self.log().unfeed();
            self.feed = Feed::Unfed;
        }
        // A shared engine keeps the room's state without this actor.
        if self.feed == Feed::Unfed || self.log().last_seq() == 0 {
            self.report_idle(ctx);
            return;
        }
        self.idle_deadline = Instant::now() + self.policy.history_ttl;
        if !self.idle_timer {
            self.idle_timer = true;
            self.wait_idle(self.policy.history_ttl, ctx);
        }
    }

    fn wait_idle(&mut self, wait: Duration, ctx: &mut Context<Self>) {
        ctx.run_later(wait, |act, ctx| {
            act.idle_timer = false;
            if !act.members.is_empty() {
                return; // a join came; the last leave starts the wait again
            }
            let now = Instant::now();
            if act.idle_deadline > now {
                act.idle_timer = true;
                let rest = act.idle_deadline - now;
                act.wait_idle(rest, ctx);
            } else {
                act.report_idle(ctx);
            }
        });
    }

    /// A query may have started this room: let it retire again if it holds nothing here.
    fn retire_if_unused(&mut self, ctx: &mut Context<Self>) {
        if self.members.is_empty() && (self.feed == Feed::Unfed || self.log().last_seq() == 0) {
            self.report_if_idle(ctx);
        }
    }

    fn report_idle(&self, ctx: &mut Context<Self>) {
        self.registry.do_send(RoomIdle {
            room: self.name.clone(),
            addr: ctx.address(),
            joins_seen: self.joins_seen,
        });
    }

    /// Queues `frame` to every member except `except` (and, for a message, those whose join
    /// replay already had `seq`); members whose queue overflowed are dropped (their queue
    /// already closed them with 4009).
    ///
    /// Raw-framing members get a message's payload alone (cut out once per message, and
    /// only when such a member is here) and nothing that is not a message.
    fn broadcast(&mut self, frame: &ByteString, except: Option<&ConnectionId>, seq: Option<u64>) {
        let mut overflowed = Vec::new();
        let mut raw: Option<Option<ByteString>> = None;
        for (conn, member) in &self.members {
            if Some(conn) == except || seq.is_some_and(|seq| seq <= member.after) {
                continue;
            }
            let frame = match member.framing {
                Framing::V1 => frame,
                Framing::Raw if seq.is_none() => continue,
                Framing::Raw => match raw.get_or_insert_with(|| frame::payload_of(frame)) {
                    Some(payload) => &*payload,
                    None => continue,
                },
                // ASAP sessions join no rooms (their endpoints take no room template).
                Framing::Asap => continue,
            };
            if let Err(SendError::Overflow) = member.out.send(frame.clone()) {
                overflowed.push(conn.clone());
            }
        }
        for conn in overflowed {
            self.remove_member(&conn);
        }
    }

    /// Removes a member and updates presence (which may announce a `presence.leave`).
    fn remove_member(&mut self, conn: &ConnectionId) -> Option<Member> {
        let member = self.members.remove(conn)?;
        let count = self.members.len();
        self.log().members(count);
        if !self.policy.presence {
            return Some(member);
        }
        let departure = frame::push(
            types::PRESENCE_LEAVE,
            Some(&self.name),
            Some(json!({ "user": &*member.user })),
        );
        match self
            .log()
            .presence_remove(&member.user, conn, departure.clone())
        {
            Answer::Now(gone) => {
                if let Some(user) = gone {
                    self.presence_webhook(webhook_event::PRESENCE_LEAVE, &user);
                    if self.feed == Feed::Local {
                        self.broadcast(&departure, None, None);
                    }
                }
            }
            // The engine announces the departure to every node; the webhook is raised here,
            // by the one node that saw it.
            Answer::Later(removing) => {
                let webhooks = self.webhooks.clone();
                let room = self.name.clone();
                let conn = conn.clone();
                actix::spawn(async move {
                    match removing.await {
                        Ok(Some(user)) => {
                            presence_webhook(&webhooks, &room, webhook_event::PRESENCE_LEAVE, &user)
                        }
                        Ok(None) => {}
                        Err(err) => log::warn!(
                            "room {room}: presence of {conn} not removed: {err} (it expires)"
                        ),
                    }
                });
            }
        }
        Some(member)
    }

    /// Raises a presence webhook event if an endpoint wants it.
    fn presence_webhook(&self, event_type: &'static str, user: &str) {
        presence_webhook(&self.webhooks, &self.name, event_type, user);
    }

    /// The presence step of a join: nothing when presence is off; the list for a member
    /// joining again; otherwise the engine records the connection (announcing a new user).
    fn presence_step(
        &mut self,
        user: &str,
        conn: &str,
        rejoin: bool,
    ) -> Option<Answer<PresenceJoin>> {
        if !self.policy.presence {
            return None;
        }
        if rejoin {
            return Some(match self.log().presence() {
                Answer::Now(present) => Answer::Now(PresenceJoin {
                    first: false,
                    present,
                }),
                Answer::Later(reading) => Answer::Later(Box::pin(async move {
                    Ok(PresenceJoin {
                        first: false,
                        present: reading.await?,
                    })
                })),
            });
        }
        let arrival = frame::push(
            types::PRESENCE_JOIN,
            Some(&self.name),
            Some(json!({ "user": user })),
        );
        Some(self.log().presence_add(user, conn, arrival))
    }

    /// Marks this node's members present again and announces users whose presence expired
    /// (their node stopped refreshing: it died).
    fn refresh_presence(&mut self, ctx: &mut Context<Self>) {
        if self.members.is_empty() {
            return;
        }
        let connections = self.members.keys().map(|c| c.to_string()).collect();
        let Answer::Later(refreshing) = self.log().presence_refresh(connections) else {
            return;
        };
        ctx.spawn(
            refreshing
                .into_actor(self)
                .map(|departed, act, _| match departed {
                    Ok(users) => {
                        for user in users {
                            act.presence_webhook(webhook_event::PRESENCE_LEAVE, &user);
                            let departure = frame::push(
                                types::PRESENCE_LEAVE,
                                Some(&act.name),
                                Some(json!({ "user": user })),
                            );
                            act.log().announce(departure);
                        }
                    }
                    Err(err) => log::warn!("room {}: presence not refreshed: {err}", act.name),
                }),
        );
    }
}

/// Raises a presence webhook event if an endpoint wants it.
fn presence_webhook(webhooks: &Webhooks, room: &Arc<str>, event_type: &'static str, user: &str) {
    webhooks.notify_if_wanted(event_type, Some(room), || {
        WebhookEvent::presence(event_type, room, user)
    });
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Members' publishes arrive with do_send; the per-session rate limit bounds them.
        ctx.set_mailbox_capacity(4096);
        let ttl = self.log().presence_ttl();
        if let (true, Some(ttl)) = (self.policy.presence, ttl) {
            ctx.run_interval(ttl / 3, |act, ctx| act.refresh_presence(ctx));
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(log) = self.log.take() {
            self.engine.park(&self.name, log, self.policy.history_ttl);
        }
    }
}

/// What a join found: the room's seq and whether the requested gap was replayed whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinOutcome {
    /// The room's latest seq when the join was processed.
    pub seq: u64,
    /// False when part of the gap after `since_seq` had left history.
    pub recovered: bool,
}

/// Adds a member; answers with `room.joined`, then replays history after `since_seq`.
///
/// Sent by the Registry, which counts joins so that it never retires a room a join is
/// still travelling to.
#[derive(Message)]
#[rtype(result = "Result<JoinOutcome, EngineError>")]
pub struct Join {
    /// The joining connection.
    pub connection_id: ConnectionId,
    /// Its user (for presence).
    pub user: Arc<str>,
    /// Its outbound queue.
    pub out: Outbound,
    /// How to answer; `None` joins silently (the personal room).
    pub reply_to: Option<ReplyTo>,
    /// What the member already has, and so what it is replayed.
    pub from: JoinFrom,
    /// How the member's client reads frames.
    pub framing: Framing,
}

/// Where a joining member's copy of the room starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinFrom {
    /// Nothing is replayed; live messages from now on.
    Now,
    /// The member has messages up to this seq: what follows is replayed.
    After(u64),
    /// The room's latest messages, at most this many, are replayed (an endpoint's
    /// `replay`).
    Latest(usize),
    /// The member's position is unknown (a resumed room the client did not list): nothing
    /// is replayed and `recovered` is false.
    Unknown,
}

impl JoinFrom {
    /// The seq the replay starts after, when the room's newest is `latest`; `None` when
    /// nothing is replayed.
    fn replay_after(self, latest: u64) -> Option<u64> {
        match self {
            JoinFrom::After(seq) => Some(seq),
            JoinFrom::Latest(n) if n > 0 => Some(latest.saturating_sub(n as u64)),
            JoinFrom::Latest(_) | JoinFrom::Now | JoinFrom::Unknown => None,
        }
    }
}

impl Handler<Join> for Room {
    type Result = ActorResponse<Self, Result<JoinOutcome, EngineError>>;

    fn handle(&mut self, msg: Join, ctx: &mut Self::Context) -> Self::Result {
        self.joins_seen += 1;
        let from = msg.from;
        match self.feed {
            Feed::Local => {
                let seq = self.log().last_seq();
                let replay = from.replay_after(seq).map(|since| self.local_replay(since));
                let rejoin = self.members.contains_key(&msg.connection_id);
                let presence = match self.presence_step(&msg.user, &msg.connection_id, rejoin) {
                    None => None,
                    Some(Answer::Now(presence)) => Some(presence),
                    Some(Answer::Later(_)) => unreachable!("a local engine answers at once"),
                };
                ActorResponse::reply(Ok(self.admit(msg, replay, seq, presence)))
            }
            _ => {
                // The engine has to answer first (subscribe, read the gap, record presence).
                // Nothing else is handled meanwhile, so no feed message slips between that
                // answer and the member's arrival.
                let (tx, rx) = tokio::sync::oneshot::channel();
                let rejoin = self.members.contains_key(&msg.connection_id);
                let (user, conn) = (msg.user.clone(), msg.connection_id.clone());
                let engine_work = self
                    .subscribe_and_read(from, ctx.address().recipient())
                    .then(move |read, act, _| {
                        let presence = act.presence_step(&user, &conn, rejoin);
                        async move {
                            let read = read?;
                            let presence = match presence {
                                None => None,
                                Some(Answer::Now(presence)) => Some(presence),
                                Some(Answer::Later(adding)) => Some(adding.await?),
                            };
                            Ok((read, presence))
                        }
                        .into_actor(act)
                    });
                ctx.wait(engine_work.map(move |read, act, ctx| {
                    let outcome =
                        read.map(|((replay, seq), presence)| act.admit(msg, replay, seq, presence));
                    if outcome.is_err() {
                        act.report_if_idle(ctx);
                    }
                    let _ = tx.send(outcome);
                }));
                ActorResponse::r#async(rx.into_actor(self).map(|answer, _, _| {
                    answer.unwrap_or_else(|_| {
                        Err(EngineError::Unavailable("the room stopped".into()))
                    })
                }))
            }
        }
    }
}

impl Room {
    fn local_replay(&mut self, since: u64) -> Replay {
        match self.log().since(since) {
            Answer::Now(replay) => replay,
            Answer::Later(_) => unreachable!("a local engine answers at once"),
        }
    }

    /// Subscribes to the engine's feed if not yet, then reads the replay `from` asks for:
    /// the replay (if any) and the seq the member joins at.
    fn subscribe_and_read(
        &mut self,
        from: JoinFrom,
        to: Recipient<RoomFeed>,
    ) -> impl ActorFuture<Self, Output = Result<(Option<Replay>, u64), EngineError>> + 'static {
        let subscribe = match self.feed {
            Feed::Unfed => self.log().feed(to),
            _ => None,
        };
        let subscribed = async move {
            match subscribe {
                Some(Answer::Now(seq)) => Ok(Some(seq)),
                Some(Answer::Later(fut)) => fut.await.map(Some),
                None => Ok(None),
            }
        };
        subscribed.into_actor(self).then(move |subscribed, act, _| {
            if let Ok(Some(seq)) = subscribed {
                act.feed = Feed::Fed { delivered: seq };
            }
            let delivered = match act.feed {
                Feed::Fed { delivered } => delivered,
                _ => act.log().last_seq(),
            };
            let read = subscribed.map(|_| {
                from.replay_after(delivered)
                    .map(|since| act.log().since(since))
            });
            async move {
                match read? {
                    None => Ok((None, delivered)),
                    Some(Answer::Now(replay)) => {
                        let seq = replay.last_seq;
                        Ok((Some(replay), seq))
                    }
                    Some(Answer::Later(fut)) => {
                        let replay = fut.await?;
                        let seq = replay.last_seq;
                        Ok((Some(replay), seq))
                    }
                }
            }
            .into_actor(act)
        })
    }

    /// Adds a member that joins at `seq` (having had `replay`, and with `presence` recorded),
    /// answers `room.joined`, replays, and announces a new user's presence.
    fn admit(
        &mut self,
        msg: Join,
        replay: Option<Replay>,
        seq: u64,
        presence: Option<PresenceJoin>,
    ) -> JoinOutcome {
        let recovered =
            msg.from != JoinFrom::Unknown && replay.as_ref().is_none_or(|r| r.recovered);
        let new_user = presence.as_ref().is_some_and(|p| p.first);
        if msg.reply_to == Some(ReplyTo::Raw) {
            // A raw client's subscribe: confirmed before the replay it brings.
            let _ = msg.out.send(frame::raw_event("subscribed", &self.name));
        } else if let Some(reply_to) = &msg.reply_to {
            let mut payload = json!({ "recovered": recovered });
            if let Some(presence) = &presence {
                payload["presence"] = json!(presence.present);
            }
            let joined = frame::reply(
                reply_to,
                types::ROOM_JOINED,
                Some(&self.name),
                Some(seq),
                Some(payload),
                |p| {
                    let mut result = p.unwrap_or_default();
                    result["room"] = json!(&*self.name);
                    result["seq"] = json!(seq);
                    result
                },
            );
            if let Some(joined) = joined {
                let _ = msg.out.send(joined);
            }
        }
        if let Some(replay) = replay {
            self.metrics.replayed.inc_by(replay.frames.len() as u64);
            for (_, frame) in replay.frames {
                let frame = match msg.framing {
                    Framing::V1 => frame,
                    Framing::Raw => match frame::payload_of(&frame) {
                        Some(payload) => payload,
                        None => continue,
                    },
                    Framing::Asap => break,
                };
                if msg.out.send_replay(frame).is_err() {
                    break;
                }
            }
        }
        if new_user {
            self.presence_webhook(webhook_event::PRESENCE_JOIN, &msg.user);
            // A shared engine announced the arrival to every node already.
            if self.feed == Feed::Local {
                let event = frame::push(
                    types::PRESENCE_JOIN,
                    Some(&self.name),
                    Some(json!({ "user": &*msg.user })),
                );
                self.broadcast(&event, Some(&msg.connection_id), None);
            }
        }
        // With a shared engine, messages up to `seq` may still be on their way through the
        // feed; the member has them (replay) or joined after them.
        let after = if self.feed == Feed::Local { 0 } else { seq };
        self.members.insert(
            msg.connection_id,
            Member {
                out: msg.out,
                user: msg.user,
                framing: msg.framing,
                after,
            },
        );
        let count = self.members.len();
        self.log().members(count);
        JoinOutcome { seq, recovered }
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
        let Some(member) = self.remove_member(&msg.connection_id) else {
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

/// Who publishes: a member session (acked on its socket), the server (HTTP API) or a
/// bridge.
#[derive(Clone)]
pub enum Publisher {
    /// A member; the ack goes to its queue.
    Member {
        /// The publishing connection (must be a member).
        connection_id: ConnectionId,
        /// How to acknowledge.
        reply_to: ReplyTo,
    },
    /// The broker's own API on behalf of `caller` (as the audit log names it, e.g.
    /// `key#0`); the outcome is the message's result.
    Server {
        /// The API caller; message ids are deduplicated per caller.
        caller: Arc<str>,
    },
    /// A bridge carrying a message in (`bridge:<name>`): like `Server`, and the message
    /// never goes out through a bridge again.
    Bridge {
        /// `bridge:<name>`.
        caller: Arc<str>,
    },
}

/// A published message's place in the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its seq.
    pub seq: u64,
    /// Its message id.
    pub id: String,
    /// Whether the id had been seen before (nothing was delivered this time).
    pub duplicate: bool,
    /// Set when webhook endpoints wanted the message but the outbox could not store it:
    /// members got it, webhook receivers will not.
    pub webhook_error: Option<String>,
}

/// Publishes a message: sequenced, encoded once, fanned out, acknowledged. A client `id`
/// already seen in this room is acknowledged with the original seq and not delivered again.
///
/// When a webhook endpoint wants the message, the acknowledgement (the ack frame, or the
/// answer for the HTTP API) waits until the outbox has committed it; members get the message
/// at once, and the room goes on with the next message meanwhile.
#[derive(Message)]
#[rtype(result = "Result<Option<Published>, EngineError>")]
pub struct Publish {
    /// Who publishes.
    pub from: Publisher,
    /// Client message id; a fresh one is assigned when absent.
    pub id: Option<String>,
    /// Message type; `room.message` when absent (server publishes may choose another).
    pub msg_type: Option<String>,
    /// The payload, forwarded verbatim.
    pub payload: Option<Box<RawValue>>,
}

impl Handler<Publish> for Room {
    type Result = Response<Result<Option<Published>, EngineError>>;

    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) -> Self::Result {
        let ack_to = match &msg.from {
            Publisher::Member {
                connection_id,
                reply_to,
            } => match self.members.get(connection_id) {
                Some(m) => Some(AckTo {
                    out: m.out.clone(),
                    reply_to: reply_to.clone(),
                    user: m.user.clone(),
                }),
                None => {
                    // The session only publishes to rooms it joined and waits for its joins,
                    // so this publish raced its own leave: nothing to deliver or ack.
                    log::debug!(
                        "room {}: publish from non-member {connection_id}",
                        self.name
                    );
                    return Response::reply(Ok(None));
                }
            },
            Publisher::Server { .. } | Publisher::Bridge { .. } => None,
        };
        let outlets = (!matches!(msg.from, Publisher::Bridge { .. }) && !self.outlets.is_empty())
            .then(|| self.outlets.clone());
        let client_id = msg.id.clone();
        let accepted = Accepted {
            room: self.name.clone(),
            id: msg.id.unwrap_or_else(frame::new_id),
            msg_type: msg
                .msg_type
                .unwrap_or_else(|| types::ROOM_MESSAGE.to_owned()),
            payload: msg.payload,
            user: ack_to.as_ref().map(|a| a.user.clone()),
            webhooks: self.webhooks.clone(),
            metrics: self.metrics.clone(),
            outlets,
        };
        let dedup = client_id.as_deref().map(|id| match &msg.from {
            Publisher::Server { caller } | Publisher::Bridge { caller } => DedupKey {
                server: true,
                publisher: caller,
                id,
            },
            Publisher::Member { .. } => DedupKey {
                server: false,
                publisher: accepted.user.as_deref().unwrap_or(""),
                id,
            },
        });
        let appended = {
            let Accepted {
                room,
                id,
                msg_type,
                payload,
                ..
            } = &accepted;
            self.log().append(dedup, &mut |seq| {
                frame::room_message(msg_type, room, seq, id, payload.as_deref())
            })
        };
        match appended {
            Answer::Now(appended) => {
                if let Appended::New { seq, frame } = &appended {
                    self.deliver(*seq, frame);
                }
                // Raised here, inside the handler, so a room's webhook events are queued in
                // seq order.
                let stored = accepted.recorded(&appended);
                accepted.send_out(&appended);
                if self.members.is_empty() {
                    self.report_if_idle(ctx);
                }
                match accepted.acknowledge(appended, stored, ack_to) {
                    Settled::Now(answer) => Response::reply(answer),
                    Settled::Later(answer) => Response::fut(answer),
                }
            }
            Answer::Later(appending) => {
                if self.members.is_empty() {
                    self.report_if_idle(ctx);
                }
                Response::fut(async move {
                    match appending.await {
                        Ok(appended) => {
                            let stored = accepted.recorded(&appended);
                            accepted.send_out(&appended);
                            match accepted.acknowledge(appended, stored, ack_to) {
                                Settled::Now(answer) => answer,
                                Settled::Later(answer) => answer.await,
                            }
                        }
                        Err(err) => {
                            log::warn!("room {}: publish refused: {err}", accepted.room);
                            if let Some(ack) = ack_to {
                                let _ = ack.out.send(frame::error(
                                    &ack.reply_to,
                                    ErrorCode::Unavailable,
                                    &format!("not published: {err}; retry with the same id"),
                                ));
                            }
                            Err(err)
                        }
                    }
                })
            }
        }
    }
}

/// Where a member's publish is acknowledged.
struct AckTo {
    out: Outbound,
    reply_to: ReplyTo,
    user: Arc<str>,
}

/// A message the room accepted, between its append and its acknowledgement.
struct Accepted {
    room: Arc<str>,
    id: String,
    msg_type: String,
    payload: Option<Box<RawValue>>,
    user: Option<Arc<str>>,
    webhooks: Webhooks,
    metrics: Arc<Metrics>,
    /// The bridges that take this message out; `None` when none does (or it came in
    /// through one).
    outlets: Option<Outlets>,
}

type WebhookCommit = LocalBoxFuture<'static, Result<usize, WebhookError>>;

impl Accepted {
    /// Counts a new message and hands it to the webhook outbox if an endpoint wants it;
    /// the outbox's commit, to wait for before acknowledging.
    fn recorded(&self, appended: &Appended) -> Option<WebhookCommit> {
        let seq = match appended {
            Appended::New { seq, .. } | Appended::Forwarded { seq } => *seq,
            Appended::Duplicate { .. } => return None,
        };
        if let Ok(c) = self
            .metrics
            .messages_published
            .get_metric_with_label_values(&[&self.msg_type])
        {
            c.inc();
        }
        if !self
            .webhooks
            .wants(webhook_event::ROOM_MESSAGE, Some(&self.room))
        {
            return None;
        }
        let event = WebhookEvent::room_message(
            &self.room,
            seq,
            &self.id,
            &self.msg_type,
            self.payload.as_deref(),
            self.user.as_deref(),
        );
        Some(Box::pin(self.webhooks.emit(event)))
    }

    /// Hands a new message to the bridges that send it out. Called where the message is
    /// appended, so with a shared engine only the broker that took the publish sends it.
    fn send_out(&self, appended: &Appended) {
        let (Some(outlets), Appended::New { seq, .. } | Appended::Forwarded { seq }) =
            (&self.outlets, appended)
        else {
            return;
        };
        let message = || OutMessage {
            room: self.room.clone(),
            seq: *seq,
            id: self.id.clone(),
            user: self.user.clone(),
            payload: self.payload.clone(),
        };
        outlets.offer(message);
    }

    /// Acknowledges — the ack frame to a member, the [`Published`] answer to everyone — at
    /// once, or once the webhook outbox has committed the message when it was involved.
    fn acknowledge(
        self,
        appended: Appended,
        webhook: Option<WebhookCommit>,
        ack_to: Option<AckTo>,
    ) -> Settled {
        let (seq, duplicate) = match appended {
            Appended::New { seq, .. } | Appended::Forwarded { seq } => (seq, false),
            Appended::Duplicate { seq } => (seq, true),
        };
        let mut published = Published {
            seq,
            id: self.id,
            duplicate,
            webhook_error: None,
        };
        let room = self.room;
        let ack = ack_to.and_then(|ack_to| {
            let mut payload = json!({ "id": &published.id });
            if duplicate {
                payload["duplicate"] = json!(true);
            }
            frame::reply(
                &ack_to.reply_to,
                types::ACK,
                Some(&room),
                Some(seq),
                Some(payload),
                |p| {
                    let mut result = p.unwrap_or_default();
                    result["room"] = json!(&*room);
                    result["seq"] = json!(seq);
                    result
                },
            )
            .map(|frame| (ack_to, frame))
        });
        let Some(webhook) = webhook else {
            if let Some((ack_to, frame)) = ack {
                let _ = ack_to.out.send(frame);
            }
            return Settled::Now(Ok(Some(published)));
        };
        Settled::Later(Box::pin(async move {
            let mut ack = ack;
            if let Err(err) = webhook.await {
                log::error!(
                    "room {room}: message {} (seq {seq}) was delivered to members but not stored for webhooks: {err}",
                    published.id
                );
                if let Some((ack_to, frame)) = &mut ack {
                    *frame = frame::error(
                        &ack_to.reply_to,
                        ErrorCode::Internal,
                        &format!("seq {seq} reached the room but not the webhook outbox: {err}"),
                    );
                }
                published.webhook_error = Some(err.to_string());
            }
            if let Some((ack_to, frame)) = ack {
                let _ = ack_to.out.send(frame);
            }
            Ok(Some(published))
        }))
    }
}

/// A publish's answer, now or once the webhook outbox has answered.
enum Settled {
    Now(Result<Option<Published>, EngineError>),
    Later(LocalBoxFuture<'static, Result<Option<Published>, EngineError>>),
}

impl Room {
    /// Hands message `seq` to every member that does not have it yet.
    fn deliver(&mut self, seq: u64, frame: &ByteString) {
        self.broadcast(frame, None, Some(seq));
        self.metrics.deliveries.inc_by(self.members.len() as u64);
        if let Feed::Fed { delivered } = &mut self.feed {
            *delivered = seq;
        }
    }

    /// Reads everything after the last delivered seq and delivers it (then `pending`, if
    /// history did not already hold it). Nothing else is handled meanwhile, so delivery
    /// stays in seq order.
    fn fill_gap(&mut self, pending: Option<(u64, ByteString)>, ctx: &mut Context<Self>) {
        let Feed::Fed { delivered } = self.feed else {
            return;
        };
        match self.log().since(delivered) {
            Answer::Now(replay) => self.delivered_gap(delivered, Ok(replay), pending, ctx),
            Answer::Later(reading) => {
                ctx.wait(reading.into_actor(self).map(move |replay, act, ctx| {
                    act.delivered_gap(delivered, replay, pending, ctx)
                }));
            }
        }
    }

    fn delivered_gap(
        &mut self,
        from: u64,
        replay: Result<Replay, EngineError>,
        pending: Option<(u64, ByteString)>,
        ctx: &mut Context<Self>,
    ) {
        match replay {
            Ok(replay) if replay.last_seq < from => self.start_feed_over(ctx),
            Ok(replay) => {
                if !replay.recovered {
                    self.metrics.feed_gaps_lost.inc();
                    log::warn!(
                        "room {}: messages after seq {from} left history before this node could deliver them",
                        self.name
                    );
                }
                for (seq, frame) in replay.frames.into_iter().chain(pending) {
                    if matches!(self.feed, Feed::Fed { delivered } if seq > delivered) {
                        self.deliver(seq, &frame);
                    }
                }
            }
            // Delivery resumes with the next message or the engine's Resync.
            Err(err) => log::warn!(
                "room {}: cannot read the messages after seq {from}: {err}",
                self.name
            ),
        }
    }
}

impl Room {
    /// The engine's store lost the room (Redis restarted without persistence, or the
    /// room's keys were evicted): its seq started over. Deliver from its new beginning.
    fn start_feed_over(&mut self, ctx: &mut Context<Self>) {
        self.metrics.feed_gaps_lost.inc();
        log::warn!(
            "room {}: the engine's store lost the room (its seq started over); members get its messages from seq 1",
            self.name
        );
        self.feed = Feed::Fed { delivered: 0 };
        for member in self.members.values_mut() {
            member.after = 0;
        }
        self.fill_gap(None, ctx);
    }
}

impl Handler<RoomFeed> for Room {
    type Result = ();

    fn handle(&mut self, msg: RoomFeed, ctx: &mut Self::Context) {
        let Feed::Fed { delivered } = self.feed else {
            return; // unsubscribed while this was on its way
        };
        match msg {
            // Only a room that started over publishes seq 1 again.
            RoomFeed::Message { seq: 1, .. } if delivered > 1 => self.start_feed_over(ctx),
            RoomFeed::Message { seq, .. } if seq <= delivered => {}
            RoomFeed::Message { seq, frame } if seq == delivered + 1 => self.deliver(seq, &frame),
            RoomFeed::Message { seq, frame } => self.fill_gap(Some((seq, frame)), ctx),
            RoomFeed::Resync => self.fill_gap(None, ctx),
            RoomFeed::Event { except, frame } => {
                let except: Option<ConnectionId> = except.map(Into::into);
                self.broadcast(&frame, except.as_ref(), None);
            }
        }
    }
}

/// The room's current presence (empty when presence is off for its namespace).
#[derive(Message)]
#[rtype(result = "Result<Vec<PresenceInfo>, EngineError>")]
pub struct GetPresence;

impl Handler<GetPresence> for Room {
    type Result = Response<Result<Vec<PresenceInfo>, EngineError>>;

    fn handle(&mut self, _: GetPresence, ctx: &mut Self::Context) -> Self::Result {
        let reading = self.log().presence();
        self.retire_if_unused(ctx);
        match reading {
            Answer::Now(present) => Response::reply(Ok(present)),
            Answer::Later(reading) => Response::fut(reading),
        }
    }
}

/// Stored messages after `since`, at most `limit`, for the HTTP history API.
#[derive(Message)]
#[rtype(result = "Result<History, EngineError>")]
pub struct GetHistory {
    /// Messages with a seq above this.
    pub since: u64,
    /// At most this many (the oldest first).
    pub limit: usize,
}

/// A slice of a room's history.
#[derive(Debug, Clone)]
pub struct History {
    /// The room's latest seq.
    pub seq: u64,
    /// False when part of the range after `since` has left history.
    pub recovered: bool,
    /// Encoded messages, oldest first (the bytes members received).
    pub messages: Vec<ByteString>,
}

impl Handler<GetHistory> for Room {
    type Result = Response<Result<History, EngineError>>;

    fn handle(&mut self, msg: GetHistory, ctx: &mut Self::Context) -> Self::Result {
        let shape = move |replay: Replay| {
            let mut messages: Vec<ByteString> = replay.frames.into_iter().map(|(_, f)| f).collect();
            messages.truncate(msg.limit);
            History {
                seq: replay.last_seq,
                recovered: replay.recovered,
                messages,
            }
        };
        let reading = self.log().since(msg.since);
        self.retire_if_unused(ctx);
        match reading {
            Answer::Now(replay) => Response::reply(Ok(shape(replay))),
            Answer::Later(reading) => Response::fut(async move { reading.await.map(shape) }),
        }
    }
}

pub use crate::engine::RoomInfo;

/// Asks for [`RoomInfo`].
#[derive(Message)]
#[rtype(result = "RoomInfo")]
pub struct GetInfo;

impl Handler<GetInfo> for Room {
    type Result = MessageResult<GetInfo>;

    fn handle(&mut self, _: GetInfo, _: &mut Self::Context) -> Self::Result {
        MessageResult(RoomInfo {
            room: self.name.to_string(),
            members: self.members.len(),
            seq: match self.feed {
                Feed::Fed { delivered } => delivered,
                _ => self.log().last_seq(),
            },
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::registry::JoinRoom;
    use crate::actors::testing::{member, registry, types};
    use crate::config::{Config, NamespaceConfig};
    use crate::transport::outbound::OutboundReceiver;

    fn native(id: &str) -> Option<ReplyTo> {
        Some(ReplyTo::Native {
            correlation_id: Some(id.into()),
        })
    }

    /// Joins `conn` (of `user`) to `room` through the Registry; the room and its answer.
    async fn join(
        registry: &Addr<Registry>,
        room: &str,
        user: &str,
        conn: &str,
        since_seq: Option<u64>,
    ) -> (Addr<Room>, JoinOutcome, ConnectionId, OutboundReceiver) {
        let (id, out, rx) = member(conn);
        let join = Join {
            connection_id: id.clone(),
            user: user.into(),
            out,
            reply_to: native("j"),
            from: since_seq.map_or(JoinFrom::Now, JoinFrom::After),
            framing: crate::endpoint::Framing::V1,
        };
        let (addr, outcome) = registry
            .send(JoinRoom {
                room: room.into(),
                join,
            })
            .await
            .expect("registry")
            .expect("joined");
        (addr, outcome, id, rx)
    }

    fn publish_as(conn: &ConnectionId, id: &str, n: u64) -> Publish {
        Publish {
            from: Publisher::Member {
                connection_id: conn.clone(),
                reply_to: ReplyTo::Native {
                    correlation_id: Some(id.into()),
                },
            },
            id: Some(id.into()),
            msg_type: None,
            payload: Some(RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap()),
        }
    }

    #[actix_rt::test]
    async fn a_publish_is_sequenced_fanned_out_and_acked_and_ids_repeat_per_publisher() {
        let (registry, _, _) = registry(Config::default());
        let (room, _, alice, mut alice_rx) = join(&registry, "r", "alice", "a1", None).await;
        let (_, _, bob, mut bob_rx) = join(&registry, "r", "bob", "b1", None).await;
        alice_rx.drain();
        bob_rx.drain();

        let first = room
            .send(publish_as(&alice, "m1", 1))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((first.seq, first.duplicate), (1, false));
        let (frames, _) = alice_rx.drain();
        assert_eq!(types(&frames), ["room.message", "ack"]);
        assert_eq!(
            (frames[0]["seq"].as_u64(), frames[1]["seq"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(frames[1]["correlation_id"], "m1");
        assert_eq!(types(&bob_rx.drain().0), ["room.message"]);

        // The same id from the same user is a retry: acked with the original seq, not sent.
        let again = room
            .send(publish_as(&alice, "m1", 1))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((again.seq, again.duplicate), (1, true));
        let (frames, _) = alice_rx.drain();
        assert_eq!(types(&frames), ["ack"]);
        assert_eq!(frames[0]["payload"]["duplicate"], true);
        assert!(bob_rx.drain().0.is_empty());

        // The same id from another user is another message.
        let bobs = room
            .send(publish_as(&bob, "m1", 2))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((bobs.seq, bobs.duplicate), (2, false));
        assert_eq!(types(&alice_rx.drain().0), ["room.message"]);
    }

    #[actix_rt::test]
    async fn a_join_with_since_seq_gets_room_joined_then_the_gap_in_order() {
        let (registry, _, _) = registry(Config::default());
        let room = registry
            .send(crate::actors::registry::RoomFor { room: "r".into() })
            .await
            .unwrap()
            .unwrap();
        for n in 1..=3 {
            let publish = Publish {
                from: Publisher::Server {
                    caller: "key#0".into(),
                },
                id: None,
                msg_type: None,
                payload: Some(RawValue::from_string(n.to_string()).unwrap()),
            };
            room.send(publish).await.unwrap().unwrap();
        }
        let (_, outcome, _, mut rx) = join(&registry, "r", "carol", "c1", Some(1)).await;
        assert_eq!(
            outcome,
            JoinOutcome {
                seq: 3,
                recovered: true
            }
        );
        let (frames, _) = rx.drain();
        assert_eq!(
            types(&frames),
            ["room.joined", "room.message", "room.message"]
        );
        let seqs: Vec<_> = frames.iter().map(|f| f["seq"].as_u64()).collect();
        assert_eq!(seqs, [Some(3), Some(2), Some(3)]);
        assert_eq!(frames[0]["payload"]["recovered"], true);
    }

    #[actix_rt::test]
    async fn presence_is_announced_to_the_others_once_per_user() {
        let mut config = Config::default();
        config.namespaces.insert(
            "conv".into(),
            NamespaceConfig {
                presence: true,
                ..NamespaceConfig::default()
            },
        );
        let (registry, _, _) = registry(config);
        let (room, _, _, mut a1) = join(&registry, "conv:1", "alice", "a1", None).await;
        let (_, _, _, mut a2) = join(&registry, "conv:1", "alice", "a2", None).await;
        // alice's second connection is not news to her first.
        assert_eq!(types(&a1.drain().0), ["room.joined"]);
        let (_, _, bob, mut b1) = join(&registry, "conv:1", "bob", "b1", None).await;
        let (joined, _) = b1.drain();
        assert_eq!(
            joined[0]["payload"]["presence"],
            serde_json::json!([
                {"user": "alice", "connections": 2, "joined_at": joined[0]["payload"]["presence"][0]["joined_at"]},
                {"user": "bob", "connections": 1, "joined_at": joined[0]["payload"]["presence"][1]["joined_at"]},
            ])
        );
        for rx in [&mut a1, &mut a2] {
            let (frames, _) = rx.drain();
            let last = frames.last().expect("a presence event");
            assert_eq!(
                (last["type"].as_str(), last["payload"]["user"].as_str()),
                (Some("presence.join"), Some("bob"))
            );
        }
        room.send(Leave {
            connection_id: bob,
            reply_to: None,
        })
        .await
        .unwrap();
        let (frames, _) = a1.drain();
        assert_eq!(types(&frames), ["presence.leave"]);
    }

    #[actix_rt::test]
    async fn a_member_whose_queue_overflows_is_dropped_and_the_others_keep_receiving() {
        let (registry, _, metrics) = registry(Config::default());
        let (room, _, publisher, mut p_rx) = join(&registry, "r", "p", "p1", None).await;
        let (slow_id, slow_out, mut slow_rx) = {
            let (out, rx) = crate::transport::Outbound::bounded(
                "slow".into(),
                2,
                1 << 20,
                (0, 0),
                Some(metrics.slow_consumer_closes.clone()),
            );
            (ConnectionId::from("slow"), out, rx)
        };
        room.send(Join {
            connection_id: slow_id,
            user: "s".into(),
            out: slow_out,
            reply_to: None,
            from: JoinFrom::Now,
            framing: crate::endpoint::Framing::V1,
        })
        .await
        .unwrap()
        .unwrap();
        p_rx.drain();
        for n in 1..=5 {
            room.send(publish_as(&publisher, &format!("m{n}"), n))
                .await
                .unwrap()
                .unwrap();
        }
        let (frames, _) = p_rx.drain();
        assert_eq!(
            types(&frames)
                .iter()
                .filter(|t| **t == "room.message")
                .count(),
            5
        );
        let (got, closed) = slow_rx.drain();
        assert!(closed, "the slow member's queue was closed");
        assert_eq!(got.len(), 2);
        assert_eq!(metrics.slow_consumer_closes.get(), 1);
        let info = room.send(GetInfo).await.unwrap();
        assert_eq!(info.members, 1, "the slow member was dropped");
    }
}
