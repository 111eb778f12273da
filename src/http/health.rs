//! `GET /healthz`: the process is up and its actors answer.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::Broker;

/// How long the Registry and each arbiter thread get to answer a health probe.
const HEALTH_DEADLINE: Duration = Duration::from_secs(2);

/// Liveness: 200 with live counts when the Registry and every arbiter thread answer within
/// two seconds; 503 naming the one that did not (a stuck broker must not look healthy).
#[utoipa::path(get, path = "/healthz",
    responses(
        (status = 200, description = "The broker's actors answer", body = Object,
            example = json!({"status": "ok", "sessions": 2, "rooms": 3})),
        (status = 503, description = "An actor or arbiter thread did not answer in time", body = Object,
            example = json!({"status": "unavailable", "error": "the Registry did not answer within 2s"})),
    ))]
pub async fn healthz(broker: web::Data<Broker>) -> HttpResponse {
    match broker.health(HEALTH_DEADLINE).await {
        Ok(counts) => HttpResponse::Ok().json(json!({
            "status": "ok",
            "sessions": counts.sessions,
            "rooms": counts.rooms,
        })),
        Err(error) => {
            log::error!("healthz: {error}");
            HttpResponse::ServiceUnavailable().json(json!({
                "status": "unavailable",
                "error": error,
            }))
        }
    }
}
