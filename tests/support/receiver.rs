//! Test support for webhooks: a real, scriptable HTTP receiver on `127.0.0.1:0`, a small HTTP
//! API client and bounded waits.
//!
//! The [`Receiver`] runs actix-web in its own thread and actix system (like `TestBroker`), so
//! it keeps answering while the test blocks or awaits. For every request it records the
//! arrival time, method, path, headers and raw body, and answers from a script: one-shot
//! replies queued with [`Receiver::push`] first, then a [`Receiver::set_script`] closure if
//! there is one, else the default reply ([`Receiver::set_default`]). The script can be changed
//! while the receiver runs. The reply for a request is decided the moment it arrives, so a
//! later change of script never alters an answer already chosen.
//!
//! Waits ([`Receiver::wait_until`], [`Receiver::wait_for`]) wake on every recorded change (a
//! `tokio::sync::watch` channel), never sleep-poll, and panic after a bounded time with a
//! summary of what did arrive.

use std::collections::VecDeque;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::Value;
use switchboard::webhooks::signing::{
    verify, verify_body_hmac, VerifyError, WebhookSecret, DEFAULT_BODY_HMAC_HEADER,
    HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP,
};
use tokio::sync::watch;

/// Default bound of a wait on the receiver.
pub const RECEIVER_WAIT: Duration = Duration::from_secs(10);

/// How long a "hanging" reply sleeps before answering: far longer than any test.
pub const HANG: Duration = Duration::from_secs(3600);

/// What the receiver answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Extra response headers (e.g. `Retry-After`).
    pub headers: Vec<(String, String)>,
    /// How long to wait before answering ([`HANG`]: effectively never).
    pub delay: Duration,
    /// The response body (empty by default).
    pub body: String,
}

