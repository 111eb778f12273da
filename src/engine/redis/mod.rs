//! The Redis engine: rooms whose sequence, history and message ids live in Redis, and whose
//! messages reach every node through Redis pub/sub, so several brokers over one Redis serve
//! the same rooms.
//!
//! Each publish is one Lua script ([`scripts::PUBLISH`]): next seq, history append (a
//! stream trimmed to the room's count and byte budget, expiring with its TTL), id memory
//! and the pub/sub message, atomically. Each node subscribes to a room's channel while it
//! has members there ([`RoomLog::feed`]); one connection carries all of a node's
//! subscriptions, so a room's messages arrive in the order Redis published them, which is
//! seq order. A node that misses messages (a reconnect) reads them from history.
//!
//! Connections are watched by one task ([`link`]): while Redis is unreachable every
//! operation fails at once with [`EngineError::Unavailable`], and the task reconnects with
//! backoff, subscribes again, and tells every fed room to [`RoomFeed::Resync`].

mod endpoints;
mod link;
pub mod scripts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use actix::Recipient;
use bytestring::ByteString;
use redis::aio::MultiplexedConnection;
use redis::{ErrorKind, RedisError, Script, ServerErrorKind, Value};
use tokio::sync::{mpsc, oneshot, Notify};

use super::RoomLog;
use super::{
    Answer, Appended, ControlOrder, DedupKey, Engine, EngineError, EngineStatus, PresenceInfo,
    PresenceJoin, Replay, RoomFeed, RoomInfo,
};
use crate::config::{RedisConfig, RoomPolicy};

/// The Redis engine. Cheap to share (`Arc`); start it with [`RedisEngine::start`].
pub struct RedisEngine {
    shared: Arc<Shared>,
}

/// What the engine's rooms and its link task share.
struct Shared {
    prefix: String,
    command_timeout: Duration,
    /// Command connections while Redis is reachable; empty while it is not.
    conns: RwLock<Vec<MultiplexedConnection>>,
    next_conn: AtomicUsize,
    /// Why Redis is unreachable; `None` while it is reachable.
    down: Mutex<Option<String>>,
    /// A command failed on a broken connection: the link reconnects at once.
    lost: Notify,
    /// The rooms fed on this node, by channel.
    feeds: Mutex<HashMap<String, Recipient<RoomFeed>>>,
    /// Asks the link to make the subscriptions match `feeds`.
    sync: mpsc::UnboundedSender<link::Sync>,
    reconnects: AtomicU64,
    errors: AtomicU64,
    /// Commands that timed out since the last one that answered.
    timeouts_in_a_row: AtomicU32,
    publish: Script,
    since: Script,
    reattach: Script,
    presence_add: Script,
    presence_list: Script,
    presence_remove: Script,
    presence_refresh: Script,
    /// How long a connection stays present without a refresh.
    presence_ttl: Duration,
    send_order: Script,
    rooms: Script,
    /// This process's id among the nodes.
    node_id: String,
    /// Where orders for this node's sessions go (the Registry).
    orders: Mutex<Option<Recipient<ControlOrder>>>,
    /// Members per room on this node, for the cluster-wide room list.
    local_rooms: Mutex<HashMap<String, usize>>,
    /// Where announced webhook endpoint changes go (the RetryQueue).
    endpoint_watcher: Mutex<Option<Recipient<crate::webhooks::shared::EndpointsChanged>>>,
}

