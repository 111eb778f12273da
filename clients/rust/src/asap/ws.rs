//! ASAP over one WebSocket (`/asap/ws`): the task that owns the socket, correlates answers
//! by JSON-RPC id, answers heartbeats, and hands everything else to the event stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Url;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{rpc_error, AsapEnvelope, AsapEvent, IncomingRequest};
use crate::Error;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The answer to the server's heartbeat `{"type":"ping"}`.
const PONG: &str = r#"{"type":"pong"}"#;
/// The method of the server's acknowledgements.
const ACK: &str = "asap.ack";
/// How long a close by the client waits for the server's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What the handles ask of the socket task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Write `text`; with `reply`, wait for the answer under `id`.
    Send {
        id: Option<String>,
        text: String,
        reply: Option<oneshot::Sender<Result<Value, Error>>>,
    },
    /// The caller stopped waiting for `id`.
    Cancel { id: String },
    /// Close the socket (1000); `done` is dropped when the task has ended.
    Close { done: oneshot::Sender<()> },
}

/// How the connection ended.
#[derive(Debug, Clone)]
struct Ended {
    code: Option<u16>,
    reason: String,
}

/// What the handles and the task share.
#[derive(Debug)]
pub(crate) struct Shared {
    ended: Mutex<Option<Ended>>,
    /// Bound on waiting for one answer.
    pub(crate) timeout: Duration,
    /// Larger frames are refused before they are sent.
    pub(crate) max_frame_bytes: usize,
}

impl Shared {
    pub(crate) fn new(timeout: Duration, max_frame_bytes: usize) -> Shared {
        Shared {
            ended: Mutex::new(None),
            timeout,
            max_frame_bytes,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The error for a call made after the connection ended.
    pub(crate) fn closed_error(&self) -> Error {
        match &*self.ended.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(ended) => Error::Closed {
                code: ended.code,
                reason: ended.reason.clone(),
            },
            None => Error::Closed {
                code: None,
                reason: "the connection task ended".into(),
            },
        }
    }

    fn set_ended(&self, ended: Ended) {
        *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(ended);
    }
}

/// A JSON-RPC request (with `id`) or notification (without).
#[derive(Serialize)]
struct Request<'a, P: Serialize> {
    jsonrpc: &'static str,
    method: &'a str,
    params: P,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

/// `params` of `asap.send`.
#[derive(Serialize)]
pub(crate) struct SendParams<'a> {
    pub(crate) envelope: &'a AsapEnvelope,
}

/// The text of a JSON-RPC request or notification.
pub(crate) fn encode<P: Serialize>(
    method: &str,
    params: P,
    id: Option<&str>,
) -> Result<String, Error> {
    serde_json::to_string(&Request {
        jsonrpc: "2.0",
        method,
        params,
        id,
    })
    .map_err(|e| Error::Serialize(e.to_string()))
}

