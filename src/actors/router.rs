//! Router actor: owns the table that maps an application message type to its handler
//! `Recipient`, and the middleware chain run before and after every handler call.
//!
//! Sessions never wait in the Router's mailbox: on each change the Router publishes a new
//! immutable [`RouteTable`] through an `ArcSwap`, and sessions dispatch through the snapshot
//! they load. Room traffic does not come here at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use arc_swap::ArcSwap;
use serde_json::Value;

use super::ConnectionId;
use crate::asap::{Envelope, Skill};
use crate::middleware::Middleware;
use crate::protocol::ErrorCode;

/// The kind of endpoint a handler request came in through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A protocol v1 WebSocket (`/ws` and its endpoints), native or JSON-RPC frames.
    Socket,
    /// An ASAP agent on `/asap/ws`.
    AsapSocket,
    /// An ASAP `POST /asap` request (one answer, no later messages).
    AsapHttp,
    /// An ASAP `POST /asap/stream` request: later messages become server-sent events.
    AsapStream,
}

/// The endpoints a handler serves. A handler for v1 application types is not reachable by
/// ASAP agents unless it says so, and an ASAP skill is not a v1 message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origins(u8);

impl Origins {
    /// Protocol v1 WebSockets only (what [`crate::Broker::register_handler`] gives).
    pub const SOCKET: Origins = Origins(1);
    /// ASAP over WebSocket, HTTP and the SSE stream.
    pub const ASAP: Origins = Origins(2 | 4 | 8);
    /// Every endpoint.
    pub const ALL: Origins = Origins(1 | 2 | 4 | 8);

    fn bit(origin: Origin) -> u8 {
        match origin {
            Origin::Socket => 1,
            Origin::AsapSocket => 2,
            Origin::AsapHttp => 4,
            Origin::AsapStream => 8,
        }
    }

    /// Whether requests from `origin` may reach the handler.
    pub fn contains(self, origin: Origin) -> bool {
        self.0 & Origins::bit(origin) != 0
    }

    /// These endpoints and `other`'s.
    pub fn with(self, other: Origins) -> Origins {
        Origins(self.0 | other.0)
    }
}

/// Sends a handler's later messages to the caller, after (or instead of) its reply: a v1
/// push frame, an ASAP result frame that matches no pending request (the client's
/// `on_message`), or a server-sent event. Cheap to clone; keep it as long as needed.
#[derive(Clone)]
pub struct Pusher(Arc<dyn Fn(Reply) -> bool + Send + Sync>);

impl Pusher {
    pub(crate) fn new(send: impl Fn(Reply) -> bool + Send + Sync + 'static) -> Pusher {
        Pusher(Arc::new(send))
    }

    /// Sends `message` to the caller; false once the caller is gone (or its queue is full,
    /// which closes it), so a handler can stop producing.
    pub fn push(&self, message: Reply) -> bool {
        (self.0)(message)
    }
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pusher")
    }
}

/// A request for an application handler.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Reply, HandlerError>")]
pub struct HandlerRequest {
    /// The calling connection.
    pub connection_id: ConnectionId,
    /// The calling user (`sub`, or `anonymous:<connection id>`).
    pub user: Arc<str>,
    /// Whether the caller has no token.
    pub anonymous: bool,
    /// Whether the caller's token carries `admin: true`.
    pub admin: bool,
    /// The message type (e.g. `task.request`).
    pub msg_type: String,
    /// The request id, echoed as `correlation_id` in the reply.
    pub id: Option<String>,
    /// The envelope's room, if any.
    pub room: Option<String>,
    /// The payload (`null` when absent).
    pub payload: Value,
    /// Which kind of endpoint the request came in through.
    pub origin: Origin,
    /// For ASAP requests: the whole envelope (sender, recipient, trace, extensions).
    pub envelope: Option<Arc<Envelope>>,
    /// Sends later messages to the caller; `None` where the caller can take only the reply
    /// (`POST /asap`).
    pub push: Option<Pusher>,
}

/// A handler's answer: sent back as `{type, correlation_id, payload}` (or a JSON-RPC result).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Reply type, e.g. `task.response`.
    pub msg_type: String,
    /// Reply payload.
    pub payload: Value,
}

impl Reply {
    /// A reply of `msg_type` carrying `payload`.
    pub fn new(msg_type: impl Into<String>, payload: Value) -> Reply {
        Reply {
            msg_type: msg_type.into(),
            payload,
        }
    }
}

/// A handler (or middleware) refusal, sent back as `system.error` (or a JSON-RPC error).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HandlerError {
    /// Protocol error code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
}

impl HandlerError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> HandlerError {
        HandlerError {
            code,
            message: message.into(),
        }
    }
}

/// An immutable snapshot of handlers and middleware.
#[derive(Default)]
pub struct RouteTable {
    handlers: HashMap<String, Route>,
    middleware: Vec<Arc<dyn Middleware>>,
}

