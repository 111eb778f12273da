//! `[[bridge.redis]]`: Redis pub/sub channels into rooms, and rooms out to channels.
//!
//! **In.** One task per bridge subscribes to its channels (PSUBSCRIBE for patterns) and
//! publishes each message into the room its channel names, one at a time, so the messages
//! of a channel keep their order in the room. JSON goes in as the payload byte for byte;
//! anything else is wrapped as a JSON string or dropped (`non_json`), counted either way.
//! A lost connection is retried with backoff (100 ms doubling to `redis.max_reconnect_delay`)
//! and a connection that stops answering pings is replaced; Redis pub/sub keeps nothing for
//! absent subscribers, so what is PUBLISHed while the bridge is reconnecting is not carried.
//!
//! **Exactly once across a cluster.** With the Redis engine every broker runs the bridge,
//! but only the leader subscribes: the broker holding `<redis.prefix>:bridge:<name>:leader`.
//! Each broker tries to take or renew the key every third of `leader_lease` (one script:
//! take it when free, extend it when it is ours). A leader that has not renewed for two
//! thirds of the lease unsubscribes before the key can expire, so two brokers never carry
//! at once; when a leader dies, another takes over within a lease, and messages PUBLISHed
//! in between are not carried. A broker that shuts down gives the key up at once.
//!
//! **Out.** Rooms offer new messages to the bridge's queue ([`super::Outlets`]); a task
//! PUBLISHes them in order, retrying one that failed until Redis answers again, while the
//! queue (bounded by `publish_queue`) absorbs or drops what comes meanwhile. Only the broker
//! that took a publish offers it, so each message goes out once cluster-wide.

use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, RedisError, Script};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};

use super::{count_dropped, OutMessage};
use crate::config::{Config, NonJson, PublishFormat, RedisBridgeConfig};
use crate::protocol::ErrorCode;
use crate::{Broker, ServerMessage};

const FIRST_DELAY: Duration = Duration::from_millis(100);
/// How often a subscribed connection is pinged, and how long the answer may take.
const PING_EVERY: Duration = Duration::from_secs(5);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Takes the leader key when it is free, extends it when it is ours; 1 when we hold it.
const CLAIM: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Deletes the leader key when it is ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Starts every configured bridge's tasks on the current arbiter; `outgoing[i]` is the
/// queue of bridge `i` when it sends messages out. They stop when `stop` turns true.
pub(crate) fn start(
    broker: &Broker,
    outgoing: Vec<Option<mpsc::Receiver<OutMessage>>>,
    stop: watch::Receiver<bool>,
) {
    let config = broker.config();
    for ((i, bridge), queue) in config.bridge.redis.iter().enumerate().zip(outgoing) {
        let name = bridge.name_or(i);
        // Validated at start: the URL parses.
        let client = match Client::open(bridge.url_or(&config.redis)) {
            Ok(client) => client,
            Err(err) => {
                log::error!("bridge {name}: {err}");
                continue;
            }
        };
        let link = Link {
            name: name.clone(),
            client,
            config: bridge.clone(),
            broker: broker.clone(),
            max_delay: config.redis.max_reconnect_delay,
            stop: stop.clone(),
        };
        if !bridge.channels.is_empty() {
            let election = elected(config).then(|| Election {
                key: format!("{}:bridge:{name}:leader", config.redis.prefix),
                holder: uuid::Uuid::new_v4().to_string(),
                lease: bridge.leader_lease,
                claim: Script::new(CLAIM),
            });
            actix_rt::spawn(link.clone().carry_in(election));
        }
        if let Some(queue) = queue {
            actix_rt::spawn(link.carry_out(queue));
        }
    }
}

/// Whether brokers share rooms, so that only one of them may carry messages in.
fn elected(config: &Config) -> bool {
    config.engine.kind == crate::config::EngineKind::Redis
}

#[derive(Clone)]
struct Link {
    name: String,
    client: Client,
    config: RedisBridgeConfig,
    broker: Broker,
    max_delay: Duration,
    stop: watch::Receiver<bool>,
}

