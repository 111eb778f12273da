//! Session actor: one per WebSocket connection.
//!
//! Owns the inbound side of the socket (actix-ws frames fed in with `ctx.add_stream`), the
//! session's limits (frame size, rate, room count) and the sending half of its bounded
//! outbound queue; a separate writer task drains that queue into the socket. Room traffic
//! goes straight to the Room actors whose addresses the session keeps; application types go
//! through the Router's route table snapshot. The session never blocks on anyone: handler
//! calls run as spawned futures, and everything it sends is a non-blocking queue push.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_ws::{Message as WsMessage, MessageStream, ProtocolError};
use bytestring::ByteString;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::registry::{JoinError, JoinRoom, Register, TakeResume, Unregister};
use super::room::{Join, JoinOutcome, Leave, Publish, Publisher, Room};
use super::router::HandlerRequest;
use super::ConnectionId;
use crate::auth::Identity;
use crate::broker::BrokerState;
use crate::protocol::frame::{self, Inbound, ReplyTo};
use crate::protocol::{close, types, ErrorCode};
use crate::transport::outbound::WriterExit;
use crate::transport::{Assembler, InboundEvent, Outbound};

/// How long a session waits for the peer's close frame after sending its own.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// A WebSocket session.
pub struct Session {
    id: ConnectionId,
    identity: Arc<Identity>,
    state: Arc<BrokerState>,
    out: Outbound,
    rooms: HashMap<String, Addr<Room>>,
    limiter: DefaultDirectRateLimiter,
    violations: u32,
    violation_window: Instant,
    last_inbound: Instant,
    assembler: Assembler,
    closing: bool,
}

impl Session {
    /// Starts a session on the current arbiter, with its writer task.
    pub fn start(
        state: Arc<BrokerState>,
        identity: Identity,
        connection_id: ConnectionId,
        ws: actix_ws::Session,
        stream: MessageStream,
    ) -> Addr<Session> {
        let limits = &state.config.limits;
        let (out, rx) = Outbound::bounded(
            connection_id.clone(),
            limits.outbound_queue_messages,
            limits.outbound_queue_bytes,
            Some(state.metrics.slow_consumer_closes.clone()),
        );
        let rate = NonZeroU32::new(limits.messages_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.burst).unwrap_or(NonZeroU32::MIN);
        let max_frame = limits.max_frame_bytes;
        Session::create(move |ctx| {
            ctx.add_stream(stream.max_frame_size(max_frame));
            let addr = ctx.address();
            actix_rt::spawn(async move {
                let exit = rx.run(ws).await;
                addr.do_send(WriterExited(exit));
            });
            Session {
                id: connection_id,
                identity: Arc::new(identity),
                out,
                rooms: HashMap::new(),
                limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
                violations: 0,
                violation_window: Instant::now(),
                last_inbound: Instant::now(),
                assembler: Assembler::new(max_frame),
                closing: false,
                state,
            }
        })
    }

    fn send(&self, frame: ByteString) {
        // Overflow closes the session from inside the queue; nothing more to do here.
        let _ = self.out.send(frame);
    }

    fn send_error(&self, reply_to: &ReplyTo, code: ErrorCode, message: &str) {
        if *reply_to != ReplyTo::JsonRpcNotification {
            self.send(frame::error(reply_to, code, message));
        }
    }

    /// Starts the closing handshake with `code`; the actor stops once the peer answers.
    fn close(&mut self, ctx: &mut Context<Self>, code: u16, reason: &str) {
        if self.closing {
            return;
        }
        self.closing = true;
        log::info!("conn={} closing with {code}: {reason}", self.id);
        self.out.close(code, reason);
        ctx.run_later(CLOSE_LINGER * 4, |_, ctx| ctx.stop());
    }