#[derive(Clone)]
struct Route {
    recipient: Recipient<HandlerRequest>,
    origins: Origins,
    skill: Option<Skill>,
}

/// The shared, swappable route table sessions read from.
pub type Routes = Arc<ArcSwap<RouteTable>>;

impl RouteTable {
    /// Runs the middleware chain and the handler for `req`, with a deadline.
    pub async fn call(
        self: Arc<Self>,
        req: HandlerRequest,
        timeout: Duration,
    ) -> Result<Reply, HandlerError> {
        let started = Instant::now();
        let result = self.call_inner(&req, timeout).await;
        for mw in self.middleware.iter().rev() {
            mw.after(&req, &result, started.elapsed());
        }
        result
    }

    async fn call_inner(
        &self,
        req: &HandlerRequest,
        timeout: Duration,
    ) -> Result<Reply, HandlerError> {
        let Some(route) = self
            .handlers
            .get(&req.msg_type)
            .filter(|r| r.origins.contains(req.origin))
        else {
            return Err(HandlerError::new(
                ErrorCode::UnknownType,
                format!("no handler for message type `{}`", req.msg_type),
            ));
        };
        let handler = &route.recipient;
        for mw in &self.middleware {
            mw.before(req)?;
        }
        match tokio::time::timeout(timeout, handler.send(req.clone())).await {
            Ok(Ok(result)) => result,
            Ok(Err(MailboxError::Closed)) => Err(HandlerError::new(
                ErrorCode::Internal,
                format!("handler for `{}` is not running", req.msg_type),
            )),
            Ok(Err(MailboxError::Timeout)) | Err(_) => Err(HandlerError::new(
                ErrorCode::Timeout,
                format!(
                    "handler for `{}` did not answer within {timeout:?}",
                    req.msg_type
                ),
            )),
        }
    }

    /// Whether a handler is registered for `msg_type`.
    pub fn has_handler(&self, msg_type: &str) -> bool {
        self.handlers.contains_key(msg_type)
    }

    /// Whether a handler for `msg_type` serves requests from `origin`.
    pub fn serves(&self, msg_type: &str, origin: Origin) -> bool {
        self.handlers
            .get(msg_type)
            .is_some_and(|r| r.origins.contains(origin))
    }

    /// The ASAP skills registered, for the manifest (sorted by id).
    pub fn skills(&self) -> Vec<Skill> {
        let mut skills: Vec<Skill> = self
            .handlers
            .values()
            .filter_map(|r| r.skill.clone())
            .collect();
        skills.sort_by(|a, b| a.id.cmp(&b.id));
        skills
    }
}

/// The Router actor.
pub struct Router {
    routes: Routes,
}

impl Router {
    /// A router publishing into `routes`, starting with `middleware`.
    pub fn new(routes: Routes, middleware: Vec<Arc<dyn Middleware>>) -> Router {
        routes.store(Arc::new(RouteTable {
            handlers: HashMap::new(),
            middleware,
        }));
        Router { routes }
    }

    fn republish(&self, change: impl FnOnce(&mut RouteTable)) {
        let current = self.routes.load();
        let mut next = RouteTable {
            handlers: current.handlers.clone(),
            middleware: current.middleware.clone(),
        };
        change(&mut next);
        self.routes.store(Arc::new(next));
    }
}

impl Actor for Router {
    type Context = Context<Self>;
}

/// Registers (or replaces) the handler for a message type.
#[derive(Message)]
#[rtype(result = "Result<(), HandlerError>")]
pub struct RegisterHandler {
    /// The application message type; `room.*` and `system.*` belong to the broker.
    pub msg_type: String,
    /// Where requests of that type go.
    pub recipient: Recipient<HandlerRequest>,
    /// The endpoints it serves.
    pub origins: Origins,
    /// For an ASAP skill: what the manifest says about it.
    pub skill: Option<Skill>,
}

impl Handler<RegisterHandler> for Router {
    type Result = Result<(), HandlerError>;

    fn handle(&mut self, msg: RegisterHandler, _: &mut Self::Context) -> Self::Result {
        if crate::protocol::types::is_broker_type(&msg.msg_type) || msg.msg_type.is_empty() {
            return Err(HandlerError::new(
                ErrorCode::BadRequest,
                format!("`{}` is reserved for the broker", msg.msg_type),
            ));
        }
        log::info!("router: handler registered for `{}`", msg.msg_type);
        let route = Route {
            recipient: msg.recipient,
            origins: msg.origins,
            skill: msg.skill,
        };
        self.republish(|t| {
            t.handlers.insert(msg.msg_type, route);
        });
        Ok(())
    }
}

/// Appends a middleware to the chain (runs after the ones already there).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AddMiddleware(pub Arc<dyn Middleware>);

impl Handler<AddMiddleware> for Router {
    type Result = ();

    fn handle(&mut self, msg: AddMiddleware, _: &mut Self::Context) {
        self.republish(|t| t.middleware.push(msg.0));
    }
}
