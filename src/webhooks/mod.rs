//! Outbound webhooks: how deliveries are signed for receivers ([`signing`]) and which
//! destinations the broker refuses to call ([`ssrf`]).

pub mod outbox;
pub mod signing;
pub mod ssrf;
