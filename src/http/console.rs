//! `/console/`: the web console's pages (`[console] enabled`), compiled into the binary from
//! `console/dist` (built from `console/src` with `npm run build`; the bundle is committed so
//! that building the broker needs no npm).
//!
//! The files are public: they hold no data. Everything the console shows comes from the HTTP
//! API and the WebSocket endpoint with the API key or admin token the operator types in, so
//! the checks there are the only ones that matter. The headers below keep that credential
//! (in the page's `sessionStorage`) away from other origins' scripts and frames.

use actix_web::http::header::{self, EntityTag, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use rust_embed::RustEmbed;

use super::error::{resource, ApiError};
use crate::protocol::ErrorCode;
use crate::Broker;

/// Where the console is mounted.
pub const PATH: &str = "/console/";

/// The bundle. `debug-embed` (Cargo.toml) embeds it in debug builds too, so tests serve the
/// same bytes a release does.
#[derive(RustEmbed)]
#[folder = "console/dist/"]
struct Assets;

/// Only the console's own scripts and styles run, it talks only to this origin (HTTP and
/// WebSocket), and no other site may frame it: a script injected through a room message
/// could otherwise read the credential.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Mounts `/console` (a redirect) and `/console/…`. `switchboard serve` does it when
/// `[console] enabled`; an embedding application may mount it next to
/// [`crate::Broker::configure`], which provides the API the console reads.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/console", "GET").route(web::get().to(|| async {
        HttpResponse::PermanentRedirect()
            .insert_header((header::LOCATION, PATH))
            .finish()
    })))
    .service(resource("/console/settings.json", "GET").route(web::get().to(settings)))
    .service(resource("/console/{file:.*}", "GET").route(web::get().to(asset)));
}

/// What the page needs to know about this broker before it has a credential: where the
/// WebSocket endpoint is (`server.ws_path` is configurable). Nothing here is secret; the
/// landing page shows the same.
async fn settings(broker: web::Data<Broker>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({
            "ws_path": broker.config().server.ws_path,
            "version": env!("CARGO_PKG_VERSION"),
        }))
}

/// One file of the bundle; the empty path is `index.html`.
async fn asset(req: HttpRequest, file: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let name = match file.as_str() {
        "" => "index.html",
        other => other,
    };
    let Some(found) = Assets::get(name) else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "no such file in the console",
        ));
    };
    let hash = found.metadata.sha256_hash();
    let etag = EntityTag::new_strong(
        hash[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    );
    let unchanged = if_none_match(&req, &etag);
    let mut response = if unchanged {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, etag.clone()))
        // File names do not change between builds, so browsers revalidate (a cheap 304)
        // instead of keeping an old bundle after an upgrade.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    if unchanged {
        return Ok(response.finish());
    }
    let mime = found.metadata.mimetype();
    let content_type = if mime.starts_with("text/") || mime == "application/javascript" {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    };
    Ok(response
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_str(&content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        ))
        .body(found.data.into_owned()))
}

/// Whether the request's `If-None-Match` names `etag` (or is `*`).
fn if_none_match(req: &HttpRequest, etag: &EntityTag) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.parse::<EntityTag>().is_ok_and(|t| t.weak_eq(etag)))
}
