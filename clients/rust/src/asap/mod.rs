//! ASAP mode: the client as an ASAP agent (Async Simple Agent Protocol: JSON-RPC 2.0
//! `asap.send` requests carrying an [`AsapEnvelope`]), against switchboard's ASAP routes
//! or any ASAP server, such as the `asap-protocol` Python package's.
//!
//! The URL picks the transport: `ws(s)://host/asap/ws` is one WebSocket with any number of
//! requests in flight, `http(s)://host/asap` is one `POST` per request on a pooled HTTP
//! client. Inside: `ws` owns the socket, `http` posts.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use reqwest::Url;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

mod envelope;
mod http;
mod ws;

pub use envelope::{AsapEnvelope, ASAP_PROTOCOL_VERSION};

use crate::{Error, Result, Token};

/// How [`AsapClient::connect`] connects and how long calls wait.
#[derive(Debug, Clone)]
pub struct AsapOptions {
    /// The bearer token, sent as `Authorization: Bearer <token>`: on the WebSocket
    /// handshake, and on every HTTP request (a [`Token::Refresh`] callback is called for
    /// each). Default: none.
    pub token: Token,
    /// The agent URN this client speaks as in [`AsapClient::task_request`] (default
    /// `urn:asap:agent:rust-client`). Envelopes built by hand name their own sender.
    pub sender: String,
    /// Bound on waiting for one answer, on either transport (default 60 s). A call that
    /// runs out fails with [`Error::Timeout`]; a later answer to it arrives as an
    /// [`AsapEvent::Message`].
    pub timeout: Duration,
    /// Bound on opening the WebSocket or an HTTP connection (default 10 s).
    pub connect_timeout: Duration,
    /// The `ASAP-Version` header on HTTP requests: the wire versions the client speaks, in
    /// order of preference (default `2.2, 2.1`).
    pub transport_versions: String,
    /// The largest WebSocket frame to send (default 65 536, switchboard's
    /// `limits.max_frame_bytes`): a server closes the socket on a larger one, so it is
    /// refused locally with [`Error::TooLarge`](crate::Error::TooLarge).
    pub max_frame_bytes: usize,
    /// How many [`AsapEvent`]s the WebSocket keeps for [`AsapClient::events`] until they are
    /// read (default 1024). Beyond that, new events are dropped (with a logged warning),
    /// so the connection never waits for a slow reader.
    pub event_capacity: usize,
}

impl Default for AsapOptions {
    fn default() -> AsapOptions {
        AsapOptions {
            token: Token::None,
            sender: "urn:asap:agent:rust-client".into(),
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            transport_versions: "2.2, 2.1".into(),
            max_frame_bytes: 65_536,
            event_capacity: 1024,
        }
    }
}

impl AsapOptions {
    /// Default options with `token`.
    pub fn with_token(token: impl Into<Token>) -> AsapOptions {
        AsapOptions {
            token: token.into(),
            ..AsapOptions::default()
        }
    }

    /// These options with `sender` as the agent URN of [`AsapClient::task_request`].
    pub fn sender(mut self, sender: impl Into<String>) -> AsapOptions {
        self.sender = sender.into();
        self
    }
}

/// What the server sends on the WebSocket besides the answers to calls, read from
/// [`AsapClient::events`].
#[derive(Debug)]
pub enum AsapEvent {
    /// An `asap.ack`: the server received (or rejected) an envelope sent with
    /// `requires_ack`. [`AsapEnvelope::acknowledged_id`] names it.
    Ack(AsapEnvelope),
    /// A message that answers no call: a handler's later message about a request (a
    /// `task.update`, a partial result), a one-way delivery from another agent, or an
    /// answer that came after its call timed out. Its `correlation_id` says which
    /// request it is about.
    Message(AsapEnvelope),
    /// A request another agent sent to a URN this connection serves (switchboard forwards
    /// envelopes addressed to the URNs a connection sends from or registered with
    /// [`AsapClient::register`]). Answer it with [`IncomingRequest::reply`].
    Request(IncomingRequest),
    /// A JSON-RPC error the server could not attach to a call (the failure of a
    /// [`AsapClient::notify`]).
    Error(Error),
}

