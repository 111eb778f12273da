//! Where an envelope goes, in this order:
//!
//! 1. a reply to a request the broker forwarded to this connection → back to that caller;
//! 2. a recipient served by a connected agent → forwarded to it, and its reply awaited;
//!    unless the envelope answers another (`correlation_id`), which is delivered one way;
//! 3. a handler registered with the Router for the task's skill (`skill:<id>`) or the
//!    payload type, serving this kind of endpoint → called through the middleware chain;
//! 4. otherwise: "no handler" when the envelope is addressed to the broker itself, and
//!    "recipient offline" when it names another agent.
//!
//! The envelope's timestamp and nonce are checked first, whatever the route.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde_json::{Map, Value};

use super::{envelope::normalized_type, skill_key, AsapError, Envelope};
use crate::actors::router::{HandlerRequest, Origin, Pusher, Reply};
use crate::actors::ConnectionId;
use crate::auth::Identity;
use crate::broker::BrokerState;

/// One envelope to handle, and who sent it.
pub(crate) struct Call {
    pub envelope: Envelope,
    pub origin: Origin,
    /// The caller's connection (WebSocket); `None` over HTTP.
    pub connection_id: Option<ConnectionId>,
    /// Who is calling.
    pub identity: Arc<Identity>,
    /// How a handler reaches the caller later.
    pub push: Option<Pusher>,
}

/// Handles `call`; the answer is the envelope for the JSON-RPC result.
pub(crate) async fn dispatch(state: Arc<BrokerState>, call: Call) -> Result<Envelope, AsapError> {
    state.asap.in_flight.fetch_add(1, Ordering::Relaxed);
    let result = route(&state, call).await;
    state.asap.in_flight.fetch_sub(1, Ordering::Relaxed);
    result
}

async fn route(state: &Arc<BrokerState>, call: Call) -> Result<Envelope, AsapError> {
    let envelope = call.envelope;
    if !call.identity.may_act_as(&envelope.sender) {
        return Err(AsapError::InvalidParams {
            message: format!(
                "sender {} is not an agent this token may act as (its agents claim)",
                envelope.sender
            ),
            details: Vec::new(),
        });
    }
    envelope.check_freshness(SystemTime::now())?;
    if let Some(nonce) = envelope.nonce()? {
        state.asap.check_nonce(nonce, Instant::now())?;
    }
    let own_id = state.config.asap.agent_id.as_str();
    if let Some(from) = &call.connection_id {
        if state.asap.directory.answer(&envelope, from) {
            return Ok(envelope.ack("processed", None).answering(&envelope));
        }
    }
    if envelope.recipient != own_id && envelope.correlation_id.is_some() {
        if let Some(delivered) = state.asap.directory.deliver(&envelope) {
            delivered?;
            return Ok(envelope.ack("processed", None).answering(&envelope));
        }
    }
    if envelope.recipient != own_id {
        if let Some(forwarded) = state.asap.directory.forward(&envelope) {
            let reply = forwarded?;
            // However this wait ends (answer, deadline, or the caller going away and this
            // future being dropped), the request stops waiting in the directory.
            let _waiting = Waiting(state, envelope.id());
            let deadline = state.config.asap.route_timeout;
            return match tokio::time::timeout(deadline, reply).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) => Err(AsapError::RecipientOffline(envelope.recipient.clone())),
                Err(_) => Err(AsapError::Timeout(format!(
                    "{} did not answer within {deadline:?} (asap.route_timeout)",
                    envelope.recipient
                ))),
            };
        }
    }
    let routes = state.routes.load_full();
    let key = envelope
        .skill_id()
        .map(skill_key)
        .filter(|key| routes.serves(key, call.origin))
        .or_else(|| {
            [
                envelope.payload_type.clone(),
                canonical_type(&envelope.payload_type),
            ]
            .into_iter()
            .find(|key| routes.serves(key, call.origin))
        });
    let Some(msg_type) = key else {
        return Err(if envelope.recipient == own_id {
            AsapError::HandlerNotFound(envelope.payload_type.clone())
        } else {
            AsapError::RecipientOffline(envelope.recipient.clone())
        });
    };
    let envelope = Arc::new(envelope);
    let req = HandlerRequest {
        connection_id: call
            .connection_id
            .clone()
            .unwrap_or_else(|| Arc::from("http")),
        user: call.identity.user.clone(),
        anonymous: call.identity.anonymous,
        admin: call.identity.admin,
        msg_type,
        id: envelope.id.clone(),
        room: None,
        payload: Value::Object(envelope.payload.clone()),
        origin: call.origin,
        envelope: Some(envelope.clone()),
        push: call.push,
    };
    let reply = routes
        .call(req, state.config.router.handler_timeout)
        .await
        .map_err(AsapError::from)?;
    Ok(answer_with(&envelope, own_id, reply))
}

/// Removes a forwarded request from the directory's waiting list when dropped.
struct Waiting<'a>(&'a BrokerState, &'a str);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.asap.directory.forget(self.1);
    }
}

/// The spelling handlers are registered under for the protocol's own payload types
/// (`TaskRequest`, `task_request` → `task.request`); other types keep theirs.
fn canonical_type(payload_type: &str) -> String {
    let canonical = match normalized_type(payload_type).as_str() {
        "taskrequest" => "task.request",
        "taskcancel" => "task.cancel",
        "taskupdate" => "task.update",
        "taskresponse" => "task.response",
        "messagesend" => "message.send",
        "statequery" => "state.query",
        "staterestore" => "state.restore",
        "artifactnotify" => "artifact.notify",
        "mcptoolcall" => "mcp.tool_call",
        "mcpresourcefetch" => "mcp.resource_fetch",
        _ => return payload_type.to_owned(),
    };
    canonical.to_owned()
}

/// A handler's reply (or later message) as the envelope answering `request`, from the
/// broker's agent id.
pub(crate) fn answer_with(request: &Envelope, own_id: &str, reply: Reply) -> Envelope {
    request.answer(own_id, &reply.msg_type, as_object(reply.payload))
}

/// An ASAP payload is an object; a handler's other JSON goes under `result`.
pub(crate) fn as_object(payload: Value) -> Map<String, Value> {
    match payload {
        Value::Object(map) => map,
        other => {
            let mut map = Map::new();
            map.insert("result".into(), other);
            map
        }
    }
}

impl Envelope {
    /// This envelope as the answer to `request` (its id as `correlation_id`).
    fn answering(mut self, request: &Envelope) -> Envelope {
        self.correlation_id = Some(request.id().to_owned());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_types_in_any_spelling_find_their_handler() {
        for spelling in ["TaskRequest", "task_request", "task.request", "taskrequest"] {
            assert_eq!(canonical_type(spelling), "task.request");
        }
        assert_eq!(canonical_type("com.example.Custom"), "com.example.Custom");
    }

    #[test]
    fn payloads_that_are_not_objects_are_wrapped() {
        assert_eq!(as_object(Value::from(3))["result"], Value::from(3));
        let mut map = Map::new();
        map.insert("a".into(), Value::Null);
        assert_eq!(as_object(Value::Object(map.clone())), map);
    }
}
