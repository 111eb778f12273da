//! The client handle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::driver::{new_id, Command, Driver, Replier};
use crate::state::Shared;
use crate::{
    Ack, Envelope, Error, Options, Pushes, Result, State, StateStream, Stats, Subscription,
};

/// A protocol-v1 client on one WebSocket: connects, answers pings, reconnects with backoff,
/// resumes its rooms from their last seq, delivers each room message once and in order,
/// and resends unacknowledged publishes with their ids.
///
/// Cheap to clone (all clones drive the same connection). The connection runs on a task of
/// the tokio runtime [`Client::connect`] was called on; it closes when [`Client::close`] is
/// called or every clone is dropped.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    next_sub: AtomicU64,
    max_frame_bytes: usize,
}

impl Client {
    /// Connects to `url` (`ws://host:port/ws`) and returns once the broker's
    /// `system.connection.established` has arrived.
    ///
    /// Failed attempts are retried with [`Options::reconnect`]'s backoff, so this waits
    /// until a connection works, or fails with [`Error::Closed`] on a permanent close
    /// code (4000: the token was refused) or when the attempts run out.
    pub async fn connect(url: &str, options: Options) -> Result<Client> {
        check_url(url)?;
        let shared = Arc::new(Shared::new());
        let (tx, rx) = mpsc::unbounded_channel();
        let max_frame_bytes = options.max_frame_bytes;
        let mut states = shared.watch();
        let driver = Driver::new(url.to_owned(), options, rx, shared.clone());
        tokio::spawn(driver.run());
        let client = Client {
            inner: Arc::new(Inner {
                commands: tx,
                shared,
                next_sub: AtomicU64::new(1),
                max_frame_bytes,
            }),
        };
        let state = states
            .wait_for(|s| s.is_connected() || s.is_closed())
            .await
            .map(|s| s.clone())
            .unwrap_or(State::Closed {
                code: None,
                reason: "the connection task ended".into(),
            });
        match state {
            State::Closed { code, reason } => Err(Error::Closed { code, reason }),
            _ => Ok(client),
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.inner.shared.get()
    }

    /// Every state change from now on, as a stream (it ends after [`State::Closed`]).
    pub fn state_changes(&self) -> StateStream {
        self.inner.shared.stream()
    }

    /// The broker's id of the current connection (`None` while not connected).
    pub fn connection_id(&self) -> Option<String> {
        match self.state() {
            State::Connected { connection_id } => Some(connection_id),
            _ => None,
        }
    }

    /// Counters of reconnects, dropped duplicates and resent publishes.
    pub fn stats(&self) -> Stats {
        self.inner.shared.stats()
    }

    /// Joins `room` (live messages from now on) and returns its stream of messages.
    ///
    /// The join is sent now if connected, else on the next connection; across reconnects
    /// the room is resumed from the last seq delivered. A second `subscribe` of the same
    /// room takes it over from the first, whose stream ends.
    pub fn subscribe(&self, room: &str) -> Result<Subscription> {
        self.subscribe_inner(room, None)
    }

    /// Like [`Client::subscribe`], replaying the room's history after `since_seq` first
    /// (`0`: everything the broker still keeps).
    pub fn subscribe_from(&self, room: &str, since_seq: u64) -> Result<Subscription> {
        self.subscribe_inner(room, Some(since_seq))
    }

    fn subscribe_inner(&self, room: &str, since_seq: Option<u64>) -> Result<Subscription> {
        let (sink, rx) = mpsc::unbounded_channel();
        let sub_id = self.inner.next_sub.fetch_add(1, Ordering::Relaxed);
        self.send(Command::Subscribe {
            room: room.to_owned(),
            since_seq,
            sub_id,
            sink,
        })?;
        Ok(Subscription::new(
            room.to_owned(),
            sub_id,
            rx,
            self.inner.commands.downgrade(),
        ))
    }

    /// The connection's application pushes from now on (see [`Pushes`]); until this is
    /// called they are dropped. A second call replaces the first stream, which ends.
    pub fn pushes(&self) -> Result<Pushes> {
        let (sink, rx) = mpsc::unbounded_channel();
        self.send(Command::Pushes { sink })?;
        Ok(Pushes::new(rx))
    }

    /// Leaves `room`: its subscription's stream ends.
    pub fn unsubscribe(&self, room: &str) -> Result<()> {
        self.send(Command::Unsubscribe {
            room: room.to_owned(),
            sub_id: None,
        })
    }

    /// Publishes `payload` into `room` (which this client must have joined) with a fresh
    /// client message id, and waits for the broker's [`Ack`].
    ///
    /// The publish waits across reconnects: when the connection drops before the ack, it
    /// is sent again with the same id on the next connection, and the broker delivers it
    /// once either way. Wrap the call in `tokio::time::timeout` to bound the wait (the
    /// publish itself stays queued until acknowledged or the client closes).
    pub async fn publish(&self, room: &str, payload: impl Serialize) -> Result<Ack> {
        self.publish_with_id(room, &new_id(), payload).await
    }

    /// [`Client::publish`] with your own message id (at most 128 bytes): a publish made
    /// again with the same id (by any session of the same user) is not delivered again, and
    /// its ack has `duplicate: true` and the original seq.
    pub async fn publish_with_id(
        &self,
        room: &str,
        id: &str,
        payload: impl Serialize,
    ) -> Result<Ack> {
        let payload = serde_json::to_value(payload).map_err(|e| Error::Serialize(e.to_string()))?;
        let text =
            json!({"type": "room.publish", "id": id, "room": room, "payload": payload}).to_string();
        self.check_size(&text)?;
        let (reply, rx) = oneshot::channel();
        self.send(Command::Publish {
            id: id.to_owned(),
            text,
            reply,
        })?;
        rx.await.unwrap_or_else(|_| Err(self.closed_error()))
    }

    /// Sends an application request (a type an embedding application registered with
    /// `Broker::register_handler`) and waits up to `timeout` for the reply correlated by
    /// its id. A broker `system.error` becomes [`Error::Server`].
    ///
    /// A request not yet sent when the connection dropped is sent on the next one; one
    /// already sent fails with [`Error::ConnectionLost`] (it may or may not have run).
    pub async fn request(
        &self,
        msg_type: &str,
        payload: impl Serialize,
        timeout: Duration,
    ) -> Result<Envelope> {
        self.request_in(msg_type, None, payload, timeout).await
    }

    /// [`Client::request`] with a `room` (echoed on the reply; application types are not
    /// room traffic, the broker does not check it).
    pub async fn request_in(
        &self,
        msg_type: &str,
        room: Option<&str>,
        payload: impl Serialize,
        timeout: Duration,
    ) -> Result<Envelope> {
        let payload = serde_json::to_value(payload).map_err(|e| Error::Serialize(e.to_string()))?;
        let id = new_id();
        let mut frame = json!({"type": msg_type, "id": id, "payload": payload});
        if let Some(room) = room {
            frame["room"] = Value::from(room);
        }
        let text = frame.to_string();
        self.check_size(&text)?;
        let (reply, rx) = oneshot::channel();
        self.exchange(id, text, Replier::Envelope(reply), rx, msg_type, timeout)
            .await
    }

    /// Calls `method` in JSON-RPC 2.0 mode (`docs/PROTOCOL.md` §5) and waits up to
    /// `timeout` for its `result`. An application method gets `params` as its payload;
    /// broker methods (`room.*`, `system.*`) take `{room, id?, payload}`. A JSON-RPC error
    /// object becomes [`Error::Rpc`], with the broker's code name in `data.code`.
    ///
    /// Sent like [`Client::request`]: on the next connection when offline; a call already
    /// sent when the connection drops fails with [`Error::ConnectionLost`].
    ///
    /// ```no_run
    /// # async fn run(client: switchboard_client::Client) -> switchboard_client::Result<()> {
    /// let result = client
    ///     .call("task.request", serde_json::json!({"doc": 42}), std::time::Duration::from_secs(5))
    ///     .await?;
    /// println!("{result}");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn call(
        &self,
        method: &str,
        params: impl Serialize,
        timeout: Duration,
    ) -> Result<Value> {
        let params = serde_json::to_value(params).map_err(|e| Error::Serialize(e.to_string()))?;
        let id = new_id();
        let text =
            json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id}).to_string();
        self.check_size(&text)?;
        let (reply, rx) = oneshot::channel();
        self.exchange(id, text, Replier::JsonRpc(reply), rx, method, timeout)
            .await
    }

    /// Sends `method` as a JSON-RPC notification: no `id`, so the broker sends no answer
    /// (nor most errors). Sent now, or on the next connection when offline.
    pub fn notify(&self, method: &str, params: impl Serialize) -> Result<()> {
        let params = serde_json::to_value(params).map_err(|e| Error::Serialize(e.to_string()))?;
        let text = json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string();
        self.check_size(&text)?;
        self.send(Command::Notify { text })
    }

    /// Registers a request with the connection task and waits for its answer or `timeout`.
    async fn exchange<T>(
        &self,
        id: String,
        text: String,
        reply: Replier,
        rx: oneshot::Receiver<Result<T>>,
        what: &str,
        timeout: Duration,
    ) -> Result<T> {
        self.send(Command::Request {
            id: id.clone(),
            text,
            reply,
        })?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(result) => result.unwrap_or_else(|_| Err(self.closed_error())),
            Err(_) => {
                let _ = self.inner.commands.send(Command::CancelRequest { id });
                Err(Error::Timeout(format!(
                    "no reply to {what} within {timeout:?}"
                )))
            }
        }
    }

    /// Closes the connection (close code 1000) and waits until the client is
    /// [`State::Closed`]: pending publishes and requests fail, subscriptions end.
    pub async fn close(&self) {
        let mut states = self.inner.shared.watch();
        let _ = self.inner.commands.send(Command::Close);
        let _ = states.wait_for(State::is_closed).await;
    }

    fn send(&self, command: Command) -> Result<()> {
        self.inner
            .commands
            .send(command)
            .map_err(|_| self.closed_error())
    }

    fn closed_error(&self) -> Error {
        match self.state() {
            State::Closed { code, reason } => Error::Closed { code, reason },
            _ => Error::Closed {
                code: None,
                reason: "the connection task ended".into(),
            },
        }
    }

    fn check_size(&self, text: &str) -> Result<()> {
        // The broker closes the socket (1009) on an oversize frame; resending it after the
        // reconnect would loop, so it is refused here instead.
        if text.len() > self.inner.max_frame_bytes {
            return Err(Error::TooLarge {
                size: text.len(),
                max: self.inner.max_frame_bytes,
            });
        }
        Ok(())
    }
}

fn check_url(url: &str) -> Result<()> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("ws://") {
        return Ok(());
    }
    if lower.starts_with("wss://") {
        return if cfg!(feature = "rustls") {
            Ok(())
        } else {
            Err(Error::InvalidUrl(format!(
                "{url}: wss:// needs the crate's `rustls` feature"
            )))
        };
    }
    Err(Error::InvalidUrl(format!(
        "{url}: expected ws:// or wss://"
    )))
}
