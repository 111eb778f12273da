//! The engine: everything about a room that several broker nodes must agree on — its
//! sequence, its history, the client message ids it has seen, and the fan-out of each
//! message to every node with members in the room.
//!
//! A Room actor runs on each node where the room is in use. It opens the room's [`RoomLog`]
//! from the [`Engine`] and goes through it for every publish, replay and history read; what
//! stays in the actor is what is local by nature (this node's members and their queues).
//!
//! Two engines ship:
//!
//! - [`MemoryEngine`], the embedded default: the log is a ring buffer inside the Room, every
//!   answer is immediate ([`Answer::Now`]) and the Room fans out each new message itself.
//! - [`RedisEngine`]: the log lives in Redis; answers are futures ([`Answer::Later`]) and
//!   each message reaches every node's Room through the room's pub/sub channel
//!   ([`RoomFeed`]), in seq order, so N brokers over one Redis act as one.
//!
//! # Contract
//!
//! **Ordering.** Seqs of a room start at 1 and have no gaps. An engine delivers a room's
//! messages to each [`RoomLog::feed`] subscriber in seq order; a subscriber that sees a gap
//! (a message missed during a reconnect) reads it from [`RoomLog::since`] before delivering
//! further, so every member sees every retained message once, in order.
//!
//! **Atomicity.** [`RoomLog::append`] allocates the seq, stores the message in history,
//! remembers its client id and hands it to the fan-out as one step: no node can observe a
//! seq without its message, nor deliver a message that history does not hold. A publish is
//! acknowledged (WebSocket `ack`, HTTP answer) only once `append` has answered `Ok`, so an
//! acknowledged message survives anything the engine survives.
//!
//! **Failure.** When the engine cannot reach its store, `append`, `since` and `feed` answer
//! [`EngineError::Unavailable`] at once (or after the configured command timeout), never
//! hang; callers turn it into `unavailable` (HTTP 503) and sessions stay connected. An append
//! that fails with `Unavailable` may or may not have been applied (the reply was lost); the
//! client retries with the same message id and the dedup memory makes that safe. When the
//! store is back the engine resubscribes and sends each fed room a [`RoomFeed::Resync`].

pub mod memory;
pub mod redis;

use actix::prelude::*;
use bytestring::ByteString;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;

use crate::config::RoomPolicy;

pub use memory::MemoryEngine;
pub use redis::RedisEngine;

/// Frames after a given seq, for replay.
#[derive(Debug, Default)]
pub struct Replay {
    /// Encoded `room.message` frames with their seqs, oldest first.
    pub frames: Vec<(u64, ByteString)>,
    /// False when part of the requested range has already left history.
    pub recovered: bool,
    /// The room's newest seq when the range was read.
    pub last_seq: u64,
}

/// The outcome of [`RoomLog::append`].
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// A new message the caller fans out to its members itself (a local engine).
    New {
        /// The seq allocated.
        seq: u64,
        /// The frame, encoded once.
        frame: ByteString,
    },
    /// A new message stored and handed to the engine's fan-out: every node, this one
    /// included, receives it through its [`RoomLog::feed`].
    Forwarded {
        /// The seq allocated.
        seq: u64,
    },
    /// The client id was seen before: the original seq; nothing to deliver.
    Duplicate {
        /// The seq the first publish got.
        seq: u64,
    },
}

/// What makes a publish a repeat: the same message id from the same publisher.
///
/// Scoping ids to their publisher means nobody can claim an id first and so swallow someone
/// else's message (id squatting): two users, or a user and the HTTP API, may pick the same
/// id and both are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupKey<'a> {
    /// Whether the publisher is the broker's API (`publisher` is then the caller, e.g.
    /// `key#0`) rather than a session (`publisher` is its user id): the two name spaces
    /// never meet, whatever a token's `sub` says.
    pub server: bool,
    /// Who publishes: the user id of a session, or the HTTP API caller.
    pub publisher: &'a str,
    /// The client's message id.
    pub id: &'a str,
}

impl DedupKey<'_> {
    /// One string per (kind, publisher, id): the publisher's length goes first, so no choice
    /// of publisher and id can spell another pair's key.
    pub fn encode(&self) -> String {
        let kind = if self.server { 's' } else { 'u' };
        format!(
            "{kind}{}:{}{}",
            self.publisher.len(),
            self.publisher,
            self.id
        )
    }
}

