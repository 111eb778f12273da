//! WebhookTarget actor: one per endpoint. Makes the delivery attempts the `RetryQueue`
//! hands it, one at a time, behind the endpoint's own rate limit.
//!
//! Each attempt re-checks the URL with the SSRF guard, resolves it once and connects to
//! exactly the address that was checked (no second lookup, so DNS rebinding cannot swap
//! in a private address), does not follow redirects, signs the body afresh with the
//! attempt's timestamp, and reports an [`AttemptDone`] whatever happens.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use awc::error::SendRequestError;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::retry_queue::{AttemptDone, RetryQueue};
use crate::webhooks::outbox::{Delivery, Endpoint};
use crate::webhooks::policy::{classify_status, Outcome};
use crate::webhooks::signing::{webhook_headers, WebhookSecret};
use crate::webhooks::ssrf::{self, SsrfError, SsrfPolicy};

/// What every target shares: set from `[webhooks]` at start.
#[derive(Debug, Clone)]
pub struct TargetSettings {
    /// Attempt deadline.
    pub timeout: Duration,
    /// The SSRF guard.
    pub ssrf: SsrfPolicy,
    /// Body-HMAC header name, if sent.
    pub body_hmac_header: Option<String>,
    /// Cap on `Retry-After`.
    pub max_retry_after: Duration,
    /// The TLS client: the public roots, plus a private CA and a client certificate when
    /// configured.
    pub tls: Arc<rustls::ClientConfig>,
}

/// The WebhookTarget actor.
pub struct WebhookTarget {
    endpoint_id: String,
    url: String,
    secrets: Vec<WebhookSecret>,
    limiter: Arc<DefaultDirectRateLimiter>,
    settings: Arc<TargetSettings>,
    queue: Addr<RetryQueue>,
    client: awc::Client,
}

impl WebhookTarget {
    /// A target for `endpoint`, reporting to `queue`. Must be created on the arbiter it
    /// runs on (its HTTP client is not `Send`).
    pub fn new(
        endpoint: &Endpoint,
        settings: Arc<TargetSettings>,
        queue: Addr<RetryQueue>,
    ) -> WebhookTarget {
        let client = awc::Client::builder()
            .connector(awc::Connector::new().rustls_0_23(settings.tls.clone()))
            .disable_redirects()
            .timeout(settings.timeout)
            .add_default_header((
                actix_web::http::header::USER_AGENT,
                concat!("switchboard-webhooks/", env!("CARGO_PKG_VERSION")),
            ))
            .finish();
        WebhookTarget {
            endpoint_id: endpoint.id.clone(),
            url: endpoint.url.clone(),
            secrets: parse_secrets(&endpoint.secret),
            limiter: Arc::new(limiter(endpoint.rate_limit_per_s)),
            settings,
            queue,
            client,
        }
    }
}

/// An endpoint's stored secret: one or more `whsec_…`, space-separated, current first.
/// Unparseable entries are skipped (they were validated when stored).
pub fn parse_secrets(stored: &str) -> Vec<WebhookSecret> {
    stored
        .split_whitespace()
        .filter_map(|s| WebhookSecret::parse(s).ok())
        .collect()
}

/// `per_second` evenly spaced, without a burst: a receiver that allows 10/s sees at most 10
/// in any one-second window, even after the endpoint was idle.
fn limiter(per_second: u32) -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_second(rate).allow_burst(NonZeroU32::MIN))
}

impl Actor for WebhookTarget {
    type Context = Context<Self>;
}

/// Attempt this delivery now (after the rate limit allows).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Attempt(pub Delivery);

impl Handler<Attempt> for WebhookTarget {
    type Result = ();

    fn handle(&mut self, Attempt(delivery): Attempt, ctx: &mut Self::Context) {
        let limiter = self.limiter.clone();
        let client = self.client.clone();
        let settings = self.settings.clone();
        let url = self.url.clone();
        let secrets = self.secrets.clone();
        let queue = self.queue.clone();
        let endpoint_id = self.endpoint_id.clone();
        let fut = async move {
            limiter.until_ready().await;
            let t0 = Instant::now();
            let outcome = attempt(&client, &settings, &url, &secrets, &delivery).await;
            queue.do_send(AttemptDone {
                endpoint_id,
                delivery_id: delivery.id,
                attempt: delivery.attempts + 1,
                outcome,
                latency: t0.elapsed(),
            });
        };
        ctx.spawn(fut.into_actor(self));
    }
}

/// The endpoint changed (PATCH): new URL, secret or rate limit apply from the next attempt.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconfigure(pub Endpoint);

