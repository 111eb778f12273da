//! ASAP over HTTP: `POST /asap` (JSON-RPC, single or batch), `POST /asap/stream` (the
//! answer and a handler's later messages as server-sent events), and the discovery routes
//! `/.well-known/asap/manifest.json` and `/.well-known/asap/health`.
//!
//! Every response carries `ASAP-Version`: the first version of the request's header that
//! the broker speaks, or its default. JSON-RPC errors answer 200 with the error object, as
//! the protocol does; only transport failures (authentication, rate limit, size, encoding)
//! use other statuses.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::actors::router::{Origin, Pusher};
use crate::asap::dispatch::{self, Call};
use crate::asap::rpc::{self, Incoming, Refused};
use crate::asap::{
    AsapError, Envelope, DEFAULT_TRANSPORT_VERSION, PROTOCOL_VERSION, SUPPORTED_TRANSPORT_VERSIONS,
};
use crate::auth::{Identity, TokenSource};
use crate::broker::BrokerState;
use crate::http::error::resource;
use crate::protocol::frame::RpcId;
use crate::Broker;

/// The agents' WebSocket endpoint.
pub const WS_PATH: &str = "/asap/ws";
const SEND_PATH: &str = "/asap";
const STREAM_PATH: &str = "/asap/stream";
const MANIFEST_PATH: &str = "/.well-known/asap/manifest.json";
const HEALTH_PATH: &str = "/.well-known/asap/health";
const VERSION_HEADER: &str = "asap-version";
const IDEMPOTENCY_HEADER: &str = "x-idempotency-key";
/// How long clients may cache the manifest (the protocol's value).
const MANIFEST_MAX_AGE: u32 = 300;
/// Content encodings actix-web decodes for request bodies.
const ENCODINGS: [&str; 5] = ["identity", "gzip", "br", "deflate", "zstd"];

/// Mounts the HTTP routes (the WebSocket endpoint is mounted with the other endpoints);
/// request bodies may be `max_request_bytes` long once decoded.
pub fn configure(cfg: &mut web::ServiceConfig, max_request_bytes: usize) {
    let deadline = || actix_web::middleware::from_fn(super::body::deadline);
    let limit = || web::PayloadConfig::new(max_request_bytes);
    cfg.service(
        resource(SEND_PATH, "POST")
            .app_data(limit())
            .wrap(deadline())
            .route(web::post().to(send)),
    )
    .service(
        resource(STREAM_PATH, "POST")
            .app_data(limit())
            .wrap(deadline())
            .route(web::post().to(stream)),
    )
    .service(resource(MANIFEST_PATH, "GET").route(web::get().to(manifest)))
    .service(resource(HEALTH_PATH, "GET").route(web::get().to(health)));
}

/// The `ASAP-Version` to answer with, or the error for a version the broker does not
/// speak.
fn negotiate(req: &HttpRequest) -> Result<&'static str, AsapError> {
    let Some(asked) = req
        .headers()
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    else {
        return Ok(DEFAULT_TRANSPORT_VERSION);
    };
    asked
        .split(',')
        .map(str::trim)
        .find_map(|token| {
            SUPPORTED_TRANSPORT_VERSIONS
                .into_iter()
                .find(|v| *v == token)
        })
        .ok_or_else(|| AsapError::VersionIncompatible {
            requested: asked.to_owned(),
        })
}

fn reply(status: StatusCode, version: &str) -> HttpResponseBuilder {
    let mut builder = HttpResponse::build(status);
    builder.insert_header((VERSION_HEADER, version));
    builder
}

fn json_body(status: StatusCode, version: &str, body: impl Into<Bytes>) -> HttpResponse {
    reply(status, version)
        .content_type("application/json")
        .body(body.into())
}

fn rpc_error(version: &str, id: &RpcId, error: &AsapError) -> HttpResponse {
    json_body(StatusCode::OK, version, rpc::error(id, error).into_bytes())
}

