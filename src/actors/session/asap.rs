//! Frames from an ASAP agent ([`Framing::Asap`], `/asap/ws`): JSON-RPC 2.0 `asap.send`
//! envelopes, `asap.register`, and `{"type":"ping"}` heartbeats.
//!
//! An envelope that asks for an acknowledgement gets its `asap.ack` at once, before
//! anything else is sent for it: the real client resends an envelope whose ack has not come
//! within 30 s. The envelope is then dispatched (`crate::asap::dispatch`) as a spawned
//! future, so several requests on one connection are answered as each completes. A bad
//! frame gets a JSON-RPC error; the connection stays open.
//!
//! [`Framing::Asap`]: crate::endpoint::Framing::Asap

use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;

use super::Session;
use crate::actors::router::{HandlerError, Origin, Pusher};
use crate::asap::directory::Claim;
use crate::asap::dispatch::{self, Call};
use crate::asap::envelope::valid_agent_urn;
use crate::asap::rpc::{self, Incoming, Refused};
use crate::asap::{AsapError, Envelope};
use crate::protocol::frame::{self, ReplyTo, RpcId};
use crate::protocol::ErrorCode;

impl Session {
    pub(super) fn on_asap_text(&mut self, text: ByteString, ctx: &mut Context<Self>) {
        let unread = ReplyTo::JsonRpc { id: RpcId::null() };
        let max_depth = self.state.config.limits.max_json_depth;
        if frame::nests_deeper_than(&text, max_depth) {
            if self.allow_frame(&unread, ctx) {
                self.state.metrics.limit_refused("json_depth");
                let msg = format!("the frame nests deeper than {max_depth} levels");
                self.send_asap_error(&unread, ErrorCode::BadRequest, &msg);
            }
            return;
        }
        // Read before the rate limit (frames are at most limits.max_frame_bytes), so that
        // a refusal carries the request's id: the real client matches errors by id, and an
        // error it cannot match leaves its request waiting for the full receive timeout.
        let parsed = rpc::parse(&text);
        let id = match &parsed {
            Ok(Incoming::Send { id: Some(id), .. } | Incoming::Register { id, .. }) => id.clone(),
            Err(refused) => refused.id.clone(),
            Ok(_) => RpcId::null(),
        };
        if !self.allow_frame(&ReplyTo::JsonRpc { id }, ctx) {
            return;
        }
        match parsed {
            Err(Refused { id, error }) => {
                self.count_asap(&error);
                self.send(rpc::error(&id, &error));
            }
            Ok(Incoming::Ping) => self.send(ByteString::from_static(rpc::PONG)),
            Ok(Incoming::Pong | Incoming::Ack) => {}
            Ok(Incoming::Register { id, agents }) => self.register_agents(id, agents),
            Ok(Incoming::Send { id, envelope, .. }) => self.asap_send(id, *envelope, ctx),
        }
    }

    /// An error for a frame whose request could not be read (rate limit, size, binary).
    pub(super) fn send_asap_error(&self, reply_to: &ReplyTo, code: ErrorCode, message: &str) {
        let id = match reply_to {
            ReplyTo::JsonRpc { id } => id.clone(),
            _ => RpcId::null(),
        };
        let error = AsapError::from(HandlerError::new(code, message));
        self.send(rpc::error(&id, &error));
    }

    fn asap_send(&mut self, id: Option<RpcId>, envelope: Envelope, ctx: &mut Context<Self>) {
        if envelope.requires_ack {
            self.send(rpc::ack(&envelope, "received", None));
        }
        if self.state.config.asap.learn_senders && !self.agents.contains(&envelope.sender) {
            // Another live connection serving the sender keeps it: learning never steals.
            let sender = envelope.sender.clone();
            let _ = self.claim(&sender);
        }
        let request = Arc::new(envelope.clone());
        let call = Call {
            envelope,
            origin: Origin::AsapSocket,
            connection_id: Some(self.id.clone()),
            identity: self.identity.clone(),
            push: Some(self.asap_pusher(request)),
        };
        let state = self.state.clone();
        let out = self.out.clone();
        ctx.spawn(
            async move {
                let result = dispatch::dispatch(state.clone(), call).await;
                let outcome = match &result {
                    Ok(_) => "ok",
                    Err(err) => err.outcome(),
                };
                state
                    .metrics
                    .asap_requests
                    .with_label_values(&["ws", outcome])
                    .inc();
                let frame = match (id, result) {
                    (Some(id), Ok(answer)) => Some(rpc::result(&id, &answer)),
                    (Some(id), Err(err)) => Some(rpc::error(&id, &err)),
                    (None, Ok(_)) => None,
                    (None, Err(err)) => Some(rpc::error(&RpcId::null(), &err)),
                };
                if let Some(frame) = frame {
                    let _ = out.send(frame);
                }
            }
            .into_actor(self),
        );
    }

    /// A handler's later messages to this agent: envelopes answering `request`, pushed as
    /// result frames that match none of the client's pending requests.
    fn asap_pusher(&self, request: Arc<Envelope>) -> Pusher {
        let out = self.out.clone();
        let own_id = self.state.config.asap.agent_id.clone();
        Pusher::new(move |message| {
            let envelope = dispatch::answer_with(&request, &own_id, message);
            out.send(rpc::push(&envelope)).is_ok()
        })
    }

    /// `asap.register`: this connection serves `agents` (each checked, each claimed).
    fn register_agents(&mut self, id: RpcId, agents: Vec<String>) {
        if let Some(bad) = agents.iter().find(|urn| !valid_agent_urn(urn)) {
            let error = AsapError::InvalidParams {
                message: format!("`{bad}` is not an agent URN (urn:asap:agent:<name>)"),
                details: Vec::new(),
            };
            return self.send(rpc::error(&id, &error));
        }
        let mut refused = Vec::new();
        for urn in &agents {
            if let Err(err) = self.claim(urn) {
                refused.push(err.to_string());
            }
        }
        if refused.is_empty() {
            self.send(rpc::result_value(
                &id,
                serde_json::json!({ "registered": agents }),
            ));
        } else {
            self.send(rpc::error(&id, &AsapError::Handler(refused.join("; "))));
        }
    }

    /// Makes this connection the route to `urn`.
    fn claim(&mut self, urn: &str) -> Result<(), AsapError> {
        if !self.identity.may_act_as(urn) {
            return Err(AsapError::Handler(format!(
                "this token may not serve {urn} (its agents claim)"
            )));
        }
        let claim = self.state.asap.directory.claim(urn, &self.id, &self.out)?;
        if claim == Claim::New {
            log::info!("conn={} serves {urn}", self.id);
            self.agents.push(urn.to_owned());
            self.state.metrics.asap_agents.inc();
        }
        Ok(())
    }

    /// The connection ends: its URNs are free again.
    pub(super) fn release_agents(&mut self) {
        if self.agents.is_empty() {
            return;
        }
        let released = self.state.asap.directory.release(&self.id, &self.agents);
        self.state.metrics.asap_agents.sub(released as i64);
        self.agents.clear();
    }

    fn count_asap(&self, error: &AsapError) {
        self.state
            .metrics
            .asap_requests
            .with_label_values(&["ws", error.outcome()])
            .inc();
    }
}
