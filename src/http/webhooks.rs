//! `/api/webhooks`: manage endpoints, read delivery logs and the dead-letter queue, replay.
//!
//! Thin: each route checks its input, asks the `RetryQueue` actor, and shapes the answer.
//! URLs pass the SSRF guard *with* DNS resolution here, on the blocking pool, before the
//! queue (whose thread owns SQLite) sees them; every attempt checks again.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::api::{mailbox, Caller, ErrorBody};
use super::error::{resource, ApiError};
use crate::actors::retry_queue::{
    CreateEndpoint, DeleteEndpoint, EndpointStatus, GetEndpoint, ListDeadLetters, ListDeliveries,
    ListEndpoints, Replay, SendTest, UpdateEndpoint,
};
use crate::protocol::ErrorCode;
use crate::webhooks::outbox::{Attempt, Delivery, DeliveryHistory, DeliveryState, EndpointPatch};
use crate::webhooks::{ssrf, WebhookError};
use crate::Broker;

/// How long registration may spend resolving a URL's host.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Mounts the routes inside the `/api` scope. `/webhooks/dlq…` comes before
/// `/webhooks/{id}` so that `dlq` is never taken for an endpoint id.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/webhooks", "GET, POST")
            .route(web::get().to(list))
            .route(web::post().to(create)),
    )
    .service(resource("/webhooks/dlq", "GET").route(web::get().to(dead_letters)))
    .service(resource("/webhooks/dlq/{delivery_id}/replay", "POST").route(web::post().to(replay)))
    .service(
        resource("/webhooks/{id}", "GET, PATCH, DELETE")
            .route(web::get().to(get))
            .route(web::patch().to(update))
            .route(web::delete().to(delete)),
    )
    .service(resource("/webhooks/{id}/deliveries", "GET").route(web::get().to(deliveries)))
    .service(resource("/webhooks/{id}/secret", "GET").route(web::get().to(secret)))
    .service(resource("/webhooks/{id}/test", "POST").route(web::post().to(send_test)));
}

/// A new endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Where deliveries are POSTed (`https://` unless `webhooks.mode = "development"`).
    pub url: String,
    /// `whsec_…`; several, space-separated, during a rotation. Generated when absent.
    pub secret: Option<String>,
    /// Event types: `room.message`, `session.connected`, `session.disconnected`,
    /// `presence.join`, `presence.leave`.
    pub events: Vec<String>,
    /// Room globs for room events (`conversation:*`); default every room.
    pub rooms: Option<Vec<String>>,
    /// Deliveries per second (default `webhooks.rate_limit_per_s`).
    pub rate_limit_per_s: Option<u32>,
}

/// Changes to an endpoint; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchRequest {
    /// New URL (checked like a new endpoint's).
    pub url: Option<String>,
    /// New event types.
    pub events: Option<Vec<String>>,
    /// New room globs.
    pub rooms: Option<Vec<String>>,
    /// New rate limit.
    pub rate_limit_per_s: Option<u32>,
    /// New secret(s), current first, space-separated.
    pub secret: Option<String>,
    /// `true` re-enables an endpoint (also one disabled for failing); `false` pauses it:
    /// events still queue, nothing is sent.
    pub enabled: Option<bool>,
}

/// An endpoint as the API shows it. The secret appears only in the answer to its creation.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointView {
    /// `ep_…`, or the table name of a config-file endpoint.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// Event types.
    pub events: Vec<String>,
    /// Room globs.
    pub rooms: Vec<String>,
    /// Deliveries per second.
    pub rate_limit_per_s: u32,
    /// False when paused or disabled for failing.
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// Start of the current failure streak (unix ms).
    pub failing_since: Option<i64>,
    /// Created (unix ms).
    pub created_at: i64,
    /// Deliveries waiting to go out.
    pub pending: u64,
    /// `config` for an endpoint the config file defines (the file wins at the next start),
    /// `api` for one made through the API.
    pub source: &'static str,
    /// The signing secret (creation only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// What the caller should know (creation only), e.g. that another endpoint already
    /// delivers to this URL.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl EndpointView {
    fn from_status(status: EndpointStatus) -> EndpointView {
        let e = status.endpoint;
        EndpointView {
            id: e.id,
            url: e.url,
            events: e.events,
            rooms: e.rooms,
            rate_limit_per_s: e.rate_limit_per_s,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            failing_since: e.failing_since,
            created_at: e.created_at,
            pending: status.pending,
            source: if e.from_config { "config" } else { "api" },
            secret: None,
            warnings: Vec::new(),
        }
    }
}

/// The endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointList {
    /// Oldest first.
    pub endpoints: Vec<EndpointView>,
}

/// One attempt of a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    /// 1-based.
    pub attempt: u32,
    /// Started (unix ms).
    pub started_at: i64,
    /// HTTP status, when there was a response.
    pub status: Option<u16>,
    /// What went wrong.
    pub error: Option<String>,
    /// How long it took.
    pub latency_ms: i64,
}