/// What a request must pass before its body is read: version, authentication, rate limit,
/// content encoding. The refusal is the whole response.
async fn admit(
    req: &HttpRequest,
    state: &BrokerState,
) -> Result<(&'static str, Identity), HttpResponse> {
    let version =
        negotiate(req).map_err(|err| rpc_error(DEFAULT_TRANSPORT_VERSION, &RpcId::null(), &err))?;
    // A page in a browser can POST here without a CORS preflight (a text/plain body), and
    // the request would act (forward a task to an agent) even though the page cannot read
    // the answer: browser origins are held to the same rule as WebSocket upgrades.
    if !super::ws::origin_allowed(req, &state.config.server) {
        log::warn!(
            "audit: asap origin rejected origin={:?} peer={}",
            req.headers().get(header::ORIGIN),
            super::peer(req)
        );
        return Err(json_body(
            StatusCode::FORBIDDEN,
            version,
            json!({"detail": "origin not allowed"}).to_string(),
        ));
    }
    let refuse = |status: StatusCode, error: AsapError| {
        let mut response = json_body(
            status,
            version,
            rpc::error(&RpcId::null(), &error).into_bytes(),
        );
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    };
    let connection_id = crate::protocol::frame::new_id();
    let identity = async {
        let token = state
            .auth
            .extract_token_from(req, &[TokenSource::Header, TokenSource::Query])?;
        state
            .auth
            .authenticate(token.as_deref(), &connection_id)
            .await
    }
    .await
    .map_err(|err| {
        state
            .metrics
            .auth_failures
            .with_label_values(&[&format!("asap_{}", err.reason())])
            .inc();
        refuse(
            StatusCode::UNAUTHORIZED,
            AsapError::InvalidRequest(format!("authentication failed: {}", err.reason())),
        )
    })?;
    if let Some(limiter) = &state.api_limiter {
        if limiter
            .check_key(&format!("asap:{}", caller(req, &identity)))
            .is_err()
        {
            state
                .metrics
                .rate_limited
                .with_label_values(&["asap"])
                .inc();
            let mut response = refuse(StatusCode::TOO_MANY_REQUESTS, AsapError::RateLimited);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Err(response);
        }
    }
    let encoding = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !encoding.is_empty() && !ENCODINGS.contains(&encoding.as_str()) {
        return Err(json_body(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            version,
            json!({"detail": format!(
                "Unsupported Content-Encoding: {encoding}. Supported: {}",
                ENCODINGS.join(", ")
            )})
            .to_string(),
        ));
    }
    Ok((version, identity))
}

/// Who is calling, for rate limits and idempotency keys: the token's subject, or the peer's
/// address for an anonymous caller (whose identity is new on every request).
fn caller(req: &HttpRequest, identity: &Identity) -> String {
    match identity.anonymous {
        true => format!(
            "anonymous@{}",
            req.peer_addr()
                .map_or_else(String::new, |a| a.ip().to_string())
        ),
        false => identity.user.to_string(),
    }
}

/// [`admit`], then the body: the version to answer with, the caller and the body, or the
/// whole response of a refusal.
async fn accept(
    req: &HttpRequest,
    payload: web::Payload,
    state: &BrokerState,
) -> Result<(&'static str, Identity, Bytes), HttpResponse> {
    let (version, identity) = admit(req, state).await?;
    let body = read_body(req, payload, state.config.asap.max_request_bytes, version).await?;
    Ok((version, identity, body))
}

/// Reads the (decompressed) body within `asap.max_request_bytes`.
async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    version: &str,
) -> Result<Bytes, HttpResponse> {
    // The `Bytes` extractor decodes `Content-Encoding` and counts the limit (the
    // resource's `PayloadConfig`) on the decoded bytes, so a small compressed body cannot
    // expand past it.
    let mut payload = payload.into_inner();
    match <web::Bytes as actix_web::FromRequest>::from_request(req, &mut payload).await {
        Ok(body) => Ok(body),
        Err(err) => {
            let status = err.as_response_error().status_code();
            let detail = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("request body exceeds {limit} bytes (asap.max_request_bytes)")
            } else {
                format!("could not read the request body: {err}")
            };
            Err(json_body(
                status,
                version,
                json!({ "detail": detail }).to_string(),
            ))
        }
    }
}

