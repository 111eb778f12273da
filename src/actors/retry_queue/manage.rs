//! The endpoint management messages of the HTTP API (`/api/webhooks`): create, list, read,
//! update, delete, deliveries, the dead-letter queue, replay and the test ping. They run on
//! the queue because the queue owns the outbox and the targets.

use actix::prelude::*;

use super::{now_ms, RetryQueue};
use crate::actors::webhook_target::{Reconfigure, StopTarget};
use crate::config::DuplicateUrls;
use crate::webhooks::event::WebhookEvent;
use crate::webhooks::outbox::{Delivery, DeliveryHistory, Endpoint, EndpointPatch, NewEndpoint};
use crate::webhooks::shared::{EndpointsChanged, SharedEndpoint};
use crate::webhooks::signing::WebhookSecret;
use crate::webhooks::{normalize_secrets, WebhookError};

/// An endpoint with its backlog, as the API shows it.
#[derive(Debug, Clone)]
pub struct EndpointStatus {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Its pending deliveries.
    pub pending: u64,
}

/// `POST /api/webhooks`. The URL must already have passed the SSRF guard with DNS
/// resolution (the API does that off this actor's thread).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Created, WebhookError>")]
pub struct CreateEndpoint {
    /// Where to POST.
    pub url: String,
    /// `whsec_…` (space-separated for several); generated when `None`.
    pub secret: Option<String>,
    /// Event types.
    pub events: Vec<String>,
    /// Room globs; every room when `None`.
    pub rooms: Option<Vec<String>>,
    /// Deliveries per second; `webhooks.rate_limit_per_s` when `None`.
    pub rate_limit_per_s: Option<u32>,
}

/// A new endpoint, with what the caller should know about it.
#[derive(Debug, Clone)]
pub struct Created {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// E.g. that another endpoint already delivers to the same URL.
    pub warnings: Vec<String>,
}