impl Reply {
    /// Answers `status` at once, with an empty body.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            body: String::new(),
        }
    }

    /// `200 OK` at once.
    pub fn ok() -> Reply {
        Reply::status(200)
    }

    /// Never answers (sleeps for [`HANG`]), so the sender's timeout fires.
    pub fn hang() -> Reply {
        Reply::ok().delayed(HANG)
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Answers with `body`.
    pub fn body(mut self, body: &str) -> Reply {
        self.body = body.to_owned();
        self
    }

    /// Answers after `delay`.
    pub fn delayed(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// 0-based arrival index.
    pub index: usize,
    /// When the request (head and body) had arrived.
    pub at: Instant,
    /// HTTP method.
    pub method: String,
    /// Path (and query, if any).
    pub path: String,
    /// Every header, names lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The raw body, byte for byte.
    pub body: Vec<u8>,
    /// The status the script chose for it.
    pub status: u16,
    /// When the handler produced its response (`None`: still waiting, or abandoned because
    /// the sender went away before the reply's delay ended).
    pub answered_at: Option<Instant>,
}

impl Recorded {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `webhook-id`, or a panic naming the request.
    pub fn webhook_id(&self) -> &str {
        self.header(HEADER_WEBHOOK_ID)
            .unwrap_or_else(|| panic!("request #{} has no webhook-id header", self.index))
    }

    /// The body as text (webhook bodies are UTF-8 JSON).
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body)
            .unwrap_or_else(|e| panic!("request #{} body is not UTF-8: {e}", self.index))
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "request #{} body is not JSON ({e}): {:?}",
                self.index,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The event type (`type` of the body), or "" when the body is not a webhook event.
    pub fn event_type(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The `(webhook-id, webhook-timestamp, webhook-signature)` triple ("" when missing).
    pub fn signature_headers(&self) -> (&str, &str, &str) {
        (
            self.header(HEADER_WEBHOOK_ID).unwrap_or(""),
            self.header(HEADER_WEBHOOK_TIMESTAMP).unwrap_or(""),
            self.header(HEADER_WEBHOOK_SIGNATURE).unwrap_or(""),
        )
    }

    /// Checks the Standard Webhooks signature and the body-HMAC header (default name) with
    /// `secret`, as a receiver would, at the receiver's current clock.
    pub fn verify(&self, secret: &WebhookSecret) -> Result<(), VerifyError> {
        verify(
            secret,
            self.signature_headers(),
            &self.body,
            SystemTime::now(),
        )?;
        verify_body_hmac(
            secret,
            self.header(DEFAULT_BODY_HMAC_HEADER).unwrap_or(""),
            &self.body,
        )
    }

    /// One line for failure messages.
    pub fn summary(&self) -> String {
        let body = serde_json::from_slice::<Value>(&self.body).ok();
        let field = |k: &str| {
            body.as_ref()
                .map(|b| b[k].to_string())
                .unwrap_or_else(|| "-".into())
        };
        let data = body
            .as_ref()
            .map(|b| b["data"].to_string())
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned());
        format!(
            "#{} {} {} webhook-id={} type={} -> {}{} data={}",
            self.index,
            self.method,
            self.path,
            self.header(HEADER_WEBHOOK_ID).unwrap_or("-"),
            field("type"),
            self.status,
            if self.answered_at.is_some() {
                ""
            } else {
                " (unanswered)"
            },
            truncate(&data, 200),
        )
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Every request so far, one summary line each.
pub fn summarize(requests: &[Recorded]) -> String {
    if requests.is_empty() {
        return "  (none)".into();
    }
    requests
        .iter()
        .map(|r| format!("  {}", r.summary()))
        .collect::<Vec<_>>()
        .join("\n")
}

type Script = Box<dyn FnMut(&Recorded) -> Reply + Send>;

struct State {
    requests: Vec<Recorded>,
    queue: VecDeque<Reply>,
    script: Option<Script>,
    default: Reply,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every recorded change; waiters wake on it.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the receiver's state from the others.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

/// A webhook receiver on `127.0.0.1:<port>` in its own thread. Stopped on drop.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: ServerHandle,
}

impl Receiver {
    /// Starts a receiver answering `200` to everything.
    pub fn start() -> Receiver {
        Receiver::start_with(Reply::ok())
    }

    /// Starts a receiver answering `default` to everything (until the script changes).
    pub fn start_with(default: Reply) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver on loopback");
        let addr = listener.local_addr().expect("receiver address");
        let (changed, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                requests: Vec::new(),
                queue: VecDeque::new(),
                script: None,
                default,
            }),
            changed,
        });
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let data = web::Data::from(shared.clone());
        std::thread::Builder::new()
            .name(format!("receiver-{}", addr.port()))
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .app_data(web::PayloadConfig::new(16 << 20))
                            .default_service(web::to(handle))
                    })
                    .workers(1)
                    .disable_signals()
                    .shutdown_timeout(0)
                    .listen(listener)
                    .expect("receiver listens")
                    .run();
                    let _ = handle_tx.send(server.handle());
                    let _ = server.await;
                });
            })
            .expect("spawn the receiver thread");
        let server = handle_rx
            .recv_timeout(RECEIVER_WAIT)
            .expect("the receiver started");
        Receiver {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:<port>{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Replaces the default reply (used when no queued reply or script applies).
    pub fn set_default(&self, reply: Reply) {
        let mut state = self.shared.lock();
        state.default = reply;
        state.script = None;
    }

    /// Queues one-shot replies, used in order before the script or the default.
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.lock().queue.extend(replies);
    }

    /// Answers with `script(request)` (after any queued one-shot replies). No test scripts
    /// replies per request at the moment; the receiver's answering is built around it.
    #[allow(dead_code)]
    pub fn set_script(&self, script: impl FnMut(&Recorded) -> Reply + Send + 'static) {
        self.shared.lock().script = Some(Box::new(script));
    }

    /// A snapshot of every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// Waits (at most `timeout`) until `check` over the requests so far returns `Some`, and
    /// returns that. Wakes on every arrival and every answer; panics on timeout, naming
    /// `what` and listing what did arrive.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&[Recorded]) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribed before each check, so a change right after the check still wakes us.
        let mut changes = self.shared.changed.subscribe();
        loop {
            {
                let state = self.shared.lock();
                if let Some(found) = check(&state.requests) {
                    return found;
                }
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => panic!("receiver {} stopped while waiting for {what}", self.addr),
                Err(_) => panic!(
                    "receiver {}: timed out after {timeout:?} waiting for {what}; received:\n{}",
                    self.addr,
                    summarize(&self.requests())
                ),
            }
        }
    }

    /// Waits (at most [`RECEIVER_WAIT`]) until at least `n` requests arrived; returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Recorded> {
        self.wait_for_within(n, RECEIVER_WAIT).await
    }

    /// Waits (at most `timeout`) until at least `n` requests arrived; returns them all.
    pub async fn wait_for_within(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.wait_until(&format!("{n} requests"), timeout, |reqs| {
            (reqs.len() >= n).then(|| reqs.to_vec())
        })
        .await
    }

    /// Waits until request `index` (0-based) has been answered; returns it.
    pub async fn wait_answered(&self, index: usize, timeout: Duration) -> Recorded {
        self.wait_until(
            &format!("request #{index} to be answered"),
            timeout,
            |reqs| reqs.get(index).filter(|r| r.answered_at.is_some()).cloned(),
        )
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // `stop` sends the command at once; the returned future only waits for completion.
        drop(self.server.stop(false));
    }
}

