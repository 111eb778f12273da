//! ASAP (Async Simple Agent Protocol): the broker as an ASAP server.
//!
//! Agents speak JSON-RPC 2.0 `asap.send` with an [`Envelope`] on `/asap/ws` (one object per
//! text frame) and `POST /asap` (single requests and batches); the broker answers from the
//! handler actors registered with its Router, or forwards the envelope to the connected
//! agent that serves its `recipient` and carries that agent's reply back.
//!
//! - [`envelope`]: the envelope, checked strictly, written back with the protocol's fields.
//! - [`AsapError`]: every failure, with its JSON-RPC code and taxonomy code.
//! - [`Skill`]: a skill's entry in the manifest; `Broker::register_skill` maps it to a
//!   handler actor, and [`EchoSkill`] is the built-in one (`[asap] echo_skill`).
//!
//! Inside: `rpc` reads frames and writes answers, `dispatch` decides where an envelope
//! goes, `directory` keeps the agents connected over WebSocket and the requests waiting
//! for their replies. The WebSocket side is the Session actor with `asap` framing
//! (`src/actors/session/asap.rs`); the HTTP routes are in `src/http/asap.rs`. docs/ASAP.md
//! describes the wire.

use std::num::NonZeroUsize;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix::prelude::*;
use lru::LruCache;
use serde::Serialize;
use serde_json::{json, Value};

pub(crate) mod directory;
pub(crate) mod dispatch;
pub mod envelope;
mod error;
pub(crate) mod rpc;

pub use envelope::Envelope;
pub use error::*;

use crate::actors::router::{HandlerError, HandlerRequest, Reply};
use crate::config::AsapConfig;
use crate::protocol::frame;

/// The ASAP protocol version the broker speaks in envelopes and its manifest.
pub const PROTOCOL_VERSION: &str = "0.1";
/// The `ASAP-Version` header values (HTTP wire versions) the broker speaks.
pub const SUPPORTED_TRANSPORT_VERSIONS: [&str; 2] = ["2.1", "2.2"];
/// The wire version assumed when a request names none.
pub const DEFAULT_TRANSPORT_VERSION: &str = "2.2";
/// How long a nonce is remembered: twice the envelope age window, after which the
/// timestamp check refuses the envelope anyway.
pub const NONCE_TTL: Duration = Duration::from_secs(600);

/// A skill as the manifest lists it. Register one with `Broker::register_skill`; task
/// requests whose `skill_id` is its `id` go to its handler.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skill {
    /// Skill id (`TaskRequest.skill_id`).
    pub id: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of `TaskRequest.input`, if published.
    pub input_schema: Option<Value>,
    /// JSON Schema of `TaskResponse.result`, if published.
    pub output_schema: Option<Value>,
}

impl Skill {
    /// A skill with an id and a description.
    pub fn new(id: impl Into<String>, description: impl Into<String>) -> Skill {
        Skill {
            id: id.into(),
            description: description.into(),
            input_schema: None,
            output_schema: None,
        }
    }
}

/// The Router key of a skill's handler: task requests are routed by skill first, then by
/// payload type.
pub fn skill_key(skill_id: &str) -> String {
    format!("skill:{skill_id}")
}

/// The broker's ASAP state: connected agents, replay nonces, answered idempotency keys.
pub(crate) struct AsapState {
    pub directory: directory::Directory,
    nonces: Mutex<LruCache<String, Instant>>,
    idempotent: Mutex<LruCache<(String, String), (Instant, bytes::Bytes)>>,
    idempotency_ttl: Duration,
    /// When the broker started, for the health route's uptime.
    pub started: Instant,
    /// ASAP requests being handled now (the health route's `load.active_tasks`).
    pub in_flight: AtomicUsize,
}

