//! The server HTTP API: publish, history, presence, rooms, user send, broadcast,
//! disconnect, readiness, and the OpenAPI document generated from these handlers.
//!
//! Every `/api` route authenticates with an API key from `[api] keys` or a JWT whose
//! `admin` claim is true (`Authorization: Bearer …`), is rate limited per caller, and logs an
//! audit line. Errors are `{"error":{"code","message"}}` via [`ApiError`].

use futures_util::future::LocalBoxFuture;
use std::sync::atomic::Ordering;

use actix_cors::Cors;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Condition;
use actix_web::middleware::Next;
use actix_web::ResponseError;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use super::error::{resource, ApiError};
use super::peer;
use crate::actors::room::{PresenceInfo, RoomInfo};
use crate::auth::PERSONAL_PREFIX;
use crate::config::ApiConfig;
use crate::protocol::{frame, types, ErrorCode};
use crate::Broker;
use crate::ServerMessage;

/// Mounts the API routes (used by [`Broker::configure`]).
pub fn configure(cfg: &mut web::ServiceConfig, api: &ApiConfig) {
    let json = web::JsonConfig::default()
        .limit(api.max_body_bytes)
        .error_handler(|err, _| ApiError::from_json_error(err).into());
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST", "PATCH", "DELETE"])
        .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(3600);
    for origin in &api.cors_origins {
        cors = if origin == "*" {
            cors.allow_any_origin()
        } else {
            cors.allowed_origin(origin)
        };
    }
    // Registered before the /api scope, which would answer 404 for these paths.
    cfg.service(
        SwaggerUi::new("/api/docs/{_:.*}")
            .config(utoipa_swagger_ui::Config::new(["/api/openapi.json"])),
    )
    .service(resource("/api/docs", "GET").route(web::get().to(|| async {
        HttpResponse::PermanentRedirect()
            .insert_header((header::LOCATION, "/api/docs/"))
            .finish()
    })));
    cfg.service(
        web::scope("/api")
            .wrap(actix_web::middleware::from_fn(super::body::deadline))
            .wrap(Condition::new(!api.cors_origins.is_empty(), cors))
            .wrap(actix_web::middleware::from_fn(cors_refusals_as_json))
            .app_data(json)
            .app_data(web::QueryConfig::default().error_handler(|err, _| {
                ApiError::new(ErrorCode::BadRequest, format!("invalid query: {err}")).into()
            }))
            .app_data(web::PathConfig::default().error_handler(|err, _| {
                ApiError::new(ErrorCode::BadRequest, format!("invalid path: {err}")).into()
            }))
            .service(resource("", "GET").route(web::get().to(index)))
            .service(resource("/", "GET").route(web::get().to(index)))
            .service(resource("/openapi.json", "GET").route(web::get().to(openapi)))
            .service(resource("/rooms", "GET").route(web::get().to(list_rooms)))
            .service(resource("/rooms/{room}/publish", "POST").route(web::post().to(publish)))
            .service(resource("/rooms/{room}/history", "GET").route(web::get().to(history)))
            .service(resource("/rooms/{room}/presence", "GET").route(web::get().to(presence)))
            .service(resource("/users/{user}/send", "POST").route(web::post().to(send_to_user)))
            .service(resource("/broadcast", "POST").route(web::post().to(broadcast)))
            .service(resource("/sessions/{id}", "DELETE").route(web::delete().to(disconnect)))
            .configure(super::sessions::configure)
            .configure(super::webhooks::configure)
            .configure(super::tasks::configure)
            .default_service(web::to(|| async {
                Err::<HttpResponse, _>(ApiError::new(ErrorCode::NotFound, "no such API endpoint"))
            })),
    )
    .service(resource("/readyz", "GET").route(web::get().to(readyz)));
}

/// actix-cors answers a refused origin or preflight in plain text; API callers get the JSON
/// error body here, like for every other error.
async fn cors_refusals_as_json(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let res = next.call(req).await?;
    let refusal = res
        .response()
        .error()
        .and_then(|e| e.as_error::<actix_cors::CorsError>())
        .map(|e| e.to_string());
    match refusal {
        Some(message) => {
            let err = ApiError::new(ErrorCode::Forbidden, format!("CORS: {message}"));
            let (req, _) = res.into_parts();
            Ok(ServiceResponse::new(req, err.error_response()))
        }
        None => Ok(res.map_into_boxed_body()),
    }
}

/// An authenticated API caller: `key#<index>` or `admin:<sub>` (as in the audit log).
#[derive(Debug, Clone)]
pub struct Caller(pub String);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { authenticate(&req).await })
    }
}

