//! WebSocket upgrade: origin check, the endpoint's room, authentication, session start.
//!
//! Every WebSocket route is an endpoint ([`crate::endpoint`]); the plain protocol v1 route
//! on `server.ws_path` is the one without a room. A rejected origin gets HTTP 403 before
//! the upgrade (cross-site WebSocket hijacking). Other refusals follow the endpoint's
//! `reject`: by default the connection is upgraded and then closed with a code and a reason
//! saying what was wrong, because browser clients cannot read a failed handshake's status.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::CloseReason;
use futures_util::StreamExt;
use url::{Host, Url};

use super::error::ApiError;
use super::peer;
use crate::actors::session::{Binding, Session};
use crate::auth::{AuthError, Identity};
use crate::config::ServerConfig;
use crate::endpoint::{Endpoint, Framing, Reject};
use crate::protocol::{close, frame, ErrorCode};
use crate::transport;
use crate::transport::admission::Refused;
use crate::transport::WebSocket;
use crate::Broker;

/// The subprotocol of protocol v1 (also assumed when the client names none).
pub const SUBPROTOCOL: &str = "switchboard.v1";

/// Protocol v1 with batched frames: when several messages wait for the socket, they go in
/// one frame, newline-separated (docs/PROTOCOL.md). Offered on endpoints with v1 framing.
pub const BATCH_SUBPROTOCOL: &str = "switchboard.v1.batch";

/// How long a rejected connection waits for the client's close frame.
const REJECT_LINGER: Duration = Duration::from_secs(2);

/// Why a connection is not served.
enum Refusal {
    /// The token is missing or invalid.
    Auth(AuthError),
    /// The token may not join the endpoint's room.
    Forbidden(String),
    /// The path or query does not make a room.
    BadParam(String),
}

impl Refusal {
    fn http(&self) -> ApiError {
        match self {
            Refusal::Auth(err) => ApiError::new(ErrorCode::Unauthorized, err.to_string()),
            Refusal::Forbidden(msg) => ApiError::new(ErrorCode::Forbidden, msg.clone()),
            Refusal::BadParam(msg) => ApiError::new(ErrorCode::BadRequest, msg.clone()),
        }
    }

    fn close_reason(&self, endpoint: &Endpoint) -> CloseReason {
        let (code, description) = match self {
            Refusal::Auth(err) => (endpoint.config.close_code, err.to_string()),
            Refusal::Forbidden(msg) | Refusal::BadParam(msg) => (close::POLICY, msg.clone()),
        };
        CloseReason {
            code: code.into(),
            description: Some(description),
        }
    }

    /// The label of `switchboard_endpoint_refusals_total`.
    fn label(&self) -> &'static str {
        match self {
            Refusal::Auth(_) => "auth",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::BadParam(_) => "param",
        }
    }
}

