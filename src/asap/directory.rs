//! Agents connected over `/asap/ws`, by the URNs they serve, and the forwarded requests
//! waiting for their replies.
//!
//! A lookup table, not an actor: every forwarded envelope reads it once and every reply
//! once, under a lock held for a map operation (no await inside), the way the Router's
//! route table is read without a mailbox hop.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::{rpc, AsapError, Envelope};
use crate::actors::ConnectionId;
use crate::transport::Outbound;

/// The directory.
#[derive(Default)]
pub(crate) struct Directory {
    agents: Mutex<HashMap<String, Agent>>,
    waiting: Mutex<HashMap<String, Waiting>>,
}

struct Agent {
    connection_id: ConnectionId,
    out: Outbound,
}

struct Waiting {
    /// The connection the request went to: only it may answer.
    agent: ConnectionId,
    caller: oneshot::Sender<Envelope>,
}

/// How a claim went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The URN is now served by the connection.
    New,
    /// The connection already served it.
    Already,
}

impl Directory {
    /// Makes `connection_id` the agent serving `urn`; refused while another live connection
    /// serves it.
    pub fn claim(
        &self,
        urn: &str,
        connection_id: &ConnectionId,
        out: &Outbound,
    ) -> Result<Claim, AsapError> {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        match agents.get(urn) {
            Some(agent) if agent.connection_id == *connection_id => return Ok(Claim::Already),
            Some(agent) if !agent.out.is_closed() => {
                return Err(AsapError::Handler(format!(
                    "{urn} is already served by another connection"
                )))
            }
            _ => {}
        }
        agents.insert(
            urn.to_owned(),
            Agent {
                connection_id: connection_id.clone(),
                out: out.clone(),
            },
        );
        Ok(Claim::New)
    }

    /// The connection is gone: its URNs are free, and the requests forwarded to it fail at
    /// once (their callers get "recipient offline" rather than waiting for the deadline).
    /// Returns how many URNs it served.
    pub fn release(&self, connection_id: &ConnectionId, urns: &[String]) -> usize {
        let mut released = 0;
        {
            let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
            for urn in urns {
                if agents
                    .get(urn)
                    .is_some_and(|a| a.connection_id == *connection_id)
                {
                    agents.remove(urn);
                    released += 1;
                }
            }
        }
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.retain(|_, w| w.agent != *connection_id);
        released
    }

    /// Sends `envelope` to the agent serving its recipient, as a push its client hands to
    /// `on_message`; the receiver gets the agent's reply. `None` when no agent serves the
    /// recipient.
    pub fn forward(
        &self,
        envelope: &Envelope,
    ) -> Option<Result<oneshot::Receiver<Envelope>, AsapError>> {
        let (connection_id, out) = {
            let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
            let agent = agents.get(&envelope.recipient)?;
            (agent.connection_id.clone(), agent.out.clone())
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            if waiting.contains_key(envelope.id()) {
                return Some(Err(AsapError::InvalidParams {
                    message: format!(
                        "envelope {} is already waiting for a reply; use a fresh id",
                        envelope.id()
                    ),
                    details: Vec::new(),
                }));
            }
            waiting.insert(
                envelope.id().to_owned(),
                Waiting {
                    agent: connection_id,
                    caller: tx,
                },
            );
        }
        if out.send(rpc::push(envelope)).is_err() {
            self.forget(envelope.id());
            return Some(Err(AsapError::RecipientOffline(envelope.recipient.clone())));
        }
        Some(Ok(rx))
    }

    /// Sends `envelope` to the agent serving its recipient without waiting for a reply (a
    /// later message about an earlier request: an update, a late answer). `None` when no
    /// agent serves the recipient.
    pub fn deliver(&self, envelope: &Envelope) -> Option<Result<(), AsapError>> {
        let out = {
            let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
            agents.get(&envelope.recipient)?.out.clone()
        };
        Some(
            out.send(rpc::push(envelope))
                .map_err(|_| AsapError::RecipientOffline(envelope.recipient.clone())),
        )
    }

    /// Hands `reply` to the caller waiting for the envelope it answers (its
    /// `correlation_id`), when `from` is the connection that request went to.
    pub fn answer(&self, reply: &Envelope, from: &ConnectionId) -> bool {
        let Some(answers) = reply.correlation_id.as_deref() else {
            return false;
        };
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if waiting.get(answers).is_none_or(|w| w.agent != *from) {
            return false;
        }
        match waiting.remove(answers) {
            Some(w) => w.caller.send(reply.clone()).is_ok(),
            None => false,
        }
    }

    /// Stops waiting for a reply to `envelope_id` (its caller gave up).
    pub fn forget(&self, envelope_id: &str) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.remove(envelope_id);
    }
}