async fn authenticate(req: &HttpRequest) -> Result<Caller, ApiError> {
    let broker = req
        .app_data::<web::Data<Broker>>()
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "broker not mounted"))?;
    let state = broker.state();
    let caller = match credential(req, state, "api").await? {
        Credential::Key(i) => format!("key#{i}"),
        Credential::Token(claims) if claims.admin => format!("admin:{}", claims.sub),
        Credential::Token(claims) => {
            audit(
                req,
                "api",
                &claims.sub,
                "rejected: token is not an admin token",
            );
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "token is not an admin token",
            ));
        }
    };
    if let Some(limiter) = &state.api_limiter {
        if limiter.check_key(&caller).is_err() {
            state.metrics.rate_limited.with_label_values(&["api"]).inc();
            audit(req, "api", &caller, "rejected: rate limited");
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "too many API requests; slow down",
            ));
        }
    }
    audit(req, "api", &caller, "ok");
    Ok(Caller(caller))
}

/// A bearer credential: an API key from `[api] keys` (its index) or a verified token.
pub(crate) enum Credential {
    /// `[api] keys[i]`.
    Key(usize),
    /// A token the broker's verifier accepted.
    Token(crate::auth::Claims),
}

/// Reads `Authorization: Bearer` and resolves it against `[api] keys` (compared in constant
/// time) and the token verifier. A refusal is logged as an audit line of `scope`, counted
/// in `switchboard_auth_failures_total` as `<scope>_<reason>`, and answered 401.
pub(crate) async fn credential(
    req: &HttpRequest,
    state: &crate::broker::BrokerState,
    scope: &str,
) -> Result<Credential, ApiError> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer_token);
    let Some(token) = token else {
        audit(req, scope, "-", "rejected: no credentials");
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "send an API key or a token as Authorization: Bearer",
        ));
    };
    if let Some(i) = state
        .config
        .api
        .keys
        .iter()
        .position(|k| constant_time_eq(k.as_bytes(), token.as_bytes()))
    {
        return Ok(Credential::Key(i));
    }
    state
        .auth
        .verify_refreshing(token)
        .await
        .map(Credential::Token)
        .map_err(|err| {
            state
                .metrics
                .auth_failures
                .with_label_values(&[&format!("{scope}_{}", err.reason())])
                .inc();
            audit(req, scope, "-", &format!("rejected: {}", err.reason()));
            ApiError::new(ErrorCode::Unauthorized, "unknown API key or invalid token")
        })
}

/// One audit line: `audit: <scope> METHOD PATH caller=… <outcome> peer=…`.
pub(crate) fn audit(req: &HttpRequest, scope: &str, caller: &str, outcome: &str) {
    log::info!(
        "audit: {scope} {} {} caller={caller} {outcome} peer={}",
        req.method(),
        req.path(),
        peer(req)
    );
}

/// Compares secrets without leaking where they differ through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn room_path(room: &str) -> Result<String, ApiError> {
    if frame::valid_room_name(room) {
        Ok(room.to_owned())
    } else {
        Err(ApiError::new(
            ErrorCode::BadRequest,
            "invalid room name: use 1-128 of A-Z a-z 0-9 _ . : @ -",
        ))
    }
}

pub(crate) fn mailbox(err: actix::MailboxError) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("broker actor unavailable: {err}"),
    )
}

/// A message to publish.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Message type delivered to members (default `room.message`).
    #[serde(rename = "type")]
    pub msg_type: Option<String>,
    /// Any JSON.
    #[schema(value_type = Value)]
    pub payload: Box<RawValue>,
    /// Message id; a retry with the same id in the same room is not delivered twice.
    pub id: Option<String>,
}

/// Where a published message went.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishResponse {
    /// Room it was published to.
    pub room: String,
    /// Its seq in that room.
    pub seq: u64,
    /// Its message id.
    pub id: String,
    /// True when the id had been published before (nothing was delivered this time).
    pub duplicate: bool,
}

async fn publish_to(
    broker: &Broker,
    caller: &Caller,
    room: String,
    body: PublishRequest,
) -> Result<PublishResponse, ApiError> {
    let message = ServerMessage {
        msg_type: body.msg_type,
        payload: body.payload,
        id: body.id,
    };
    let receipt = broker.publish(&room, &caller.0, message).await?;
    Ok(PublishResponse {
        room,
        seq: receipt.seq,
        id: receipt.id,
        duplicate: receipt.duplicate,
    })
}