struct Election {
    key: String,
    holder: String,
    lease: Duration,
    claim: Script,
}

/// Why a subscribed spell ended.
enum Ended {
    /// The broker is stopping.
    Stopped,
    /// Leadership was lost or could not be renewed in time.
    NotLeader,
    /// The connection failed.
    Lost(String),
}

impl Link {
    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    fn stopped(&self) -> bool {
        // A dropped signal stops the bridge too.
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    /// Waits `delay`, or less when the broker stops; false when it did.
    async fn pause(&mut self, delay: Duration) -> bool {
        let _ = tokio::time::timeout(delay, self.stop.wait_for(|stop| *stop)).await;
        !self.stopped()
    }

    fn dropped(&self, reason: &str, detail: &str) {
        if let Some(n) = count_dropped(self.broker.metrics(), &self.name, reason) {
            log::warn!(
                "bridge {}: message dropped ({reason}, {n} so far): {detail}",
                self.name
            );
        }
    }

    async fn carry_in(mut self, election: Option<Election>) {
        let metrics = self.broker.metrics().clone();
        let active = metrics
            .bridge_active
            .with_label_values(&[self.name.as_str()]);
        let mut delay = FIRST_DELAY;
        let mut first = true;
        let mut commands: Option<MultiplexedConnection> = None;
        while !self.stopped() {
            // Leadership first: a broker that is not the leader only keeps trying.
            let mut renewed_at = None;
            if let Some(election) = &election {
                match self.claim(election, &mut commands).await {
                    Ok((true, at)) => renewed_at = Some(at),
                    Ok((false, _)) => {
                        if !self.pause(election.lease / 3).await {
                            break;
                        }
                        continue;
                    }
                    Err(err) => {
                        log::warn!("bridge {}: leader key: {err}", self.name);
                        commands = None;
                        if !self.pause(delay).await {
                            break;
                        }
                        delay = (delay * 2).min(self.max_delay);
                        continue;
                    }
                }
            }
            let pubsub = match self.subscribe().await {
                Ok(pubsub) => pubsub,
                Err(err) => {
                    log::warn!("bridge {}: cannot subscribe: {err}", self.name);
                    if !self.pause(delay).await {
                        break;
                    }
                    delay = (delay * 2).min(self.max_delay);
                    continue;
                }
            };
            delay = FIRST_DELAY;
            if first {
                log::info!(
                    "bridge {}: carrying {:?} into rooms{}",
                    self.name,
                    self.config.channels,
                    if election.is_some() { " (leader)" } else { "" }
                );
                first = false;
            } else {
                metrics
                    .bridge_reconnects
                    .with_label_values(&[self.name.as_str()])
                    .inc();
                log::warn!("bridge {}: subscribed again", self.name);
            }
            active.set(1);
            let ended = self
                .serve(pubsub, election.as_ref(), renewed_at, &mut commands)
                .await;
            active.set(0);
            match ended {
                Ended::Stopped => break,
                Ended::NotLeader => {
                    log::warn!(
                        "bridge {}: no longer the leader; stopped carrying",
                        self.name
                    )
                }
                Ended::Lost(reason) => {
                    log::warn!(
                        "bridge {}: connection lost ({reason}); reconnecting",
                        self.name
                    );
                    if !self.pause(delay).await {
                        break;
                    }
                }
            }
        }
        if let Some(election) = &election {
            // Hand over at once instead of after the lease.
            if let Some(conn) = commands.as_mut() {
                let _ = Script::new(RELEASE)
                    .key(&election.key)
                    .arg(&election.holder)
                    .invoke_async::<i64>(conn)
                    .await;
            }
        }
    }

    /// Takes or renews leadership; the instant the attempt was sent, when it holds.
    async fn claim(
        &self,
        election: &Election,
        commands: &mut Option<MultiplexedConnection>,
    ) -> Result<(bool, Instant), RedisError> {
        let conn = self.connected(commands).await?;
        let sent = Instant::now();
        let held: i64 = election
            .claim
            .key(&election.key)
            .arg(&election.holder)
            .arg(election.lease.as_millis() as u64)
            .invoke_async(conn)
            .await?;
        Ok((held == 1, sent))
    }

    /// The command connection in `slot`, opened first when there is none.
    async fn connected<'a>(
        &self,
        slot: &'a mut Option<MultiplexedConnection>,
    ) -> Result<&'a mut MultiplexedConnection, RedisError> {
        match slot {
            Some(conn) => Ok(conn),
            None => Ok(slot.insert(self.connection().await?)),
        }
    }

    async fn subscribe(&self) -> Result<::redis::aio::PubSub, RedisError> {
        let mut pubsub = tokio::time::timeout(COMMAND_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| timeout_error())??;
        for channel in &self.config.channels {
            if channel.contains(['*', '?', '[']) {
                pubsub.psubscribe(channel).await?;
            } else {
                pubsub.subscribe(channel).await?;
            }
        }
        Ok(pubsub)
    }

    /// Carries messages until the connection fails, leadership lapses or the broker stops.
    async fn serve(
        &mut self,
        pubsub: ::redis::aio::PubSub,
        election: Option<&Election>,
        mut renewed_at: Option<Instant>,
        commands: &mut Option<MultiplexedConnection>,
    ) -> Ended {
        let (mut sink, mut messages) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.reset();
        let renew_every = election.map_or(Duration::from_secs(3600), |e| e.lease / 3);
        let mut renew = tokio::time::interval(renew_every);
        renew.reset();
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return Ended::Stopped,
                message = messages.next() => match message {
                    Some(message) => {
                        self.carry(message.get_channel_name(), message.get_payload_bytes()).await
                    }
                    None => return Ended::Lost("the subscription ended".into()),
                },
                // A subscribed connection answers PING with an array (`["pong", ""]`), so
                // the reply is taken as whatever it is.
                _ = ping.tick() => {
                    match tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<::redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(err)) => return Ended::Lost(err.to_string()),
                        Err(_) => return Ended::Lost("no answer to PING".into()),
                    }
                }
                _ = renew.tick(), if election.is_some() => {
                    let Some(election) = election else { continue };
                    match self.claim(election, commands).await {
                        Ok((true, at)) => renewed_at = Some(at),
                        Ok((false, _)) => return Ended::NotLeader,
                        Err(err) => {
                            log::warn!("bridge {}: renewing leadership: {err}", self.name);
                            *commands = None;
                        }
                    }
                    // Stop before the key could expire and another broker take over.
                    if renewed_at.is_none_or(|at| at.elapsed() >= election.lease * 2 / 3) {
                        return Ended::NotLeader;
                    }
                }
            }
        }
    }

    /// Publishes one message into its channel's room.
    async fn carry(&self, channel: &str, bytes: &[u8]) {
        let room = self.config.room.replace("{channel}", channel);
        if !crate::protocol::valid_room_name(&room) {
            return self.dropped(
                "room_name",
                &format!("channel `{channel}` makes `{room}`, not a room name"),
            );
        }
        let payload = match std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| RawValue::from_string(text.to_owned()).ok())
        {
            Some(json) => json,
            None => {
                self.dropped_or_wrapped(channel);
                if self.config.non_json == NonJson::Drop {
                    return;
                }
                let text = String::from_utf8_lossy(bytes);
                match serde_json::to_string(&text).map(RawValue::from_string) {
                    Ok(Ok(json)) => json,
                    _ => return,
                }
            }
        };
        let message = ServerMessage {
            msg_type: None,
            payload,
            id: None,
        };
        match self
            .broker
            .publish_bridged(&room, &self.name, message)
            .await
        {
            Ok(_) => self
                .broker
                .metrics()
                .bridge_messages
                .with_label_values(&[self.name.as_str(), "in"])
                .inc(),
            Err(err) if err.code == ErrorCode::Unavailable => {
                self.dropped("unavailable", &format!("{room}: {err}"))
            }
            Err(err) => self.dropped("refused", &format!("{room}: {err}")),
        }
    }

    /// Counts a message that is not JSON (dropped or wrapped, by `non_json`).
    fn dropped_or_wrapped(&self, channel: &str) {
        match self.config.non_json {
            NonJson::Drop => self.dropped("not_json", &format!("on `{channel}`")),
            NonJson::Wrap => {
                let wrapped = "not_json_wrapped";
                if let Some(n) = count_dropped(self.broker.metrics(), &self.name, wrapped) {
                    log::info!(
                        "bridge {}: a message on `{channel}` is not JSON; published as a JSON string ({n} so far)",
                        self.name
                    );
                }
            }
        }
    }

    async fn carry_out(mut self, mut queue: mpsc::Receiver<OutMessage>) {
        let mut conn: Option<MultiplexedConnection> = None;
        let mut delay = FIRST_DELAY;
        let mut stop = self.stop.clone();
        loop {
            let message = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                message = queue.recv() => match message {
                    Some(message) => message,
                    None => return,
                },
            };
            let channel = self.config.publish_channel.replace("{room}", &message.room);
            let body = outgoing_body(self.config.publish_format, &message);
            // The message is retried until Redis takes it, so messages leave in order.
            loop {
                let sent = match self.connected(&mut conn).await {
                    Ok(c) => {
                        ::redis::cmd("PUBLISH")
                            .arg(&channel)
                            .arg(&body)
                            .query_async::<i64>(c)
                            .await
                    }
                    Err(err) => Err(err),
                };
                match sent {
                    Ok(_) => {
                        delay = FIRST_DELAY;
                        self.broker
                            .metrics()
                            .bridge_messages
                            .with_label_values(&[self.name.as_str(), "out"])
                            .inc();
                        break;
                    }
                    Err(err) => {
                        log::warn!(
                            "bridge {}: PUBLISH {channel} failed ({err}); retrying in {delay:?}",
                            self.name
                        );
                        conn = None;
                        if !self.pause(delay).await {
                            return;
                        }
                        delay = (delay * 2).min(self.max_delay);
                    }
                }
            }
        }
    }
}

