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
use crate::middleware::Middleware;
use crate::protocol::ErrorCode;

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
    /// The message type (e.g. `task.request`).
    pub msg_type: String,
    /// The request id, echoed as `correlation_id` in the reply.
    pub id: Option<String>,
    /// The envelope's room, if any.
    pub room: Option<String>,
    /// The payload (`null` when absent).
    pub payload: Value,
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
    handlers: HashMap<String, Recipient<HandlerRequest>>,
    middleware: Vec<Arc<dyn Middleware>>,
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
        let Some(handler) = self.handlers.get(&req.msg_type) else {
            return Err(HandlerError::new(
                ErrorCode::UnknownType,
                format!("no handler for message type `{}`", req.msg_type),
            ));
        };
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
        self.republish(|t| {
            t.handlers.insert(msg.msg_type, msg.recipient);
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