impl RedisEngine {
    /// Starts the engine's link task on its own arbiter (inside a running actix system).
    /// It connects in the background: until Redis answers, the engine reports itself down
    /// and its operations fail with `unavailable`.
    pub fn start(config: &RedisConfig) -> Result<RedisEngine, RedisError> {
        let client = redis::Client::open(config.url.as_str())?;
        let (sync, syncs) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            prefix: config.prefix.clone(),
            command_timeout: config.command_timeout,
            conns: RwLock::new(Vec::new()),
            next_conn: AtomicUsize::new(0),
            down: Mutex::new(Some("connecting to Redis".into())),
            lost: Notify::new(),
            feeds: Mutex::new(HashMap::new()),
            sync,
            reconnects: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeouts_in_a_row: AtomicU32::new(0),
            publish: Script::new(scripts::PUBLISH),
            since: Script::new(scripts::SINCE),
            reattach: Script::new(scripts::REATTACH),
            presence_add: Script::new(&scripts::presence_add()),
            presence_list: Script::new(&scripts::presence_list()),
            presence_remove: Script::new(&scripts::presence_remove()),
            presence_refresh: Script::new(&scripts::presence_refresh()),
            presence_ttl: config.presence_ttl,
            send_order: Script::new(scripts::SEND_ORDER),
            rooms: Script::new(scripts::ROOMS),
            node_id: uuid::Uuid::new_v4().to_string(),
            orders: Mutex::new(None),
            local_rooms: Mutex::new(HashMap::new()),
            endpoint_watcher: Mutex::new(None),
        });
        let link = link::Link {
            shared: shared.clone(),
            client,
            pool_size: config.pool_size,
            max_delay: config.max_reconnect_delay,
            syncs,
        };
        let arbiter = actix::Arbiter::new();
        arbiter.spawn(link.run());
        arbiter.spawn(heartbeat(shared.clone()));
        Ok(RedisEngine { shared })
    }
}

impl Engine for RedisEngine {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn open(&self, room: &str, policy: &RoomPolicy) -> Box<dyn RoomLog> {
        let p = &self.shared.prefix;
        Box::new(RedisLog {
            shared: self.shared.clone(),
            room: room.to_owned(),
            meta: format!("{p}:{{{room}}}:meta"),
            history: format!("{p}:{{{room}}}:history"),
            ids: format!("{p}:{{{room}}}:ids"),
            presence: [
                format!("{p}:{{{room}}}:presence"),
                format!("{p}:{{{room}}}:presence:conns"),
                format!("{p}:{{{room}}}:presence:users"),
                format!("{p}:{{{room}}}:presence:since"),
            ],
            channel: channel_of(p, room),
            policy: policy.clone(),
            last_seq: Arc::new(AtomicU64::new(0)),
            keep_alive: None,
            publisher: None,
        })
    }

    fn park(&self, _room: &str, _log: Box<dyn RoomLog>, _keep_for: Duration) {}

    fn status(&self) -> EngineStatus {
        EngineStatus {
            down: self.shared.down_reason(),
            reconnects: self.shared.reconnects.load(Ordering::Relaxed),
            errors: self.shared.errors.load(Ordering::Relaxed),
            detached: None,
        }
    }

    fn detach(&self, connection_id: &str, user: &str, rooms: Vec<String>, ttl: Duration) {
        let shared = self.shared.clone();
        let key = format!("{}:resume:{connection_id}", shared.prefix);
        let state = serde_json::json!({ "user": user, "rooms": rooms }).to_string();
        let ttl_ms = (ttl.as_millis() as u64).max(1);
        actix::spawn(async move {
            let stored_key = key.clone();
            let stored: Result<(), _> = shared
                .run(|mut conn| async move {
                    redis::cmd("SET")
                        .arg(&stored_key)
                        .arg(&state)
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(&mut conn)
                        .await
                })
                .await;
            if let Err(err) = stored {
                log::warn!("resume state of {key} not stored: {err}");
            }
        });
    }

    fn endpoint_store(&self) -> Option<Arc<dyn crate::webhooks::shared::EndpointStore>> {
        Some(Arc::new(endpoints::RedisEndpoints {
            shared: self.shared.clone(),
        }))
    }

    fn serve_orders(&self, to: Recipient<ControlOrder>) {
        if let Ok(mut orders) = self.shared.orders.lock() {
            *orders = Some(to);
        }
    }

    fn session_here(&self, connection_id: &str, here: bool) {
        let shared = self.shared.clone();
        let key = format!("{}:sessions:{}", shared.prefix, shared.node_id);
        let connection_id = connection_id.to_owned();
        actix::spawn(async move {
            let recorded: Result<i64, _> = shared
                .run(|mut conn| async move {
                    let mut cmd = redis::cmd(if here { "HSET" } else { "HDEL" });
                    cmd.arg(&key).arg(&connection_id);
                    if here {
                        cmd.arg(1);
                    }
                    cmd.query_async(&mut conn).await
                })
                .await;
            if let Err(err) = recorded {
                log::debug!("session directory not updated: {err}");
            }
        });
    }

