//! Connections to many brokers for request/response traffic: a few WebSocket clients per
//! `ws(s)://` URL, one [`HttpClient`] per `http(s)://` URL.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::OnceCell;
use tokio::time::{timeout_at, Instant};

use crate::driver::new_id;
use crate::http::{History, HttpClient, HttpOptions};
use crate::{Ack, Client, Envelope, Error, Member, Options, Result, Token};

/// How a [`Pool`] connects and when it lets connections go.
#[derive(Clone)]
pub struct PoolOptions {
    /// WebSocket connections per `ws(s)://` URL at most (default 4; 0 counts as 1). They
    /// are opened as concurrent requests need them. For `http(s)://` URLs: the idle
    /// keep-alive connections kept per host.
    pub size: usize,
    /// A connection with nothing in flight for this long is closed (default 60 s): a
    /// WebSocket by the pool, an HTTP keep-alive connection by `reqwest`.
    pub idle_timeout: Duration,
    /// Bound on a publish (connecting included) and on one HTTP exchange (default 30 s).
    /// [`Pool::request`] takes its own timeout.
    pub request_timeout: Duration,
    /// How the WebSocket clients connect: the token (`Token::Refresh` is called before
    /// every connection attempt), connect timeout, reconnect backoff, frame limit.
    pub client: Options,
    /// The HTTP API credential for `http(s)://` URLs: an API key or an admin JWT. `None`:
    /// the static token of [`PoolOptions::client`], if it has one (an admin token serves
    /// both transports); without any, the broker answers 401.
    pub credential: Option<String>,
    /// Automatic retries of failed HTTP requests ([`HttpOptions::retries`], default 2).
    pub http_retries: u32,
}

impl Default for PoolOptions {
    fn default() -> PoolOptions {
        PoolOptions {
            size: 4,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            client: Options::default(),
            credential: None,
            http_retries: HttpOptions::default().retries,
        }
    }
}

impl fmt::Debug for PoolOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolOptions")
            .field("size", &self.size)
            .field("idle_timeout", &self.idle_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("client", &self.client)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .field("http_retries", &self.http_retries)
            .finish()
    }
}

/// Request/response traffic to many brokers, over connections kept per URL. The URL's
/// scheme chooses the transport:
///
/// - `ws://host:port/ws` (`wss://` with the `rustls` feature): up to
///   [`PoolOptions::size`] WebSocket [`Client`]s for that URL, opened lazily as concurrent
///   calls need them; each call goes to the connection with the fewest calls in flight.
///   A connection with nothing in flight for [`PoolOptions::idle_timeout`] is closed by a
///   background task, and one that has closed for good is replaced.
/// - `http://host:port` (`https://` with `rustls`): that host's [`HttpClient`], whose
///   `reqwest` client keeps the connections.
///
/// Connections are kept per URL string, so use one spelling per broker. Cheap to clone
/// (clones share the connections); dropping the last clone closes them. WebSocket calls
/// need a tokio runtime: connections and the task that closes idle ones run on the
/// runtime of the call that opened them.
///
/// What works on which URL:
///
/// | method | `ws(s)://` | `http(s)://` |
/// | --- | --- | --- |
/// | [`Pool::request`] | yes | no: [`Error::InvalidUrl`] |
/// | [`Pool::publish`] | yes (joins the room for the publish, see there) | yes |
/// | [`Pool::history`], [`Pool::presence`], [`Pool::http`] | no: [`Error::InvalidUrl`] | yes |
///
/// ```no_run
/// use std::time::Duration;
/// use switchboard_client::{Options, Pool, PoolOptions};
///
/// # async fn run() -> Result<(), switchboard_client::Error> {
/// let pool = Pool::new(PoolOptions {
///     size: 4,
///     idle_timeout: Duration::from_secs(30),
///     client: Options::with_token("eyJ…"),
///     credential: Some("my-api-key-0123456789".into()),
///     ..PoolOptions::default()
/// });
/// // Application requests go over WebSockets, spread over up to 4 connections per URL.
/// for host in ["ws://10.0.0.1:8000/ws", "ws://10.0.0.2:8000/ws"] {
///     let reply = pool
///         .request(host, "task.request", serde_json::json!({"doc": 42}), Duration::from_secs(5))
///         .await?;
///     println!("{host}: {} {:?}", reply.msg_type, reply.payload);
/// }
/// // Publishes, history and presence go over the HTTP API.
/// let ack = pool
///     .publish("http://10.0.0.1:8000", "conversation:42", serde_json::json!({"text": "hi"}))
///     .await?;
/// let page = pool.history("http://10.0.0.1:8000", "conversation:42", 0, 100).await?;
/// println!("seq {}: {} messages kept", ack.seq, page.messages.len());
/// pool.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    options: PoolOptions,
    sockets: Mutex<HashMap<String, Vec<Slot>>>,
    http: Mutex<HashMap<String, HttpClient>>,
    next_slot: AtomicU64,
    reaper: AtomicBool,
}