/// A JSON-RPC id no other request of this process has.
pub(crate) fn next_rpc_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("rs-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Sends a request on the socket and waits (up to the shared timeout) for its answer: the
/// JSON-RPC `result`, or the error object as [`Error::Asap`].
pub(crate) async fn call<P: Serialize>(
    commands: &mpsc::UnboundedSender<Command>,
    shared: &Shared,
    method: &str,
    params: P,
) -> Result<Value, Error> {
    let id = next_rpc_id();
    let text = encode(method, params, Some(&id))?;
    check_size(shared, &text)?;
    let (reply, rx) = oneshot::channel();
    commands
        .send(Command::Send {
            id: Some(id.clone()),
            text,
            reply: Some(reply),
        })
        .map_err(|_| shared.closed_error())?;
    match timeout(shared.timeout, rx).await {
        Ok(Ok(result)) => result,
        // Never sent: the connection ended with the command still queued.
        Ok(Err(_)) => Err(shared.closed_error()),
        Err(_) => {
            let _ = commands.send(Command::Cancel { id });
            Err(Error::Timeout(format!(
                "no answer to {method} within {:?}",
                shared.timeout
            )))
        }
    }
}

/// Sends a notification (no answer).
pub(crate) fn notify<P: Serialize>(
    commands: &mpsc::UnboundedSender<Command>,
    shared: &Shared,
    method: &str,
    params: P,
) -> Result<(), Error> {
    let text = encode(method, params, None)?;
    check_size(shared, &text)?;
    commands
        .send(Command::Send {
            id: None,
            text,
            reply: None,
        })
        .map_err(|_| shared.closed_error())
}

fn check_size(shared: &Shared, text: &str) -> Result<(), Error> {
    // A server closes the socket on an oversize frame, failing every call in flight.
    if text.len() > shared.max_frame_bytes {
        return Err(Error::TooLarge {
            size: text.len(),
            max: shared.max_frame_bytes,
        });
    }
    Ok(())
}

/// Opens the WebSocket, with `Authorization: Bearer <token>` when there is a token.
pub(crate) async fn open(
    url: &Url,
    token: Option<String>,
    limit: Duration,
) -> Result<Socket, Error> {
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| Error::InvalidUrl(format!("{url}: {e}")))?;
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Error::Token("the token is not a valid header value".into()))?;
        request.headers_mut().insert("Authorization", value);
    }
    match timeout(limit, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            Err(Error::AsapRefused {
                status: response.status().as_u16(),
                message: super::http::describe_body(body.as_bytes())
                    .unwrap_or_else(|| format!("WebSocket upgrade to {url} refused")),
            })
        }
        Ok(Err(e)) => Err(Error::Transport(format!(
            "WebSocket connection to {url} failed: {e}"
        ))),
        Err(_) => Err(Error::Timeout(format!(
            "no WebSocket connection to {url} within {limit:?}"
        ))),
    }
}

/// The socket task's state.
struct Task {
    pending: HashMap<String, oneshot::Sender<Result<Value, Error>>>,
    events: mpsc::Sender<AsapEvent>,
    /// For [`IncomingRequest`]s: a weak handle, so a request waiting in the event stream
    /// does not keep the connection open after every client handle is gone.
    weak: mpsc::WeakUnboundedSender<Command>,
    shared: Arc<Shared>,
    dropped_events: u64,
}

/// Runs the connection until the server closes it, it fails, or the client closes it;
/// then fails every call still waiting with [`Error::ConnectionLost`] and ends the event
/// stream.
pub(crate) async fn run(
    socket: Socket,
    mut commands: mpsc::UnboundedReceiver<Command>,
    weak: mpsc::WeakUnboundedSender<Command>,
    shared: Arc<Shared>,
    events: mpsc::Sender<AsapEvent>,
) {
    let (mut sink, mut stream) = socket.split();
    let mut task = Task {
        pending: HashMap::new(),
        events,
        weak,
        shared,
        dropped_events: 0,
    };
    let mut closers = Vec::new();
    let lost = |e: &dyn std::fmt::Display| Ended {
        code: None,
        reason: format!("connection lost: {e}"),
    };
    let ended = loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::Send { id, text, reply }) => {
                    if let (Some(id), Some(reply)) = (id, reply) {
                        task.pending.insert(id, reply);
                    }
                    if let Err(e) = sink.send(WsMessage::text(text)).await {
                        break lost(&e);
                    }
                }
                Some(Command::Cancel { id }) => {
                    task.pending.remove(&id);
                }
                Some(Command::Close { done }) => {
                    closers.push(done);
                    break close(&mut sink, &mut stream).await;
                }
                // Every client handle is gone.
                None => break close(&mut sink, &mut stream).await,
            },
            frame = stream.next() => match frame {
                Some(Ok(WsMessage::Text(text))) => {
                    if task.on_text(text.as_str()) {
                        if let Err(e) = sink.send(WsMessage::text(PONG)).await {
                            break lost(&e);
                        }
                    }
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    break Ended {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame
                            .map(|f| f.reason.to_string())
                            .filter(|r| !r.is_empty())
                            .unwrap_or_else(|| "closed by the server".into()),
                    }
                }
                // Protocol-level pings are answered by tungstenite.
                Some(Ok(_)) => {}
                Some(Err(e)) => break lost(&e),
                None => break lost(&"the server closed the connection"),
            },
        }
    };
    log::debug!("ASAP WebSocket ended: {:?} {}", ended.code, ended.reason);
    task.shared.set_ended(ended);
    for (_, reply) in task.pending.drain() {
        let _ = reply.send(Err(Error::ConnectionLost));
    }
    commands.close();
    while let Ok(cmd) = commands.try_recv() {
        match cmd {
            Command::Send {
                reply: Some(reply), ..
            } => {
                let _ = reply.send(Err(task.shared.closed_error()));
            }
            Command::Close { done } => closers.push(done),
            _ => {}
        }
    }
    // Dropping `task.events` ends the event stream; dropping `closers` wakes `close()`.
}

