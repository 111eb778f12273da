//! Registry actor: the directory of the broker. Indexes live sessions by connection id and by
//! user, finds or starts Room actors (sharded over the room arbiters by room name), and
//! retires rooms that went idle.
//!
//! Joins pass through here; room traffic never does (sessions keep the room's address).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::room::{GetInfo, Join, JoinOutcome, Retire, Room, RoomInfo};
use super::session::Control;
use super::ConnectionId;
use crate::auth::PERSONAL_PREFIX;
use crate::bridge::Outlets;
use crate::config::Config;
use crate::engine::{Answer, ControlOrder, Engine, EngineError};
use crate::metrics::Metrics;
use crate::protocol::{types, ErrorCode};
use crate::webhooks::event::{self, WebhookEvent};
use crate::webhooks::Webhooks;

/// The Registry actor.
pub struct Registry {
    sessions: HashMap<ConnectionId, SessionEntry>,
    /// Open sessions per user: a count, since the sessions themselves are in `sessions`
    /// (a set per user would cost every connection an allocation of its own).
    users: HashMap<Arc<str>, usize>,
    rooms: HashMap<Arc<str>, RoomEntry>,
    /// Rooms counted against `limits.max_rooms` (all but the automatic ones).
    counted_rooms: usize,
    shards: Vec<ArbiterHandle>,
    engine: Arc<dyn Engine>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    webhooks: Webhooks,
    empty_waiters: Vec<oneshot::Sender<()>>,
    outlets: Outlets,
}

struct SessionEntry {
    /// Weak: the session lives by its own socket, and a strong recipient would cost every
    /// connection two allocations of actix's sender state (about 100 bytes).
    control: actix::WeakRecipient<Control>,
    user: Arc<str>,
    /// When it registered, for the session list an operator reads.
    connected_at: std::time::SystemTime,
}

struct RoomEntry {
    addr: Addr<Room>,
    joins_sent: u64,
}

impl Registry {
    /// A registry that starts rooms on `shards` (by name hash) with policies from `config`.
    pub fn new(
        shards: Vec<ArbiterHandle>,
        engine: Arc<dyn Engine>,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        webhooks: Webhooks,
    ) -> Registry {
        Registry {
            sessions: HashMap::new(),
            users: HashMap::new(),
            rooms: HashMap::new(),
            counted_rooms: 0,
            shards,
            engine,
            config,
            metrics,
            webhooks,
            empty_waiters: Vec::new(),
            outlets: Outlets::default(),
        }
    }

    /// Rooms offer their new messages to `outlets` (bridges that send them out).
    pub fn sending_out(mut self, outlets: Outlets) -> Registry {
        self.outlets = outlets;
        self
    }

    /// One session of `user` ended.
    fn forget_user_session(&mut self, user: &str) {
        if let Some(open) = self.users.get_mut(user) {
            *open -= 1;
            if *open == 0 {
                self.users.remove(user);
            }
        }
    }

    fn update_gauges(&self) {
        let m = &self.metrics;
        m.sessions
            .with_label_values(&["open"])
            .set(self.sessions.len() as i64);
        m.rooms.set(self.rooms.len() as i64);
    }

    fn room(&mut self, name: &str, ctx: &mut Context<Self>) -> Result<&mut RoomEntry, JoinError> {
        if !self.rooms.contains_key(name) {
            let counted = counts_against_limit(name);
            let max = self.config.limits.max_rooms;
            if counted && max > 0 && self.counted_rooms >= max {
                self.metrics.limit_refused("rooms");
                return Err(JoinError::RoomLimit(max));
            }
            self.counted_rooms += usize::from(counted);
            let name: Arc<str> = name.into();
            let engine = self.engine.clone();
            let registry = ctx.address();
            let room_name = name.clone();
            let policy = self.config.room_policy(&name);
            let metrics = self.metrics.clone();
            let webhooks = self.webhooks.clone();
            let outlets = self.outlets.clone();
            let addr = if self.shards.is_empty() {
                Room::new(room_name, policy, engine, registry, metrics, webhooks)
                    .sending_out(outlets)
                    .start()
            } else {
                let mut h = DefaultHasher::new();
                name.hash(&mut h);
                let shard = &self.shards[(h.finish() % self.shards.len() as u64) as usize];
                Room::start_in_arbiter(shard, move |_| {
                    Room::new(room_name, policy, engine, registry, metrics, webhooks)
                        .sending_out(outlets)
                })
            };
            self.rooms.insert(
                name.clone(),
                RoomEntry {
                    addr,
                    joins_sent: 0,
                },
            );
            self.update_gauges();
        }
        Ok(self.rooms.get_mut(name).expect("inserted above"))
    }
}

