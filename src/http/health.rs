//! `GET /healthz`: the process is up and its actors answer.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::Broker;

/// Liveness, with live counts.
pub async fn healthz(broker: web::Data<Broker>) -> HttpResponse {
    let counts = broker.counts().await;
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "sessions": counts.sessions,
        "rooms": counts.rooms,
    }))
}
