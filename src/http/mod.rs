//! Thin HTTP routes: WebSocket upgrade, conformance echo, health. Each route parses the
//! request, calls into the actors, and maps errors through [`error::ApiError`].

pub mod api;
pub mod body;
pub mod echo;
pub mod error;
pub mod health;
pub mod landing;
pub mod webhooks;
pub mod ws;
