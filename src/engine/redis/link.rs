//! The Redis engine's link task: connects, keeps the pub/sub subscriptions equal to the
//! rooms fed on this node, hands each pub/sub message to its room, and reconnects with
//! backoff when Redis goes away.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::{AsyncConnectionConfig, Client, RedisError};
use tokio::sync::{mpsc, oneshot};

use super::{parse_message, ControlOrder, EngineError, RoomFeed, Shared};
use crate::webhooks::shared::EndpointsChanged;

/// A request to make the subscriptions match the fed rooms; `done` answers once they do.
pub(super) struct Sync {
    pub done: Option<oneshot::Sender<Result<(), EngineError>>>,
}

pub(super) struct Link {
    pub shared: Arc<Shared>,
    pub client: Client,
    pub pool_size: usize,
    pub max_delay: Duration,
    pub syncs: mpsc::UnboundedReceiver<Sync>,
}

const FIRST_DELAY: Duration = Duration::from_millis(100);

impl Link {
    pub async fn run(mut self) {
        let mut delay = FIRST_DELAY;
        let mut ever_up = false;
        loop {
            match self.connect().await {
                Ok((conns, sink, stream)) => {
                    delay = FIRST_DELAY;
                    if ever_up {
                        self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        log::warn!(
                            "Redis reachable again: resubscribed, rooms read what they missed"
                        );
                    } else {
                        log::info!("Redis engine connected");
                    }
                    ever_up = true;
                    if !self.serve(conns, sink, stream).await {
                        return; // the engine was dropped
                    }
                }
                Err(err) => {
                    let reason = err.to_string();
                    let was = self.set_down(Some(reason.clone()));
                    if was.as_deref() != Some(reason.as_str()) {
                        log::warn!(
                            "Redis unreachable ({reason}); publishes answer `unavailable`, retrying every {:?} at most",
                            self.max_delay
                        );
                    }
                }
            }
            // Wait before the next attempt, refusing subscription requests meanwhile.
            let wait = tokio::time::sleep(delay);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    sync = self.syncs.recv() => match sync {
                        Some(sync) => refuse(sync, &self.shared),
                        None => return,
                    },
                }
            }
            delay = (delay * 2).min(self.max_delay);
        }
    }

    async fn connect(
        &self,
    ) -> Result<
        (
            Vec<MultiplexedConnection>,
            PubSubSink,
            redis::aio::PubSubStream,
        ),
        RedisError,
    > {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(None);
        let mut conns = Vec::with_capacity(self.pool_size);
        for _ in 0..self.pool_size {
            conns.push(
                self.client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            );
        }
        // Loaded before the first publish: a script missing from the server is sent again by
        // the caller, and such a retry could overtake a later publish of the same room.
        if let Some(conn) = conns.first_mut() {
            for script in [
                &self.shared.publish,
                &self.shared.since,
                &self.shared.reattach,
            ] {
                script.load_async(conn).await?;
            }
        }
        let (sink, stream) = self.client.get_async_pubsub().await?.split();
        Ok((conns, sink, stream))
    }

    /// Serves one connection until it is lost; false when the engine is gone.
    async fn serve(
        &mut self,
        conns: Vec<MultiplexedConnection>,
        mut sink: PubSubSink,
        mut stream: redis::aio::PubSubStream,
    ) -> bool {
        let mut subscribed = HashSet::new();
        if let Err(err) = self.reconcile(&mut sink, &mut subscribed).await {
            self.set_down(Some(format!("subscribing: {err}")));
            return true;
        }
        if let Ok(mut c) = self.shared.conns.write() {
            *c = conns;
        }
        self.set_down(None);
        // A command that failed during the outage left a wake-up behind; it is about the
        // connections just replaced.
        let _ = self.shared.lost.notified().now_or_never();
        // Rooms fed before (or during) the outage may have missed messages; the webhook
        // queue may have missed endpoint changes.
        for room in self.fed_rooms() {
            room.do_send(RoomFeed::Resync);
        }
        self.tell_endpoint_watcher(EndpointsChanged::Resync);
        let reason = loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => self.dispatch(&message),
                    None => break "the pub/sub connection closed".to_owned(),
                },
                sync = self.syncs.recv() => match sync {
                    Some(sync) => {
                        let result = self.reconcile(&mut sink, &mut subscribed).await;
                        let failed = result.as_ref().err().map(|e| format!("subscribing: {e}"));
                        if let Some(done) = sync.done {
                            let _ = done.send(result.map_err(|e| {
                                EngineError::Unavailable(format!("cannot subscribe: {e}"))
                            }));
                        }
                        if let Some(reason) = failed {
                            break reason;
                        }
                    }
                    None => return false,
                },
                _ = self.shared.lost.notified() => break "a command connection broke".to_owned(),
            }
        };
        log::warn!("Redis connection lost ({reason}); reconnecting");
        self.set_down(Some(reason));
        true
    }

    /// Subscribes to the channels of rooms fed since, unsubscribes from those no longer.
    async fn reconcile(
        &self,
        sink: &mut PubSubSink,
        subscribed: &mut HashSet<String>,
    ) -> Result<(), RedisError> {
        let mut wanted: HashSet<String> = match self.shared.feeds.lock() {
            Ok(feeds) => feeds.keys().cloned().collect(),
            Err(_) => return Ok(()),
        };
        wanted.insert(self.shared.order_channel());
        wanted.insert(self.shared.endpoints_channel());
        let add: Vec<&String> = wanted.difference(subscribed).collect();
        if !add.is_empty() {
            sink.subscribe(&add).await?;
        }
        let remove: Vec<&String> = subscribed.difference(&wanted).collect();
        if !remove.is_empty() {
            sink.unsubscribe(&remove).await?;
        }
        *subscribed = wanted;
        Ok(())
    }

    fn dispatch(&self, message: &redis::Msg) {
        if message.get_channel_name() == self.shared.order_channel() {
            return self.obey(message.get_payload_bytes());
        }
        if message.get_channel_name() == self.shared.endpoints_channel() {
            return self.endpoints_changed(message.get_payload_bytes());
        }
        let room = match self.shared.feeds.lock() {
            Ok(feeds) => feeds.get(message.get_channel_name()).cloned(),
            Err(_) => None,
        };
        let Some(room) = room else {
            return; // unsubscribed meanwhile
        };
        match parse_message(message.get_payload_bytes()) {
            Some(feed) => room.do_send(feed),
            None => log::warn!(
                "Redis channel {}: a message that is neither <seq>:<frame> nor p:<except>:<frame>, ignored",
                message.get_channel_name()
            ),
        }
    }

    /// An order from another node for one of this node's sessions.
    fn obey(&self, payload: &[u8]) {
        let order: ControlOrder = match serde_json::from_slice(payload) {
            Ok(order) => order,
            Err(err) => {
                log::warn!("an order this node cannot read ({err}), ignored");
                return;
            }
        };
        let to = self.shared.orders.lock().ok().and_then(|o| o.clone());
        if let Some(to) = to {
            to.do_send(order);
        }
    }

    /// A webhook endpoint change announced by a node (this one included).
    fn endpoints_changed(&self, payload: &[u8]) {
        match serde_json::from_slice::<EndpointsChanged>(payload) {
            Ok(change) => self.tell_endpoint_watcher(change),
            Err(err) => log::warn!("an endpoint change this node cannot read ({err}), ignored"),
        }
    }

    fn tell_endpoint_watcher(&self, change: EndpointsChanged) {
        let to = self
            .shared
            .endpoint_watcher
            .lock()
            .ok()
            .and_then(|w| w.clone());
        if let Some(to) = to {
            to.do_send(change);
        }
    }

    fn fed_rooms(&self) -> Vec<actix::Recipient<RoomFeed>> {
        self.shared
            .feeds
            .lock()
            .map(|feeds| feeds.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Records the engine as up (`None`) or down; answers the previous state. Going down
    /// drops the command connections, so operations fail at once.
    fn set_down(&self, reason: Option<String>) -> Option<String> {
        if reason.is_some() {
            if let Ok(mut c) = self.shared.conns.write() {
                c.clear();
            }
        }
        match self.shared.down.lock() {
            Ok(mut down) => std::mem::replace(&mut *down, reason),
            Err(_) => None,
        }
    }
}

fn refuse(sync: Sync, shared: &Shared) {
    if let Some(done) = sync.done {
        let _ = done.send(Err(shared.unavailable()));
    }
}
