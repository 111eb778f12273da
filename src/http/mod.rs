//! Thin HTTP routes: WebSocket upgrade, conformance echo, health. Each route parses the
//! request, calls into the actors, and maps errors through [`error::ApiError`].

pub mod api;
pub mod asap;
pub mod body;
pub mod console;
pub mod echo;
pub mod error;
pub mod health;
pub mod landing;
pub mod sessions;
pub mod tasks;
pub mod webhooks;
pub mod ws;

/// The peer's address for audit lines (`-` when unknown, e.g. in tests).
pub(crate) fn peer(req: &actix_web::HttpRequest) -> String {
    req.peer_addr()
        .map_or_else(|| "-".to_owned(), |addr| addr.to_string())
}