impl AsapState {
    pub fn new(config: &AsapConfig) -> AsapState {
        let cap = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        AsapState {
            directory: directory::Directory::default(),
            nonces: Mutex::new(LruCache::new(cap(config.nonce_capacity))),
            idempotent: Mutex::new(LruCache::new(cap(config.idempotency_capacity))),
            idempotency_ttl: config.idempotency_ttl,
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Records a nonce; an error if it was seen within [`NONCE_TTL`]. The store keeps the
    /// most recent `asap.nonce_capacity` nonces: a replay of an older one is still refused
    /// by the timestamp window unless more nonces than that arrived within it.
    pub fn check_nonce(&self, nonce: &str, now: Instant) -> Result<(), AsapError> {
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(seen) = nonces.get(nonce) {
            if now.duration_since(*seen) < NONCE_TTL {
                return Err(AsapError::InvalidNonce {
                    message: "Duplicate nonce detected".into(),
                });
            }
        }
        nonces.put(nonce.to_owned(), now);
        Ok(())
    }

    /// The answer already given to `caller`'s request with idempotency `key`, if still kept.
    pub fn answered(&self, caller: &str, key: &str) -> Option<bytes::Bytes> {
        let mut cache = self.idempotent.lock().unwrap_or_else(|e| e.into_inner());
        let entry = (caller.to_owned(), key.to_owned());
        match cache.get(&entry) {
            Some((at, body)) if at.elapsed() < self.idempotency_ttl => Some(body.clone()),
            Some(_) => {
                cache.pop(&entry);
                None
            }
            None => None,
        }
    }

    /// Keeps `body` as the answer to `caller`'s request with idempotency `key`.
    pub fn remember(&self, caller: &str, key: &str, body: bytes::Bytes) {
        let mut cache = self.idempotent.lock().unwrap_or_else(|e| e.into_inner());
        cache.put((caller.to_owned(), key.to_owned()), (Instant::now(), body));
    }
}

/// The built-in `echo` skill (`[asap] echo_skill = true`): answers a task request with a
/// completed `task.response` whose result is `{"echoed": <input>}`. With
/// `config.streaming = true` it first pushes one `task.update` (50 % progress), so clients
/// can see later messages arrive. Meant for conformance runs and smoke tests.
pub struct EchoSkill;

impl EchoSkill {
    /// The manifest entry.
    pub fn skill() -> Skill {
        Skill::new(
            "echo",
            "Answers a task request with its input (conformance)",
        )
    }
}

impl Actor for EchoSkill {
    type Context = Context<Self>;
}

impl Handler<HandlerRequest> for EchoSkill {
    type Result = Result<Reply, HandlerError>;

    fn handle(&mut self, req: HandlerRequest, _: &mut Self::Context) -> Self::Result {
        let task_id = format!("task_{}", frame::new_id());
        let streaming = req.payload["config"]["streaming"] == json!(true);
        if let (true, Some(push)) = (streaming, &req.push) {
            push.push(Reply::new(
                "task.update",
                json!({
                    "task_id": task_id,
                    "update_type": "progress",
                    "status": "working",
                    "progress": {"percent": 50, "message": "echoing"},
                    "input_request": null,
                }),
            ));
        }
        let input = req.payload.get("input").cloned().unwrap_or(json!({}));
        Ok(Reply::new(
            "task.response",
            json!({
                "task_id": task_id,
                "status": "completed",
                "result": {"echoed": input},
                "final_state": null,
                "metrics": null,
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_refused_the_second_time_within_its_window() {
        let state = AsapState::new(&AsapConfig::default());
        let t0 = Instant::now();
        assert!(state.check_nonce("n", t0).is_ok());
        assert!(matches!(
            state.check_nonce("n", t0 + Duration::from_secs(1)),
            Err(AsapError::InvalidNonce { .. })
        ));
        assert!(state.check_nonce("n", t0 + NONCE_TTL).is_ok());
        assert!(state.check_nonce("other", t0).is_ok());
    }

    #[test]
    fn idempotent_answers_are_per_caller() {
        let state = AsapState::new(&AsapConfig::default());
        state.remember("alice", "k", bytes::Bytes::from_static(b"{}"));
        assert_eq!(state.answered("alice", "k").as_deref(), Some(&b"{}"[..]));
        assert_eq!(state.answered("bob", "k"), None);
    }
}