    fn send_order(&self, order: ControlOrder) -> Answer<bool> {
        let connection_id = match &order {
            ControlOrder::Disconnect { connection_id, .. } => connection_id.clone(),
        };
        let order = match serde_json::to_vec(&order) {
            Ok(order) => order,
            Err(err) => {
                let err = EngineError::Store(format!("order not encoded: {err}"));
                return Answer::Later(Box::pin(std::future::ready(Err(err))));
            }
        };
        let sending = self.shared.clone().eval(
            |s| &s.send_order,
            vec![format!("{}:nodes", self.shared.prefix)],
            vec![
                self.shared.prefix.clone().into_bytes(),
                connection_id.into_bytes(),
                order,
            ],
        );
        Answer::Later(Box::pin(async move {
            let delivered: i64 = sending.await?;
            Ok(delivered == 1)
        }))
    }

    fn rooms(&self, _here: Vec<RoomInfo>) -> Answer<Vec<RoomInfo>> {
        let listing = self.shared.clone().eval(
            |s| &s.rooms,
            vec![format!("{}:nodes", self.shared.prefix)],
            vec![self.shared.prefix.clone().into_bytes()],
        );
        Answer::Later(Box::pin(async move {
            let reply: Value = listing.await?;
            parse_rooms(reply)
        }))
    }

    fn reattach(&self, connection_id: &str, user: &str) -> Answer<Option<Vec<String>>> {
        let shared = self.shared.clone();
        let key = format!("{}:resume:{connection_id}", shared.prefix);
        let user = user.to_owned();
        Answer::Later(Box::pin(async move {
            let rooms: Option<String> = shared
                .eval(|s| &s.reattach, vec![key], vec![user.into_bytes()])
                .await?;
            match rooms {
                None => Ok(None),
                Some(json) => serde_json::from_str(&json)
                    .map(Some)
                    .map_err(|e| EngineError::Store(format!("resume state: {e}"))),
            }
        }))
    }
}

/// How often a node says it is alive and lists its rooms; it counts as dead three times
/// this after its last word.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Keeps this node listed as alive, with its rooms and sessions, while Redis is reachable.
async fn heartbeat(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shared.down_reason().is_some() {
            continue;
        }
        let p = &shared.prefix;
        let node = &shared.node_id;
        let expiry = (HEARTBEAT * 3).as_millis() as u64;
        let rooms: Vec<(String, usize)> = shared
            .local_rooms
            .lock()
            .map(|r| r.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("SET")
            .arg(format!("{p}:node:{node}"))
            .arg(1)
            .arg("PX")
            .arg(expiry);
        pipe.cmd("SADD").arg(format!("{p}:nodes")).arg(node);
        let rooms_key = format!("{p}:rooms:{node}");
        pipe.cmd("DEL").arg(&rooms_key);
        if !rooms.is_empty() {
            pipe.cmd("HSET").arg(&rooms_key).arg(rooms);
            pipe.cmd("PEXPIRE").arg(&rooms_key).arg(expiry);
        }
        pipe.cmd("PEXPIRE")
            .arg(format!("{p}:sessions:{node}"))
            .arg(expiry);
        let beat: Result<(), _> = shared
            .run(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await;
        if let Err(err) = beat {
            log::debug!("node heartbeat not written: {err}");
        }
    }
}

/// The pub/sub channel of `room`.
fn channel_of(prefix: &str, room: &str) -> String {
    format!("{prefix}:room:{room}")
}

impl Shared {
    /// The channel webhook endpoint changes are announced on.
    fn endpoints_channel(&self) -> String {
        format!("{}:webhooks", self.prefix)
    }

    /// The channel this node takes orders on.
    fn order_channel(&self) -> String {
        format!("{}:node:{}", self.prefix, self.node_id)
    }

    fn down_reason(&self) -> Option<String> {
        self.down
            .lock()
            .map_or_else(|p| p.into_inner().clone(), |d| d.clone())
    }

    fn unavailable(&self) -> EngineError {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let reason = self.down_reason().unwrap_or_else(|| "no connection".into());
        EngineError::Unavailable(format!("Redis is unreachable ({reason})"))
    }

    /// A command connection, round robin; `Unavailable` while Redis is unreachable.
    fn connection(&self) -> Result<MultiplexedConnection, EngineError> {
        let conns = self.conns.read().map_err(|_| self.unavailable())?;
        if conns.is_empty() {
            drop(conns);
            return Err(self.unavailable());
        }
        let i = self.next_conn.fetch_add(1, Ordering::Relaxed);
        Ok(conns[i % conns.len()].clone())
    }

    /// Runs one command (or script) within the command timeout, mapping failures.
    async fn run<T, F>(
        self: &Arc<Self>,
        op: impl FnOnce(MultiplexedConnection) -> F,
    ) -> Result<T, EngineError>
    where
        F: std::future::Future<Output = Result<T, RedisError>>,
    {
        let conn = self.connection()?;
        match tokio::time::timeout(self.command_timeout, op(conn)).await {
            Ok(Ok(answer)) => {
                self.timeouts_in_a_row.store(0, Ordering::Relaxed);
                Ok(answer)
            }
            Ok(Err(err)) => Err(self.failed(err)),
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                // A Redis that hangs (a partition without a reset, a stalled server) never
                // closes the connections: after a few timeouts in a row the link drops them,
                // and the engine reports itself down until a new connection answers.
                if self.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1
                    >= TIMEOUTS_TO_RECONNECT
                {
                    self.timeouts_in_a_row.store(0, Ordering::Relaxed);
                    self.lost.notify_one();
                }
                Err(EngineError::Unavailable(format!(
                    "Redis did not answer within {:?} (redis.command_timeout)",
                    self.command_timeout
                )))
            }
        }
    }

    /// Runs the script `pick` chooses with `keys` and `args`.
    async fn eval<T: redis::FromRedisValue>(
        self: Arc<Self>,
        pick: fn(&Shared) -> &Script,
        keys: Vec<String>,
        args: Vec<Vec<u8>>,
    ) -> Result<T, EngineError> {
        let runner = self.clone();
        runner
            .run(|mut conn| async move {
                let mut call = pick(&self).prepare_invoke();
                for key in &keys {
                    call.key(key);
                }
                for arg in &args {
                    call.arg(arg);
                }
                call.invoke_async(&mut conn).await
            })
            .await
    }

    fn failed(&self, err: RedisError) -> EngineError {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
            // The link notices a dead pub/sub connection by itself; a dead command
            // connection only shows here.
            self.lost.notify_one();
            EngineError::Unavailable(format!("Redis connection lost: {err}"))
        } else {
            EngineError::Store(err.to_string())
        }
    }
}