/// `GET` on an endpoint's path: `server.ws_path`, each `[[endpoints]]` entry, and the routes
/// [`Broker::endpoint`] and [`Broker::websocket_route`] mount.
pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    broker: web::Data<Broker>,
    endpoint: web::Data<Endpoint>,
) -> Result<HttpResponse, ApiError> {
    let state = broker.state();
    if !origin_allowed(&req, &state.config.server) {
        log::warn!(
            "audit: origin rejected origin={:?} peer={}",
            req.headers().get(header::ORIGIN),
            peer(&req)
        );
        return Err(ApiError::new(ErrorCode::Forbidden, "origin not allowed"));
    }
    // Before anything that costs memory or a token check: a flood is refused here.
    let permit = match state.admission.admit(req.peer_addr().map(|a| a.ip())) {
        Ok(permit) => permit,
        Err(refused) => return Err(refuse_connection(&req, &broker, refused)),
    };
    let endpoint = endpoint.into_inner();
    let connection_id = frame::new_id();
    let admitted = admit(&req, &broker, &endpoint, &connection_id).await;
    if let Err(refusal) = &admitted {
        record_refusal(&req, &broker, &endpoint, &connection_id, refusal);
        if endpoint.config.reject == Reject::Http {
            return Err(refusal.http());
        }
    }
    let max_frame = state.config.limits.max_frame_bytes;
    let state = state.clone();
    let protocols: &[&str] = if endpoint.config.framing == Framing::V1 {
        &[SUBPROTOCOL, BATCH_SUBPROTOCOL]
    } else {
        &[SUBPROTOCOL]
    };
    let joined_frames = transport::select_protocol(&req, protocols) == Some(BATCH_SUBPROTOCOL);
    let deflate = state.config.server.permessage_deflate;
    let response = transport::accept(&req, body, protocols, max_frame, deflate, move |ws| {
        match admitted {
            Ok((identity, room)) => {
                let binding = Binding {
                    endpoint,
                    room,
                    joined_frames,
                };
                Session::start(state, identity, connection_id.into(), ws, binding, permit);
            }
            Err(refusal) => {
                let reason = refusal.close_reason(&endpoint);
                let resets = state.metrics.connection_resets.clone();
                ws.socket
                    .reset_after(state.config.limits.write_timeout, move || {
                        resets.with_label_values(&["close_unfinished"]).inc();
                    });
                actix_rt::spawn(async move {
                    // The connection keeps its place until it is gone.
                    let _permit = permit;
                    let WebSocket {
                        mut reader,
                        mut writer,
                        ..
                    } = ws;
                    let _ = writer.close(Some(reason)).await;
                    let _ = tokio::time::timeout(REJECT_LINGER, async {
                        while let Some(Ok(msg)) = reader.next().await {
                            if matches!(msg, actix_ws::Message::Close(_)) {
                                break;
                            }
                        }
                    })
                    .await;
                });
            }
        }
    })?;
    Ok(response)
}

/// The HTTP answer to a handshake over a connection cap: 503 when the broker is full, 429
/// (with `Retry-After`) for one address over its share.
fn refuse_connection(req: &HttpRequest, broker: &Broker, refused: Refused) -> ApiError {
    broker
        .metrics()
        .connections_refused
        .with_label_values(&[refused.label()])
        .inc();
    log::warn!(
        "connection refused before the upgrade path={}: {refused} peer={}",
        req.path(),
        peer(req)
    );
    let code = match refused {
        Refused::Full { .. } => ErrorCode::Unavailable,
        Refused::TooManyFromAddress { .. } | Refused::HandshakeRate { .. } => {
            ErrorCode::RateLimited
        }
    };
    ApiError::new(code, refused.to_string())
}

/// Who the client is and which room the endpoint binds it to, or why it is not served.
async fn admit(
    req: &HttpRequest,
    broker: &Broker,
    endpoint: &Arc<Endpoint>,
    connection_id: &str,
) -> Result<(Identity, Option<String>), Refusal> {
    let state = broker.state();
    let room = endpoint
        .room_for(req.match_info(), req.query_string())
        .map_err(|e| Refusal::BadParam(e.0))?;
    let token = state
        .auth
        .extract_token_from(req, &endpoint.config.token_from)
        .map_err(Refusal::Auth)?;
    let identity = state
        .auth
        .authenticate(token.as_deref(), connection_id)
        .await
        .map_err(Refusal::Auth)?;
    if let Some(room) = &room {
        if !endpoint.allows_join(&identity, room, &state.config, &state.tasks.owners) {
            return Err(Refusal::Forbidden(format!("not allowed to join `{room}`")));
        }
    }
    Ok((identity, room))
}

fn record_refusal(
    req: &HttpRequest,
    broker: &Broker,
    endpoint: &Endpoint,
    connection_id: &str,
    refusal: &Refusal,
) {
    let metrics = broker.metrics();
    metrics
        .endpoint_refusals
        .with_label_values(&[endpoint.config.path.as_str(), refusal.label()])
        .inc();
    match refusal {
        Refusal::Auth(err) => {
            metrics
                .auth_failures
                .with_label_values(&[err.reason()])
                .inc();
            log::warn!(
                "audit: auth failure conn={connection_id} path={} reason={} peer={}",
                req.path(),
                err.reason(),
                peer(req)
            );
        }
        Refusal::Forbidden(msg) | Refusal::BadParam(msg) => log::warn!(
            "audit: connection refused conn={connection_id} path={}: {msg} peer={}",
            req.path(),
            peer(req)
        ),
    }
}

