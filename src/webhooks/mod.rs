//! Outbound webhooks.
//!
//! Events (`event`) leave the broker as signed HTTP POSTs ([`signing`]) to endpoints that
//! the SSRF guard allows ([`ssrf`]). Rooms and the Registry check a lock-free snapshot of the
//! endpoints' filters (`filter`) and hand matching events to the `RetryQueue` actor, which
//! commits them to the SQLite `outbox` and schedules attempts; one `WebhookTarget` actor
//! per endpoint makes them, rate limited, and `policy` decides what a failure means.

pub(crate) mod event;
pub(crate) mod filter;
// The outbox and the retry outcome it records are not part of the embedding API; they are
// public so the project's own integration tests can open and damage an outbox file.
#[doc(hidden)]
pub mod outbox;
#[doc(hidden)]
pub mod policy;
pub(crate) mod setup;
pub mod shared;
pub mod signing;
pub mod ssrf;
pub(crate) mod tls;

use std::sync::Arc;

use actix::Addr;
use arc_swap::ArcSwapOption;

use crate::actors::retry_queue::{Emit, RetryQueue};
use event::WebhookEvent;
use filter::Filters;

/// Everything that can go wrong managing webhooks; mapped to HTTP statuses in
/// `src/http/error.rs`.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A request is malformed: unknown event type, bad secret, bad id.
    #[error("{0}")]
    Invalid(String),
    /// The SSRF guard refuses the URL.
    #[error("webhook URL refused: {0}")]
    Refused(#[from] ssrf::SsrfError),
    /// No such endpoint or delivery.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request does not fit the current state (e.g. replaying a delivered delivery).
    #[error("{0}")]
    Conflict(String),
    /// The outbox failed (disk, corruption).
    #[error("webhook outbox failed: {0}")]
    Outbox(String),
    /// The webhook actors are gone (the broker is shutting down).
    #[error("webhooks are unavailable: {0}")]
    Unavailable(String),
    /// The change could not be shared with the other nodes (their store is unreachable).
    #[error("not shared with the other nodes: {0}")]
    NotShared(String),
}

impl From<outbox::OutboxError> for WebhookError {
    fn from(err: outbox::OutboxError) -> Self {
        match err {
            outbox::OutboxError::NotFound(what) => WebhookError::NotFound(what),
            outbox::OutboxError::InvalidState(what) => WebhookError::Conflict(what),
            other => WebhookError::Outbox(other.to_string()),
        }
    }
}

impl From<signing::SecretError> for WebhookError {
    fn from(err: signing::SecretError) -> Self {
        WebhookError::Invalid(format!("secret: {err}"))
    }
}

impl From<actix::MailboxError> for WebhookError {
    fn from(err: actix::MailboxError) -> Self {
        WebhookError::Unavailable(err.to_string())
    }
}

/// Now, in unix milliseconds: the outbox's clock.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Endpoint ids name TOML tables and URL path segments: 1-64 of `[A-Za-z0-9_-]`.
/// `dlq` is taken by `/api/webhooks/dlq`.
pub fn validate_endpoint_id(id: &str) -> Result<(), WebhookError> {
    if id == "dlq" {
        return Err(WebhookError::Invalid(
            "endpoint id `dlq` is reserved (it names /api/webhooks/dlq)".into(),
        ));
    }
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(WebhookError::Invalid(format!(
            "endpoint id `{id}` must be 1-64 characters of A-Z a-z 0-9 _ -"
        )))
    }
}

/// Checks a secret field: one or more `whsec_…`, space-separated, current first (more than
/// one during a rotation: every one signs). Returns it normalised to single spaces.
pub fn normalize_secrets(secrets: &str) -> Result<String, WebhookError> {
    let parsed = secrets
        .split_whitespace()
        .map(signing::WebhookSecret::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if parsed.is_empty() {
        return Err(WebhookError::Invalid("secret: empty".into()));
    }
    Ok(parsed
        .iter()
        .map(|s| s.expose_secret())
        .collect::<Vec<_>>()
        .join(" "))
}

/// Whether the outbox is working: set by the `RetryQueue` after each write, read by
/// `/readyz`. Cheap to clone; all clones share one state.
#[derive(Clone, Default)]
pub(crate) struct OutboxHealth(Arc<ArcSwapOption<String>>);

impl OutboxHealth {
    /// The last storage error, while the outbox is failing.
    pub fn failing(&self) -> Option<Arc<String>> {
        self.0.load_full()
    }

    /// Records that an outbox operation failed.
    pub fn set_failing(&self, error: String) {
        self.0.store(Some(Arc::new(error)));
    }

    /// Records that an outbox write succeeded.
    pub fn set_ok(&self) {
        if self.0.load().is_some() {
            self.0.store(None);
        }
    }
}

/// What rooms, the Registry and the HTTP API hold to raise webhook events: cheap to clone.
#[derive(Clone)]
pub(crate) struct Webhooks {
    filters: Filters,
    queue: Addr<RetryQueue>,
    health: OutboxHealth,
}

impl Webhooks {
    /// A handle on a running `RetryQueue`, the filter snapshot and the health it publishes.
    pub fn new(filters: Filters, queue: Addr<RetryQueue>, health: OutboxHealth) -> Webhooks {
        Webhooks {
            filters,
            queue,
            health,
        }
    }

    /// Whether the outbox is working.
    pub fn health(&self) -> &OutboxHealth {
        &self.health
    }

    /// Whether any endpoint wants `event_type` (in `room`). Lock-free: rooms call this on
    /// every publish so that events nobody subscribed to never reach the queue.
    pub fn wants(&self, event_type: &str, room: Option<&str>) -> bool {
        self.filters.wants(event_type, room)
    }

    /// Hands `event` to the queue and resolves once it is committed to the outbox for every
    /// matching endpoint (the number of deliveries).
    ///
    /// The event enters the queue's mailbox when this is *called* (`do_send`, which never
    /// defers a message the way `send` does when a mailbox is full), so events raised in
    /// order by one actor are committed, and delivered, in that order.
    pub fn emit(
        &self,
        event: WebhookEvent,
    ) -> impl std::future::Future<Output = Result<usize, WebhookError>> + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue.do_send(Emit {
            event,
            reply: Some(tx),
        });
        async move {
            rx.await
                .map_err(|_| WebhookError::Unavailable("the webhook queue stopped".into()))?
        }
    }

    /// Like [`Webhooks::emit`] for events nobody waits on (presence, sessions): a failure
    /// is logged by the queue.
    pub fn notify(&self, event: WebhookEvent) {
        self.queue.do_send(Emit { event, reply: None });
    }

    /// Raises an event nobody waits on, rendering it (`make`) only when an endpoint wants
    /// `event_type` in `room`: what rooms and the Registry call for presence and sessions.
    pub fn notify_if_wanted(
        &self,
        event_type: &str,
        room: Option<&str>,
        make: impl FnOnce() -> WebhookEvent,
    ) {
        if self.wants(event_type, room) {
            self.notify(make());
        }
    }

    /// The `RetryQueue` actor, for the management API.
    pub fn queue(&self) -> &Addr<RetryQueue> {
        &self.queue
    }
}