impl Handler<Reconfigure> for WebhookTarget {
    type Result = ();

    fn handle(&mut self, Reconfigure(endpoint): Reconfigure, _: &mut Self::Context) {
        self.url = endpoint.url.clone();
        self.secrets = parse_secrets(&endpoint.secret);
        self.limiter = Arc::new(limiter(endpoint.rate_limit_per_s));
    }
}

/// Stops the target (endpoint deleted, or shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopTarget;

impl Handler<StopTarget> for WebhookTarget {
    type Result = ();

    fn handle(&mut self, _: StopTarget, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// How much of a receiver's answer is read.
const RESPONSE_BODY_LIMIT: usize = 64 * 1024;

/// How much of a failed attempt's answer is kept in its error.
const SNIPPET_CHARS: usize = 200;

/// Appends the start of the receiver's answer to a failure's error.
fn with_response_snippet(outcome: Outcome, body: Option<&[u8]>) -> Outcome {
    let Some(body) = body.filter(|b| !b.is_empty()) else {
        return outcome;
    };
    let text = String::from_utf8_lossy(body);
    let mut snippet: String = text.chars().take(SNIPPET_CHARS).collect();
    if text.chars().nth(SNIPPET_CHARS).is_some() {
        snippet.push('…');
    }
    match outcome {
        Outcome::Retry {
            status,
            error,
            retry_after,
        } => Outcome::Retry {
            status,
            error: format!("{error}; response: {snippet}"),
            retry_after,
        },
        Outcome::Dead { status, error } => Outcome::Dead {
            status,
            error: format!("{error}; response: {snippet}"),
        },
        delivered => delivered,
    }
}

/// One attempt: SSRF check and resolve, POST to a checked address, classify.
async fn attempt(
    client: &awc::Client,
    settings: &TargetSettings,
    url: &str,
    secrets: &[WebhookSecret],
    delivery: &Delivery,
) -> Outcome {
    let addrs = match check_and_resolve(url, settings).await {
        Ok(addrs) => addrs,
        Err(err @ (SsrfError::Resolve(_) | SsrfError::NoAddresses(_))) => {
            return Outcome::Retry {
                status: None,
                error: err.to_string(),
                retry_after: None,
            }
        }
        Err(err) => {
            return Outcome::Dead {
                status: None,
                error: format!("refused by the SSRF guard: {err}"),
            }
        }
    };
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let body = bytes::Bytes::from(delivery.payload.clone());
    let headers = webhook_headers(
        secrets,
        settings.body_hmac_header.as_deref(),
        &delivery.id,
        timestamp,
        &body,
    );
    let mut last_error = String::from("no address to connect to");
    for addr in addrs {
        let mut request = client
            .post(url)
            .address(addr)
            .insert_header((actix_web::http::header::CONTENT_TYPE, "application/json"));
        for (name, value) in &headers {
            request = request.insert_header((name.as_str(), value.as_str()));
        }
        match request.send_body(body.clone()).await {
            Ok(mut response) => {
                let retry_after = response
                    .headers()
                    .get(actix_web::http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let outcome = classify_status(
                    response.status().as_u16(),
                    retry_after.as_deref(),
                    SystemTime::now(),
                    settings.max_retry_after,
                );
                // Reading the (bounded) body lets the connection be reused, and a failure's
                // body usually says why.
                let body = tokio::time::timeout(
                    settings.timeout,
                    response.body().limit(RESPONSE_BODY_LIMIT),
                )
                .await
                .ok()
                .and_then(Result::ok);
                return with_response_snippet(outcome, body.as_deref());
            }
            // Nothing was sent: the next address may answer.
            Err(SendRequestError::Connect(err)) => {
                last_error = format!("connect to {addr} failed: {err}");
            }
            Err(SendRequestError::Timeout) => {
                last_error = format!("timed out after {:?}", settings.timeout);
                break;
            }
            Err(err) => {
                last_error = format!("request to {addr} failed: {err}");
                break;
            }
        }
    }
    Outcome::Retry {
        status: None,
        error: last_error,
        retry_after: None,
    }
}

async fn check_and_resolve(
    url: &str,
    settings: &TargetSettings,
) -> Result<Vec<std::net::SocketAddr>, SsrfError> {
    let target = ssrf::check_url(url, &settings.ssrf)?;
    tokio::time::timeout(
        settings.timeout,
        ssrf::resolve_checked_async(&target, &settings.ssrf),
    )
    .await
    .unwrap_or_else(|_| {
        Err(SsrfError::Resolve(format!(
            "{}: no answer within {:?}",
            target.host, settings.timeout
        )))
    })
}