impl AsapEvent {
    fn kind(&self) -> &'static str {
        match self {
            AsapEvent::Ack(_) => "an ack",
            AsapEvent::Message(_) => "a message",
            AsapEvent::Request(_) => "a request",
            AsapEvent::Error(_) => "an error",
        }
    }
}

/// The WebSocket's [`AsapEvent`]s, as a [`Stream`]. Made by [`AsapClient::events`]; it
/// ends when the connection does.
#[derive(Debug)]
pub struct AsapEvents {
    rx: mpsc::Receiver<AsapEvent>,
}

impl AsapEvents {
    /// The next event; `None` once the connection has ended.
    pub async fn recv(&mut self) -> Option<AsapEvent> {
        self.rx.recv().await
    }
}

impl Stream for AsapEvents {
    type Item = AsapEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<AsapEvent>> {
        self.rx.poll_recv(cx)
    }
}

/// A request forwarded to this agent by the server, waiting for its reply. The reply goes
/// back on the connection the request came on (only that one may answer it), and the
/// server hands it to the agent that sent the request. Dropped without a reply, the
/// request leaves its sender waiting until the server gives up (switchboard:
/// `asap.route_timeout`, then -32033).
pub struct IncomingRequest {
    envelope: AsapEnvelope,
    commands: mpsc::WeakUnboundedSender<ws::Command>,
    shared: Arc<ws::Shared>,
}

impl fmt::Debug for IncomingRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingRequest")
            .field("envelope", &self.envelope)
            .finish_non_exhaustive()
    }
}

impl IncomingRequest {
    /// The request.
    pub fn envelope(&self) -> &AsapEnvelope {
        &self.envelope
    }

    /// Replies with `payload_type` and `payload`: an envelope from the request's
    /// recipient back to its sender, correlated to its id
    /// ([`AsapEnvelope::reply`]). Returns the server's receipt (switchboard: a
    /// `MessageAck` with status `processed`).
    pub async fn reply(
        self,
        payload_type: &str,
        payload: Map<String, Value>,
    ) -> Result<AsapEnvelope> {
        let reply = self.envelope.reply(payload_type, payload);
        self.reply_with(&reply).await
    }

    /// Replies with an envelope of your own (its `correlation_id` must be the request's
    /// id, as [`AsapEnvelope::reply`] and [`AsapEnvelope::task_response`] set it).
    pub async fn reply_with(self, reply: &AsapEnvelope) -> Result<AsapEnvelope> {
        let commands = self
            .commands
            .upgrade()
            .ok_or_else(|| self.shared.closed_error())?;
        let result = ws::call(
            &commands,
            &self.shared,
            "asap.send",
            ws::SendParams { envelope: reply },
        )
        .await?;
        envelope_of(result)
    }
}

/// An ASAP agent's connection to an ASAP server.
///
/// The URL picks the transport: `ws://…/asap/ws` (`wss://` with the `rustls` feature) is
/// one WebSocket on which any number of calls are in flight, correlated by JSON-RPC id,
/// with the server's heartbeats answered and everything else on [`AsapClient::events`];
/// `http://…/asap` (`https://` with `rustls`) posts each call on a pooled HTTP client. A
/// URL without a path gets the default one (`/asap/ws`, `/asap`).
///
/// The WebSocket is not reconnected: when it drops, calls waiting for an answer fail with
/// [`Error::ConnectionLost`] and later calls with [`Error::Closed`]; connect again.
/// Cheap to clone (clones share the connection), which closes when
/// [`AsapClient::close`] is called or every clone is dropped.
///
/// ```no_run
/// use serde_json::json;
/// use switchboard_client::{AsapClient, AsapEvent, AsapOptions, Error};
///
/// # async fn run() -> Result<(), Error> {
/// let options = AsapOptions::with_token("eyJ…").sender("urn:asap:agent:summariser");
/// let client = AsapClient::connect("ws://127.0.0.1:8000/asap/ws", options).await?;
///
/// // Ask the broker's echo skill, and read the task's result.
/// let request = client.task_request("urn:asap:agent:switchboard", "echo", json!({"text": "hi"}));
/// match client.send(&request).await {
///     Ok(answer) => println!("{} {:?}", answer.payload_type, answer.result()),
///     Err(Error::Asap { code, taxonomy, .. }) => eprintln!("refused: {code} {taxonomy:?}"),
///     Err(other) => return Err(other),
/// }
///
/// // Serve requests other agents send to this agent.
/// client.register(["urn:asap:agent:summariser"]).await?;
/// let mut events = client.events().expect("a WebSocket client's events");
/// while let Some(event) = events.recv().await {
///     if let AsapEvent::Request(request) = event {
///         let input = request.envelope().payload.get("input").cloned();
///         let answer = request.envelope().task_response(json!({"summary": input}));
///         request.reply_with(&answer).await?;
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct AsapClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sender: String,
    transport: Transport,
}