/// One room's log in Redis.
struct RedisLog {
    shared: Arc<Shared>,
    /// The room's name.
    room: String,
    meta: String,
    history: String,
    ids: String,
    /// Presence: members (connection → expiry), conns (connection → user), users (user →
    /// connections), since (user → first arrival).
    presence: [String; 4],
    channel: String,
    policy: RoomPolicy,
    /// The newest seq this node has seen (appends, reads, the feed's start).
    last_seq: Arc<AtomicU64>,
    /// Keeps the room's seq alive in Redis while this node has members in it.
    keep_alive: Option<tokio::task::JoinHandle<()>>,
    /// The queue of this room's publishes to Redis (started with the first).
    publisher: Option<mpsc::UnboundedSender<PublishJob>>,
}

/// One publish waiting for its script call.
struct PublishJob {
    before: String,
    after: String,
    dedup: String,
    done: oneshot::Sender<Result<(u64, bool), EngineError>>,
}

/// Sends a room's publishes from this node to Redis in the order the Room appended them.
///
/// Order is the point: the futures of concurrent publishes are polled in an order the
/// scheduler picks, so each publish is queued here at once, and whatever queued up while
/// the previous batch was on its way goes out as one pipeline (Redis runs a pipeline in
/// order). Under load this also batches.
struct PublishBatches {
    shared: Arc<Shared>,
    keys: [String; 3],
    channel: String,
    policy: RoomPolicy,
    ttl_ms: u64,
}

/// Publishes sent in one pipeline at most.
const MAX_BATCH: usize = 256;