/// Publish to a room.
#[utoipa::path(post, path = "/api/rooms/{room}/publish", request_body = PublishRequest,
    params(("room" = String, Path, description = "Room name")),
    responses((status = 200, body = PublishResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 413, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "`limit_exceeded`: the room is not running and the broker runs `limits.max_rooms` rooms")),
    security(("bearer" = [])))]
async fn publish(
    caller: Caller,
    broker: web::Data<Broker>,
    room: web::Path<String>,
    body: web::Json<PublishRequest>,
) -> Result<HttpResponse, ApiError> {
    let room = room_path(&room)?;
    let published = publish_to(&broker, &caller, room, body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(published))
}

/// Send to every session of a user (their `user:{user}` room).
#[utoipa::path(post, path = "/api/users/{user}/send", request_body = PublishRequest,
    params(("user" = String, Path, description = "User id (`sub`)")),
    responses((status = 200, body = PublishResponse), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
async fn send_to_user(
    caller: Caller,
    broker: web::Data<Broker>,
    user: web::Path<String>,
    body: web::Json<PublishRequest>,
) -> Result<HttpResponse, ApiError> {
    let room = room_path(&format!("{PERSONAL_PREFIX}{user}"))?;
    let published = publish_to(&broker, &caller, room, body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(published))
}

/// Send to every connected session (the `broadcast` room).
#[utoipa::path(post, path = "/api/broadcast", request_body = PublishRequest,
    responses((status = 200, body = PublishResponse), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
async fn broadcast(
    caller: Caller,
    broker: web::Data<Broker>,
    body: web::Json<PublishRequest>,
) -> Result<HttpResponse, ApiError> {
    let room = types::BROADCAST_ROOM.to_owned();
    let published = publish_to(&broker, &caller, room, body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(published))
}

/// History query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Messages with a seq above this (default 0: everything kept).
    pub since: Option<u64>,
    /// At most this many, oldest first (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// A room's stored messages.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryResponse {
    /// Room name.
    pub room: String,
    /// The room's latest seq.
    pub seq: u64,
    /// False when part of the range after `since` has left history.
    pub recovered: bool,
    /// The messages as members received them.
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Box<RawValue>>,
}

/// Read a room's history.
#[utoipa::path(get, path = "/api/rooms/{room}/history",
    params(("room" = String, Path, description = "Room name"), HistoryQuery),
    responses((status = 200, body = HistoryResponse), (status = 400, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "`limit_exceeded`: the room is not running and the broker runs `limits.max_rooms` rooms")),
    security(("bearer" = [])))]
async fn history(
    _: Caller,
    broker: web::Data<Broker>,
    room: web::Path<String>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let room = room_path(&room)?;
    let limit = query.limit.unwrap_or(100).min(1000);
    let found = broker
        .history(&room, query.since.unwrap_or(0), limit)
        .await?;
    let messages = found
        .messages
        .into_iter()
        .filter_map(|m| RawValue::from_string(m.to_string()).ok())
        .collect();
    Ok(HttpResponse::Ok().json(HistoryResponse {
        room,
        seq: found.seq,
        recovered: found.recovered,
        messages,
    }))
}

/// Who is in a room.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceResponse {
    /// Room name.
    pub room: String,
    /// One entry per user.
    #[schema(value_type = Vec<Object>)]
    pub presence: Vec<PresenceInfo>,
}

/// Read a room's presence (409 when presence is off for its namespace).
#[utoipa::path(get, path = "/api/rooms/{room}/presence",
    params(("room" = String, Path, description = "Room name")),
    responses((status = 200, body = PresenceResponse), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "`limit_exceeded`: the room is not running and the broker runs `limits.max_rooms` rooms")),
    security(("bearer" = [])))]
async fn presence(
    _: Caller,
    broker: web::Data<Broker>,
    room: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let room = room_path(&room)?;
    let presence = broker.presence(&room).await?;
    Ok(HttpResponse::Ok().json(PresenceResponse { room, presence }))
}

/// The running rooms.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoomsResponse {
    /// Rooms with their member counts and seqs, by name.
    #[schema(value_type = Vec<Object>)]
    pub rooms: Vec<RoomInfo>,
}

/// List active rooms with member counts.
#[utoipa::path(get, path = "/api/rooms",
    responses((status = 200, body = RoomsResponse)), security(("bearer" = [])))]
async fn list_rooms(_: Caller, broker: web::Data<Broker>) -> Result<HttpResponse, ApiError> {
    let rooms = broker.rooms().await?;
    Ok(HttpResponse::Ok().json(RoomsResponse { rooms }))
}