async fn send(req: HttpRequest, payload: web::Payload, broker: web::Data<Broker>) -> HttpResponse {
    let state = broker.state().clone();
    let (version, identity, body) = match accept(&req, payload, &state).await {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let caller = caller(&req, &identity);
    let identity = Arc::new(identity);
    let text = match std::str::from_utf8(&body) {
        Ok(text) => text,
        Err(err) => {
            let error = AsapError::Parse(format!("invalid UTF-8: {err}"));
            return rpc_error(version, &RpcId::null(), &error);
        }
    };
    if text.trim_start().starts_with('[') {
        return json_body(
            StatusCode::OK,
            version,
            batch(&state, text, &identity).await,
        );
    }
    let header_key = req
        .headers()
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match one(&state, text, &identity, Some((caller, header_key))).await {
        Some(answer) => json_body(StatusCode::OK, version, answer),
        None => reply(StatusCode::NO_CONTENT, version).finish(),
    }
}

/// A JSON-RPC batch: each request handled on its own, concurrently; the answers in order
/// (notifications have none).
async fn batch(state: &Arc<BrokerState>, text: &str, identity: &Arc<Identity>) -> Bytes {
    let items: Vec<Box<RawValue>> = match serde_json::from_str(text) {
        Ok(items) => items,
        Err(err) => {
            return rpc::error(&RpcId::null(), &AsapError::Parse(err.to_string())).into_bytes()
        }
    };
    let max = state.config.asap.max_batch;
    if items.is_empty() || items.len() > max {
        let reason = match items.len() {
            0 => "empty batch".to_owned(),
            n => format!("batch of {n} exceeds asap.max_batch ({max})"),
        };
        return rpc::error(&RpcId::null(), &AsapError::InvalidRequest(reason)).into_bytes();
    }
    let answers = futures_util::future::join_all(
        items
            .iter()
            .map(|item| one(state, item.get(), identity, None)),
    )
    .await;
    let mut body = Vec::with_capacity(answers.iter().flatten().map(Bytes::len).sum::<usize>() + 2);
    body.push(b'[');
    for (i, answer) in answers.into_iter().flatten().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&answer);
    }
    body.push(b']');
    Bytes::from(body)
}

/// One JSON-RPC request over HTTP: its answer, or `None` for a notification.
async fn one(
    state: &Arc<BrokerState>,
    text: &str,
    identity: &Arc<Identity>,
    idempotency: Option<(String, Option<String>)>,
) -> Option<Bytes> {
    let count = |outcome: &str| {
        state
            .metrics
            .asap_requests
            .with_label_values(&["http", outcome])
            .inc();
    };
    let (id, envelope, key) = match rpc::parse(text) {
        Ok(Incoming::Send {
            id,
            envelope,
            idempotency_key,
        }) => {
            // Only a single request is replayed from its key; batch members run each time.
            let key = idempotency
                .and_then(|(caller, header)| Some((caller, header.or(idempotency_key)?)));
            (id, envelope, key)
        }
        Ok(Incoming::Register { id, .. }) => {
            let error = AsapError::MethodNotFound(
                "asap.register: agents register on the WebSocket (/asap/ws), where they can be reached"
                    .into(),
            );
            count(error.outcome());
            return Some(rpc::error(&id, &error).into_bytes());
        }
        Ok(Incoming::Ping | Incoming::Pong | Incoming::Ack) => {
            let error = AsapError::InvalidRequest(
                "heartbeats and acks belong to the WebSocket (/asap/ws)".into(),
            );
            count(error.outcome());
            return Some(rpc::error(&RpcId::null(), &error).into_bytes());
        }
        Err(Refused { id, error }) => {
            count(error.outcome());
            return Some(rpc::error(&id, &error).into_bytes());
        }
    };
    if let Some((caller, key)) = &key {
        if let Some(answer) = state.asap.answered(caller, key) {
            count("idempotent_replay");
            return id.map(|_| answer);
        }
    }
    let call = Call {
        envelope: *envelope,
        origin: Origin::AsapHttp,
        connection_id: None,
        identity: identity.clone(),
        push: None,
    };
    let result = dispatch::dispatch(state.clone(), call).await;
    count(match &result {
        Ok(_) => "ok",
        Err(err) => err.outcome(),
    });
    let id = id?;
    match result {
        Ok(answer) => {
            let body = rpc::result(&id, &answer).into_bytes();
            if let Some((caller, key)) = key {
                state.asap.remember(&caller, &key, body.clone());
            }
            Some(body)
        }
        Err(err) => Some(rpc::error(&id, &err).into_bytes()),
    }
}