impl PublishBatches {
    async fn run(self, mut jobs: mpsc::UnboundedReceiver<PublishJob>) {
        while let Some(first) = jobs.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let mut pipe = redis::pipe();
            for job in &batch {
                pipe.add_command(self.call(job));
            }
            let script = &self.shared.publish;
            let answers: Result<Vec<(u64, u8)>, EngineError> = self
                .shared
                .run(|mut conn| async move {
                    match pipe.query_async(&mut conn).await {
                        // The server lost its scripts (SCRIPT FLUSH, a failover): none of
                        // the batch ran; load and send it again.
                        Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                            script.load_async(&mut conn).await?;
                            pipe.query_async(&mut conn).await
                        }
                        answers => answers,
                    }
                })
                .await;
            match answers {
                Ok(answers) if answers.len() == batch.len() => {
                    for (job, (seq, duplicate)) in batch.into_iter().zip(answers) {
                        let _ = job.done.send(Ok((seq, duplicate == 1)));
                    }
                }
                Ok(answers) => {
                    let err = EngineError::Store(format!(
                        "{} answers to {} publishes",
                        answers.len(),
                        batch.len()
                    ));
                    for job in batch {
                        let _ = job.done.send(Err(err.clone()));
                    }
                }
                Err(err) => {
                    for job in batch {
                        let _ = job.done.send(Err(err.clone()));
                    }
                }
            }
        }
    }

    /// The publish script's call for `job` (loaded when the link connected).
    fn call(&self, job: &PublishJob) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.shared.publish.get_hash()).arg(self.keys.len());
        for key in &self.keys {
            cmd.arg(key);
        }
        cmd.arg(&self.channel)
            .arg(&job.before)
            .arg(&job.after)
            .arg(&job.dedup)
            .arg(self.policy.history_size.max(1))
            .arg(self.policy.history_max_bytes)
            .arg(self.ttl_ms)
            .arg(self.policy.dedup_size.max(1));
        cmd
    }
}

/// Commands timing out in a row before the link reconnects.
const TIMEOUTS_TO_RECONNECT: u32 = 3;

/// Seqs beyond this are not asked of Redis: Lua numbers are exact up to 2^53.
const MAX_SEQ: u64 = (1 << 53) - 2;

impl RedisLog {
    fn ttl_ms(&self) -> u64 {
        (self.policy.history_ttl.as_millis() as u64).max(1)
    }
}

impl RoomLog for RedisLog {
    fn is_shared(&self) -> bool {
        true
    }

    fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Relaxed)
    }

    fn append(
        &mut self,
        dedup: Option<DedupKey<'_>>,
        encode: &mut dyn FnMut(u64) -> ByteString,
    ) -> Answer<Appended> {
        // The seq is allocated inside the script: the frame goes as the text around it.
        let template = encode(SEQ_PLACEHOLDER);
        let Some((before, after)) = split_at_seq(&template) else {
            return Answer::Later(Box::pin(std::future::ready(Err(EngineError::Store(
                "a room message frame without a seq field".into(),
            )))));
        };
        let (done, answer) = oneshot::channel();
        let job = PublishJob {
            before: before.to_owned(),
            after: after.to_owned(),
            dedup: dedup.map(|d| d.encode()).unwrap_or_default(),
            done,
        };
        if self.publisher.is_none() {
            let (queue, jobs) = mpsc::unbounded_channel();
            let batches = PublishBatches {
                shared: self.shared.clone(),
                keys: [self.meta.clone(), self.history.clone(), self.ids.clone()],
                channel: self.channel.clone(),
                policy: self.policy.clone(),
                ttl_ms: self.ttl_ms(),
            };
            actix::spawn(batches.run(jobs));
            self.publisher = Some(queue);
        }
        let queued = self.publisher.as_ref().is_some_and(|q| q.send(job).is_ok());
        let last_seq = self.last_seq.clone();
        Answer::Later(Box::pin(async move {
            let stopped = || EngineError::Unavailable("the room's publisher stopped".into());
            if !queued {
                return Err(stopped());
            }
            let (seq, duplicate) = answer.await.map_err(|_| stopped())??;
            last_seq.fetch_max(seq, Ordering::Relaxed);
            Ok(if duplicate {
                Appended::Duplicate { seq }
            } else {
                Appended::Forwarded { seq }
            })
        }))
    }

    fn since(&mut self, after_seq: u64) -> Answer<Replay> {
        let shared = self.shared.clone();
        let keys = [self.meta.clone(), self.history.clone()];
        let ttl_ms = self.ttl_ms();
        let last_seq = self.last_seq.clone();
        Answer::Later(Box::pin(async move {
            let args = vec![number(after_seq.min(MAX_SEQ)), number(ttl_ms)];
            let reply: Value = shared.eval(|s| &s.since, keys.to_vec(), args).await?;
            let replay = parse_since(after_seq, reply)?;
            last_seq.fetch_max(replay.last_seq, Ordering::Relaxed);
            Ok(replay)
        }))
    }

    fn feed(&mut self, to: Recipient<RoomFeed>) -> Option<Answer<u64>> {
        let shared = self.shared.clone();
        let channel = self.channel.clone();
        let meta = self.meta.clone();
        let last_seq = self.last_seq.clone();
        if let Ok(mut feeds) = shared.feeds.lock() {
            feeds.insert(channel, to);
        }
        self.start_keep_alive();
        Some(Answer::Later(Box::pin(async move {
            // Subscribed first, then read: every message after the seq read arrives.
            let (done, subscribed) = oneshot::channel();
            if shared.sync.send(link::Sync { done: Some(done) }).is_err() {
                return Err(EngineError::Unavailable("the Redis link stopped".into()));
            }
            subscribed
                .await
                .map_err(|_| EngineError::Unavailable("the Redis link stopped".into()))??;
            let seq: Option<u64> = shared
                .run(|mut conn| async move {
                    redis::cmd("HGET")
                        .arg(&meta)
                        .arg("seq")
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            let seq = seq.unwrap_or(0);
            last_seq.fetch_max(seq, Ordering::Relaxed);
            Ok(seq)
        })))
    }

    fn unfeed(&mut self) {
        if let Some(task) = self.keep_alive.take() {
            task.abort();
        }
        if let Ok(mut feeds) = self.shared.feeds.lock() {
            feeds.remove(&self.channel);
        }
        let _ = self.shared.sync.send(link::Sync { done: None });
    }

    fn presence_add(
        &mut self,
        user: &str,
        connection: &str,
        arrival: ByteString,
    ) -> Answer<PresenceJoin> {
        let adding = self.shared.clone().eval(
            |s| &s.presence_add,
            self.presence.to_vec(),
            vec![
                connection.into(),
                user.into(),
                number(self.shared.presence_ttl.as_millis() as u64),
                crate::protocol::frame::now_rfc3339().into_bytes(),
                self.channel.clone().into_bytes(),
                arrival.as_bytes().to_vec(),
            ],
        );
        Answer::Later(Box::pin(async move {
            let reply: Value = adding.await?;
            let Value::Array(mut items) = reply else {
                return Err(EngineError::Store("unexpected presence reply".into()));
            };
            let first = matches!(items.first(), Some(Value::Int(1)));
            if !items.is_empty() {
                items.remove(0);
            }
            Ok(PresenceJoin {
                first,
                present: parse_present(items)?,
            })
        }))
    }

    fn presence_remove(
        &mut self,
        _user: &str,
        connection: &str,
        departure: ByteString,
    ) -> Answer<Option<String>> {
        Answer::Later(Box::pin(self.shared.clone().eval(
            |s| &s.presence_remove,
            self.presence.to_vec(),
            vec![
                connection.into(),
                self.channel.clone().into_bytes(),
                departure.as_bytes().to_vec(),
            ],
        )))
    }

    fn presence(&mut self) -> Answer<Vec<PresenceInfo>> {
        let keys = vec![
            self.presence[0].clone(),
            self.presence[1].clone(),
            self.presence[3].clone(),
        ];
        let listing = self
            .shared
            .clone()
            .eval(|s| &s.presence_list, keys, Vec::new());
        Answer::Later(Box::pin(async move {
            match listing.await? {
                Value::Array(items) => parse_present(items),
                _ => Err(EngineError::Store("unexpected presence reply".into())),
            }
        }))
    }

    fn presence_ttl(&self) -> Option<Duration> {
        Some(self.shared.presence_ttl)
    }

    fn presence_refresh(&mut self, connections: Vec<String>) -> Answer<Vec<String>> {
        let ttl_ms = number(self.shared.presence_ttl.as_millis() as u64);
        let args = std::iter::once(ttl_ms)
            .chain(connections.into_iter().map(String::into_bytes))
            .collect();
        Answer::Later(Box::pin(self.shared.clone().eval(
            |s| &s.presence_refresh,
            self.presence.to_vec(),
            args,
        )))
    }

    fn members(&mut self, count: usize) {
        if let Ok(mut rooms) = self.shared.local_rooms.lock() {
            if count == 0 {
                rooms.remove(&self.room);
            } else {
                rooms.insert(self.room.clone(), count);
            }
        }
    }

    fn announce(&mut self, frame: ByteString) {
        let shared = self.shared.clone();
        let channel = self.channel.clone();
        actix::spawn(async move {
            let sent: Result<i64, _> = shared
                .run(|mut conn| async move {
                    redis::cmd("PUBLISH")
                        .arg(&channel)
                        .arg([b"p::".as_slice(), frame.as_bytes()].concat())
                        .query_async(&mut conn)
                        .await
                })
                .await;
            if let Err(err) = sent {
                log::warn!("a presence event was not announced: {err}");
            }
        });
    }
}

impl RedisLog {
    /// While this node has members in the room, its seq must not expire (a member would
    /// see seq 1 again after a quiet TTL): refresh the meta key's TTL every half TTL.
    fn start_keep_alive(&mut self) {
        if self.keep_alive.is_some() {
            return;
        }
        let shared = self.shared.clone();
        let meta = self.meta.clone();
        let ttl_ms = self.ttl_ms();
        let every = Duration::from_millis((ttl_ms / 2).max(500));
        self.keep_alive = Some(actix::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let meta = meta.clone();
                let _: Result<i64, _> = shared
                    .run(|mut conn| async move {
                        redis::cmd("PEXPIRE")
                            .arg(&meta)
                            .arg(ttl_ms)
                            .query_async(&mut conn)
                            .await
                    })
                    .await;
            }
        }));
    }
}