/// Whether the request's `Origin` may open a socket.
///
/// No `Origin` header (non-browser clients) is always allowed; `"*"` in
/// `server.allowed_origins` allows any origin, and a list allows exactly its entries. With no
/// list, an `http`/`https` origin is allowed when it is one of `server.public_urls` or a
/// loopback host. The `Host` header is never the reference: a DNS-rebinding page at
/// `http://attacker.example:8000` sends `Host: attacker.example:8000` itself.
pub fn origin_allowed(req: &HttpRequest, server: &ServerConfig) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let allowed = &server.allowed_origins;
    if allowed.iter().any(|a| a == "*") {
        return true;
    }
    if !allowed.is_empty() {
        return allowed.iter().any(|a| a.eq_ignore_ascii_case(origin));
    }
    let Ok(origin) = Url::parse(origin) else {
        return false;
    };
    if !matches!(origin.scheme(), "http" | "https") {
        return false;
    }
    let loopback = match origin.host() {
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    loopback
        || server
            .public_urls
            .iter()
            .filter_map(|u| Url::parse(u).ok())
            .any(|public| public.origin() == origin.origin())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn allowed(origin: Option<&str>, host: &str, list: &[&str], public: &[&str]) -> bool {
        let mut req = TestRequest::get().insert_header((header::HOST, host));
        if let Some(o) = origin {
            req = req.insert_header((header::ORIGIN, o));
        }
        let server = ServerConfig {
            allowed_origins: list.iter().map(|s| s.to_string()).collect(),
            public_urls: public.iter().map(|s| s.to_string()).collect(),
            ..ServerConfig::default()
        };
        origin_allowed(&req.to_http_request(), &server)
    }

    #[test]
    fn origin_rules() {
        assert!(allowed(None, "b.example", &[], &[]));
        assert!(allowed(
            Some("https://app.example"),
            "b.example",
            &["https://app.example"],
            &[]
        ));
        assert!(!allowed(
            Some("https://b.example"),
            "b.example",
            &["https://app.example"],
            &[]
        ));
        assert!(allowed(Some("https://x"), "b", &["*"], &[]));
    }

    #[test]
    fn without_a_list_the_reference_is_the_public_url_or_loopback_never_host() {
        let public = ["https://chat.example.com"];
        // DNS rebinding: the attacker's page sends a Host that matches its own Origin.
        assert!(!allowed(
            Some("http://attacker.example:8000"),
            "attacker.example:8000",
            &[],
            &public
        ));
        assert!(!allowed(Some("https://b.example"), "b.example", &[], &[]));
        // Schemes other than http(s) never match.
        assert!(!allowed(
            Some("evil://127.0.0.1:8000"),
            "127.0.0.1:8000",
            &[],
            &[]
        ));
        assert!(!allowed(Some("null"), "127.0.0.1:8000", &[], &[]));
        assert!(allowed(
            Some("https://chat.example.com"),
            "internal:8000",
            &[],
            &public
        ));
        assert!(allowed(
            Some("https://chat.example.com:443"),
            "x",
            &[],
            &public
        ));
        assert!(!allowed(Some("http://chat.example.com"), "x", &[], &public));
        assert!(!allowed(
            Some("https://chat.example.com.evil.example"),
            "x",
            &[],
            &public
        ));
        for local in [
            "http://127.0.0.1:3000",
            "http://localhost:8000",
            "http://[::1]:8000",
        ] {
            assert!(allowed(Some(local), "x", &[], &[]), "{local}");
        }
        assert!(!allowed(
            Some("http://localhost.evil.example"),
            "x",
            &[],
            &[]
        ));
    }
}