/// Why the engine could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The engine's store is unreachable or did not answer within its timeout; the
    /// operation may be retried (with the same message id, for a publish).
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The store answered with an error (a bug or a misconfigured store, not an outage).
    #[error("engine store error: {0}")]
    Store(String),
}

impl EngineError {
    /// The protocol error code a client or API caller gets.
    pub fn code(&self) -> crate::protocol::ErrorCode {
        match self {
            EngineError::Unavailable(_) => crate::protocol::ErrorCode::Unavailable,
            EngineError::Store(_) => crate::protocol::ErrorCode::Internal,
        }
    }
}

/// An engine's answer: at once (local engines), or once the store has replied.
pub enum Answer<T> {
    /// The answer.
    Now(T),
    /// The answer to come; polled on the caller's arbiter.
    Later(LocalBoxFuture<'static, Result<T, EngineError>>),
}

/// One user present in a room.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PresenceInfo {
    /// User id.
    pub user: String,
    /// How many of the user's connections are in the room (on every node).
    pub connections: u32,
    /// When the user's first connection joined (RFC 3339).
    pub joined_at: String,
}

/// The outcome of [`RoomLog::presence_add`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceJoin {
    /// The user had no other connection in the room: their arrival is news.
    pub first: bool,
    /// Everyone present, the joiner included, by user id.
    pub present: Vec<PresenceInfo>,
}

/// What a fed Room receives from a shared engine.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub enum RoomFeed {
    /// A message published on any node, as the engine's fan-out carried it.
    Message {
        /// Its seq.
        seq: u64,
        /// The encoded frame members receive.
        frame: ByteString,
    },
    /// Messages may have been missed (the engine lost its subscription and has it back):
    /// read everything after the last seq delivered before delivering more.
    Resync,
    /// An event outside the message sequence (presence), for every member but `except`.
    Event {
        /// The connection that must not get it (the joiner, for its own arrival).
        except: Option<String>,
        /// The encoded frame.
        frame: ByteString,
    },
}

/// One room's sequence, history and recently seen client message ids.
///
/// History and remembered ids are bounded by count and by bytes ([`RoomPolicy`]), oldest
/// first out, so no publisher can make a room hold more than its budget.
pub trait RoomLog: Send {
    /// Whether the log lives outside this process (every node sees the same log, and
    /// messages arrive through [`RoomLog::feed`]).
    fn is_shared(&self) -> bool;

    /// The newest seq this node knows of (0 when none was ever published).
    fn last_seq(&self) -> u64;

    /// Allocates the next seq, encodes the frame for it once, stores it and fans it out —
    /// or, when `dedup` was already seen in this room, answers the original seq.
    ///
    /// `encode` builds the frame for a seq; a network engine may call it once with a
    /// placeholder seq and substitute the real one where the store allocates it.
    fn append(
        &mut self,
        dedup: Option<DedupKey<'_>>,
        encode: &mut dyn FnMut(u64) -> ByteString,
    ) -> Answer<Appended>;

    /// Everything after `after_seq` still in history, oldest first, with the newest seq.
    fn since(&mut self, after_seq: u64) -> Answer<Replay>;

    /// Starts delivering the room's messages from every node to `to` (in seq order) and
    /// answers the newest seq at the moment delivery began: every later message reaches
    /// `to`. `None` for a local engine, whose caller fans out [`Appended::New`] itself.
    fn feed(&mut self, to: Recipient<RoomFeed>) -> Option<Answer<u64>>;

    /// Stops the delivery [`RoomLog::feed`] started (the room has no members here).
    fn unfeed(&mut self);

    /// Records `connection` of `user` as present. When it is the user's first connection in
    /// the room (on any node), a shared engine fans `arrival` out to every node's members
    /// but `connection` (as a [`RoomFeed::Event`]); a local engine leaves announcing to the
    /// caller. Atomic: of two nodes adding the same user's first connections at once,
    /// exactly one sees `first`.
    fn presence_add(
        &mut self,
        user: &str,
        connection: &str,
        arrival: ByteString,
    ) -> Answer<PresenceJoin>;

    /// Removes `connection`; answers its user when that was the user's last connection in
    /// the room, after fanning `departure` out like `arrival` (a shared engine). `departure`
    /// is built by the caller for the user it expects (`user`).
    fn presence_remove(
        &mut self,
        user: &str,
        connection: &str,
        departure: ByteString,
    ) -> Answer<Option<String>>;