/// One WebSocket connection of a URL (connecting until its cell is set).
struct Slot {
    id: u64,
    client: Arc<OnceCell<Client>>,
    in_flight: usize,
    last_used: Instant,
}

impl Slot {
    fn is_closed(&self) -> bool {
        self.client.get().is_some_and(|c| c.state().is_closed())
    }
}

/// A call's claim on a slot: counted in flight until dropped.
struct Lease {
    pool: Arc<Inner>,
    url: String,
    slot: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut sockets = lock(&self.pool.sockets);
        let Some(slots) = sockets.get_mut(&self.url) else {
            return;
        };
        if let Some(i) = slots.iter().position(|s| s.id == self.slot) {
            let slot = &mut slots[i];
            slot.in_flight = slot.in_flight.saturating_sub(1);
            slot.last_used = Instant::now();
            if slot.in_flight == 0 && slot.client.get().is_none() {
                // Its connection attempt failed or was given up: nothing to keep.
                slots.remove(i);
            }
        }
        if slots.is_empty() {
            sockets.remove(&self.url);
        }
    }
}

enum Transport {
    Socket,
    Http,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sockets: HashMap<String, usize> = lock(&self.inner.sockets)
            .iter()
            .map(|(url, slots)| (url.clone(), slots.len()))
            .collect();
        let http: Vec<String> = lock(&self.inner.http).keys().cloned().collect();
        f.debug_struct("Pool")
            .field("options", &self.inner.options)
            .field("sockets", &sockets)
            .field("http", &http)
            .finish()
    }
}

