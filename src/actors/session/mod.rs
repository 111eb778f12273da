//! Session actor: one per WebSocket connection.
//!
//! This file is the socket's lifecycle (start, admission, frames in, limits, close,
//! heartbeats, shutdown); each client command lives in its own module beside it.
//!
//! Owns the inbound side of the socket (frames fed in with `ctx.add_stream`), the
//! session's limits (frame size, rate, room count) and the sending half of its bounded
//! outbound queue; a separate writer task drains that queue into the socket. Room traffic
//! goes straight to the Room actors whose addresses the session keeps; application types go
//! through the Router's route table snapshot. The session never blocks on anyone: handler
//! calls run as spawned futures, and everything it sends is a non-blocking queue push.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_ws::{Message as WsMessage, ProtocolError};
use bytestring::ByteString;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::json;
use serde_json::value::RawValue;

mod asap;
mod join;
mod leave;
mod publish;
mod raw;
mod request;
mod resume;
mod rooms;

use super::registry::{Register, Unregister};
use super::room::{JoinFrom, Leave};
use super::ConnectionId;
use crate::auth::Identity;
use crate::broker::BrokerState;
use crate::endpoint::{Endpoint, Framing};
use crate::protocol::frame::{self, Inbound, ReplyTo};
use crate::protocol::types::{self, Command};
use crate::protocol::{close, ErrorCode};
use crate::transport::admission::Permit;
use crate::transport::outbound::{WriteDeadline, WriterExit};
use crate::transport::{Assembler, InboundEvent, Outbound, WebSocket};

/// How long a session waits for the peer's close frame after sending its own.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// A WebSocket session.
pub struct Session {
    id: ConnectionId,
    identity: Arc<Identity>,
    state: Arc<BrokerState>,
    out: Outbound,
    rooms: rooms::SessionRooms,
    limiter: DefaultDirectRateLimiter,
    violations: u32,
    violation_window: Instant,
    last_inbound: Instant,
    assembler: Assembler,
    closing: bool,
    binding: Binding,
    /// The agent URNs this connection serves (ASAP framing).
    agents: Vec<String>,
    /// This connection's place under the connection caps, given back when the session ends.
    _permit: Permit,
}

/// The most messages any room keeps (`[history] size`, or a namespace's `history_size`).
fn longest_history(config: &crate::config::Config) -> usize {
    config
        .namespaces
        .values()
        .filter_map(|ns| ns.history_size)
        .fold(config.history.size, usize::max)
}

/// What the endpoint a session came in through decides for it.
pub(crate) struct Binding {
    /// The endpoint (framing, publish rule, replay, room template).
    pub endpoint: Arc<Endpoint>,
    /// The endpoint's room for this connection, filled from its path and query; joined as
    /// soon as the session is admitted.
    pub room: Option<String>,
    /// The client asked for batched frames (`switchboard.v1.batch`).
    pub joined_frames: bool,
}

impl Session {
    /// Starts a session on the current arbiter, with its writer task.
    pub fn start(
        state: Arc<BrokerState>,
        identity: Identity,
        connection_id: ConnectionId,
        websocket: WebSocket,
        binding: Binding,
        permit: Permit,
    ) -> Addr<Session> {
        let limits = &state.config.limits;
        let (out, rx) = Outbound::bounded(
            connection_id.clone(),
            limits.outbound_queue_messages,
            limits.outbound_queue_bytes,
            // Room for two rooms' whole histories at once: a resume of a room the client
            // lost for long always fits, and the memory a reader that never reads can make
            // the broker hold stays bounded by the history limits.
            (
                longest_history(&state.config).saturating_mul(2),
                state.config.history.max_bytes.saturating_mul(2),
            ),
            Some(state.metrics.slow_consumer_closes.clone()),
        );
        let rx = rx.join_frames(binding.joined_frames);
        let rate = NonZeroU32::new(limits.messages_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.burst).unwrap_or(NonZeroU32::MIN);
        let max_frame = limits.max_frame_bytes;
        let WebSocket {
            reader,
            writer,
            socket,
        } = websocket;
        let deadline = WriteDeadline {
            socket,
            timeout: limits.write_timeout,
            resets: Some(state.metrics.connection_resets.clone()),
        };
        Session::create(move |ctx| {
            ctx.add_stream(reader);
            let addr = ctx.address();
            actix_rt::spawn(async move {
                let exit = rx.run(writer, deadline).await;
                addr.do_send(WriterExited(exit));
            });
            Session {
                id: connection_id,
                identity: Arc::new(identity),
                out,
                rooms: rooms::SessionRooms::default(),
                limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
                violations: 0,
                violation_window: Instant::now(),
                last_inbound: Instant::now(),
                assembler: Assembler::new(max_frame),
                closing: false,
                binding,
                agents: Vec::new(),
                _permit: permit,
                state,
            }
        })
    }

