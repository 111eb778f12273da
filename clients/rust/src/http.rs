//! The broker's HTTP API (`docs/HTTP_API.md`): publish, history, presence, user send and
//! broadcast over `http(s)://`, with an API key or an admin token.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::driver::new_id;
use crate::{Ack, Envelope, Error, Member, Message, Result};

/// The longest wait a `Retry-After` header may impose on an automatic retry.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// How an [`HttpClient`] uses its connections and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// Idle keep-alive connections kept per host for later requests (default 16).
    pub max_idle_per_host: usize,
    /// A kept-alive connection unused for this long is closed (default 90 s).
    pub idle_timeout: Duration,
    /// Bound on one HTTP exchange: connecting, sending and reading the answer (default
    /// 30 s). It fails with [`Error::Timeout`].
    pub request_timeout: Duration,
    /// Automatic retries of a request that failed in a way worth retrying (no answer, a
    /// timeout, 408, 429, 500, 502, 503, 504; default 2). Every request the client makes
    /// is safe to repeat: reads are reads, and publishes carry a message id, so the broker
    /// delivers a retried publish once.
    pub retries: u32,
    /// Delay before the first retry, doubled for each further one (default 100 ms); a
    /// 429's `Retry-After` (at most 30 s) is waited for when it is longer.
    pub retry_delay: Duration,
}

impl Default for HttpOptions {
    fn default() -> HttpOptions {
        HttpOptions {
            max_idle_per_host: 16,
            idle_timeout: Duration::from_secs(90),
            request_timeout: Duration::from_secs(30),
            retries: 2,
            retry_delay: Duration::from_millis(100),
        }
    }
}

/// A room's stored messages, as `GET /api/rooms/{room}/history` returns them.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// The room.
    pub room: String,
    /// The room's latest seq (0 for a room that has no messages or does not run).
    pub seq: u64,
    /// False when part of the range after `since` has already left the broker's history,
    /// or when `since` is above the room's seq (the room restarted its numbering).
    pub recovered: bool,
    /// The messages with `seq > since`, oldest first, at most `limit` of them. To page
    /// forward, pass the last one's seq as the next `since`.
    pub messages: Vec<Message>,
}

/// A client of the broker's HTTP API on one base URL (`http://host:port`, or `https://`
/// with the crate's `rustls` feature), authenticated with an API key (`[api] keys`) or an
/// admin JWT, sent as `Authorization: Bearer`.
///
/// It holds one `reqwest` client, so its connections are kept alive and reused
/// ([`HttpOptions`]). Cheap to clone: clones share the connections. Failed requests are
/// retried ([`HttpOptions::retries`]); publishes carry a message id generated once per
/// call (or yours), so a retried publish is delivered once. Errors the broker answers
/// come back as [`Error::Http`] with its status, code and message.
///
/// ```no_run
/// use switchboard_client::HttpClient;
///
/// # async fn run() -> Result<(), switchboard_client::Error> {
/// let api = HttpClient::new("http://127.0.0.1:8000", "my-api-key-0123456789")?;
/// let ack = api.publish("conversation:42", serde_json::json!({"text": "deployed"})).await?;
/// println!("published as seq {} (id {})", ack.seq, ack.id);
///
/// // Page through what the room still keeps.
/// let mut since = 0;
/// loop {
///     let page = api.history("conversation:42", since, 100).await?;
///     if !page.recovered {
///         eprintln!("some messages after seq {since} are no longer kept");
///     }
///     let Some(last) = page.messages.last() else { break };
///     since = last.seq;
///     for m in &page.messages {
///         println!("#{} {}", m.seq, m.payload);
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    authorization: Option<HeaderValue>,
    retries: u32,
    retry_delay: Duration,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("base_url", &self.inner.base.as_str())
            .field("credential", &"<redacted>")
            .finish()
    }
}