#[derive(Debug)]
enum Transport {
    WebSocket {
        commands: mpsc::UnboundedSender<ws::Command>,
        shared: Arc<ws::Shared>,
        events: Mutex<Option<AsapEvents>>,
    },
    Http(http::HttpConn),
}

impl AsapClient {
    /// Connects to `url`: opens the WebSocket (`ws://`, `wss://`), or makes the HTTP client
    /// (`http://`, `https://`; nothing is sent until the first call).
    ///
    /// Fails with [`Error::InvalidUrl`] for another scheme, [`Error::AsapRefused`] when the
    /// server refuses the WebSocket upgrade by status, [`Error::Transport`] or
    /// [`Error::Timeout`] when it cannot be reached. A server may also take the upgrade and
    /// close the socket at once (switchboard closes with 4000 when the token is missing or
    /// refused): the client is then closed, and calls fail with [`Error::Closed`] carrying
    /// the close code and reason.
    pub async fn connect(url: &str, options: AsapOptions) -> Result<AsapClient> {
        let (websocket, url) = endpoint(url)?;
        let transport = if websocket {
            let token = options.token.get().await.map_err(Error::Token)?;
            let socket = ws::open(&url, token, options.connect_timeout).await?;
            let shared = Arc::new(ws::Shared::new(options.timeout, options.max_frame_bytes));
            let (commands, commands_rx) = mpsc::unbounded_channel();
            let (events, events_rx) = mpsc::channel(options.event_capacity.max(1));
            tokio::spawn(ws::run(
                socket,
                commands_rx,
                commands.downgrade(),
                shared.clone(),
                events,
            ));
            Transport::WebSocket {
                commands,
                shared,
                events: Mutex::new(Some(AsapEvents { rx: events_rx })),
            }
        } else {
            Transport::Http(http::HttpConn::new(
                url,
                options.token,
                options.transport_versions,
                options.timeout,
                options.connect_timeout,
            )?)
        };
        Ok(AsapClient {
            inner: Arc::new(Inner {
                sender: options.sender,
                transport,
            }),
        })
    }

    /// Whether this client uses the WebSocket transport.
    pub fn is_websocket(&self) -> bool {
        matches!(self.inner.transport, Transport::WebSocket { .. })
    }

    /// Whether the WebSocket has ended (always `false` over HTTP).
    pub fn is_closed(&self) -> bool {
        match &self.inner.transport {
            Transport::WebSocket { shared, .. } => shared.is_closed(),
            Transport::Http(_) => false,
        }
    }

    /// The agent URN of [`AsapOptions::sender`].
    pub fn sender(&self) -> &str {
        &self.inner.sender
    }

    /// A `task.request` from this client's [`sender`](AsapOptions::sender) to `recipient`,
    /// asking for the skill `skill_id` on `input` (a JSON object); see
    /// [`AsapEnvelope::task_request`].
    pub fn task_request(&self, recipient: &str, skill_id: &str, input: Value) -> AsapEnvelope {
        AsapEnvelope::task_request(self.inner.sender.as_str(), recipient, skill_id, input)
    }