impl From<Attempt> for AttemptView {
    fn from(a: Attempt) -> Self {
        AttemptView {
            attempt: a.attempt,
            started_at: a.started_at,
            status: a.status,
            error: a.error,
            latency_ms: a.latency_ms,
        }
    }
}

/// One event's delivery to one endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// `msg_…`: the `webhook-id` header.
    pub id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// Position in the endpoint's event order.
    pub seq: i64,
    /// Event type.
    pub event_type: String,
    /// `pending`, `delivered` or `failed` (in the dead-letter queue).
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// Next attempt (unix ms), while pending.
    pub next_attempt_at: Option<i64>,
    /// Accepted (unix ms).
    pub created_at: i64,
    /// Last HTTP status.
    pub last_status: Option<u16>,
    /// Last error.
    pub last_error: Option<String>,
    /// Last attempt's latency.
    pub last_latency_ms: Option<i64>,
    /// Delivered (unix ms).
    pub delivered_at: Option<i64>,
    /// Every attempt, oldest first (delivery logs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_log: Option<Vec<AttemptView>>,
}

impl DeliveryView {
    fn new(d: Delivery, attempts: Option<Vec<Attempt>>) -> DeliveryView {
        DeliveryView {
            next_attempt_at: (d.state == DeliveryState::Pending).then_some(d.next_attempt_at),
            state: d.state.as_str().to_owned(),
            id: d.id,
            endpoint_id: d.endpoint_id,
            seq: d.seq,
            event_type: d.event_type,
            attempts: d.attempts,
            created_at: d.created_at,
            last_status: d.last_status,
            last_error: d.last_error,
            last_latency_ms: d.last_latency_ms,
            delivered_at: d.delivered_at,
            attempt_log: attempts.map(|a| a.into_iter().map(AttemptView::from).collect()),
        }
    }
}

/// Deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// Newest first.
    pub deliveries: Vec<DeliveryView>,
}

/// Paging.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    /// At most this many (default 50, at most 1000).
    pub limit: Option<usize>,
}

impl LimitQuery {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(50).clamp(1, 1000)
    }
}

/// A queued ping.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestResponse {
    /// The ping's delivery id (`webhook-id`).
    pub delivery_id: String,
}

/// Runs the SSRF guard with DNS resolution, off the actor threads.
async fn check_url(broker: &Broker, url: &str) -> Result<(), ApiError> {
    let policy = broker.config().ssrf_policy();
    let target = ssrf::check_url(url, &policy).map_err(WebhookError::from)?;
    match tokio::time::timeout(
        RESOLVE_TIMEOUT,
        ssrf::resolve_checked_async(&target, &policy),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(WebhookError::from(err).into()),
        Err(_) => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "webhook URL refused: resolving {} took longer than {RESOLVE_TIMEOUT:?}",
                target.host
            ),
        )),
    }
}

async fn ask<M>(broker: &Broker, msg: M) -> Result<M::Result, ApiError>
where
    M: actix::Message + Send + 'static,
    M::Result: Send,
    crate::actors::retry_queue::RetryQueue: actix::Handler<M>,
{
    broker
        .state()
        .webhooks
        .queue()
        .send(msg)
        .await
        .map_err(mailbox)
}

/// Register an endpoint. The answer holds its secret; it is not shown again.
#[utoipa::path(post, path = "/api/webhooks", request_body = CreateRequest,
    responses((status = 201, body = EndpointView), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`conflict`: another endpoint has this URL and `webhooks.duplicate_urls = \"refuse\"`"),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create(
    _: Caller,
    broker: web::Data<Broker>,
    body: web::Json<CreateRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    check_url(&broker, &body.url).await?;
    let created = ask(
        &broker,
        CreateEndpoint {
            url: body.url,
            secret: body.secret,
            events: body.events,
            rooms: body.rooms,
            rate_limit_per_s: body.rate_limit_per_s,
        },
    )
    .await??;
    let secret = created.endpoint.secret.clone();
    let mut view = EndpointView::from_status(EndpointStatus {
        endpoint: created.endpoint,
        pending: 0,
    });
    view.secret = Some(secret);
    view.warnings = created.warnings;
    Ok(HttpResponse::Created().json(view))
}