impl Drop for RedisLog {
    fn drop(&mut self) {
        if self.keep_alive.is_some() {
            self.unfeed();
        }
    }
}

/// The seq a frame is encoded with before the script substitutes the real one; its digits
/// appear nowhere else in the envelope (strings in it are JSON-escaped).
const SEQ_PLACEHOLDER: u64 = u64::MAX;

/// The frame's text before and after the placeholder seq.
fn split_at_seq(frame: &str) -> Option<(&str, &str)> {
    let marker = concat!("\"seq\":", "18446744073709551615");
    let at = frame.find(marker)?;
    let number = at + "\"seq\":".len();
    Some((&frame[..number], &frame[at + marker.len()..]))
}

fn parse_since(after_seq: u64, reply: Value) -> Result<Replay, EngineError> {
    let bad = |what: &str| EngineError::Store(format!("unexpected history reply: {what}"));
    let Value::Array(items) = reply else {
        return Err(bad("not an array"));
    };
    let int = |v: &Value| match v {
        Value::Int(n) => u64::try_from(*n).map_err(|_| bad("negative seq")),
        _ => Err(bad("seq not an integer")),
    };
    if items.len() < 2 || items.len() % 2 != 0 {
        return Err(bad("wrong length"));
    }
    let last_seq = int(&items[0])?;
    let oldest = int(&items[1])?;
    let mut frames = Vec::with_capacity(items.len() / 2 - 1);
    for pair in items[2..].chunks_exact(2) {
        let seq = int(&pair[0])?;
        let Value::BulkString(bytes) = &pair[1] else {
            return Err(bad("frame not a string"));
        };
        let frame = ByteString::try_from(bytes.clone()).map_err(|_| bad("frame not UTF-8"))?;
        frames.push((seq, frame));
    }
    let ahead = after_seq > last_seq;
    let oldest_kept = if oldest == 0 { last_seq + 1 } else { oldest };
    Ok(Replay {
        frames,
        recovered: !ahead && after_seq + 1 >= oldest_kept,
        last_seq,
    })
}

/// Decodes a pub/sub message: `<seq>:<frame>` for a room message, `p:<except>:<frame>` for
/// an event outside the sequence (`<except>` empty for everyone).
fn parse_message(payload: &[u8]) -> Option<RoomFeed> {
    let colon = payload.iter().position(|b| *b == b':')?;
    let (head, rest) = (&payload[..colon], &payload[colon + 1..]);
    if head == b"p" {
        let colon = rest.iter().position(|b| *b == b':')?;
        let except = std::str::from_utf8(&rest[..colon]).ok()?;
        let frame = ByteString::try_from(rest[colon + 1..].to_vec()).ok()?;
        return Some(RoomFeed::Event {
            except: (!except.is_empty()).then(|| except.to_owned()),
            frame,
        });
    }
    let seq = std::str::from_utf8(head).ok()?.parse().ok()?;
    let frame = ByteString::try_from(rest.to_vec()).ok()?;
    Some(RoomFeed::Message { seq, frame })
}