/// Whether a room counts against `limits.max_rooms`: every room but `broadcast` and the
/// personal rooms, which exist per user (bounded by the sessions) and must always open.
fn counts_against_limit(room: &str) -> bool {
    room != types::BROADCAST_ROOM && !room.starts_with(PERSONAL_PREFIX)
}

/// Why a room could not be found or started.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// `limits.max_rooms` rooms are running.
    #[error("room limit reached: this broker runs at most {0} rooms (limits.max_rooms)")]
    RoomLimit(usize),
    /// The Registry or the room did not answer (the broker is stopping).
    #[error("broker actor unavailable: {0}")]
    Unavailable(#[from] MailboxError),
    /// The engine could not answer (Redis unreachable).
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl JoinError {
    /// The protocol error code a client or API caller gets.
    pub fn code(&self) -> ErrorCode {
        match self {
            JoinError::RoomLimit(_) => ErrorCode::LimitExceeded,
            JoinError::Unavailable(_) => ErrorCode::Internal,
            JoinError::Engine(err) => err.code(),
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64 * 1024);
        self.engine.serve_orders(ctx.address().recipient());
    }
}

/// A session came up. Refused (with the reason for the client) when its user already has
/// `limits.max_sessions_per_user` sessions.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Register {
    /// Its connection id.
    pub connection_id: ConnectionId,
    /// Its user.
    pub user: Arc<str>,
    /// Where to send it heartbeats, shutdown and disconnect orders.
    pub control: Recipient<Control>,
}

impl Handler<Register> for Registry {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: Register, _: &mut Self::Context) -> Self::Result {
        let max = self.config.limits.max_sessions_per_user;
        let open = self.users.get(&msg.user).copied().unwrap_or(0);
        if max > 0 && open >= max {
            self.metrics.limit_refused("sessions_per_user");
            return Err(format!(
                "too many sessions: a user may have {max} open (limits.max_sessions_per_user)"
            ));
        }
        self.webhooks
            .notify_if_wanted(event::SESSION_CONNECTED, None, || {
                WebhookEvent::session(event::SESSION_CONNECTED, &msg.connection_id, &msg.user)
            });
        self.engine.session_here(&msg.connection_id, true);
        let user = msg.user.clone();
        let replaced = self.sessions.insert(
            msg.connection_id,
            SessionEntry {
                control: msg.control.downgrade(),
                user: msg.user,
                connected_at: std::time::SystemTime::now(),
            },
        );
        // A connection id registered again replaces its entry: it is counted once, for its
        // latest user.
        if let Some(old) = replaced {
            self.forget_user_session(&old.user);
        }
        *self.users.entry(user).or_default() += 1;
        self.update_gauges();
        Ok(())
    }
}

/// A session went away; its rooms are kept for resume for `resume.ttl`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unregister {
    /// Its connection id.
    pub connection_id: ConnectionId,
    /// The rooms it was in (its personal room excluded).
    pub rooms: Vec<String>,
}