impl HttpClient {
    /// A client of the API at `base_url` (`http://host:port`; a path prefix such as
    /// `http://host/switchboard` is kept) with `credential`, an API key or an admin JWT,
    /// and [`HttpOptions::default`].
    ///
    /// Fails with [`Error::InvalidUrl`] when the URL is not `http(s)://` (`https://` needs
    /// the `rustls` feature).
    pub fn new(base_url: &str, credential: impl Into<String>) -> Result<HttpClient> {
        HttpClient::with_options(base_url, credential, HttpOptions::default())
    }

    /// [`HttpClient::new`] with `options`.
    pub fn with_options(
        base_url: &str,
        credential: impl Into<String>,
        options: HttpOptions,
    ) -> Result<HttpClient> {
        HttpClient::build(base_url, Some(credential.into()), &options)
    }

    pub(crate) fn build(
        base_url: &str,
        credential: Option<String>,
        options: &HttpOptions,
    ) -> Result<HttpClient> {
        let base = parse_base(base_url)?;
        let authorization = match credential {
            Some(credential) => {
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {credential}")).map_err(|_| {
                        Error::Transport(
                            "the credential has characters an HTTP header cannot carry".into(),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(options.max_idle_per_host)
            .pool_idle_timeout(options.idle_timeout)
            .timeout(options.request_timeout)
            .build()
            .map_err(|e| Error::Transport(format!("cannot build the HTTP client: {e}")))?;
        Ok(HttpClient {
            inner: Arc::new(Inner {
                http,
                base,
                authorization,
                retries: options.retries,
                retry_delay: options.retry_delay,
            }),
        })
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        self.inner.base.as_str()
    }

    /// Publishes `payload` into `room` (`POST /api/rooms/{room}/publish`) with a fresh
    /// message id, and returns the broker's [`Ack`]. The room needs no members; members
    /// receive a `room.message`.
    ///
    /// Automatic retries resend the same id, so the message is delivered once; when an
    /// earlier attempt had reached the broker (its answer was lost), the ack of the retry
    /// has `duplicate: true` and the seq the message got.
    pub async fn publish(&self, room: &str, payload: impl Serialize) -> Result<Ack> {
        self.publish_with_id(room, &new_id(), payload).await
    }

    /// [`HttpClient::publish`] with your own message id (1 to 128 bytes). Publishing an id
    /// this credential already used in the room is not delivered again: the ack has
    /// `duplicate: true` and the original seq. Use it to retry a publish across restarts
    /// of your own process.
    pub async fn publish_with_id(
        &self,
        room: &str,
        id: &str,
        payload: impl Serialize,
    ) -> Result<Ack> {
        let url = self.url(&["rooms", room, "publish"]);
        self.post_message(url, None, Some(id), payload).await
    }

    /// [`HttpClient::publish`] with a custom frame `type` (such as `task.update`) instead of
    /// `room.message`. The broker refuses its own types (`room.*`, `system.*`,
    /// `presence.*`, `ack`) with 400.
    pub async fn publish_typed(
        &self,
        room: &str,
        msg_type: &str,
        payload: impl Serialize,
    ) -> Result<Ack> {
        let url = self.url(&["rooms", room, "publish"]);
        self.post_message(url, Some(msg_type), Some(&new_id()), payload)
            .await
    }

    /// Publishes `payload` to every session of `user` (`POST /api/users/{user}/send`, the
    /// room `user:{user}`), with a fresh message id.
    pub async fn send_to_user(&self, user: &str, payload: impl Serialize) -> Result<Ack> {
        let url = self.url(&["users", user, "send"]);
        self.post_message(url, None, Some(&new_id()), payload).await
    }

    /// Publishes `payload` to every session (`POST /api/broadcast`, the room `broadcast`),
    /// with a fresh message id.
    pub async fn broadcast(&self, payload: impl Serialize) -> Result<Ack> {
        let url = self.url(&["broadcast"]);
        self.post_message(url, None, Some(&new_id()), payload).await
    }

    /// The room's stored messages with `seq > since`, oldest first, at most `limit` (the
    /// broker caps it at 1000) (`GET /api/rooms/{room}/history`).
    pub async fn history(&self, room: &str, since: u64, limit: usize) -> Result<History> {
        let mut url = self.url(&["rooms", room, "history"]);
        url.query_pairs_mut()
            .append_pair("since", &since.to_string())
            .append_pair("limit", &limit.to_string());
        let body: HistoryBody = self.send(Method::GET, url, None).await?;
        let messages = body
            .messages
            .into_iter()
            .map(|m| message(m, &body.room))
            .collect::<Result<Vec<_>>>()?;
        Ok(History {
            room: body.room,
            seq: body.seq,
            recovered: body.recovered,
            messages,
        })
    }

    /// Who is in `room`: one [`Member`] per user, sorted by user
    /// (`GET /api/rooms/{room}/presence`). A room whose namespace has presence off answers
    /// [`Error::Http`] with status 409 (`conflict`).
    pub async fn presence(&self, room: &str) -> Result<Vec<Member>> {
        let url = self.url(&["rooms", room, "presence"]);
        let body: PresenceBody = self.send(Method::GET, url, None).await?;
        Ok(body.presence)
    }

    /// `base` + `/api/` + the segments, each percent-encoded as one path segment.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("api").extend(segments);
        }
        url
    }

    async fn post_message(
        &self,
        url: Url,
        msg_type: Option<&str>,
        id: Option<&str>,
        payload: impl Serialize,
    ) -> Result<Ack> {
        let payload = serde_json::to_value(payload).map_err(|e| Error::Serialize(e.to_string()))?;
        let mut body = json!({ "payload": payload });
        if let Some(msg_type) = msg_type {
            body["type"] = Value::from(msg_type);
        }
        if let Some(id) = id {
            body["id"] = Value::from(id);
        }
        let ack: AckBody = self.send(Method::POST, url, Some(&body)).await?;
        Ok(Ack {
            id: ack.id,
            room: ack.room,
            seq: ack.seq,
            duplicate: ack.duplicate,
        })
    }

    /// One request, retried as [`HttpOptions::retries`] allows.
    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            let failure = match self.exchange(method.clone(), url.clone(), body).await {
                Ok(answer) => return Ok(answer),
                Err(failure) => failure,
            };
            if !failure.retry || attempt >= self.inner.retries {
                return Err(failure.error);
            }
            let mut delay = self
                .inner
                .retry_delay
                .saturating_mul(2u32.saturating_pow(attempt));
            if let Error::Http {
                retry_after: Some(after),
                ..
            } = &failure.error
            {
                delay = delay.max((*after).min(MAX_RETRY_AFTER));
            }
            log::debug!(
                "switchboard client: {method} {} failed ({}), retrying in {delay:?}",
                url.path(),
                failure.error
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> std::result::Result<T, Failure> {
        let mut request = self.inner.http.request(method, url);
        if let Some(authorization) = &self.inner.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(Failure::transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response.bytes().await.map_err(Failure::transport)?;
        if !status.is_success() {
            return Err(Failure {
                retry: matches!(
                    status,
                    StatusCode::REQUEST_TIMEOUT
                        | StatusCode::TOO_MANY_REQUESTS
                        | StatusCode::INTERNAL_SERVER_ERROR
                        | StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ),
                error: http_error(status, &bytes, retry_after),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| Failure {
            retry: false,
            error: Error::Transport(format!(
                "the broker's answer ({status}) is not what the API documents: {e}"
            )),
        })
    }
}

/// A failed attempt, and whether repeating it may help.
struct Failure {
    error: Error,
    retry: bool,
}

impl Failure {
    fn transport(e: reqwest::Error) -> Failure {
        let e = e.without_url();
        if e.is_timeout() {
            return Failure {
                error: Error::Timeout(format!("no HTTP answer in time: {e}")),
                retry: true,
            };
        }
        Failure {
            error: Error::Transport(e.to_string()),
            retry: e.is_connect() || e.is_request() || e.is_body(),
        }
    }
}

#[derive(Deserialize)]
struct AckBody {
    room: String,
    seq: u64,
    id: String,
    #[serde(default)]
    duplicate: bool,
}

#[derive(Deserialize)]
struct HistoryBody {
    room: String,
    seq: u64,
    recovered: bool,
    messages: Vec<Envelope>,
}

#[derive(Deserialize)]
struct PresenceBody {
    presence: Vec<Member>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    #[serde(default)]
    message: String,
}

/// A stored message of `room` as a [`Message`]; one without a seq is not a room message.
fn message(envelope: Envelope, room: &str) -> Result<Message> {
    let seq = envelope.seq.ok_or_else(|| {
        Error::Transport(format!(
            "a history message of {room} has no seq: {}",
            envelope.msg_type
        ))
    })?;
    Ok(Message {
        room: envelope.room.unwrap_or_else(|| room.to_owned()),
        seq,
        id: envelope.id.unwrap_or_default(),
        msg_type: envelope.msg_type,
        payload: envelope.payload.unwrap_or(Value::Null),
        timestamp: envelope.timestamp,
    })
}

/// The broker's `{"error":{"code","message"}}`, or what a proxy in front of it said.
fn http_error(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> Error {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(body) => (body.error.code, body.error.message),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.trim().chars().take(200).collect();
            let message = if text.is_empty() {
                status.canonical_reason().unwrap_or_default().to_owned()
            } else {
                text
            };
            (format!("http_{}", status.as_u16()), message)
        }
    };
    Error::Http {
        status: status.as_u16(),
        code,
        message,
        retry_after,
    }
}

/// Checks an `http(s)://` base URL.
pub(crate) fn parse_base(base_url: &str) -> Result<Url> {
    let url = Url::parse(base_url).map_err(|e| Error::InvalidUrl(format!("{base_url}: {e}")))?;
    match url.scheme() {
        "http" => {}
        "https" if cfg!(feature = "rustls") => {}
        "https" => {
            return Err(Error::InvalidUrl(format!(
                "{base_url}: https:// needs the crate's `rustls` feature"
            )))
        }
        _ => {
            return Err(Error::InvalidUrl(format!(
                "{base_url}: expected http:// or https://"
            )))
        }
    }
    if url.cannot_be_a_base() || url.host_str().is_none() {
        return Err(Error::InvalidUrl(format!("{base_url}: no host")));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_built_under_the_base_and_encoded() {
        let api = HttpClient::new("http://127.0.0.1:8000/", "k").expect("client");
        assert_eq!(
            api.url(&["rooms", "conversation:42", "publish"]).as_str(),
            "http://127.0.0.1:8000/api/rooms/conversation:42/publish"
        );
        let prefixed = HttpClient::new("http://h/switchboard", "k").expect("client");
        assert_eq!(
            prefixed.url(&["rooms", "a b/c", "history"]).as_str(),
            "http://h/switchboard/api/rooms/a%20b%2Fc/history"
        );
    }

    #[test]
    fn only_http_urls_are_accepted() {
        for url in ["ws://h/ws", "h:80", "not a url"] {
            assert!(
                matches!(HttpClient::new(url, "k"), Err(Error::InvalidUrl(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn error_bodies_become_typed_errors() {
        let err = http_error(
            StatusCode::TOO_MANY_REQUESTS,
            br#"{"error":{"code":"rate_limited","message":"slow down"}}"#,
            Some(Duration::from_secs(1)),
        );
        assert_eq!(
            err,
            Error::Http {
                status: 429,
                code: "rate_limited".into(),
                message: "slow down".into(),
                retry_after: Some(Duration::from_secs(1)),
            }
        );
        let err = http_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>", None);
        assert!(
            matches!(&err, Error::Http { status: 502, code, .. } if code == "http_502"),
            "{err:?}"
        );
    }
}