impl Pool {
    /// An empty pool; connections are opened by the calls that need them.
    pub fn new(options: PoolOptions) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                options,
                sockets: Mutex::new(HashMap::new()),
                http: Mutex::new(HashMap::new()),
                next_slot: AtomicU64::new(1),
                reaper: AtomicBool::new(false),
            }),
        }
    }

    /// Sends an application request (a type the broker's embedding application registered
    /// with `Broker::register_handler`) over one of `url`'s WebSocket connections, and
    /// waits for its reply; `timeout` bounds the whole call, connecting included. See
    /// [`Client::request`] for the errors.
    ///
    /// `url` must be `ws(s)://`: an `http(s)://` URL fails with [`Error::InvalidUrl`], as the
    /// HTTP API does not reach application handlers.
    pub async fn request(
        &self,
        url: &str,
        msg_type: &str,
        payload: impl Serialize,
        timeout: Duration,
    ) -> Result<Envelope> {
        match transport(url)? {
            Transport::Http => Err(Error::InvalidUrl(format!(
                "{url}: application requests need a ws:// or wss:// URL; the HTTP API \
                 (http:// and https://) has no route to application handlers"
            ))),
            Transport::Socket => {
                let deadline = Instant::now() + timeout;
                let (client, _lease) = self.socket(url, deadline).await?;
                let left = deadline.saturating_duration_since(Instant::now());
                client.request(msg_type, payload, left).await
            }
        }
    }

    /// Publishes `payload` into `room` with a fresh message id, within
    /// [`PoolOptions::request_timeout`].
    ///
    /// - `http(s)://`: `POST /api/rooms/{room}/publish` with the pool's credential
    ///   ([`HttpClient::publish`]). The room needs no members.
    /// - `ws(s)://`: the broker takes publishes only from members of the room, so the
    ///   pooled connection joins `room` (live, no replay), publishes, and leaves again once
    ///   the ack is in. What the room delivers meanwhile is dropped with the membership,
    ///   so nothing accumulates however busy the room is. The token needs the right to
    ///   join and publish to the room, and in a presence namespace the other members see
    ///   the user join and leave: prefer the `http(s)://` URL to publish from a backend.
    pub async fn publish(&self, url: &str, room: &str, payload: impl Serialize) -> Result<Ack> {
        self.publish_with_id(url, room, &new_id(), payload).await
    }

    /// [`Pool::publish`] with your own message id (1 to 128 bytes): a publish made again
    /// with the same id by the same publisher (the HTTP credential, or the token's user) is
    /// not delivered again, and its ack has `duplicate: true` and the original seq.
    pub async fn publish_with_id(
        &self,
        url: &str,
        room: &str,
        id: &str,
        payload: impl Serialize,
    ) -> Result<Ack> {
        match transport(url)? {
            Transport::Http => self.http(url)?.publish_with_id(room, id, payload).await,
            Transport::Socket => {
                let deadline = Instant::now() + self.inner.options.request_timeout;
                let (client, _lease) = self.socket(url, deadline).await?;
                // Joined for this publish only: the subscription is never read, and dropping
                // it leaves the room (a later subscribe of the same room on this connection
                // takes the room over, and the last one out leaves).
                let membership = client.subscribe(room)?;
                let published =
                    timeout_at(deadline, client.publish_with_id(room, id, payload)).await;
                drop(membership);
                published.unwrap_or_else(|_| {
                    Err(Error::Timeout(format!(
                        "no ack for the publish to {room} on {url} within {:?}",
                        self.inner.options.request_timeout
                    )))
                })
            }
        }
    }

    /// The room's stored messages after `since` ([`HttpClient::history`]). `http(s)://`
    /// URLs only.
    pub async fn history(
        &self,
        url: &str,
        room: &str,
        since: u64,
        limit: usize,
    ) -> Result<History> {
        self.http(url)?.history(room, since, limit).await
    }

    /// Who is in the room ([`HttpClient::presence`]). `http(s)://` URLs only.
    pub async fn presence(&self, url: &str, room: &str) -> Result<Vec<Member>> {
        self.http(url)?.presence(room).await
    }

    /// The [`HttpClient`] the pool uses for `url` (created on first use), for the rest of
    /// the HTTP API (`send_to_user`, `broadcast`, typed publishes). `http(s)://` URLs only.
    pub fn http(&self, url: &str) -> Result<HttpClient> {
        if let Transport::Socket = transport(url)? {
            return Err(Error::InvalidUrl(format!(
                "{url}: the HTTP API (publish, history, presence) needs the broker's \
                 http:// or https:// URL"
            )));
        }
        let mut clients = lock(&self.inner.http);
        if let Some(client) = clients.get(url) {
            return Ok(client.clone());
        }
        let options = &self.inner.options;
        let credential = options
            .credential
            .clone()
            .or_else(|| match &options.client.token {
                Token::Static(token) => Some(token.clone()),
                _ => None,
            });
        let client = HttpClient::build(
            url,
            credential,
            &HttpOptions {
                max_idle_per_host: options.size.max(1),
                idle_timeout: options.idle_timeout,
                request_timeout: options.request_timeout,
                retries: options.http_retries,
                ..HttpOptions::default()
            },
        )?;
        clients.insert(url.to_owned(), client.clone());
        Ok(client)
    }

    /// The WebSocket connections open (or reconnecting) for `url` now; 0 for `http(s)://`
    /// URLs, whose connections `reqwest` keeps.
    pub fn connections(&self, url: &str) -> usize {
        lock(&self.inner.sockets).get(url).map_or(0, |slots| {
            slots
                .iter()
                .filter(|s| s.client.get().is_some() && !s.is_closed())
                .count()
        })
    }

    /// Closes every WebSocket connection (calls in flight on them fail) and forgets the
    /// HTTP clients. The pool stays usable: later calls open new connections.
    pub async fn close(&self) {
        let slots: Vec<Slot> = lock(&self.inner.sockets)
            .drain()
            .flat_map(|(_, slots)| slots)
            .collect();
        lock(&self.inner.http).clear();
        for slot in slots {
            if let Some(client) = slot.client.get() {
                client.close().await;
            }
        }
    }

    /// A connected client for `url` and the lease that counts this call on it.
    async fn socket(&self, url: &str, deadline: Instant) -> Result<(Client, Lease)> {
        let (cell, lease) = self.lease(url);
        let options = self.inner.options.client.clone();
        let connect = cell.get_or_try_init(|| Client::connect(url, options));
        match timeout_at(deadline, connect).await {
            Ok(Ok(client)) => Ok((client.clone(), lease)),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(Error::Timeout(format!("no connection to {url} in time"))),
        }
    }

    /// Picks the slot with the fewest calls in flight, or a new slot while every slot is
    /// busy and there are fewer than `size`.
    fn lease(&self, url: &str) -> (Arc<OnceCell<Client>>, Lease) {
        let size = self.inner.options.size.max(1);
        let mut sockets = lock(&self.inner.sockets);
        let slots = sockets.entry(url.to_owned()).or_default();
        // A client closed for good (permanent close code, attempts exhausted) is replaced.
        slots.retain(|s| !s.is_closed());
        let least = slots
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.in_flight)
            .map(|(i, s)| (i, s.in_flight));
        let index = match least {
            Some((i, busy)) if busy == 0 || slots.len() >= size => i,
            _ => {
                slots.push(Slot {
                    id: self.inner.next_slot.fetch_add(1, Ordering::Relaxed),
                    client: Arc::new(OnceCell::new()),
                    in_flight: 0,
                    last_used: Instant::now(),
                });
                self.start_reaper();
                slots.len() - 1
            }
        };
        let slot = &mut slots[index];
        slot.in_flight += 1;
        slot.last_used = Instant::now();
        let lease = Lease {
            pool: self.inner.clone(),
            url: url.to_owned(),
            slot: slot.id,
        };
        (slot.client.clone(), lease)
    }

    fn start_reaper(&self) {
        if self.inner.reaper.swap(true, Ordering::AcqRel) {
            return;
        }
        let tick = (self.inner.options.idle_timeout / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(5));
        tokio::spawn(reap(Arc::downgrade(&self.inner), tick));
    }
}