/// Why a session is disconnected.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DisconnectQuery {
    /// Sent to the client (default `disconnected by server`).
    pub reason: Option<String>,
}

/// Disconnect a session: `system.connection.close {reason}`, then close 1008.
#[utoipa::path(delete, path = "/api/sessions/{id}",
    params(("id" = String, Path, description = "connection_id"), DisconnectQuery),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn disconnect(
    _: Caller,
    broker: web::Data<Broker>,
    id: web::Path<String>,
    query: web::Query<DisconnectQuery>,
) -> Result<HttpResponse, ApiError> {
    let reason = query
        .into_inner()
        .reason
        .unwrap_or_else(|| "disconnected by server".into());
    if reason.len() > 100 {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "reason: at most 100 bytes",
        ));
    }
    if broker.disconnect(&id, &reason).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::new(ErrorCode::NotFound, "no such session"))
    }
}

/// Readiness: 200 while accepting connections; 503 once shutdown has begun, or while the
/// webhook outbox fails (publishes that webhooks want cannot be stored then).
#[utoipa::path(get, path = "/readyz", responses((status = 200), (status = 503)))]
async fn readyz(broker: web::Data<Broker>) -> HttpResponse {
    let state = broker.state();
    if !state.ready.load(Ordering::Acquire) {
        return HttpResponse::ServiceUnavailable().json(json!({ "status": "shutting_down" }));
    }
    if let Some(error) = state.webhooks.health().failing() {
        return HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "webhook_outbox_failing", "error": &*error }));
    }
    if let Some(error) = state.engine.status().down {
        return HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "engine_unavailable", "error": error }));
    }
    HttpResponse::Ok().json(json!({ "status": "ready" }))
}

/// The error body of every API error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// `{code, message}`.
    #[schema(value_type = Object)]
    pub error: Value,
}

/// The OpenAPI 3 description of this API, generated from the handlers above.
#[derive(OpenApi)]
#[openapi(
    info(title = "switchboard HTTP API", description = "Publish, history, presence and session control for the switchboard broker."),
    paths(publish, history, presence, list_rooms, send_to_user, broadcast, disconnect, readyz,
        crate::http::health::healthz, crate::metrics::endpoint),
    components(schemas(PublishRequest, PublishResponse, HistoryResponse, PresenceResponse, RoomsResponse, ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The whole OpenAPI document: the API, the webhook routes, health and metrics, with the
/// error answers every route shares.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(super::webhooks::WebhooksDoc::openapi());
    doc.merge(super::tasks::TasksDoc::openapi());
    doc.merge(super::sessions::SessionsDoc::openapi());
    utoipa::Modify::modify(&StandardErrors, &mut doc);
    doc
}

/// Adds the answers that follow from where a route is rather than from what it does: every
/// `/api` route authenticates (401, 403) and is rate limited (429); one with a body can get
/// 400, 408 and 413; one with parameters, 400. Routes list their own other answers.
struct StandardErrors;

impl utoipa::Modify for StandardErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::Operation;
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        let add = |op: &mut Operation, status: &str, description: &str| {
            op.responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| error(description).into());
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let api = path.starts_with("/api/") && path != "/api/openapi.json";
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                if api {
                    add(op, "500", "`internal`: the broker failed (an actor did not answer, the webhook outbox failed)");
                    add(
                        op,
                        "401",
                        "`unauthorized`: no API key or admin token, or an unknown one",
                    );
                    add(
                        op,
                        "403",
                        "`forbidden`: a valid token without `admin: true`",
                    );
                    add(
                        op,
                        "429",
                        "`rate_limited`: over `api.requests_per_second` (with `Retry-After`)",
                    );
                }
                if op.request_body.is_some() {
                    add(
                        op,
                        "400",
                        "`bad_request`: the body is not valid JSON of the documented shape",
                    );
                    add(
                        op,
                        "408",
                        "`request_timeout`: the body did not arrive within `api.body_timeout`",
                    );
                    add(
                        op,
                        "413",
                        "`too_large`: the body is over `api.max_body_bytes`",
                    );
                }
                if op.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                    add(
                        op,
                        "400",
                        "`bad_request`: an invalid path or query parameter",
                    );
                }
            }
        }
    }
}

/// `GET /api`: where to read about this API (no authentication).
async fn index() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "name": "switchboard HTTP API",
        "version": env!("CARGO_PKG_VERSION"),
        "docs": "/api/docs/",
        "openapi": "/api/openapi.json",
    }))
}

/// `GET /api/openapi.json` (no authentication: it describes, it does not act).
async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(document())
}