/// List endpoints.
#[utoipa::path(get, path = "/api/webhooks",
    responses((status = 200, body = EndpointList), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list(_: Caller, broker: web::Data<Broker>) -> Result<HttpResponse, ApiError> {
    let endpoints = ask(&broker, ListEndpoints).await??;
    Ok(HttpResponse::Ok().json(EndpointList {
        endpoints: endpoints
            .into_iter()
            .map(EndpointView::from_status)
            .collect(),
    }))
}

/// One endpoint.
#[utoipa::path(get, path = "/api/webhooks/{id}",
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, body = EndpointView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get(
    _: Caller,
    broker: web::Data<Broker>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let status = ask(&broker, GetEndpoint(id.into_inner())).await??;
    Ok(HttpResponse::Ok().json(EndpointView::from_status(status)))
}

/// Change an endpoint; `{"enabled": true}` re-enables one disabled for failing.
#[utoipa::path(patch, path = "/api/webhooks/{id}", request_body = PatchRequest,
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, body = EndpointView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn update(
    _: Caller,
    broker: web::Data<Broker>,
    id: web::Path<String>,
    body: web::Json<PatchRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if let Some(url) = &body.url {
        check_url(&broker, url).await?;
    }
    let patch = EndpointPatch {
        url: body.url,
        events: body.events,
        rooms: body.rooms,
        rate_limit_per_s: body.rate_limit_per_s,
        secret: body.secret,
        enabled: body.enabled,
    };
    let status = ask(
        &broker,
        UpdateEndpoint {
            id: id.into_inner(),
            patch,
        },
    )
    .await??;
    Ok(HttpResponse::Ok().json(EndpointView::from_status(status)))
}

/// Delete an endpoint with its pending and dead-lettered deliveries.
#[utoipa::path(delete, path = "/api/webhooks/{id}",
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn delete(
    _: Caller,
    broker: web::Data<Broker>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    ask(&broker, DeleteEndpoint(id.into_inner())).await??;
    Ok(HttpResponse::NoContent().finish())
}

/// An endpoint's recent deliveries with every attempt.
#[utoipa::path(get, path = "/api/webhooks/{id}/deliveries",
    params(("id" = String, Path, description = "Endpoint id"), LimitQuery),
    responses((status = 200, body = DeliveryList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn deliveries(
    _: Caller,
    broker: web::Data<Broker>,
    id: web::Path<String>,
    query: web::Query<LimitQuery>,
) -> Result<HttpResponse, ApiError> {
    let history: Vec<DeliveryHistory> = ask(
        &broker,
        ListDeliveries {
            endpoint_id: id.into_inner(),
            limit: query.limit(),
        },
    )
    .await??;
    Ok(HttpResponse::Ok().json(DeliveryList {
        deliveries: history
            .into_iter()
            .map(|h| DeliveryView::new(h.delivery, Some(h.attempts)))
            .collect(),
    }))
}

/// The dead-letter queue.
#[utoipa::path(get, path = "/api/webhooks/dlq", params(LimitQuery),
    responses((status = 200, body = DeliveryList), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn dead_letters(
    _: Caller,
    broker: web::Data<Broker>,
    query: web::Query<LimitQuery>,
) -> Result<HttpResponse, ApiError> {
    let dead = ask(
        &broker,
        ListDeadLetters {
            limit: query.limit(),
        },
    )
    .await??;
    Ok(HttpResponse::Ok().json(DeliveryList {
        deliveries: dead
            .into_iter()
            .map(|d| DeliveryView::new(d, None))
            .collect(),
    }))
}

/// Send a dead-lettered delivery again (attempts start over).
#[utoipa::path(post, path = "/api/webhooks/dlq/{delivery_id}/replay",
    params(("delivery_id" = String, Path, description = "Delivery id (msg_…)")),
    responses((status = 202, body = DeliveryView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn replay(
    _: Caller,
    broker: web::Data<Broker>,
    delivery_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let delivery = ask(&broker, Replay(delivery_id.into_inner())).await??;
    Ok(HttpResponse::Accepted().json(DeliveryView::new(delivery, None)))
}

/// An endpoint's signing secret(s).
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretResponse {
    /// `whsec_…`, current first, space-separated during a rotation.
    pub secret: String,
}

/// Read an endpoint's signing secret (e.g. one generated for a config-file endpoint). Each
/// read is in the audit log like every API call.
#[utoipa::path(get, path = "/api/webhooks/{id}/secret",
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, body = SecretResponse), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn secret(
    _: Caller,
    broker: web::Data<Broker>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let status = ask(&broker, GetEndpoint(id.into_inner())).await??;
    Ok(HttpResponse::Ok().json(SecretResponse {
        secret: status.endpoint.secret,
    }))
}

/// Queue a `webhook.ping` to an endpoint.
#[utoipa::path(post, path = "/api/webhooks/{id}/test",
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 202, body = TestResponse), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn send_test(
    _: Caller,
    broker: web::Data<Broker>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let delivery_id = ask(&broker, SendTest(id.into_inner())).await??;
    Ok(HttpResponse::Accepted().json(TestResponse { delivery_id }))
}

/// The OpenAPI description of these routes (merged into `/api/openapi.json`).
#[derive(OpenApi)]
#[openapi(
    paths(
        create,
        list,
        get,
        update,
        delete,
        deliveries,
        secret,
        dead_letters,
        replay,
        send_test
    ),
    components(schemas(
        CreateRequest,
        PatchRequest,
        EndpointView,
        EndpointList,
        AttemptView,
        DeliveryView,
        DeliveryList,
        TestResponse,
        SecretResponse
    ))
)]
pub struct WebhooksDoc;