impl Handler<Unregister> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Unregister, _: &mut Self::Context) {
        if let Some(entry) = self.sessions.remove(&msg.connection_id) {
            self.engine.session_here(&msg.connection_id, false);
            self.webhooks
                .notify_if_wanted(event::SESSION_DISCONNECTED, None, || {
                    WebhookEvent::session(
                        event::SESSION_DISCONNECTED,
                        &msg.connection_id,
                        &entry.user,
                    )
                });
            self.forget_user_session(&entry.user);
            let ttl = self.config.resume.ttl;
            if !ttl.is_zero() && !msg.rooms.is_empty() {
                self.engine
                    .detach(&msg.connection_id, &entry.user, msg.rooms, ttl);
            }
        }
        self.update_gauges();
        if self.sessions.is_empty() {
            for waiter in self.empty_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

/// Joins a room, starting it if needed; answers with the room's address (for direct
/// traffic) and what the join found. The Registry does not wait for the room: the join is
/// queued to it at once and the answer resolves outside the Registry's mailbox.
#[derive(Message)]
#[rtype(result = "Result<(Addr<Room>, JoinOutcome), JoinError>")]
pub struct JoinRoom {
    /// Room name (already validated).
    pub room: String,
    /// The join to forward.
    pub join: Join,
}

impl Handler<JoinRoom> for Registry {
    type Result = ResponseFuture<Result<(Addr<Room>, JoinOutcome), JoinError>>;

    fn handle(&mut self, msg: JoinRoom, ctx: &mut Self::Context) -> Self::Result {
        let entry = match self.room(&msg.room, ctx) {
            Ok(entry) => entry,
            Err(err) => return Box::pin(std::future::ready(Err(err))),
        };
        entry.joins_sent += 1;
        let addr = entry.addr.clone();
        let outcome = addr.send(msg.join);
        Box::pin(async move { Ok((addr.clone(), outcome.await??)) })
    }
}

/// The address of a room, started if needed (for server-side publishes and queries). The
/// room retires again once idle.
#[derive(Message)]
#[rtype(result = "Result<Addr<Room>, JoinError>")]
pub struct RoomFor {
    /// Room name (already validated).
    pub room: String,
}

impl Handler<RoomFor> for Registry {
    type Result = Result<Addr<Room>, JoinError>;

    fn handle(&mut self, msg: RoomFor, ctx: &mut Self::Context) -> Self::Result {
        Ok(self.room(&msg.room, ctx)?.addr.clone())
    }
}

/// Takes the resume state a dropped connection of `user` left behind: its rooms.
/// `None` when there is none (expired, never existed, or another user's).
#[derive(Message)]
#[rtype(result = "Option<Vec<String>>")]
pub struct TakeResume {
    /// The dropped connection's id.
    pub connection_id: String,
    /// The user asking; must own that connection.
    pub user: Arc<str>,
}

impl Handler<TakeResume> for Registry {
    type Result = ResponseFuture<Option<Vec<String>>>;

    fn handle(&mut self, msg: TakeResume, _: &mut Self::Context) -> Self::Result {
        match self.engine.reattach(&msg.connection_id, &msg.user) {
            Answer::Now(found) => Box::pin(std::future::ready(found)),
            Answer::Later(reading) => {
                let connection_id = msg.connection_id;
                Box::pin(async move {
                    reading.await.unwrap_or_else(|err| {
                        log::warn!("resume of {connection_id}: {err}; only the rooms the client lists are rejoined");
                        None
                    })
                })
            }
        }
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
            self.counted_rooms -= usize::from(counts_against_limit(&msg.room));
            msg.addr.do_send(Retire);
            self.update_gauges();
        }
    }
}

/// Every live session's control recipient (for heartbeats and shutdown).
#[derive(Message)]
#[rtype(result = "Vec<Recipient<Control>>")]
pub struct ListSessions;

impl Handler<ListSessions> for Registry {
    type Result = MessageResult<ListSessions>;

    fn handle(&mut self, _: ListSessions, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.sessions
                .values()
                .filter_map(|e| e.control.upgrade())
                .collect(),
        )
    }
}

/// One live session on this node, as `GET /api/sessions` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Its connection id (what `DELETE /api/sessions/{id}` takes).
    pub connection_id: ConnectionId,
    /// Its user (`sub`, or `anonymous:<connection id>`).
    pub user: Arc<str>,
    /// When it registered.
    pub connected_at: std::time::SystemTime,
}

/// Every live session on this node, oldest first.
#[derive(Message)]
#[rtype(result = "Vec<SessionInfo>")]
pub struct DescribeSessions;

impl Handler<DescribeSessions> for Registry {
    type Result = MessageResult<DescribeSessions>;