/// Closes the socket from this side (1000) and waits briefly for the server's close frame.
async fn close(
    sink: &mut futures_util::stream::SplitSink<Socket, WsMessage>,
    stream: &mut futures_util::stream::SplitStream<Socket>,
) -> Ended {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "closed by the client".into(),
    };
    if sink.send(WsMessage::Close(Some(frame))).await.is_ok() {
        let _ = timeout(CLOSE_WAIT, async {
            while let Some(Ok(msg)) = stream.next().await {
                if matches!(msg, WsMessage::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    Ended {
        code: Some(1000),
        reason: "closed by the client".into(),
    }
}

impl Task {
    /// Handles one text frame; `true` when it was a heartbeat ping to answer.
    fn on_text(&mut self, text: &str) -> bool {
        let Ok(Value::Object(mut frame)) = serde_json::from_str::<Value>(text) else {
            log::debug!("ASAP: ignored a frame that is not a JSON object");
            return false;
        };
        if !frame.contains_key("method") && !frame.contains_key("jsonrpc") {
            match frame.get("type").and_then(Value::as_str) {
                Some("ping") => return true,
                Some("pong") => return false,
                _ => {}
            }
        }
        if let Some(method) = frame.get("method").and_then(Value::as_str) {
            if method == ACK {
                match envelope_in(frame.get("params")) {
                    Some(envelope) => self.emit(AsapEvent::Ack(envelope)),
                    None => log::debug!("ASAP: ignored an asap.ack without a valid envelope"),
                }
            } else {
                log::debug!("ASAP: ignored a server request for method {method}");
            }
            return false;
        }
        let id = match frame.get("id") {
            Some(Value::String(id)) => Some(id.clone()),
            Some(Value::Number(id)) => Some(id.to_string()),
            _ => None,
        };
        let error = match frame.remove("error") {
            None | Some(Value::Null) => None,
            Some(error) => Some(rpc_error(error)),
        };
        if let Some(reply) = id.as_ref().and_then(|id| self.pending.remove(id)) {
            let _ = reply.send(match error {
                Some(error) => Err(error),
                None => Ok(frame.remove("result").unwrap_or(Value::Null)),
            });
            return false;
        }
        if let Some(error) = error {
            // A notification's failure, or an error under an id nobody waits for.
            self.emit(AsapEvent::Error(error));
            return false;
        }
        match envelope_in(frame.get("result")) {
            // A request forwarded to an agent this connection serves answers nothing.
            Some(envelope) if envelope.correlation_id.is_none() => {
                let request = IncomingRequest {
                    envelope,
                    commands: self.weak.clone(),
                    shared: self.shared.clone(),
                };
                self.emit(AsapEvent::Request(request));
            }
            Some(envelope) => self.emit(AsapEvent::Message(envelope)),
            None => log::debug!("ASAP: ignored a result frame without an envelope"),
        }
        false
    }

    fn emit(&mut self, event: AsapEvent) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                self.dropped_events += 1;
                if self.dropped_events == 1 || self.dropped_events.is_multiple_of(1000) {
                    log::warn!(
                        "ASAP: event stream full ({} events dropped so far, this one {}); \
                         read AsapClient::events or raise AsapOptions::event_capacity",
                        self.dropped_events,
                        event.kind()
                    );
                }
            }
            // Nobody reads events.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// The envelope under `params.envelope` or `result.envelope`.
fn envelope_in(container: Option<&Value>) -> Option<AsapEnvelope> {
    let envelope = container?.get("envelope")?;
    match serde_json::from_value(envelope.clone()) {
        Ok(envelope) => Some(envelope),
        Err(e) => {
            log::debug!("ASAP: ignored an envelope that does not parse: {e}");
            None
        }
    }
}