    /// Everyone present, by user id.
    fn presence(&mut self) -> Answer<Vec<PresenceInfo>>;

    /// How long a shared engine keeps a connection present without a refresh (a node that
    /// dies stops refreshing; its users leave after this). `None` for a local engine.
    fn presence_ttl(&self) -> Option<Duration>;

    /// Marks this node's `connections` present again (every `presence_ttl / 3`) and drops
    /// entries nobody refreshed in time; answers the users whose last connection was dropped
    /// (the caller announces them with [`RoomLog::announce`]).
    fn presence_refresh(&mut self, connections: Vec<String>) -> Answer<Vec<String>>;

    /// Fans an event frame out to every node's members (a shared engine); best effort.
    fn announce(&mut self, frame: ByteString);

    /// This node now has `count` members in the room (a shared engine reports it in the
    /// cluster-wide room list).
    fn members(&mut self, count: usize);
}

/// An order one node gives the node that holds a session.
#[derive(Debug, Clone, PartialEq, Eq, Message, serde::Serialize, serde::Deserialize)]
#[rtype(result = "()")]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlOrder {
    /// Close the session with this reason.
    Disconnect {
        /// Its connection id.
        connection_id: String,
        /// Sent to the client.
        reason: String,
    },
}

/// A room in the cluster-wide list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoomInfo {
    /// Room name.
    pub room: String,
    /// Connections in the room (on every node).
    pub members: usize,
    /// Latest seq.
    pub seq: u64,
}

/// Hands out room logs; the extension point for where shared state lives.
pub trait Engine: Send + Sync + 'static {
    /// The engine's name, for the banner and metrics (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// The log of `room`, sized by `policy` (a shared engine reads the stored state).
    fn open(&self, room: &str, policy: &RoomPolicy) -> Box<dyn RoomLog>;

    /// Takes back the log of a room that retired on this node.
    fn park(&self, room: &str, log: Box<dyn RoomLog>, keep_for: std::time::Duration);

    /// Whether the engine can serve now, and its counters (for `/readyz` and metrics).
    fn status(&self) -> EngineStatus;

    /// Keeps the rooms a dropped connection of `user` was in, for `ttl`, so that
    /// `system.connection.resume` on any node finds them. Best effort: a failure is logged,
    /// and a resume then rejoins only the rooms the client lists.
    fn detach(&self, connection_id: &str, user: &str, rooms: Vec<String>, ttl: Duration);

    /// Takes what `connection_id` left behind, once: its rooms, if `user` owns it and it has
    /// not expired; `None` otherwise (another user's id leaves the state in place).
    fn reattach(&self, connection_id: &str, user: &str) -> Answer<Option<Vec<String>>>;

    /// Where orders other nodes address to this node's sessions arrive (the Registry).
    fn serve_orders(&self, to: Recipient<ControlOrder>);

    /// `connection_id` connected to this node (`true`) or left it, so that any node can
    /// reach it with [`Engine::send_order`]. Best effort.
    fn session_here(&self, connection_id: &str, here: bool);

    /// Sends `order` to the node that holds its session; answers whether that session is
    /// connected to a live node. The caller handles its own node's sessions first: a local
    /// engine answers `false` at once.
    fn send_order(&self, order: ControlOrder) -> Answer<bool>;

    /// The rooms with members on any node, given this node's (`here`); a local engine
    /// answers `here`. A shared engine's list may lag joins on other nodes by a second.
    fn rooms(&self, here: Vec<RoomInfo>) -> Answer<Vec<RoomInfo>>;

    /// Where webhook endpoints created through the API are shared between nodes; `None`
    /// (one node) keeps them in the node's own outbox only.
    fn endpoint_store(&self) -> Option<std::sync::Arc<dyn crate::webhooks::shared::EndpointStore>> {
        None
    }
}

/// An engine's health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStatus {
    /// Why the engine cannot serve (its store is unreachable); `None` when it can. The broker
    /// is not ready (`/readyz` 503) meanwhile.
    pub down: Option<String>,
    /// Times the engine connected to its store again after losing it.
    pub reconnects: u64,
    /// Operations that failed (store unreachable, timeout).
    pub errors: u64,
    /// Dropped connections kept for resume, when the engine can count them cheaply.
    pub detached: Option<u64>,
}