    /// Sends `envelope` (`asap.send`) and waits, up to [`AsapOptions::timeout`], for the
    /// envelope answering it.
    ///
    /// A JSON-RPC error from the server is [`Error::Asap`], with its code (-32012: no handler
    /// for the skill or payload type; -32032: the recipient agent is not connected; …) and
    /// its taxonomy code (`asap:transport/handler_not_found`). On the WebSocket, a
    /// connection that drops before the answer fails the call with
    /// [`Error::ConnectionLost`] (the server may or may not have acted on it).
    pub async fn send(&self, envelope: &AsapEnvelope) -> Result<AsapEnvelope> {
        let params = ws::SendParams { envelope };
        let result = match &self.inner.transport {
            Transport::WebSocket {
                commands, shared, ..
            } => ws::call(commands, shared, "asap.send", params).await?,
            Transport::Http(conn) => {
                let id = ws::next_rpc_id();
                let body = ws::encode("asap.send", params, Some(&id))?;
                conn.post(body).await?.ok_or_else(|| {
                    Error::InvalidAnswer("the server answered a request with no content".into())
                })?
            }
        };
        envelope_of(result)
    }

    /// Sends `envelope` as a notification: the server acts on it and answers nothing.
    ///
    /// On the WebSocket this returns once the frame is queued; a failure the server
    /// reports comes as an [`AsapEvent::Error`]. Over HTTP it returns after the server
    /// accepted the request, with an error if it refused it.
    pub async fn notify(&self, envelope: &AsapEnvelope) -> Result<()> {
        let params = ws::SendParams { envelope };
        match &self.inner.transport {
            Transport::WebSocket {
                commands, shared, ..
            } => ws::notify(commands, shared, "asap.send", params),
            Transport::Http(conn) => {
                let body = ws::encode("asap.send", params, None)?;
                conn.post(body).await.map(drop)
            }
        }
    }