    fn on_text(&mut self, text: ByteString, ctx: &mut Context<Self>) {
        let inbound = match frame::parse(&text) {
            Ok(inbound) => inbound,
            Err(err) => {
                if !self.allow_frame(&err.reply_to, ctx) {
                    return;
                }
                self.send(frame::error_with_rpc_code(
                    &err.reply_to,
                    err.code,
                    err.jsonrpc_code,
                    &err.message,
                ));
                return;
            }
        };
        if !self.allow_frame(&inbound.reply_to, ctx) {
            return;
        }
        let max_depth = self.state.config.limits.max_json_depth;
        if let Some(payload) = &inbound.payload {
            if frame::nests_deeper_than(payload.get(), max_depth) {
                self.state.metrics.limit_refused("json_depth");
                let msg =
                    format!("payload nests deeper than {max_depth} levels (limits.max_json_depth)");
                return self.send_error(&inbound.reply_to, ErrorCode::BadRequest, &msg);
            }
        }
        let label = crate::metrics::type_label(&inbound.msg_type, || {
            self.state.routes.load().has_handler(&inbound.msg_type)
        });
        self.state
            .metrics
            .messages_in
            .with_label_values(&[label])
            .inc();
        match inbound.msg_type.as_str() {
            types::ROOM_JOIN => self.join(inbound, ctx),
            types::ROOM_LEAVE => self.leave(inbound),
            types::ROOM_PUBLISH => self.publish(inbound),
            types::SYSTEM_PING => {
                if let Some(pong) = frame::reply(
                    &inbound.reply_to,
                    types::SYSTEM_PONG,
                    None,
                    None,
                    None::<()>,
                    |_| json!({}),
                ) {
                    self.send(pong);
                }
            }
            types::SYSTEM_PONG => {}
            types::SYSTEM_CONNECTION_RESUME => self.resume(inbound, ctx),
            other if types::is_broker_type(other) => self.send_error(
                &inbound.reply_to,
                ErrorCode::UnknownType,
                &format!("unknown message type `{other}`"),
            ),
            _ => self.request(inbound, ctx),
        }
    }

    /// Applies the inbound rate limit; false when the frame must be dropped.
    fn allow_frame(&mut self, reply_to: &ReplyTo, ctx: &mut Context<Self>) -> bool {
        if self.limiter.check().is_ok() {
            return true;
        }
        self.state
            .metrics
            .rate_limited
            .with_label_values(&["session"])
            .inc();
        let limits = &self.state.config.limits;
        if self.violation_window.elapsed() > limits.abuse_window {
            self.violation_window = Instant::now();
            self.violations = 0;
        }
        self.violations += 1;
        if self.violations >= limits.abuse_threshold {
            self.close(
                ctx,
                close::RATE_LIMIT_ABUSE,
                "rate limit exceeded repeatedly",
            );
        } else {
            self.send_error(
                reply_to,
                ErrorCode::RateLimited,
                "too many frames; slow down",
            );
        }
        false
    }

    /// The Registry took the session in: greet the client and join the automatic rooms.
    fn admitted(&mut self, ctx: &mut Context<Self>) {
        let config = &self.state.config;
        self.send(frame::push(
            types::SYSTEM_CONNECTION_ESTABLISHED,
            None,
            Some(json!({
                "connection_id": &*self.id,
                "user": &*self.identity.user,
                "heartbeat_interval_ms": config.heartbeat.interval.as_millis() as u64,
                "resume_ttl_ms": config.resume.ttl.as_millis() as u64,
            })),
        ));
        // Joined silently: the broadcast room and the user's personal room.
        let automatic =
            std::iter::once(types::BROADCAST_ROOM.to_owned()).chain(self.identity.personal_room());
        for room in automatic {
            let joining = self.join_room(room.clone(), None, Some(None));
            joining
                .into_actor(self)
                .map(move |result, act, _| {
                    if let Ok((addr, _)) = result {
                        act.rooms.insert(room, addr);
                    }
                })
                .wait(ctx);
        }
        log::debug!("conn={} user={} connected", self.id, self.identity.user);
    }

