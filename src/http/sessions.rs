//! `GET /api/sessions`: the live sessions on this node, so an operator (the web console, a
//! script) can find the connection id `DELETE /api/sessions/{id}` takes.
//!
//! Same authentication, rate limit and audit line as every `/api` route ([`Caller`]).
//! With the Redis engine each node lists its own sessions: the list is read from the
//! Registry's memory, and asking every node would make a listing as slow as the slowest.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::api::{Caller, ErrorBody};
use super::error::{resource, ApiError};
use crate::actors::registry::DescribeSessions;
use crate::protocol::ErrorCode;
use crate::Broker;

/// The most sessions one answer lists (a broker may hold hundreds of thousands).
const MAX_LIMIT: usize = 1000;

/// Mounts the route inside the `/api` scope.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/sessions", "GET").route(web::get().to(list)));
}

/// `GET /api/sessions` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SessionsQuery {
    /// Only this user's sessions (`sub`, or `anonymous:<connection id>`).
    pub user: Option<String>,
    /// At most this many, oldest first (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// One live session.
#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    /// The id `DELETE /api/sessions/{id}` takes (the client's `connection_id`).
    pub connection_id: String,
    /// Its user.
    pub user: String,
    /// When it connected (RFC 3339, UTC, milliseconds).
    pub connected_at: String,
}

/// The live sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionsResponse {
    /// Sessions that match, before `limit`.
    pub total: usize,
    /// At most `limit` of them, oldest first.
    pub sessions: Vec<Session>,
}

/// List the live sessions on this node.
#[utoipa::path(get, path = "/api/sessions", params(SessionsQuery),
    responses((status = 200, body = SessionsResponse), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list(
    _: Caller,
    broker: web::Data<Broker>,
    query: web::Query<SessionsQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("limit: 1-{MAX_LIMIT}"),
        ));
    }
    let all = broker
        .state()
        .registry
        .send(DescribeSessions)
        .await
        .map_err(|err| {
            ApiError::new(
                ErrorCode::Internal,
                format!("broker actor unavailable: {err}"),
            )
        })?;
    let matching: Vec<_> = all
        .into_iter()
        .filter(|s| query.user.as_deref().is_none_or(|u| *s.user == *u))
        .collect();
    let total = matching.len();
    let sessions = matching
        .into_iter()
        .take(limit)
        .map(|s| Session {
            connection_id: s.connection_id.to_string(),
            user: s.user.to_string(),
            connected_at: humantime::format_rfc3339_millis(s.connected_at).to_string(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(SessionsResponse { total, sessions }))
}

/// The OpenAPI description of this route (merged into `/api/openapi.json`).
#[derive(OpenApi)]
#[openapi(paths(list), components(schemas(Session, SessionsResponse)))]
pub struct SessionsDoc;