/// Decodes `{room, members, seq, …}`, sorted by room.
fn parse_rooms(reply: Value) -> Result<Vec<RoomInfo>, EngineError> {
    let bad = || EngineError::Store("unexpected room list reply".into());
    let Value::Array(items) = reply else {
        return Err(bad());
    };
    if !items.len().is_multiple_of(3) {
        return Err(bad());
    }
    let int = |v: &Value| match v {
        Value::Int(n) => u64::try_from(*n).map_err(|_| bad()),
        _ => Err(bad()),
    };
    let mut rooms = Vec::with_capacity(items.len() / 3);
    for entry in items.chunks_exact(3) {
        let Value::BulkString(name) = &entry[0] else {
            return Err(bad());
        };
        rooms.push(RoomInfo {
            room: String::from_utf8(name.clone()).map_err(|_| bad())?,
            members: int(&entry[1])? as usize,
            seq: int(&entry[2])?,
        });
    }
    rooms.sort_by(|a, b| a.room.cmp(&b.room));
    Ok(rooms)
}

/// A number as a script argument.
fn number(n: u64) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// Decodes `{user, connections, joined_at, …}`.
fn parse_present(items: Vec<Value>) -> Result<Vec<PresenceInfo>, EngineError> {
    let bad = || EngineError::Store("unexpected presence reply".into());
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).map_err(|_| bad()),
        _ => Err(bad()),
    };
    if !items.len().is_multiple_of(3) {
        return Err(bad());
    }
    let mut present = Vec::with_capacity(items.len() / 3);
    for entry in items.chunks_exact(3) {
        let connections = match entry[1] {
            Value::Int(n) => u32::try_from(n).map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        present.push(PresenceInfo {
            user: text(&entry[0])?,
            connections,
            joined_at: text(&entry[2])?,
        });
    }
    present.sort_by(|a, b| a.user.cmp(&b.user));
    Ok(present)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_splits_around_its_placeholder_seq() {
        let frame = crate::protocol::frame::room_message(
            "room.message",
            "chat:\"seq\":18446744073709551615",
            SEQ_PLACEHOLDER,
            "id-1",
            None,
        );
        let (before, after) = split_at_seq(&frame).expect("has a seq");
        let rebuilt = format!("{before}42{after}");
        let parsed: serde_json::Value = serde_json::from_str(&rebuilt).expect("valid JSON");
        assert_eq!(parsed["seq"], 42);
        assert_eq!(parsed["room"], "chat:\"seq\":18446744073709551615");
    }

    #[test]
    fn history_replies_are_parsed_and_checked() {
        let reply = Value::Array(vec![
            Value::Int(5),
            Value::Int(4),
            Value::Int(4),
            Value::BulkString(b"four".to_vec()),
            Value::Int(5),
            Value::BulkString(b"five".to_vec()),
        ]);
        let replay = parse_since(3, reply.clone()).expect("parsed");
        assert_eq!(replay.last_seq, 5);
        assert!(replay.recovered);
        assert_eq!(replay.frames.len(), 2);
        assert!(!parse_since(2, reply.clone()).expect("parsed").recovered);
        assert!(!parse_since(9, reply).expect("parsed").recovered);
        let empty = Value::Array(vec![Value::Int(0), Value::Int(0)]);
        assert!(parse_since(0, empty).expect("parsed").recovered);
        assert!(parse_since(0, Value::Int(3)).is_err());
    }

    #[test]
    fn pubsub_messages_carry_seq_and_frame() {
        assert!(matches!(
            parse_message(b"12:{\"a\":1}"),
            Some(RoomFeed::Message { seq: 12, frame }) if frame == "{\"a\":1}"
        ));
        assert!(matches!(
            parse_message(b"p:c-1:{}"),
            Some(RoomFeed::Event { except: Some(c), frame }) if c == "c-1" && frame == "{}"
        ));
        assert!(matches!(
            parse_message(b"p::{}"),
            Some(RoomFeed::Event { except: None, .. })
        ));
        assert!(parse_message(b"x:{}").is_none());
        assert!(parse_message(b"no colon").is_none());
    }
}
