//! Registry actor: the directory of the broker. Indexes live sessions by connection id and by
//! user, finds or starts Room actors (sharded over the room arbiters by room name), and
//! retires rooms that went idle.
//!
//! Joins pass through here; room traffic never does (sessions keep the room's address).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::room::{Join, Retire, Room};
use super::session::Session;
use super::ConnectionId;
use crate::engine::Engine;

/// The Registry actor.
pub struct Registry {
    sessions: HashMap<ConnectionId, SessionEntry>,
    users: HashMap<Arc<str>, HashSet<ConnectionId>>,
    rooms: HashMap<Arc<str>, RoomEntry>,
    shards: Vec<ArbiterHandle>,
    engine: Arc<dyn Engine>,
    empty_waiters: Vec<oneshot::Sender<()>>,
}

struct SessionEntry {
    addr: Addr<Session>,
    user: Arc<str>,
}

struct RoomEntry {
    addr: Addr<Room>,
    joins_sent: u64,
}

impl Registry {
    /// A registry that starts rooms on `shards` (round-robin by name hash).
    pub fn new(shards: Vec<ArbiterHandle>, engine: Arc<dyn Engine>) -> Registry {
        Registry {
            sessions: HashMap::new(),
            users: HashMap::new(),
            rooms: HashMap::new(),
            shards,
            engine,
            empty_waiters: Vec::new(),
        }
    }

    fn room(&mut self, name: &str, ctx: &mut Context<Self>) -> &mut RoomEntry {
        if !self.rooms.contains_key(name) {
            let name: Arc<str> = name.into();
            let engine = self.engine.clone();
            let registry = ctx.address();
            let room_name = name.clone();
            let addr = if self.shards.is_empty() {
                Room::new(room_name, engine, registry).start()
            } else {
                let mut h = DefaultHasher::new();
                name.hash(&mut h);
                let shard = &self.shards[(h.finish() % self.shards.len() as u64) as usize];
                Room::start_in_arbiter(shard, move |_| Room::new(room_name, engine, registry))
            };
            self.rooms.insert(
                name.clone(),
                RoomEntry {
                    addr,
                    joins_sent: 0,
                },
            );
        }
        self.rooms.get_mut(name).expect("inserted above")
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64 * 1024);
    }
}

/// A session came up.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    /// Its connection id.
    pub connection_id: ConnectionId,
    /// Its user.
    pub user: Arc<str>,
    /// Its actor.
    pub addr: Addr<Session>,
}

impl Handler<Register> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Register, _: &mut Self::Context) {
        self.users
            .entry(msg.user.clone())
            .or_default()
            .insert(msg.connection_id.clone());
        self.sessions.insert(
            msg.connection_id,
            SessionEntry {
                addr: msg.addr,
                user: msg.user,
            },
        );
    }
}

/// A session went away.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unregister {
    /// Its connection id.
    pub connection_id: ConnectionId,
}

impl Handler<Unregister> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Unregister, _: &mut Self::Context) {
        if let Some(entry) = self.sessions.remove(&msg.connection_id) {
            if let Some(conns) = self.users.get_mut(&entry.user) {
                conns.remove(&msg.connection_id);
                if conns.is_empty() {
                    self.users.remove(&entry.user);
                }
            }
        }
        if self.sessions.is_empty() {
            for waiter in self.empty_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

/// Joins a room, starting it if needed; returns the room's address for direct traffic.
#[derive(Message)]
#[rtype(result = "Addr<Room>")]
pub struct JoinRoom {
    /// Room name (already validated).
    pub room: String,
    /// The join to forward.
    pub join: Join,
}

impl Handler<JoinRoom> for Registry {
    type Result = MessageResult<JoinRoom>;

    fn handle(&mut self, msg: JoinRoom, ctx: &mut Self::Context) -> Self::Result {
        let entry = self.room(&msg.room, ctx);
        entry.joins_sent += 1;
        entry.addr.do_send(msg.join);
        MessageResult(entry.addr.clone())
    }
}

/// A room has no members. Retired unless a join is on its way to it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomIdle {
    /// Room name.
    pub room: Arc<str>,
    /// The reporting actor (a newer room of the same name may exist).
    pub addr: Addr<Room>,
    /// Joins the room had processed when it reported.
    pub joins_seen: u64,
}

impl Handler<RoomIdle> for Registry {
    type Result = ();

    fn handle(&mut self, msg: RoomIdle, _: &mut Self::Context) {
        let retire = self
            .rooms
            .get(&msg.room)
            .is_some_and(|e| e.addr == msg.addr && e.joins_sent == msg.joins_seen);
        if retire {
            self.rooms.remove(&msg.room);
            msg.addr.do_send(Retire);
        }
    }
}

/// The addresses of all live sessions (for heartbeats and shutdown).
#[derive(Message)]
#[rtype(result = "Vec<Addr<Session>>")]
pub struct ListSessions;

impl Handler<ListSessions> for Registry {
    type Result = MessageResult<ListSessions>;

    fn handle(&mut self, _: ListSessions, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.sessions.values().map(|e| e.addr.clone()).collect())
    }
}

/// Counts of what the registry knows, for health and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Live sessions.
    pub sessions: usize,
    /// Distinct users with at least one session.
    pub users: usize,
    /// Running rooms.
    pub rooms: usize,
}

/// Asks for [`Counts`].
#[derive(Message)]
#[rtype(result = "Counts")]
pub struct GetCounts;

impl Handler<GetCounts> for Registry {
    type Result = MessageResult<GetCounts>;

    fn handle(&mut self, _: GetCounts, _: &mut Self::Context) -> Self::Result {
        MessageResult(Counts {
            sessions: self.sessions.len(),
            users: self.users.len(),
            rooms: self.rooms.len(),
        })
    }
}

/// Resolves once no session is left (graceful shutdown waits on it).
#[derive(Message)]
#[rtype(result = "oneshot::Receiver<()>")]
pub struct WaitUntilEmpty;

impl Handler<WaitUntilEmpty> for Registry {
    type Result = MessageResult<WaitUntilEmpty>;

    fn handle(&mut self, _: WaitUntilEmpty, _: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        if self.sessions.is_empty() {
            let _ = tx.send(());
        } else {
            self.empty_waiters.push(tx);
        }
        MessageResult(rx)
    }
}
