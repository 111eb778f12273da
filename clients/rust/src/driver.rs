//! The background task that owns the connection: connects, resumes, reconnects with
//! backoff, answers pings, and settles publishes and requests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::rooms::{Rooms, Verdict};
use crate::state::Shared;
use crate::{Ack, Envelope, Error, Options, State, SubscriptionEvent};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Close code of the broker's graceful shutdown: reconnect at once.
const SERVICE_RESTART: u16 = 1012;
/// Close code of a failed authentication.
const AUTH_FAILED: u16 = 4000;
/// Close codes of a broker that is shedding this client: too slow a reader (4009), too
/// many sessions of its user (4029). Reconnecting at once would only repeat them.
const THROTTLED: [u16; 2] = [4009, 4029];

/// What the client handle asks of the task.
#[derive(Debug)]
pub(crate) enum Command {
    Subscribe {
        room: String,
        since_seq: Option<u64>,
        sub_id: u64,
        sink: mpsc::UnboundedSender<SubscriptionEvent>,
    },
    Unsubscribe {
        room: String,
        sub_id: Option<u64>,
    },
    Publish {
        id: String,
        text: String,
        reply: oneshot::Sender<Result<Ack, Error>>,
    },
    Request {
        id: String,
        text: String,
        reply: Replier,
    },
    /// A JSON-RPC notification: sent now, or on the next connection.
    Notify {
        text: String,
    },
    CancelRequest {
        id: String,
    },
    /// Where application pushes go from now on (replacing an earlier stream).
    Pushes {
        sink: mpsc::UnboundedSender<Envelope>,
    },
    Close,
}

struct PendingPublish {
    id: String,
    text: String,
    reply: oneshot::Sender<Result<Ack, Error>>,
    /// Sent on some connection already: a send on a later one is a retry.
    sent: bool,
}

struct PendingRequest {
    text: String,
    sent: bool,
    reply: Replier,
}

/// Where a request's answer goes: a native reply envelope, or a JSON-RPC `result`.
#[derive(Debug)]
pub(crate) enum Replier {
    Envelope(oneshot::Sender<Result<Envelope, Error>>),
    JsonRpc(oneshot::Sender<Result<Value, Error>>),
}

impl Replier {
    fn fail(self, error: Error) {
        match self {
            Replier::Envelope(tx) => {
                let _ = tx.send(Err(error));
            }
            Replier::JsonRpc(tx) => {
                let _ = tx.send(Err(error));
            }
        }
    }
}

/// A JSON-RPC 2.0 response (`docs/PROTOCOL.md` §5). `jsonrpc` is required, so a native
/// envelope never parses as one.
#[derive(Debug, serde::Deserialize)]
struct RpcResponse {
    #[allow(dead_code)]
    jsonrpc: String,
    #[serde(default)]
    id: Value,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<RpcError>,
}

#[derive(Debug, serde::Deserialize)]
struct RpcError {
    code: i64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    data: Option<Value>,
}

/// How a connection (or an attempt) ended.
struct Ended {
    code: Option<u16>,
    reason: String,
}

pub(crate) struct Driver {
    url: String,
    options: Options,
    commands: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
    rooms: Rooms,
    /// Unacked publishes in the order they were made (resent in that order).
    publishes: BTreeMap<u64, PendingPublish>,
    publish_order: HashMap<String, u64>,
    next_order: u64,
    requests: HashMap<String, PendingRequest>,
    /// Application pushes (frames that are neither room messages nor replies).
    pushes: Option<mpsc::UnboundedSender<Envelope>>,
    /// JSON-RPC notifications made while offline, sent on the next connection.
    notifications: Vec<String>,
    /// Join request id → room, to match a refusal to its subscription.
    joins: HashMap<String, String>,
    /// Rooms unsubscribed while offline: left again after the resume rejoins them.
    leave_after_resume: HashSet<String>,
    /// The last connection's id, for `system.connection.resume`.
    connection_id: Option<String>,
    /// Frames to write on the current connection.
    out: Vec<String>,
    online: bool,
    attempt: u32,
    /// Connections in a row that the broker shed ([`THROTTLED`]); their backoff grows
    /// across the reconnections in between.
    throttled: u32,
    auth_retried: bool,
    connected_once: bool,
    close_reason: Option<String>,
}