    fn handle(&mut self, _: DescribeSessions, _: &mut Self::Context) -> Self::Result {
        let mut sessions: Vec<SessionInfo> = self
            .sessions
            .iter()
            .map(|(id, e)| SessionInfo {
                connection_id: id.clone(),
                user: e.user.clone(),
                connected_at: e.connected_at,
            })
            .collect();
        // A stable order: the list is polled, and rows should not jump around.
        sessions.sort_by(|a, b| {
            (a.connected_at, &a.connection_id).cmp(&(b.connected_at, &b.connection_id))
        });
        MessageResult(sessions)
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

/// Every room with members and its seq: this node's rooms (each asked; never waited for
/// inside the Registry's mailbox), merged by the engine with the other nodes'.
#[derive(Message)]
#[rtype(result = "Result<Vec<RoomInfo>, EngineError>")]
pub struct ListRooms;

impl Handler<ListRooms> for Registry {
    type Result = ResponseFuture<Result<Vec<RoomInfo>, EngineError>>;

    fn handle(&mut self, _: ListRooms, _: &mut Self::Context) -> Self::Result {
        let asks: Vec<_> = self.rooms.values().map(|e| e.addr.send(GetInfo)).collect();
        let engine = self.engine.clone();
        Box::pin(async move {
            let mut here: Vec<RoomInfo> = futures_util::future::join_all(asks)
                .await
                .into_iter()
                .filter_map(Result::ok)
                .collect();
            here.sort_by(|a, b| a.room.cmp(&b.room));
            match engine.rooms(here) {
                Answer::Now(rooms) => Ok(rooms),
                Answer::Later(listing) => listing.await,
            }
        })
    }
}

/// Disconnects a session with a reason, on whichever node holds it; false when no such
/// session is connected.
#[derive(Message)]
#[rtype(result = "Result<bool, EngineError>")]
pub struct DisconnectSession {
    /// Its connection id.
    pub connection_id: String,
    /// Sent to the client in `system.connection.close` and the close frame.
    pub reason: String,
}

impl Handler<DisconnectSession> for Registry {
    type Result = ResponseFuture<Result<bool, EngineError>>;

    fn handle(&mut self, msg: DisconnectSession, _: &mut Self::Context) -> Self::Result {
        if let Some(entry) = self.sessions.get(msg.connection_id.as_str()) {
            if let Some(control) = entry.control.upgrade() {
                control.do_send(Control::Disconnect { reason: msg.reason });
            }
            return Box::pin(std::future::ready(Ok(true)));
        }
        let order = ControlOrder::Disconnect {
            connection_id: msg.connection_id,
            reason: msg.reason,
        };
        match self.engine.send_order(order) {
            Answer::Now(found) => Box::pin(std::future::ready(Ok(found))),
            Answer::Later(sending) => Box::pin(sending),
        }
    }
}

/// Another node's order for a session of this node.
impl Handler<ControlOrder> for Registry {
    type Result = ();

    fn handle(&mut self, order: ControlOrder, _: &mut Self::Context) {
        match order {
            ControlOrder::Disconnect {
                connection_id,
                reason,
            } => {
                let entry = self.sessions.get(connection_id.as_str());
                if let Some(control) = entry.and_then(|e| e.control.upgrade()) {
                    control.do_send(Control::Disconnect { reason });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::testing::{member, registry};

    /// A stand-in session: the Registry only needs somewhere to send `Control`.
    struct Quiet;

    impl Actor for Quiet {
        type Context = Context<Self>;
    }

    impl Handler<Control> for Quiet {
        type Result = ();

        fn handle(&mut self, _: Control, _: &mut Context<Self>) {}
    }

    fn register(conn: &str, user: &str) -> Register {
        Register {
            connection_id: conn.into(),
            user: user.into(),
            control: Quiet.start().recipient(),
        }
    }

    fn join_room(room: &str, conn: &str) -> JoinRoom {
        let (id, out, _rx) = member(conn);
        JoinRoom {
            room: room.into(),
            join: Join {
                connection_id: id,
                user: "u".into(),
                out,
                reply_to: None,
                from: crate::actors::room::JoinFrom::Now,
                framing: crate::endpoint::Framing::V1,
            },
        }
    }

    #[actix_rt::test]
    async fn sessions_per_user_are_capped_and_a_leaving_one_frees_its_place() {
        let mut config = Config::default();
        config.limits.max_sessions_per_user = 2;
        let (registry, _, metrics) = registry(config);
        assert_eq!(
            registry.send(register("a1", "alice")).await.unwrap(),
            Ok(())
        );
        assert_eq!(
            registry.send(register("a2", "alice")).await.unwrap(),
            Ok(())
        );
        let refused = registry.send(register("a3", "alice")).await.unwrap();
        assert!(refused.is_err_and(|r| r.contains("max_sessions_per_user")));
        assert_eq!(registry.send(register("b1", "bob")).await.unwrap(), Ok(()));
        registry
            .send(Unregister {
                connection_id: "a1".into(),
                rooms: Vec::new(),
            })
            .await
            .unwrap();
        assert_eq!(
            registry.send(register("a3", "alice")).await.unwrap(),
            Ok(())
        );
        let counts = registry.send(GetCounts).await.unwrap();
        assert_eq!((counts.sessions, counts.users), (3, 2));
        assert_eq!(
            metrics
                .limit_refusals
                .with_label_values(&["sessions_per_user"])
                .get(),
            1
        );
    }

    #[actix_rt::test]
    async fn a_connection_id_registered_again_counts_once_for_its_latest_user() {
        let (registry, _, _) = registry(Config::default());
        let unregister = |conn: &str| Unregister {
            connection_id: conn.into(),
            rooms: Vec::new(),
        };
        for (conn, user) in [
            ("c1", "alice"),
            ("c1", "alice"),
            ("c2", "alice"),
            ("c2", "bob"),
        ] {
            assert_eq!(registry.send(register(conn, user)).await.unwrap(), Ok(()));
        }
        let counts = registry.send(GetCounts).await.unwrap();
        assert_eq!((counts.sessions, counts.users), (2, 2));
        registry.send(unregister("c1")).await.unwrap();
        registry.send(unregister("c1")).await.unwrap();
        let counts = registry.send(GetCounts).await.unwrap();
        assert_eq!((counts.sessions, counts.users), (1, 1));
        registry.send(unregister("c2")).await.unwrap();
        let counts = registry.send(GetCounts).await.unwrap();
        assert_eq!((counts.sessions, counts.users), (0, 0));
    }

    #[actix_rt::test]
    async fn rooms_are_capped_but_broadcast_and_personal_rooms_always_open() {
        let mut config = Config::default();
        config.limits.max_rooms = 2;
        let (registry, _, _) = registry(config);
        for room in ["r1", "r2", "r1"] {
            assert!(
                registry.send(join_room(room, "c")).await.unwrap().is_ok(),
                "{room}"
            );
        }
        let refused = registry.send(join_room("r3", "c")).await.unwrap();
        assert!(matches!(refused, Err(JoinError::RoomLimit(2))));
        for room in [types::BROADCAST_ROOM, "user:alice", "user:bob"] {
            assert!(
                registry.send(join_room(room, "c")).await.unwrap().is_ok(),
                "{room}"
            );
        }
        let refused = registry.send(RoomFor { room: "r3".into() }).await.unwrap();
        assert_eq!(
            refused.map(|_| ()).unwrap_err().code(),
            ErrorCode::LimitExceeded
        );
    }

    #[actix_rt::test]
    async fn resume_state_goes_to_its_own_user_once() {
        let (registry, _, _) = registry(Config::default());
        registry
            .send(register("a1", "alice"))
            .await
            .unwrap()
            .unwrap();
        registry
            .send(Unregister {
                connection_id: "a1".into(),
                rooms: vec!["r1".into(), "r2".into()],
            })
            .await
            .unwrap();
        let take = |user: &str| TakeResume {
            connection_id: "a1".into(),
            user: user.into(),
        };
        assert_eq!(registry.send(take("mallory")).await.unwrap(), None);
        assert_eq!(
            registry.send(take("alice")).await.unwrap(),
            Some(vec!["r1".to_owned(), "r2".to_owned()])
        );
        assert_eq!(registry.send(take("alice")).await.unwrap(), None);
    }
}