/// Whether two webhook URLs name the same receiver (compared as parsed, so case and default
/// ports do not hide a repeat).
fn same_url(a: &str, b: &str) -> bool {
    match (url::Url::parse(a), url::Url::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

impl Handler<CreateEndpoint> for RetryQueue {
    type Result = ResponseActFuture<Self, Result<Created, WebhookError>>;

    fn handle(&mut self, msg: CreateEndpoint, ctx: &mut Self::Context) -> Self::Result {
        let created = match self.create(msg, ctx) {
            Ok(created) => created,
            Err(err) => return Box::pin(fut::ready(Err(err))),
        };
        let id = created.endpoint.id.clone();
        self.shared_then(
            EndpointsChanged::Saved(SharedEndpoint::from(&created.endpoint)),
            created,
            move |act, ctx| act.forget_endpoint(&id, ctx),
            "not created: the other nodes could not be told",
        )
    }
}

impl RetryQueue {
    fn create(
        &mut self,
        msg: CreateEndpoint,
        ctx: &mut Context<Self>,
    ) -> Result<Created, WebhookError> {
        self.validate(Some(&msg.url), Some(&msg.events))?;
        let mut same: Vec<&str> = self
            .targets
            .values()
            .filter(|t| same_url(&t.endpoint.url, &msg.url))
            .map(|t| t.endpoint.id.as_str())
            .collect();
        same.sort_unstable();
        let mut warnings = Vec::new();
        if !same.is_empty() {
            let already = format!("{} already delivers to {}", same.join(", "), msg.url);
            if self.config.duplicate_urls == DuplicateUrls::Refuse {
                return Err(WebhookError::Conflict(format!(
                    "{already} (webhooks.duplicate_urls = \"refuse\")"
                )));
            }
            log::warn!("webhooks: registering another endpoint for a URL: {already}");
            warnings.push(format!(
                "{already}: each endpoint gets its own copy of every event it subscribes to"
            ));
        }
        let secret = match &msg.secret {
            Some(s) => normalize_secrets(s)?,
            None => WebhookSecret::generate().expose_secret().to_owned(),
        };
        let rate = msg.rate_limit_per_s.unwrap_or(self.config.rate_limit_per_s);
        if rate == 0 {
            return Err(WebhookError::Invalid(
                "rate_limit_per_s must be greater than zero".into(),
            ));
        }
        let endpoint = self.outbox.insert_endpoint(
            NewEndpoint {
                url: msg.url,
                secret,
                events: msg.events,
                rooms: msg.rooms.unwrap_or_else(|| vec!["*".into()]),
                rate_limit_per_s: rate,
            },
            now_ms(),
        )?;
        log::info!(
            "webhooks: endpoint {} created for {}",
            endpoint.id,
            endpoint.url
        );
        self.start_target(endpoint.clone(), ctx);
        self.publish_filters();
        Ok(Created { endpoint, warnings })
    }
}

/// `GET /api/webhooks`.
#[derive(Message)]
#[rtype(result = "Result<Vec<EndpointStatus>, WebhookError>")]
pub struct ListEndpoints;

impl Handler<ListEndpoints> for RetryQueue {
    type Result = Result<Vec<EndpointStatus>, WebhookError>;

    fn handle(&mut self, _: ListEndpoints, _: &mut Self::Context) -> Self::Result {
        let endpoints = self.outbox.list_endpoints()?;
        Ok(endpoints.into_iter().map(|e| self.status(e)).collect())
    }
}

/// `GET /api/webhooks/{id}`.
#[derive(Message)]
#[rtype(result = "Result<EndpointStatus, WebhookError>")]
pub struct GetEndpoint(pub String);

impl Handler<GetEndpoint> for RetryQueue {
    type Result = Result<EndpointStatus, WebhookError>;

    fn handle(&mut self, GetEndpoint(id): GetEndpoint, _: &mut Self::Context) -> Self::Result {
        let endpoint = self.outbox.get_endpoint(&id)?;
        Ok(self.status(endpoint))
    }
}

/// `PATCH /api/webhooks/{id}`. A new URL must already have passed the SSRF guard with DNS
/// resolution.
#[derive(Message)]
#[rtype(result = "Result<EndpointStatus, WebhookError>")]
pub struct UpdateEndpoint {
    /// The endpoint.
    pub id: String,
    /// What changes.
    pub patch: EndpointPatch,
}

impl Handler<UpdateEndpoint> for RetryQueue {
    type Result = ResponseActFuture<Self, Result<EndpointStatus, WebhookError>>;

    fn handle(&mut self, msg: UpdateEndpoint, ctx: &mut Self::Context) -> Self::Result {
        let status = match self.update(msg, ctx) {
            Ok(status) => status,
            Err(err) => return Box::pin(fut::ready(Err(err))),
        };
        self.shared_then(
            EndpointsChanged::Saved(SharedEndpoint::from(&status.endpoint)),
            status,
            |_, _| {},
            "changed on this node only: the other nodes could not be told",
        )
    }
}

impl RetryQueue {
    fn update(
        &mut self,
        msg: UpdateEndpoint,
        ctx: &mut Context<Self>,
    ) -> Result<EndpointStatus, WebhookError> {
        let mut patch = msg.patch;
        self.validate(patch.url.as_deref(), patch.events.as_deref())?;
        if let Some(secret) = &patch.secret {
            patch.secret = Some(normalize_secrets(secret)?);
        }
        if patch.rate_limit_per_s == Some(0) {
            return Err(WebhookError::Invalid(
                "rate_limit_per_s must be greater than zero".into(),
            ));
        }
        let endpoint = self.outbox.update_endpoint(&msg.id, patch)?;
        if let Some(target) = self.targets.get_mut(&msg.id) {
            target.addr.do_send(Reconfigure(endpoint.clone()));
            target.endpoint = endpoint.clone();
        }
        self.publish_filters();
        log::info!(
            "webhooks: endpoint {} updated (enabled: {})",
            endpoint.id,
            endpoint.enabled
        );
        self.pump(&msg.id, ctx);
        Ok(self.status(endpoint))
    }
}

/// `DELETE /api/webhooks/{id}`: the endpoint, its pending deliveries and its DLQ entries.
#[derive(Message)]
#[rtype(result = "Result<(), WebhookError>")]
pub struct DeleteEndpoint(pub String);

impl Handler<DeleteEndpoint> for RetryQueue {
    type Result = ResponseActFuture<Self, Result<(), WebhookError>>;

    fn handle(
        &mut self,
        DeleteEndpoint(id): DeleteEndpoint,
        ctx: &mut Self::Context,
    ) -> Self::Result {
        if let Err(err) = self.delete(&id, ctx) {
            return Box::pin(fut::ready(Err(err)));
        }
        self.shared_then(
            EndpointsChanged::Removed(id),
            (),
            |_, _| {},
            "deleted on this node only: the other nodes could not be told",
        )
    }
}

impl RetryQueue {
    pub(super) fn delete(&mut self, id: &str, ctx: &mut Context<Self>) -> Result<(), WebhookError> {
        self.outbox.delete_endpoint(id)?;
        if let Some(target) = self.targets.remove(id) {
            if let Some(timer) = target.timer {
                ctx.cancel_future(timer);
            }
            target.addr.do_send(StopTarget);
        }
        self.publish_filters();
        self.recount();
        self.finish_drain_if_idle();
        log::info!("webhooks: endpoint {id} deleted");
        Ok(())
    }
}

/// `GET /api/webhooks/{id}/deliveries`: newest first, with attempts.
#[derive(Message)]
#[rtype(result = "Result<Vec<DeliveryHistory>, WebhookError>")]
pub struct ListDeliveries {
    /// The endpoint.
    pub endpoint_id: String,
    /// At most this many.
    pub limit: usize,
}

impl Handler<ListDeliveries> for RetryQueue {
    type Result = Result<Vec<DeliveryHistory>, WebhookError>;

    fn handle(&mut self, msg: ListDeliveries, _: &mut Self::Context) -> Self::Result {
        self.outbox.get_endpoint(&msg.endpoint_id)?;
        Ok(self.outbox.deliveries_for(&msg.endpoint_id, msg.limit)?)
    }
}

/// `GET /api/webhooks/dlq`: newest first.
#[derive(Message)]
#[rtype(result = "Result<Vec<Delivery>, WebhookError>")]
pub struct ListDeadLetters {
    /// At most this many.
    pub limit: usize,
}

impl Handler<ListDeadLetters> for RetryQueue {
    type Result = Result<Vec<Delivery>, WebhookError>;

    fn handle(&mut self, msg: ListDeadLetters, _: &mut Self::Context) -> Self::Result {
        Ok(self.outbox.dead_letters(msg.limit)?)
    }
}

/// `POST /api/webhooks/dlq/{delivery_id}/replay`: back to pending, attempts reset.
#[derive(Message)]
#[rtype(result = "Result<Delivery, WebhookError>")]
pub struct Replay(pub String);

impl Handler<Replay> for RetryQueue {
    type Result = Result<Delivery, WebhookError>;

    fn handle(&mut self, Replay(id): Replay, ctx: &mut Self::Context) -> Self::Result {
        self.outbox.replay(&id, now_ms())?;
        let delivery = self.outbox.get_delivery(&id)?;
        self.dead -= 1;
        self.pending += 1;
        self.update_gauges();
        log::info!(
            "webhooks: delivery {id} replayed to endpoint {}",
            delivery.endpoint_id
        );
        self.pump(&delivery.endpoint_id, ctx);
        Ok(delivery)
    }
}

/// `POST /api/webhooks/{id}/test`: queues a `webhook.ping` for one endpoint.
#[derive(Message)]
#[rtype(result = "Result<String, WebhookError>")]
pub struct SendTest(pub String);

impl Handler<SendTest> for RetryQueue {
    type Result = Result<String, WebhookError>;

    fn handle(&mut self, SendTest(id): SendTest, ctx: &mut Self::Context) -> Self::Result {
        if !self.targets.contains_key(&id) {
            return Err(WebhookError::NotFound(format!("endpoint {id}")));
        }
        let event = WebhookEvent::ping(&id);
        let delivery_id = self
            .outbox
            .enqueue(&id, event.event_type, &event.body, now_ms())?;
        self.pending += 1;
        self.update_gauges();
        self.pump(&id, ctx);
        Ok(delivery_id)
    }
}