enum Next {
    /// Reconnect after the backoff (or at once).
    Reconnect(Ended),
    /// Stop for good.
    Finish(Error),
}

impl Driver {
    pub(crate) fn new(
        url: String,
        options: Options,
        commands: mpsc::UnboundedReceiver<Command>,
        shared: Arc<Shared>,
    ) -> Driver {
        Driver {
            url,
            options,
            commands,
            shared,
            rooms: Rooms::default(),
            publishes: BTreeMap::new(),
            publish_order: HashMap::new(),
            next_order: 0,
            requests: HashMap::new(),
            notifications: Vec::new(),
            pushes: None,
            joins: HashMap::new(),
            leave_after_resume: HashSet::new(),
            connection_id: None,
            out: Vec::new(),
            online: false,
            attempt: 0,
            throttled: 0,
            auth_retried: false,
            connected_once: false,
            close_reason: None,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut delay = Duration::ZERO;
        loop {
            if !delay.is_zero() {
                let until = Instant::now() + delay;
                loop {
                    tokio::select! {
                        _ = sleep_until(until) => break,
                        cmd = self.commands.recv() => {
                            if let Some(err) = self.offline_command(cmd) {
                                return self.finish(err);
                            }
                        }
                    }
                }
            }
            let ended = match self.attempt_connection().await {
                Ok(Some(socket)) => self.session(socket).await,
                Ok(None) => return, // finished while connecting
                Err(ended) => Next::Reconnect(ended),
            };
            let ended = match ended {
                Next::Finish(err) => return self.finish(err),
                Next::Reconnect(ended) => ended,
            };
            match self.next_delay(&ended) {
                Ok(d) => delay = d,
                Err(err) => return self.finish(err),
            }
        }
    }

    /// What follows a dropped connection or failed attempt: the delay, or the end.
    fn next_delay(&mut self, ended: &Ended) -> Result<Duration, Error> {
        let closed = |reason: String| Error::Closed {
            code: ended.code,
            reason,
        };
        if let Some(code) = ended.code {
            if self.options.permanent_close_codes.contains(&code) {
                // A refused token may only have expired: a token callback gets one retry.
                if code == AUTH_FAILED && self.options.token.is_refresh() && !self.auth_retried {
                    self.auth_retried = true;
                    return Ok(Duration::ZERO);
                }
                return Err(closed(ended.reason.clone()));
            }
        }
        let Some(backoff) = self.options.reconnect.clone() else {
            return Err(closed(format!("connection lost: {}", ended.reason)));
        };
        if ended.code == Some(SERVICE_RESTART) {
            // The broker restarts on purpose: come back at once rather than after a
            // backoff grown during earlier trouble.
            self.shared.set(State::Reconnecting {
                attempt: 1,
                delay: Duration::ZERO,
                code: ended.code,
                reason: ended.reason.clone(),
            });
            self.attempt = 1;
            return Ok(Duration::ZERO);
        }
        match ended.code {
            Some(code) if THROTTLED.contains(&code) => {
                // The connection succeeded, which reset the attempts; a streak of sheddings
                // must still back off (and count against max_attempts), not loop.
                self.throttled += 1;
                self.attempt = self.attempt.max(self.throttled - 1);
            }
            _ => self.throttled = 0,
        }
        self.attempt += 1;
        if backoff.max_attempts.is_some_and(|max| self.attempt > max) {
            return Err(closed(format!(
                "gave up after {} attempts: {}",
                self.attempt - 1,
                ended.reason
            )));
        }
        let delay = backoff.delay(self.attempt, rand::random::<f64>());
        self.shared.set(State::Reconnecting {
            attempt: self.attempt,
            delay,
            code: ended.code,
            reason: ended.reason.clone(),
        });
        Ok(delay)
    }

    /// One connection attempt, serving commands meanwhile. `Ok(None)`: the client was
    /// closed while connecting.
    async fn attempt_connection(&mut self) -> Result<Option<Opened>, Ended> {
        let url = self.url.clone();
        let token = self.options.token.clone();
        let limit = self.options.connect_timeout;
        let connect = async move {
            let token = token.get().await.map_err(|e| Ended {
                code: None,
                reason: format!("token refresh failed: {e}"),
            })?;
            match timeout(limit, open(&url, token)).await {
                Ok(result) => result,
                Err(_) => Err(Ended {
                    code: None,
                    reason: format!("no connection within {limit:?}"),
                }),
            }
        };
        tokio::pin!(connect);
        loop {
            tokio::select! {
                result = &mut connect => return result.map(Some),
                cmd = self.commands.recv() => {
                    if let Some(err) = self.offline_command(cmd) {
                        self.finish(err);
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Serves one established connection until it ends.
    async fn session(&mut self, opened: Opened) -> Next {
        let Opened {
            socket,
            established,
            behind,
        } = opened;
        let heartbeat = established
            .payload
            .as_ref()
            .and_then(|p| p.get("heartbeat_interval_ms"))
            .and_then(Value::as_u64)
            .filter(|ms| *ms > 0)
            .unwrap_or(30_000);
        let silence = Duration::from_millis(2 * heartbeat) + self.options.heartbeat_grace;
        let connection_id = established
            .payload_str("connection_id")
            .unwrap_or_default()
            .to_owned();
        self.on_established(connection_id.clone());
        if let Some(behind) = behind {
            self.on_text(&behind);
        }
        let (mut sink, mut stream) = socket.split();
        let mut deadline = Instant::now() + silence;
        self.shared.set(State::Connected { connection_id });
        let ended = loop {
            if !self.out.is_empty() {
                let mut failed = None;
                for text in self.out.drain(..) {
                    if let Err(e) = sink.feed(WsMessage::text(text)).await {
                        failed = Some(e);
                        break;
                    }
                }
                let flushed = match failed {
                    Some(e) => Err(e),
                    None => sink.flush().await,
                };
                if let Err(e) = flushed {
                    break Next::Reconnect(Ended {
                        code: None,
                        reason: format!("send failed: {e}"),
                    });
                }
            }
            tokio::select! {
                frame = stream.next() => match frame {
                    Some(Ok(WsMessage::Text(text))) => {
                        deadline = Instant::now() + silence;
                        self.on_text(text.as_str());
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        let reason = frame.as_ref().map(|f| f.reason.to_string()).unwrap_or_default();
                        let reason = if reason.is_empty() {
                            self.close_reason.take().unwrap_or_default()
                        } else {
                            reason
                        };
                        break Next::Reconnect(Ended {
                            code: frame.map(|f| u16::from(f.code)),
                            reason,
                        });
                    }
                    Some(Ok(_)) => deadline = Instant::now() + silence,
                    Some(Err(e)) => break Next::Reconnect(Ended {
                        code: None,
                        reason: format!("connection lost: {e}"),
                    }),
                    None => break Next::Reconnect(Ended {
                        code: None,
                        reason: "connection lost".into(),
                    }),
                },
                cmd = self.commands.recv() => {
                    let close = match cmd {
                        Some(Command::Close) => Some("client closed".to_owned()),
                        None => Some("client dropped".to_owned()),
                        Some(cmd) => {
                            self.command(cmd);
                            None
                        }
                    };
                    if let Some(reason) = close {
                        let frame = CloseFrame {
                            code: CloseCode::Normal,
                            reason: reason.clone().into(),
                        };
                        let _ = timeout(Duration::from_secs(1), async {
                            let _ = sink.send(WsMessage::Close(Some(frame))).await;
                            // Wait (bounded) for the broker's answer so it sees a clean close.
                            while let Some(Ok(msg)) = stream.next().await {
                                if matches!(msg, WsMessage::Close(_)) {
                                    break;
                                }
                            }
                        })
                        .await;
                        break Next::Finish(Error::Closed { code: Some(1000), reason });
                    }
                }
                _ = sleep_until(deadline) => break Next::Reconnect(Ended {
                    code: None,
                    reason: format!("no frame from the broker for {silence:?}"),
                }),
            }
        };
        self.connection_lost();
        ended
    }

    fn on_established(&mut self, connection_id: String) {
        let previous = self.connection_id.replace(connection_id);
        if self.connected_once {
            Shared::bump(&self.shared.reconnects, 1);
        }
        self.connected_once = true;
        self.online = true;
        self.attempt = 0;
        self.auth_retried = false;
        self.close_reason = None;
        if let Some(previous) = previous {
            // Every room is listed with its last seq, so each is replayed from there even
            // when the broker no longer has the old session (session_found: false).
            let frame = json!({
                "type": "system.connection.resume",
                "id": new_id(),
                "payload": { "connection_id": previous, "rooms": self.rooms.resume_rooms() },
            });
            self.transmit(frame.to_string());
            for room in std::mem::take(&mut self.leave_after_resume) {
                if self.rooms.subscribed_rooms().contains(&room) {
                    continue;
                }
                self.transmit(
                    json!({"type": "room.leave", "id": new_id(), "room": room}).to_string(),
                );
            }
            for room in self.rooms.unjoined_rooms() {
                self.send_join(&room);
            }
        } else {
            for room in self.rooms.subscribed_rooms() {
                self.send_join(&room);
            }
        }
        // Frames sent behind the resume are held by the broker until its reply, so the
        // publishes resent here (same ids: delivered once) find their rooms joined.
        let mut resent = 0;
        let mut texts = Vec::new();
        for pending in self.publishes.values_mut() {
            if pending.sent {
                resent += 1;
            }
            pending.sent = true;
            texts.push(pending.text.clone());
        }
        for pending in self.requests.values_mut().filter(|p| !p.sent) {
            pending.sent = true;
            texts.push(pending.text.clone());
        }
        texts.append(&mut self.notifications);
        for text in texts {
            self.transmit(text);
        }
        Shared::bump(&self.shared.publishes_resent, resent);
    }

    fn connection_lost(&mut self) {
        self.online = false;
        self.out.clear();
        self.joins.clear();
        self.rooms.connection_lost();
        // A request already sent may or may not have run: it fails rather than run twice.
        for (_, pending) in self.requests.extract_if(|_, pending| pending.sent) {
            pending.reply.fail(Error::ConnectionLost);
        }
    }

    fn transmit(&mut self, text: String) {
        if self.online {
            self.out.push(text);
        }
    }

    fn send_join(&mut self, room: &str) {
        let id = new_id();
        let mut frame = json!({"type": "room.join", "id": id, "room": room});
        if let Some(since) = self.rooms.since_for_join(room) {
            frame["payload"] = json!({ "since_seq": since });
        }
        self.joins.insert(id, room.to_owned());
        self.transmit(frame.to_string());
    }

    /// A command while not connected; `Some` ends the client.
    fn offline_command(&mut self, cmd: Option<Command>) -> Option<Error> {
        match cmd {
            None => Some(closed_by_client("client dropped")),
            Some(Command::Close) => Some(closed_by_client("client closed")),
            Some(cmd) => {
                self.command(cmd);
                None
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Subscribe {
                room,
                since_seq,
                sub_id,
                sink,
            } => {
                self.leave_after_resume.remove(&room);
                self.rooms.attach(&room, sub_id, sink, since_seq);
                if self.online {
                    self.send_join(&room);
                }
            }
            Command::Unsubscribe { room, sub_id } => {
                if self.rooms.detach(&room, sub_id) {
                    if self.online {
                        self.transmit(
                            json!({"type": "room.leave", "id": new_id(), "room": room}).to_string(),
                        );
                    } else {
                        self.leave_after_resume.insert(room);
                    }
                }
            }
            Command::Publish { id, text, reply } => {
                if self.publish_order.contains_key(&id) {
                    let _ = reply.send(Err(Error::Server {
                        code: "bad_request".into(),
                        message: format!("publish {id} is already pending"),
                    }));
                    return;
                }
                let order = self.next_order;
                self.next_order += 1;
                self.publish_order.insert(id.clone(), order);
                let sent = self.online;
                self.publishes.insert(
                    order,
                    PendingPublish {
                        id,
                        text: text.clone(),
                        reply,
                        sent,
                    },
                );
                self.transmit(text);
            }
            Command::Request { id, text, reply } => {
                let sent = self.online;
                self.requests.insert(
                    id,
                    PendingRequest {
                        text: text.clone(),
                        sent,
                        reply,
                    },
                );
                self.transmit(text);
            }
            Command::Notify { text } => {
                if self.online {
                    self.transmit(text);
                } else {
                    self.notifications.push(text);
                }
            }
            Command::CancelRequest { id } => {
                self.requests.remove(&id);
            }
            Command::Pushes { sink } => self.pushes = Some(sink),
            Command::Close => {}
        }
    }

    fn take_publish(&mut self, id: &str) -> Option<PendingPublish> {
        let order = self.publish_order.remove(id)?;
        self.publishes.remove(&order)
    }

    /// A text frame: one envelope, or several newline-separated ones when the broker batches
    /// frames (`switchboard.v1.batch`; compact JSON never holds a raw newline, so splitting
    /// a plain v1 frame changes nothing).
    fn on_text(&mut self, text: &str) {
        for envelope in text.split('\n').filter(|line| !line.is_empty()) {
            self.on_frame(envelope);
        }
    }

    fn on_frame(&mut self, text: &str) {
        // JSON-RPC answers come only to `call`s; the cheap substring test keeps the second
        // parse off the path of ordinary frames.
        if text.contains("\"jsonrpc\"") {
            if let Ok(response) = serde_json::from_str::<RpcResponse>(text) {
                return self.on_rpc_response(response);
            }
        }
        let frame: Envelope = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(e) => {
                log::warn!("switchboard client: ignoring a frame that is not an envelope: {e}");
                return;
            }
        };
        let correlation = frame.correlation_id.clone();
        match frame.msg_type.as_str() {
            "system.ping" => self.transmit(r#"{"type":"system.pong"}"#.to_owned()),
            "system.connection.close" => {
                self.close_reason = frame.payload_str("reason").map(str::to_owned);
            }
            "ack" => {
                let id = correlation.or_else(|| frame.payload_str("id").map(str::to_owned));
                if let Some(pending) = id.and_then(|id| self.take_publish(&id)) {
                    let duplicate = frame
                        .payload
                        .as_ref()
                        .and_then(|p| p.get("duplicate"))
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    if duplicate {
                        Shared::bump(&self.shared.duplicate_acks, 1);
                    }
                    let _ = pending.reply.send(Ok(Ack {
                        id: pending.id,
                        room: frame.room.unwrap_or_default(),
                        seq: frame.seq.unwrap_or(0),
                        duplicate,
                    }));
                }
            }
            "system.error" => {
                let error = Error::Server {
                    code: frame.payload_str("code").unwrap_or("internal").to_owned(),
                    message: frame.payload_str("message").unwrap_or_default().to_owned(),
                };
                if let Some(id) = correlation {
                    if let Some(pending) = self.take_publish(&id) {
                        let _ = pending.reply.send(Err(error));
                    } else if let Some(pending) = self.requests.remove(&id) {
                        pending.reply.fail(error);
                    } else if let Some(room) = self.joins.remove(&id) {
                        log::warn!("switchboard client: room {room} refused: {error}");
                        self.rooms.refuse(&room, error);
                    } else {
                        log::warn!("switchboard client: {error}");
                    }
                } else {
                    log::warn!("switchboard client: {error}");
                }
            }
            "room.joined" => {
                if let Some(id) = &correlation {
                    self.joins.remove(id);
                }
                if let Some(room) = self.rooms.joined(&frame) {
                    log::warn!("switchboard client: room {room} restarted its numbering");
                    self.send_join(&room);
                }
            }
            "room.left" => {
                if let Some(room) = &frame.room {
                    self.rooms.left(room);
                }
            }
            "system.connection.resumed" => {
                let rooms = frame
                    .payload
                    .as_ref()
                    .and_then(|p| p.get("rooms"))
                    .and_then(Value::as_object);
                for (room, report) in rooms.into_iter().flatten() {
                    if let Some(err) = report.get("error") {
                        let error = Error::Server {
                            code: err["code"].as_str().unwrap_or("internal").to_owned(),
                            message: err["message"].as_str().unwrap_or_default().to_owned(),
                        };
                        self.rooms.refuse(room, error);
                    }
                }
            }
            "presence.join" | "presence.leave" => self.rooms.presence(&frame),
            "system.pong" | "system.connection.established" => {}
            _ => {
                if frame.is_room_message() {
                    if self.rooms.message(frame) == Verdict::Duplicate {
                        Shared::bump(&self.shared.duplicates_dropped, 1);
                    }
                } else if let Some(id) = correlation {
                    match self.requests.remove(&id).map(|p| p.reply) {
                        Some(Replier::Envelope(tx)) => {
                            let _ = tx.send(Ok(frame));
                        }
                        Some(other) => other.fail(Error::Server {
                            code: "internal".into(),
                            message: format!("a {} frame answered a JSON-RPC call", frame.msg_type),
                        }),
                        // A reply to a request that timed out: nobody waits for it.
                        None => {}
                    }
                } else if let Some(sink) = &self.pushes {
                    if sink.send(frame).is_err() {
                        self.pushes = None;
                    }
                }
            }
        }
    }

    fn on_rpc_response(&mut self, response: RpcResponse) {
        let Some(id) = response.id.as_str() else {
            if let Some(error) = response.error {
                // `"id": null`: the broker could not read a request at all.
                log::warn!(
                    "switchboard client: JSON-RPC error {}: {}",
                    error.code,
                    error.message
                );
            }
            return;
        };
        let Some(pending) = self.requests.remove(id) else {
            return;
        };
        let outcome = match response.error {
            Some(error) => Err(Error::Rpc {
                code: error.code,
                message: error.message,
                data: error.data,
            }),
            None => Ok(response.result.unwrap_or(Value::Null)),
        };
        match (pending.reply, outcome) {
            (Replier::JsonRpc(tx), outcome) => {
                let _ = tx.send(outcome);
            }
            (Replier::Envelope(tx), _) => {
                let _ = tx.send(Err(Error::Server {
                    code: "internal".into(),
                    message: "a JSON-RPC response answered a native request".into(),
                }));
            }
        }
    }

    /// Ends the client: pending operations fail, subscriptions end, state `Closed`.
    fn finish(&mut self, error: Error) {
        for (_, pending) in std::mem::take(&mut self.publishes) {
            let _ = pending.reply.send(Err(error.clone()));
        }
        for (_, pending) in self.requests.drain() {
            pending.reply.fail(error.clone());
        }
        self.rooms.end_all();
        self.pushes = None;
        let (code, reason) = match error {
            Error::Closed { code, reason } => (code, reason),
            other => (None, other.to_string()),
        };
        self.shared.set(State::Closed { code, reason });
    }
}

fn closed_by_client(reason: &str) -> Error {
    Error::Closed {
        code: Some(1000),
        reason: reason.to_owned(),
    }
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An open connection: its socket, the broker's `system.connection.established`, and the
/// envelopes that came batched behind it in the same frame, if any.
struct Opened {
    socket: Socket,
    established: Envelope,
    behind: Option<String>,
}

/// The subprotocols offered, batched frames first: a broker without batching answers with
/// plain v1.
const SUBPROTOCOLS: &str = "switchboard.v1.batch, switchboard.v1";

/// Opens the WebSocket and reads `system.connection.established`.
async fn open(url: &str, token: Option<String>) -> Result<Opened, Ended> {
    let lost = |reason: String| Ended { code: None, reason };
    let mut request = url
        .into_client_request()
        .map_err(|e| lost(format!("invalid URL: {e}")))?;
    let headers = request.headers_mut();
    headers.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOLS),
    );
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| lost("the token is not a valid header value".into()))?;
        headers.insert("Authorization", value);
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| lost(format!("connect failed: {e}")))?;
    loop {
        match socket.next().await {
            Some(Ok(WsMessage::Text(text))) => {
                let (first, behind) = match text.as_str().split_once('\n') {
                    Some((first, behind)) => (first, Some(behind.to_owned())),
                    None => (text.as_str(), None),
                };
                let frame: Envelope = serde_json::from_str(first)
                    .map_err(|e| lost(format!("first frame is not an envelope: {e}")))?;
                if frame.msg_type == "system.connection.established" {
                    return Ok(Opened {
                        socket,
                        established: frame,
                        behind,
                    });
                }
                return Err(lost(format!(
                    "expected system.connection.established, got {}",
                    frame.msg_type
                )));
            }
            Some(Ok(WsMessage::Close(frame))) => {
                return Err(Ended {
                    code: frame.as_ref().map(|f| u16::from(f.code)),
                    reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                })
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(lost(format!("connection lost: {e}"))),
            None => return Err(lost("connection lost".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Backoff;

    fn driver(max_attempts: Option<u32>) -> Driver {
        let options = Options {
            reconnect: Some(Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(30),
                max_attempts,
                jitter: 0.0,
            }),
            ..Options::default()
        };
        let (_, rx) = mpsc::unbounded_channel();
        Driver::new("ws://x/ws".into(), options, rx, Arc::new(Shared::new()))
    }

    fn ended(code: Option<u16>) -> Ended {
        Ended {
            code,
            reason: String::new(),
        }
    }

    #[test]
    fn a_streak_of_sheddings_backs_off_although_each_connection_succeeded() {
        let mut d = driver(Some(4));
        let mut delays = Vec::new();
        for _ in 0..4 {
            d.on_established("c".into());
            delays.push(d.next_delay(&ended(Some(4009))).expect("reconnects"));
        }
        let secs: Vec<u64> = delays.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8]);
        // max_attempts bounds the streak: no endless reconnect-and-be-shed loop.
        d.on_established("c".into());
        assert!(matches!(
            d.next_delay(&ended(Some(4029))),
            Err(Error::Closed {
                code: Some(4029),
                ..
            })
        ));
    }

    #[test]
    fn an_ordinary_drop_after_a_good_connection_starts_the_backoff_over() {
        let mut d = driver(None);
        d.on_established("c".into());
        assert_eq!(d.next_delay(&ended(Some(4009))).unwrap().as_secs(), 1);
        d.on_established("c".into());
        assert_eq!(d.next_delay(&ended(Some(4009))).unwrap().as_secs(), 2);
        d.on_established("c".into());
        assert_eq!(d.next_delay(&ended(None)).unwrap().as_secs(), 1);
        // 1012: at once; 4000 and 1008: the end.
        assert_eq!(d.next_delay(&ended(Some(1012))).unwrap(), Duration::ZERO);
        assert!(d.next_delay(&ended(Some(1008))).is_err());
    }
}