/// What goes out on the channel for `message`.
fn outgoing_body(format: PublishFormat, message: &OutMessage) -> String {
    #[derive(serde::Serialize)]
    struct Envelope<'a> {
        room: &'a str,
        seq: u64,
        id: &'a str,
        user: Option<&'a str>,
        payload: Option<&'a RawValue>,
    }
    match format {
        PublishFormat::Payload => message
            .payload
            .as_deref()
            .map_or("null", RawValue::get)
            .to_owned(),
        // Strings, a number and raw JSON cannot fail to serialise.
        PublishFormat::Envelope => serde_json::to_string(&Envelope {
            room: &message.room,
            seq: message.seq,
            id: &message.id,
            user: message.user.as_deref(),
            payload: message.payload.as_deref(),
        })
        .unwrap_or_default(),
    }
}

fn timeout_error() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no answer from Redis",
    ))
}

/// Keeps the bridges' stop signal: dropping it (or [`BridgeStop::stop`]) ends their tasks.
pub(crate) struct BridgeStop(watch::Sender<bool>);

impl BridgeStop {
    /// A signal and the receiver the bridges watch.
    pub fn new() -> (BridgeStop, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(false);
        (BridgeStop(tx), rx)
    }

    /// Ends the bridges' tasks (a leader gives its key up first).
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_bodies_are_the_payload_or_an_envelope() {
        let message = OutMessage {
            room: "chat:1".into(),
            seq: 7,
            id: "m1".into(),
            user: Some("alice".into()),
            payload: Some(RawValue::from_string(r#"{"text": "hi"}"#.into()).unwrap()),
        };
        assert_eq!(
            outgoing_body(PublishFormat::Payload, &message),
            r#"{"text": "hi"}"#
        );
        assert_eq!(
            outgoing_body(PublishFormat::Envelope, &message),
            r#"{"room":"chat:1","seq":7,"id":"m1","user":"alice","payload":{"text": "hi"}}"#
        );
    }
}
