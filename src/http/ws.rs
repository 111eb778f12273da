//! WebSocket upgrade for protocol v1: origin check, authentication, session start.
//!
//! A rejected origin gets HTTP 403 before the upgrade (cross-site WebSocket hijacking).
//! A failed authentication is answered after the upgrade, with close code 4000 and a reason
//! saying what was wrong, so browser clients (which cannot read a failed handshake's status)
//! learn why.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::CloseReason;

use super::error::ApiError;
use crate::actors::session::Session;
use crate::protocol::{close, frame, ErrorCode};
use crate::transport;
use crate::Broker;

/// The subprotocol of protocol v1 (also assumed when the client names none).
pub const SUBPROTOCOL: &str = "switchboard.v1";

/// How long a rejected connection waits for the client's close frame.
const REJECT_LINGER: Duration = Duration::from_secs(2);

/// `GET /ws` (and any route mounted with [`Broker::websocket_route`]).
pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    broker: web::Data<Broker>,
) -> Result<HttpResponse, ApiError> {
    let state = broker.state();
    if !origin_allowed(&req, &state.config.server.allowed_origins) {
        log::warn!(
            "audit: origin rejected origin={:?} peer={:?}",
            req.headers().get(header::ORIGIN),
            req.peer_addr()
        );
        return Err(ApiError::new(ErrorCode::Forbidden, "origin not allowed"));
    }
    let connection_id = frame::new_id();
    let identity = state
        .auth
        .extract_token(&req)
        .and_then(|token| state.auth.authenticate(token.as_deref(), &connection_id));
    let body = transport::limit_frames(&req, body, state.config.limits.max_frame_bytes)?;
    let (response, ws, stream) = actix_ws::handle_with_protocols(&req, body, &[SUBPROTOCOL])?;
    match identity {
        Ok(identity) => {
            Session::start(state.clone(), identity, connection_id.into(), ws, stream);
        }
        Err(err) => {
            state
                .metrics
                .auth_failures
                .with_label_values(&[err.reason()])
                .inc();
            log::warn!(
                "audit: auth failure conn={connection_id} reason={} peer={:?}",
                err.reason(),
                req.peer_addr()
            );
            actix_rt::spawn(async move {
                let reason = CloseReason {
                    code: close::AUTH_FAILED.into(),
                    description: Some(err.to_string()),
                };
                let _ = ws.close(Some(reason)).await;
                let mut stream = stream;
                let _ = tokio::time::timeout(REJECT_LINGER, async {
                    while let Some(Ok(msg)) = stream.recv().await {
                        if matches!(msg, actix_ws::Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
            });
        }
    }
    Ok(response)
}

/// Whether the request's `Origin` may open a socket.
///
/// No `Origin` header (non-browser clients) is always allowed. `"*"` allows any origin; an
/// empty list allows only same-origin requests (Origin's host equals the `Host` header).
pub fn origin_allowed(req: &HttpRequest, allowed: &[String]) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    if !allowed.is_empty() {
        return false;
    }
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| host.eq_ignore_ascii_case(origin_host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn allowed(origin: Option<&str>, host: &str, list: &[&str]) -> bool {
        let mut req = TestRequest::get().insert_header((header::HOST, host));
        if let Some(o) = origin {
            req = req.insert_header((header::ORIGIN, o));
        }
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        origin_allowed(&req.to_http_request(), &list)
    }

    #[test]
    fn origin_rules() {
        assert!(allowed(None, "b.example", &[]));
        assert!(allowed(Some("https://b.example"), "b.example", &[]));
        assert!(!allowed(Some("https://evil.example"), "b.example", &[]));
        assert!(allowed(
            Some("https://app.example"),
            "b.example",
            &["https://app.example"]
        ));
        assert!(!allowed(
            Some("https://b.example"),
            "b.example",
            &["https://app.example"]
        ));
        assert!(allowed(Some("https://x"), "b", &["*"]));
    }
}
