//! A webhook receiver for switchboard: verifies each delivery, drops duplicates, logs the
//! event and answers 204. See docs/WEBHOOKS.md for what the broker sends and why.
//!
//! ```text
//! cargo run --release --example webhook_receiver -- --secret whsec_… [--bind 127.0.0.1:9000]
//! ```
//!
//! Deliveries are accepted on `POST /webhooks`. Running it against a local broker:
//!
//! ```text
//! # 1. A secret (any whsec_ + base64 of 24 to 64 random bytes), shared by both sides.
//! SECRET=whsec_$(openssl rand -base64 24)
//!
//! # 2. The broker in dev mode (no config file). Dev mode uses webhooks mode "development",
//! #    so http:// URLs are accepted, but loopback is still refused by the SSRF guard unless
//! #    it is allowlisted:
//! SWITCHBOARD_WEBHOOKS_ALLOW='["127.0.0.1/32"]' cargo run --release
//! #    (or in a config file: [webhooks] mode = "development", allow = ["127.0.0.1/32"];
//! #    a config file turns dev mode off, so it then needs its own [api] keys too.)
//!
//! # 3. This receiver.
//! cargo run --release --example webhook_receiver -- --secret "$SECRET"
//!
//! # 4. Register it (use 127.0.0.1, not localhost: localhost may also resolve to ::1,
//! #    which the allowlist above does not cover, and every address must pass).
//! curl -s -X POST http://127.0.0.1:8000/api/webhooks \
//!   -H 'Authorization: Bearer switchboard-dev-api-key' -H 'Content-Type: application/json' \
//!   -d '{"url":"http://127.0.0.1:9000/webhooks","secret":"'"$SECRET"'","events":["room.message","presence.join","presence.leave"]}'
//! #    Leave "secret" out and the broker generates one and returns it (once) in the answer.
//!
//! # 5. Ping it, then publish something.
//! curl -s -X POST http://127.0.0.1:8000/api/webhooks/ep_…/test \
//!   -H 'Authorization: Bearer switchboard-dev-api-key'
//! curl -s -X POST http://127.0.0.1:8000/api/rooms/conversation:42/publish \
//!   -H 'Authorization: Bearer switchboard-dev-api-key' -H 'Content-Type: application/json' \
//!   -d '{"payload":{"text":"hello"}}'
//! ```
//!
//! The receiver logs e.g. `room.message evt_… (webhook-id msg_…): {"room":"conversation:42",…}`.
//! Start it with the wrong secret and every delivery gets 401, which the broker does not
//! retry: the deliveries go to the dead-letter queue, from where they can be replayed.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::SystemTime;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use clap::Parser;
use lru::LruCache;
use switchboard::webhooks::signing::{
    verify, verify_body_hmac, WebhookSecret, HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE,
    HEADER_WEBHOOK_TIMESTAMP,
};

/// A switchboard webhook receiver that verifies, dedupes and logs deliveries.
#[derive(Debug, Parser)]
struct Args {
    /// The endpoint's signing secret (`whsec_…`), as given to or returned by
    /// `POST /api/webhooks`.
    #[arg(long, env = "WEBHOOK_SECRET")]
    secret: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    bind: String,
    /// Also check this body-HMAC header when a delivery carries it (the broker's
    /// `webhooks.body_hmac_header`, e.g. X-ASAP-Signature). Off by default: it adds nothing
    /// once the Standard Webhooks signature verified, and the broker computes it with the
    /// endpoint's *current* secret only, so during a secret rotation a receiver still on
    /// the old secret would refuse every delivery.
    #[arg(long, default_value = "")]
    body_hmac_header: String,
    /// How many recent `webhook-id`s to remember for deduplication.
    #[arg(long, default_value_t = NonZeroUsize::new(10_000).unwrap())]
    dedupe_capacity: NonZeroUsize,
}

struct Receiver {
    secret: WebhookSecret,
    body_hmac_header: String,
    /// Recently processed delivery ids (`webhook-id`), oldest evicted first.
    seen: Mutex<LruCache<String, ()>>,
}

/// A header's value as text, or "" when it is missing or not visible ASCII (which then
/// fails verification with a clear reason).
fn header<'a>(req: &'a HttpRequest, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn receive(req: HttpRequest, body: web::Bytes, rx: web::Data<Receiver>) -> HttpResponse {
    // 1. Verify the raw bytes as received, before parsing anything. `verify` checks the
    //    three headers are present, the timestamp is within 5 minutes of our clock (replay
    //    protection), and that one of the `v1,` signatures matches (constant-time compare;
    //    during a secret rotation the header carries one signature per secret).
    let id = header(&req, HEADER_WEBHOOK_ID);
    let headers = (
        id,
        header(&req, HEADER_WEBHOOK_TIMESTAMP),
        header(&req, HEADER_WEBHOOK_SIGNATURE),
    );
    if let Err(e) = verify(&rx.secret, headers, &body, SystemTime::now()) {
        log::warn!("rejected delivery {id:?}: {e}");
        return HttpResponse::Unauthorized().body(e.to_string());
    }
    // The body-only HMAC adds nothing once `verify` passed; with --body-hmac-header it is
    // checked here to show how (receivers that cannot compute the Standard Webhooks
    // signature check only this one, and must switch secrets when the broker does).
    if !rx.body_hmac_header.is_empty() {
        if let Some(value) = req.headers().get(rx.body_hmac_header.as_str()) {
            let value = value.to_str().unwrap_or("");
            if let Err(e) = verify_body_hmac(&rx.secret, value, &body) {
                log::warn!("rejected delivery {id}: {}: {e}", rx.body_hmac_header);
                return HttpResponse::Unauthorized().body(format!("{}: {e}", rx.body_hmac_header));
            }
        }
    }

    // 2. Parse. The body is {"id", "type", "timestamp", "data"}.
    let event: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return HttpResponse::BadRequest().body(format!("invalid JSON body: {e}")),
    };

    // 3. Dedupe on webhook-id. Delivery is at-least-once: a retry after a lost response, a
    //    replay from the dead-letter queue, or a restart of the broker mid-attempt sends the
    //    same webhook-id again. A duplicate is answered 2xx, or the broker would keep
    //    retrying it. A real receiver records the id in the same transaction as the
    //    event's side effects, in its database rather than in a bounded in-memory set.
    if rx.seen.lock().unwrap().put(id.to_owned(), ()).is_some() {
        log::info!("duplicate delivery {id}, ignored");
        return HttpResponse::NoContent().finish();
    }

    // 4. Handle it. Answer quickly: the broker waits for this response (webhooks.timeout)
    //    before it sends this endpoint's next event.
    log::info!(
        "{} {} (webhook-id {id}): {}",
        event["type"].as_str().unwrap_or("?"),
        event["id"].as_str().unwrap_or("?"),
        event["data"]
    );
    HttpResponse::NoContent().finish()
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let secret = WebhookSecret::parse(&args.secret)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let receiver = web::Data::new(Receiver {
        secret,
        body_hmac_header: args.body_hmac_header,
        seen: Mutex::new(LruCache::new(args.dedupe_capacity)),
    });

    log::info!("receiving webhooks on http://{}/webhooks", args.bind);
    HttpServer::new(move || {
        App::new()
            .app_data(receiver.clone())
            .route("/webhooks", web::post().to(receive))
    })
    .bind(&args.bind)?
    .run()
    .await
}