/// `POST /asap/stream`: one `asap.send`; every later message the handler sends, then its
/// answer, each as a server-sent event `data: <envelope>`. An error before the stream
/// starts is a JSON-RPC error body; one after is a last `event: error`.
async fn stream(
    req: HttpRequest,
    payload: web::Payload,
    broker: web::Data<Broker>,
) -> HttpResponse {
    let state = broker.state().clone();
    let (version, identity, body) = match accept(&req, payload, &state).await {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let text = String::from_utf8_lossy(&body);
    let (id, envelope) = match rpc::parse(&text) {
        Ok(Incoming::Send {
            id: Some(id),
            envelope,
            ..
        }) => (id, envelope),
        Ok(_) => {
            let error = AsapError::InvalidRequest(
                "the stream route takes one asap.send request with an id".into(),
            );
            return rpc_error(version, &RpcId::null(), &error);
        }
        Err(Refused { id, error }) => return rpc_error(version, &id, &error),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let own_id = state.config.asap.agent_id.clone();
    let request = Arc::new(Envelope::clone(&envelope));
    let events = tx.clone();
    let push = Pusher::new(move |message| {
        let envelope = dispatch::answer_with(&request, &own_id, message);
        events.try_send(sse_event(None, &envelope)).is_ok()
    });
    let call = Call {
        envelope: *envelope,
        origin: Origin::AsapStream,
        connection_id: None,
        identity: Arc::new(identity),
        push: Some(push),
    };
    actix_rt::spawn(async move {
        let result = dispatch::dispatch(state.clone(), call).await;
        let (outcome, last) = match &result {
            Ok(answer) => ("ok", sse_event(None, answer)),
            Err(err) => (
                err.outcome(),
                sse_event(Some("error"), &rpc::error(&id, err).to_string()),
            ),
        };
        state
            .metrics
            .asap_requests
            .with_label_values(&["stream", outcome])
            .inc();
        let _ = tx.send(last).await;
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, actix_web::Error>(event), rx))
    });
    reply(StatusCode::OK, version)
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .streaming(body)
}

fn sse_event(event: Option<&str>, data: &impl serde::Serialize) -> Bytes {
    let data = serde_json::to_string(data).unwrap_or_default();
    Bytes::from(match event {
        Some(event) => format!("event: {event}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    })
}

/// The base URL the manifest advertises.
fn base_url(req: &HttpRequest, state: &BrokerState) -> String {
    let configured = state.config.asap.public_url.trim_end_matches('/');
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

/// The manifest: who the broker is as an agent, its skills (the registered skill
/// handlers), where to reach it. The ETag is the SHA-256 of the body, so it changes when a
/// skill is registered.
fn manifest_json(req: &HttpRequest, state: &BrokerState) -> Value {
    let config = &state.config;
    let base = base_url(req, state);
    let events = match base.split_once("://") {
        Some(("https", rest)) => format!("wss://{rest}{WS_PATH}"),
        Some((_, rest)) => format!("ws://{rest}{WS_PATH}"),
        None => format!("{base}{WS_PATH}"),
    };
    let auth = match config.auth.anonymous {
        true => Value::Null,
        false => json!({"schemes": ["bearer"], "oauth2": null}),
    };
    json!({
        "id": config.asap.agent_id,
        "name": config.asap.name,
        "version": env!("CARGO_PKG_VERSION"),
        "description": config.asap.description,
        "capabilities": {
            "asap_version": PROTOCOL_VERSION,
            "skills": state.routes.load().skills(),
            "state_persistence": false,
            "streaming": true,
            "mcp_tools": [],
            "hardware": null,
            "inference": null,
        },
        "endpoints": {"asap": format!("{base}{SEND_PATH}"), "events": events},
        "supported_versions": SUPPORTED_TRANSPORT_VERSIONS,
        "auth": auth,
        "signature": null,
        "sla": null,
        "verification": null,
        "ttl_seconds": MANIFEST_MAX_AGE,
    })
}

async fn manifest(req: HttpRequest, broker: web::Data<Broker>) -> HttpResponse {
    let state = broker.state();
    let body = manifest_json(&req, state).to_string();
    let etag = format!("\"{:x}\"", Sha256::digest(body.as_bytes()));
    let cache = format!("public, max-age={MANIFEST_MAX_AGE}");
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    let status = match matches {
        true => StatusCode::NOT_MODIFIED,
        false => StatusCode::OK,
    };
    let mut response = reply(status, DEFAULT_TRANSPORT_VERSION);
    response
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, cache));
    match matches {
        true => response.finish(),
        false => response.content_type("application/json").body(body),
    }
}

async fn health(broker: web::Data<Broker>) -> HttpResponse {
    let state = broker.state();
    let healthy = state.ready.load(Ordering::Relaxed);
    let uptime = state.asap.started.elapsed().as_secs_f64();
    let body = json!({
        "status": if healthy { "healthy" } else { "unhealthy" },
        "agent_id": state.config.asap.agent_id,
        "version": env!("CARGO_PKG_VERSION"),
        "asap_version": PROTOCOL_VERSION,
        "uptime_seconds": (uptime * 100.0).round() / 100.0,
        "load": {
            "active_tasks": state.asap.in_flight.load(Ordering::Relaxed),
            "queue_depth": 0,
        },
    });
    let status = match healthy {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    json_body(status, DEFAULT_TRANSPORT_VERSION, body.to_string())
}