    /// Makes this WebSocket connection the route to `agents` on switchboard
    /// (`asap.register`): envelopes other agents send to these URNs arrive as
    /// [`AsapEvent::Request`]s. Returns the URNs now served. (Sending from a URN also
    /// registers it, unless the broker's `asap.learn_senders` is off.)
    ///
    /// [`Error::Unsupported`] over HTTP, where nobody can be reached; [`Error::Asap`] when
    /// the broker refuses (a URN another connection serves, or one the token may not
    /// serve: -32034; a server without `asap.register`: -32601).
    pub async fn register<I, S>(&self, agents: I) -> Result<Vec<String>>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let Transport::WebSocket {
            commands, shared, ..
        } = &self.inner.transport
        else {
            return Err(Error::Unsupported(
                "asap.register needs the WebSocket transport (a ws:// URL)".into(),
            ));
        };
        let agents: Vec<String> = agents.into_iter().map(Into::into).collect();
        let result = ws::call(
            commands,
            shared,
            "asap.register",
            json!({ "agents": agents }),
        )
        .await?;
        let registered = result
            .get("registered")
            .and_then(Value::as_array)
            .map(|urns| {
                urns.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or(agents);
        Ok(registered)
    }

    /// The WebSocket's [`AsapEvents`]: acknowledgements, later messages, requests for the
    /// agents this connection serves, uncorrelated errors. Given once (later calls, and
    /// HTTP clients, get `None`). Until taken, up to [`AsapOptions::event_capacity`]
    /// events are kept; drop the stream to discard events.
    pub fn events(&self) -> Option<AsapEvents> {
        match &self.inner.transport {
            Transport::WebSocket { events, .. } => {
                events.lock().unwrap_or_else(|e| e.into_inner()).take()
            }
            Transport::Http(_) => None,
        }
    }

    /// Closes the WebSocket (close code 1000) and waits until it has ended: calls still
    /// waiting fail with [`Error::ConnectionLost`], the event stream ends. Nothing to do
    /// over HTTP (pooled connections close when the last clone is dropped).
    pub async fn close(&self) {
        if let Transport::WebSocket { commands, .. } = &self.inner.transport {
            let (done, ended) = tokio::sync::oneshot::channel();
            if commands.send(ws::Command::Close { done }).is_ok() {
                let _ = ended.await;
            }
        }
    }
}

/// The transport the URL asks for (`true`: WebSocket), and the URL with the default path
/// when it has none.
fn endpoint(url: &str) -> Result<(bool, Url)> {
    let mut parsed = Url::parse(url).map_err(|e| Error::InvalidUrl(format!("{url}: {e}")))?;
    let websocket = match parsed.scheme() {
        "ws" | "wss" => true,
        "http" | "https" => false,
        _ => {
            return Err(Error::InvalidUrl(format!(
                "{url}: expected ws://, wss://, http:// or https://"
            )))
        }
    };
    if matches!(parsed.scheme(), "wss" | "https") && !cfg!(feature = "rustls") {
        return Err(Error::InvalidUrl(format!(
            "{url}: {}:// needs the crate's `rustls` feature",
            parsed.scheme()
        )));
    }
    if parsed.path().is_empty() || parsed.path() == "/" {
        parsed.set_path(if websocket { "/asap/ws" } else { "/asap" });
    }
    Ok((websocket, parsed))
}

/// The envelope of an `asap.send` result (`{"envelope": …}`).
fn envelope_of(mut result: Value) -> Result<AsapEnvelope> {
    let envelope = result
        .get_mut("envelope")
        .map(Value::take)
        .ok_or_else(|| Error::InvalidAnswer("the result has no envelope".into()))?;
    serde_json::from_value(envelope)
        .map_err(|e| Error::InvalidAnswer(format!("the answering envelope does not parse: {e}")))
}

/// A JSON-RPC error object as [`Error::Asap`]: its code and message, and the taxonomy code
/// from `data.code` (or `data.asap_taxonomy_code`).
fn rpc_error(error: Value) -> Error {
    let code = error.get("code").and_then(Value::as_i64).unwrap_or(-32603);
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let data = error.get("data").filter(|d| !d.is_null()).cloned();
    let taxonomy = data.as_ref().and_then(|data| {
        [data.get("code"), data.get("asap_taxonomy_code")]
            .into_iter()
            .flatten()
            .find_map(Value::as_str)
            .map(str::to_owned)
    });
    Error::Asap {
        code,
        message,
        taxonomy,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_picks_the_transport_and_a_bare_host_gets_the_default_path() {
        let (ws, url) = endpoint("ws://127.0.0.1:8000").unwrap();
        assert!(ws);
        assert_eq!(url.as_str(), "ws://127.0.0.1:8000/asap/ws");
        let (ws, url) = endpoint("HTTP://127.0.0.1:8000/").unwrap();
        assert!(!ws);
        assert_eq!(url.as_str(), "http://127.0.0.1:8000/asap");
        let (_, url) = endpoint("http://h/custom/asap?token=t").unwrap();
        assert_eq!(url.as_str(), "http://h/custom/asap?token=t");
        assert!(matches!(
            endpoint("ftp://h/asap"),
            Err(Error::InvalidUrl(_))
        ));
        assert!(matches!(endpoint("not a url"), Err(Error::InvalidUrl(_))));
        if !cfg!(feature = "rustls") {
            assert!(matches!(
                endpoint("https://h/asap"),
                Err(Error::InvalidUrl(_))
            ));
        }
    }

    #[test]
    fn json_rpc_errors_keep_code_message_and_taxonomy() {
        let error = rpc_error(json!({"code": -32012, "message": "No handler",
            "data": {"code": "asap:transport/handler_not_found", "recoverable": false}}));
        match error {
            Error::Asap {
                code,
                message,
                taxonomy,
                data,
            } => {
                assert_eq!(code, -32012);
                assert_eq!(message, "No handler");
                assert_eq!(
                    taxonomy.as_deref(),
                    Some("asap:transport/handler_not_found")
                );
                assert_eq!(data.unwrap()["recoverable"], false);
            }
            other => panic!("{other:?}"),
        }
        let bare = rpc_error(json!({"code": -32001, "message": "Rate limit exceeded"}));
        assert!(matches!(
            bare,
            Error::Asap {
                code: -32001,
                taxonomy: None,
                data: None,
                ..
            }
        ));
    }

    #[test]
    fn results_without_an_envelope_are_invalid_answers() {
        assert!(matches!(
            envelope_of(json!({"registered": []})),
            Err(Error::InvalidAnswer(_))
        ));
        assert!(matches!(
            envelope_of(json!({"envelope": {"sender": 1}})),
            Err(Error::InvalidAnswer(_))
        ));
    }
}