async fn handle(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let mut headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let (index, reply) = {
        let mut state = shared.lock();
        let index = state.requests.len();
        let mut recorded = Recorded {
            index,
            at: Instant::now(),
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.path().to_owned(), |p| p.to_string()),
            headers,
            body: body.to_vec(),
            status: 0,
            answered_at: None,
        };
        let reply = match state.queue.pop_front() {
            Some(reply) => reply,
            None => match state.script.as_mut() {
                Some(script) => script(&recorded),
                None => state.default.clone(),
            },
        };
        recorded.status = reply.status;
        state.requests.push(recorded);
        (index, reply)
    };
    shared.bump();
    if !reply.delay.is_zero() {
        actix_rt::time::sleep(reply.delay).await;
    }
    shared.lock().requests[index].answered_at = Some(Instant::now());
    shared.bump();
    let status = StatusCode::from_u16(reply.status).expect("a valid scripted status");
    let mut response = HttpResponse::build(status);
    for (name, value) in &reply.headers {
        response.insert_header((name.as_str(), value.as_str()));
    }
    response.body(reply.body)
}

// ---- the HTTP API, bounded polling, time ----

/// Calls the broker's HTTP API with `Authorization: Bearer <key>`.
#[derive(Clone)]
pub struct Api {
    /// `http://addr` of the broker.
    pub base: String,
    /// The API key.
    pub key: String,
}

impl Api {
    /// An API client for `base` (`http://host:port`) with `key`.
    pub fn new(base: impl Into<String>, key: impl Into<String>) -> Api {
        Api {
            base: base.into(),
            key: key.into(),
        }
    }

    /// `method path` with an optional JSON body; returns the status and the JSON body
    /// (`Value::Null` when empty). Panics on a transport error or a non-JSON body.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(method, path, Some(&self.key), body).await
    }

    /// [`Api::call`] with `bearer` as the credential instead of the API key (`None`: none).
    pub async fn call_as(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(15))
            .finish();
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => client.get(&url),
            "POST" => client.post(&url),
            "PATCH" => client.patch(&url),
            "DELETE" => client.delete(&url),
            other => panic!("unsupported method {other}"),
        };
        let req = match bearer {
            Some(bearer) => req.bearer_auth(bearer),
            None => req,
        };
        let mut resp = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        }
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let bytes = resp
            .body()
            .limit(1 << 24)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"));
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "{method} {url}: body is not JSON: {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        (resp.status().as_u16(), value)
    }

    /// Like [`Api::call`] but asserts the status.
    pub async fn expect(
        &self,
        status: u16,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let (got, value) = self.call(method, path, body).await;
        assert_eq!(got, status, "{method} {path}: {value}");
        value
    }

    /// `POST /api/rooms/{room}/publish` with `payload` (and message id `id`); asserts 200 and
    /// returns the response (`{room, seq, id, duplicate}`).
    pub async fn publish(&self, room: &str, id: Option<&str>, payload: Value) -> Value {
        let mut body = serde_json::json!({ "payload": payload });
        if let Some(id) = id {
            body["id"] = Value::String(id.to_owned());
        }
        self.expect(
            200,
            "POST",
            &format!("/api/rooms/{room}/publish"),
            Some(body),
        )
        .await
    }

    /// `GET /metrics` (no auth needed) as text.
    pub async fn metrics(&self) -> String {
        let mut resp = awc::Client::new()
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("scrape /metrics");
        assert_eq!(resp.status(), 200);
        String::from_utf8(resp.body().limit(1 << 24).await.expect("body").to_vec())
            .expect("metrics are UTF-8")
    }
}

/// The value of the Prometheus sample whose name-and-labels part is exactly `series`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// For state that only the broker's API shows (no push to wait on): calls `probe` every
/// 25 ms until it returns `Some`, at most `timeout`; panics naming `what` and the last
/// observation otherwise.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(found) => return found,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Unix time now, in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Whether `s` is `prefix` followed by exactly 32 lowercase hex digits.
pub fn is_prefixed_hex32(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|hex| {
        hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}