    fn room_name(&self, inbound: &Inbound) -> Result<String, String> {
        match &inbound.room {
            None => Err(format!("`{}` needs a `room`", inbound.msg_type)),
            Some(room) if !frame::valid_room_name(room) => Err(format!(
                "invalid room name `{}`: use 1-128 of A-Z a-z 0-9 _ . : @ -",
                truncate(room, 64)
            )),
            Some(room) => Ok(room.clone()),
        }
    }

    fn join(&mut self, inbound: Inbound, ctx: &mut Context<Self>) {
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
        let joining = self.join_room(room.clone(), Some(inbound.reply_to), Some(since_seq));
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
    fn check_join(&self, room: &str, also_joining: usize) -> Result<(), (ErrorCode, String)> {
        if !frame::valid_room_name(room) {
            return Err((
                ErrorCode::BadRequest,
                format!("invalid room name `{}`", truncate(room, 64)),
            ));
        }
        let allowed = self.is_automatic(room) || self.identity.may_join(room);
        if !allowed || (self.identity.anonymous && !self.state.config.room_policy(room).anonymous) {
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
    fn counted_rooms(&self) -> usize {
        self.rooms.keys().filter(|r| !self.is_automatic(r)).count()
    }

    /// Whether `room` is one the session joins by itself (broadcast, personal).
    fn is_automatic(&self, room: &str) -> bool {
        room == types::BROADCAST_ROOM || self.identity.personal_room().as_deref() == Some(room)
    }

    /// Asks the Registry to join `room`; resolves with the room's address and outcome.
    /// `since_seq` is `Some(None)` for a plain join, `Some(Some(n))` to replay after `n`, and
    /// `None` when the client's position is unknown (see [`Join::position_unknown`]).
    fn join_room(
        &self,
        room: String,
        reply_to: Option<ReplyTo>,
        since_seq: Option<Option<u64>>,
    ) -> impl std::future::Future<Output = Result<(Addr<Room>, JoinOutcome), JoinError>> + 'static
    {
        let join = Join {
            connection_id: self.id.clone(),
            user: self.identity.user.clone(),
            out: self.out.clone(),
            reply_to,
            since_seq: since_seq.flatten(),
            position_unknown: since_seq.is_none(),
        };
        let sent = self.state.registry.send(JoinRoom { room, join });
        async move { sent.await? }
    }

    /// `system.connection.resume`: rejoins the rooms of a dropped connection (and those the
    /// client lists), replaying each gap after the client's last seq, then reports per room.
    fn resume(&mut self, inbound: Inbound, ctx: &mut Context<Self>) {
        #[derive(Deserialize)]
        struct ResumePayload {
            connection_id: String,
            #[serde(default)]
            rooms: BTreeMap<String, u64>,
        }
        let payload = match inbound
            .payload
            .as_deref()
            .map(parse_payload::<ResumePayload>)
        {
            Some(Ok(p)) => p,
            Some(Err(msg)) => {
                let msg = format!("invalid system.connection.resume payload: {msg}");
                return self.send_error(&inbound.reply_to, ErrorCode::BadRequest, &msg);
            }
            None => {
                let msg = "system.connection.resume needs payload.connection_id";
                return self.send_error(&inbound.reply_to, ErrorCode::BadRequest, msg);
            }
        };
        let reply_to = inbound.reply_to;
        let previous = payload.connection_id.clone();
        self.state
            .registry
            .send(TakeResume {
                connection_id: payload.connection_id,
                user: self.identity.user.clone(),
            })
            .into_actor(self)
            .then(move |found, act, _| {
                let found = found.ok().flatten();
                let session_found = found.is_some();
                // The client's last seqs, plus rooms the old connection was in that the
                // client did not list (joined without replay: their gap is unknown).
                let mut wanted: BTreeMap<String, Option<u64>> = payload
                    .rooms
                    .into_iter()
                    .map(|(room, seq)| (room, Some(seq)))
                    .collect();
                for room in found.unwrap_or_default() {
                    wanted.entry(room).or_insert(None);
                }
                let mut report = serde_json::Map::new();
                let mut joins = Vec::new();
                for (room, since_seq) in wanted {
                    if let Err((code, message)) = act.check_join(&room, joins.len()) {
                        report.insert(
                            room,
                            json!({ "error": { "code": code, "message": message } }),
                        );
                        continue;
                    }
                    // Each room answers with a native room.joined and its replay, in order.
                    let reply = ReplyTo::Native {
                        correlation_id: None,
                    };
                    // A room the client did not list has an unknown position (`None`).
                    let joining = act.join_room(room.clone(), Some(reply), since_seq.map(Some));
                    joins.push(async move { (room, joining.await) });
                }
                futures_util::future::join_all(joins)
                    .into_actor(act)
                    .map(move |results, act, _| {
                        for (room, result) in results {
                            match result {
                                Ok((addr, outcome)) => {
                                    act.rooms.insert(room.clone(), addr);
                                    report.insert(
                                        room,
                                        json!({
                                            "seq": outcome.seq,
                                            "recovered": outcome.recovered,
                                        }),
                                    );
                                }
                                Err(e) => {
                                    log::warn!("conn={} resume {room}: {e}", act.id);
                                    report.insert(
                                        room,
                                        json!({ "error": { "code": e.code(), "message": e.to_string() } }),
                                    );
                                }
                            }
                        }
                        let payload = json!({
                            "previous_connection_id": previous,
                            "session_found": session_found,
                            "rooms": report,
                        });
                        if let Some(frame) = frame::reply(
                            &reply_to,
                            types::SYSTEM_CONNECTION_RESUMED,
                            None,
                            None,
                            Some(payload),
                            |p| p.unwrap_or_default(),
                        ) {
                            act.send(frame);
                        }
                    })
            })
            .wait(ctx);
    }

    fn leave(&mut self, inbound: Inbound) {
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

    fn publish(&mut self, inbound: Inbound) {
        let room = match self.room_name(&inbound) {
            Ok(room) => room,
            Err(msg) => return self.send_error(&inbound.reply_to, ErrorCode::BadRequest, &msg),
        };
        // Only the server reaches every session: clients never publish to `broadcast`.
        if room == types::BROADCAST_ROOM
            || !self.identity.may_publish(&room)
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

    fn request(&mut self, inbound: Inbound, ctx: &mut Context<Self>) {
        let payload = inbound
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or(Value::Null);
        let req = HandlerRequest {
            connection_id: self.id.clone(),
            user: self.identity.user.clone(),
            anonymous: self.identity.anonymous,
            msg_type: inbound.msg_type,
            id: inbound.id,
            room: inbound.room,
            payload,
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

/// Reads a payload into `T`; the error names the offending field.
fn parse_payload<T: serde::de::DeserializeOwned>(raw: &RawValue) -> Result<T, String> {
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(raw.get()))
        .map_err(|e| format!("field `{}`: {}", e.path(), e.inner()))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.state.metrics.connections.inc();
        // Nothing is sent, and no frame handled, before the Registry has admitted the session.
        self.state
            .registry
            .send(Register {
                connection_id: self.id.clone(),
                user: self.identity.user.clone(),
                addr: ctx.address(),
            })
            .into_actor(self)
            .map(|admitted, act, ctx| match admitted {
                Ok(Ok(())) => act.admitted(ctx),
                Ok(Err(reason)) => {
                    log::warn!(
                        "conn={} user={} refused: {reason}",
                        act.id,
                        act.identity.user
                    );
                    act.close(ctx, close::TOO_MANY_SESSIONS, &reason);
                }
                Err(e) => {
                    log::error!("conn={} registry unavailable: {e}", act.id);
                    act.close(ctx, close::INTERNAL, "broker unavailable");
                }
            })
            .wait(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.state.metrics.connections.dec();
        let mut rooms = Vec::with_capacity(self.rooms.len());
        for (name, room) in std::mem::take(&mut self.rooms) {
            room.do_send(Leave {
                connection_id: self.id.clone(),
                reply_to: None,
            });
            if !self.is_automatic(&name) {
                rooms.push(name);
            }
        }
        self.state.registry.do_send(Unregister {
            connection_id: self.id.clone(),
            rooms,
        });
        if !self.out.is_closed() {
            self.out.abort(close::NORMAL, "");
        }
        log::debug!("conn={} disconnected", self.id);
    }
}

impl StreamHandler<Result<WsMessage, ProtocolError>> for Session {
    fn handle(&mut self, item: Result<WsMessage, ProtocolError>, ctx: &mut Self::Context) {
        self.last_inbound = Instant::now();
        match self.assembler.push(item) {
            Ok(None) => {}
            Ok(Some(InboundEvent::Text(text))) if !self.closing => self.on_text(text, ctx),
            Ok(Some(InboundEvent::Binary(_))) if !self.closing => {
                if self.allow_frame(
                    &ReplyTo::Native {
                        correlation_id: None,
                    },
                    ctx,
                ) {
                    self.send_error(
                        &ReplyTo::Native {
                            correlation_id: None,
                        },
                        ErrorCode::BadRequest,
                        "binary frames are not supported; send JSON text frames",
                    );
                }
            }
            Ok(Some(InboundEvent::Ping(bytes))) => self.out.pong(bytes),
            Ok(Some(InboundEvent::Close(reason))) => {
                // The peer started (or answered) the closing handshake: answer and go.
                let code = reason.map_or(close::NORMAL, |r| u16::from(r.code));
                self.closing = true;
                self.out.close(code, "");
                ctx.stop();
            }
            Ok(Some(_)) => {}
            Err(err) => match err.close_code() {
                Some(code) => {
                    let reason = err.to_string();
                    self.close(ctx, code, &reason);
                }
                None => ctx.stop(),
            },
        }
    }
}

/// The writer task ended (close sent, or the socket went away).
#[derive(Message)]
#[rtype(result = "()")]
struct WriterExited(WriterExit);

impl Handler<WriterExited> for Session {
    type Result = ();

    fn handle(&mut self, msg: WriterExited, ctx: &mut Self::Context) {
        self.closing = true;
        match msg.0 {
            // Give the peer a moment to answer our close frame, then drop the connection.
            WriterExit::Closed(_) => {
                ctx.run_later(CLOSE_LINGER, |_, ctx| ctx.stop());
            }
            WriterExit::Disconnected => ctx.stop(),
        }
    }
}

/// Supervisor tick: send `system.ping`, or close with 4010 if the peer went quiet.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Heartbeat;

impl Handler<Heartbeat> for Session {
    type Result = ();

    fn handle(&mut self, _: Heartbeat, ctx: &mut Self::Context) {
        if self.closing {
            return;
        }
        let timeout = self.state.config.heartbeat.timeout;
        if self.last_inbound.elapsed() >= timeout {
            self.close(ctx, close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
            return;
        }
        self.send(frame::push(types::SYSTEM_PING, None, None::<()>));
    }
}

/// Graceful shutdown: `system.connection.close {reason}` then close 1012.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServerShutdown;

impl Handler<ServerShutdown> for Session {
    type Result = ();

    fn handle(&mut self, _: ServerShutdown, ctx: &mut Self::Context) {
        if self.closing {
            return;
        }
        self.send(frame::push(
            types::SYSTEM_CONNECTION_CLOSE,
            None,
            Some(json!({ "reason": types::REASON_SERVER_SHUTDOWN })),
        ));
        self.close(ctx, close::SERVICE_RESTART, types::REASON_SERVER_SHUTDOWN);
    }
}

/// The server disconnects this session (HTTP API): `system.connection.close {reason}`,
/// then close 1008.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    /// Why; sent to the client.
    pub reason: String,
}

impl Handler<Disconnect> for Session {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, ctx: &mut Self::Context) {
        if self.closing {
            return;
        }
        self.send(frame::push(
            types::SYSTEM_CONNECTION_CLOSE,
            None,
            Some(json!({ "reason": &msg.reason })),
        ));
        self.close(ctx, close::POLICY, &msg.reason);
    }
}