    fn send(&self, frame: ByteString) {
        // Overflow closes the session from inside the queue; nothing more to do here.
        let _ = self.out.send(frame);
    }

    fn framing(&self) -> Framing {
        self.binding.endpoint.config.framing
    }

    /// How the session answers a frame that has no reply address of its own.
    fn default_reply(&self) -> ReplyTo {
        match self.framing() {
            Framing::V1 => ReplyTo::Native {
                correlation_id: None,
            },
            Framing::Raw => ReplyTo::Raw,
            Framing::Asap => ReplyTo::JsonRpc {
                id: frame::RpcId::null(),
            },
        }
    }

    fn send_error(&self, reply_to: &ReplyTo, code: ErrorCode, message: &str) {
        if self.framing() == Framing::Asap {
            return self.send_asap_error(reply_to, code, message);
        }
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
        match self.framing() {
            Framing::Raw => return self.on_raw_text(text, ctx),
            Framing::Asap => return self.on_asap_text(text, ctx),
            Framing::V1 => {}
        }
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
        match Command::from_type(&inbound.msg_type) {
            Some(Command::Join) => self.join(inbound, ctx),
            Some(Command::Leave) => self.leave(inbound),
            Some(Command::Publish) => self.publish(inbound),
            Some(Command::Ping) => {
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
            Some(Command::Pong) => {}
            Some(Command::Resume) => self.resume(inbound, ctx),
            None if types::is_broker_type(&inbound.msg_type) => self.send_error(
                &inbound.reply_to,
                ErrorCode::UnknownType,
                &format!("unknown message type `{}`", inbound.msg_type),
            ),
            None => self.request(inbound, ctx),
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

    /// The Registry took the session in: greet the client and join the automatic rooms
    /// (v1), then the endpoint's room.
    fn admitted(&mut self, ctx: &mut Context<Self>) {
        if self.framing() == Framing::V1 {
            self.greet(ctx);
        }
        self.join_bound_room(ctx);
        log::debug!("conn={} user={} connected", self.id, self.identity.user);
    }

    fn greet(&mut self, ctx: &mut Context<Self>) {
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
            let joining = self.join_room(room.clone(), None, JoinFrom::Now);
            joining
                .into_actor(self)
                .map(move |result, act, _| {
                    if let Ok((addr, _)) = result {
                        act.rooms.insert(room, addr);
                    }
                })
                .wait(ctx);
        }
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
                control: ctx.address().recipient(),
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
        self.release_agents();
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
                let reply_to = self.default_reply();
                if self.allow_frame(&reply_to, ctx) {
                    self.send_error(
                        &reply_to,
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
            WriterExit::Stalled => {
                log::warn!(
                    "conn={} user={} reset: a write waited {:?} on a peer that does not read",
                    self.id,
                    self.identity.user,
                    self.state.config.limits.write_timeout
                );
                ctx.stop();
            }
        }
    }
}

/// What the broker tells a session from outside: the Registry and the Supervisor hold each
/// session as a `Recipient<Control>`, not as an `Addr<Session>`, so any kind of session that
/// answers these can register.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum Control {
    /// Supervisor tick: send `system.ping`, or close with 4010 if the peer went quiet.
    Heartbeat,
    /// Graceful shutdown: `system.connection.close {reason}` then close 1012.
    Shutdown,
    /// The server disconnects this session (HTTP API): `system.connection.close {reason}`,
    /// then close 1008.
    Disconnect {
        /// Why; sent to the client.
        reason: String,
    },
}

impl Handler<Control> for Session {
    type Result = ();

    fn handle(&mut self, msg: Control, ctx: &mut Self::Context) {
        if self.closing {
            return;
        }
        let (code, reason) = match msg {
            Control::Heartbeat => {
                if self.last_inbound.elapsed() >= self.state.config.heartbeat.timeout {
                    self.close(ctx, close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
                } else if self.framing() == Framing::Raw {
                    self.out.ping();
                } else if self.framing() == Framing::Asap {
                    self.send(bytestring::ByteString::from_static(crate::asap::rpc::PING));
                } else {
                    self.send(frame::push(types::SYSTEM_PING, None, None::<()>));
                }
                return;
            }
            Control::Shutdown => (
                close::SERVICE_RESTART,
                types::REASON_SERVER_SHUTDOWN.to_owned(),
            ),
            Control::Disconnect { reason } => (close::POLICY, reason),
        };
        if self.framing() == Framing::V1 {
            self.send(frame::push(
                types::SYSTEM_CONNECTION_CLOSE,
                None,
                Some(json!({ "reason": &reason })),
            ));
        }
        self.close(ctx, code, &reason);
    }
}