/// Lets the next WebSocket connection start a reaper again when this one is dropped
/// with its runtime (`armed`; a reaper that stops by itself has cleared the flag).
struct Reaping {
    pool: Weak<Inner>,
    armed: bool,
}

impl Drop for Reaping {
    fn drop(&mut self) {
        if let (true, Some(inner)) = (self.armed, self.pool.upgrade()) {
            inner.reaper.store(false, Ordering::Release);
        }
    }
}

/// Closes idle and dead connections every `tick` until the pool is gone.
async fn reap(pool: Weak<Inner>, tick: Duration) {
    let mut reaping = Reaping {
        pool: pool.clone(),
        armed: true,
    };
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(inner) = pool.upgrade() else {
            return;
        };
        let idle = inner.options.idle_timeout;
        let mut expired = Vec::new();
        let done = {
            let mut sockets = lock(&inner.sockets);
            for slots in sockets.values_mut() {
                let mut i = 0;
                while i < slots.len() {
                    let slot = &slots[i];
                    let unused = slot.in_flight == 0 && slot.last_used.elapsed() >= idle;
                    if unused || slot.is_closed() {
                        expired.push(slots.remove(i));
                    } else {
                        i += 1;
                    }
                }
            }
            sockets.retain(|_, slots| !slots.is_empty());
            // Nothing left to watch: stop. The next connection starts a reaper again (its
            // slot is added under this lock, so it sees the flag cleared).
            let done = sockets.is_empty();
            if done {
                inner.reaper.store(false, Ordering::Release);
            }
            done
        };
        drop(inner);
        for slot in expired {
            if let Some(client) = slot.client.get().cloned() {
                tokio::spawn(async move { client.close().await });
            }
        }
        if done {
            reaping.armed = false;
            return;
        }
    }
}

fn transport(url: &str) -> Result<Transport> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("ws://") || lower.starts_with("wss://") {
        Ok(Transport::Socket)
    } else if lower.starts_with("http://") || lower.starts_with("https://") {
        Ok(Transport::Http)
    } else {
        Err(Error::InvalidUrl(format!(
            "{url}: expected ws(s):// (WebSocket) or http(s):// (HTTP API)"
        )))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
